"""RMSNorm: the formula, the precision it computes in, and Mamba-2's gated, grouped form."""

from __future__ import annotations

import torch

from model.modules.mamba2 import GatedRMSNorm
from model.modules.norm import RMSNorm, rms_norm


def textbook(x: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.double()
    return x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def test_rms_norm_is_x_over_its_root_mean_square():
    generator = torch.Generator().manual_seed(0)
    for scale in (1e-3, 1.0, 1e3):
        x = torch.randn(4, 3, 96, generator=generator) * scale
        torch.testing.assert_close(rms_norm(x, 1e-5).double(), textbook(x, 1e-5), rtol=1e-6, atol=1e-6)
    zero = torch.zeros(2, 8)
    assert torch.equal(rms_norm(zero, 1e-5), zero)  # eps keeps an all-zero token finite


def test_bf16_is_normalised_in_fp32_and_returned_in_bf16():
    x = (torch.randn(3, 64) * 50).bfloat16()
    out = rms_norm(x, 1e-5)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, textbook(x.float(), 1e-5).float().bfloat16())


def test_rmsnorm_module_scales_by_its_weight():
    norm = RMSNorm(32)
    with torch.no_grad():
        norm.weight.copy_(torch.linspace(-2, 2, 32))
    x = torch.randn(5, 32)
    torch.testing.assert_close(norm(x).double(), textbook(x, norm.eps) * norm.weight.double())


def test_gated_rms_norm_normalises_each_group_of_y_times_silu_z():
    norm = GatedRMSNorm(dim=12, group_size=4, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1, 13, dtype=torch.float32))
    y, z = torch.randn(2, 12), torch.randn(2, 12)
    gated = (y * torch.nn.functional.silu(z)).view(2, 3, 4)
    expected = textbook(gated, 1e-5).view(2, 12) * norm.weight.double()
    torch.testing.assert_close(norm(y, z).double(), expected)
