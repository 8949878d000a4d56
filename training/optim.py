"""Parameter groups (LeRaC depth x weight decay) and the AdamW optimizer.

Each group carries its `depth` (0 = embeddings, 1..n = blocks, n+1 = final norm and head) so the loop can set
`lr = schedule(step) * lerac(depth, step)` per group. Weight decay (decoupled, AdamW) applies to matrices
only: norms, biases and the Mamba dynamics parameters (A_log, D, dt_bias) are left alone.
"""

from __future__ import annotations

import importlib.util
import re

import torch
from torch import nn

_BLOCK_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")
_NO_DECAY_NAMES = ("A_log", "dt_bias", ".D", "bias")


def parameter_depth(name: str, n_layers: int) -> int:
    if name.startswith("embed."):
        return 0
    match = _BLOCK_INDEX.search(name)
    return int(match.group(1)) + 1 if match else n_layers + 1


def param_groups(model: nn.Module, n_layers: int, weight_decay: float) -> list[dict]:
    """One group per (depth, decays) pair that has parameters; shared (tied) tensors appear once."""
    groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():  # named_parameters skips the tied head's duplicate
        if not param.requires_grad:
            continue
        decays = param.dim() >= 2 and not name.endswith(_NO_DECAY_NAMES)
        groups.setdefault((parameter_depth(name, n_layers), decays), []).append(param)
    return [
        {"params": params, "depth": depth, "weight_decay": weight_decay if decays else 0.0}
        for (depth, decays), params in sorted(groups.items())
    ]


def build_optimizer(
    groups: list[dict],
    lr: float,
    betas: tuple[float, float],
    eps: float,
    device: torch.device,
    eight_bit: bool,
) -> tuple[torch.optim.Optimizer, str]:
    """AdamW and a line saying which: bitsandbytes' 8-bit AdamW when asked for, installed and on CUDA,
    else torch's (the fallback is reported, not silent)."""
    if eight_bit and device.type == "cuda" and importlib.util.find_spec("bitsandbytes") is not None:
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(
            groups, lr=lr, betas=betas, eps=eps
        ), "optimizer: bitsandbytes AdamW8bit"
    note = "optimizer: torch AdamW"
    if eight_bit:
        reason = "not on CUDA" if device.type != "cuda" else "bitsandbytes is not installed"
        note += f" (8-bit AdamW unavailable: {reason})"
    if device.type == "cuda":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True), note
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, foreach=True), note  # fewer small kernels
