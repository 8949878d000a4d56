"""SwiGLU's C kernel (swiglu.c): torch's silu(gate) * up to float rounding in every build, out to where the
exponential saturates, and the feed-forward taking it only without autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from model.config import preset
from model.modules import cpu_kernels
from model.modules.ffn import SwiGLU
from tests.model.helpers import count_kernel_calls
from tests.model.test_ternary_kernel import BUILDS


@pytest.mark.parametrize("build", sorted(BUILDS))
@pytest.mark.parametrize(("rows", "hidden"), [(1, 1024), (16, 1024), (3, 37), (80, 1024)])
def test_kernel_matches_torch(build: str, rows: int, hidden: int) -> None:
    lib = cpu_kernels.build(BUILDS[build])
    assert lib is not None
    gate_up = torch.randn(rows, 2 * hidden, generator=torch.Generator().manual_seed(rows + hidden)) * 4
    gate_up[0, :4] = torch.tensor([-100.0, -30.0, 30.0, 100.0])  # e^-v past fast_exp's clamps
    got = cpu_kernels.swiglu(gate_up, lib=lib)
    gate, up = gate_up.chunk(2, dim=-1)
    torch.testing.assert_close(got, F.silu(gate) * up, rtol=2e-6, atol=1e-6)


def test_the_feed_forward_takes_the_kernel_without_autograd_only(monkeypatch: pytest.MonkeyPatch) -> None:
    if not cpu_kernels.enabled():
        pytest.fail("the CPU kernels could not be built here")
    calls = count_kernel_calls(monkeypatch, "swiglu")
    torch.manual_seed(0)
    ffn = SwiGLU(preset("tiny"))
    x = torch.randn(2, 3, ffn.gate_up.in_features)
    with torch.no_grad():
        served = ffn(x)
    assert len(calls) == 1
    trained = ffn(x)
    trained.sum().backward()
    assert len(calls) == 1
    assert ffn.gate_up.weight.grad is not None
    torch.testing.assert_close(served, trained.detach(), rtol=1e-5, atol=1e-5)


def test_an_odd_width_is_refused() -> None:
    with pytest.raises(ValueError, match="even width"):
        cpu_kernels.swiglu(torch.randn(2, 7))
