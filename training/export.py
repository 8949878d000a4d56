"""From training to the served artefact: the model directory of DESIGN.md, written by model/checkpoint.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from model.checkpoint import save_model_dir
from model.config import NanoPrimeConfig
from model.nanoprime import NanoPrime
from model.tokenizer import Tokenizer
from training import checkpointing


def export_model_dir(model: NanoPrime, tokenizer: Tokenizer, path: Path, card: dict[str, Any]) -> Path:
    save_model_dir(model, tokenizer, path, card)
    return path


def export_checkpoint(checkpoint: str | Path, out: str | Path, swa: bool = False) -> Path:
    """Export a training checkpoint (e.g. one saved on Ctrl-C) as a model directory."""
    path = checkpointing.find_checkpoint(checkpoint)
    state = checkpointing.read_trainer_state(path)
    try:
        config = NanoPrimeConfig.from_dict(state["model_config"])
    except (KeyError, ValueError) as error:
        raise ValueError(f"checkpoint {path} is corrupt: bad model config: {error}") from error
    tokenizer = Tokenizer.load(path)
    torch.manual_seed(0)
    model = NanoPrime(config)
    if swa and not (path / "swa.safetensors").exists():
        raise ValueError(f"checkpoint {path} has no SWA weights (SWA off, or its window had not started)")
    checkpointing.load_weights(path, model, swa=swa)
    recipe = state.get("recipe", {})
    section = recipe.get("card", {})
    card = {
        "name": section.get("name", "NanoPrime"),
        "description": f"Exported from the training checkpoint at step {state.get('step')}.",
        "data": section.get("data") or ", ".join(sorted(recipe.get("data", {}).get("sources", {}))),
        "licence": section.get("licence") or "see the licences of the data sources",
        "training": {
            "steps": state.get("step"),
            "tokens": state.get("tokens"),
            "weights": "SWA mean" if swa else "last step",
        },
    }
    return export_model_dir(model, tokenizer, Path(out), card)
