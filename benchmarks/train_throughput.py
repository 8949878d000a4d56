"""Training throughput: NanoPrime (pocket) against an equal-size transformer through the same loop, same run.

For each sequence length both models take full optimizer steps (data stream, forward, masked loss, backward,
clipping, AdamW) from `training.trainer.Trainer`, with the same tokens per step. Steps alternate between the
two models so that load from other processes falls on both alike; the same-run ratio is the figure to read.

Run: .venv/bin/python benchmarks/train_throughput.py [--seq-lens 256 1024] [--tokens-per-step 4096]
     [--steps 3] [--preset pocket] [--device auto] [--threads 0]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from train_setup import DEFAULT_DATA, MODELS, corpus, recipe, tokenizer_dir, trainer

from model.config import preset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pocket")
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--tokens-per-step", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model and length")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    work = Path(tempfile.mkdtemp(prefix="train_throughput_"))
    text = corpus(args.data, work)
    vocab = preset(args.preset).vocab_size
    tokenizer = tokenizer_dir(text, vocab, work)
    results = []
    print(
        f"preset {args.preset}, {args.tokens_per_step} tokens per step, "
        f"torch threads {torch.get_num_threads()}"
    )
    for seq_len in args.seq_lens:
        batch = max(1, args.tokens_per_step // seq_len)
        train = {"steps": 10_000, "micro_batch_size": batch, "seq_len": seq_len}
        recipe_dict = recipe(work / "run", text, tokenizer, args.preset, {}, train)
        built = {name: trainer(name, recipe_dict, args.device, work) for name in MODELS}
        for each in built.values():
            for _ in range(args.warmup):
                each.train_step()
        seconds = dict.fromkeys(built, 0.0)
        tokens = dict.fromkeys(built, 0)
        for _ in range(args.steps):
            for name, each in built.items():
                if each.device.type == "cuda":
                    torch.cuda.synchronize(each.device)
                start = time.perf_counter()
                _, step_tokens, _ = each.train_step()
                if each.device.type == "cuda":
                    torch.cuda.synchronize(each.device)
                seconds[name] += time.perf_counter() - start
                tokens[name] += step_tokens
        rates = {name: tokens[name] / seconds[name] for name in built}
        for name, each in built.items():
            params = sum(p.numel() for p in each.model.parameters())
            results.append(
                {"seq_len": seq_len, "model": name, "parameters": params, "tokens_per_s": rates[name]}
            )
            print(f"seq {seq_len:5d}  {name:11s}  {params / 1e6:6.2f}M params  {rates[name]:9.1f} tokens/s")
        print(f"seq {seq_len:5d}  NanoPrime / transformer: {rates['nanoprime'] / rates['transformer']:.2f}x")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
