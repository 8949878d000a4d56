"""The shipped default model: it loads, matches its card, generates stably, and the server uses it by default.

The golden outputs in golden_default_model.json were produced by this same code at temperature 0, on one
thread with the C kernels (the serving path on a CPU; the torch path's float sums differ in the last bits). If
the shipped weights are retrained, or decoding's arithmetic changes, on purpose, regenerate them with
`python tests/model/test_shipped_model.py --update`, review the diff, and copy it into the model card.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL_DIR = REPO / "models" / "nanoprime-pocket"
GOLDEN = Path(__file__).with_name("golden_default_model.json")
PROMPTS = [  # also the model card's five sample conversations
    {
        "messages": [{"role": "user", "content": "Tell me a story about a dog named Max who finds a ball."}],
        "thinking": False,
    },
    {
        "messages": [
            {"role": "user", "content": "Write a short story about a little bird who is afraid to fly."}
        ],
        "thinking": False,
    },
    {"messages": [{"role": "user", "content": "What is 23 + 58?"}], "thinking": True},
    {"messages": [{"role": "user", "content": "Compute 604 minus 297."}], "thinking": True},
    {"messages": [{"role": "user", "content": "What is 23 + 58?"}], "thinking": False},
]
MAX_NEW_TOKENS = 160


def greedy_outputs() -> list[dict[str, object]]:
    """Generate every golden prompt greedily through the serving engine, as the server does."""
    from backend.engine import Engine
    from model.checkpoint import load_model_dir
    from model.generation import Done, SamplingParams, ThinkingDelta, TokenDelta

    model, tokenizer = load_model_dir(MODEL_DIR)
    engine = Engine(model, tokenizer, max_batch_size=4, max_queue=8)
    engine.start()
    try:
        outputs = []
        for prompt in PROMPTS:
            params = SamplingParams(temperature=0, max_new_tokens=MAX_NEW_TOKENS, thinking=prompt["thinking"])
            thinking, answer, reason = "", "", None
            for event in engine.submit(prompt["messages"], params):
                if isinstance(event, ThinkingDelta):
                    thinking += event.text
                elif isinstance(event, TokenDelta):
                    answer += event.text
                elif isinstance(event, Done):
                    reason = event.finish_reason
            outputs.append({"thinking": thinking, "answer": answer, "finish_reason": reason})
        return outputs
    finally:
        engine.shutdown()


def test_shipped_model_is_small_and_matches_its_card() -> None:
    from model.checkpoint import weights_sha256

    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md"):
        assert (MODEL_DIR / name).is_file(), f"the shipped model directory lacks {name}"
    total = sum(f.stat().st_size for f in MODEL_DIR.rglob("*") if f.is_file())
    assert total <= 25 * 1024 * 1024, f"the shipped model directory is {total / 2**20:.1f} MiB, over 25 MiB"
    card = (MODEL_DIR / "README.md").read_text(encoding="utf-8")
    stated = re.search(r"weights sha256 \| `([0-9a-f]{64})`", card)
    assert stated, "the model card does not state the weights' sha256"
    assert stated.group(1) == weights_sha256(MODEL_DIR)


def test_shipped_model_weights_are_ternary_and_packed() -> None:
    from model.checkpoint import load_model
    from model.modules.bitnet import BitLinear

    model = load_model(MODEL_DIR)
    layers = [m for m in model.modules() if isinstance(m, BitLinear)]
    assert layers, "the shipped model has no BitLinear layers"
    assert model.config.bitnet.enabled


def test_greedy_generation_is_stable() -> None:
    expected = json.loads(GOLDEN.read_text(encoding="utf-8"))
    assert greedy_outputs() == expected


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_server_starts_with_no_model_argument_and_answers(tmp_path: Path) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("NANOPRIME_") and k != "DATABASE_URL"}
    env |= {"NANOPRIME_PORT": str(port), "NANOPRIME_DATABASE_URL": f"sqlite:///{tmp_path / 'chat.db'}"}
    server = subprocess.Popen(
        [sys.executable, "-m", "backend.cli", "serve"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert server.poll() is None, (
                f"the server exited: {server.stdout.read() if server.stdout else ''}"
            )
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "the server did not become healthy within 90 s"
            time.sleep(0.5)
        from model.checkpoint import weights_sha256

        served = httpx.get(f"{base}/api/models", timeout=10).json()["models"]
        assert [m["weights_sha256"] for m in served] == [weights_sha256(MODEL_DIR)]
        models = httpx.get(f"{base}/v1/models", timeout=10).json()["data"]
        assert [m["id"] for m in models] == [served[0]["name"]]
        reply = httpx.post(
            f"{base}/v1/chat/completions",
            json={
                "model": models[0]["id"],
                "max_tokens": 16,
                "temperature": 0,
                "messages": [{"role": "user", "content": "Tell me a story about a cat."}],
            },
            timeout=60,
        )
        assert reply.status_code == 200, reply.text
        body = reply.json()
        assert body["usage"]["completion_tokens"] > 0
        message = body["choices"][0]["message"]
        assert (message.get("content") or "") + (message.get("reasoning_content") or "")
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__" and "--update" in sys.argv:
    sys.path.insert(0, str(REPO))
    import torch

    # One thread, as tests/model/conftest.py runs the test: decoding's float sums vary with the thread count.
    torch.set_num_threads(1)
    GOLDEN.write_text(json.dumps(greedy_outputs(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {GOLDEN}")
elif __name__ == "__main__":
    pytest.main([__file__])
