"""Mamba v1: the parallel scan against transformers' pure-PyTorch reference, and the cache contract.

The cache tests (full forward == prefill + steps, padding, select/concat, fixed state size, gradients, dtypes)
run for both mixers, Mamba and Mamba-2, since they share the contract; Mamba-2's reference tests live in
test_mamba2.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers.models.mamba.modeling_mamba import (
    causal_conv1d_fn,
    mamba_selective_scan,
    mamba_selective_state_update,
)

from model.config import preset
from model.modules.mamba import Mamba, MambaCache, selective_scan, selective_step
from model.modules.mamba2 import Mamba2
from model.modules.pscan import linear_scan

TOL = 1e-4
MIXERS = {"mamba": Mamba, "mamba2": Mamba2}


def make_mixer(kind: str, bitnet: bool = False, **overrides):
    """A tiny mixer; plain linear layers unless bitnet=True, so the cache tests check exact arithmetic.

    The projections get std 1/sqrt(fan_in) instead of the training init's 0.02 so that outputs are O(1) and
    the 1e-4 tolerance is a tight relative bound.
    """
    torch.manual_seed(0)
    settings = {"bitnet.enabled": bitnet, "mamba.chunk_size": 16, **overrides}
    if kind == "mamba2":
        settings.setdefault("mamba.n_groups", 2)
    mixer = MIXERS[kind](preset("tiny").with_overrides(**settings)).eval()
    with torch.no_grad():
        for name in ("in_proj", "x_proj", "out_proj"):
            if hasattr(mixer, name):
                weight = getattr(mixer, name).weight
                weight.normal_(std=weight.shape[1] ** -0.5)
    return mixer


def run_in_pieces(mixer, x: torch.Tensor, pieces: list[int]) -> tuple[torch.Tensor, MambaCache]:
    """Feed x through a fresh cache piece by piece (a piece of 1 is a decode step)."""
    cache = mixer.new_cache(x.shape[0], x.device)
    past = torch.zeros(x.shape[0], dtype=torch.long)
    outputs, start = [], 0
    for n in pieces:
        outputs.append(mixer(x[:, start : start + n], cache, past_lengths=past))
        past, start = past + n, start + n
    assert start == x.shape[1]
    return torch.cat(outputs, dim=1), cache


# ---- the parallel scan against the reference ---------------------------------------------------------------
def scan_inputs(batch: int, length: int, channels: int = 6, states: int = 4):
    x = torch.randn(batch, length, channels)
    dt = torch.rand(batch, length, channels) * 0.8 + 0.01
    A = -torch.exp(torch.randn(channels, states))
    B, C = torch.randn(batch, length, states), torch.randn(batch, length, states)
    return x, dt, A, B, C


def reference_scan(x, dt, A, B, C):
    """transformers' sequential reference: it takes (batch, channels, time), ours (batch, time, channels)."""
    y, state = mamba_selective_scan(
        x.transpose(1, 2), dt.transpose(1, 2), A, B.transpose(1, 2), C.transpose(1, 2), return_last_state=True
    )
    return y.transpose(1, 2), state


@pytest.mark.parametrize("length", [16, 37])
def test_selective_scan_matches_transformers(length):
    torch.manual_seed(1)
    x, dt, A, B, C = scan_inputs(2, length)
    y, state = selective_scan(x, dt, A, B, C, chunk_size=16)
    y_ref, state_ref = reference_scan(x, dt, A, B, C)
    torch.testing.assert_close(y, y_ref, atol=TOL, rtol=0)
    torch.testing.assert_close(state, state_ref, atol=TOL, rtol=0)


def test_selective_scan_continues_from_an_initial_state():
    """No initial state in the reference, so split the input: scan(a), scan(b, state) == reference(a + b)."""
    torch.manual_seed(2)
    x, dt, A, B, C = scan_inputs(2, 37)
    y1, state1 = selective_scan(x[:, :21], dt[:, :21], A, B[:, :21], C[:, :21], chunk_size=8)
    y2, state2 = selective_scan(
        x[:, 21:], dt[:, 21:], A, B[:, 21:], C[:, 21:], chunk_size=8, initial_state=state1
    )
    y_ref, state_ref = reference_scan(x, dt, A, B, C)
    torch.testing.assert_close(torch.cat([y1, y2], 1), y_ref, atol=TOL, rtol=0)
    torch.testing.assert_close(state2, state_ref, atol=TOL, rtol=0)


