"""Parallel scan of the first-order linear recurrence h_t = a_t * h_{t-1} + b_t.

Mamba's selective scan is this recurrence with a per-channel, per-state decay a_t, so it cannot be written
as a matmul the way Mamba-2's scalar-per-head decay can. A step-by-step Python loop is far too slow for
training, and a cumulative sum in log space overflows once the decays get strong, so we use a doubling
(Hillis-Steele) scan: log2(L) elementwise passes that only multiply numbers in [0, 1], hence stable in fp32.
The sequence is cut into chunks so the passes run over the chunk length, then the chunk end states are
chained with the same scan.
"""

from __future__ import annotations

import torch


def _doubling_scan(a: torch.Tensor, b: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inclusive scan along `dim` starting from h = 0: returns (prod of a up to t, h_t) for every t.

    After the pass with stride k, position t holds the map h_{t-2k} -> h_t as (a, b): composing the span
    ending at t with the span ending at t-k gives a = a_t * a_{t-k} and b = a_t * b_{t-k} + b_t.
    """
    n = a.shape[dim]
    stride = 1
    while stride < n:
        a_head, b_head = a.narrow(dim, 0, stride), b.narrow(dim, 0, stride)
        a_cur, b_cur = a.narrow(dim, stride, n - stride), b.narrow(dim, stride, n - stride)
        a_prev, b_prev = a.narrow(dim, 0, n - stride), b.narrow(dim, 0, n - stride)
        b = torch.cat([b_head, a_cur * b_prev + b_cur], dim)
        a = torch.cat([a_head, a_cur * a_prev], dim)
        stride *= 2
    return a, b


def linear_scan(
    a: torch.Tensor, b: torch.Tensor, initial: torch.Tensor | None = None, chunk_size: int = 64
) -> torch.Tensor:
    """All states h_t = a_t * h_{t-1} + b_t along dim 1, with h_{-1} = `initial` (zeros when None).

    a, b: (batch, T, *rest); initial: (batch, *rest). Returns h with the shape of b. The time axis is padded
    with a = 1, b = 0 (the state carried unchanged) up to a multiple of chunk_size and cut back afterwards.
    """
    if a.shape != b.shape:
        raise ValueError(
            f"linear_scan needs a and b of the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    batch, length, *rest = b.shape
    chunk = max(1, min(chunk_size, length))
    n_chunks = -(-length // chunk)
    pad = n_chunks * chunk - length
    if pad:
        a = torch.cat([a, a.new_ones(batch, pad, *rest)], 1)
        b = torch.cat([b, b.new_zeros(batch, pad, *rest)], 1)
    a = a.reshape(batch, n_chunks, chunk, *rest)
    b = b.reshape(batch, n_chunks, chunk, *rest)

    # 1. Inside every chunk at once, from a zero state.
    decay, local = _doubling_scan(a, b, dim=2)

    # 2. Chain the chunks: the state entering chunk c is the end state of chunk c-1.
    start = initial if initial is not None else b.new_zeros(batch, *rest)
    end_decay, end_local = decay[:, :, -1], local[:, :, -1]
    if n_chunks > 1:
        first = end_local[:, :1] + end_decay[:, :1] * start[:, None]
        end_local = torch.cat([first, end_local[:, 1:]], 1)
        _, ends = _doubling_scan(end_decay, end_local, dim=1)
        starts = torch.cat([start[:, None], ends[:, :-1]], 1)
    else:
        starts = start[:, None]

    h = local + decay * starts[:, :, None]
    return h.reshape(batch, n_chunks * chunk, *rest)[:, :length]
