"""Model configuration: plain dataclasses, JSON round-trip, and named presets.

Every shape the model, training and the server agree on lives here. `NanoPrimeConfig.from_dict` refuses
unknown keys and impossible shapes with a ValueError that names the offending field, so a typo in a recipe or
a corrupt config.json fails loudly instead of building a different model.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_FORMAT_VERSION = 1
LAYER_TYPES = ("mamba", "mla")


@dataclass
class BitNetConfig:
    """BitNet b1.58 linear layers; `enabled=False` swaps in plain nn.Linear for ablations and reference tests.

    `quantize_activations=False` keeps the ternary weights but skips the 8-bit activation quantizer
    (W1.58A16): an ablation, and the exactness tests' way to compare code paths without its rounding jumps.
    """

    enabled: bool = True
    eps: float = 1e-5
    quantize_activations: bool = True


@dataclass
class MLAConfig:
    """Multi-Head Latent Attention (DeepSeek-V2): the cache holds kv_lora_rank + rope_dim values per token."""

    n_heads: int = 8
    kv_lora_rank: int = 128
    rope_dim: int = 32
    q_lora_rank: int | None = None
    nope_head_dim: int = 64
    v_head_dim: int = 64
    rope_theta: float = 10000.0


@dataclass
class MambaConfig:
    """Mamba (v1 selective scan) or Mamba-2 (SSD, chunked) mixer."""

    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    use_mamba2: bool = True
    head_dim: int = 64  # Mamba-2 only: channels per SSD head
    n_groups: int = 1  # Mamba-2 only: groups sharing B and C
    chunk_size: int = 64  # chunk length of the parallel form
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4


@dataclass
class RouterConfig:
    """Experimental fast/slow router: a learned gate over two paths, softened by a temperature."""

    enabled: bool = False
    n_experts: int = 2
    temperature: float = 1.0


@dataclass
class ThinkingLoopConfig:
    """Experimental recurrent thinking loop: a block re-applied up to max_iterations with learned halting."""

    enabled: bool = False
    max_iterations: int = 4
    halt_threshold: float = 0.99


@dataclass
class NanoPrimeConfig:
    vocab_size: int = 8192
    d_model: int = 256
    n_layers: int = 8
    ffn_hidden: int = 0  # SwiGLU hidden width; 0 means round(8/3 * d_model) up to a multiple of 64
    max_seq_len: int = 2048
    norm_eps: float = 1e-5
    tie_embeddings: bool = True
    gradient_checkpointing: bool = False
    layer_pattern: list[str] = field(default_factory=list)  # empty means mamba, mla, mamba, mla, ...
    bitnet: BitNetConfig = field(default_factory=BitNetConfig)
    mla: MLAConfig = field(default_factory=MLAConfig)
    mamba: MambaConfig = field(default_factory=MambaConfig)
    router: RouterConfig = field(default_factory=RouterConfig)
    thinking_loop: ThinkingLoopConfig = field(default_factory=ThinkingLoopConfig)
    format_version: int = CONFIG_FORMAT_VERSION

    def __post_init__(self) -> None:
        # Derived defaults only from well-typed sizes; validate() names whatever is wrong.
        if not self.layer_pattern and _is_positive_int(self.n_layers):
            self.layer_pattern = [LAYER_TYPES[i % 2] for i in range(self.n_layers)]
        if self.ffn_hidden == 0 and _is_positive_int(self.d_model):
            self.ffn_hidden = _round_up(int(8 * self.d_model / 3), 64)
        self.validate()

    # ---- validation ---------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ValueError naming the first field whose value cannot build a model."""
        positive = {
            "vocab_size": self.vocab_size,
            "d_model": self.d_model,
            "n_layers": self.n_layers,
            "ffn_hidden": self.ffn_hidden,
            "max_seq_len": self.max_seq_len,
            "mla.n_heads": self.mla.n_heads,
            "mla.kv_lora_rank": self.mla.kv_lora_rank,
            "mla.nope_head_dim": self.mla.nope_head_dim,
            "mla.v_head_dim": self.mla.v_head_dim,
            "mamba.d_state": self.mamba.d_state,
            "mamba.d_conv": self.mamba.d_conv,
            "mamba.expand": self.mamba.expand,
            "mamba.head_dim": self.mamba.head_dim,
            "mamba.n_groups": self.mamba.n_groups,
            "mamba.chunk_size": self.mamba.chunk_size,
            "router.n_experts": self.router.n_experts,
            "thinking_loop.max_iterations": self.thinking_loop.max_iterations,
        }
        for name, value in positive.items():
            if not _is_positive_int(value):
                raise ValueError(f"config field '{name}' must be a positive integer, got {value!r}")
        switches = {
            "tie_embeddings": self.tie_embeddings,
            "gradient_checkpointing": self.gradient_checkpointing,
            "bitnet.enabled": self.bitnet.enabled,
            "bitnet.quantize_activations": self.bitnet.quantize_activations,
            "mamba.use_mamba2": self.mamba.use_mamba2,
            "router.enabled": self.router.enabled,
            "thinking_loop.enabled": self.thinking_loop.enabled,
        }
        for name, value in switches.items():
            if not isinstance(value, bool):
                raise ValueError(f"config field '{name}' must be true or false, got {value!r}")
        positive_reals = {
            "norm_eps": self.norm_eps,
            "bitnet.eps": self.bitnet.eps,
            "mla.rope_theta": self.mla.rope_theta,
            "mamba.dt_min": self.mamba.dt_min,
            "mamba.dt_max": self.mamba.dt_max,
            "mamba.dt_init_floor": self.mamba.dt_init_floor,
            "router.temperature": self.router.temperature,
        }
        for name, value in positive_reals.items():
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < float("inf"):
                raise ValueError(f"config field '{name}' must be a positive number, got {value!r}")
        if self.mamba.dt_min > self.mamba.dt_max:
            raise ValueError("config field 'mamba.dt_min' must not exceed 'mamba.dt_max'")
        if not isinstance(self.layer_pattern, list):
            raise ValueError(
                f"config field 'layer_pattern' must be a list, got {type(self.layer_pattern).__name__}"
            )
        if not _is_positive_int(self.mla.rope_dim) or self.mla.rope_dim % 2:
            raise ValueError(
                f"config field 'mla.rope_dim' must be a positive even integer, got {self.mla.rope_dim}"
            )
        if self.mla.q_lora_rank is not None and not _is_positive_int(self.mla.q_lora_rank):
            raise ValueError(
                f"config field 'mla.q_lora_rank' must be None or positive, got {self.mla.q_lora_rank}"
            )
        if len(self.layer_pattern) != self.n_layers:
            raise ValueError(
                f"config field 'layer_pattern' has {len(self.layer_pattern)} entries "
                f"but n_layers is {self.n_layers}"
            )
        for kind in self.layer_pattern:
            if kind not in LAYER_TYPES:
                raise ValueError(
                    f"config field 'layer_pattern' has unknown layer type {kind!r}; use {LAYER_TYPES}"
                )
        d_inner = self.mamba.expand * self.d_model
        if self.mamba.use_mamba2 and d_inner % self.mamba.head_dim:
            raise ValueError(
                f"config field 'mamba.head_dim' ({self.mamba.head_dim}) must divide "
                f"expand*d_model ({d_inner})"
            )
        if self.mamba.use_mamba2 and (d_inner // self.mamba.head_dim) % self.mamba.n_groups:
            raise ValueError("config field 'mamba.n_groups' must divide the number of Mamba-2 heads")
        if self.router.enabled and self.router.n_experts < 2:
            raise ValueError(
                "config field 'router.n_experts' must be >= 2 (a fast and a slow path), "
                f"got {self.router.n_experts}"
            )
        threshold = self.thinking_loop.halt_threshold
        if not isinstance(threshold, int | float) or isinstance(threshold, bool) or not 0 < threshold <= 1:
            raise ValueError("config field 'thinking_loop.halt_threshold' must be in (0, 1]")
        if self.format_version != CONFIG_FORMAT_VERSION:
            raise ValueError(
                f"config field 'format_version' is {self.format_version}; "
                f"this code reads {CONFIG_FORMAT_VERSION}"
            )

    # ---- serialisation ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NanoPrimeConfig:
        if not isinstance(data, dict):
            raise ValueError(f"a model config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in known:
                raise ValueError(f"unknown config key '{key}'")
            if key in _NESTED:
                kwargs[key] = _build_nested(_NESTED[key], key, value)
            else:
                kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def from_json(cls, text: str) -> NanoPrimeConfig:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"model config is not valid JSON: {error}") from error
        return cls.from_dict(data)

    @classmethod
    def load(cls, path: str | Path) -> NanoPrimeConfig:
        return cls.from_json(Path(path).read_text(encoding="utf-8"))

    def with_overrides(self, **overrides: Any) -> NanoPrimeConfig:
        """A copy with dotted overrides applied, e.g. with_overrides(**{"mla.kv_lora_rank": 64})."""
        data = self.to_dict()
        for dotted, value in overrides.items():
            target = data
            *parents, leaf = dotted.split(".")
            for part in parents:
                if part not in target or not isinstance(target[part], dict):
                    raise ValueError(f"unknown config key '{dotted}'")
                target = target[part]
            if leaf not in target:
                raise ValueError(f"unknown config key '{dotted}'")
            target[leaf] = value
        if "n_layers" in overrides and "layer_pattern" not in overrides:
            data["layer_pattern"] = []
        return NanoPrimeConfig.from_dict(data)


_NESTED: dict[str, type] = {
    "bitnet": BitNetConfig,
    "mla": MLAConfig,
    "mamba": MambaConfig,
    "router": RouterConfig,
    "thinking_loop": ThinkingLoopConfig,
}


def _build_nested(kind: type, name: str, value: Any) -> Any:
    if isinstance(value, kind):
        return value
    if not isinstance(value, dict):
        raise ValueError(f"config field '{name}' must be an object, got {type(value).__name__}")
    known = {f.name for f in dataclasses.fields(kind)}
    for key in value:
        if key not in known:
            raise ValueError(f"unknown config key '{name}.{key}'")
    return kind(**value)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _round_up(value: int, multiple: int) -> int:
    return (value + multiple - 1) // multiple * multiple


# ---- presets ---------------------------------------------------------------------------------------------
def _tiny() -> NanoPrimeConfig:
    """A few hundred thousand parameters: fast enough for every unit test on CPU."""
    return NanoPrimeConfig(
        vocab_size=320,
        d_model=64,
        n_layers=4,
        ffn_hidden=128,
        max_seq_len=512,
        mla=MLAConfig(n_heads=4, kv_lora_rank=32, rope_dim=8, nope_head_dim=16, v_head_dim=16),
        mamba=MambaConfig(d_state=8, d_conv=4, expand=2, head_dim=16, chunk_size=16),
    )


def _pocket() -> NanoPrimeConfig:
    """The shipped default model's shape: ~18M parameters, an 8k vocabulary.

    kv_lora_rank + rope_dim = 80 keeps the cache near 6% of an all-MHA transformer of the same shape.
    """
    return NanoPrimeConfig(
        vocab_size=8192,
        d_model=384,
        n_layers=8,
        ffn_hidden=1024,
        max_seq_len=2048,
        mla=MLAConfig(n_heads=6, kv_lora_rank=64, rope_dim=16, nope_head_dim=64, v_head_dim=64),
        mamba=MambaConfig(d_state=16, d_conv=4, expand=2, head_dim=64, chunk_size=64),
    )


def _v2_142m() -> NanoPrimeConfig:
    """The seed's v2 shape: d_model 768, vocabulary 50304, ~142.4M parameters (7 Mamba-2 + 7 MLA blocks)."""
    return NanoPrimeConfig(
        vocab_size=50304,
        d_model=768,
        n_layers=14,
        ffn_hidden=2048,
        max_seq_len=4096,
        mla=MLAConfig(n_heads=12, kv_lora_rank=128, rope_dim=32, nope_head_dim=64, v_head_dim=64),
        mamba=MambaConfig(d_state=16, d_conv=4, expand=2, head_dim=64, chunk_size=64),
    )


def _elleci_1_5b() -> NanoPrimeConfig:
    """The 1.5B shape: ~1.49B parameters, untied head."""
    return NanoPrimeConfig(
        vocab_size=32128,
        d_model=2048,
        n_layers=24,
        ffn_hidden=6144,
        max_seq_len=4096,
        tie_embeddings=False,
        mla=MLAConfig(n_heads=16, kv_lora_rank=256, rope_dim=64, nope_head_dim=128, v_head_dim=128),
        mamba=MambaConfig(d_state=16, d_conv=4, expand=2, head_dim=64, chunk_size=128),
    )


PRESETS = {"tiny": _tiny, "pocket": _pocket, "v2-142m": _v2_142m, "elleci-1.5b": _elleci_1_5b}


def preset(name: str) -> NanoPrimeConfig:
    """A fresh config for a named preset."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}'; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
