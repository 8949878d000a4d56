"""Per-request inference state for a batch: every layer's cache, tokens seen per row, and whose state it is.

The caches are a flat list in the model's layer order (a thinking loop contributes one cache per iteration);
each is a dataclass of tensors with the batch as dim 0 offering nbytes(lengths), select(indices), clone() and
concat(caches, lengths). The serving operations here build new states and never touch the model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from typing import Any

import torch

from model.config import NanoPrimeConfig

# Switches that change how a model trains, not the shapes or meaning of its state.
_FINGERPRINT_IGNORES = ("gradient_checkpointing",)


def config_fingerprint(config: NanoPrimeConfig) -> str:
    """A short hash of everything in the config that decides the state's layout and meaning."""
    data = {k: v for k, v in config.to_dict().items() if k not in _FINGERPRINT_IGNORES}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class InferenceState:
    caches: list[Any]
    lengths: torch.Tensor  # (B,) long: tokens already seen per row
    fingerprint: str

    @property
    def batch_size(self) -> int:
        return self.lengths.shape[0]

    def nbytes(self) -> int:
        """Bytes of cache in use: MLA counts lengths.sum() tokens, Mamba its fixed state per row."""
        return sum(cache.nbytes(self.lengths) for cache in self.caches)

    @classmethod
    def concat(cls, states: list[InferenceState]) -> InferenceState:
        """One state holding the rows of `states` in order (for adding sequences to a running batch)."""
        if not states:
            raise ValueError("InferenceState.concat needs at least one state")
        first = states[0]
        for other in states[1:]:
            if other.fingerprint != first.fingerprint:
                raise ValueError("cannot concat inference states made by models with different configs")
            if other.lengths.device != first.lengths.device:
                raise ValueError(f"cannot concat states on {first.lengths.device} and {other.lengths.device}")
        caches = [
            type(layer_caches[0]).concat(list(layer_caches), [s.lengths for s in states])
            for layer_caches in zip(*(s.caches for s in states), strict=True)
        ]
        return cls(caches, torch.cat([s.lengths for s in states]), first.fingerprint)

    def select(self, indices: list[int] | torch.Tensor) -> InferenceState:
        """The rows `indices` in that order (drop finished sequences, reorder, or duplicate a row)."""
        index = torch.as_tensor(indices, dtype=torch.long, device=self.lengths.device)
        if index.dim() != 1:
            raise ValueError(f"select indices must be a 1-D list of rows, got shape {tuple(index.shape)}")
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.batch_size):
            raise ValueError(f"select indices must be rows in [0, {self.batch_size}), got {index.tolist()}")
        return InferenceState(
            [c.select(index) for c in self.caches], self.lengths[index].clone(), self.fingerprint
        )

    def clone(self) -> InferenceState:
        return InferenceState([c.clone() for c in self.caches], self.lengths.clone(), self.fingerprint)

    def to(self, device: torch.device | str) -> InferenceState:
        caches = [
            type(c)(**{f.name: getattr(c, f.name).to(device) for f in dataclasses.fields(c)})
            for c in self.caches
        ]
        return InferenceState(caches, self.lengths.to(device), self.fingerprint)
