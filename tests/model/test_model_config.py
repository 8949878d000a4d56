"""NanoPrimeConfig: JSON round trip, presets, and ValueErrors that name the offending field."""

from __future__ import annotations

import pytest

from model.config import PRESETS, NanoPrimeConfig, preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_json(name):
    config = preset(name)
    again = NanoPrimeConfig.from_json(config.to_json())
    assert again == config
    assert again.to_dict()["format_version"] == config.format_version


def test_defaults_follow_the_issue():
    config = NanoPrimeConfig()
    assert config.layer_pattern[:4] == ["mamba", "mla", "mamba", "mla"]
    assert (config.mla.kv_lora_rank, config.mla.rope_dim, config.mla.q_lora_rank) == (128, 32, None)
    assert (config.mamba.d_state, config.mamba.d_conv, config.mamba.expand, config.mamba.use_mamba2) == (
        16,
        4,
        2,
        True,
    )
    assert (config.router.n_experts, config.router.temperature, config.thinking_loop.max_iterations) == (
        2,
        1.0,
        4,
    )
    assert config.bitnet.enabled and config.ffn_hidden == 704  # 8/3 * 256 rounded up to a multiple of 64


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"colour": 1}, "unknown config key 'colour'"),
        ({"mla": {"rank": 3}}, "unknown config key 'mla.rank'"),
        ({"mla": 3}, "config field 'mla' must be an object"),
        ({"d_model": 0}, "'d_model' must be a positive integer"),
        ({"n_layers": 2.5}, "'n_layers' must be a positive integer"),
        ({"mla": {"rope_dim": 7}}, "'mla.rope_dim' must be a positive even integer"),
        ({"n_layers": 3, "layer_pattern": ["mla"]}, "'layer_pattern' has 1 entries but n_layers is 3"),
        ({"n_layers": 1, "layer_pattern": ["lstm"]}, "unknown layer type 'lstm'"),
        ({"d_model": 80, "mamba": {"head_dim": 64}}, "'mamba.head_dim' \\(64\\) must divide"),
        ({"tie_embeddings": "yes"}, "'tie_embeddings' must be true or false"),
        ({"norm_eps": -1e-5}, "'norm_eps' must be a positive number"),
        ({"router": {"temperature": 0}}, "'router.temperature' must be a positive number"),
        ({"layer_pattern": "mla"}, "'layer_pattern' must be a list"),
        ({"router": {"enabled": True, "n_experts": 1}}, "'router.n_experts' must be >= 2"),
        ({"thinking_loop": {"halt_threshold": 1.5}}, "'thinking_loop.halt_threshold'"),
        ({"format_version": 99}, "'format_version' is 99"),
    ],
)
def test_bad_configs_name_the_field(data, message):
    with pytest.raises(ValueError, match=message):
        NanoPrimeConfig.from_dict(data)


def test_bad_json_and_unknown_preset():
    with pytest.raises(ValueError, match="not valid JSON"):
        NanoPrimeConfig.from_json("{")
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        preset("huge")


def test_with_overrides():
    config = preset("tiny").with_overrides(**{"mla.kv_lora_rank": 16, "n_layers": 2})
    assert config.mla.kv_lora_rank == 16 and config.layer_pattern == ["mamba", "mla"]
    assert preset("tiny").mla.kv_lora_rank == 32  # presets are fresh copies
    with pytest.raises(ValueError, match="unknown config key 'mla.nope'"):
        preset("tiny").with_overrides(**{"mla.nope": 1})
