"""Quality at equal budget: NanoPrime and an equal-size transformer trained for the same steps on the same
data, tokenizer, schedule and loop; held-out validation loss side by side (target: NanoPrime's <= the
transformer's).

Both Trainers read the identical data stream (same recipe and seed) and evaluate on the identical held-out
rows. Defaults fit a CPU in minutes; pass --preset pocket --steps 2000 on a GPU for the real comparison.

Run: .venv/bin/python benchmarks/train_compare.py [--preset pocket] [--steps 300] [--seq-len 256]
     [--batch-size 8] [--lr 2e-3] [--eval-every 100] [--d-model N --n-layers N --vocab-size N]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path

import torch
from train_setup import DEFAULT_DATA, corpus, recipe, tokenizer_dir, trainers

from model.config import preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pocket")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--d-model", type=int, help="override the preset's width")
    parser.add_argument("--n-layers", type=int, help="override the preset's depth")
    parser.add_argument(
        "--vocab-size", type=int, help="tokenizer and model vocabulary (default: the preset's)"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="train_compare_"))
    text = corpus(args.data, work)
    vocab = args.vocab_size or preset(args.preset).vocab_size
    tokenizer = tokenizer_dir(text, vocab, work)
    model = {k: v for k, v in {"d_model": args.d_model, "n_layers": args.n_layers}.items() if v}
    if args.vocab_size:
        model["vocab_size"] = math.ceil(vocab / 64) * 64
    train = {"steps": args.steps, "micro_batch_size": args.batch_size, "seq_len": args.seq_len}
    optim = {"lr": args.lr, "warmup_steps": args.warmup, "decay_fraction": 0.2}
    built = trainers(recipe(work / "run", text, tokenizer, args.preset, model, train, optim), args.device)
    params = {name: sum(p.numel() for p in t.model.parameters()) for name, t in built.items()}
    print(
        f"preset {args.preset} {model or ''}: NanoPrime {params['nanoprime'] / 1e6:.2f}M, "
        f"transformer {params['transformer'] / 1e6:.2f}M parameters; {args.steps} steps of "
        f"{args.batch_size}x{args.seq_len} tokens; data {text.name}"
    )
    print(f"{'step':>6}  {'NanoPrime val':>13}  {'transformer val':>15}")
    history = []
    seconds = dict.fromkeys(built, 0.0)
    for step in range(1, args.steps + 1):
        for name, trainer in built.items():
            start = time.perf_counter()
            trainer.train_step()
            seconds[name] += time.perf_counter() - start
        if step % args.eval_every == 0 or step == args.steps:
            losses = {name: trainer.validate()["val_loss"] for name, trainer in built.items()}
            history.append({"step": step, **losses})
            print(f"{step:6d}  {losses['nanoprime']:13.4f}  {losses['transformer']:15.4f}", flush=True)
    final = history[-1]
    verdict = "meets" if final["nanoprime"] <= final["transformer"] else "misses"
    print(
        f"final validation loss: NanoPrime {final['nanoprime']:.4f} "
        f"(ppl {math.exp(final['nanoprime']):.1f}), "
        f"transformer {final['transformer']:.4f} (ppl {math.exp(final['transformer']):.1f}); NanoPrime "
        f"{verdict} the target (<=). Training time: NanoPrime {seconds['nanoprime']:.0f}s, "
        f"transformer {seconds['transformer']:.0f}s"
    )
    if args.json:
        args.json.write_text(
            json.dumps({"parameters": params, "history": history, "seconds": seconds}, indent=2)
        )


if __name__ == "__main__":
    main()
