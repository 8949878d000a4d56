"""Soak: 32 clients chat at once for 60 s against a real server, a third of their turns cut off mid-stream.

Each client talks in a few conversations, one turn after another; a cut-off turn is followed in the same
conversation once its answer is stored (the server stores it as "stopped", or "complete" when it ended before
the cancel landed). Afterwards the database must hold exactly what the clients saw, in order: one user message
and one answer per turn, nothing lost, nothing twice. No answer may be a 5xx, every admission and engine slot
must be free again, and the server's memory must not keep growing once it is warm.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.backend.conftest import serving_env
from tests.backend.live import ServerProcess, SSEEvent, iter_sse, metric

CLIENTS = 32
SOAK_S = 60.0
WARM_S = 20.0  # memory is compared between here and the end
CUT_OFF_SHARE = 0.35
TURNS_PER_CONVERSATION = (1, 4)
# Growth allowed from WARM_S to the end. Measured here: +3% (the allocator settling; over 200 s it levels off
# near +6%), while a leak of 25 KB per turn over the ~1500 turns of those 40 s would be +10%.
RSS_GROWTH_SHARE = 0.10
# The kept-state cache is capped low so it is full by WARM_S: at the default cap it would still be filling,
# which is growth by design.
STATE_CACHE_BYTES = 8 * 2**20
REQUEST_TIMEOUT_S = 60


@dataclass
class Turn:
    """What the client sent and saw."""

    content: str
    cut_after: int | None  # tokens read before disconnecting; None reads to the end
    user_message_id: str = ""
    assistant_message_id: str = ""
    thinking: str = ""
    answer: str = ""
    ending: str = ""  # "done" (read to the end), or "cut" (the client disconnected)


@dataclass
class Soak:
    statuses: list[int] = field(default_factory=list)
    conversations: dict[str, list[Turn]] = field(default_factory=dict)
    conflicts_retried: int = 0


async def run_turn(
    http: httpx.AsyncClient, soak: Soak, conversation_id: str, turn: Turn, rng: random.Random
) -> None:
    body = {
        "content": turn.content,
        "max_tokens": rng.randint(8, 48),
        "thinking": rng.random() < 0.5,
        "temperature": 0.8,
        "seed": rng.randrange(2**31),
    }
    url = f"/api/conversations/{conversation_id}/messages"
    for _ in range(50):
        async with http.stream("POST", url, json=body) as response:
            soak.statuses.append(response.status_code)
            if response.status_code != 409:
                assert response.status_code == 200, await response.aread()
                await read_turn(turn, response)
                return
        # The previous answer is stored but the server has not let go of it yet: a moment more.
        soak.conflicts_retried += 1
        await asyncio.sleep(0.05)
    raise AssertionError(f"conversation {conversation_id} stayed busy")


async def read_turn(turn: Turn, response: httpx.Response) -> None:
    """Read the events to the end, or until `cut_after` tokens came and then leave (closing the stream)."""
    lines: list[str] = []
    async for line in response.aiter_lines():
        lines.append(line)
        if line == "" and turn.cut_after is not None:
            events = list(iter_sse(iter(lines)))
            if sum(event.event in ("thinking", "token") for event in events) >= turn.cut_after:
                record(turn, events)
                turn.ending = "cut"
                return
    events = list(iter_sse(iter(lines)))
    record(turn, events)
    assert events[-1].event == "done", events[-1]
    turn.ending = "done"


def record(turn: Turn, events: list[SSEEvent]) -> None:
    assert events[0].event == "meta"
    meta = events[0].json()
    turn.user_message_id, turn.assistant_message_id = meta["user_message_id"], meta["assistant_message_id"]
    turn.thinking = "".join(e.json()["delta"] for e in events if e.event == "thinking")
    turn.answer = "".join(e.json()["delta"] for e in events if e.event == "token")


async def wait_until_stored(http: httpx.AsyncClient, soak: Soak, conversation_id: str) -> None:
    deadline = time.monotonic() + REQUEST_TIMEOUT_S
    while time.monotonic() < deadline:
        response = await http.get(f"/api/conversations/{conversation_id}")
        soak.statuses.append(response.status_code)
        if response.json()["messages"][-1]["status"] != "streaming":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the cut-off answer in {conversation_id} was never stored")


async def client(url: str, soak: Soak, number: int, until: float) -> None:
    rng = random.Random(number)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_TIMEOUT_S) as http:
        while time.monotonic() < until:
            created = await http.post("/api/conversations", json={"title": f"soak {number}"})
            soak.statuses.append(created.status_code)
            conversation_id = created.json()["id"]
            turns = soak.conversations.setdefault(conversation_id, [])
            for _ in range(rng.randint(*TURNS_PER_CONVERSATION)):
                if time.monotonic() >= until:
                    break
                cut = rng.randint(0, 12) if rng.random() < CUT_OFF_SHARE else None
                turn = Turn(f"client {number} turn {len(turns)} {rng.randrange(10**9)}", cut)
                turns.append(turn)
                await run_turn(http, soak, conversation_id, turn, rng)
                if turn.ending == "cut":
                    await wait_until_stored(http, soak, conversation_id)


async def sample_rss(server: ServerProcess, started: float, samples: dict[float, int]) -> None:
    """RSS every second, keyed by seconds since the soak began."""
    while True:
        samples[time.monotonic() - started] = server.rss_bytes()
        await asyncio.sleep(1.0)


async def soak_for(server: ServerProcess, seconds: float) -> tuple[Soak, dict[float, int]]:
    soak, rss = Soak(), {}
    started = time.monotonic()
    sampler = asyncio.create_task(sample_rss(server, started, rss))
    try:
        await asyncio.gather(*(client(server.url, soak, n, started + seconds) for n in range(CLIENTS)))
    finally:
        sampler.cancel()
    return soak, rss


def idle_metrics(http: httpx.Client, timeout: float = 10) -> str:
    """/metrics once no generation holds a slot any more (the last cut-off ones may still be finishing)."""
    deadline = time.monotonic() + timeout
    while True:
        text = http.get("/metrics").text
        if metric(text, "nanoprime_generations_admitted") == 0 or time.monotonic() > deadline:
            return text
        time.sleep(0.05)


def test_32_clients_for_60_s_with_disconnects_lose_nothing_and_leak_nothing(
    tiny_model_dir: Path, tmp_path: Path
):
    database_url = f"sqlite:///{tmp_path / 'soak.db'}"
    env = serving_env(
        tiny_model_dir, database_url, max_batch_size=16, max_queue=48, state_cache_bytes=STATE_CACHE_BYTES
    )
    server = ServerProcess(env, tmp_path / "server.log")
    with server, httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as http:
        soak, rss = asyncio.run(soak_for(server, SOAK_S))

        assert all(status < 500 for status in soak.statuses)
        turns = [turn for conversation in soak.conversations.values() for turn in conversation]
        cut = [turn for turn in turns if turn.ending == "cut"]
        print(
            f"{len(turns)} turns ({len(cut)} cut off) in {len(soak.conversations)} conversations; "
            f"{soak.conflicts_retried} retried after a 409"
        )
        assert len(turns) >= 3 * CLIENTS and len(cut) >= CLIENTS // 2, "the soak did too little"

        for conversation_id, sent in soak.conversations.items():
            stored = http.get(f"/api/conversations/{conversation_id}").json()["messages"]
            assert [m["role"] for m in stored] == ["user", "assistant"] * len(sent)
            assert [m["position"] for m in stored] == sorted({m["position"] for m in stored})
            for turn, user, answer in zip(sent, stored[0::2], stored[1::2], strict=True):
                assert (user["id"], user["content"], user["status"]) == (
                    turn.user_message_id,
                    turn.content,
                    "complete",
                )
                assert answer["id"] == turn.assistant_message_id
                if turn.ending == "done":
                    assert answer["status"] == "complete"
                    assert (answer["thinking"], answer["content"]) == (turn.thinking, turn.answer)
                else:
                    assert answer["status"] in ("stopped", "complete")
                    assert answer["thinking"].startswith(turn.thinking)
                    assert answer["content"].startswith(turn.answer)
        assert http.get("/api/conversations").json()["total"] == len(soak.conversations)

        metrics = idle_metrics(http)
        for gauge in ("admitted", "active", "queued"):
            assert metric(metrics, f"nanoprime_generations_{gauge}") == 0, gauge
        # the only 5xx allowed: /health saying 503 while the server was still loading, before the soak
        server_errors = [
            line
            for line in metrics.splitlines()
            if line.startswith("nanoprime_http_requests_total")
            and 'status="5' in line
            and 'route="/health"' not in line
        ]
        assert not server_errors, server_errors

    mib = {round(at): value >> 20 for at, value in sorted(rss.items())}
    print(f"server RSS in MiB by second: {mib}")
    warm = next(value for at, value in sorted(rss.items()) if at >= WARM_S)
    assert rss[max(rss)] <= warm * (1 + RSS_GROWTH_SHARE), mib
    assert "Traceback" not in server.output()
