"""RMSNorm: the only normalisation in NanoPrime (blocks, the final norm, MLA's latent, BitLinear's input)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.modules import cpu_kernels


def upcast(x: torch.Tensor) -> torch.Tensor:
    """x in at least fp32 (fp64 stays fp64): the precision for norms, quantizers and rotations."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x.to(dtype), skipping even the call when x has it already (decoding makes hundreds per token)."""
    return x if x.dtype == dtype else x.to(dtype)


def rms_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) over the last dimension, in at least fp32 so bf16 activations keep their
    precision. F.rms_norm computes the very same ops as one call: decoding makes dozens per token."""
    xf = upcast(x)
    return cast(F.rms_norm(xf, (xf.shape[-1],), None, eps), x.dtype)


class RMSNorm(nn.Module):
    """RMSNorm with a learned per-channel scale (initialised to one)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._kernel_fits(x):
            return cpu_kernels.rms_norm(x, self.weight, self.eps)
        return self.weight * rms_norm(x, self.eps)

    def _kernel_fits(self, x: torch.Tensor) -> bool:
        """fp32 on the CPU without autograd, where the C kernel is built (and wanted)."""
        return (
            x.dtype == self.weight.dtype == torch.float32
            and x.device.type == "cpu"
            and not (torch.is_grad_enabled() and (x.requires_grad or self.weight.requires_grad))
            and cpu_kernels.enabled()
        )

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
