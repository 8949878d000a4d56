"""Mamba-2's C decoding step (mamba2_step.c): the torch path's numbers to float rounding in every build, the
conv window and state moved on as the torch path moves them, a row the same alone or in a batch."""

from __future__ import annotations

import pytest
import torch

from model.config import preset
from model.modules import cpu_kernels
from model.modules.mamba2 import Mamba2, Mamba2Cache
from tests.model.helpers import count_kernel_calls
from tests.model.test_ternary_kernel import BUILDS

SHAPES = {  # the shipped model's mixer; heads of 24 channels (16 in vectors, 8 in the portable loop); one
    # with two groups, odd sizes and a wider conv
    "pocket": {},
    "vector tail": {"d_model": 48, "mamba.head_dim": 24},
    "groups": {
        "d_model": 40,
        "mamba.head_dim": 10,
        "mamba.n_groups": 2,
        "mamba.d_state": 5,
        "mamba.d_conv": 5,
    },
}


def make_mixer(shape: str) -> Mamba2:
    """A mixer with plain projections and every parameter of the step away from its initial value."""
    torch.manual_seed(0)
    mixer = Mamba2(preset("pocket").with_overrides(**{"bitnet.enabled": False, **SHAPES[shape]})).eval()
    with torch.no_grad():
        for linear in (mixer.in_proj, mixer.out_proj):
            linear.weight.normal_(std=linear.weight.shape[1] ** -0.5)
        mixer.conv1d.bias.normal_(std=0.3)
        mixer.dt_bias.normal_(std=1.0)  # softplus on both sides of its threshold and near zero
        mixer.D.normal_()
        mixer.norm.weight.uniform_(0.5, 1.5)
    return mixer


def prefilled(mixer: Mamba2, batch: int, seed: int) -> Mamba2Cache:
    """A cache after a prompt (the torch path's chunked scan), so the state and window are far from zero."""
    cache = mixer.new_cache(batch, "cpu")
    prompt = torch.randn(batch, 19, mixer.d_model, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        mixer(prompt, cache, torch.zeros(batch, dtype=torch.long))
    return cache


def torch_step(
    mixer: Mamba2, x: torch.Tensor, cache: Mamba2Cache, monkeypatch: pytest.MonkeyPatch
) -> torch.Tensor:
    with monkeypatch.context() as patch, torch.no_grad():
        patch.setenv("NANOPRIME_KERNEL", "0")
        return mixer(x, cache, torch.zeros(x.shape[0], dtype=torch.long))


@pytest.mark.parametrize("build", sorted(BUILDS))
@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_kernel_step_matches_the_torch_path(build: str, shape: str, monkeypatch: pytest.MonkeyPatch) -> None:
    lib = cpu_kernels.build(BUILDS[build])
    assert lib is not None
    mixer = make_mixer(shape)
    expected_cache = prefilled(mixer, 3, seed=1)
    cache = Mamba2Cache(expected_cache.conv.clone(), expected_cache.ssm.clone())
    for step in range(4):
        x = torch.randn(3, 1, mixer.d_model, generator=torch.Generator().manual_seed(10 + step)) * 2
        expected = torch_step(mixer, x, expected_cache, monkeypatch)
        with torch.no_grad():
            y = mixer._decode_with_kernel(mixer.in_proj(x)[:, 0], cache) if build == "native" else None
            if y is None:  # another build of the same source, called the way _decode_with_kernel calls it
                conv, norm = mixer.conv1d, mixer.norm
                y = cpu_kernels.mamba2_step(
                    mixer.in_proj(x)[:, 0].contiguous(),
                    cache.conv,
                    cache.ssm,
                    conv.weight.detach(),
                    conv.bias.detach(),
                    mixer.dt_bias.detach(),
                    mixer.A_log.detach(),
                    mixer.D.detach(),
                    norm.weight.detach(),
                    mixer.n_groups,
                    norm.eps,
                    lib,
                )
            got = mixer.out_proj(y[:, None])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(cache.conv, expected_cache.conv), "the conv window moved on differently"
        torch.testing.assert_close(cache.ssm, expected_cache.ssm, rtol=1e-5, atol=1e-6)


def test_the_layer_decodes_through_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    mixer = make_mixer("pocket")
    calls = count_kernel_calls(monkeypatch, "mamba2_step")
    cache = prefilled(mixer, 2, seed=2)
    with torch.no_grad():
        for _ in range(3):
            mixer(torch.randn(2, 1, mixer.d_model), cache, torch.zeros(2, dtype=torch.long))
        mixer(torch.randn(2, 2, mixer.d_model), cache, torch.zeros(2, dtype=torch.long))  # a chunk: torch
    assert len(calls) == 3


def test_a_row_gets_the_same_numbers_alone_or_in_a_batch() -> None:
    """Batches of four rows or more split over threads; each row is still one thread's, in one order."""
    mixer = make_mixer("pocket")
    cache = prefilled(mixer, 5, seed=3)
    x = torch.randn(5, 1, mixer.d_model, generator=torch.Generator().manual_seed(4))
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.no_grad():
            proj = mixer.in_proj(x)[:, 0]  # one matmul for all rows: its rounding may depend on the row count
            alone = []
            for row in range(5):
                single = Mamba2Cache(cache.conv[row : row + 1].clone(), cache.ssm[row : row + 1].clone())
                alone.append(mixer._decode_with_kernel(proj[row : row + 1], single))
            together = mixer._decode_with_kernel(proj, cache)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(torch.cat(alone), together)
