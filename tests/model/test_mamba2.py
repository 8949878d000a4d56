"""Mamba-2: the chunked SSD and the recurrent step against transformers' pure-PyTorch references.

The cache contract tests run for both mixers in test_mamba.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers.models.mamba2.modeling_mamba2 import (
    MambaRMSNormGated,
    causal_conv1d_fn,
    mamba2_chunk_scan,
    mamba2_selective_state_update,
)

from model.config import preset
from model.modules.mamba2 import Mamba2, segment_sum, ssd_chunk_scan, ssd_step

TOL = 1e-4


def ssd_inputs(batch: int, length: int, heads: int = 4, head_dim: int = 3, groups: int = 2, states: int = 5):
    x = torch.randn(batch, length, heads, head_dim)
    dt = torch.rand(batch, length, heads) * 0.8 + 0.01
    A = -torch.exp(torch.randn(heads))
    B, C = torch.randn(batch, length, groups, states), torch.randn(batch, length, groups, states)
    h0 = torch.randn(batch, heads, head_dim, states)
    return x, dt, A, B, C, h0


@pytest.mark.parametrize(("length", "chunk_size"), [(16, 8), (37, 8), (37, 64), (5, 1)])
def test_ssd_chunk_scan_matches_transformers(length, chunk_size):
    torch.manual_seed(0)
    x, dt, A, B, C, h0 = ssd_inputs(2, length)
    y, state = ssd_chunk_scan(x, dt, A, B, C, chunk_size, initial_state=h0)
    y_ref, state_ref = mamba2_chunk_scan(
        x, dt, A, B, C, chunk_size=chunk_size, initial_states=h0, return_final_states=True
    )
    torch.testing.assert_close(y, y_ref, atol=TOL, rtol=0)
    torch.testing.assert_close(state, state_ref, atol=TOL, rtol=0)


def test_ssd_chunk_scan_does_not_depend_on_the_chunk_size():
    torch.manual_seed(1)
    x, dt, A, B, C, h0 = ssd_inputs(2, 45)
    y_ref, state_ref = mamba2_chunk_scan(
        x, dt, A, B, C, chunk_size=45, initial_states=h0, return_final_states=True
    )
    for chunk_size in (4, 7, 16):
        y, state = ssd_chunk_scan(x, dt, A, B, C, chunk_size, initial_state=h0)
        torch.testing.assert_close(y, y_ref, atol=TOL, rtol=0)
        torch.testing.assert_close(state, state_ref, atol=TOL, rtol=0)


def test_ssd_step_matches_transformers():
    """Convention difference: the reference takes dt per (head, channel), A per (head, channel, state); ours
    are one scalar per head, so the test broadcasts them, as transformers' Mamba2Mixer does when decoding."""
    torch.manual_seed(2)
    x, dt, A, B, C, state = ssd_inputs(3, 1)
    heads, head_dim, states = x.shape[2], x.shape[3], B.shape[-1]
    new_state = state.clone()
    y = ssd_step(new_state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])  # updates new_state in place
    state_ref = state.clone()
    y_ref = mamba2_selective_state_update(
        state_ref,
        x[:, 0],
        dt[:, 0, :, None].expand(-1, heads, head_dim),
        A[:, None, None].expand(heads, head_dim, states),
        B[:, 0],
        C[:, 0],
    )
    torch.testing.assert_close(y, y_ref, atol=TOL, rtol=0)
    torch.testing.assert_close(new_state, state_ref, atol=TOL, rtol=0)


def test_ssd_scan_and_step_stay_fp32_under_autocast():
    torch.manual_seed(5)
    x, dt, A, B, C, h0 = ssd_inputs(2, 37)

    def scan_and_step() -> tuple[torch.Tensor, ...]:
        state = h0.clone()  # the step updates it in place
        return (
            *ssd_chunk_scan(x, dt, A, B, C, 8, h0),
            ssd_step(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0]),
            state,
        )

    expected = scan_and_step()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = scan_and_step()
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, e, atol=1e-6, rtol=0)


def test_segment_sum_is_the_sum_between_positions():
    a = torch.randn(6)
    seg = segment_sum(a)
    for t in range(6):
        for s in range(6):
            expected = a[s + 1 : t + 1].sum() if s <= t else torch.tensor(float("-inf"))
            torch.testing.assert_close(seg[t, s], expected, atol=1e-6, rtol=0)


def make_mamba2(**overrides) -> Mamba2:
    torch.manual_seed(3)
    settings = {"bitnet.enabled": False, "mamba.chunk_size": 16, "mamba.n_groups": 2, **overrides}
    mixer = Mamba2(preset("tiny").with_overrides(**settings)).eval()
    with torch.no_grad():
        for linear in (mixer.in_proj, mixer.out_proj):
            linear.weight.normal_(std=linear.weight.shape[1] ** -0.5)
        mixer.norm.weight.uniform_(0.5, 1.5)
    return mixer


@pytest.mark.parametrize("length", [32, 37])
def test_mamba2_layer_matches_transformers_composition(length):
    """The whole layer against the reference functions wired as transformers' Mamba2Mixer does (torch path):
    in_proj -> (z, xBC, dt), conv + silu on xBC, mamba2_chunk_scan with D and dt_bias and softplus, then
    MambaRMSNormGated (group size d_inner / n_groups, gate before the norm) and out_proj. Our layer keeps
    dt_bias, A_log and D as fp32 parameters exactly like the reference; no convention differs."""
    mixer = make_mamba2()
    torch.manual_seed(4)
    u = torch.randn(2, length, mixer.d_model)
    norm = MambaRMSNormGated(mixer.d_inner, group_size=mixer.d_inner // mixer.n_groups, eps=mixer.norm.eps)
    norm.weight.data.copy_(mixer.norm.weight.data)
    gn = mixer.n_groups * mixer.d_state
    with torch.no_grad():
        z, xbc, dt = mixer.in_proj(u).split([mixer.d_inner, mixer.conv_channels, mixer.n_heads], dim=-1)
        conv_weight = mixer.conv1d.weight.squeeze(1)
        xbc = causal_conv1d_fn(xbc.transpose(1, 2), conv_weight, mixer.conv1d.bias, activation="silu")
        xs, B, C = xbc.transpose(1, 2).split([mixer.d_inner, gn, gn], dim=-1)
        y = mamba2_chunk_scan(
            xs.unflatten(-1, (mixer.n_heads, mixer.head_dim)),
            dt,
            -torch.exp(mixer.A_log),
            B.unflatten(-1, (mixer.n_groups, mixer.d_state)),
            C.unflatten(-1, (mixer.n_groups, mixer.d_state)),
            chunk_size=mixer.chunk_size,
            D=mixer.D,
            dt_bias=mixer.dt_bias,
            dt_softplus=True,
        )
        expected = mixer.out_proj(norm(y.flatten(-2), z))
        torch.testing.assert_close(mixer(u), expected, atol=TOL, rtol=0)


def test_mamba2_initialisation():
    mixer = make_mamba2()
    m = preset("tiny").mamba
    assert mixer.A_log.shape == mixer.D.shape == mixer.dt_bias.shape == (mixer.n_heads,)
    A = torch.exp(mixer.A_log.data)
    assert A.min() >= 1.0 and A.max() <= 16.0
    assert torch.equal(mixer.D.data, torch.ones(mixer.n_heads))
    dt = F.softplus(mixer.dt_bias.data)
    assert dt.dtype == torch.float32
    assert dt.min() >= m.dt_min * 0.999 and dt.max() <= m.dt_max * 1.001
