"""RMSNorm's C kernel (rms_norm.c): torch's numbers to float rounding in every build, a row the same alone or
among many (split over threads), and the layer taking it only without autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.modules import cpu_kernels
from model.modules.norm import RMSNorm
from tests.model.helpers import count_kernel_calls
from tests.model.test_ternary_kernel import BUILDS


def rows_and_weight(rows: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width, generator=generator) * 3
    return x, torch.rand(width, generator=generator) + 0.5


@pytest.mark.parametrize("build", sorted(BUILDS))
@pytest.mark.parametrize(
    ("rows", "width"),
    # one decoding row and a batch of pocket's width; a width that ends in a part of 16; a prefill's many rows
    [(1, 384), (16, 384), (5, 70), (300, 384)],
)
def test_kernel_matches_torch(build: str, rows: int, width: int) -> None:
    lib = cpu_kernels.build(BUILDS[build])
    assert lib is not None
    x, weight = rows_and_weight(rows, width, seed=rows + width)
    got = cpu_kernels.rms_norm(x, weight, 1e-5, lib=lib)
    expected = weight * F.rms_norm(x, (width,), None, 1e-5)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert not torch.equal(got, x)


def test_a_row_gets_the_same_numbers_alone_or_among_many() -> None:
    x, weight = rows_and_weight(300, 384, seed=1)  # 300 x 384 values: split over the threads
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        together = cpu_kernels.rms_norm(x, weight, 1e-5)
        alone = [cpu_kernels.rms_norm(x[i : i + 1], weight, 1e-5) for i in (0, 149, 299)]
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(torch.cat(alone), together[[0, 149, 299]])


def test_the_layer_takes_the_kernel_without_autograd_only(monkeypatch: pytest.MonkeyPatch) -> None:
    if not cpu_kernels.enabled():
        pytest.fail("the CPU kernels could not be built here")
    calls = count_kernel_calls(monkeypatch, "rms_norm")
    norm = RMSNorm(384)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(4, 384, requires_grad=True)
    with torch.no_grad():
        served = norm(x)
    assert len(calls) == 1
    trained = norm(x)  # autograd: the torch path, whose gradient reaches the weight
    trained.sum().backward()
    assert len(calls) == 1
    assert norm.weight.grad is not None
    torch.testing.assert_close(served, trained.detach(), rtol=1e-6, atol=1e-6)


def test_rows_of_the_wrong_width_are_refused() -> None:
    """The kernel reads rows by the weight's width: a mismatch must fail, not read past the tensor."""
    with pytest.raises(ValueError, match="rows of 100 values for a weight of 384"):
        cpu_kernels.rms_norm(torch.randn(3, 100), torch.ones(384), 1e-5)
