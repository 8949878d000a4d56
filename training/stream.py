"""The training data stream: a weighted mixture of sources per phase, tokenized, masked and packed into
batches.

Its whole position is a few counters (phase, draws in this phase, samples taken from each source) plus the
rows waiting in the packer, so a checkpoint can restore it exactly. Draw k of a phase picks its source with
Random(seed:phase:rank:k), which needs no saved random state.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from model.tokenizer import Tokenizer
from training.encoding import encode_sample
from training.packing import Packer
from training.sources import Sample, Source


class DataStream:
    def __init__(
        self,
        tokenizer: Tokenizer,
        sources: Mapping[str, Source],
        phases: list[tuple[str, Mapping[str, float]]],
        seed: int,
        rank: int = 0,
        open_rows: int = 8,
    ):
        for phase, weights in phases:
            unknown = sorted(set(weights) - set(sources))
            if unknown:
                raise ValueError(
                    f"phase '{phase}' mixes unknown data source(s) {unknown}; defined: {sorted(sources)}"
                )
            if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
                raise ValueError(f"phase '{phase}' needs positive mixture weights")
        self.tokenizer = tokenizer
        self.sources = dict(sources)
        self.phases = phases
        self.seed = seed
        self.rank = rank
        self.open_rows = open_rows
        self.phase = 0
        self.draws = 0
        self.consumed = dict.fromkeys(self.sources, 0)
        self.packer: Packer | None = None
        self._iters: dict[str, Iterator[Sample]] = {}

    # ---- drawing samples -----------------------------------------------------------------------------------
    def set_phase(self, index: int) -> None:
        if index != self.phase:
            self.phase, self.draws = index, 0

    def _pick(self) -> str:
        name, weights = self.phases[self.phase]
        names = [n for n, w in weights.items() if w > 0]
        cumulative = list(itertools.accumulate(weights[n] for n in names))
        u = random.Random(f"{self.seed}:{name}:{self.rank}:{self.draws}").random() * cumulative[-1]
        return names[min(bisect.bisect_right(cumulative, u), len(names) - 1)]

    def next_sample(self) -> Sample:
        source = self._pick()
        if source not in self._iters:
            self._iters[source] = self.sources[source].train_iter(self.consumed[source])
        sample = next(self._iters[source])
        self.draws += 1
        self.consumed[source] += 1
        return sample

    # ---- batches -------------------------------------------------------------------------------------------
    def next_batch(self, batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(inputs, targets, loss mask), each (batch_size, seq_len)."""
        if self.packer is None:
            self.packer = Packer(seq_len, self.tokenizer.pad_id, self.open_rows)
        elif self.packer.seq_len != seq_len:
            self.packer = self.packer.resized(seq_len)
        while len(self.packer) < batch_size:
            self.packer.add(*encode_sample(self.tokenizer, self.next_sample()))
        rows = [self.packer.pop() for _ in range(batch_size)]
        return rows_to_batch(rows)

    def state_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "draws": self.draws,
            "consumed": dict(self.consumed),
            "packer": self.packer.state_dict() if self.packer is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.phase, self.draws = int(state["phase"]), int(state["draws"])
        unknown = sorted(set(state["consumed"]) - set(self.sources))
        if unknown:
            raise ValueError(f"checkpoint data position names data sources not in this recipe: {unknown}")
        self.consumed = dict.fromkeys(self.sources, 0) | {k: int(v) for k, v in state["consumed"].items()}
        self._iters = {}
        self.packer = None
        if state.get("packer"):
            self.packer = Packer(int(state["packer"]["seq_len"]), self.tokenizer.pad_id, self.open_rows)
            self.packer.load_state_dict(state["packer"])


def rows_to_batch(rows: list[tuple[list[int], list[int]]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids = torch.tensor([r[0] for r in rows], dtype=torch.long)
    mask = torch.tensor([r[1] for r in rows], dtype=torch.float32)
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous(), mask[:, 1:].contiguous()


def validation_rows(
    tokenizer: Tokenizer, samples: list[Sample], seq_len: int
) -> list[tuple[list[int], list[int]]]:
    """The held-out samples packed once, in order, for a fixed validation set."""
    packer = Packer(seq_len, tokenizer.pad_id, open_rows=64)
    for sample in samples:
        packer.add(*encode_sample(tokenizer, sample))
    packer.flush()
    return [packer.pop() for _ in range(len(packer))]
