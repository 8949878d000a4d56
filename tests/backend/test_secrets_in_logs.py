"""Nothing secret in the server's logs: not the API key, not keys that clients got wrong, not the database
password, whatever happens (refused keys, turns, the OpenAI route, a database outage, a shutdown).

The server runs as its own process, configured by environment as in production, and everything it writes to
stdout and stderr (its own log lines and uvicorn's access log) is searched.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import httpx
import pytest

from tests.backend.conftest import serving_env
from tests.backend.live import ServerProcess, stream_events
from tests.backend.private_postgres import PrivatePostgres


def drive(client: httpx.Client, key: str, wrong_keys: list[str]) -> None:
    """Requests with the key, without it, and with wrong ones, on the native and the OpenAI API."""
    good = {"Authorization": f"Bearer {key}"}
    assert client.get("/health").status_code == 200
    for wrong in wrong_keys:
        bad = {"Authorization": f"Bearer {wrong}"}
        assert client.get("/api/conversations", headers=bad).status_code == 401
        assert client.post("/v1/chat/completions", headers=bad, json={}).status_code == 401
    assert client.get("/api/conversations").status_code == 401
    conversation_id = client.post("/api/conversations", headers=good, json={}).json()["id"]
    url = f"/api/conversations/{conversation_id}/messages"
    with httpx.Client(base_url=client.base_url, headers=good, timeout=60) as authorized:
        assert stream_events(authorized, url, {"content": "ciao", "max_tokens": 6})[-1].event == "done"
    chat = {"model": "m", "messages": [{"role": "user", "content": "ciao"}], "max_tokens": 4}
    assert client.post("/v1/chat/completions", headers=good, json=chat).status_code == 200
    assert client.get("/metrics", headers=good).status_code == 200


def assert_no_secret(text: str, secrets_: list[str]) -> None:
    for secret in secrets_:
        assert secret not in text, f"a secret ({secret[:4]}…) is in the server's output"


@pytest.fixture
def key_and_wrong_keys() -> tuple[str, list[str]]:
    key = f"key-{secrets.token_hex(16)}"
    return key, [f"wrong-{secrets.token_hex(16)}", key + "x", key[:-1]]


def test_the_api_key_and_wrong_keys_stay_out_of_the_logs(
    tiny_model_dir: Path, tmp_path: Path, key_and_wrong_keys: tuple[str, list[str]]
):
    key, wrong_keys = key_and_wrong_keys
    env = serving_env(tiny_model_dir, f"sqlite:///{tmp_path / 'secrets.db'}") | {"NANOPRIME_API_KEY": key}
    server = ServerProcess(env, tmp_path / "server.log")
    with server, httpx.Client(base_url=server.url, timeout=60) as client:
        drive(client, key, wrong_keys)
    output = server.output()
    assert '"GET /api/conversations HTTP/1.1" 401' in output  # the access log was captured
    assert_no_secret(output, [key, *wrong_keys])


def test_the_database_password_stays_out_of_the_logs_and_answers_even_when_the_database_is_down(
    tiny_model_dir: Path,
    tmp_path: Path,
    private_postgres: PrivatePostgres,
    key_and_wrong_keys: tuple[str, list[str]],
):
    key, wrong_keys = key_and_wrong_keys
    password = f"pw{secrets.token_hex(16)}"  # trust auth ignores it; the server gets it like a real one
    database_url = private_postgres.url.replace("postgres@", f"postgres:{password}@")
    env = serving_env(tiny_model_dir, database_url) | {"NANOPRIME_API_KEY": key}
    server = ServerProcess(env, tmp_path / "server.log")
    answers = []
    with server, httpx.Client(base_url=server.url, timeout=60) as client:
        drive(client, key, wrong_keys)
        private_postgres.stop()
        good = {"Authorization": f"Bearer {key}"}
        answers.append(client.get("/api/conversations", headers=good))
        answers.append(client.post("/api/conversations", headers=good, json={}))
        answers.append(client.get("/health"))
        assert [answer.status_code for answer in answers] == [503, 503, 503]
        private_postgres.start()
        assert client.get("/health").status_code == 200
    output = server.output()
    assert "database unavailable for GET /api/conversations" in output  # the outage was logged
    assert_no_secret(output, [key, *wrong_keys, password])
    assert_no_secret(" ".join(answer.text for answer in answers), [key, password])
