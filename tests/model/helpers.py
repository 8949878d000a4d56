"""Shared helpers for the model tests: building tiny models, feeding a sequence in pieces, counting kernel
calls."""

from __future__ import annotations

import pytest
import torch

from model.config import preset
from model.modules import cpu_kernels
from model.nanoprime import NanoPrime
from model.state import InferenceState

# Layer patterns covering every mixer: Mamba-2 + MLA (the default), Mamba v1 + MLA.
PATTERNS = {
    "mamba2+mla": {"mamba.use_mamba2": True},
    "mamba1+mla": {"mamba.use_mamba2": False},
}


def tiny_model(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> NanoPrime:
    """A tiny-preset model in eval mode; overrides are dotted config keys."""
    torch.manual_seed(seed)
    config = preset("tiny").with_overrides(**overrides)
    return NanoPrime(config).to(dtype).eval()


def run_in_pieces(
    model: NanoPrime, ids: torch.Tensor, pieces: list[int]
) -> tuple[torch.Tensor, InferenceState]:
    """Feed ids through a fresh state piece by piece (a piece of 1 is a decode step); concatenated logits."""
    state = model.new_state(ids.shape[0])
    outputs, start = [], 0
    with torch.no_grad():
        for n in pieces:
            logits, state = model(ids[:, start : start + n], state)
            outputs.append(logits)
            start += n
    assert start == ids.shape[1], "pieces must cover the sequence"
    return torch.cat(outputs, dim=1), state


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


def count_kernel_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[int]:
    """Wrap cpu_kernels.<name> so that each call (still the real kernel) appends 1 to the returned list."""
    calls: list[int] = []
    original = getattr(cpu_kernels, name)
    monkeypatch.setattr(cpu_kernels, name, lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls
