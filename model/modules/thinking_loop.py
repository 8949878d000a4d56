"""Experimental recurrent thinking loop: one block re-applied up to max_iterations with learned halting (ACT).

    h_0 = x,  h_k = block(h_{k-1})                       k = 1 .. K (shared weights)
    p_k = sigmoid(w . rmsnorm(h_k) + b)                  halting probability per token
    a token halts at the first k whose running sum of p reaches halt_threshold (or at K);
    weights: p_k before halting, the remainder 1 - sum(p) at the halting step, 0 after
    out = sum_k weight_k * h_k

Every iteration runs for every token: the block contains a sequence mixer, and iteration k at token t reads
iteration k's cache/state of earlier tokens, so each iteration keeps its own cache (K caches for the block).
Halting only decides how the iterates are weighted, which is a pure per-token function of the iterates, so a
full forward and prefill + one-token steps give the same output. The halting head trains through the weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from model.config import NanoPrimeConfig
from model.modules.norm import rms_norm, upcast

HALT_BIAS_INIT = -1.0  # p ~ 0.27 at init: early iterations share the output instead of one taking it all


class ThinkingLoop(nn.Module):
    """Wraps a block (anything with `forward(x, caches, past, new)` and `new_caches`) in an ACT loop."""

    def __init__(self, config: NanoPrimeConfig, block: nn.Module) -> None:
        super().__init__()
        self.block = block
        self.max_iterations = config.thinking_loop.max_iterations
        self.halt_threshold = config.thinking_loop.halt_threshold
        self.eps = config.norm_eps
        self.halt = nn.Linear(config.d_model, 1)
        nn.init.normal_(self.halt.weight, std=0.02)
        nn.init.constant_(self.halt.bias, HALT_BIAS_INIT)

    @property
    def n_caches(self) -> int:
        return self.max_iterations * self.block.n_caches

    def new_caches(self, batch_size: int, device: torch.device | str, dtype: torch.dtype) -> list[Any]:
        return [
            c for _ in range(self.max_iterations) for c in self.block.new_caches(batch_size, device, dtype)
        ]

    def forward(
        self,
        x: torch.Tensor,
        caches: list[Any] | None = None,
        past_lengths: torch.Tensor | None = None,
        new_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        per_iteration = self.block.n_caches
        out = torch.zeros_like(x)
        halted_sum = upcast(x.new_zeros(x.shape[:-1]))
        remainder = torch.ones_like(halted_sum)
        running = torch.ones(x.shape[:-1], dtype=torch.bool, device=x.device)
        h = x
        for k in range(self.max_iterations):
            block_caches = None if caches is None else caches[k * per_iteration : (k + 1) * per_iteration]
            h = self.block(h, block_caches, past_lengths, new_lengths)
            if k == self.max_iterations - 1:
                weight = remainder
            else:
                p = torch.sigmoid(upcast(self.halt(rms_norm(h, self.eps)).squeeze(-1)))
                halts_now = running & (halted_sum + p >= self.halt_threshold)
                weight = torch.where(halts_now, remainder, torch.where(running, p, torch.zeros_like(p)))
                halted_sum = halted_sum + p
                running = running & ~halts_now
            out = out + weight.unsqueeze(-1).to(h.dtype) * h
            remainder = remainder - weight
        return out
