"""Mamba (v1) mixer: input-dependent (selective) state space model, Gu & Dao 2023.

  x, z   = in_proj(u)                               two branches of width d_inner
  x      = silu(causal depthwise conv(x))
  dt,B,C = x_proj(x);  dt = softplus(dt_proj(dt) + dt_bias)
  h_t    = exp(dt_t A) h_{t-1} + dt_t B_t x_t        per channel d and state n, A = -exp(A_log)
  y_t    = C_t . h_t + D x_t
  out    = out_proj(y * silu(z))

Training runs the recurrence as a chunked parallel scan (model/modules/pscan.py); decoding carries the last
d_conv - 1 conv inputs and the (d_inner, d_state) SSM state per sequence, so memory does not grow with length.
The conv-window and padding helpers here are shared with Mamba-2.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from model.config import NanoPrimeConfig
from model.modules.bitnet import make_linear
from model.modules.norm import cast
from model.modules.pscan import linear_scan


# ---- the cache ---------------------------------------------------------------------------------------------
@dataclass
class MambaCache:
    """Recurrent state per sequence: conv (B, d_inner, d_conv - 1), the last conv inputs, and ssm
    (B, d_inner, d_state).

    The SSM state is always fp32; the conv window uses the activation dtype given to `new_cache`.
    """

    conv: torch.Tensor
    ssm: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.conv.shape[0]

    def nbytes(self, lengths: torch.Tensor | None = None) -> int:
        """Bytes held; fixed per sequence, so `lengths` (there for the common cache interface) is unused."""
        return self.conv.numel() * self.conv.element_size() + self.ssm.numel() * self.ssm.element_size()

    def select(self, indices: Sequence[int] | torch.Tensor) -> MambaCache:
        """A new cache with the given rows, in that order."""
        index = torch.as_tensor(indices, dtype=torch.long, device=self.conv.device)
        if index.ndim != 1:
            raise ValueError(f"cache select needs a 1-D list of row indices, got shape {tuple(index.shape)}")
        if index.numel() and (index.min() < 0 or index.max() >= self.batch_size):
            raise ValueError(f"cache select index out of range for a batch of {self.batch_size}")
        return type(self)(self.conv.index_select(0, index), self.ssm.index_select(0, index))

    def clone(self) -> MambaCache:
        return type(self)(self.conv.clone(), self.ssm.clone())

    @classmethod
    def concat(
        cls, caches: Sequence[MambaCache], lengths: Sequence[torch.Tensor] | None = None
    ) -> MambaCache:
        """Stack caches along the batch; `lengths` (there for the common cache interface) is unused."""
        if not caches:
            raise ValueError("cache concat needs at least one cache")
        for cache in caches[1:]:
            if (
                cache.conv.shape[1:] != caches[0].conv.shape[1:]
                or cache.ssm.shape[1:] != caches[0].ssm.shape[1:]
            ):
                raise ValueError(
                    "cache concat got caches of different layer shapes (made by another config?)"
                )
        return cls(torch.cat([c.conv for c in caches]), torch.cat([c.ssm for c in caches]))


# ---- helpers shared with Mamba-2 ---------------------------------------------------------------------------
def init_dt_bias(n: int, dt_min: float, dt_max: float, floor: float) -> torch.Tensor:
    """Bias whose softplus is a log-uniform step in [dt_min, dt_max]: training starts at sane timescales."""
    dt = torch.exp(torch.rand(n) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(min=floor)
    return dt + torch.log(-torch.expm1(-dt))  # inverse of softplus


def check_cache_call(
    x: torch.Tensor,
    d_model: int,
    cache: MambaCache | None,
    new_lengths: torch.Tensor | None,
    row_shapes: dict[str, tuple[int, ...]],
) -> None:
    """Raise ValueError for an input or cache that does not fit this layer, not a silent wrong answer.

    row_shapes: the shape of one row of each cache field, e.g. {"conv": (channels, d_conv - 1), ...}.
    """
    if x.ndim != 3 or x.shape[-1] != d_model:
        raise ValueError(f"Mamba input must be (batch, T, {d_model}), got {tuple(x.shape)}")
    if x.shape[1] == 0:
        raise ValueError("Mamba input has no tokens (T == 0)")
    if cache is None:
        if new_lengths is not None:
            raise ValueError("new_lengths is only meaningful with a cache")
        return
    for name, row_shape in row_shapes.items():
        shape = (x.shape[0], *row_shape)
        got = tuple(getattr(cache, name).shape)
        if got != shape:
            raise ValueError(f"Mamba cache '{name}' has shape {got}, this layer and batch need {shape}")
    if new_lengths is not None:
        if new_lengths.shape != (x.shape[0],):
            raise ValueError(f"new_lengths must have shape ({x.shape[0]},), got {tuple(new_lengths.shape)}")
        if bool((new_lengths < 0).any()) or bool((new_lengths > x.shape[1]).any()):
            raise ValueError(f"new_lengths must lie in [0, {x.shape[1]}], got {new_lengths.tolist()}")


def causal_conv(
    x: torch.Tensor, conv: nn.Conv1d, window: torch.Tensor | None, new_lengths: torch.Tensor | None = None
) -> torch.Tensor:
    """Depthwise causal conv of x (B, T, C) preceded by `window` (B, C, d_conv - 1), zeros when None.

    A given window is moved on in place to the last d_conv - 1 real inputs of each row (`new_lengths` real
    tokens, all T when None). A decoding step (a window and one token per row) is a multiply-and-sum over the
    d_conv inputs, much cheaper than F.conv1d for a single position.
    """
    x = x.transpose(1, 2)
    width = conv.kernel_size[0] - 1
    if window is None:
        padded = F.pad(x, (width, 0))
    else:
        padded = torch.cat([window.to(x.dtype), x], dim=-1)
        window.copy_(next_conv_window(padded, new_lengths, width))
    if window is not None and x.shape[-1] == 1:
        out = (padded * conv.weight[:, 0]).sum(-1, keepdim=True)
        out = out + conv.bias[:, None] if conv.bias is not None else out
    else:
        out = F.conv1d(padded, conv.weight, conv.bias, groups=conv.groups)
    return out.transpose(1, 2)


def next_conv_window(padded: torch.Tensor, new_lengths: torch.Tensor | None, width: int) -> torch.Tensor:
    """The last `width` real inputs per row of padded (B, C, width + T); they end at width + new_lengths."""
    if new_lengths is None:
        return padded[:, :, padded.shape[-1] - width :]
    index = new_lengths.to(padded.device)[:, None] + torch.arange(width, device=padded.device)
    return padded.gather(2, index[:, None, :].expand(-1, padded.shape[1], -1))


def real_token_mask(new_lengths: torch.Tensor, length: int, device: torch.device) -> torch.Tensor:
    """(B, T) float mask, 1 on real tokens and 0 on right padding; multiplying dt by it freezes the state."""
    return (torch.arange(length, device=device)[None, :] < new_lengths.to(device)[:, None]).float()


def fp32(x: torch.Tensor) -> torch.Tensor:
    """x.float(): the state math's precision, whatever the activations' (fp64 included)."""
    return cast(x, torch.float32)


def fp32_state_math(fn: Callable) -> Callable:
    """Run fn with autocast off on its tensors' device: inside a bf16 autocast region the scan's einsums would
    otherwise drop to bf16, and the recurrent state must stay fp32."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        device_type = args[0].device.type
        if not torch.is_autocast_enabled(device_type):
            return fn(*args, **kwargs)  # nothing to turn off (serving): spare the context on every step
        with torch.autocast(device_type, enabled=False):
            return fn(*args, **kwargs)

    return wrapper


