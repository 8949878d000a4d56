"""NanoPrime: a hybrid language model of Mamba and MLA blocks with BitNet b1.58 linear layers.

    x      = embed(input_ids)
    for each block (config.layer_pattern: "mamba" = Mamba-2 or Mamba v1, "mla" = latent attention):
        x  = x + mixer(rmsnorm(x))                     sequence mixing (cache/state when decoding)
        x  = x + ffn(rmsnorm(x))                       BitLinear SwiGLU (or the fast/slow router)
    logits = head(rmsnorm(x))                          head optionally tied to the embedding

`forward(input_ids)` is the parallel training form. With an InferenceState it prefills or decodes, updating
the state in place; per-row `lengths` let a right-padded batch advance each row by its own number of tokens.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.config import NanoPrimeConfig
from model.modules import cpu_kernels
from model.modules.ffn import SwiGLU
from model.modules.mamba import Mamba
from model.modules.mamba2 import Mamba2
from model.modules.mla import MLA
from model.modules.norm import RMSNorm
from model.modules.router import Router
from model.modules.thinking_loop import ThinkingLoop
from model.state import InferenceState, config_fingerprint

INIT_STD = 0.02
# Projections that write into the residual stream; their init is scaled by 1/sqrt(2 * n_layers) (GPT-2).
RESIDUAL_PROJECTIONS = ("o_proj.weight", "out_proj.weight", "down.weight")


def build_mixer(config: NanoPrimeConfig, kind: str) -> nn.Module:
    """The sequence mixer for one entry of the layer pattern."""
    if kind == "mla":
        return MLA(config)
    if kind == "mamba":
        return Mamba2(config) if config.mamba.use_mamba2 else Mamba(config)
    raise ValueError(f"unknown layer type {kind!r}")


class Block(nn.Module):
    """Pre-norm residual block: mixer then feed-forward, each added to the residual stream."""

    n_caches = 1

    def __init__(self, config: NanoPrimeConfig, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.mixer_norm = RMSNorm(config.d_model, config.norm_eps)
        self.mixer = build_mixer(config, kind)
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.ffn = Router(config) if config.router.enabled else SwiGLU(config)

    def new_caches(self, batch_size: int, device: torch.device | str, dtype: torch.dtype) -> list[Any]:
        return [self.mixer.new_cache(batch_size, device, dtype)]

    def forward(
        self,
        x: torch.Tensor,
        caches: list[Any] | None = None,
        past_lengths: torch.Tensor | None = None,
        new_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        cache = None if caches is None else caches[0]
        x = x + self.mixer(self.mixer_norm(x), cache, past_lengths, new_lengths)
        return x + self.ffn(self.ffn_norm(x))


class NanoPrime(nn.Module):
    def __init__(self, config: NanoPrimeConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        self.fingerprint = config_fingerprint(config)
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        layers: list[nn.Module] = [Block(config, kind) for kind in config.layer_pattern]
        if config.thinking_loop.enabled:
            layers[-1] = ThinkingLoop(config, layers[-1])
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(config.d_model, config.norm_eps)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.head.weight = self.embed.weight
        self._init_weights()

    @torch.no_grad()
    def _init_weights(self) -> None:
        nn.init.normal_(self.embed.weight, std=INIT_STD)
        if not self.config.tie_embeddings:
            nn.init.normal_(self.head.weight, std=INIT_STD)
        residual_std = INIT_STD / math.sqrt(2 * self.config.n_layers)
        for name, param in self.named_parameters():
            if name.endswith(RESIDUAL_PROJECTIONS):
                nn.init.normal_(param, std=residual_std)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (a tied head counted once); optionally without the token embedding."""
        total = sum(p.numel() for p in self.parameters())
        return total - self.embed.weight.numel() if exclude_embeddings else total

    def new_state(
        self, batch_size: int, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> InferenceState:
        """An empty inference state for `batch_size` sequences (the model's device and dtype by default)."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        device = device if device is not None else self.embed.weight.device
        dtype = dtype if dtype is not None else self.embed.weight.dtype
        caches = [cache for layer in self.layers for cache in layer.new_caches(batch_size, device, dtype)]
        lengths = torch.zeros(batch_size, dtype=torch.long, device=device)
        return InferenceState(caches, lengths, self.fingerprint)

    def forward(
        self,
        input_ids: torch.Tensor,
        state: InferenceState | None = None,
        lengths: torch.Tensor | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, InferenceState | None]:
        """(B, T) token ids -> (B, T, vocab) logits; with a state, prefill/decode and update it in place.

        `last_only` gives (B, 1, vocab): the logits of each row's last real token only. A prefill needs
        nothing else, and the head over every prompt position is a large share of its time.
        """
        lengths = self._check_inputs(input_ids, state, lengths)
        x = self.embed(input_ids)
        if state is None:
            use_checkpointing = (
                self.config.gradient_checkpointing and self.training and torch.is_grad_enabled()
            )
            for layer in self.layers:
                x = checkpoint(layer, x, use_reentrant=False) if use_checkpointing else layer(x)
        else:
            past = state.lengths
            start = 0
            for layer in self.layers:
                x = layer(x, state.caches[start : start + layer.n_caches], past, lengths)
                start += layer.n_caches
            state.lengths = past + (lengths if lengths is not None else input_ids.shape[1])
        if last_only:
            x = x[:, -1:] if lengths is None else x[torch.arange(len(x)), (lengths - 1).clamp(min=0)][:, None]
        return self._logits(self.norm(x)), state

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """The head. A few fp32 rows without autograd (decoding) go through the C kernel (lm_head.c): the
        matrix is most of a decoding step's reads, and torch's matmul copies it whole before multiplying a
        batch."""
        weight = self.head.weight
        if (
            x.numel() // x.shape[-1] <= cpu_kernels.HEAD_MAX_ROWS
            and x.dtype == weight.dtype == torch.float32
            and x.device.type == "cpu"
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and cpu_kernels.enabled()
        ):
            return cpu_kernels.lm_head(x, weight)
        return self.head(x)

    def _check_inputs(
        self, input_ids: torch.Tensor, state: InferenceState | None, lengths: torch.Tensor | None
    ) -> torch.Tensor | None:
        """ValueError for anything that would give a silently wrong answer; returns lengths as a tensor."""
        config = self.config
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.long, torch.int32):
            raise ValueError("input_ids must be an int64 or int32 tensor of token ids")
        if input_ids.dim() != 2 or input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(
                f"input_ids must have shape (batch, tokens) with both >= 1, got {tuple(input_ids.shape)}"
            )
        low, high = (int(bound) for bound in torch.aminmax(input_ids))
        if low < 0 or high >= config.vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"token id {bad} is outside the vocabulary [0, {config.vocab_size})")
        batch, steps = input_ids.shape
        if state is None:
            if lengths is not None:
                raise ValueError(
                    "lengths needs an inference state; without one the model is causal and right padding "
                    "cannot change the real positions"
                )
            if steps > config.max_seq_len:
                raise ValueError(
                    f"sequence of {steps} tokens is longer than max_seq_len={config.max_seq_len}"
                )
            return None
        if not isinstance(state, InferenceState):
            raise ValueError(f"state must be an InferenceState, got {type(state).__name__}")
        if state.fingerprint != self.fingerprint:
            raise ValueError("the inference state was made by a model with a different config")
        if state.batch_size != batch:
            raise ValueError(f"input_ids has {batch} rows but the inference state holds {state.batch_size}")
        if lengths is not None:
            lengths = torch.as_tensor(lengths, device=state.lengths.device)
            if lengths.dtype.is_floating_point or lengths.dtype == torch.bool or lengths.shape != (batch,):
                raise ValueError(
                    f"lengths must be {batch} integers (one per row), "
                    f"got {lengths.dtype} of shape {tuple(lengths.shape)}"
                )
            lengths = lengths.long()
            if int(lengths.min()) < 0 or int(lengths.max()) > steps:
                raise ValueError(
                    f"lengths must lie in [0, {steps}] (the tokens given per row), got {lengths.tolist()}"
                )
        new = lengths if lengths is not None else steps
        end = int((state.lengths + new).max())
        if end > config.max_seq_len:
            raise ValueError(f"position {end - 1} is past max_seq_len={config.max_seq_len}")
        return lengths
