"""Shared setup of the training benchmarks: corpus, tokenizer, an equal-size transformer, the recipe.

Both benchmarks push NanoPrime and the baseline through the very same `training.trainer.Trainer` (same data
stream, masks, optimizer, schedule and step code), so the only difference measured is the model.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import torch

from model.config import NanoPrimeConfig
from model.nanoprime import NanoPrime
from model.reference_transformer import ReferenceConfig, ReferenceTransformer
from training.config import recipe_from_dict
from training.distributed import DistInfo, pick_device
from training.tokenizer import train_tokenizer
from training.trainer import Trainer

MODELS = ("nanoprime", "transformer")
DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "tinystories_v2_part.txt"


def corpus(path: Path, out_dir: Path) -> Path:
    """The story file, or (on a machine without ../shared/data) a generated stand-in of similar texture."""
    if path.is_file():
        return path
    rng = random.Random(0)
    names, things = ["Max", "Lily", "Tom", "Sue", "Ben"], ["ball", "kite", "cake", "boat", "hat", "tree"]
    stories = []
    for _ in range(3000):
        name, a, b = rng.choice(names), rng.choice(things), rng.choice(things)
        stories.append(
            f"Once upon a time, {name} found a {a} near a {b}. {name} was happy and played with the {a} "
            f"all day. Then {name} gave the {a} to a friend, and they laughed together under the {b}."
        )
    generated = out_dir / "generated_stories.txt"
    generated.write_text("\n<|endoftext|>\n".join(stories), encoding="utf-8")
    return generated


def tokenizer_dir(text: Path, vocab_size: int, out_dir: Path) -> Path:
    path = out_dir / f"tokenizer{vocab_size}"
    if not (path / "tokenizer.json").is_file():
        train_tokenizer([text], vocab_size).save(path)
    return path


def equal_size_reference(config: NanoPrimeConfig) -> ReferenceTransformer:
    """The baseline at NanoPrime's width, depth and heads; its SwiGLU width solved for equal parameters."""
    target = NanoPrime(config).num_parameters()
    base = ReferenceConfig.matching(config)
    count = ReferenceTransformer(base).num_parameters()
    per_unit = 3 * config.d_model * config.n_layers  # gate, up and down grow by d_model per hidden unit
    ffn = max(8, round((base.ffn_hidden + (target - count) / per_unit) / 8) * 8)
    return ReferenceTransformer(ReferenceConfig(**{**base.__dict__, "ffn_hidden": ffn}))


def recipe(
    out_dir: Path,
    text: Path,
    tokenizer: Path,
    preset: str,
    model: dict[str, Any],
    train: dict[str, Any],
    optim: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "seed": 0,
        "out_dir": str(out_dir),
        "model": {"preset": preset, **model},
        "tokenizer": {"path": str(tokenizer)},
        "data": {
            "val_docs": 64,
            "val_rows": 16,
            "sources": {"stories": {"type": "text", "paths": [str(text)]}},
        },
        "phases": [{"name": "stories", "mixture": {"stories": 1.0}}],
        "optim": {"lr": 2e-3, "warmup_steps": 0, "decay_fraction": 0.0, **(optim or {})},
        "train": {"log_every": 1000, "eval_every": 1_000_000, "plot": False, **train},
    }


def trainer(name: str, recipe_dict: dict[str, Any], device: str, base_dir: Path) -> Trainer:
    """A Trainer over the recipe for "nanoprime" or the equal-size "transformer"; writes no file."""
    dist = DistInfo(rank=0, world_size=1, local_rank=0, device=pick_device(device))
    factory = {"nanoprime": NanoPrime, "transformer": equal_size_reference}[name]
    torch.manual_seed(0)
    return Trainer(recipe_from_dict(recipe_dict), dist, write=False, base_dir=base_dir, model_factory=factory)
