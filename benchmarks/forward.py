"""Forward throughput on CPU: the pocket preset against a plain transformer of the same shape, same run.

Three models see the same token batches: NanoPrime in training form (BitLinear fake-quantizes its latent
weights on every call), NanoPrime in serving form (packed ternary weights, as loaded from a model directory),
and ReferenceTransformer (full-precision MHA + SwiGLU, same width, depth, vocabulary and feed-forward width).
After a warm-up the models take turns on each batch (under torch.no_grad) and the median time per forward
counts, so load from other processes on a shared machine hits all three alike; read the same-run ratio
rather than the absolute tokens/s.

Run: .venv/bin/python benchmarks/forward.py [--batch 4] [--length 256] [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from model.config import preset
from model.modules.bitnet import BitLinear
from model.nanoprime import NanoPrime
from model.reference_transformer import ReferenceConfig, ReferenceTransformer


def median_tokens_per_second(models: list[nn.Module], batches: list[torch.Tensor]) -> list[float]:
    """Round-robin over the models batch by batch, so load from other processes hits all of them alike."""
    seconds: list[list[float]] = [[] for _ in models]
    with torch.no_grad():
        for model in models:
            model(batches[0])  # warm-up
        for ids in batches:
            for i, model in enumerate(models):
                start = time.perf_counter()
                model(ids)
                seconds[i].append(time.perf_counter() - start)
    return [batches[0].numel() / statistics.median(times) for times in seconds]


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
    models = {
        "reference transformer (fp32 MHA)": ReferenceTransformer(ReferenceConfig.matching(config)).eval(),
        "NanoPrime, training form": NanoPrime(config).eval(),
        "NanoPrime, serving form (packed)": serving_form(NanoPrime(config).eval()),
    }
    generator = torch.Generator().manual_seed(0)
    batches = [
        torch.randint(0, config.vocab_size, (args.batch, args.length), generator=generator)
        for _ in range(args.repeats)
    ]
    print(
        f"pocket preset, batch {args.batch} x {args.length} tokens, median of {args.repeats} forwards, "
        f"{torch.get_num_threads()} threads"
    )
    speeds = median_tokens_per_second(list(models.values()), batches)
    print(f"{'model':<34} {'params':>12} {'tokens/s':>10} {'vs reference':>13}")
    for (name, model), speed in zip(models.items(), speeds, strict=True):
        print(f"{name:<34} {model.num_parameters():>12,} {speed:>10,.0f} {speed / speeds[0]:>12.2f}x")


if __name__ == "__main__":
    main()
