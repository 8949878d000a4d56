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
    """cos and signed sin tables for positions 0..max_positions-1; `theta` is the frequency ladder's base.

    The tables are computed once: a decoding step only indexes them (two ops, not six per layer and token).
    The sin table carries the rotate-half sign (-sin for the first half), so a rotation is
    x * cos + [x2, x1] * signed_sin for x = [x1, x2].
    """

    def __init__(self, dim: int, max_positions: int, theta: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"rotary dimension must be even, got {dim}")
        inv_freq = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        # Each frequency twice, for dimension i and its partner i + dim/2.
        self.register_buffer("inv_freq", torch.cat((inv_freq, inv_freq)), persistent=False)
        angles = torch.arange(max_positions, dtype=torch.float32).unsqueeze(-1) * self.inv_freq
        sin = angles.sin()
        half = dim // 2
        self.register_buffer("cos_table", angles.cos(), persistent=False)
        signed_sin = torch.cat((-sin[:, :half], sin[:, half:]), dim=-1)
        self.register_buffer("sin_table", signed_sin, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (...,) integer, each below max_positions -> cos, signed sin of shape (..., dim)."""
        return self.cos_table[positions], self.sin_table[positions]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., dim) by tables broadcastable to it; computed in at least fp32, returned in x's dtype."""
    xf = upcast(x)
    half = xf.shape[-1] // 2
    swapped = torch.cat((xf[..., half:], xf[..., :half]), dim=-1)  # Tensor.roll costs ~10x more on CPU
    return cast(xf * cos + swapped * signed_sin, x.dtype)
