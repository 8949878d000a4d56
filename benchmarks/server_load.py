"""Server load: concurrent streaming chats against a running server over loopback HTTP (the native SSE API).

Figures, all from one run:
  1. the server's overhead: time to first token measured by a client over HTTP / the engine's own time to
     first token (queue + prefill + first sample, reported in the `done` event) for the same request, one
     client at a time so nothing queues (target <= 1.25x);
  2. for each number of clients (1, 8 and 32 by default), that many concurrent clients each sending R turns
     one after the other: time to first token p50/p99, inter-token gap p50/p99, aggregate tokens/s, errors.

    python benchmarks/server_load.py                         # starts a server on a random-weight pocket model
    python benchmarks/server_load.py --clients 1,4           # other client counts
    python benchmarks/server_load.py --model-dir models/x    # ... on that model directory
    python benchmarks/server_load.py --url http://host:8000  # against a server that is already running

Turns use ignore_eos so every answer is exactly --max-tokens long whatever the weights say.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

WORDS = [
    "il",
    "gatto",
    "la",
    "città",
    "perché",
    "caffè",
    "è",
    "già",
    "più",
    "the",
    "model",
    "thinks",
    "about",
]
WORDS += ["numbers", "pizza", "robot", "answer"]
TARGET_OVERHEAD = 1.25


@dataclass
class Turn:
    """What one client saw of one turn."""

    ttft_s: float | None = None
    gaps_s: list[float] = field(default_factory=list)
    tokens: int = 0
    engine_ttft_s: float | None = None
    error: str | None = None


# ---- the server --------------------------------------------------------------------------------------------
def build_random_model(preset_name: str, workdir: Path) -> Path:
    """A model directory with random weights (speed does not depend on them) and a small trained tokenizer."""
    import torch

    from model.checkpoint import save_model_dir
    from model.config import preset
    from model.nanoprime import NanoPrime
    from training.tokenizer import train_tokenizer

    rng = random.Random(0)
    tokenizer = train_tokenizer(
        [" ".join(rng.choices(WORDS, k=14)) + "." for _ in range(400)], vocab_size=400
    )
    config = preset(preset_name).with_overrides(vocab_size=max(tokenizer.vocab_size, 400))
    torch.manual_seed(0)
    path = workdir / f"random-{preset_name}"
    save_model_dir(NanoPrime(config).eval(), tokenizer, path, {"name": f"random-{preset_name}"})
    return path


def start_server(model_dir: Path, workdir: Path, clients: int) -> tuple[subprocess.Popen, str]:
    """`python -m backend.server` in its own process, so the load generator does not share its interpreter."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {
        **os.environ,
        "NANOPRIME_MODEL_DIR": str(model_dir),
        "NANOPRIME_DATABASE_URL": f"sqlite:///{workdir / 'load.db'}",
        "NANOPRIME_HOST": "127.0.0.1",
        "NANOPRIME_PORT": str(port),
        "NANOPRIME_MAX_BATCH_SIZE": str(max(clients, 1)),
        "NANOPRIME_MAX_QUEUE": str(max(clients, 1) * 2),
        "NANOPRIME_WEB_DIR": str(workdir / "no-ui"),
        "NANOPRIME_API_KEY": "",
    }
    log = open(workdir / "server.log", "w")  # noqa: SIM115 (lives as long as the server)
    server = subprocess.Popen([sys.executable, "-m", "backend.server"], env=env, stdout=log, stderr=log)
    return server, f"http://127.0.0.1:{port}"


def wait_ready(url: str, headers: dict[str, str], timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"{url}/health", timeout=5)
            if health.status_code == 200:
                return httpx.get(f"{url}/api/models", headers=headers, timeout=5).json()["models"][0]
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server at {url} did not become ready in {timeout:.0f} s")


# ---- clients -----------------------------------------------------------------------------------------------
def prompt(words: int, rng: random.Random) -> str:
    """A fresh question each time, so no turn can reuse another's kept state."""
    return f"Domanda {rng.randrange(10**9)}: " + " ".join(rng.choices(WORDS, k=words))


async def one_turn(http: httpx.AsyncClient, text: str, max_tokens: int) -> Turn:
    turn = Turn()
    try:
        created = await http.post("/api/conversations", json={})
        created.raise_for_status()
        body = {"content": text, "max_tokens": max_tokens, "ignore_eos": True, "thinking": False, "seed": 1}
        started = last = time.perf_counter()
        async with http.stream(
            "POST", f"/api/conversations/{created.json()['id']}/messages", json=body
        ) as response:
            if response.status_code != 200:
                turn.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
                return turn
            event = ""
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event in ("thinking", "token"):
                    now = time.perf_counter()
                    if turn.ttft_s is None:
                        turn.ttft_s = now - started
                    else:
                        turn.gaps_s.append(now - last)
                    last = now
                elif line.startswith("data:") and event == "done":
                    done = json.loads(line[5:])
                    turn.tokens = done["usage"]["completion_tokens"]
                    turn.engine_ttft_s = done["timings"]["ttft_ms"] / 1e3
                elif line.startswith("data:") and event == "error":
                    turn.error = json.loads(line[5:])["message"]
        if turn.engine_ttft_s is None and turn.error is None:
            turn.error = "the stream ended without a done event"
    except httpx.HTTPError as error:
        turn.error = f"{type(error).__name__}: {error}"
    return turn


