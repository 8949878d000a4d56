"""Rotary position embedding (RoPE) for MLA's decoupled rope part of the query and key.

The "rotate half" layout: dimension i is paired with i + dim/2 (not the interleaved pairs of the original
DeepSeek weights). Angles come from absolute positions per row, so right-padded batches and cached decoding
rotate every token by its own position.
"""

from __future__ import annotations

import torch
from torch import nn

from model.modules.norm import cast, upcast


class RotaryEmbedding(nn.Module):
    """cos/sin tables for given positions; `theta` is the base of the geometric frequency ladder."""

    def __init__(self, dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"rotary dimension must be even, got {dim}")
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        # Each frequency twice, for dimension i and its partner i + dim/2.
        self.register_buffer("inv_freq", torch.cat((inv_freq, inv_freq)), persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (...,) integer -> cos, sin of shape (..., dim) in inv_freq's dtype (fp32 unless fp64)."""
        angles = positions.to(self.inv_freq.dtype).unsqueeze(-1) * self.inv_freq
        return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., dim) by angles broadcastable to it; computed in at least fp32, returned in x's dtype."""
    xf = upcast(x)
    half = xf.shape[-1] // 2
    rotated = torch.cat((-xf[..., half:], xf[..., :half]), dim=-1)
    return cast(xf * cos + rotated * sin, x.dtype)