# ---- the scan ----------------------------------------------------------------------------------------------
@fp32_state_math
def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Parallel selective scan in fp32, without the D skip.

    x, dt: (b, T, D) with dt already positive; A: (D, N) negative; B, C: (b, T, N); initial_state (b, D, N).
    Returns y (b, T, D) with y_t = C_t . h_t, and the last state h_{T-1} (b, D, N).
    """
    x, dt, B, C = x.float(), dt.float(), B.float(), C.float()
    decay = torch.exp(dt[..., None] * A.float())  # (b, T, D, N)
    inputs = (dt * x)[..., None] * B[:, :, None, :]  # (b, T, D, N)
    h = linear_scan(decay, inputs, initial_state, chunk_size)
    y = torch.einsum("btdn,btn->btd", h, C)
    return y, h[:, -1]


@fp32_state_math
def selective_step(
    state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One recurrent step in fp32: state (b, D, N), x and dt (b, D), B and C (b, N) -> (y (b, D), state)."""
    dt = fp32(dt)
    state = torch.exp(dt[..., None] * fp32(A)) * fp32(state) + (dt * fp32(x))[..., None] * fp32(B)[:, None]
    y = (state @ fp32(C).unsqueeze(-1)).squeeze(-1)  # C_t . h_t per channel
    return y, state