async def load(url: str, headers: dict[str, str], clients: int, turns: int, words: int, max_tokens: int):
    """(every turn, wall seconds) for `clients` clients each sending `turns` turns in sequence."""
    rng = random.Random(clients)
    limits = httpx.Limits(max_connections=2 * clients + 4)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600, limits=limits) as http:

        async def client() -> list[Turn]:
            return [await one_turn(http, prompt(words, rng), max_tokens) for _ in range(turns)]

        started = time.perf_counter()
        results = await asyncio.gather(*(client() for _ in range(clients)))
        return [turn for turns_ in results for turn in turns_], time.perf_counter() - started


# ---- figures -----------------------------------------------------------------------------------------------
def client_counts(text: str) -> list[int]:
    """ "1,8,32" -> [1, 8, 32] (argparse type)."""
    try:
        counts = [int(part) for part in text.split(",") if part.strip()]
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from error
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive client counts, got {text!r}")
    return counts


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(turns: list[Turn], wall_s: float) -> dict[str, float]:
    good = [t for t in turns if t.error is None]
    ttft = [t.ttft_s for t in good if t.ttft_s is not None]
    gaps = [gap for t in good for gap in t.gaps_s]
    return {
        "turns": len(turns),
        "errors": len(turns) - len(good),
        "ttft_p50_ms": percentile(ttft, 50) * 1e3,
        "ttft_p99_ms": percentile(ttft, 99) * 1e3,
        "inter_token_p50_ms": percentile(gaps, 50) * 1e3,
        "inter_token_p99_ms": percentile(gaps, 99) * 1e3,
        "tokens": sum(t.tokens for t in good),
        "tokens_per_s": sum(t.tokens for t in good) / wall_s,
        "wall_s": wall_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--url", help="a running server (default: start one)")
    where.add_argument("--model-dir", type=Path, help="serve this model directory (default: random weights)")
    parser.add_argument("--preset", default="pocket", help="shape of the random-weight model")
    parser.add_argument("--api-key", default=os.environ.get("NANOPRIME_API_KEY", ""))
    parser.add_argument(
        "--clients", type=client_counts, default=[1, 8, 32], help="comma-separated client counts (1,8,32)"
    )
    parser.add_argument("--turns", type=int, default=2, help="turns per client, one after the other")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--prompt-words", type=int, default=200, help="words in each question")
    parser.add_argument("--overhead-turns", type=int, default=8, help="single-client turns for the overhead")
    parser.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = parser.parse_args()
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}

    with tempfile.TemporaryDirectory() as tmp:
        workdir, server = Path(tmp), None
        url = args.url
        if url is None:
            model_dir = args.model_dir or build_random_model(args.preset, workdir)
            server, url = start_server(model_dir, workdir, max(args.clients))
        try:
            model = wait_ready(url, headers)
            print(f"server {url}: model {model['name']} ({model['parameters']:,} parameters)")
            asyncio.run(load(url, headers, 1, 2, args.prompt_words, 8))  # warm-up

            alone, _ = asyncio.run(load(url, headers, 1, args.overhead_turns, args.prompt_words, 8))
            ratios = [t.ttft_s / t.engine_ttft_s for t in alone if t.error is None and t.engine_ttft_s]
            overhead = {
                "http_ttft_p50_ms": percentile([t.ttft_s for t in alone if t.ttft_s], 50) * 1e3,
                "engine_ttft_p50_ms": percentile([t.engine_ttft_s for t in alone if t.engine_ttft_s], 50)
                * 1e3,
                "ratio_p50": percentile(ratios, 50),
                "errors": sum(t.error is not None for t in alone),
            }
            by_clients = {
                clients: summarize(
                    *asyncio.run(load(url, headers, clients, args.turns, args.prompt_words, args.max_tokens))
                )
                for clients in args.clients
            }
        finally:
            if server is not None:
                server.terminate()
                server.wait(timeout=60)

    verdict = "meets" if overhead["ratio_p50"] <= TARGET_OVERHEAD else "MISSES"
    print(f"\n1. overhead ({args.overhead_turns} turns, one client, {args.prompt_words}-word questions)")
    print(
        f"   TTFT over HTTP p50 {overhead['http_ttft_p50_ms']:.1f} ms; engine's own TTFT p50 "
        f"{overhead['engine_ttft_p50_ms']:.1f} ms; ratio p50 {overhead['ratio_p50']:.2f}x "
        f"({verdict} the target <= {TARGET_OVERHEAD}x); errors {overhead['errors']}"
    )
    print(f"\n2. load ({args.turns} turns per client, {args.max_tokens} tokens each)")
    columns = ["clients", "TTFT p50", "TTFT p99", "gap p50", "gap p99", "tokens/s"]
    print("   " + " ".join(f"{name:>10}" for name in columns) + " errors")
    for clients, figures in by_clients.items():
        print(
            f"   {clients:>10} {figures['ttft_p50_ms']:>8.1f}ms {figures['ttft_p99_ms']:>8.1f}ms "
            f"{figures['inter_token_p50_ms']:>8.1f}ms {figures['inter_token_p99_ms']:>8.1f}ms "
            f"{figures['tokens_per_s']:>10.1f} {figures['errors']:>6}"
        )
    fewest, most = min(by_clients), max(by_clients)
    speedup = by_clients[most]["tokens_per_s"] / by_clients[fewest]["tokens_per_s"]
    print(f"   aggregate tokens/s, {most} clients / {fewest}: {speedup:.2f}x")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        result = {"args": {k: str(v) for k, v in vars(args).items()}, "model": model["name"]}
        result |= {"overhead": overhead, "clients": {str(n): figures for n, figures in by_clients.items()}}
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
