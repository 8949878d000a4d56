"""Model directory: save -> load gives the same logits, the file layout, and clear errors for bad files."""

from __future__ import annotations

import hashlib
import json
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.checkpoint import load_config, load_model, load_model_dir, save_model_dir, weights_sha256
from model.config import CONFIG_FORMAT_VERSION
from model.modules.bitnet import BitLinear, unpack_ternary
from tests.fixtures import build_tiny_tokenizer
from tests.model.helpers import run_in_pieces, tiny_model

CARD = {"name": "NanoPrime test", "data": "random tokens", "steps": 0, "evaluation": {"loss": 5.77}}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny BitNet model and its saved directory (no tokenizer)."""
    model = tiny_model()
    path = save_model_dir(model, None, tmp_path_factory.mktemp("model"), CARD)
    return model, path


def ids(length: int = 19) -> torch.Tensor:
    return torch.randint(0, 320, (2, length), generator=torch.Generator().manual_seed(0))


def test_save_then_load_gives_the_same_logits(saved):
    model, path = saved
    loaded = load_model(path)
    assert not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(ids())[0], model(ids())[0])
    # and the loaded (serving-form) model decodes like the original
    got, _ = run_in_pieces(loaded, ids(), [10] + [1] * 9)
    expected, _ = run_in_pieces(model, ids(), [10] + [1] * 9)
    assert torch.equal(got, expected)


def test_loaded_bitlinears_are_in_packed_serving_form(saved):
    loaded = load_model(saved[1])
    layers = [m for m in loaded.modules() if isinstance(m, BitLinear)]
    assert layers and all(m.is_packed and not m.weight.requires_grad for m in layers)
    assert loaded.head.weight is loaded.embed.weight


def test_weights_file_layout(saved):
    model, path = saved
    with safe_open(str(path / "model.safetensors"), "pt") as handle:
        keys = set(handle.keys())  # noqa: SIM118 (not a dict)
        assert handle.metadata() == {"format": "nanoprime", "format_version": str(CONFIG_FORMAT_VERSION)}
        tensors = {k: handle.get_tensor(k) for k in keys}
    bitlinears = {n: m for n, m in model.named_modules() if isinstance(m, BitLinear)}
    for name, layer in bitlinears.items():
        packed = tensors[f"{name}.weight_packed"]
        assert packed.dtype == torch.uint8 and packed.shape == (
            layer.out_features,
            (layer.in_features + 3) // 4,
        )
        assert tensors[f"{name}.weight_scale"].dtype == torch.float32
        assert f"{name}.weight" not in keys  # no full-precision copy
        assert set(unpack_ternary(packed, layer.in_features).unique().tolist()) <= {-1, 0, 1}
    assert "head.weight" not in keys and "embed.weight" in keys  # the tied head is stored once
    floats = [t for k, t in tensors.items() if not k.endswith(("weight_packed", "weight_scale"))]
    assert all(t.dtype == torch.float32 for t in floats)
    ternary = sum(m.weight.numel() for m in bitlinears.values())
    assert sum(t.numel() for k, t in tensors.items() if k.endswith("weight_packed")) == pytest.approx(
        ternary / 4, 0.01
    )


def test_config_and_card(saved):
    model, path = saved
    config = json.loads((path / "config.json").read_text())
    assert config["format_version"] == CONFIG_FORMAT_VERSION
    assert load_config(path).to_dict() == model.config.to_dict()
    card = (path / "README.md").read_text()
    assert card.startswith("# NanoPrime test")
    assert "random tokens" in card and "| loss | 5.77 |" in card
    assert f"{model.num_parameters():,}" in card and weights_sha256(path) in card


def test_weights_sha256(saved, tmp_path):
    model, path = saved
    digest = hashlib.sha256((path / "model.safetensors").read_bytes()).hexdigest()
    assert weights_sha256(path) == digest == weights_sha256(path / "model.safetensors")
    with torch.no_grad():
        model.embed.weight[0, 0] += 1.0
    other = save_model_dir(model, None, tmp_path)
    with torch.no_grad():
        model.embed.weight[0, 0] -= 1.0
    assert weights_sha256(other) != digest


def test_bf16_floats_and_an_untied_head(tmp_path):
    model = tiny_model(tie_embeddings=False)
    save_model_dir(model, None, tmp_path, float_dtype=torch.bfloat16)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as handle:
        assert handle.get_tensor("head.weight").dtype == torch.bfloat16
    loaded = load_model(tmp_path)
    assert loaded.head.weight is not loaded.embed.weight
    with torch.no_grad():
        assert (loaded(ids())[0] - model(ids())[0]).abs().max() < 0.05  # bf16 rounding of the float tensors


def test_model_directory_with_tokenizer(tmp_path):
    tokenizer = build_tiny_tokenizer()
    model = tiny_model(vocab_size=tokenizer.vocab_size)
    save_model_dir(model, tokenizer, tmp_path)
    assert (tmp_path / "tokenizer.json").is_file() and (tmp_path / "tokenizer_config.json").is_file()
    loaded, loaded_tokenizer = load_model_dir(tmp_path)
    text = "Il gatto mangia la pizza 🍕"
    assert loaded_tokenizer.encode(text) == tokenizer.encode(text)
    prompt = torch.tensor([tokenizer.encode(text)])
    with torch.no_grad():
        assert torch.equal(loaded(prompt)[0], model(prompt)[0])


# ---- bad files -------------------------------------------------------------------------------------------
def test_missing_files_are_named(saved, tmp_path):
    _, path = saved
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_model_dir(path)


def test_corrupt_files_are_named(saved, tmp_path):
    _, path = saved
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"d_model": 64, "colour": "blue"}))
    with pytest.raises(ValueError, match="unknown config key 'colour'"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    data = (path / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="model.safetensors"):
        load_model(tmp_path)


def test_a_pickle_is_never_unpickled(saved, tmp_path):
    """A pickle renamed to model.safetensors is refused as unreadable; its payload never runs."""
    _, path = saved
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(pickle.dumps({"embed.weight": torch.zeros(2)}))
    with pytest.raises(ValueError, match="cannot read .*model.safetensors"):
        load_model(tmp_path)


def test_weights_that_do_not_fit_the_config_are_refused(saved, tmp_path):
    _, path = saved
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with safe_open(str(path / "model.safetensors"), "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 (not a dict)
    metadata = {"format": "nanoprime", "format_version": "1"}

    def write(changed):
        save_file(changed, str(tmp_path / "model.safetensors"), metadata)

    write({k: v for k, v in tensors.items() if k != "norm.weight"})
    with pytest.raises(ValueError, match=r"missing tensors \['norm.weight'\]"):
        load_model(tmp_path)
    write({**tensors, "extra": torch.zeros(1)})
    with pytest.raises(ValueError, match="unexpected tensors"):
        load_model(tmp_path)
    write({**tensors, "norm.weight": torch.zeros(3)})
    with pytest.raises(ValueError, match="norm.weight has shape"):
        load_model(tmp_path)
    write({**tensors, "layers.1.mixer.o_proj.weight_packed": torch.full((64, 16), 255, dtype=torch.uint8)})
    with pytest.raises(ValueError, match="code 3"):
        load_model(tmp_path)
    save_file(tensors, str(tmp_path / "model.safetensors"))  # no NanoPrime metadata
    with pytest.raises(ValueError, match="not a NanoPrime weights file"):
        load_model(tmp_path)
