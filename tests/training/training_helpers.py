"""Helpers shared by the training tests: a synthetic story corpus and a tiny-model recipe."""

from __future__ import annotations

import random
from pathlib import Path

NAMES = ["Max", "Lily", "Tom", "Sue", "Ben", "Mia"]
ANIMALS = ["dog", "cat", "little bird", "big bear", "small fox"]
THINGS = ["ball", "kite", "apple", "boat", "hat", "drum"]
PLACES = ["park", "garden", "forest", "river", "beach"]


def make_stories(n: int, seed: int = 0) -> list[str]:
    """Short TinyStories-like texts, each naming its character ('a dog named Max')."""
    rng = random.Random(seed)
    stories = []
    for _ in range(n):
        name, animal = rng.choice(NAMES), rng.choice(ANIMALS)
        thing, place = rng.choice(THINGS), rng.choice(PLACES)
        stories.append(
            f"Once upon a time, there was a {animal} named {name}. {name} liked to play in the {place}. "
            f"One day, {name} found a red {thing} under a tree. {name} was very happy and showed the {thing} "
            f"to a friend. They played with the {thing} all day in the {place}. The end."
        )
    return stories


def tiny_recipe(
    out_dir: Path, corpus_dir: Path, tokenizer_dir: Path, steps: int = 12, **sections: dict
) -> dict:
    """A recipe for a two-layer tiny model on stories, arithmetic and counting; `sections` merge in."""
    recipe = {
        "seed": 7,
        "out_dir": str(out_dir),
        "model": {"preset": "tiny", "n_layers": 2, "max_seq_len": 128},
        "tokenizer": {"path": str(tokenizer_dir)},
        "data": {
            "val_docs": 8,
            "val_rows": 4,
            "val_fraction": 0.1,
            "sources": {
                "stories": {"type": "text", "paths": [str(corpus_dir / "stories.txt")]},
                "arithmetic": {"type": "generator", "generator": "arithmetic", "options": {"max_digits": 2}},
                "counting": {"type": "generator", "generator": "counting"},
            },
        },
        "phases": [{"name": "main", "mixture": {"stories": 1.0, "arithmetic": 1.0, "counting": 1.0}}],
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "train": {
            "steps": steps,
            "micro_batch_size": 2,
            "seq_len": 32,
            "log_every": 1,
            "eval_every": 1000,
            "plot": False,
        },
    }
    for name, values in sections.items():
        if isinstance(values, dict) and isinstance(recipe.get(name), dict):
            recipe[name] = recipe[name] | values
        else:
            recipe[name] = values
    return recipe
