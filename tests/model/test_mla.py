"""MLA: transformers' DeepseekV3Attention as the reference, the absorbed cached path, and the latent cache."""

from __future__ import annotations

import pytest
import torch
from transformers import DeepseekV3Config
from transformers.models.deepseek_v3.modeling_deepseek_v3 import (
    DeepseekV3Attention,
    DeepseekV3RotaryEmbedding,
)

from model.config import preset
from model.modules.mla import MLA, MLACache

TOL = 1e-4


def make_mla(seed: int = 0, dtype: torch.dtype = torch.float32, **overrides) -> MLA:
    """A tiny MLA layer; plain linear layers unless bitnet is asked for. Projections get std 1/sqrt(fan_in)
    instead of the training init so attention is not uniform and the tolerance is a tight relative bound."""
    torch.manual_seed(seed)
    settings = {"bitnet.enabled": False, "norm_eps": 1e-6, **overrides}
    layer = MLA(preset("tiny").with_overrides(**settings)).to(dtype).eval()
    with torch.no_grad():
        for param in layer.parameters():
            if param.dim() == 2:
                param.normal_(std=param.shape[1] ** -0.5)
    return layer


def run_in_pieces(
    layer: MLA, x: torch.Tensor, pieces: list[int], cache_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, MLACache]:
    """The layer's output fed in pieces through a cache in the input's precision (unless `cache_dtype` says
    otherwise), so that a tolerance measures the arithmetic alone; the default bf16 cache has its own test."""
    cache = layer.new_cache(x.shape[0], x.device, x.dtype, cache_dtype=cache_dtype or x.dtype)
    past = torch.zeros(x.shape[0], dtype=torch.long)
    outputs, start = [], 0
    with torch.no_grad():
        for n in pieces:
            outputs.append(layer(x[:, start : start + n], cache, past_lengths=past))
            past, start = past + n, start + n
    return torch.cat(outputs, dim=1), cache


# ---- the reference ---------------------------------------------------------------------------------------
def reference_for(
    layer: MLA, q_lora_rank: int | None
) -> tuple[DeepseekV3Attention, DeepseekV3RotaryEmbedding]:
    """DeepseekV3Attention with our weights. rope_interleave=False: we pair dimension i with i + dim/2."""
    config = DeepseekV3Config(
        hidden_size=64,
        num_attention_heads=layer.n_heads,
        num_key_value_heads=layer.n_heads,
        q_lora_rank=q_lora_rank,
        kv_lora_rank=layer.kv_lora_rank,
        qk_rope_head_dim=layer.rope_dim,
        qk_nope_head_dim=layer.nope_dim,
        v_head_dim=layer.v_dim,
        rope_interleave=False,
        attention_bias=False,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        max_position_embeddings=512,
    )
    config._attn_implementation = "eager"
    reference = DeepseekV3Attention(config, layer_idx=0).eval()
    with torch.no_grad():
        if q_lora_rank is None:
            reference.q_proj.weight.copy_(layer.q_proj.weight)
        else:
            reference.q_a_proj.weight.copy_(layer.q_a.weight)
            reference.q_a_layernorm.weight.copy_(layer.q_norm.weight)
            reference.q_b_proj.weight.copy_(layer.q_b.weight)
        reference.kv_a_proj_with_mqa.weight.copy_(layer.kv_a.weight)
        reference.kv_a_layernorm.weight.copy_(torch.rand_like(layer.kv_norm.weight) + 0.5)
        layer.kv_norm.weight.copy_(reference.kv_a_layernorm.weight)
        reference.kv_b_proj.weight.copy_(layer.kv_b.weight)
        reference.o_proj.weight.copy_(layer.o_proj.weight)
    return reference, DeepseekV3RotaryEmbedding(config)


@pytest.mark.parametrize("q_lora_rank", [None, 24])
def test_matches_transformers_deepseek_v3_attention(q_lora_rank):
    """Same weights, same output. The eager reference applies no causal mask of its own: we pass one."""
    layer = make_mla(**{"mla.q_lora_rank": q_lora_rank})
    reference, rotary = reference_for(layer, q_lora_rank)
    x = torch.randn(2, 23, 64)
    positions = torch.arange(23).expand(2, -1)
    causal = torch.full((23, 23), float("-inf")).triu(1).expand(2, 1, -1, -1)
    with torch.no_grad():
        expected, _ = reference(x, rotary(x, positions), causal)
        got = layer(x)
        cached, _ = run_in_pieces(layer, x, [9] + [1] * 14)
    assert (got - expected).abs().max() <= 1e-5
    assert (cached - expected).abs().max() <= TOL


# ---- the cached (absorbed) path --------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("length", "pieces"),
    # the last: prefills of 70 x 70 and 45 x 115 scores take torch's fused attention (values padded)
    [(32, [16] + [1] * 16), (37, [1] * 37), (29, [5, 11, 1, 1, 9, 2]), (120, [70, 45] + [1] * 5)],
)
def test_full_forward_equals_prefill_then_steps(length, pieces):
    layer = make_mla()
    x = torch.randn(2, length, 64)
    with torch.no_grad():
        full = layer(x)
    got, cache = run_in_pieces(layer, x, pieces)
    assert (full - got).abs().max() <= TOL
    assert cache.capacity >= length


def test_with_bitnet_the_cached_path_is_the_same_function():
    """With BitLinear's 8-bit activations the layer has rounding jumps, and fp32 reassociation noise (expanded
    vs absorbed attention) lands on one now and then; in float64 the noise is far below any jump."""
    layer = make_mla(dtype=torch.float64, **{"bitnet.enabled": True})
    x = torch.randn(2, 30, 64, dtype=torch.float64)
    with torch.no_grad():
        full = layer(x)
    got, _ = run_in_pieces(layer, x, [12] + [1] * 18)
    assert (full - got).abs().max() <= 1e-9


