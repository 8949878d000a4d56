"""The LM head's kernel (lm_head.c) against torch's matmul, for the pocket model's tied 8,192 x 384 matrix.

For a few row counts (1 is a batch-1 decoding step, 16 a full engine batch) and thread counts, the median
time of the kernel and of F.linear: with warm caches (the same call again and again), and right after a 48 MB
sweep has pushed the matrix out of the CPU caches, as the benchmark of decode.py (other models in between)
and a busy machine do. The two take turns call by call.

    python benchmarks/lm_head.py [--threads 1 2] [--rows 1 4 16 64] [--out artifacts/lm_head.json]
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from latent_attention import SWEEP_FLOATS  # sibling benchmarks (scripts run from benchmarks/)
from ternary_linear import row_benchmark_arguments

from model.config import preset
from model.modules import cpu_kernels


def time_pair(runs: dict[str, object], repeats: int, sweep: torch.Tensor | None) -> dict[str, float]:
    """Median seconds of each run, taking turns; with `sweep`, each call right after a pass over it."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            if sweep is not None:
                sweep.add_(1.0)
            start = time.perf_counter()
            run()  # type: ignore[operator]
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    args = row_benchmark_arguments(__doc__.splitlines()[0], 60, "artifacts/lm_head.json")
    config = preset("pocket")
    torch.manual_seed(0)
    weight = torch.randn(config.vocab_size, config.d_model) * config.d_model**-0.5
    sweep = torch.zeros(SWEEP_FLOATS)
    megabytes = weight.nbytes / 2**20
    print(f"LM head, {config.vocab_size} x {config.d_model} fp32 ({megabytes:.1f} MiB), median ms per call")
    header = ("threads", "rows", "kernel warm", "torch warm", "kernel cold", "torch cold", "speed-up cold")
    widths = (7, 5, 12, 11, 12, 11, 14)
    print(" ".join(f"{name:>{width}}" for name, width in zip(header, widths, strict=True)))
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        for rows in args.rows:
            x = torch.randn(rows, config.d_model)
            runs = {
                "kernel": lambda x=x: cpu_kernels.lm_head(x, weight),
                "torch": lambda x=x: F.linear(x, weight),
            }
            warm = time_pair(runs, args.repeats, None)
            cold = time_pair(runs, args.repeats, sweep)
            row = {"threads": threads, "rows": rows}
            row |= {f"{name}_warm_s": seconds for name, seconds in warm.items()}
            row |= {f"{name}_cold_s": seconds for name, seconds in cold.items()}
            results.append(row)
            print(
                f"{threads:>7} {rows:>5} {warm['kernel'] * 1e3:>12.3f} {warm['torch'] * 1e3:>11.3f} "
                f"{cold['kernel'] * 1e3:>12.3f} {cold['torch'] * 1e3:>11.3f} "
                f"{cold['torch'] / cold['kernel']:>13.2f}x"
            )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    report = {"vocab": config.vocab_size, "width": config.d_model, "rows": results}
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
