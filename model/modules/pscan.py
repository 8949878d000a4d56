"""Parallel scan of the first-order linear recurrence h_t = a_t * h_{t-1} + b_t.

Mamba's selective scan is this recurrence with a per-channel, per-state decay a_t, so it cannot be written
as a matmul the way Mamba-2's scalar-per-head decay can. A step-by-step Python loop is far too slow for
training, and a cumulative sum in log space overflows once the decays get strong, so we use Blelloch's
work-efficient scan: an up-sweep and a down-sweep of log2(L) levels whose elementwise work totals about 2L,
and which only multiply numbers in [0, 1], hence stable in fp32. The sequence is cut into power-of-two chunks
scanned side by side, and the chunk end states are chained with the same scan.

The sweeps run in place on copies, so autograd cannot trace them; the gradient is itself a linear recurrence
run backwards in time (see _LinearScan.backward), so backward reuses the same scan and keeps only a and h.
"""

from __future__ import annotations

import torch


def _next_power_of_two(n: int) -> int:
    return 1 << (n - 1).bit_length()


def _blelloch_(a: torch.Tensor, b: torch.Tensor) -> None:
    """In place along dim 1 (a power of two): afterwards a[:, t] = a_0 ... a_t and b[:, t] = h_t from h = 0.

    A pair (a, b) stands for the map h -> a * h + b over a span of steps; the span ending at t composed after
    the one ending at t - s gives (a_t * a_{t-s}, a_t * b_{t-s} + b_t). The up-sweep builds spans of length
    2s at the odd positions of each 2s-block; the down-sweep extends each block's half-way span to a prefix.
    """
    batch, n, *rest = a.shape
    stride = 1
    while stride < n:
        av, bv = (
            a.view(batch, n // (2 * stride), 2 * stride, *rest),
            b.view(batch, n // (2 * stride), 2 * stride, *rest),
        )
        right, left = 2 * stride - 1, stride - 1
        bv[:, :, right] += av[:, :, right] * bv[:, :, left]
        av[:, :, right] *= av[:, :, left]
        stride *= 2
    stride = n // 4
    while stride >= 1:
        av, bv = (
            a.view(batch, n // (2 * stride), 2 * stride, *rest),
            b.view(batch, n // (2 * stride), 2 * stride, *rest),
        )
        mid, last = stride - 1, 2 * stride - 1
        bv[:, 1:, mid] += av[:, 1:, mid] * bv[:, :-1, last]
        av[:, 1:, mid] *= av[:, :-1, last]
        stride //= 2


def _padded_copy(x: torch.Tensor, length: int, fill: float) -> torch.Tensor:
    """A contiguous copy of x with dim 1 extended to `length` by `fill`."""
    return torch.cat([x, x.new_full((x.shape[0], length - x.shape[1], *x.shape[2:]), fill)], 1)


def _scan(a: torch.Tensor, b: torch.Tensor, initial: torch.Tensor | None, chunk_size: int) -> torch.Tensor:
    """All states h along dim 1, without autograd. Padding steps have a = 1, b = 0: the state is carried."""
    batch, length, *rest = b.shape
    chunk = min(_next_power_of_two(length), 1 << (chunk_size.bit_length() - 1))
    n_chunks = -(-length // chunk)
    a = _padded_copy(a, n_chunks * chunk, 1.0)
    b = _padded_copy(b, n_chunks * chunk, 0.0)

    # 1. Inside every chunk at once, from a zero state.
    _blelloch_(a.view(batch * n_chunks, chunk, *rest), b.view(batch * n_chunks, chunk, *rest))
    a = a.view(batch, n_chunks, chunk, *rest)
    b = b.view(batch, n_chunks, chunk, *rest)
    if n_chunks == 1 and initial is None:
        return b.view(batch, chunk, *rest)[:, :length]

    # 2. Chain the chunks: chunk c starts from the end state of chunk c - 1, the first from `initial`.
    start = initial if initial is not None else b.new_zeros(batch, *rest)
    end_a = _padded_copy(a[:, :, -1], _next_power_of_two(n_chunks), 1.0)
    end_b = _padded_copy(b[:, :, -1], _next_power_of_two(n_chunks), 0.0)
    end_b[:, 0] += end_a[:, 0] * start
    _blelloch_(end_a, end_b)
    starts = torch.cat([start[:, None], end_b[:, : n_chunks - 1]], 1)
    b.addcmul_(a, starts[:, :, None])
    return b.view(batch, n_chunks * chunk, *rest)[:, :length]


class _LinearScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, initial, chunk_size):
        h = _scan(a, b, initial, chunk_size)
        ctx.save_for_backward(a, h, initial)
        ctx.chunk_size = chunk_size
        return h

    @staticmethod
    def backward(ctx, grad_h):
        """With g = dL/dh, the adjoint lam_t = g_t + a_{t+1} lam_{t+1} is a linear scan backwards in time;
        then dL/db_t = lam_t, dL/da_t = lam_t h_{t-1} and dL/dinitial = a_0 lam_0."""
        a, h, initial = ctx.saved_tensors
        a_next = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], 1)
        lam = _scan(a_next.flip(1), grad_h.flip(1), None, ctx.chunk_size).flip(1)
        first = initial[:, None] if initial is not None else torch.zeros_like(h[:, :1])
        grad_a = lam * torch.cat([first, h[:, :-1]], 1)
        grad_initial = a[:, 0] * lam[:, 0] if initial is not None and ctx.needs_input_grad[2] else None
        return grad_a, lam, grad_initial, None


def linear_scan(
    a: torch.Tensor, b: torch.Tensor, initial: torch.Tensor | None = None, chunk_size: int = 64
) -> torch.Tensor:
    """All states h_t = a_t * h_{t-1} + b_t along dim 1, with h_{-1} = `initial` (zeros when None).

    a, b: (batch, T, *rest); initial: (batch, *rest). Returns h with the shape of b. Chunks are the largest
    power of two not above chunk_size (or T rounded up to a power of two, if smaller).
    """
    if a.shape != b.shape:
        raise ValueError(
            f"linear_scan needs a and b of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    state_shape = (b.shape[0], *b.shape[2:])
    if initial is not None and tuple(initial.shape) != state_shape:
        raise ValueError(f"linear_scan initial state has shape {tuple(initial.shape)}, not {state_shape}")
    if chunk_size < 1:
        raise ValueError(f"linear_scan chunk_size must be positive, got {chunk_size}")
    return _LinearScan.apply(a, b, initial, chunk_size)
