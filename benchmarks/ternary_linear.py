"""BitLinear's decode kernel (ternary_linear.c) against torch, for the pocket model's matrices.

For each weight shape of a pocket block and a few row counts (1 is a batch-1 decoding step, 16 a full engine
batch), the median time of:
  - the kernel: int8 activations times 2-bit codes, integer sums, the input norm folded into the scale;
  - the torch path it replaces in a served layer (bitnet.ternary_product: the same numbers, fp32 matmul);
  - a plain fp32 F.linear of the same shape, what an unquantized layer costs.
The kernel's rate counts the multiply-adds of the product (rows x in x out).

    python benchmarks/ternary_linear.py [--threads 1 2] [--rows 1 4 16 64]
                                        [--out artifacts/ternary_linear.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from latent_attention import median_seconds  # the sibling benchmark (scripts run from benchmarks/)

from model.config import preset
from model.modules import cpu_kernels
from model.modules.bitnet import ternary_product


def pocket_shapes() -> dict[str, tuple[int, int]]:
    """(in, out) of every BitLinear with quantized activations in a pocket block."""
    config = preset("pocket")
    d, m = config.d_model, config.mla
    d_inner = config.mamba.expand * d
    mamba = config.mamba
    mamba_in = 2 * d_inner + 2 * mamba.n_groups * mamba.d_state + d_inner // mamba.head_dim
    return {
        "ffn gate+up": (d, 2 * config.ffn_hidden),
        "ffn down": (config.ffn_hidden, d),
        "mamba-2 in": (d, mamba_in),
        "mamba-2 out": (d_inner, d),
        "mla q": (d, m.n_heads * (m.nope_head_dim + m.rope_dim)),
        "mla kv_a": (d, m.kv_lora_rank + m.rope_dim),
        "mla o": (m.n_heads * m.v_head_dim, d),
    }


def time_product(values: torch.Tensor, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Seconds per call of the kernel, the torch path and an fp32 linear, for x (rows, in) and a ternary
    (out, in) matrix."""
    blocks, scale = cpu_kernels.pack_blocks(values), torch.tensor(0.02)
    dense = values * scale
    outputs = values.shape[0]
    return {
        "kernel": median_seconds(
            lambda: cpu_kernels.ternary_linear(x, blocks, outputs, 0.02, None, 1e-5, True), repeats
        ),
        "torch_path": median_seconds(lambda: ternary_product(x, values, scale, True, 1e-5, True), repeats),
        "fp32_linear": median_seconds(lambda: F.linear(x, dense), repeats),
    }


def row_benchmark_arguments(description: str, repeats: int, out: str) -> argparse.Namespace:
    """--threads, --rows, --repeats and --out, for a kernel benchmark over thread and row counts; exits
    where the kernels cannot be built."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--out", default=out)
    args = parser.parse_args()
    if not cpu_kernels.enabled():
        raise SystemExit("the C kernels could not be built here (no C compiler, or NANOPRIME_KERNEL=0)")
    return args


def main() -> None:
    args = row_benchmark_arguments(__doc__.splitlines()[0], 200, "artifacts/ternary_linear.json")
    generator = torch.Generator().manual_seed(0)
    header = ("matrix", "in x out", "rows", "kernel us", "torch path us", "fp32 linear us", "vs torch")
    header += ("G MAC/s",)
    widths = (12, 11, 5, 10, 14, 15, 9, 8)
    results = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        print(f"\nBitLinear decode kernel, pocket matrices, {threads} thread(s)")
        print(" ".join(f"{name:>{width}}" for name, width in zip(header, widths, strict=True)))
        for name, (inputs, outputs) in pocket_shapes().items():
            values = torch.randint(-1, 2, (outputs, inputs), generator=generator).float()
            for rows in args.rows:
                seconds = time_product(values, torch.randn(rows, inputs, generator=generator), args.repeats)
                rate = rows * inputs * outputs / seconds["kernel"]
                results.append(
                    {"threads": threads, "matrix": name, "in": inputs, "out": outputs, "rows": rows}
                    | {f"{key}_s": value for key, value in seconds.items()}
                    | {"kernel_macs_s": rate}
                )
                cells = (
                    name,
                    f"{inputs}x{outputs}",
                    f"{rows}",
                    f"{seconds['kernel'] * 1e6:.1f}",
                    f"{seconds['torch_path'] * 1e6:.1f}",
                    f"{seconds['fp32_linear'] * 1e6:.1f}",
                    f"{seconds['torch_path'] / seconds['kernel']:.1f}x",
                    f"{rate / 1e9:.0f}",
                )
                print(" ".join(f"{cell:>{width}}" for cell, width in zip(cells, widths, strict=True)))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