# ---- the layer ---------------------------------------------------------------------------------------------
class Mamba(nn.Module):
    """Mamba v1 mixer; see the module docstring for the equations and the interface contract for the call."""

    def __init__(self, config: NanoPrimeConfig) -> None:
        super().__init__()
        m = config.mamba
        self.d_model = config.d_model
        self.d_inner = m.expand * config.d_model
        self.d_state = m.d_state
        self.d_conv = m.d_conv
        self.dt_rank = math.ceil(config.d_model / 16)
        self.chunk_size = m.chunk_size

        self.in_proj = make_linear(config, self.d_model, 2 * self.d_inner)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, m.d_conv, groups=self.d_inner, bias=True)
        self.x_proj = make_linear(config, self.d_inner, self.dt_rank + 2 * self.d_state)
        self.dt_proj = make_linear(config, self.dt_rank, self.d_inner)
        # dt bias: its own fp32 parameter, so its inverse-softplus init survives whatever dt_proj quantizes.
        self.dt_bias = nn.Parameter(init_dt_bias(self.d_inner, m.dt_min, m.dt_max, m.dt_init_floor))
        A = torch.arange(1, self.d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))  # S4D-real init: A = -(1, 2, ..., d_state) for every channel
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = make_linear(config, self.d_inner, self.d_model)
        with torch.no_grad():
            bound = self.dt_rank**-0.5
            self.dt_proj.weight.uniform_(-bound, bound)

    def new_cache(
        self, batch_size: int, device: torch.device | str, dtype: torch.dtype = torch.float32
    ) -> MambaCache:
        return MambaCache(
            conv=torch.zeros(batch_size, self.d_inner, self.d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch_size, self.d_inner, self.d_state, device=device, dtype=torch.float32),
        )

    def forward(
        self,
        x: torch.Tensor,
        cache: MambaCache | None = None,
        past_lengths: torch.Tensor | None = None,
        new_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, d_model) -> (B, T, d_model). With a cache, continue from it and update it in place.

        `past_lengths` is there for the common mixer interface: the recurrent state already holds the past.
        """
        row_shapes = {"conv": (self.d_inner, self.d_conv - 1), "ssm": (self.d_inner, self.d_state)}
        check_cache_call(x, self.d_model, cache, new_lengths, row_shapes)
        batch, length, _ = x.shape

        xs, z = self.in_proj(x).chunk(2, dim=-1)
        xs = F.silu(causal_conv(xs, self.conv1d, cache.conv if cache is not None else None, new_lengths))
        dt, B, C = self.x_proj(xs).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(fp32(self.dt_proj(dt)) + fp32(self.dt_bias))
        A = -torch.exp(fp32(self.A_log))

        if cache is None:
            y, _ = selective_scan(xs, dt, A, B, C, self.chunk_size)
        else:
            if new_lengths is not None:
                dt = dt * real_token_mask(new_lengths, length, x.device)[..., None]
            if length == 1:
                y, state = selective_step(cache.ssm, xs[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])
                y = y[:, None]
            else:
                y, state = selective_scan(xs, dt, A, B, C, self.chunk_size, cache.ssm.float())
            cache.ssm.copy_(state)

        y = y + fp32(xs) * fp32(self.D)
        y = y * F.silu(fp32(z))
        return self.out_proj(cast(y, x.dtype))
