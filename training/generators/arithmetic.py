"""Multi-digit addition, subtraction and multiplication with column-by-column reasoning traces.

The trace is the school method written out one column at a time (digit, carry or borrow), so a small model can
learn an algorithm whose every step is a single-digit fact instead of memorising sums.
"""

from __future__ import annotations

import random

from training.generators.base import Task, last_integer

_PLACES = ["ones", "tens", "hundreds", "thousands", "ten-thousands", "hundred-thousands", "millions"]
_PROMPTS = {
    "+": ["What is {a} + {b}?", "Compute {a} plus {b}.", "Add {a} and {b}.", "How much is {a} + {b}?"],
    "-": ["What is {a} - {b}?", "Compute {a} minus {b}.", "Subtract {b} from {a}.", "How much is {a} - {b}?"],
    "*": ["What is {a} × {b}?", "Compute {a} times {b}.", "Multiply {a} by {b}.", "How much is {a} × {b}?"],
}
_SYMBOL = {"+": "+", "-": "-", "*": "×"}


def _place(index: int) -> str:
    return _PLACES[index] if index < len(_PLACES) else f"column {index + 1}"


def addition_trace(a: int, b: int) -> list[str]:
    """Column addition of two non-negative integers, least significant digit first."""
    da, db = str(a)[::-1], str(b)[::-1]
    lines = [f"Add {a} and {b} column by column from the right."]
    carry, digits = 0, []
    for i in range(max(len(da), len(db))):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        total = x + y + carry
        lines.append(
            f"{_place(i)}: {x} + {y} + carry {carry} = {total}, write {total % 10}, carry {total // 10}"
        )
        digits.append(str(total % 10))
        carry = total // 10
    if carry:
        lines.append(f"the last carry {carry} becomes the leading digit")
        digits.append(str(carry))
    lines.append(f"Reading the digits from the left: {int(''.join(reversed(digits)))}")
    return lines


def subtraction_trace(a: int, b: int) -> list[str]:
    """Column subtraction with borrowing of a - b for a >= b >= 0."""
    da, db = str(a)[::-1], str(b)[::-1]
    lines = [f"Subtract {b} from {a} column by column from the right."]
    borrow, digits = 0, []
    for i in range(len(da)):
        x = int(da[i]) - borrow
        y = int(db[i]) if i < len(db) else 0
        if x < y:
            lines.append(f"{_place(i)}: {x} is less than {y}, borrow 1: {x + 10} - {y} = {x + 10 - y}")
            digits.append(str(x + 10 - y))
            borrow = 1
        else:
            lines.append(f"{_place(i)}: {x} - {y} = {x - y}")
            digits.append(str(x - y))
            borrow = 0
    lines.append(f"Reading the digits from the left: {int(''.join(reversed(digits)))}")
    return lines


def comparison_line(a: int, b: int) -> str:
    """Which of a and b is larger, decided in writing: by the digit counts, else by the first digits from the
    left that differ. The trace then never has to guess the sign before it has looked at a digit."""
    sa, sb = str(a), str(b)
    if len(sa) != len(sb):
        reason = f"{a} has {len(sa)} digit{'s' if len(sa) > 1 else ''} and {b} has {len(sb)}"
    elif a == b:
        return f"Compare {a} and {b}: they are equal."
    else:
        x, y = next((x, y) for x, y in zip(sa, sb, strict=True) if x != y)
        reason = f"both have {len(sa)} digit{'s' if len(sa) > 1 else ''}, and the first digits from the left "
        reason += f"that differ are {x} and {y}"
    return f"Compare {a} and {b}: {reason}, so {max(a, b)} is larger."


def single_digit_product_trace(a: int, d: int) -> list[str]:
    """a × d for one digit d, digit by digit with carries."""
    lines = [f"Multiply {a} by {d}:"]
    carry, digits = 0, []
    for i, ch in enumerate(str(a)[::-1]):
        x = int(ch)
        total = x * d + carry
        lines.append(
            f"  {_place(i)}: {x} × {d} + carry {carry} = {total}, write {total % 10}, carry {total // 10}"
        )
        digits.append(str(total % 10))
        carry = total // 10
    if carry:
        digits.append(str(carry))
    lines.append(f"  so {a} × {d} = {a * d}")
    return lines


def multiplication_trace(a: int, b: int) -> list[str]:
    """Long multiplication: one partial product per digit of b, shifted, then summed."""
    lines = [f"Multiply {a} by each digit of {b}, then add the shifted partial products."]
    partials = []
    for i, ch in enumerate(str(b)[::-1]):
        d = int(ch)
        lines.extend(single_digit_product_trace(a, d))
        shifted = a * d * 10**i
        if i:
            lines.append(f"  shifted {i} place{'s' if i > 1 else ''}: {shifted}")
        partials.append(shifted)
    total = partials[0]
    for partial in partials[1:]:
        lines.extend(addition_trace(total, partial))
        total += partial
    lines.append(f"The product is {total}")
    return lines


class ArithmeticGenerator:
    """Random a op b with op in {+, -, ×}; sizes bounded by max_digits (and multiplier_digits for ×).

    `compare_first` starts every subtraction's trace with comparison_line, so whether the result is negative
    is written after the digits were looked at rather than decided by the trace's first word.
    """

    name = "arithmetic"

    def __init__(
        self,
        max_digits: int = 4,
        multiplier_digits: int = 2,
        ops: tuple[str, ...] = ("+", "-", "*"),
        compare_first: bool = False,
    ):
        if max_digits < 1 or multiplier_digits < 1:
            raise ValueError("arithmetic generator: max_digits and multiplier_digits must be >= 1")
        unknown = [op for op in ops if op not in _PROMPTS]
        if unknown or not ops:
            raise ValueError(f"arithmetic generator: unknown ops {unknown}; use a subset of {list(_PROMPTS)}")
        self.max_digits = max_digits
        self.multiplier_digits = multiplier_digits
        self.ops = tuple(ops)
        self.compare_first = compare_first

    def _number(self, rng: random.Random, max_digits: int) -> int:
        digits = rng.randint(1, max_digits)
        return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10**digits - 1)

    def sample(self, rng: random.Random) -> Task:
        op = rng.choice(self.ops)
        a = self._number(rng, self.max_digits)
        b = self._number(rng, self.multiplier_digits if op == "*" else self.max_digits)
        prompt = rng.choice(_PROMPTS[op]).format(a=a, b=b)
        if op == "+":
            result, lines = a + b, addition_trace(a, b)
        elif op == "-":
            result = a - b
            lines = [comparison_line(a, b)] if self.compare_first else []
            if a >= b:
                lines += subtraction_trace(a, b)
            else:
                lines += [f"{a} is smaller than {b}, so the result is negative: {a} - {b} = -({b} - {a})."]
                lines += subtraction_trace(b, a)
                lines.append(f"With the minus sign: {result}")
        else:
            result, lines = a * b, multiplication_trace(a, b)
        answer = f"{a} {_SYMBOL[op]} {b} = {result}"
        return Task(self.name, op, prompt, "\n".join(lines), answer, expected=result)

    def check(self, task: Task, answer: str) -> bool:
        """Right when the last integer of the answer is the result."""
        return last_integer(answer) == task.expected
