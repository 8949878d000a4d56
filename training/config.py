"""Training recipes: TOML files parsed into dataclasses, with `--section.key value` overrides from the CLI.

Unknown keys are errors that name the key, so a typo never silently trains with a default. Sections:
[model] (preset + any NanoPrimeConfig field), [tokenizer], [data] (+ [data.sources.NAME]), [[phases]],
[optim], [lerac], [swa], [train], [card].
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

from model.config import NanoPrimeConfig, preset


@dataclass
class TokenizerSection:
    path: str = ""  # an existing tokenizer (model directory or tokenizer.json); else one is trained
    vocab_size: int = 0  # size of the tokenizer to train when `path` is empty
    sources: list[str] = field(default_factory=list)  # data sources to train it on (default: all)
    max_docs: int = 20_000  # documents taken from each source for tokenizer training


@dataclass
class DataSection:
    val_fraction: float = 0.02  # share of each local source held out for validation
    val_docs: int = 200  # at most this many held-out documents per source
    val_rows: int = 32  # validation rows per source evaluated each time
    open_rows: int = 8  # rows the packer keeps open for best-fit packing
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class PhaseSection:
    name: str = "main"
    fraction: float = 1.0  # share of train.steps; the last phase takes whatever is left
    mixture: dict[str, float] = field(default_factory=dict)
    lr_scale: float = 1.0


@dataclass
class OptimSection:
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 10
    decay_fraction: float = 0.2
    decay_shape: str = "linear"
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0
    eight_bit: bool = True  # bitsandbytes AdamW8bit when installed and on CUDA


@dataclass
class LeracSection:
    enabled: bool = False
    fraction: float = 0.1  # share of the steps over which per-depth rates converge
    min_ratio: float = 0.01  # initial multiplier of the deepest group


@dataclass
class SWASection:
    enabled: bool = False
    start_fraction: float = 0.8  # average the weights over the steps after this share of the run
    every: int = 1


@dataclass
class TrainSection:
    steps: int = 100
    micro_batch_size: int = 8
    grad_accum: int = 1
    seq_len: int = 256
    curriculum: list[list[float]] = field(default_factory=list)  # [[start_fraction, seq_len], ...]
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (bf16 autocast on CUDA, fp32 on CPU) | bf16 | fp32
    gradient_checkpointing: bool = False
    threads: int = 0  # torch CPU threads; 0 leaves torch's default
    log_every: int = 10
    eval_every: int = 100
    save_every: int = 0  # 0: save only at the end and on Ctrl-C
    plot: bool = True


@dataclass
class CardSection:
    name: str = "NanoPrime"
    data: str = ""  # what the model was trained on, for the model card
    licence: str = ""  # the data's licence(s)


@dataclass
class Recipe:
    seed: int = 1337
    out_dir: str = "runs/default"
    init_from: str = ""  # a model directory whose weights (and tokenizer) start the run: fine-tuning
    model: dict[str, Any] = field(default_factory=lambda: {"preset": "tiny"})
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    data: DataSection = field(default_factory=DataSection)
    phases: list[PhaseSection] = field(default_factory=lambda: [PhaseSection()])
    optim: OptimSection = field(default_factory=OptimSection)
    lerac: LeracSection = field(default_factory=LeracSection)
    swa: SWASection = field(default_factory=SWASection)
    train: TrainSection = field(default_factory=TrainSection)
    card: CardSection = field(default_factory=CardSection)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)  # the merged TOML, saved in checkpoints

    def model_config(self, vocab_size: int | None = None) -> NanoPrimeConfig:
        """The model config: preset, then the recipe's fields; vocab from the tokenizer unless set."""
        options = dict(self.model)
        config = preset(str(options.pop("preset", "tiny")))
        overrides = _flatten(options)
        if vocab_size is not None and "vocab_size" not in overrides:
            overrides["vocab_size"] = _round_up(vocab_size, 64)
        if self.train.gradient_checkpointing:
            overrides["gradient_checkpointing"] = True
        try:
            config = config.with_overrides(**overrides) if overrides else config
        except ValueError as error:
            raise ValueError(f"[model] {error}") from error
        if vocab_size is not None and config.vocab_size < vocab_size:
            raise ValueError(
                f"model.vocab_size {config.vocab_size} is smaller than the tokenizer's {vocab_size}"
            )
        return config

    def phase_steps(self) -> list[int]:
        """Steps of each phase; rounding goes to the last phase so they add up to train.steps."""
        counts = [round(p.fraction * self.train.steps) for p in self.phases[:-1]]
        counts.append(self.train.steps - sum(counts))
        if any(c < 0 for c in counts):
            raise ValueError("phase fractions add up to more than 1")
        return counts


