"""Resumable training checkpoints: everything needed to continue as if the run had never stopped.

A checkpoint is a directory:
    model.safetensors    training weights (fp32 latent weights, not the packed export)
    swa.safetensors      the SWA running mean, once averaging has started
    optimizer.pt         the optimizer state (torch.save; loaded with weights_only=True)
    trainer.json         step, token count, recipe, model config, SWA count, world size
    rank{R}.json         per rank: data stream position and RNG state
    tokenizer.json (+ tokenizer_config.json)
It is written to a temporary directory and renamed into place, so a crash mid-save leaves the last good one.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from model.tokenizer import Tokenizer
from training.distributed import DistInfo, barrier

FORMAT = 1
TRAINER_FILE = "trainer.json"


def rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state().tolist()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).tolist()
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(torch.tensor(state["cpu"], dtype=torch.uint8))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8), device)


def save_checkpoint(
    path: Path,
    dist: DistInfo,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    tokenizer: Tokenizer,
    trainer_state: dict[str, Any],
    rank_state: dict[str, Any],
    swa_tensors: dict[str, torch.Tensor] | None,
) -> None:
    """Collective under DDP: every rank calls it; rank 0 writes the shared files, each rank its own."""
    tmp = path.with_name(path.name + ".tmp")
    if dist.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    (tmp / f"rank{dist.rank}.json").write_text(json.dumps(rank_state))
    if dist.is_main:
        save_model(model, str(tmp / "model.safetensors"))
        if swa_tensors is not None:
            save_file(swa_tensors, str(tmp / "swa.safetensors"))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        tokenizer.save(tmp)
        state = {"format": FORMAT, "world_size": dist.world_size} | trainer_state
        (tmp / TRAINER_FILE).write_text(json.dumps(state, indent=1))
    barrier()
    if dist.is_main:
        old = path.with_name(path.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    barrier()


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory, or a run directory holding one in `checkpoint/`."""
    path = Path(path)
    if (path / TRAINER_FILE).is_file():
        return path
    if (path / "checkpoint" / TRAINER_FILE).is_file():
        return path / "checkpoint"
    if not path.exists():
        raise ValueError(f"checkpoint not found: {path}")
    raise ValueError(f"checkpoint {path} is corrupt or incomplete: no {TRAINER_FILE}")


def read_trainer_state(path: Path) -> dict[str, Any]:
    try:
        state = json.loads((path / TRAINER_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"checkpoint {path} is corrupt: {TRAINER_FILE}: {error}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"checkpoint {path} is corrupt or of another format: {TRAINER_FILE}")
    return state


def load_weights(path: Path, model: nn.Module, swa: bool = False) -> None:
    """Training weights (or the SWA mean) into `model`; strict about names and shapes."""
    file = path / ("swa.safetensors" if swa else "model.safetensors")
    try:
        if swa:
            tensors = load_file(str(file))
            with torch.no_grad():
                for name, param in model.named_parameters():
                    param.copy_(tensors[name])
        else:
            missing, unexpected = load_model(model, str(file), strict=False)
            if missing or unexpected:
                raise ValueError(
                    f"weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
                )
    except (OSError, SafetensorError, KeyError, RuntimeError, ValueError) as error:
        raise ValueError(f"checkpoint {path} is corrupt: {file.name}: {error}") from error


@torch.no_grad()
def init_from_model_dir(path: Path, model: nn.Module) -> None:
    """Start training from an exported model directory (packed ternary weights), for fine-tuning.

    A BitLinear's latent weight becomes t * s / mean|t|: absmean quantization of that gives back exactly the
    ternary values t and the scale s, so the run starts from the very function the directory serves.
    """
    from model.checkpoint import load_model  # the served form lives with the model, not the trainer
    from model.modules.bitnet import BitLinear

    served = load_model(path)
    if served.config.to_dict() != model.config.to_dict():
        raise ValueError(f"init_from {path} holds a model with another config than this recipe")
    own = dict(model.named_parameters()) | dict(model.named_buffers())
    bitlinears = {name: m for name, m in served.named_modules() if isinstance(m, BitLinear)}
    for name, module in bitlinears.items():
        values = module.weight  # the served form holds the ternary values t and their scale s
        own[f"{name}.weight"].copy_(
            values * (module.weight_scale / values.abs().mean().clamp(min=module.eps))
        )
    for name, tensor in list(served.named_parameters()) + list(served.named_buffers()):
        layer, _, leaf = name.rpartition(".")
        if not (layer in bitlinears and leaf in ("weight", "weight_scale")):
            own[name].copy_(tensor)


def load_swa(path: Path) -> dict[str, torch.Tensor] | None:
    file = path / "swa.safetensors"
    if not file.exists():
        return None
    try:
        return load_file(str(file))
    except (OSError, SafetensorError) as error:
        raise ValueError(f"checkpoint {path} is corrupt: {file.name}: {error}") from error


def load_optimizer(path: Path, optimizer: torch.optim.Optimizer, device: torch.device) -> None:
    file = path / "optimizer.pt"
    try:
        state = torch.load(file, map_location=device, weights_only=True)
        optimizer.load_state_dict(state)
    except Exception as error:  # torch.load raises pickle, zip and runtime errors on a damaged file
        raise ValueError(f"checkpoint {path} is corrupt: {file.name}: {error}") from error


def read_rank_state(path: Path, rank: int) -> dict[str, Any]:
    file = path / f"rank{rank}.json"
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"checkpoint {path} is corrupt or from fewer ranks: {file.name}: {error}") from error
