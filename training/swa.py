"""Stochastic Weight Averaging: an equal-weight running mean of the weights over the last part of the run.

With a decaying learning rate the final iterates wander around a minimum; their mean usually sits nearer its
centre and generalises a little better (Izmailov et al., 2018). Kept in fp32 next to the model.
"""

from __future__ import annotations

import torch
from torch import nn


class SWA:
    def __init__(self, model: nn.Module):
        self.count = 0
        self.average = {name: p.detach().float().clone() for name, p in model.named_parameters()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.count += 1
        for name, param in model.named_parameters():
            self.average[name].add_(param.detach().float() - self.average[name], alpha=1.0 / self.count)

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite the model's parameters with the average (buffers are left as they are)."""
        for name, param in model.named_parameters():
            param.copy_(self.average[name].to(param.dtype))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {name: t.contiguous() for name, t in self.average.items()}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], count: int) -> None:
        missing = sorted(set(self.average) - set(tensors))
        if missing:
            raise ValueError(f"SWA state lacks {missing[:3]}")
        for name in self.average:
            self.average[name].copy_(tensors[name])
        self.count = count