def load_recipe(path: str | Path | None, overrides: dict[str, str] | None = None) -> Recipe:
    """Read a TOML recipe (or start from defaults) and apply dotted CLI overrides."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"recipe not found: {path}")
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as error:
            raise ValueError(f"recipe {path} is not valid TOML: {error}") from error
    return recipe_from_dict(data, overrides)


def generator_options(recipe: Recipe) -> dict[str, dict[str, Any]]:
    """Options of each generator the recipe trains on (its first source using it), by generator name.

    Evaluation samples its held-out tasks with these, so it measures the distribution the model was taught.
    """
    options: dict[str, dict[str, Any]] = {}
    for source in recipe.data.sources.values():
        if source.get("type") == "generator":
            options.setdefault(str(source["generator"]), dict(source.get("options", {})))
    return options


def recipe_from_dict(data: dict[str, Any], overrides: dict[str, str] | None = None) -> Recipe:
    data = _deep_copy(data)
    for dotted, text in (overrides or {}).items():
        _set_dotted(data, dotted, parse_value(text))
    recipe = _build(Recipe, data, "")
    recipe.raw = data
    _validate(recipe)
    return recipe


def parse_value(text: str) -> Any:
    """A CLI value as TOML ('3e-4' -> float, 'true' -> bool, '[[0, 64]]' -> list), else the plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    target = data
    for part in parents:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ValueError(f"config key '{dotted}' does not name a setting")
    target[leaf] = value


def _build(cls: type, data: Any, prefix: str) -> Any:
    """Instantiate a section dataclass from a dict, refusing unknown keys and values of the wrong type."""
    if not isinstance(data, dict):
        raise ValueError(f"config section '{prefix.rstrip('.') or 'root'}' must be a table")
    hints = get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)} - {"raw"}
    kwargs = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if key not in known:
            raise ValueError(f"unknown config key '{name}'")
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{name}.")
        elif key == "phases":
            if not isinstance(value, list) or not value:
                raise ValueError("config key 'phases' must be a non-empty list of [[phases]] tables")
            kwargs[key] = [_build(PhaseSection, item, f"phases[{i}].") for i, item in enumerate(value)]
        else:
            kwargs[key] = _check_type(name, value, hint)
    return cls(**kwargs)


def _check_type(name: str, value: Any, hint: Any) -> Any:
    origin = getattr(hint, "__origin__", hint)
    expected = {int: int, float: (int, float), bool: bool, str: str, list: list, dict: dict}.get(origin)
    if expected is None:
        return value
    if isinstance(value, bool) and origin is not bool:
        raise ValueError(f"config key '{name}' must be {origin.__name__}, got a boolean")
    if not isinstance(value, expected):
        raise ValueError(f"config key '{name}' must be {origin.__name__}, got {value!r}")
    return float(value) if origin is float else value


def _validate(recipe: Recipe) -> None:
    train = recipe.train
    for key in ("steps", "micro_batch_size", "grad_accum", "seq_len", "log_every", "eval_every"):
        if getattr(train, key) < 1:
            raise ValueError(f"config key 'train.{key}' must be >= 1, got {getattr(train, key)}")
    if train.dtype not in ("auto", "bf16", "fp32"):
        raise ValueError(f"config key 'train.dtype' must be auto, bf16 or fp32, got {train.dtype!r}")
    if not recipe.data.sources:
        raise ValueError("the recipe defines no data sources ([data.sources.NAME])")
    names = [p.name for p in recipe.phases]
    if len(set(names)) != len(names):
        raise ValueError(f"phase names must be unique, got {names}")
    for phase in recipe.phases:
        if not phase.mixture:
            raise ValueError(f"phase '{phase.name}' has an empty mixture")
        unknown = sorted(set(phase.mixture) - set(recipe.data.sources))
        if unknown:
            raise ValueError(f"phase '{phase.name}' mixes unknown data source(s) {unknown}")
    recipe.phase_steps()
    for stage in train.curriculum:
        if not isinstance(stage, list) or len(stage) != 2:
            raise ValueError("train.curriculum must be a list of [start_fraction, seq_len] pairs")


def _flatten(options: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'mla': {'n_heads': 4}} -> {'mla.n_heads': 4}, the form NanoPrimeConfig.with_overrides takes."""
    flat: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple
