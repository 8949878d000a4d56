"""A plain transformer baseline (nanoGPT-sized, Llama-style blocks) for same-run comparisons.

Benchmarks compare NanoPrime with this model at the same width, depth, vocabulary and feed-forward width:
full-precision nn.Linear layers, multi-head causal attention over per-head keys and values, RoPE on the whole
head, SwiGLU, RMSNorm, tied embeddings. It mirrors NanoPrime's call, `model(input_ids) -> (logits, None)`, so
a training loop or benchmark can drive either one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.config import NanoPrimeConfig
from model.modules.norm import RMSNorm
from model.modules.rope import RotaryEmbedding, apply_rope

INIT_STD = 0.02


@dataclass
class ReferenceConfig:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    ffn_hidden: int
    max_seq_len: int
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    @classmethod
    def matching(cls, config: NanoPrimeConfig) -> ReferenceConfig:
        """The baseline of the same shape as a NanoPrime config (heads as in its MLA layers)."""
        if config.d_model % config.mla.n_heads:
            raise ValueError(f"d_model {config.d_model} is not divisible by {config.mla.n_heads} heads")
        return cls(
            vocab_size=config.vocab_size,
            d_model=config.d_model,
            n_layers=config.n_layers,
            n_heads=config.mla.n_heads,
            ffn_hidden=config.ffn_hidden,
            max_seq_len=config.max_seq_len,
            norm_eps=config.norm_eps,
            rope_theta=config.mla.rope_theta,
        )


class Attention(nn.Module):
    def __init__(self, config: ReferenceConfig) -> None:
        super().__init__()
        self.n_heads = config.n_heads
        self.head_dim = config.d_model // config.n_heads
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=False)
        self.o_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.rotary = RotaryEmbedding(self.head_dim, config.max_seq_len, config.rope_theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, steps, width = x.shape
        q, k, v = self.qkv(x).view(batch, steps, 3, self.n_heads, self.head_dim).unbind(2)
        cos, sin = self.rotary(torch.arange(steps, device=x.device))
        q, k = (
            apply_rope(q, cos.unsqueeze(1), sin.unsqueeze(1)),
            apply_rope(k, cos.unsqueeze(1), sin.unsqueeze(1)),
        )
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=True
        )
        return self.o_proj(out.transpose(1, 2).reshape(batch, steps, width))


class FeedForward(nn.Module):
    def __init__(self, config: ReferenceConfig) -> None:
        super().__init__()
        self.gate_up = nn.Linear(config.d_model, 2 * config.ffn_hidden, bias=False)
        self.down = nn.Linear(config.ffn_hidden, config.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


class Block(nn.Module):
    def __init__(self, config: ReferenceConfig) -> None:
        super().__init__()
        self.attn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attn = Attention(config)
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.ffn = FeedForward(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.ffn(self.ffn_norm(x))


class ReferenceTransformer(nn.Module):
    def __init__(self, config: ReferenceConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.head.weight = self.embed.weight
        residual_std = INIT_STD / math.sqrt(2 * config.n_layers)
        for name, param in self.named_parameters():
            if param.dim() == 2:
                std = residual_std if name.endswith(("o_proj.weight", "down.weight")) else INIT_STD
                nn.init.normal_(param, std=std)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, None]:
        if input_ids.shape[1] > self.config.max_seq_len:
            raise ValueError(f"sequence of {input_ids.shape[1]} tokens is longer than max_seq_len")
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x)), None

    def kv_cache_bytes_per_token(self, element_size: int = 4) -> int:
        """What a standard KV cache would hold per token: a key and a value of d_model per layer."""
        return 2 * self.config.n_layers * self.config.d_model * element_size
