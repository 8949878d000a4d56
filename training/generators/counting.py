"""Counting, comparing and ordering tasks, each with an explicit step-by-step trace.

Letters are spelled out before they are counted and numbers are compared digit by digit, so the trace exposes
what byte-level tokens hide (how many 'r' are in "strawberry") and what a single glance gets wrong.
"""

from __future__ import annotations

import random

from training.generators.base import Task, integers, join_words, last_integer

_WORDS_TEXT = (
    "strawberry banana apple cherry orange lemon tomato potato balloon rabbit kitten puppy elephant giraffe "
    "butterfly mississippi bookkeeper committee necessary address success coffee letter little happiness "
    "pepper parrot garden window rainbow forest river mountain teacher picture pizza tree yellow"
)
WORDS = _WORDS_TEXT.split()
_ITEMS_TEXT = {
    "fruits": "apple pear plum grape cherry mango peach lemon kiwi fig",
    "animals": "cat dog bird fish horse cow duck frog sheep goat",
    "colours": "red blue green yellow purple orange pink brown black white",
    "toys": "ball doll kite car train block robot puzzle drum yo-yo",
}
ITEMS = {category: words.split() for category, words in _ITEMS_TEXT.items()}
KINDS = ("letters", "items", "compare", "sort")


def compare_trace(a: int, b: int) -> list[str]:
    """Compare by length, then digit by digit from the left."""
    sa, sb = str(a), str(b)
    if len(sa) != len(sb):
        longer = a if len(sa) > len(sb) else b
        return [f"{a} has {len(sa)} digits and {b} has {len(sb)} digits, so {longer} is larger."]
    lines = [f"Both have {len(sa)} digits; compare from the left."]
    for i, (x, y) in enumerate(zip(sa, sb, strict=True)):
        if x != y:
            larger = a if x > y else b
            lines.append(f"digit {i + 1}: {x} vs {y}, so {larger} is larger.")
            return lines
        lines.append(f"digit {i + 1}: {x} vs {y}, equal.")
    lines.append("All digits are equal.")
    return lines


class CountingGenerator:
    """Letter counts in words, item counts in lists, comparison of two numbers, sorting a list of numbers."""

    name = "counting"

    def __init__(self, kinds: tuple[str, ...] = KINDS, max_number: int = 999, max_list: int = 6):
        unknown = [kind for kind in kinds if kind not in KINDS]
        if unknown or not kinds:
            raise ValueError(f"counting generator: unknown kinds {unknown}; use a subset of {list(KINDS)}")
        if max_number < 10 or max_list < 2:
            raise ValueError("counting generator: max_number must be >= 10 and max_list >= 2")
        self.kinds = tuple(kinds)
        self.max_number = max_number
        self.max_list = max_list

    def sample(self, rng: random.Random) -> Task:
        kind = rng.choice(self.kinds)
        return getattr(self, f"_{kind}")(rng)

    def _letters(self, rng: random.Random) -> Task:
        word = rng.choice(WORDS)
        letter = (
            rng.choice(sorted(set(word))) if rng.random() < 0.85 else rng.choice("abcdefghijklmnopqrstuvwxyz")
        )
        positions = [i + 1 for i, ch in enumerate(word) if ch == letter]
        lines = [f"Spell it: {'-'.join(word)}."]
        if positions:
            plural = "s" if len(positions) > 1 else ""
            lines.append(f"'{letter}' is at position{plural} {join_words(map_str(positions))}.")
        else:
            lines.append(f"'{letter}' does not occur.")
        lines.append(f"That makes {len(positions)}.")
        times = "time" if len(positions) == 1 else "times"
        return Task(
            self.name,
            "letters",
            f"How many times does the letter '{letter}' appear in '{word}'?",
            "\n".join(lines),
            f"The letter '{letter}' appears {len(positions)} {times} in '{word}'.",
            expected=len(positions),
        )

    def _items(self, rng: random.Random) -> Task:
        category = rng.choice(sorted(ITEMS))
        n = rng.randint(2, self.max_list + 2)
        chosen = [rng.choice(ITEMS[category]) for _ in range(n)]
        lines = [f"{i + 1}: {item}" for i, item in enumerate(chosen)]
        lines.append(f"The last item is number {n}.")
        return Task(
            self.name,
            "items",
            f"How many {category} are in this list: {', '.join(chosen)}?",
            "\n".join(lines),
            f"There are {n} {category} in the list.",
            expected=n,
        )

    def _compare(self, rng: random.Random) -> Task:
        a = rng.randint(0, self.max_number)
        b = a
        while b == a:
            b = rng.choice([rng.randint(0, self.max_number), _swap_digits(a, rng)])
        ask_larger = rng.random() < 0.5
        target = max(a, b) if ask_larger else min(a, b)
        other = min(a, b) if ask_larger else max(a, b)
        word = "larger" if ask_larger else "smaller"
        lines = compare_trace(a, b)
        if not ask_larger:
            lines.append(f"So the smaller one is {target}.")
        return Task(
            self.name,
            "compare",
            f"Which is {word}, {a} or {b}?",
            "\n".join(lines),
            f"{target} is {word} than {other}.",
            expected=target,
        )

    def _sort(self, rng: random.Random) -> Task:
        n = rng.randint(3, self.max_list)
        numbers = rng.sample(range(self.max_number + 1), n)
        descending = rng.random() < 0.3
        remaining, ordered, lines = list(numbers), [], []
        pick = "largest" if descending else "smallest"
        while len(remaining) > 1:
            best = max(remaining) if descending else min(remaining)
            lines.append(f"The {pick} of {', '.join(map_str(remaining))} is {best}.")
            ordered.append(best)
            remaining.remove(best)
        ordered.append(remaining[0])
        lines.append(f"Then {remaining[0]} is left.")
        direction = "largest to smallest" if descending else "smallest to largest"
        return Task(
            self.name,
            "sort",
            f"Sort these numbers from {direction}: {', '.join(map_str(numbers))}.",
            "\n".join(lines),
            ", ".join(map_str(ordered)),
            expected=ordered,
        )

    def check(self, task: Task, answer: str) -> bool:
        if task.kind == "sort":
            return integers(answer) == task.expected
        if task.kind == "compare":
            found = integers(answer)
            return bool(found) and found[0] == task.expected
        return last_integer(answer) == task.expected


def map_str(values: list[int]) -> list[str]:
    return [str(v) for v in values]


def _swap_digits(a: int, rng: random.Random) -> int:
    """A near miss such as 428 for 482: the comparisons a glance gets wrong."""
    digits = list(str(a))
    if len(digits) < 2:
        return a
    i = rng.randrange(len(digits) - 1)
    digits[i], digits[i + 1] = digits[i + 1], digits[i]
    return int("".join(digits))
