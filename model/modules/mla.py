"""Multi-Head Latent Attention (DeepSeek-V2): the cache is a small latent, not per-head keys and values.

Per token, with H heads, C = kv_lora_rank and R = rope_dim:

    q            = W_q x                               -> H x (nope + R), split into q_nope, q_rope
    [c ; k_rope] = W_kv_a x                            c: the latent (C), k_rope: one rope key for all heads
    c            = RMSNorm(c)
    [k_nope ; v] = W_kv_b c                            per head: nope + v_dim
    k            = [k_nope ; RoPE(k_rope)],  q = [q_nope ; RoPE(q_rope)]
    out          = W_o softmax(q k^T / sqrt(nope + R)) v        (causal)

Training runs exactly that with F.scaled_dot_product_attention. Decoding caches only c and RoPE(k_rope), and
absorbs W_kv_b (linear in c: a BitLinear without input norm or activation quantization) into the other side:

    q_nope . (W_uk c) = (W_uk^T q_nope) . c            the query moves into latent space (H x C)
    sum_s p_s W_uv c_s = W_uv (sum_s p_s c_s)          attention averages latents; W_uv applies once

so every head attends to the same cached (C + R)-vector per token. On a CPU in fp32, a decoding step's rope,
cache write and absorbed attention are one call to the C kernel latent_attention.c (cpu_kernels.py), which
reads the cache once; elsewhere, and for prompts, the torch code below runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.config import NanoPrimeConfig
from model.modules import cpu_kernels
from model.modules.bitnet import effective_weight, make_linear
from model.modules.norm import RMSNorm, cast
from model.modules.rope import RotaryEmbedding, apply_rope

# A cached prefill's attention (queries x keys per row) from which the values are padded with zeros to the
# keys' width (C + R): torch's fused CPU attention takes only values as wide as the keys, and otherwise falls
# back to its math path, which stores every score. Measured on 2 threads, pocket shapes: 300 new tokens
# 4.0 -> 1.8 ms per layer, 733 tokens 17.7 -> 9.2 ms, 64 tokens 0.20 -> 0.10 ms; below ~64 x 64 the padding
# costs more than it saves (16 prompts of 31 tokens: 0.62 -> 0.91 ms).
FUSED_ATTENTION_MIN_SCORES = 64 * 64


@dataclass
class MLACache:
    """Per-row latent cache: rows use their first lengths[b] slots; capacity grows by doubling."""

    latent: torch.Tensor  # (B, capacity, kv_lora_rank), normalised
    k_rope: torch.Tensor  # (B, capacity, rope_dim), already rotated

    @property
    def capacity(self) -> int:
        return self.latent.shape[1]

    def reserve(self, needed: int) -> None:
        """Grow (in place) so that `needed` slots fit, to the next power of two at least doubling."""
        if needed <= self.capacity:
            return
        capacity = max(_next_power_of_two(needed), 2 * self.capacity)
        self.latent = _grow(self.latent, capacity)
        self.k_rope = _grow(self.k_rope, capacity)

    def write(self, latent: torch.Tensor, k_rope: torch.Tensor, past_lengths: torch.Tensor) -> int:
        """Store the T new tokens of each row at slots past_lengths[b] .. past_lengths[b] + T - 1.

        Returns the slots in use by the longest row, max(past_lengths) + T.
        """
        batch, steps, _ = latent.shape
        used = int(past_lengths.max()) + steps
        self.reserve(used)
        slots = (past_lengths.unsqueeze(1) + torch.arange(steps, device=latent.device)).unsqueeze(-1)
        self.latent.scatter_(
            1, slots.expand(batch, steps, self.latent.shape[-1]), latent.to(self.latent.dtype)
        )
        self.k_rope.scatter_(
            1, slots.expand(batch, steps, self.k_rope.shape[-1]), k_rope.to(self.k_rope.dtype)
        )
        return used

    def nbytes(self, lengths: torch.Tensor) -> int:
        per_token = (self.latent.shape[-1] * self.latent.element_size()) + (
            self.k_rope.shape[-1] * self.k_rope.element_size()
        )
        return int(lengths.sum()) * per_token

    def select(self, indices: torch.Tensor) -> MLACache:
        return MLACache(self.latent[indices], self.k_rope[indices])

    def clone(self) -> MLACache:
        return MLACache(self.latent.clone(), self.k_rope.clone())

    @classmethod
    def concat(cls, caches: list[MLACache], lengths: list[torch.Tensor]) -> MLACache:
        """Stack the rows of several caches, keeping the longest used prefix (rounded up to a power of 2)."""
        used = [int(rows.max()) if rows.numel() else 0 for rows in lengths]
        for cache, tokens in zip(caches, used, strict=True):
            if tokens > cache.capacity:
                raise ValueError(f"an MLA cache of capacity {cache.capacity} cannot hold {tokens} tokens")
        capacity = _next_power_of_two(max(used)) if max(used, default=0) else 0
        latent = torch.cat([_fit(cache.latent, capacity) for cache in caches])
        k_rope = torch.cat([_fit(cache.k_rope, capacity) for cache in caches])
        return cls(latent, k_rope)


def _next_power_of_two(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def _grow(t: torch.Tensor, capacity: int) -> torch.Tensor:
    grown = t.new_zeros(t.shape[0], capacity, t.shape[2])
    grown[:, : t.shape[1]] = t
    return grown


def _fit(t: torch.Tensor, capacity: int) -> torch.Tensor:
    return t[:, :capacity] if t.shape[1] >= capacity else _grow(t, capacity)


class MLA(nn.Module):
    """Multi-Head Latent Attention mixer (see the module docstring for the equations)."""

    def __init__(self, config: NanoPrimeConfig) -> None:
        super().__init__()
        c = config.mla
        self.n_heads = c.n_heads
        self.nope_dim = c.nope_head_dim
        self.rope_dim = c.rope_dim
        self.v_dim = c.v_head_dim
        self.kv_lora_rank = c.kv_lora_rank
        self.scale = (c.nope_head_dim + c.rope_dim) ** -0.5
        q_out = c.n_heads * (c.nope_head_dim + c.rope_dim)
        if c.q_lora_rank is None:
            self.q_proj = make_linear(config, config.d_model, q_out)
        else:
            self.q_a = make_linear(config, config.d_model, c.q_lora_rank)
            self.q_norm = RMSNorm(c.q_lora_rank, config.norm_eps)
            self.q_b = make_linear(config, c.q_lora_rank, q_out)
        self.kv_a = make_linear(config, config.d_model, c.kv_lora_rank + c.rope_dim)
        self.kv_norm = RMSNorm(c.kv_lora_rank, config.norm_eps)
        self.kv_b = make_linear(
            config,
            c.kv_lora_rank,
            c.n_heads * (c.nope_head_dim + c.v_head_dim),
            input_norm=False,
            quantize_activations=False,
        )
        self.o_proj = make_linear(config, c.n_heads * c.v_head_dim, config.d_model)
        self.rotary = RotaryEmbedding(c.rope_dim, config.max_seq_len, c.rope_theta)
        self._absorbed: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None  # see _absorbed_weights

    def new_cache(
        self,
        batch_size: int,
        device: torch.device | str,
        dtype: torch.dtype = torch.float32,
        cache_dtype: torch.dtype | None = None,
    ) -> MLACache:
        """An empty cache for a model computing in `dtype`. By default an fp32 model caches its latents in
        bf16 (`cache_dtype` picks another, as tests of the exact arithmetic do).

        bf16 keeps 8 significant bits of each normalised latent, as many as the 8-bit activations every
        BitLinear sees (DeepSeek's own serving caches its latents in bf16). It halves the bytes a decoding
        step reads from the cache, and a CPU with AVX512-BF16 multiplies bf16 pairs at twice the rate of fp32:
        at long contexts attention is the step's largest cost after the head. On the shipped model, 400
        teacher-forced tokens after a 1,500-token prompt score the same with an fp32, fp16 or bf16 cache
        (cross-entropy 3.4347, 3.4352, 3.4354 nats).
        """
        if cache_dtype is None:
            cache_dtype = torch.bfloat16 if dtype == torch.float32 else dtype
        return MLACache(
            torch.zeros(batch_size, 0, self.kv_lora_rank, device=device, dtype=cache_dtype),
            torch.zeros(batch_size, 0, self.rope_dim, device=device, dtype=cache_dtype),
        )

    def forward(
        self,
        x: torch.Tensor,
        cache: MLACache | None = None,
        past_lengths: torch.Tensor | None = None,
        new_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        batch, steps, _ = x.shape
        if cache is not None and past_lengths is None:
            raise ValueError("MLA with a cache needs past_lengths")
        q = self._queries(x).view(batch, steps, self.n_heads, self.nope_dim + self.rope_dim)
        latent, k_rope = self.kv_a(x).split((self.kv_lora_rank, self.rope_dim), dim=-1)
        latent = self.kv_norm(latent)
        if cache is not None and steps == 1 and self._kernel_fits(x, cache):
            return self.o_proj(self._decode_with_kernel(q, latent, k_rope, cache, past_lengths)[:, None])
        q_nope, q_rope = q.split((self.nope_dim, self.rope_dim), dim=-1)

        offsets = torch.arange(steps, device=x.device)
        if cache is None:
            cos, sin = self.rotary(offsets)  # (T, R): positions 0..T-1 for every row
            q_rope = apply_rope(q_rope, cos.unsqueeze(1), sin.unsqueeze(1))
            k_rope = apply_rope(k_rope, cos, sin)
            out = self._attend_expanded(q_nope, q_rope, latent, k_rope)
        else:
            positions = past_lengths.unsqueeze(1) + offsets  # (B, T)
            cos, sin = self.rotary(positions)
            q_rope = apply_rope(q_rope, cos.unsqueeze(2), sin.unsqueeze(2))
            keys = cache.write(latent, apply_rope(k_rope, cos, sin), past_lengths)
            out = self._attend_absorbed(q_nope, q_rope, cache, positions, keys)
        return self.o_proj(out)

    def _kernel_fits(self, x: torch.Tensor, cache: MLACache) -> bool:
        """fp32 CPU decoding from a bf16 cache without autograd, where the C kernel is built (and wanted)."""
        return (
            x.dtype == torch.float32
            and x.device.type == "cpu"
            and cache.latent.dtype == cache.k_rope.dtype == torch.bfloat16
            and not (x.requires_grad and torch.is_grad_enabled())
            and cpu_kernels.enabled()
        )

    def _decode_with_kernel(
        self,
        q: torch.Tensor,
        latent: torch.Tensor,
        k_rope: torch.Tensor,
        cache: MLACache,
        past_lengths: torch.Tensor,
    ) -> torch.Tensor:
        """One decoding step in one C call (latent_attention.c): the same math as _attend_absorbed, rope and
        cache write included. Returns the heads' outputs (B, H * v)."""
        end, positions = int(past_lengths.max()) + 1, self.rotary.cos_table.shape[0]
        if end > positions:
            raise ValueError(f"position {end - 1} is past the {positions} rotary positions")
        cache.reserve(end)
        if not (cache.latent.is_contiguous() and cache.k_rope.is_contiguous()):
            cache.latent, cache.k_rope = cache.latent.contiguous(), cache.k_rope.contiguous()
        w_kv_b, w_uv_t = self._absorbed_weights()
        return cpu_kernels.latent_attention(
            q[:, 0].contiguous(),
            latent[:, 0].contiguous(),
            k_rope[:, 0].contiguous(),
            self.rotary.cos_table,
            self.rotary.sin_table,
            past_lengths.contiguous(),
            cache.latent,
            cache.k_rope,
            w_kv_b,
            w_uv_t,
            self.scale,
        )

    def _absorbed_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """kv_b's matrix per head (H, nope + v, C) and W_uv transposed (H, C, v), for the kernel.

        Kept while kv_b's matrix is the same tensor: the serving form computes that once, so the transpose is
        made once too; a training-form layer gives a new matrix at every call and gets a new transpose.
        """
        dense = effective_weight(self.kv_b)
        if self._absorbed is None or self._absorbed[0] is not dense:
            heads = (self.n_heads, self.nope_dim + self.v_dim, self.kv_lora_rank)
            per_head = dense.detach().float().view(heads)
            w_uv_t = per_head[:, self.nope_dim :].transpose(1, 2).contiguous()
            self._absorbed = (dense, per_head.contiguous(), w_uv_t)
        return self._absorbed[1], self._absorbed[2]

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "q_proj"):
            return self.q_proj(x)
        return self.q_b(self.q_norm(self.q_a(x)))

    def _attend_expanded(
        self, q_nope: torch.Tensor, q_rope: torch.Tensor, latent: torch.Tensor, k_rope: torch.Tensor
    ) -> torch.Tensor:
        """Training form: up-project the latent to per-head keys and values, causal SDPA."""
        batch, steps, heads, _ = q_nope.shape
        kv = self.kv_b(latent).view(batch, steps, heads, self.nope_dim + self.v_dim)
        k_nope, v = kv.split((self.nope_dim, self.v_dim), dim=-1)
        k = torch.cat((k_nope, k_rope.unsqueeze(2).expand(batch, steps, heads, self.rope_dim)), dim=-1)
        q = torch.cat((q_nope, q_rope), dim=-1)
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True, scale=self.scale
        )
        return out.transpose(1, 2).reshape(batch, steps, heads * self.v_dim)

    def _attend_absorbed(
        self, q_nope: torch.Tensor, q_rope: torch.Tensor, cache: MLACache, positions: torch.Tensor, keys: int
    ) -> torch.Tensor:
        """Cached form: attention in latent space, each (token, head) query a row against the first `keys`
        slots of the shared cache.

        A decoding step (one query per row and head) scores q_latent . c + q_rope . k_rope with two matmuls
        straight from the cache: F.scaled_dot_product_attention would need the keys as one tensor, a copy of
        the whole cache per token, and costs more than a softmax for a single query. A prefill (many queries)
        concatenates once and lets F.scaled_dot_product_attention run the masked softmax.
        """
        batch, steps, heads, _ = q_nope.shape
        w_kv_b = effective_weight(self.kv_b).view(heads, self.nope_dim + self.v_dim, self.kv_lora_rank)
        w_uk, w_uv = w_kv_b.split((self.nope_dim, self.v_dim), dim=1)  # (H, nope, C), (H, v, C)
        # Per-head matmuls, every query of the batch a row (H, B*T, .): no broadcast copy of the weights.
        q_latent = torch.bmm(q_nope.flatten(0, 1).transpose(0, 1), cast(w_uk, q_nope.dtype)).transpose(0, 1)
        latent = cast(cache.latent[:, :keys], q_nope.dtype)  # (B, L, C)
        k_rope = cast(cache.k_rope[:, :keys], q_nope.dtype)  # (B, L, R)
        if batch > 1 or steps > 1:  # else the one query sits at the last key and sees them all
            visible = torch.arange(keys, device=positions.device) <= positions.unsqueeze(-1)  # (B, T, L)

        if steps == 1:  # q_latent: (B, H, C)
            scores = torch.baddbmm(  # scale * (q_latent . c + q_rope . k_rope): (B, H, L)
                q_latent @ latent.mT, q_rope[:, 0], k_rope.mT, beta=self.scale, alpha=self.scale
            )
            if batch > 1:  # rows of different lengths: each sees its own keys only
                scores.masked_fill_(~visible, float("-inf"))
            out_latent = torch.softmax(scores, dim=-1) @ latent  # (B, H, C)
        else:  # q_latent: (B * T, H, C)
            query = torch.cat((q_latent.reshape(batch, steps, heads, -1), q_rope), dim=-1)
            query = query.reshape(batch, 1, steps * heads, -1)
            key = torch.cat((latent, k_rope), dim=-1).unsqueeze(1)
            mask = visible.unsqueeze(2).expand(batch, steps, heads, keys).reshape(batch, 1, steps * heads, -1)
            value = latent.unsqueeze(1)
            if steps * keys >= FUSED_ATTENTION_MIN_SCORES:  # values as wide as the keys: see the constant
                value = F.pad(value, (0, self.rope_dim))
            out_latent = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=self.scale)
            out_latent = out_latent[..., : self.kv_lora_rank].reshape(batch * steps, heads, self.kv_lora_rank)
        out = torch.bmm(out_latent.transpose(0, 1), cast(w_uv, out_latent.dtype).mT)  # (H, B * T, v)
        return out.transpose(0, 1).reshape(batch, steps, heads * self.v_dim)
