"""Experimental fast/slow router: a learned per-token gate between a cheap and a full feed-forward path.

    g      = softmax(W_g x / temperature)                         over n_experts paths, per token
    out    = g_0 * fast(x) + sum_{i >= 1} g_i * slow_i(x)

Path 0 ("fast") is a skip-lite SwiGLU an eighth the width of the block's feed-forward; paths 1.. ("slow") are
full-width SwiGLUs. Only the feed-forward is routed: the sequence mixer must see every token to keep its cache
and state exact. The mixture is dense (every path runs) in training and decoding alike, so the gate trains by
plain backpropagation and a full forward and step-by-step decoding agree; the gate is a full-precision
nn.Linear (a two-way decision is too coarse for ternary weights) initialised to zero, i.e. an even split.
"""

from __future__ import annotations

import torch
from torch import nn

from model.config import NanoPrimeConfig
from model.modules.ffn import SwiGLU
from model.modules.norm import upcast

FAST_WIDTH_DIVISOR = 8


class Router(nn.Module):
    """Soft mixture of a fast and one or more slow feed-forward paths (see the module docstring)."""

    def __init__(self, config: NanoPrimeConfig) -> None:
        super().__init__()
        if config.router.n_experts < 2:
            raise ValueError(f"the router needs n_experts >= 2 (fast + slow), got {config.router.n_experts}")
        self.temperature = config.router.temperature
        self.gate = nn.Linear(config.d_model, config.router.n_experts)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        fast = SwiGLU(config, hidden=max(config.ffn_hidden // FAST_WIDTH_DIVISOR, 8))
        self.paths = nn.ModuleList([fast] + [SwiGLU(config) for _ in range(config.router.n_experts - 1)])

    def gate_probs(self, x: torch.Tensor) -> torch.Tensor:
        """(…, n_experts) routing probabilities per token."""
        return torch.softmax(upcast(self.gate(x)) / self.temperature, dim=-1).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = self.gate_probs(x)
        return sum(probs[..., i : i + 1] * path(x) for i, path in enumerate(self.paths))
