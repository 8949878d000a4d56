"""Model directory I/O: the one artefact training hands to the server (see DESIGN.md).

    config.json         the NanoPrimeConfig (with format_version)
    model.safetensors   every BitLinear as `<name>.weight_packed` (uint8, 4 ternary values per byte) and
                        `<name>.weight_scale` (fp32); other tensors fp32 or bf16; a tied head stored once
    tokenizer.json      + tokenizer_config.json, written by the tokenizer (optional when saving)
    README.md           the model card

Loading reads safetensors only (nothing is unpickled) and returns the model in serving form: BitLinear layers
hold their ternary weights frozen, giving the same logits as the model that was saved. A missing or damaged
file raises an error that names it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.config import CONFIG_FORMAT_VERSION, NanoPrimeConfig
from model.modules.bitnet import BitLinear, PackedTernary
from model.nanoprime import NanoPrime

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
TOKENIZER_FILE = "tokenizer.json"
WEIGHTS_FORMAT = "nanoprime"
PACKED_SUFFIX = ".weight_packed"
SCALE_SUFFIX = ".weight_scale"


# ---- saving ------------------------------------------------------------------------------------------------
def save_model_dir(
    model: NanoPrime,
    tokenizer: Any | None,
    path: str | Path,
    card: dict[str, Any] | None = None,
    *,
    float_dtype: torch.dtype = torch.float32,
) -> Path:
    """Write the model directory; `float_dtype` (fp32 or bf16) is for the tensors that are not ternary."""
    if float_dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"float_dtype must be torch.float32 or torch.bfloat16, got {float_dtype}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    metadata = {"format": WEIGHTS_FORMAT, "format_version": str(CONFIG_FORMAT_VERSION)}
    _write_atomic(
        path / WEIGHTS_FILE, lambda tmp: save_file(model_tensors(model, float_dtype), tmp, metadata)
    )
    _write_atomic(path / CONFIG_FILE, lambda tmp: Path(tmp).write_text(model.config.to_json() + "\n"))
    if tokenizer is not None:
        tokenizer.save(path)
    text = render_card(model, card or {}, weights_sha256(path))
    _write_atomic(path / CARD_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return path


def model_tensors(model: NanoPrime, float_dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """The tensors of model.safetensors: BitLinear weights packed, the rest cast to float_dtype."""
    tensors: dict[str, torch.Tensor] = {}
    for name, module in _bitlinears(model).items():
        packed = module.pack()
        tensors[name + PACKED_SUFFIX] = packed.data.cpu().contiguous()
        tensors[name + SCALE_SUFFIX] = packed.scale.reshape(1).cpu()
    for name, tensor in _plain_state(model).items():
        tensor = tensor.detach().cpu()
        tensors[name] = (tensor.to(float_dtype) if tensor.is_floating_point() else tensor).contiguous()
    return tensors


def _bitlinears(model: NanoPrime) -> dict[str, BitLinear]:
    return {name: m for name, m in model.named_modules() if isinstance(m, BitLinear)}


def _plain_state(model: NanoPrime) -> dict[str, torch.Tensor]:
    """state_dict entries other than BitLinear weights/scales and a tied head."""
    skip = {name + suffix for name in _bitlinears(model) for suffix in (".weight", SCALE_SUFFIX)}
    if model.config.tie_embeddings:
        skip.add("head.weight")
    return {name: t for name, t in model.state_dict().items() if name not in skip}


def _write_atomic(target: Path, write: Any) -> None:
    """Write through a temporary file and rename, so a crash never leaves a half-written file behind."""
    tmp = target.with_name(target.name + ".tmp")
    write(str(tmp))
    os.replace(tmp, target)


# ---- loading -----------------------------------------------------------------------------------------------
def load_config(path: str | Path) -> NanoPrimeConfig:
    file = Path(path) / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"model directory has no {CONFIG_FILE}: {file}")
    try:
        return NanoPrimeConfig.from_json(file.read_text(encoding="utf-8"))
    except (ValueError, TypeError, UnicodeDecodeError) as error:
        raise ValueError(f"{file} is not a valid NanoPrime config: {error}") from error


def load_model(path: str | Path, device: str | torch.device = "cpu") -> NanoPrime:
    """The model of a model directory, in serving form and eval mode."""
    path = Path(path)
    config = load_config(path)
    file = path / WEIGHTS_FILE
    tensors = _read_weights(file)
    model = NanoPrime(config)
    try:
        _load_tensors(model, tensors)
    except ValueError as error:
        raise ValueError(f"{file} does not fit {CONFIG_FILE}: {error}") from error
    return model.to(device).eval()


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> tuple[NanoPrime, Any]:
    """(model, tokenizer) of a complete model directory."""
    path = Path(path)
    if not (path / TOKENIZER_FILE).is_file():
        raise FileNotFoundError(f"model directory has no {TOKENIZER_FILE}: {path / TOKENIZER_FILE}")
    from model.tokenizer import Tokenizer  # the tokenizer package is only needed for full model directories

    model = load_model(path, device)
    tokenizer = Tokenizer.load(path)
    if tokenizer.vocab_size > model.config.vocab_size:
        raise ValueError(
            f"{path / TOKENIZER_FILE} has {tokenizer.vocab_size} tokens but the model's vocab_size is "
            f"{model.config.vocab_size}"
        )
    return model, tokenizer


def _read_weights(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise FileNotFoundError(f"model directory has no {WEIGHTS_FILE}: {file}")
    try:
        with safe_open(str(file), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
    except Exception as error:  # safetensors raises its own error types for truncated or garbled files
        raise ValueError(f"cannot read {file}: {error}") from error
    if metadata.get("format") != WEIGHTS_FORMAT:
        raise ValueError(
            f"{file} is not a NanoPrime weights file (metadata format={metadata.get('format')!r})"
        )
    return tensors


@torch.no_grad()
def _load_tensors(model: NanoPrime, tensors: dict[str, torch.Tensor]) -> None:
    bitlinears = _bitlinears(model)
    plain = _plain_state(model)
    expected = set(plain) | {n + s for n in bitlinears for s in (PACKED_SUFFIX, SCALE_SUFFIX)}
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing:
        raise ValueError(f"missing tensors {missing[:5]}{' …' if len(missing) > 5 else ''}")
    if unexpected:
        raise ValueError(f"unexpected tensors {unexpected[:5]}{' …' if len(unexpected) > 5 else ''}")
    for name, target in plain.items():
        source = tensors[name]
        if source.shape != target.shape:
            raise ValueError(f"tensor {name} has shape {tuple(source.shape)}, expected {tuple(target.shape)}")
        target.copy_(source)
    for name, module in bitlinears.items():
        try:
            module.load_packed(
                PackedTernary(tensors[name + PACKED_SUFFIX], tensors[name + SCALE_SUFFIX], module.in_features)
            )
        except ValueError as error:
            raise ValueError(f"tensor {name}{PACKED_SUFFIX}: {error}") from error


def weights_sha256(path: str | Path) -> str:
    """sha256 of model.safetensors (given the model directory or the file itself)."""
    path = Path(path)
    file = path / WEIGHTS_FILE if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no weights file at {file}")
    digest = hashlib.sha256()
    with file.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---- the model card ----------------------------------------------------------------------------------------
def render_card(model: NanoPrime, card: dict[str, Any], weights_hash: str) -> str:
    """README.md: the model's shape, then the card's entries (training data, steps, loss, evaluation…)."""
    config = model.config
    title = card.get("name", "NanoPrime model")
    lines = [f"# {title}", ""]
    if "description" in card:
        lines += [str(card["description"]), ""]
    pattern = ", ".join(config.layer_pattern)
    linear = "BitNet b1.58 (ternary, 2-bit packed)" if config.bitnet.enabled else "full precision"
    lines += [
        "## Model",
        "",
        "| | |",
        "|---|---|",
        f"| parameters | {model.num_parameters():,} |",
        f"| d_model / layers | {config.d_model} / {config.n_layers} |",
        f"| layer pattern | {pattern} |",
        f"| vocabulary | {config.vocab_size} |",
        f"| max sequence length | {config.max_seq_len} |",
        f"| linear layers | {linear} |",
        f"| MLA cache per token and layer | {config.mla.kv_lora_rank + config.mla.rope_dim} values |",
        f"| weights sha256 | `{weights_hash}` |",
        "",
    ]
    for key, value in card.items():
        if key in ("name", "description"):
            continue
        heading = key.replace("_", " ").capitalize()
        if isinstance(value, dict):
            lines += [f"## {heading}", "", "| | |", "|---|---|"]
            lines += [f"| {k} | {_cell(v)} |" for k, v in value.items()] + [""]
        elif isinstance(value, list | tuple):
            lines += [f"## {heading}", ""] + [f"- {_cell(v)}" for v in value] + [""]
        else:
            lines += [f"**{heading}:** {_cell(value)}", ""]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")
