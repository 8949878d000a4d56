"""What every generated reasoning task is: a prompt, a visible reasoning trace, an answer, and a checker.

Generators are deterministic functions of a `random.Random`, so sample k of a run is always the same task and
the data position can be resumed without replaying the stream. Each generator's `check` scores a model's
answer against the task, which is how evaluation turns generated tasks into accuracy figures.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

_INT = re.compile(r"-?\d[\d,]*")


@dataclass(frozen=True)
class Task:
    """One generated chat exchange; `expected` is what the checker looks for in an answer."""

    generator: str
    kind: str
    prompt: str
    thinking: str
    answer: str
    expected: Any
    meta: dict[str, Any] = field(default_factory=dict)

    def messages(self, thinking: bool = True) -> list[dict[str, str]]:
        """The exchange as chat messages; thinking=False trains the empty-think-block (thinking off) form."""
        return [
            {"role": "user", "content": self.prompt},
            {"role": "assistant", "content": self.answer, "thinking": self.thinking if thinking else ""},
        ]


class Generator(Protocol):
    name: str

    def sample(self, rng: random.Random) -> Task: ...

    def check(self, task: Task, answer: str) -> bool: ...


def integers(text: str) -> list[int]:
    """All integers written in `text`, thousands separators allowed ("12,345")."""
    values = []
    for match in _INT.finditer(text):
        token = match.group().rstrip(",")
        digits = token.replace(",", "")
        if digits not in ("", "-"):
            values.append(int(digits))
    return values


def last_integer(text: str) -> int | None:
    values = integers(text)
    return values[-1] if values else None


def join_words(words: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(words) <= 1:
        return "".join(words)
    return ", ".join(words[:-1]) + " and " + words[-1]