def test_selective_step_matches_transformers():
    torch.manual_seed(3)
    x, dt, A, B, C = scan_inputs(3, 1)
    state = torch.randn(3, 6, 4)
    y, new_state = selective_step(state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
    state_ref = state.clone()
    y_ref = mamba_selective_state_update(state_ref, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
    torch.testing.assert_close(y, y_ref, atol=TOL, rtol=0)
    torch.testing.assert_close(new_state, state_ref, atol=TOL, rtol=0)


def test_selective_scan_and_step_stay_fp32_under_autocast():
    torch.manual_seed(8)
    x, dt, A, B, C = scan_inputs(2, 37)
    state = torch.randn(2, 6, 4)
    expected = selective_scan(x, dt, A, B, C, 16) + selective_step(
        state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0]
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = selective_scan(x, dt, A, B, C, 16) + selective_step(
            state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0]
        )
    for g, e in zip(got, expected, strict=True):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, e, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("length", "chunk_size"), [(1, 4), (5, 1), (13, 4), (8, 64), (37, 12)])
def test_linear_scan_and_its_gradient_equal_the_recurrence(length, chunk_size):
    """The scan has a hand-written backward, so check values and gradients against autograd through a loop."""
    torch.manual_seed(4)
    a = torch.rand(2, length, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(2, length, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, dtype=torch.float64, requires_grad=True)
    h, expected = h0, []
    for t in range(length):
        h = a[:, t] * h + b[:, t]
        expected.append(h)
    expected = torch.stack(expected, 1)
    weights = torch.randn_like(expected)
    expected_grads = torch.autograd.grad((expected * weights).sum(), (a, b, h0))
    got = linear_scan(a, b, h0, chunk_size)
    grads = torch.autograd.grad((got * weights).sum(), (a, b, h0))
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, atol=1e-10, rtol=0)
    without_initial = linear_scan(a, b, None, chunk_size)
    torch.testing.assert_close(without_initial, linear_scan(a, b, torch.zeros_like(h0), chunk_size))


def test_mamba_layer_matches_transformers_composition():
    """The whole layer against the reference functions wired as transformers' MambaMixer does.

    Convention differences: our dt bias is a separate fp32 parameter (dt_bias) instead of dt_proj.bias, passed
    to the reference as delta_bias; our in_proj/x_proj/dt_proj/out_proj have no bias.
    """
    mixer = make_mixer("mamba")
    torch.manual_seed(5)
    u = torch.randn(2, 37, mixer.d_model)
    with torch.no_grad():
        xs, z = mixer.in_proj(u).transpose(1, 2).chunk(2, dim=1)
        conv_weight = mixer.conv1d.weight.squeeze(1)
        xs = causal_conv1d_fn(xs, conv_weight, mixer.conv1d.bias, activation="silu")
        dt, B, C = mixer.x_proj(xs.transpose(1, 2)).split([mixer.dt_rank, mixer.d_state, mixer.d_state], -1)
        dt = mixer.dt_proj(dt).transpose(1, 2)
        A = -torch.exp(mixer.A_log)
        y = mamba_selective_scan(
            xs, dt, A, B.transpose(1, 2), C.transpose(1, 2), D=mixer.D, z=z,
            delta_bias=mixer.dt_bias, delta_softplus=True,
        )  # fmt: skip
        expected = mixer.out_proj(y.transpose(1, 2))
        torch.testing.assert_close(mixer(u), expected, atol=TOL, rtol=0)


def test_mamba_initialisation():
    mixer = make_mixer("mamba")
    m = preset("tiny").mamba
    expected_A = torch.log(torch.arange(1, mixer.d_state + 1, dtype=torch.float32)).expand(mixer.d_inner, -1)
    torch.testing.assert_close(mixer.A_log.data, expected_A)
    assert torch.equal(mixer.D.data, torch.ones(mixer.d_inner))
    dt = F.softplus(mixer.dt_bias.data)
    assert dt.dtype == torch.float32
    assert dt.min() >= m.dt_min * 0.999 and dt.max() <= m.dt_max * 1.001
    # log-uniform: the geometric middle of the range splits the samples roughly in half
    below = (dt < math.sqrt(m.dt_min * m.dt_max)).float().mean()
    assert 0.3 < below < 0.7


