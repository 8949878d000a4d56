"""Generated chat tasks with visible reasoning, each with a checker (see base.py)."""

from __future__ import annotations

import inspect
from typing import Any

from training.generators.arithmetic import ArithmeticGenerator
from training.generators.base import Generator, Task
from training.generators.counting import CountingGenerator
from training.generators.stories import StoryGenerator

GENERATORS: dict[str, Any] = {
    "arithmetic": ArithmeticGenerator,
    "counting": CountingGenerator,
    "stories": StoryGenerator.from_files,
}

__all__ = ["GENERATORS", "Generator", "Task", "build_generator"]


def build_generator(name: str, options: dict[str, Any] | None = None) -> Generator:
    """A generator by registry name; unknown names and options are errors that name them."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator '{name}'; choose one of {sorted(GENERATORS)}")
    factory = GENERATORS[name]
    options = dict(options or {})
    accepted = set(inspect.signature(factory).parameters) - {"options"}
    accepted |= set(inspect.signature(StoryGenerator).parameters) if name == "stories" else set()
    unknown = sorted(set(options) - accepted - {"stories"})
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for generator '{name}'")
    for key in ("ops", "kinds"):
        if key in options:
            options[key] = tuple(options[key])
    if name == "stories" and "paths" not in options:
        raise ValueError("generator 'stories' needs 'paths' (the story corpus files)")
    return factory(**options)
