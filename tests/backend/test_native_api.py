"""The native API's conversation routes, errors, limits and safety, through httpx against the app.

These tests need no model: the app runs with a model directory that does not exist, which is itself a state
the server must handle (conversations work, /health and generation answer 503 with the reason).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from backend import store
from backend.app import create_app
from backend.db import create_db_engine, create_session_factory, migrate, session_scope
from backend.settings import Settings


def make_settings(tmp_path: Path, **overrides) -> Settings:
    values = {
        "database_url": f"sqlite:///{tmp_path / 'api.db'}",
        "model_dir": tmp_path / "no-model-here",
        "web_dir": tmp_path / "no-web-here",
        "cors_origins": ["http://ui.example"],
    }
    return Settings(**{**values, **overrides})


@pytest.fixture
def client(tmp_path: Path):
    with TestClient(create_app(make_settings(tmp_path))) as test_client:
        yield test_client


def error_of(response) -> tuple[str, str | None]:
    body = response.json()
    assert body["detail"] == body["error"]["message"]
    return body["detail"], body["error"]["param"]


def test_conversation_lifecycle(client: TestClient):
    created = client.post("/api/conversations", json={"title": "  First  ", "system_prompt": "Be kind."})
    assert created.status_code == 201
    first = created.json()
    assert (first["title"], first["system_prompt"], first["messages"]) == ("First", "Be kind.", [])
    assert first["created_at"].endswith("Z") or first["created_at"].endswith("+00:00")
    second = client.post("/api/conversations", json={}).json()
    assert second["title"] == ""

    assert client.get(f"/api/conversations/{first['id']}").json()["system_prompt"] == "Be kind."
    listed = client.get("/api/conversations").json()
    assert [item["id"] for item in listed["items"]] == [second["id"], first["id"]]
    assert (listed["total"], listed["limit"], listed["offset"]) == (2, 30, 0)

    renamed = client.patch(f"/api/conversations/{first['id']}", json={"title": "Renamed"})
    assert renamed.status_code == 200 and renamed.json()["title"] == "Renamed"
    page = client.get("/api/conversations", params={"limit": 1, "offset": 0}).json()
    assert [item["id"] for item in page["items"]] == [first["id"]] and page["total"] == 2
    page = client.get("/api/conversations", params={"limit": 1, "offset": 1}).json()
    assert [item["id"] for item in page["items"]] == [second["id"]]
    found = client.get("/api/conversations", params={"q": "renam"}).json()
    assert [item["id"] for item in found["items"]] == [first["id"]]

    assert client.delete(f"/api/conversations/{first['id']}").status_code == 204
    missing = client.get(f"/api/conversations/{first['id']}")
    assert missing.status_code == 404
    assert error_of(missing)[1] == "conversation_id"
    assert client.delete(f"/api/conversations/{first['id']}").status_code == 404
    assert client.get("/api/conversations").json()["total"] == 1


def test_export_as_json_and_markdown(client: TestClient):
    conversation = client.post(
        "/api/conversations", json={"title": "Notes", "system_prompt": "Terse."}
    ).json()
    as_json = client.get(f"/api/conversations/{conversation['id']}/export", params={"format": "json"})
    assert as_json.status_code == 200
    assert as_json.headers["content-type"] == "application/json"
    assert f"conversation-{conversation['id']}.json" in as_json.headers["content-disposition"]
    assert as_json.json()["title"] == "Notes" and as_json.json()["messages"] == []
    as_markdown = client.get(f"/api/conversations/{conversation['id']}/export", params={"format": "markdown"})
    assert as_markdown.headers["content-type"].startswith("text/markdown")
    assert as_markdown.text.startswith("# Notes\n") and "## System\n\nTerse." in as_markdown.text
    wrong = client.get(f"/api/conversations/{conversation['id']}/export", params={"format": "pdf"})
    assert wrong.status_code == 422 and error_of(wrong)[1] == "format"


@pytest.mark.parametrize(
    ("body", "status", "field"),
    [
        (b"{not json", 400, "body"),
        (b"[1, 2]", 422, "body"),
        (b'{"title": 5}', 422, "title"),
        (b'{"title": "t", "colour": "red"}', 422, "colour"),
        (b'{"settings": {"temperature": -0.1}}', 422, "settings.temperature"),
        (b'{"settings": {"top_p": 0}}', 422, "settings.top_p"),
        (b'{"settings": {"top_p": 1.5}}', 422, "settings.top_p"),
        (b'{"settings": {"temperature": "hot"}}', 422, "settings.temperature"),
        (b'{"settings": {"max_tokens": 100000}}', 422, "max_tokens"),
        (b'{"settings": {"stop": [""]}}', 422, "settings.stop[0]"),
        (b'{"settings": {"top_k": 100000000000000000000}}', 422, "settings.top_k"),
    ],
)
def test_bad_conversation_bodies_get_a_4xx_naming_the_field(client: TestClient, body, status, field):
    response = client.post("/api/conversations", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    message, param = error_of(response)
    assert param == field and field.split("[")[0].split(".")[-1] in message
    assert client.get("/api/conversations").json()["total"] == 0  # nothing half-written


def test_bad_queries_and_patches_name_the_field(client: TestClient):
    cases = [({"limit": 0}, "limit"), ({"limit": "many"}, "limit"), ({"offset": -1}, "offset")]
    cases.append(({"offset": 10**20}, "offset"))  # found by the fuzz test: it overflowed SQLite's integers
    for params, field in cases:
        response = client.get("/api/conversations", params=params)
        assert response.status_code == 422 and error_of(response)[1] == field
    conversation = client.post("/api/conversations", json={}).json()
    empty = client.patch(f"/api/conversations/{conversation['id']}", json={})
    assert empty.status_code == 422 and "title" in error_of(empty)[0]
    unknown = client.patch("/api/conversations/nope", json={"title": "x"})
    assert unknown.status_code == 404 and error_of(unknown)[1] == "conversation_id"


def test_turn_routes_check_ids_and_content_before_anything_else(client: TestClient):
    conversation = client.post("/api/conversations", json={}).json()
    url = f"/api/conversations/{conversation['id']}"
    for body, field in [
        ({"content": "   "}, "content"),
        ({}, "content"),
        ({"content": "hi", "top_p": 2}, "top_p"),
    ]:
        response = client.post(f"{url}/messages", json=body)
        assert response.status_code == 422 and error_of(response)[1] == field
    assert client.post("/api/conversations/nope/stop").status_code == 404
    assert client.post(f"{url}/stop").json() == {"stopped": False}
    assert client.get(url).json()["messages"] == []


def test_without_a_model_conversations_work_and_generation_says_why_not(client: TestClient):
    health = client.get("/health")
    assert health.status_code == 503
    assert health.json()["database"] == "ok" and "no-model-here" in health.json()["model"]
    conversation = client.post("/api/conversations", json={}).json()
    response = client.post(f"/api/conversations/{conversation['id']}/messages", json={"content": "hello"})
    assert response.status_code == 503 and "could not be loaded" in error_of(response)[0]
    assert client.get("/api/models").status_code == 503
    assert client.get("/v1/models").status_code == 503
    assert client.get(f"/api/conversations/{conversation['id']}").json()["messages"] == []


def test_body_size_limit_answers_413(tmp_path: Path):
    with TestClient(create_app(make_settings(tmp_path, max_body_bytes=200))) as client:
        big = {"title": "x" * 150, "system_prompt": "y" * 100}
        response = client.post("/api/conversations", json=big)
        assert response.status_code == 413 and error_of(response)[1] == "body"

        def chunks():  # no Content-Length: the limit is enforced while reading
            yield b'{"system_prompt": "'
            yield b"z" * 300
            yield b'"}'

        streamed = client.post(
            "/api/conversations", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert streamed.status_code == 413 and "200 bytes" in error_of(streamed)[0]
        assert client.post("/api/conversations", json={"title": "small"}).status_code == 201


def test_api_key_guards_everything_but_health(tmp_path: Path):
    app = create_app(make_settings(tmp_path, api_key="s3cret"))
    routes = [
        (method.upper(), re.sub(r"\{[^}]+\}", "x", path))
        for path, operations in app.openapi()["paths"].items()
        for method in operations
        if path != "/health"
    ]
    assert {("POST", "/api/conversations/x/messages"), ("POST", "/v1/chat/completions")} <= set(routes)
    with TestClient(app) as client:
        for method, path in routes:  # SSE and /v1 included: every route in the schema
            response = client.request(method, path)
            assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
            assert error_of(response)[1] == "authorization"
            wrong = client.request(method, path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
        good = {"Authorization": "Bearer s3cret"}
        assert client.get("/api/conversations", headers=good).status_code == 200
        assert client.get("/metrics", headers=good).status_code == 200
        assert client.get("/health").status_code == 503  # not 401: the model is missing, and it says so
        preflight = client.options(
            "/api/conversations",
            headers={"Origin": "http://ui.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "http://ui.example"


def test_cors_allows_only_the_configured_origins(client: TestClient):
    allowed = client.get("/api/conversations", headers={"Origin": "http://ui.example"})
    assert allowed.headers["access-control-allow-origin"] == "http://ui.example"
    other = client.get("/api/conversations", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_the_built_ui_is_served_at_the_root(tmp_path: Path):
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<html>NanoPrime chat</html>")
    with TestClient(create_app(make_settings(tmp_path, web_dir=web, api_key="k"))) as client:
        page = client.get("/")
        assert page.status_code == 200 and "NanoPrime chat" in page.text
        assert client.get("/api/conversations", headers={"Authorization": "Bearer k"}).status_code == 200
        assert client.get("/health").json()["database"] == "ok"
    with TestClient(create_app(make_settings(tmp_path))) as client:
        assert client.get("/").status_code == 404


def test_start_marks_answers_left_streaming_as_interrupted(tmp_path: Path):
    settings = make_settings(tmp_path)
    engine = create_db_engine(settings.database_url)
    migrate(engine)
    sessions = create_session_factory(engine)
    with session_scope(sessions) as session:
        conversation = store.create_conversation(session, title="t", system_prompt="", settings={}, model="m")
        answer = {"settings": {}, "seed": 1, "model_name": "m", "weights_hash": "0" * 64}
        rows = store.begin_turn(session, conversation.id, "hello?", lambda _c, _h: answer)
    engine.dispose()
    with TestClient(create_app(settings)) as client:
        messages = client.get(f"/api/conversations/{rows.conversation_id}").json()["messages"]
    assert [(m["role"], m["status"]) for m in messages] == [
        ("user", "complete"),
        ("assistant", "interrupted"),
    ]


def test_health_reports_a_database_that_went_away(tmp_path: Path, postgres_url: str):
    url = postgres_url.rsplit("/", 1)[0] + "/postgres"
    name = f"health_{tmp_path.name[-20:].replace('-', '_').lower()}"
    admin = create_db_engine(url).execution_options(isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        settings = make_settings(tmp_path, database_url=postgres_url.rsplit("/", 1)[0] + f"/{name}")
        with TestClient(create_app(settings)) as client:
            assert client.get("/health").json()["database"] == "ok"
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            health = client.get("/health")
            assert health.status_code == 503
            assert health.json()["database"].startswith("down:") and "database" in health.json()["message"]
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NANOPRIME_PORT", "9001")
    monkeypatch.setenv("NANOPRIME_CORS_ORIGINS", "http://a.example, http://b.example")
    monkeypatch.setenv("DATABASE_URL", "postgresql://u@db/nano")
    monkeypatch.setenv("NANOPRIME_API_KEY", "")
    settings = Settings()
    assert settings.port == 9001
    assert settings.cors_origins == ["http://a.example", "http://b.example"]
    assert settings.database_url == "postgresql://u@db/nano"
    assert settings.api_key is None
    monkeypatch.setenv("NANOPRIME_DATABASE_URL", "sqlite:///other.db")
    assert Settings().database_url == "sqlite:///other.db"


def test_a_nul_character_anywhere_is_a_422_naming_the_field_on_every_database(tmp_path: Path, db_url: str):
    """PostgreSQL cannot store or even compare text holding U+0000; SQLite can. Both answer alike: a 422."""
    with TestClient(create_app(make_settings(tmp_path, database_url=db_url))) as client:
        conversation_id = client.post("/api/conversations", json={}).json()["id"]
        url = f"/api/conversations/{conversation_id}"
        refused = {
            "title": client.post("/api/conversations", json={"title": "a\x00b"}),
            "system_prompt": client.patch(url, json={"system_prompt": "\x00"}),
            "settings.stop[0]": client.post("/api/conversations", json={"settings": {"stop": ["x\x00"]}}),
            "content": client.post(f"{url}/messages", json={"content": "ciao\x00"}),
            "q": client.get("/api/conversations", params={"q": "a\x00"}),
            "conversation_id": client.get("/api/conversations/a%00b"),
            "message_id": client.post(f"{url}/messages/m%00/edit", json={"content": "x"}),
        }
        for field, response in refused.items():
            assert response.status_code == 422, (field, response.text)
            message, param = error_of(response)
            assert param == field and "NUL" in message
        assert client.delete("/api/conversations/a%00b").status_code == 422
        assert client.get(url).json()["messages"] == []
