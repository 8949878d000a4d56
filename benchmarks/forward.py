"""Forward throughput on CPU: the pocket preset against a plain transformer of the same shape, same run.

Three models see the same token batches: NanoPrime in training form (BitLinear fake-quantizes its latent
weights on every call), NanoPrime in serving form (packed ternary weights, as loaded from a model directory),
and ReferenceTransformer (full-precision MHA + SwiGLU, same width, depth, vocabulary and feed-forward width).
Each is timed over the same number of forwards after a warm-up, under torch.no_grad. The machine is shared,
so the same-run ratio is the figure to read, not the absolute tokens/s.

Run: .venv/bin/python benchmarks/forward.py [--batch 4] [--length 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from model.config import preset
from model.modules.bitnet import BitLinear
from model.nanoprime import NanoPrime
from model.reference_transformer import ReferenceConfig, ReferenceTransformer


def tokens_per_second(model: nn.Module, batches: list[torch.Tensor]) -> float:
    with torch.no_grad():
        model(batches[0])  # warm-up
        start = time.perf_counter()
        for ids in batches:
            model(ids)
        elapsed = time.perf_counter() - start
    return sum(ids.numel() for ids in batches) / elapsed


def serving_form(model: NanoPrime) -> NanoPrime:
    """The model as load_model returns it: every BitLinear switched to its packed ternary weights."""
    for module in model.modules():
        if isinstance(module, BitLinear):
            module.load_packed(module.pack())
    return model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    config = preset("pocket")
    torch.manual_seed(0)
    nanoprime = NanoPrime(config).eval()
    reference = ReferenceTransformer(ReferenceConfig.matching(config)).eval()
    generator = torch.Generator().manual_seed(0)
    batches = [
        torch.randint(0, config.vocab_size, (args.batch, args.length), generator=generator)
        for _ in range(args.repeats)
    ]

    print(
        f"pocket preset, batch {args.batch} x {args.length} tokens, {args.repeats} forwards each, "
        f"{torch.get_num_threads()} threads"
    )
    rows = [
        (
            "reference transformer (fp32 MHA)",
            reference.num_parameters(),
            tokens_per_second(reference, batches),
        ),
        ("NanoPrime, training form", nanoprime.num_parameters(), tokens_per_second(nanoprime, batches)),
    ]
    packed = serving_form(nanoprime)
    rows.append(
        ("NanoPrime, serving form (packed)", packed.num_parameters(), tokens_per_second(packed, batches))
    )
    baseline = rows[0][2]
    print(f"{'model':<34} {'params':>12} {'tokens/s':>10} {'vs reference':>13}")
    for name, params, speed in rows:
        print(f"{name:<34} {params:>12,} {speed:>10,.0f} {speed / baseline:>12.2f}x")


if __name__ == "__main__":
    main()