# ---- the cache contract, for both mixers -------------------------------------------------------------------
@pytest.mark.parametrize("kind", MIXERS)
@pytest.mark.parametrize(("length", "prefill"), [(32, 16), (37, 21), (20, 1)])
def test_full_forward_equals_prefill_then_steps(kind, length, prefill):
    mixer = make_mixer(kind)
    x = torch.randn(2, length, mixer.d_model)
    with torch.no_grad():
        full = mixer(x)
        pieces, _ = run_in_pieces(mixer, x, [prefill] + [1] * (length - prefill))
    assert (full - pieces).abs().max() <= TOL


@pytest.mark.parametrize("kind", MIXERS)
def test_chunked_prefill_continues_a_cache(kind):
    mixer = make_mixer(kind)
    x = torch.randn(2, 53, mixer.d_model)
    with torch.no_grad():
        full = mixer(x)
        pieces, cache = run_in_pieces(mixer, x, [7, 20, 1, 16, 2, 1, 6])
        _, one_shot = run_in_pieces(mixer, x, [53])
    assert (full - pieces).abs().max() <= TOL
    torch.testing.assert_close(cache.ssm, one_shot.ssm, atol=TOL, rtol=0)
    torch.testing.assert_close(cache.conv, one_shot.conv, atol=TOL, rtol=0)


@pytest.mark.parametrize("kind", MIXERS)
def test_right_padded_batch_equals_each_row_alone(kind):
    """Rows with different real lengths, padded with loud garbage, give each row's own outputs and state."""
    mixer = make_mixer(kind)
    torch.manual_seed(6)
    first, second, steps = [5, 19, 2], [3, 0, 6], 2
    rows = [torch.randn(1, first[i] + second[i] + steps, mixer.d_model) for i in range(3)]

    def padded(lengths, offsets):
        block = 50 * torch.randn(3, max(lengths), mixer.d_model)
        for i, (n, start) in enumerate(zip(lengths, offsets, strict=True)):
            block[i, :n] = rows[i][0, start : start + n]
        return block

    cache = mixer.new_cache(3, "cpu")
    past = torch.zeros(3, dtype=torch.long)
    with torch.no_grad():
        new = torch.tensor(first)
        y1 = mixer(padded(first, [0, 0, 0]), cache, past_lengths=past, new_lengths=new)
        past = past + new
        new = torch.tensor(second)
        y2 = mixer(padded(second, first), cache, past_lengths=past, new_lengths=new)
        past = past + new
        y_steps = []
        for k in range(steps):
            step = torch.cat([rows[i][:, first[i] + second[i] + k] for i in range(3)])[:, None]
            y_steps.append(mixer(step, cache, past_lengths=past))
            past = past + 1
        for i in range(3):
            alone = mixer(rows[i])[0]
            got = torch.cat([y1[i, : first[i]], y2[i, : second[i]]] + [y[i] for y in y_steps])
            assert (got - alone).abs().max() <= TOL, f"row {i}"
            _, own = run_in_pieces(mixer, rows[i], [rows[i].shape[1]])
            torch.testing.assert_close(cache.ssm[i : i + 1], own.ssm, atol=TOL, rtol=0)
            torch.testing.assert_close(cache.conv[i : i + 1], own.conv, atol=TOL, rtol=0)


