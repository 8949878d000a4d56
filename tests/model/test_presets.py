"""Every preset builds, has the size it promises, and keeps the inference cache small."""

from __future__ import annotations

import pytest
import torch

from model.config import PRESETS, preset
from model.nanoprime import NanoPrime

TARGET_CACHE_RATIO = 0.07  # bytes per token vs an all-MHA transformer of the same width and depth


def build_on_meta(name: str) -> NanoPrime:
    """Shapes without memory: enough to count parameters and make states of the big presets."""
    with torch.device("meta"):
        return NanoPrime(preset(name))


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds(name):
    model = build_on_meta(name)
    config = model.config
    assert len(model.layers) == config.n_layers
    assert model.num_parameters() > 0
    assert config.layer_pattern.count("mla") == config.n_layers // 2  # Mamba and MLA alternate


def test_pocket_size():
    model = NanoPrime(preset("pocket"))
    assert model.config.vocab_size == 8192
    assert 10e6 <= model.num_parameters() <= 25e6
    with torch.no_grad():
        logits, _ = model(torch.zeros(1, 4, dtype=torch.long))
    assert logits.shape == (1, 4, 8192)


def test_v2_142m_runs_a_forward_on_cpu(capsys):
    torch.manual_seed(0)
    model = NanoPrime(preset("v2-142m")).eval()
    n = model.num_parameters()
    with capsys.disabled():
        print(f"\nv2-142m: {n:,} parameters ({n / 1e6:.2f}M; target 142.6M ± 5%)")
    assert model.config.d_model == 768 and model.config.vocab_size == 50304
    assert abs(n - 142.6e6) <= 0.05 * 142.6e6
    ids = torch.randint(0, 50304, (1, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits, _ = model(ids)
    assert logits.shape == (1, 12, 50304) and torch.isfinite(logits).all()


@pytest.mark.parametrize("name", ["pocket", "v2-142m", "elleci-1.5b"])
def test_cache_is_under_seven_percent_of_multi_head_attention(name):
    """At a full context: MLA latents per token plus Mamba's fixed state, against 2 * n_layers * d_model."""
    model = build_on_meta(name)
    config = model.config
    state = model.new_state(1, device="cpu")
    state.lengths.fill_(config.max_seq_len)  # nbytes counts the MLA slots in use from the lengths
    per_token = state.nbytes() / config.max_seq_len
    mha = 2 * config.n_layers * config.d_model * 2  # 16-bit keys and values, the size of our latents
    assert per_token / mha <= TARGET_CACHE_RATIO
