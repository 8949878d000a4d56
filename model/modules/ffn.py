"""SwiGLU feed-forward with BitLinear projections: down(silu(gate(x)) * up(x))."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.config import NanoPrimeConfig
from model.modules.bitnet import make_linear


class SwiGLU(nn.Module):
    """Gate and up projections share one matrix (one input norm and activation quantization for both)."""

    def __init__(self, config: NanoPrimeConfig, hidden: int | None = None) -> None:
        super().__init__()
        self.hidden = hidden or config.ffn_hidden
        self.gate_up = make_linear(config, config.d_model, 2 * self.hidden)
        self.down = make_linear(config, self.hidden, config.d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)
