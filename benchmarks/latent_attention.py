"""MLA's decoding attention on one thread: the C kernel (latent_attention.c) against the torch path, and both
against what this core can multiply-add at all.

For each context, one batch-1 decoding step of four pocket-shaped MLA layers (their own caches, as in the
model), from the projections' outputs on: the kernel call, and the torch path's rope, cache write and
`_attend_absorbed`.
The reference for the core's speed is torch's fp32 matmul of two 1024 x 1024 matrices on the same thread
(close to the peak of its vector units); the kernel's rate counts the multiply-adds attention needs,
H * (2C + R) per key.

    python benchmarks/latent_attention.py [--contexts 128 1024 4096] [--out artifacts/latent_attention.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from model.config import preset
from model.modules import cpu_kernels
from model.modules.mla import MLA
from model.modules.rope import apply_rope

LAYERS = 4
SWEEP_FLOATS = 12 << 20  # 48 MB, more than this machine's L2 and its share of L3


def median_seconds(run, repeats: int) -> float:
    for _ in range(3):
        run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_seconds_after_sweep(run, repeats: int, sweep: torch.Tensor) -> float:
    """Median seconds of run() right after a pass over `sweep` has pushed everything else out of the CPU
    caches, as the rest of a decoding step (the LM head's 12.6 MB above all) does between two steps."""
    times = []
    for _ in range(repeats):
        sweep.add_(1.0)
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_rate() -> float:
    """Multiply-adds per second of a 1024^3 fp32 matmul on the current thread count."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    return 1024**3 / median_seconds(lambda: torch.mm(a, b), 20)


@torch.inference_mode()
def time_context(layers: list[MLA], context: int, repeats: int) -> dict[str, float]:
    """Seconds per decoding step of all layers' attention (rope, cache write, absorbed attention), through
    the kernel and through the torch path; the projections before and after are the same in both."""
    layer = layers[0]
    heads, rope = layer.n_heads, layer.rope_dim
    q = torch.randn(1, 1, heads, layer.nope_dim + rope)
    latent, k_rope = torch.randn(1, 1, layer.kv_lora_rank), torch.randn(1, 1, rope)
    past = torch.tensor([context])
    caches = []
    for mla in layers:
        cache = mla.new_cache(1, "cpu", torch.float32)
        cache.write(torch.randn(1, context, layer.kv_lora_rank), torch.randn(1, context, rope), past * 0)
        caches.append(cache)

    def kernel() -> None:  # rewrites the same slot: every step sees context + 1 keys
        for mla, cache in zip(layers, caches, strict=True):
            mla._decode_with_kernel(q, latent, k_rope, cache, past)

    def torch_path() -> None:  # MLA.forward's cached branch, step for step
        for mla, cache in zip(layers, caches, strict=True):
            q_nope, q_rope = q.split((mla.nope_dim, rope), dim=-1)
            positions = past.unsqueeze(1)
            cos, sin = mla.rotary(positions)
            q_rope = apply_rope(q_rope, cos.unsqueeze(2), sin.unsqueeze(2))
            keys = cache.write(latent, apply_rope(k_rope, cos, sin), past)
            mla._attend_absorbed(q_nope, q_rope, cache, positions, keys)

    return {
        "kernel": median_seconds(kernel, repeats),
        "kernel_cold": median_seconds_after_sweep(kernel, max(repeats // 4, 5), torch.zeros(SWEEP_FLOATS)),
        "torch": median_seconds(torch_path, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 1024, 4096])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--out", default="artifacts/latent_attention.json")
    args = parser.parse_args()
    if not cpu_kernels.enabled():
        raise SystemExit("the C kernels could not be built here (no C compiler, or NANOPRIME_KERNEL=0)")
    torch.set_num_threads(1)
    torch.manual_seed(0)
    # Plain linear projections: kv_b is then one fixed matrix, as a served BitLinear's is (the attention's
    # arithmetic does not depend on what the matrix holds).
    overrides = {"max_seq_len": max(args.contexts) + 1, "bitnet.enabled": False}
    config = preset("pocket").with_overrides(**overrides)
    layers = [MLA(config).eval() for _ in range(LAYERS)]
    m = config.mla
    macs_per_key = m.n_heads * (2 * m.kv_lora_rank + m.rope_dim)
    peak = matmul_rate()

    print(f"MLA decoding attention, {LAYERS} pocket layers, batch 1, one thread")
    print(f"reference: fp32 1024^3 matmul {peak / 1e9:.1f} G multiply-adds/s")
    header = ("context", "kernel us", "cold us", "torch us", "speed-up", "kernel G MAC/s", "of matmul")
    widths = (8, 10, 8, 9, 9, 15, 10)
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, widths, strict=True)))
    rows = []
    for context in args.contexts:
        seconds = time_context(layers, context, args.repeats)
        rate = LAYERS * macs_per_key * (context + 1) / seconds["kernel"]
        rows.append({"context": context, **{f"{k}_s": v for k, v in seconds.items()}, "kernel_macs_s": rate})
        print(
            f"{context:>8} {seconds['kernel'] * 1e6:>10.0f} {seconds['kernel_cold'] * 1e6:>8.0f} "
            f"{seconds['torch'] * 1e6:>9.0f} "
            f"{seconds['torch'] / seconds['kernel']:>8.2f}x {rate / 1e9:>15.1f} {rate / peak:>9.0%}"
        )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    report = {"matmul_macs_per_s": peak, "layers": LAYERS, "rows": rows}
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
