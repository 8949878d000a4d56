"""Quality at equal budget: NanoPrime and an equal-size transformer trained for the same steps on the same
data, tokenizer, schedule and loop; held-out validation loss side by side (target: NanoPrime's story loss <=
the transformer's).

Both go through `training.trainer.Trainer` with one recipe and seed, so they read the identical data stream
and evaluate on the identical held-out rows. With SWA in the recipe, each keeps its SWA mean only where it
validates better, as the shipped export does.

- Quick (default): a story-only recipe at the preset's shape, minutes on a CPU.
- `--recipe training/recipes/default.toml`: that recipe as it stands (its data mixture, trained tokenizer,
  phases, steps, curriculum, LeRaC and SWA): the shipped model's pretraining budget. `--jobs 2` trains the
  two models at once, one process (and one core) each.

Run: .venv/bin/python benchmarks/train_compare.py [--preset pocket] [--steps 300] [--seq-len 256]
     [--batch-size 8] [--lr 2e-3] [--eval-every 100] [--d-model N --n-layers N --vocab-size N]
     .venv/bin/python benchmarks/train_compare.py --recipe training/recipes/default.toml --jobs 2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import torch
from train_setup import DEFAULT_DATA, MODELS, corpus, recipe, tokenizer_dir, trainer

from model.config import preset
from training.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def train_model(name: str, recipe_dict: dict[str, Any], device: str, eval_every: int) -> dict[str, Any]:
    """Train one of the two models to the recipe's steps; its validation history and kept weights' figures."""
    built = trainer(name, recipe_dict, device, ROOT)
    steps, seconds, history = built.total_steps, 0.0, []
    for step in range(1, steps + 1):
        start = time.perf_counter()
        built.train_step()
        seconds += time.perf_counter() - start
        if step % eval_every == 0 or step == steps:
            history.append({"step": step, **built.validate()})
            print(f"{name:>11} step {step:5d}: val loss {history[-1]['val_loss']:.4f}", flush=True)
    final, weights = built.choose_weights(history[-1])
    return {
        "parameters": sum(p.numel() for p in built.model.parameters()),
        "tokenizer_sha256": hashlib.sha256(built.tokenizer.to_str().encode()).hexdigest(),
        "tokens": built.tokens,
        "seconds": seconds,
        "history": history,
        "final": final,
        "weights": weights,
    }


def quick_recipe(args: argparse.Namespace) -> tuple[dict[str, Any], str]:
    """The story-only recipe at the preset's shape (and the flags' overrides); its story source's name."""
    work = Path(tempfile.mkdtemp(prefix="train_compare_"))
    text = corpus(args.data, work)
    vocab = args.vocab_size or preset(args.preset).vocab_size
    tokenizer = tokenizer_dir(text, vocab, work)
    model = {k: v for k, v in {"d_model": args.d_model, "n_layers": args.n_layers}.items() if v}
    if args.vocab_size:
        model["vocab_size"] = math.ceil(vocab / 64) * 64
    train = {"steps": args.steps or 300, "micro_batch_size": args.batch_size, "seq_len": args.seq_len}
    optim = {"lr": args.lr, "warmup_steps": args.warmup, "decay_fraction": 0.2}
    return recipe(work / "run", text, tokenizer, args.preset, model, train, optim), "stories"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, help="train both with this recipe file as it stands")
    parser.add_argument("--jobs", type=int, choices=(1, 2), default=1, help="2: both models at once")
    parser.add_argument(
        "--stories", help="held-out source the target is judged on (default: tinystories_v2 or stories)"
    )
    parser.add_argument("--preset", default="pocket")
    parser.add_argument("--steps", type=int, help="training steps (default: 300, or the recipe's)")
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
    parser.add_argument("--threads", type=int, default=0, help="torch threads (a recipe sets its own)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.recipe:
        overrides = {"out_dir": json.dumps(tempfile.mkdtemp(prefix="train_compare_"))}
        if args.steps:
            overrides["train.steps"] = str(args.steps)
        recipe_dict, stories = load_recipe(args.recipe, overrides).raw, "tinystories_v2"
        setup = f"recipe {args.recipe}, {recipe_dict['train']['steps']} steps"
    else:
        recipe_dict, stories = quick_recipe(args)
        setup = f"preset {args.preset}, {args.steps or 300} steps of {args.batch_size}x{args.seq_len} tokens"
    stories = args.stories or stories
    if stories not in recipe_dict["data"]["sources"]:
        known = ", ".join(sorted(recipe_dict["data"]["sources"]))
        raise SystemExit(f"--stories {stories}: the recipe has no such data source (it has {known})")
    print(f"{setup}; held-out stories: {stories}; {args.jobs} job(s)", flush=True)

    jobs = [(name, recipe_dict, args.device, args.eval_every) for name in MODELS]
    if args.jobs == 2:
        with ProcessPoolExecutor(2) as pool:
            runs = dict(zip(MODELS, pool.map(train_model, *zip(*jobs, strict=True)), strict=True))
    else:
        runs = {job[0]: train_model(*job) for job in jobs}
    if runs["nanoprime"]["tokenizer_sha256"] != runs["transformer"]["tokenizer_sha256"]:
        raise SystemExit("the two runs trained different tokenizers: the comparison would not be fair")

    print(f"\n{'step':>6}  {'NanoPrime val':>13}  {'transformer val':>15}")
    for mine, theirs in zip(runs["nanoprime"]["history"], runs["transformer"]["history"], strict=True):
        print(f"{mine['step']:6d}  {mine['val_loss']:13.4f}  {theirs['val_loss']:15.4f}")
    key = f"val/{stories}"
    for name, run in runs.items():
        final = run["final"]
        print(
            f"{name:>11}: {run['parameters'] / 1e6:.2f}M parameters, {run['tokens']:,} tokens, "
            f"{run['seconds']:.0f}s; kept weights: {run['weights']}; val loss {final['val_loss']:.4f}, "
            f"held-out stories {final[key]:.4f} (ppl {math.exp(final[key]):.1f})"
        )
    ours, theirs = runs["nanoprime"]["final"][key], runs["transformer"]["final"][key]
    verdict = "meets" if ours <= theirs else "misses"
    print(f"held-out story loss: NanoPrime {ours:.4f}, transformer {theirs:.4f}; {verdict} the target (<=)")
    if args.json:
        args.json.write_text(json.dumps({"setup": setup, "stories": stories, "runs": runs}, indent=2))


if __name__ == "__main__":
    main()