@pytest.mark.parametrize("kind", MIXERS)
def test_select_concat_and_clone_keep_rows_consistent(kind):
    mixer = make_mixer(kind)
    torch.manual_seed(7)
    xa, xb = torch.randn(2, 10, mixer.d_model), torch.randn(1, 7, mixer.d_model)
    step = torch.randn(2, 1, mixer.d_model)
    with torch.no_grad():
        _, cache_a = run_in_pieces(mixer, xa, [10])
        _, cache_b = run_in_pieces(mixer, xb, [7])
        merged = type(cache_a).concat([cache_a, cache_b], [torch.tensor([10, 10]), torch.tensor([7])])
        assert merged.batch_size == 3 and type(merged) is type(cache_a)
        picked = merged.select([2, 0])  # b's row, then a's first row
        kept = picked.clone()
        y = mixer(step, picked, past_lengths=torch.tensor([7, 10]))

        alone_b = cache_b.clone()
        y_b = mixer(step[:1], alone_b, past_lengths=torch.tensor([7]))
        alone_a = cache_a.select(torch.tensor([0]))
        y_a = mixer(step[1:], alone_a, past_lengths=torch.tensor([10]))
    torch.testing.assert_close(y, torch.cat([y_b, y_a]), atol=TOL, rtol=0)
    torch.testing.assert_close(picked.ssm, torch.cat([alone_b.ssm, alone_a.ssm]), atol=TOL, rtol=0)
    torch.testing.assert_close(picked.conv, torch.cat([alone_b.conv, alone_a.conv]), atol=TOL, rtol=0)
    # select and clone copy: stepping `picked` left the merged batch, the clone and cache_b untouched
    assert torch.equal(kept.ssm, merged.ssm[[2, 0]]) and torch.equal(kept.conv, merged.conv[[2, 0]])
    assert not torch.equal(kept.ssm, picked.ssm)
    assert torch.equal(merged.ssm[2:], cache_b.ssm)


@pytest.mark.parametrize("kind", MIXERS)
def test_state_does_not_grow_with_tokens(kind):
    mixer = make_mixer(kind)
    x = torch.randn(2, 25, mixer.d_model)
    with torch.no_grad():
        _, short = run_in_pieces(mixer, x[:, :5], [5])
        _, long = run_in_pieces(mixer, x, [5] + [1] * 20)
    conv_channels = mixer.conv1d.in_channels
    state_values = mixer.d_inner * mixer.d_state  # d_inner = n_heads * head_dim for Mamba-2
    expected = 2 * (conv_channels * (mixer.d_conv - 1) + state_values) * 4
    assert short.nbytes(torch.tensor([5, 5])) == long.nbytes(torch.tensor([25, 25])) == expected


@pytest.mark.parametrize("kind", MIXERS)
def test_gradients_reach_every_parameter(kind):
    """With the real BitLinear (straight-through estimator) every parameter gets a finite nonzero gradient."""
    mixer = make_mixer(kind, bitnet=True).train()
    x = torch.randn(2, 23, mixer.d_model, requires_grad=True)
    mixer(x).pow(2).mean().backward()
    for name, p in mixer.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", MIXERS)
def test_bf16_activations_keep_an_fp32_state(kind):
    mixer = make_mixer(kind)
    x = torch.randn(1, 21, mixer.d_model)
    with torch.no_grad():
        reference, _ = run_in_pieces(mixer, x, [20, 1])
        mixer = mixer.to(torch.bfloat16)
        cache = mixer.new_cache(1, "cpu", dtype=torch.bfloat16)
        y = torch.cat([mixer(x[:, :20].bfloat16(), cache, torch.tensor([0])),
                       mixer(x[:, 20:].bfloat16(), cache, torch.tensor([20]))], 1)  # fmt: skip
    assert cache.ssm.dtype == torch.float32 and cache.conv.dtype == torch.bfloat16
    assert y.dtype == torch.bfloat16
    assert (y.float() - reference).abs().max() <= 0.05 * reference.abs().max()


@pytest.mark.parametrize("kind", MIXERS)
def test_bad_input_is_refused_with_a_clear_error(kind):
    mixer = make_mixer(kind)
    x = torch.randn(2, 4, mixer.d_model)
    with pytest.raises(ValueError, match="input must be"):
        mixer(torch.randn(2, 4, mixer.d_model + 1))
    with pytest.raises(ValueError, match="input must be"):
        mixer(torch.randn(4, mixer.d_model))
    with pytest.raises(ValueError, match="no tokens"):
        mixer(x[:, :0])
    with pytest.raises(ValueError, match="cache 'conv' has shape"):
        mixer(x, mixer.new_cache(3, "cpu"), past_lengths=torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="new_lengths must lie in"):
        mixer(x, mixer.new_cache(2, "cpu"), torch.zeros(2, dtype=torch.long), torch.tensor([5, 1]))
    with pytest.raises(ValueError, match="new_lengths must have shape"):
        mixer(x, mixer.new_cache(2, "cpu"), torch.zeros(2, dtype=torch.long), torch.tensor([1]))
    with pytest.raises(ValueError, match="select index out of range"):
        mixer.new_cache(2, "cpu").select([2])