def test_right_padded_rows_write_and_read_their_own_positions():
    layer = make_mla()
    torch.manual_seed(3)
    first, second = [7, 2, 12], [3, 9, 0]
    rows = [torch.randn(1, first[i] + second[i] + 2, 64) for i in range(3)]

    def padded(lengths, offsets):
        block = 100 * torch.randn(3, max(lengths), 64)  # loud garbage in the padding
        for i, (n, start) in enumerate(zip(lengths, offsets, strict=True)):
            block[i, :n] = rows[i][0, start : start + n]
        return block

    cache = layer.new_cache(3, "cpu", cache_dtype=torch.float32)
    past = torch.zeros(3, dtype=torch.long)
    outputs = [[] for _ in range(3)]
    with torch.no_grad():
        for lengths, offsets in ((first, [0, 0, 0]), (second, first)):
            new = torch.tensor(lengths)
            y = layer(padded(lengths, offsets), cache, past_lengths=past, new_lengths=new)
            for i in range(3):
                outputs[i].append(y[i, : lengths[i]])
            past = past + new
        for k in range(2):
            step = torch.cat([rows[i][:, first[i] + second[i] + k] for i in range(3)])[:, None]
            y = layer(step, cache, past_lengths=past)
            for i in range(3):
                outputs[i].append(y[i])
            past = past + 1
        for i in range(3):
            alone = layer(rows[i])[0]
            assert (torch.cat(outputs[i]) - alone).abs().max() <= TOL, f"row {i}"


# ---- the latent cache ------------------------------------------------------------------------------------
def test_cache_holds_the_normalised_latent_and_rotated_rope_key_only():
    layer = make_mla()
    x = torch.randn(1, 6, 64)
    _, cache = run_in_pieces(layer, x, [6])
    assert {f for f in vars(cache)} == {"latent", "k_rope"}
    assert cache.latent.shape[-1] == layer.kv_lora_rank and cache.k_rope.shape[-1] == layer.rope_dim
    with torch.no_grad():
        latent, k_rope = layer.kv_a(x).split((layer.kv_lora_rank, layer.rope_dim), dim=-1)
        torch.testing.assert_close(cache.latent[:, :6], layer.kv_norm(latent))
        angles = torch.arange(6).float().unsqueeze(-1) * layer.rotary.inv_freq
        cos, sin = angles.cos(), angles.sin()
        half = layer.rope_dim // 2
        rotated = k_rope * cos + torch.cat((-k_rope[..., half:], k_rope[..., :half]), -1) * sin
        torch.testing.assert_close(cache.k_rope[:, :6], rotated)


def test_an_fp32_layer_caches_bf16_latents_and_decodes_within_their_rounding():
    layer = make_mla()
    x = torch.randn(2, 40, 64)
    exact, exact_cache = run_in_pieces(layer, x, [24] + [1] * 16)
    cache = layer.new_cache(2, "cpu")
    assert cache.latent.dtype == cache.k_rope.dtype == torch.bfloat16
    past = torch.zeros(2, dtype=torch.long)
    outputs = []
    with torch.no_grad():
        for start, n in [(0, 24)] + [(24 + i, 1) for i in range(16)]:
            outputs.append(layer(x[:, start : start + n], cache, past_lengths=past))
            past = past + n
    assert torch.equal(cache.latent[:, :40], exact_cache.latent[:, :40].bfloat16())
    assert torch.equal(cache.k_rope[:, :40], exact_cache.k_rope[:, :40].bfloat16())
    difference = (torch.cat(outputs, dim=1) - exact).abs().max()
    assert 0 < difference <= 4e-3 * exact.abs().max()  # bf16 keeps 8 significant bits


def test_cache_grows_by_kv_lora_rank_plus_rope_dim_per_token():
    layer = make_mla()
    per_token = (layer.kv_lora_rank + layer.rope_dim) * 2  # bf16 bytes
    cache = layer.new_cache(2, "cpu")
    past = torch.zeros(2, dtype=torch.long)
    previous = cache.nbytes(past)
    assert previous == 0
    capacities = []
    with torch.no_grad():
        for n in (5, 1, 1, 3, 1, 8):
            layer(torch.randn(2, n, 64), cache, past_lengths=past)
            past = past + n
            assert cache.nbytes(past) - previous == 2 * n * per_token
            previous = cache.nbytes(past)
            capacities.append(cache.capacity)
    assert capacities == [8, 8, 8, 16, 16, 32]  # doubling, never shrinking


def test_cache_select_concat_clone():
    layer = make_mla()
    xa, xb = torch.randn(2, 10, 64), torch.randn(1, 4, 64)
    _, cache_a = run_in_pieces(layer, xa, [10])
    _, cache_b = run_in_pieces(layer, xb, [4])
    lengths = [torch.tensor([10, 10]), torch.tensor([4])]
    joined = MLACache.concat([cache_a, cache_b], lengths)
    assert joined.latent.shape[0] == 3 and joined.capacity == 16
    torch.testing.assert_close(joined.latent[2, :4], cache_b.latent[0, :4])
    picked = joined.select(torch.tensor([2, 0]))
    torch.testing.assert_close(picked.latent[1, :10], cache_a.latent[0, :10])
    copy = picked.clone()
    copy.latent.zero_()
    assert picked.latent.abs().sum() > 0
    with pytest.raises(ValueError, match="capacity"):
        MLACache.concat([cache_b], [torch.tensor([40])])
