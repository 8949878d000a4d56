"""`python -m training tokenizer | train | eval | export ...`

Bad input (missing files, unknown config keys, impossible lengths, corrupt checkpoints) ends with one line
`error: ...` on stderr and exit status 2; Ctrl-C during training saves a checkpoint and exits with 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from tqdm import tqdm

EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


class _TqdmHandler(logging.Handler):
    """Log lines that do not tear the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stderr)


def _setup_logging(main_process: bool) -> None:
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger = logging.getLogger("training")
    logger.handlers = [handler]
    logger.setLevel(logging.INFO if main_process else logging.WARNING)
    logger.propagate = False


def _overrides(extra: list[str]) -> dict[str, str]:
    """`--section.key value` or `--section.key=value` pairs left over by argparse."""
    result: dict[str, str] = {}
    i = 0
    while i < len(extra):
        arg = extra[i]
        if not arg.startswith("--") or len(arg) == 2:
            raise ValueError(f"unexpected argument {arg!r}; settings are given as --section.key value")
        key, eq, value = arg[2:].partition("=")
        if not eq:
            if i + 1 >= len(extra):
                raise ValueError(f"setting --{key} has no value")
            value = extra[i + 1]
            i += 1
        result[key.replace("-", "_")] = value
        i += 1
    return result


def cmd_tokenizer(args: argparse.Namespace) -> int:
    from training.tokenizer import train_tokenizer

    tokenizer = train_tokenizer(
        [Path(f) for f in args.files], args.vocab_size, args.min_frequency, args.delimiter or None, True
    )
    tokenizer.save(args.out)
    print(f"tokenizer with {tokenizer.vocab_size} tokens saved to {args.out}")
    return 0


def cmd_train(args: argparse.Namespace, extra: list[str]) -> int:
    from training.config import load_recipe

    overrides = _overrides(extra)
    if args.steps is not None and not args.dry_run:
        overrides["train.steps"] = str(args.steps)
    if args.out_dir:
        overrides["out_dir"] = json.dumps(args.out_dir)
    if args.config is None and args.resume is None:
        raise ValueError("give --config RECIPE.toml (or --resume CHECKPOINT)")
    if args.config is None:
        from training.trainer import recipe_for_resume

        recipe = recipe_for_resume(args.resume, overrides)
    else:
        recipe = load_recipe(args.config, overrides)
    from training.distributed import init_distributed, shutdown  # torch loads only after the recipe parses
    from training.trainer import Trainer

    dist = init_distributed(recipe.train.device)
    _setup_logging(dist.is_main)
    try:
        trainer = Trainer(recipe, dist, resume=args.resume, write=not args.dry_run)
        if args.dry_run:
            result = trainer.run(stop_after=args.steps or 3)
            if dist.is_main:
                losses = ", ".join(f"{loss:.4f}" for loss in result.losses.values())
                print(f"dry run: {len(result.losses)} steps, losses {losses}; val {result.validation}")
            return 0
        result = trainer.run()
        if dist.is_main:
            if result.interrupted:
                print(f"interrupted at step {result.step}; resume with --resume {result.checkpoint}")
            else:
                print(
                    f"trained {result.step} steps; checkpoint {result.checkpoint}; model {result.model_dir}"
                )
        return EXIT_INTERRUPTED if result.interrupted else 0
    finally:
        shutdown()


def cmd_eval(args: argparse.Namespace) -> int:
    import torch

    from model.checkpoint import load_model_dir
    from training.config import generator_options, load_recipe
    from training.evaluate import perplexity, task_accuracy
    from training.generators import build_generator

    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model, tokenizer = load_model_dir(args.model_dir, device=device)
    report: dict = {"model": str(args.model_dir)}
    if args.text:
        seq_len = args.seq_len or min(512, model.config.max_seq_len)
        report["text"] = {"file": args.text} | perplexity(
            model, tokenizer, Path(args.text), seq_len, max_tokens=args.max_tokens
        )
        print(
            f"{args.text}: loss {report['text']['loss']:.4f}, perplexity {report['text']['perplexity']:.2f}"
        )
    tasks = [t for t in args.tasks.split(",") if t]
    recipe_options = generator_options(load_recipe(args.recipe)) if args.recipe else {}
    report["tasks"] = {}
    for name in tasks:
        options = dict(recipe_options.get(name, {}))
        if name == "stories":
            if args.stories:
                options["paths"] = [args.stories]
            elif "paths" not in options:
                raise ValueError("the stories task needs --stories FILE (the story corpus) or a --recipe")
        generator = build_generator(name, options)
        for thinking in (True, False):
            score = task_accuracy(
                model, tokenizer, generator, args.n, thinking, args.seed, args.max_new_tokens
            )
            mode = "thinking on" if thinking else "thinking off"
            report["tasks"][f"{name}/{'think' if thinking else 'no_think'}"] = score.accuracy
            print(f"{name} ({mode}): {score.correct}/{score.total} = {score.accuracy:.1%}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from training.export import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.out, swa=args.swa)
    print(f"model directory written to {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    tok = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer")
    tok.add_argument("--files", nargs="+", required=True, help="UTF-8 text files")
    tok.add_argument("--vocab-size", type=int, default=8192)
    tok.add_argument("--min-frequency", type=int, default=2)
    tok.add_argument("--delimiter", default="<|endoftext|>", help="document separator inside the files")
    tok.add_argument("--out", required=True, help="directory for tokenizer.json + tokenizer_config.json")

    train = sub.add_parser("train", help="train from a recipe; extra --section.key value pairs override it")
    train.add_argument("--config", help="recipe TOML (training/recipes/*.toml)")
    train.add_argument("--resume", help="checkpoint directory (or run directory) to continue from")
    train.add_argument("--dry-run", action="store_true", help="run a few steps, write nothing")
    train.add_argument("--steps", type=int, help="total steps (with --dry-run: steps to run)")
    train.add_argument("--out-dir", help="run directory (checkpoint, metrics, loss.png, model/)")

    ev = sub.add_parser("eval", help="perplexity on a text file and accuracy on generated tasks")
    ev.add_argument("model_dir")
    ev.add_argument("--text", help="text file for validation perplexity")
    ev.add_argument("--seq-len", type=int, default=0)
    ev.add_argument("--max-tokens", type=int, default=0, help="score at most this many tokens of --text")
    ev.add_argument("--tasks", default="arithmetic,counting", help="comma-separated generators (or '')")
    ev.add_argument("--stories", help="story corpus for the stories task")
    ev.add_argument(
        "--recipe", help="recipe TOML whose generator options (digits, ops, ...) define the held-out tasks"
    )
    ev.add_argument("--n", type=int, default=50, help="tasks per generator and thinking mode")
    ev.add_argument("--max-new-tokens", type=int, default=256)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--device", default="auto")
    ev.add_argument("--threads", type=int, default=0)
    ev.add_argument("--json", help="write the report here")

    ex = sub.add_parser("export", help="write a model directory from a training checkpoint")
    ex.add_argument("checkpoint")
    ex.add_argument("out")
    ex.add_argument("--swa", action="store_true", help="export the SWA mean instead of the last weights")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "train":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        if args.command == "tokenizer":
            return cmd_tokenizer(args)
        if args.command == "train":
            return cmd_train(args, extra)
        if args.command == "eval":
            return cmd_eval(args)
        return cmd_export(args)
    except (ValueError, OSError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
