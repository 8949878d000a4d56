"""Decode benchmark: NanoPrime against a Llama of the same width, depth and vocabulary, and the engine.

All in one run, on random weights (speed does not depend on what the weights say):
  1. batch-1 decode tokens/s at several contexts, NanoPrime (served form, loaded from a model directory) vs
     transformers' LlamaForCausalLM with its KV cache (targets: >= 2x at 128, >= 4x at 4096), every model
     and context taking turns in blocks of consecutive steps;
  2. NanoPrime's per-token decode time at the longest context / the shortest (target <= 1.3x), and the
     torch ops each model calls per decode step (beyond the matmuls, a step's cost here is mostly per op);
  3. aggregate tokens/s through the engine with 1, 4 and 16 concurrent sequences (target: 16 >= 6x one);
  4. cache bytes per token against the Llama KV cache;
  5. time to first token of the 10th turn of a conversation with state reuse / the 1st turn (target <= 1.5x),
     and against a full re-prefill of the same history.

    python benchmarks/decode.py [--preset pocket] [--threads N] [--engine-threads N]
                                [--out artifacts/decode.json]

--threads sets torch's threads for the model-to-model comparison (default: torch's choice, every core, as the
server runs; 1 gives the steadiest figures on a shared machine). It runs on a thread of its own that ends
before the engine starts, so the engine and the conversation, on --engine-threads (default: every core), never
share the machine with a second OpenMP team.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from transformers import LlamaConfig, LlamaForCausalLM

from backend.engine import Engine
from model.checkpoint import load_model_dir, save_model_dir
from model.config import NanoPrimeConfig, preset
from model.generation import Done, SamplingParams, ThinkingDelta, TokenDelta
from model.modules import cpu_kernels
from model.nanoprime import NanoPrime
from model.tokenizer import Tokenizer
from training.tokenizer import train_tokenizer

WIDTHS = [8, 16, 12, 9, 15, 18]
CONCURRENCIES = (1, 4, 16)
ENGINE_ROUNDS = 5
WORDS = ["il", "gatto", "la", "città", "perché", "caffè", "è", "già", "più", "the", "model", "thinks"]
WORDS += ["about", "numbers", "pizza", "robot", "answer", "🍕", "🤖"]


# ---- models ------------------------------------------------------------------------------------------------
def build_nanoprime(config: NanoPrimeConfig, tokenizer: Tokenizer, workdir: Path) -> NanoPrime:
    """Random weights, saved and loaded back: the packed serving form the server runs."""
    torch.manual_seed(0)
    save_model_dir(NanoPrime(config).eval(), tokenizer, workdir / "model", {"description": "benchmark"})
    model, _ = load_model_dir(workdir / "model")
    return model.eval()


def build_llama(config: NanoPrimeConfig) -> LlamaForCausalLM:
    """Same width, depth, FFN, vocabulary, head count and context as NanoPrime; multi-head attention."""
    heads = config.mla.n_heads
    llama_config = LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.d_model,
        intermediate_size=config.ffn_hidden,
        num_hidden_layers=config.n_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=config.d_model // heads,
        max_position_embeddings=config.max_seq_len,
        tie_word_embeddings=config.tie_embeddings,
    )
    torch.manual_seed(0)
    return LlamaForCausalLM(llama_config).eval()


def build_tokenizer(vocab_size: int) -> Tokenizer:
    """A BPE as large as the model's vocabulary, so every id a random model samples decodes to text."""
    rng = random.Random(0)
    syllables = [c + v for c in "bcdfglmnprstvz" for v in "aeiouàèéìòù"] + ["the", "and", "ing", "🍕", "🤖"]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(6000)]
    texts = [" ".join(rng.choice(words) for _ in range(40)) + "." for _ in range(6000)]
    return train_tokenizer(texts, vocab_size=vocab_size)


