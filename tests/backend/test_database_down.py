"""PostgreSQL stopped under a running server, then started again.

While it is down, whatever needs the database answers 503 at once with a message that says so (not a 500,
not a hang), and /health says the database is down; when it is back, the same server process serves again.
An answer that ends while the database is down is stored when it is back, and its conversation goes on.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx

from tests.backend.conftest import serving_env
from tests.backend.live import ServerProcess, iter_sse, stream_events
from tests.backend.private_postgres import PrivatePostgres

# Every request below must be answered within this; a hung pool or driver would trip it.
ANSWER_WITHIN_S = 20
LONG = {"max_tokens": 1500, "ignore_eos": True, "thinking": False}


def assert_database_unavailable(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/json"
    assert "database is unavailable" in response.json()["detail"]
    assert response.json()["error"]["type"] == "service_unavailable"
    assert int(response.headers["retry-after"]) > 0


def test_a_stopped_database_gives_503_and_the_same_server_recovers_when_it_is_back(
    tiny_model_dir: Path, tmp_path: Path, private_postgres: PrivatePostgres
):
    server = ServerProcess(serving_env(tiny_model_dir, private_postgres.url), tmp_path / "server.log")
    with server, httpx.Client(base_url=server.url, timeout=ANSWER_WITHIN_S) as client:
        conversation_id = client.post("/api/conversations", json={"title": "before"}).json()["id"]
        turn = f"/api/conversations/{conversation_id}/messages"
        stream_events(client, turn, {"content": "prima", "max_tokens": 6})

        private_postgres.stop()
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "unavailable"
        assert health.json()["database"].startswith("down:") and "database" in health.json()["message"]
        assert_database_unavailable(client.get("/api/conversations"))
        assert_database_unavailable(client.get(f"/api/conversations/{conversation_id}"))
        assert_database_unavailable(client.post("/api/conversations", json={}))
        renamed = client.patch(f"/api/conversations/{conversation_id}", json={"title": "x"})
        assert_database_unavailable(renamed)
        assert_database_unavailable(client.post(turn, json={"content": "durante", "max_tokens": 6}))
        assert_database_unavailable(client.post(f"/api/conversations/{conversation_id}/stop"))
        assert client.get("/metrics").status_code == 200  # what needs no database still answers

        private_postgres.start()
        assert client.get("/health").status_code == 200
        events = stream_events(client, turn, {"content": "dopo", "max_tokens": 6})
        assert events[-1].event == "done"
        messages = client.get(f"/api/conversations/{conversation_id}").json()["messages"]
        assert [(m["role"], m["content"], m["status"]) for m in messages if m["role"] == "user"] == [
            ("user", "prima", "complete"),
            ("user", "dopo", "complete"),
        ]
        assert [m["status"] for m in messages if m["role"] == "assistant"] == ["complete", "complete"]
    assert server.wait() in (0, -signal.SIGTERM)  # the one process served throughout and stopped cleanly
    assert "database unavailable for GET /api/conversations" in server.output()


def test_an_answer_ending_while_the_database_is_down_is_stored_when_it_is_back(
    tiny_model_dir: Path, tmp_path: Path, private_postgres: PrivatePostgres
):
    server = ServerProcess(serving_env(tiny_model_dir, private_postgres.url), tmp_path / "server.log")
    with server, httpx.Client(base_url=server.url, timeout=ANSWER_WITHIN_S) as client:
        conversation_id = client.post("/api/conversations", json={}).json()["id"]
        url = f"/api/conversations/{conversation_id}"
        streamed = []
        with client.stream("POST", f"{url}/messages", json={"content": "lunga", **LONG}) as response:
            for event in iter_sse(response.iter_lines()):
                streamed.append(event)
                if sum(e.event == "token" for e in streamed) == 3:
                    private_postgres.stop()
                    # Stopping a running answer needs no database.
                    assert client.post(f"{url}/stop").json() == {"stopped": True}
        assert streamed[-1].event == "error" and "database is unavailable" in streamed[-1].json()["message"]
        assert_database_unavailable(client.post(f"{url}/messages", json={"content": "ancora"}))

        private_postgres.start()
        answer_id = streamed[0].json()["assistant_message_id"]
        deadline = time.monotonic() + ANSWER_WITHIN_S
        while (answer := client.get(url).json()["messages"][1])["status"] == "streaming":
            assert time.monotonic() < deadline, "the answer was not stored after the database came back"
            time.sleep(0.1)
        tokens = "".join(e.json()["delta"] for e in streamed if e.event == "token")
        # "complete" only if all its tokens came before the stop did
        assert answer["id"] == answer_id and answer["status"] in ("stopped", "complete")
        assert answer["content"].startswith(tokens) and answer["content"]
        again = stream_events(client, f"{url}/messages", {"content": "ancora", "max_tokens": 6})
        assert again[-1].event == "done"
        assert [m["role"] for m in client.get(url).json()["messages"]] == ["user", "assistant"] * 2
    assert "stored now that the database is back" in server.output()
