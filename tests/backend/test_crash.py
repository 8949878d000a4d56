"""A server killed with SIGKILL mid-answer and started again on the same SQLite file.

Nothing of the dying server runs: no shutdown hook stores the partial answer. What the next start finds must
still be a clean database with the user's message, the unfinished answer marked "interrupted", and a
conversation that goes on.
"""

from __future__ import annotations

import signal
import sqlite3
from pathlib import Path

import httpx

from tests.backend.conftest import serving_env
from tests.backend.live import ServerProcess, iter_sse, stream_events

# Long enough that the kill always lands mid-answer.
LONG = {"max_tokens": 1500, "ignore_eos": True, "thinking": False}


def test_a_server_killed_mid_answer_restarts_clean_and_the_conversation_goes_on(
    tiny_model_dir: Path, tmp_path: Path
):
    database = tmp_path / "crash.db"
    env = serving_env(tiny_model_dir, f"sqlite:///{database}")
    log = tmp_path / "server.log"

    first = ServerProcess(env, log)
    with first, httpx.Client(base_url=first.url, timeout=60) as client:
        conversation_id = client.post("/api/conversations", json={}).json()["id"]
        url = f"/api/conversations/{conversation_id}/messages"
        tokens = 0
        with client.stream("POST", url, json={"content": "racconta una storia", **LONG}) as response:
            events = iter_sse(response.iter_lines())
            meta = next(events).json()
            for event in events:
                tokens += event.event == "token"
                if tokens == 5:
                    first.signal(signal.SIGKILL)
                    break
        assert first.wait() == -signal.SIGKILL

    with sqlite3.connect(database) as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        rows = connection.execute("SELECT role, status FROM messages ORDER BY position").fetchall()
    assert rows == [("user", "complete"), ("assistant", "streaming")]  # as the kill left them

    second = ServerProcess(env, log)
    with second, httpx.Client(base_url=second.url, timeout=60) as client:
        assert client.get("/health").json()["database"] == "ok"
        messages = client.get(f"/api/conversations/{conversation_id}").json()["messages"]
        user, answer = messages
        assert (user["id"], user["role"], user["content"], user["status"]) == (
            meta["user_message_id"],
            "user",
            "racconta una storia",
            "complete",
        )
        assert (answer["id"], answer["status"]) == (meta["assistant_message_id"], "interrupted")

        events = stream_events(client, url, {"content": "e poi?", "max_tokens": 8})
        assert events[0].event == "meta" and events[-1].event == "done"
        messages = client.get(f"/api/conversations/{conversation_id}").json()["messages"]
        assert [(m["role"], m["status"]) for m in messages] == [
            ("user", "complete"),
            ("assistant", "interrupted"),
            ("user", "complete"),
            ("assistant", "complete"),
        ]
        assert [m["position"] for m in messages] == sorted({m["position"] for m in messages})
    assert "marked 1 answer(s) left streaming" in second.output()