# ---- 1, 2, 4: batch-1 decode -----------------------------------------------------------------------------
@torch.inference_mode()
def decode_side_by_side(
    nanoprime: NanoPrime, llama: LlamaForCausalLM, contexts: list[int], steps: int, block: int = 8
) -> dict[int, dict[str, Any]]:
    """Greedy decode steps after a prefill of each context: median seconds per step and cache bytes at the
    end, for both models at every context.

    Every (model, context) pair takes turns with the others in blocks of `block` consecutive steps (NanoPrime
    then Llama at each context, the other way round in the next round), so that all the timings compared
    (the two models, and one model at two contexts) see the same machine load over the run, while each runs
    as a server runs it, step after step. Single alternating steps would time each model right after the
    other has swept the CPU caches: at 4096 Llama's step reads ~100 MB of KV cache and evicts NanoPrime's
    whole working set (~20 MB), which then dominates NanoPrime's time. A block's first step (cold caches) is
    timed too; the median looks past it.
    """
    runs: dict[tuple[str, int], Any] = {}
    finals: dict[int, Any] = {}
    for context in contexts:
        ids = torch.randint(
            0, nanoprime.config.vocab_size, (1, context), generator=torch.Generator().manual_seed(context)
        )
        state = nanoprime.new_state(batch_size=1)
        logits, state = nanoprime(ids, state)
        out = llama(ids, use_cache=True)
        runs[("nanoprime", context)] = _stepper(
            lambda token, state=state: nanoprime(token, state)[0], logits[:, -1:].argmax(-1)
        )
        runs[("llama", context)] = _stepper(
            lambda token, cache=out.cache: llama(token, cache=cache, use_cache=True).logits,
            out.logits[:, -1:].argmax(-1),
        )
        finals[context] = (state, out.cache)
    for run in runs.values():  # warm-up: first calls, cache growth
        for _ in range(2):
            run()
    times: dict[tuple[str, int], list[float]] = {key: [] for key in runs}
    for turn in range(-(-steps // block)):
        for context in contexts:
            names = ("nanoprime", "llama") if turn % 2 == 0 else ("llama", "nanoprime")
            for name in names:
                run = runs[(name, context)]
                for _ in range(block):
                    start = time.perf_counter()
                    run()
                    times[(name, context)].append(time.perf_counter() - start)
    results = {}
    for context in contexts:
        state, cache = finals[context]
        results[context] = {
            "nanoprime_s": statistics.median(times[("nanoprime", context)]),
            "llama_s": statistics.median(times[("llama", context)]),
            "nanoprime_cache_bytes": state.nbytes(),
            "llama_cache_bytes": sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers),
            "tokens": context + 2 + len(times[("nanoprime", context)]),
        }
    return results


def _stepper(step: Any, first_token: torch.Tensor) -> Any:
    """A function that feeds the last greedy token to `step` (token -> logits) and keeps the next one."""
    token = first_token

    def run() -> None:
        nonlocal token
        token = step(token)[:, -1:].argmax(-1)

    return run


# Calls that read a tensor's metadata and run no op: attribute reads (.shape, .dtype) and the layout and
# pointer queries the C kernels' wrappers make before each call.
_METADATA_CALLS = {"__get__", "data_ptr", "is_contiguous", "numel", "dim", "size", "stride", "element_size"}


class _OpCounter(TorchFunctionMode):
    """Counts the torch ops Python calls (not metadata reads: see _METADATA_CALLS)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.calls += getattr(func, "__name__", "") not in _METADATA_CALLS
        return func(*args, **(kwargs or {}))


@torch.inference_mode()
def ops_per_step(nanoprime: NanoPrime, llama: LlamaForCausalLM, context: int) -> dict[str, int]:
    """Torch ops one batch-1 decode step calls from Python, after a `context`-token prefill and one step.

    At this size most of a step's time beyond the matmuls is the per-op cost, so this counts what to cut.
    """
    ids = torch.zeros(1, context, dtype=torch.long)
    state = nanoprime.new_state(batch_size=1)
    nanoprime(ids, state)
    cache = llama(ids, use_cache=True).cache
    token = torch.zeros(1, 1, dtype=torch.long)
    counts = {}
    for name, step in (
        ("nanoprime", lambda: nanoprime(token, state)),
        ("llama", lambda: llama(token, cache=cache, use_cache=True)),
    ):
        step()  # the first step may grow a cache
        with _OpCounter() as counter:
            step()
        counts[name] = counter.calls
    return counts


# ---- 3: engine throughput ----------------------------------------------------------------------------------
def engine_throughput(model: NanoPrime, tokenizer: Tokenizer, concurrency: int, new_tokens: int) -> float:
    """Aggregate generated tokens/s for `concurrency` requests submitted together (prefills included), on an
    engine of its own. main() takes the best of several rounds: a busy machine can only make a run slower."""
    engine = Engine(model, tokenizer, max_batch_size=16, max_queue=64, state_cache_bytes=0)
    engine.start()
    try:
        params = [
            SamplingParams(seed=i, max_new_tokens=new_tokens, ignore_eos=True) for i in range(concurrency)
        ]
        prompts = [chat(f"Domanda {i}: perché il caffè è buono?") for i in range(concurrency)]
        start = time.perf_counter()
        handles = [engine.submit(prompt, p) for prompt, p in zip(prompts, params, strict=True)]
        tokens = sum(last_event(h).usage["completion_tokens"] for h in handles)
        return tokens / (time.perf_counter() - start)
    finally:
        engine.shutdown()


# ---- 5: time to first token over a conversation ------------------------------------------------------------
def conversation_ttft(model: NanoPrime, tokenizer: Tokenizer, turns: int, repeats: int) -> dict[str, Any]:
    """TTFT of turn 1 and of turn `turns` with state reuse, and of turn `turns` by a full re-prefill.

    The conversation is played once (the history sent back as the server does: answers without thinking,
    with a pause between turns in which the engine warms up the history). The full re-prefills run next, on
    an engine without kept states that is then shut down: two engines alive at once would be two threads
    with OpenMP teams, which slows both (see backend.engine.torch_on_one_thread). Then turn 1 and turn
    `turns` are repeated in turns on the reusing engine, so that the two compared see the same machine load.
    Turn 1 has no kept prefix: a full prefill.
    """
    reuse = Engine(model, tokenizer, state_cache_bytes=512 * 2**20)
    reuse.start()
    rng = random.Random(2)
    params = SamplingParams(temperature=0.7, seed=3, max_new_tokens=48, ignore_eos=True)
    history: list[dict[str, str]] = [{"role": "system", "content": "Sei un assistente utile e conciso."}]
    warmup_ms: list[float] = []
    ttft: dict[str, list[float]] = {"first": [], "reuse": [], "full": []}
    try:
        for turn in range(1, turns + 1):
            history.append({"role": "user", "content": " ".join(rng.choice(WORDS) for _ in range(20))})
            if turn == 1:
                first_turn = list(history)
            if turn < turns:
                _, answer, _ = run_turn(reuse, history, params)
                start = time.perf_counter()
                reuse.wait_idle()  # the user reads and types: the engine warms up the history meanwhile
                warmup_ms.append((time.perf_counter() - start) * 1e3)
                history.append({"role": "assistant", "content": answer})
        fresh = Engine(model, tokenizer, state_cache_bytes=0)
        fresh.start()
        try:
            for _ in range(repeats):
                ttft["full"].append(run_turn(fresh, history, params)[2].timings["ttft_ms"])
        finally:
            fresh.shutdown()
        reused_before = reuse.states.reused_tokens
        for _ in range(repeats):
            for name, messages in (("first", first_turn), ("reuse", history)):
                ttft[name].append(run_turn(reuse, messages, params)[2].timings["ttft_ms"])
                reuse.wait_idle()
        reused_last_turn = (reuse.states.reused_tokens - reused_before) // repeats
    finally:
        reuse.shutdown()
    return {
        "turns": turns,
        "turn_1_prompt_tokens": len(tokenizer.encode_chat(first_turn)),
        f"turn_{turns}_prompt_tokens": len(tokenizer.encode_chat(history)),
        f"turn_{turns}_tokens_from_kept_state": reused_last_turn,
        "ttft_ms_turn_1": min(ttft["first"]),
        f"ttft_ms_turn_{turns}_reuse": min(ttft["reuse"]),
        f"ttft_ms_turn_{turns}_full_prefill": min(ttft["full"]),
        "ttft_ms_samples": ttft,
        "idle_warmup_ms_median": statistics.median(warmup_ms),
        "kept_state_bytes": reuse.states.bytes,
    }


def run_turn(engine: Engine, history: list[dict[str, str]], params: SamplingParams) -> tuple[str, str, Done]:
    thinking, answer, done = [], [], None
    for event in engine.submit(history, params):
        if isinstance(event, ThinkingDelta):
            thinking.append(event.text)
        elif isinstance(event, TokenDelta):
            answer.append(event.text)
        elif isinstance(event, Done):
            done = event
    if done is None:
        raise RuntimeError("a benchmark turn failed")
    return "".join(thinking), "".join(answer), done


def chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def last_event(handle: Any) -> Done:
    events = list(handle)
    if not isinstance(events[-1], Done):
        raise RuntimeError(f"a benchmark request failed: {events[-1]}")
    return events[-1]


def compare_with_llama(
    args: argparse.Namespace, config: NanoPrimeConfig, tokenizer: Tokenizer
) -> tuple[NanoPrime, dict[str, Any]]:
    """Parts 1, 2 and 4 (their figures printed and returned), on the calling thread, which builds the models.

    main() calls it on a thread of its own that ends afterwards: a thread that has run a parallel torch op
    keeps an OpenMP team until it ends, and a second team beside the engine's slows every engine step (see
    backend.engine.torch_on_one_thread).
    """
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as workdir:
        nanoprime = build_nanoprime(config, tokenizer, Path(workdir))
    llama = build_llama(config)
    results: dict[str, Any] = {
        "preset": args.preset,
        "nanoprime_parameters": nanoprime.num_parameters(),
        "llama_parameters": sum(p.numel() for p in llama.parameters()),
        "torch_threads": torch.get_num_threads(),
        "cpu_decode_kernels": cpu_kernels.enabled(),  # NANOPRIME_KERNEL=0 measures the torch path
        "machine": platform.processor() or platform.machine(),
        "load_average_at_start": os.getloadavg()[0],
        "decode": [],
    }

    threads = torch.get_num_threads()
    kernel = "C kernels" if results["cpu_decode_kernels"] else "torch path"
    print(
        f"decode, batch 1, median of {args.steps} steps after a prefill of the context, every model and "
        f"context taking turns in blocks of 8 steps ({threads} threads)"
    )
    print(f"BitLinear, MLA, Mamba-2 and LM head decoding: {kernel} (NANOPRIME_KERNEL=0 for the torch path)")
    header = ["context", "NanoPrime tok/s", "Llama tok/s", "speed-up", "NP bytes/token", "Llama bytes/token"]
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, WIDTHS, strict=True)))
    side_by_side = decode_side_by_side(nanoprime, llama, args.contexts, args.steps)
    for context in args.contexts:
        measured = side_by_side[context]
        np_ms, ll_ms = measured["nanoprime_s"] * 1e3, measured["llama_s"] * 1e3
        np_bytes, ll_bytes, tokens = (
            measured["nanoprime_cache_bytes"],
            measured["llama_cache_bytes"],
            measured["tokens"],
        )
        row = {
            "context": context,
            "nanoprime_ms_per_token": np_ms,
            "llama_ms_per_token": ll_ms,
            "nanoprime_tokens_per_s": 1e3 / np_ms,
            "llama_tokens_per_s": 1e3 / ll_ms,
            "speedup": ll_ms / np_ms,
            "nanoprime_cache_bytes": np_bytes,
            "llama_cache_bytes": ll_bytes,
            "cache_tokens": tokens,
            "nanoprime_cache_bytes_per_token": np_bytes / tokens,
            "llama_cache_bytes_per_token": ll_bytes / tokens,
        }
        results["decode"].append(row)
        cells = [
            f"{context}",
            f"{row['nanoprime_tokens_per_s']:.1f}",
            f"{row['llama_tokens_per_s']:.1f}",
            f"{row['speedup']:.2f}x",
            f"{row['nanoprime_cache_bytes_per_token']:.0f}",
            f"{row['llama_cache_bytes_per_token']:.0f}",
        ]
        print(" ".join(f"{c:>{w}}" for c, w in zip(cells, WIDTHS, strict=True)))
    shortest_row, longest_row = results["decode"][0], results["decode"][-1]
    growth = longest_row["nanoprime_ms_per_token"] / shortest_row["nanoprime_ms_per_token"]
    llama_growth = longest_row["llama_ms_per_token"] / shortest_row["llama_ms_per_token"]
    results["nanoprime_time_growth"] = growth
    results["llama_time_growth"] = llama_growth
    print(
        f"per-token time at {longest_row['context']} / at {shortest_row['context']}: "
        f"NanoPrime {growth:.2f}x (target <= 1.3x), Llama {llama_growth:.2f}x"
    )
    ops = ops_per_step(nanoprime, llama, shortest_row["context"])
    results["torch_ops_per_decode_step"] = ops
    print(f"torch ops per decode step: NanoPrime {ops['nanoprime']}, Llama {ops['llama']}")

    return nanoprime, results


def on_its_own_thread(function: Any, *args: Any) -> Any:
    """function(*args) on a new thread, joined: its OpenMP team ends with it. Its exception is re-raised."""
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = function(*args)
        except BaseException as error:  # handed to the caller as it is
            outcome["error"] = error

    thread = threading.Thread(target=run, name="model-comparison")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# ---- main --------------------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pocket")
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 2048, 4096])
    parser.add_argument("--steps", type=int, default=96, help="decode steps timed per context")
    parser.add_argument("--engine-tokens", type=int, default=128, help="tokens per engine request")
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=5, help="repeats of each TTFT measurement (best)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--engine-threads", type=int, default=os.cpu_count() or 1, help="torch threads for the engine parts"
    )
    parser.add_argument("--out", type=Path, default=Path("artifacts/decode.json"))
    args = parser.parse_args()
    longest = max(args.contexts)
    config = preset(args.preset).with_overrides(
        max_seq_len=max(preset(args.preset).max_seq_len, longest + 512)
    )
    tokenizer = build_tokenizer(config.vocab_size)
    if tokenizer.vocab_size != config.vocab_size:
        raise SystemExit(
            f"the benchmark tokenizer has {tokenizer.vocab_size} tokens, the model {config.vocab_size}"
        )
    nanoprime, results = on_its_own_thread(compare_with_llama, args, config, tokenizer)

    torch.set_num_threads(args.engine_threads)
    results["engine_torch_threads"] = torch.get_num_threads()
    print(
        f"\nengine, {args.engine_tokens} tokens per request, temperature 0.7, best of {ENGINE_ROUNDS} runs "
        f"taken in turns ({torch.get_num_threads()} threads)"
    )
    rates: dict[int, list[float]] = {concurrency: [] for concurrency in CONCURRENCIES}
    for _ in range(ENGINE_ROUNDS):  # in turns, so that a slow minute of the machine hits every level alike
        for concurrency in CONCURRENCIES:
            rate = engine_throughput(nanoprime, tokenizer, concurrency, args.engine_tokens)
            rates[concurrency].append(rate)
    results["engine"] = []
    for concurrency in CONCURRENCIES:
        rate = max(rates[concurrency])
        runs = rates[concurrency]
        results["engine"].append({"concurrency": concurrency, "tokens_per_s": rate, "runs": runs})
        print(f"{concurrency:>3} concurrent: {rate:8.1f} tokens/s")
    scaling = results["engine"][-1]["tokens_per_s"] / results["engine"][0]["tokens_per_s"]
    results["engine_scaling_16_vs_1"] = scaling
    print(f"16 concurrent / 1: {scaling:.2f}x (target >= 6x)")

    ttft = conversation_ttft(nanoprime, tokenizer, args.turns, args.repeats)
    results["conversation"] = ttft
    turns = args.turns
    reuse_ratio = ttft[f"ttft_ms_turn_{turns}_reuse"] / ttft["ttft_ms_turn_1"]
    full_ratio = ttft[f"ttft_ms_turn_{turns}_full_prefill"] / ttft[f"ttft_ms_turn_{turns}_reuse"]
    results["ttft_ratio_turn_n_vs_1"] = reuse_ratio
    results["ttft_full_prefill_vs_reuse"] = full_ratio
    first_tokens = ttft["turn_1_prompt_tokens"]
    last_tokens, kept_tokens = (
        ttft[f"turn_{turns}_prompt_tokens"],
        ttft[f"turn_{turns}_tokens_from_kept_state"],
    )
    print(
        f"\nconversation of {turns} turns, best of {args.repeats}: turn 1 prompt {first_tokens} tokens; "
        f"turn {turns} prompt {last_tokens} tokens, {kept_tokens} of them from a kept state "
        f"(idle warm-up after each turn: {ttft['idle_warmup_ms_median']:.0f} ms)"
    )
    print(f"TTFT turn 1: {ttft['ttft_ms_turn_1']:.1f} ms")
    print(
        f"TTFT turn {turns} with state reuse: {ttft[f'ttft_ms_turn_{turns}_reuse']:.1f} ms "
        f"= {reuse_ratio:.2f}x turn 1 (target <= 1.5x)"
    )
    print(
        f"TTFT turn {turns} by full re-prefill: {ttft[f'ttft_ms_turn_{turns}_full_prefill']:.1f} ms "
        f"= {full_ratio:.2f}x the reuse"
    )

    longest_row = results["decode"][-1]
    cache_ratio = longest_row["llama_cache_bytes"] / longest_row["nanoprime_cache_bytes"]
    results["cache_bytes_llama_vs_nanoprime_at_longest"] = cache_ratio
    mib = 2**20
    print(
        f"\ncache at {longest_row['cache_tokens']} tokens: "
        f"NanoPrime {longest_row['nanoprime_cache_bytes'] / mib:.2f} MiB, "
        f"Llama {longest_row['llama_cache_bytes'] / mib:.2f} MiB ({cache_ratio:.1f}x smaller)"
    )
    results["load_average_at_end"] = os.getloadavg()[0]
    start_load, end_load = results["load_average_at_start"], results["load_average_at_end"]
    print(f"load average {start_load:.1f} at the start, {end_load:.1f} at the end")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
