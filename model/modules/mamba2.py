"""Mamba-2 mixer: state space duality (SSD), Dao & Gu 2024.

  z, xBC, dt = in_proj(u)
  x, B, C    = split(silu(causal depthwise conv(xBC)))     B, C shared by the heads of a group
  dt         = softplus(dt + dt_bias)                      one step size per head
  h_t        = exp(dt_t A) h_t-1 + dt_t x_t B_t^T          A = -exp(A_log) is one scalar per head
  y_t        = h_t C_t + D x_t
  out        = out_proj(gated_rmsnorm(y * silu(z)))

Because the decay is a scalar per head, a chunk of the recurrence is a masked matmul (the "dual" quadratic
form), so training runs chunk_size x chunk_size matmuls inside chunks and passes states between chunks.
Decoding carries the conv window and the (n_heads, head_dim, d_state) state per sequence. On a CPU in fp32, a
decoding step from in_proj's output to the gated norm's is one call to the C kernel mamba2_step.c
(cpu_kernels.py); elsewhere, and for prompts, the torch code below runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.config import NanoPrimeConfig
from model.modules import cpu_kernels
from model.modules.bitnet import make_linear
from model.modules.mamba import (
    MambaCache,
    causal_conv,
    check_cache_call,
    fp32,
    fp32_state_math,
    init_dt_bias,
    real_token_mask,
)
from model.modules.norm import cast, rms_norm


@dataclass
class Mamba2Cache(MambaCache):
    """conv (B, d_inner + 2 * n_groups * d_state, d_conv - 1), the last conv inputs, and ssm
    (B, n_heads, head_dim, d_state).

    Same operations as MambaCache; the SSM state is always fp32.
    """


def segment_sum(a: torch.Tensor) -> torch.Tensor:
    """[..., t, s] = a_{s+1} + ... + a_t for s <= t, and -inf for s > t, so exp() is the decay from s to t.

    Built from a masked cumulative sum rather than cumsum(a)[t] - cumsum(a)[s], which loses precision once the
    cumulative log decay is large.
    """
    n = a.shape[-1]
    ones = torch.ones(n, n, dtype=torch.bool, device=a.device)
    terms = a[..., :, None].expand(*a.shape, n).masked_fill(~ones.tril(-1), 0.0)  # [k, s] = a_k for k > s
    return terms.cumsum(-2).masked_fill(~ones.tril(0), float("-inf"))


@fp32_state_math
def ssd_chunk_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD in fp32, without the D skip.

    x: (b, T, H, P); dt: (b, T, H) already positive; A: (H,) negative; B, C: (b, T, G, N) with G dividing
    H (head h reads group h // (H // G)); initial_state: (b, H, P, N). Returns y (b, T, H, P) and the state
    after the last token (b, H, P, N). T is padded with dt = 0 (state carried unchanged) to a multiple of
    the chunk size.
    """
    batch, length, heads, _ = x.shape
    groups = B.shape[2]
    chunk_size = min(chunk_size, length)
    x, dt, A = x.float(), dt.float(), A.float()
    B = B.float().repeat_interleave(heads // groups, dim=2)
    C = C.float().repeat_interleave(heads // groups, dim=2)
    pad = -length % chunk_size
    if pad:
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    n_chunks = (length + pad) // chunk_size
    x, dt, B, C = (t.reshape(batch, n_chunks, chunk_size, *t.shape[2:]) for t in (x, dt, B, C))
    # Layout: b batch, c chunk, l / s position in the chunk (target / source), h head, p head_dim, n state.

    x = x * dt[..., None]  # dt_s x_s: the input each step writes into the state
    log_decay = (dt * A).permute(0, 1, 3, 2)  # (b, c, h, l)
    decay = torch.exp(segment_sum(log_decay))  # (b, c, h, l, s): decay from step s to step l inside a chunk

    # 1. Inside each chunk: y_l = sum_{s <= l} (C_l . B_s) decay[l, s] dt_s x_s, a masked "attention" matmul.
    scores = torch.einsum("bclhn,bcshn->bchls", C, B) * decay
    y = torch.einsum("bchls,bcshp->bclhp", scores, x)

    # 2. What each chunk adds to the state by its end, starting from zero.
    to_end = decay[..., -1, :]  # (b, c, h, s): decay from step s to the chunk's last step
    chunk_states = torch.einsum("bclhn,bchl,bclhp->bchpn", B, to_end, x)

    # 3. Pass states across chunks: entering[c] = sum_{j <= c} (decay from chunk j's end to chunk c's start)
    #    * s_j, with s_0 the initial state and s_j (j >= 1) chunk j-1's own contribution.
    if initial_state is None:
        initial_state = chunk_states.new_zeros(chunk_states[:, 0].shape)
    states = torch.cat([initial_state.float()[:, None], chunk_states], dim=1)  # (b, c + 1, h, p, n)
    chunk_log_decay = F.pad(log_decay.sum(-1).transpose(1, 2), (1, 0))  # (b, h, c + 1)
    across = torch.exp(segment_sum(chunk_log_decay))  # (b, h, c + 1, c + 1)
    entering = torch.einsum("bhij,bjhpn->bihpn", across, states)

    # 4. The state entering each chunk, decayed to each step and read out by C.
    from_start = torch.exp(log_decay.cumsum(-1)).permute(0, 1, 3, 2)  # (b, c, l, h)
    y = y + torch.einsum("bclhn,bchpn->bclhp", C, entering[:, :-1]) * from_start[..., None]

    y = y.reshape(batch, n_chunks * chunk_size, heads, -1)[:, :length]
    return y, entering[:, -1]


@fp32_state_math
def ssd_step(
    state: torch.Tensor, x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> torch.Tensor:
    """One recurrent step in fp32, updating `state` (b, H, P, N, fp32) in place: x (b, H, P), dt (b, H),
    B and C (b, G, N). Returns y (b, H, P), without the D skip.

    In place because a decoding batch's states are the step's largest tensors: new ones for the decayed state,
    the input term and their sum would triple its memory traffic.
    """
    heads, groups = x.shape[1], B.shape[1]
    B, C = fp32(B), fp32(C)
    if groups > 1:  # head h reads group h // (H // G); a single group broadcasts over the heads as it is
        B, C = B.repeat_interleave(heads // groups, dim=1), C.repeat_interleave(heads // groups, dim=1)
    dt = fp32(dt)
    state.mul_(torch.exp(dt * fp32(A))[..., None, None])
    state.addcmul_((dt[..., None] * fp32(x))[..., None], B[:, :, None, :])
    return (state * C[:, :, None, :]).sum(-1)  # C_t . h_t per head and channel (faster than a bmm here)


class GatedRMSNorm(nn.Module):
    """RMSNorm of y * silu(z) over channel groups (one per B/C group), as Mamba-2 does before out_proj."""

    def __init__(self, dim: int, group_size: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size = group_size
        self.eps = eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = fp32(y) * F.silu(fp32(z))
        grouped = rms_norm(y.unflatten(-1, (-1, self.group_size)), self.eps)
        return grouped.flatten(-2) * fp32(self.weight)


class Mamba2(nn.Module):
    """Mamba-2 mixer; see the module docstring for the equations and the interface contract for the call."""

    def __init__(self, config: NanoPrimeConfig) -> None:
        super().__init__()
        m = config.mamba
        self.d_model = config.d_model
        self.d_inner = m.expand * config.d_model
        self.d_state = m.d_state
        self.d_conv = m.d_conv
        self.head_dim = m.head_dim
        self.n_heads = self.d_inner // m.head_dim
        self.n_groups = m.n_groups
        self.chunk_size = m.chunk_size
        self.conv_channels = self.d_inner + 2 * self.n_groups * self.d_state

        self.in_proj = make_linear(config, self.d_model, self.d_inner + self.conv_channels + self.n_heads)
        self.conv1d = nn.Conv1d(self.conv_channels, self.conv_channels, m.d_conv, groups=self.conv_channels)
        self.dt_bias = nn.Parameter(init_dt_bias(self.n_heads, m.dt_min, m.dt_max, m.dt_init_floor))
        # One decay rate per head, spread over [1, 16] as in the reference implementation.
        self.A_log = nn.Parameter(torch.log(torch.empty(self.n_heads).uniform_(1.0, 16.0)))
        self.D = nn.Parameter(torch.ones(self.n_heads))
        self.norm = GatedRMSNorm(self.d_inner, self.d_inner // self.n_groups, config.norm_eps)
        self.out_proj = make_linear(config, self.d_inner, self.d_model)

    def new_cache(
        self, batch_size: int, device: torch.device | str, dtype: torch.dtype = torch.float32
    ) -> Mamba2Cache:
        return Mamba2Cache(
            conv=torch.zeros(batch_size, self.conv_channels, self.d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(
                batch_size, self.n_heads, self.head_dim, self.d_state, device=device, dtype=torch.float32
            ),
        )

    def forward(
        self,
        x: torch.Tensor,
        cache: Mamba2Cache | None = None,
        past_lengths: torch.Tensor | None = None,
        new_lengths: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (B, T, d_model) -> (B, T, d_model). With a cache, continue from it and update it in place.

        `past_lengths` is there for the common mixer interface: the recurrent state already holds the past.
        """
        row_shapes = {
            "conv": (self.conv_channels, self.d_conv - 1),
            "ssm": (self.n_heads, self.head_dim, self.d_state),
        }
        check_cache_call(x, self.d_model, cache, new_lengths, row_shapes)
        batch, length, _ = x.shape
        if cache is not None and length == 1 and new_lengths is None and self._kernel_fits(x, cache):
            return self.out_proj(self._decode_with_kernel(self.in_proj(x)[:, 0], cache)[:, None])

        z, xbc, dt = self.in_proj(x).split([self.d_inner, self.conv_channels, self.n_heads], dim=-1)
        xbc = causal_conv(xbc, self.conv1d, cache.conv if cache is not None else None, new_lengths)
        xs, B, C = F.silu(xbc).split(
            [self.d_inner, self.n_groups * self.d_state, self.n_groups * self.d_state], -1
        )
        xs = xs.unflatten(-1, (self.n_heads, self.head_dim))
        B = B.unflatten(-1, (self.n_groups, self.d_state))
        C = C.unflatten(-1, (self.n_groups, self.d_state))
        dt = F.softplus(fp32(dt) + fp32(self.dt_bias))
        A = -torch.exp(fp32(self.A_log))

        if cache is None:
            y, _ = ssd_chunk_scan(xs, dt, A, B, C, self.chunk_size)
        else:
            if new_lengths is not None:
                dt = dt * real_token_mask(new_lengths, length, x.device)[..., None]
            if length == 1:
                y = ssd_step(cache.ssm, xs[:, 0], dt[:, 0], A, B[:, 0], C[:, 0])[:, None]
            else:
                y, state = ssd_chunk_scan(xs, dt, A, B, C, self.chunk_size, cache.ssm)
                cache.ssm.copy_(state)

        y = y + fp32(xs) * fp32(self.D)[:, None]
        y = self.norm(y.flatten(-2), z)
        return self.out_proj(cast(y, x.dtype))

    def _kernel_fits(self, x: torch.Tensor, cache: Mamba2Cache) -> bool:
        """fp32 CPU decoding without autograd, where the C kernel is built (and wanted)."""
        return (
            x.dtype == cache.conv.dtype == self.dt_bias.dtype == self.conv1d.weight.dtype == torch.float32
            and x.device.type == "cpu"
            and not (torch.is_grad_enabled() and (x.requires_grad or self.dt_bias.requires_grad))
            and cpu_kernels.enabled()
        )

    def _decode_with_kernel(self, proj: torch.Tensor, cache: Mamba2Cache) -> torch.Tensor:
        """One decoding step in one C call (mamba2_step.c): the same math as the torch path from in_proj's
        output (B, width) to the gated norm's (B, d_inner), the cache moved on in place."""
        if not (cache.conv.is_contiguous() and cache.ssm.is_contiguous()):
            cache.conv, cache.ssm = cache.conv.contiguous(), cache.ssm.contiguous()
        return cpu_kernels.mamba2_step(  # the parameters as they are: the kernel reads them, no autograd
            proj.contiguous(),
            cache.conv,
            cache.ssm,
            self.conv1d.weight,
            self.conv1d.bias,
            self.dt_bias,
            self.A_log,
            self.D,
            self.norm.weight,
            self.n_groups,
            self.norm.eps,
        )
