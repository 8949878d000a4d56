"""Packing documents into fixed-length rows without mixing a document's tokens across rows needlessly.

Each row holds `seq_len + 1` tokens (inputs are row[:-1], targets row[1:]). Documents go whole into the open
row that fits them most tightly (best fit over a few open rows); a document longer than a row is cut into
row-sized chunks. A row leaves when it is full or when too many rows are open (the fullest one leaves), and is
padded with the pad id under mask 0, so padding never trains; chunks without targets (a long prompt's middle)
are dropped. Everything is a deterministic function of the document order.
"""

from __future__ import annotations

from collections import deque
from typing import Any


class Packer:
    def __init__(self, seq_len: int, pad_id: int, open_rows: int = 8):
        if seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {seq_len}")
        self.seq_len = seq_len
        self.pad_id = pad_id
        self.open_rows = open_rows
        self._open: list[tuple[list[int], list[int]]] = []
        self._ready: deque[tuple[list[int], list[int]]] = deque()

    @property
    def row_len(self) -> int:
        return self.seq_len + 1

    def __len__(self) -> int:
        """Rows ready to be taken."""
        return len(self._ready)

    def add(self, ids: list[int], mask: list[int]) -> None:
        for start in range(0, len(ids), self.row_len):
            chunk_ids, chunk_mask = ids[start : start + self.row_len], mask[start : start + self.row_len]
            if len(chunk_ids) < 2 or not any(chunk_mask):  # nothing in it would train
                continue
            fits = [i for i, (row, _) in enumerate(self._open) if self.row_len - len(row) >= len(chunk_ids)]
            if fits:
                best = min(fits, key=lambda i: self.row_len - len(self._open[i][0]))
                self._open[best][0].extend(chunk_ids)
                self._open[best][1].extend(chunk_mask)
                if len(self._open[best][0]) == self.row_len:
                    self._ready.append(self._open.pop(best))
            elif len(chunk_ids) == self.row_len:
                self._ready.append((list(chunk_ids), list(chunk_mask)))
            else:
                self._open.append((list(chunk_ids), list(chunk_mask)))
            while len(self._open) > self.open_rows:
                fullest = max(range(len(self._open)), key=lambda i: len(self._open[i][0]))
                self._ready.append(self._open.pop(fullest))

    def flush(self) -> None:
        """Close every open row (end of a finite stream, such as the validation set)."""
        self._ready.extend(self._open)
        self._open = []

    def pop(self) -> tuple[list[int], list[int]]:
        """The next ready row, padded to row_len."""
        ids, mask = self._ready.popleft()
        pad = self.row_len - len(ids)
        return ids + [self.pad_id] * pad, mask + [0] * pad

    def resized(self, seq_len: int) -> Packer:
        """A packer for a new length (curriculum step) holding this one's pending tokens, in order."""
        packer = Packer(seq_len, self.pad_id, self.open_rows)
        for ids, mask in list(self._ready) + self._open:
            packer.add(ids, mask)
        return packer

    def state_dict(self) -> dict[str, Any]:
        return {
            "seq_len": self.seq_len,
            "open": [[ids, mask] for ids, mask in self._open],
            "ready": [[ids, mask] for ids, mask in self._ready],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seq_len = int(state["seq_len"])
        self._open = [(list(ids), list(mask)) for ids, mask in state["open"]]
        self._ready = deque((list(ids), list(mask)) for ids, mask in state["ready"])
