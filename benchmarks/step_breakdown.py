"""Where a decoding step's time goes: the pocket model's step, timed whole and around each C kernel.

Three configurations, taken in turns over several rounds (the best round of each is kept): one sequence at
context 128, 16 sequences at context 128, one sequence at context 4096. For each, the step's time, each
kernel's time (its Python wrapper included) and the rest (Python, torch ops); then the two comparisons the
decode benchmark's ratios rest on: what each extra sequence of a 16-row step costs, and what 4096 tokens of
context add to a one-sequence step.

    python benchmarks/step_breakdown.py [--threads N] [--rounds 6] [--out artifacts/step_breakdown.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from decode import build_nanoprime, build_tokenizer  # sibling benchmark (scripts run from benchmarks/)

from model.config import preset
from model.modules import cpu_kernels
from model.nanoprime import NanoPrime
from model.state import InferenceState

KERNELS = ("ternary_linear", "latent_attention", "mamba2_step", "lm_head", "rms_norm", "swiglu")
CONFIGS = ((1, 128), (16, 128), (1, 4096))  # (sequences, context)
STEPS = 48
PREFILL_CHUNK = 512


def time_kernels(spent: dict[str, float]) -> None:
    """Wrap each kernel entry point so that its calls add their time to spent[name]."""
    for name in KERNELS:
        kernel = getattr(cpu_kernels, name)

        def timed(*args: Any, _kernel: Any = kernel, _name: str = name, **kwargs: Any) -> Any:
            start = time.perf_counter()
            result = _kernel(*args, **kwargs)
            spent[_name] += time.perf_counter() - start
            return result

        setattr(cpu_kernels, name, timed)


def prefilled(model: NanoPrime, rows: int, context: int) -> InferenceState:
    state = model.new_state(batch_size=rows)
    generator = torch.Generator().manual_seed(context)
    for start in range(0, context, PREFILL_CHUNK):
        ids = torch.randint(
            0, model.config.vocab_size, (rows, min(PREFILL_CHUNK, context - start)), generator=generator
        )
        _, state = model(ids, state, last_only=True)
    return state


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out", type=Path, default=Path("artifacts/step_breakdown.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not cpu_kernels.enabled():
        raise SystemExit("the CPU kernels could not be built here: nothing to break down")
    config = preset("pocket").with_overrides(max_seq_len=4096 + PREFILL_CHUNK)
    tokenizer = build_tokenizer(config.vocab_size)
    with tempfile.TemporaryDirectory() as workdir:
        model = build_nanoprime(config, tokenizer, Path(workdir))
    spent: dict[str, float] = defaultdict(float)
    time_kernels(spent)
    best: dict[tuple[int, int], dict[str, float]] = {}
    with torch.inference_mode():
        states = {(rows, context): prefilled(model, rows, context) for rows, context in CONFIGS}
        for _ in range(args.rounds):
            for rows, context in CONFIGS:
                state = states[rows, context].clone()  # every round decodes from the same context
                ids = torch.zeros(rows, 1, dtype=torch.long)
                for _ in range(4):
                    _, state = model(ids, state)
                spent.clear()
                start = time.perf_counter()
                for _ in range(STEPS):
                    _, state = model(ids, state)
                total = (time.perf_counter() - start) / STEPS * 1e3
                if (rows, context) not in best or total < best[rows, context]["step"]:
                    kernels = {name: spent[name] / STEPS * 1e3 for name in KERNELS}
                    best[rows, context] = {"step": total, **kernels, "rest": total - sum(kernels.values())}

    columns = ("step", *KERNELS, "rest")
    print(f"decoding step, pocket, {torch.get_num_threads()} thread(s), best of {args.rounds} rounds; ms")
    print(f"{'sequences x context':>20} " + " ".join(f"{c:>16}" for c in columns))
    for rows, context in CONFIGS:
        print(f"{f'{rows} x {context}':>20} " + " ".join(f"{best[rows, context][c]:16.3f}" for c in columns))
    one, batch, long = best[1, 128], best[16, 128], best[1, 4096]
    per_sequence = {c: (batch[c] - one[c]) / 15 for c in columns}
    context_cost = {c: long[c] - one[c] for c in columns}
    print(f"{'each extra sequence':>20} " + " ".join(f"{per_sequence[c]:16.3f}" for c in columns))
    print(f"{'4096 - 128 context':>20} " + " ".join(f"{context_cost[c]:16.3f}" for c in columns))
    print(f"16 sequences: {16 * one['step'] / batch['step']:.2f}x the tokens/s of one (model step only)")
    print(f"context 4096 / 128: {long['step'] / one['step']:.2f}x the time per token")
    results = {
        "threads": torch.get_num_threads(),
        "rounds": args.rounds,
        "steps": STEPS,
        "ms": {f"{rows}x{context}": best[rows, context] for rows, context in CONFIGS},
        "ms_per_extra_sequence": per_sequence,
        "ms_context_4096_minus_128": context_cost,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
