"""Databases for the backend tests: a fresh SQLite file per test, one PostgreSQL database per test session.

PostgreSQL is the server at 127.0.0.1:5432 (trust auth, user postgres or root). If it is installed but
stopped, it is started; if it is not installed the Postgres tests skip with the reason, unless
NANOPRIME_REQUIRE_POSTGRES=1 (CI), where a skip would hide a broken setup and becomes a failure. A test that
stops the database gets a private PostgreSQL server instead (`private_postgres`), under the same rule.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import psycopg
import pytest
import torch
from sqlalchemy import Engine, text

from backend.db import create_db_engine, migrate
from backend.settings import Settings
from tests.backend.live import LiveServer
from tests.backend.private_postgres import BINARIES as BINARIES_ROOT
from tests.backend.private_postgres import PrivatePostgres, find_binaries, service_user

PG_HOST, PG_PORT = "127.0.0.1", 5432
PG_CONFIG_DIR = Path("/etc/postgresql")


def _connect_admin() -> tuple[psycopg.Connection, str]:
    error: Exception | None = None
    for user in ("postgres", "root"):
        try:
            connection = psycopg.connect(
                host=PG_HOST, port=PG_PORT, user=user, dbname="postgres", autocommit=True, connect_timeout=3
            )
            return connection, user
        except psycopg.OperationalError as failure:
            error = failure
    assert error is not None
    raise error


def _start_installed_server() -> None:
    versions = sorted(p.name for p in PG_CONFIG_DIR.iterdir()) if PG_CONFIG_DIR.is_dir() else []
    if versions:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "start"],
            check=False,
            capture_output=True,
            timeout=60,
        )


def _unavailable(reason: str) -> None:
    if os.environ.get("NANOPRIME_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL tests must run here (NANOPRIME_REQUIRE_POSTGRES=1) but cannot: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database created for this test session on the local PostgreSQL server, dropped afterwards."""
    try:
        admin, user = _connect_admin()
    except psycopg.OperationalError:
        if not PG_CONFIG_DIR.is_dir():
            _unavailable(f"PostgreSQL is not installed (no {PG_CONFIG_DIR}) and nothing listens on {PG_PORT}")
        _start_installed_server()
        try:
            admin, user = _connect_admin()
        except psycopg.OperationalError as error:
            _unavailable(f"PostgreSQL is installed but could not be reached or started: {error}")
    name = f"nanoprime_test_{os.getpid()}_{secrets.token_hex(4)}"
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"postgresql://{user}@{PG_HOST}:{PG_PORT}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    """A running PostgreSQL server of this test's own (it may stop it), removed afterwards."""
    binaries, user = find_binaries(), service_user()
    if binaries is None:
        _unavailable(f"no PostgreSQL server binaries (initdb, pg_ctl) under {BINARIES_ROOT}")
    if user is None:
        _unavailable("running as root and there is no postgres user to run a private PostgreSQL server")
    server = PrivatePostgres(binaries, user)
    try:
        server.start()
        yield server
    finally:
        server.remove()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'nanoprime.db'}"


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest) -> str:
    """Each storage test runs on both databases; on PostgreSQL the tables are emptied first."""
    if request.param == "sqlite":
        return request.getfixturevalue("sqlite_url")
    url = request.getfixturevalue("postgres_url")
    engine = create_db_engine(url)
    migrate(engine)
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM messages"))
        connection.execute(text("DELETE FROM conversations"))
    engine.dispose()
    return url


@pytest.fixture
def db_engine(db_url: str) -> Iterator[Engine]:
    engine = create_db_engine(db_url)
    migrate(engine)
    yield engine
    engine.dispose()


@pytest.fixture(scope="session")
def one_torch_thread() -> Iterator[None]:
    """The tiny model gains nothing from threads, and on a shared two-core machine spinning threads thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def serving_values(model_dir: Path, database_url: str) -> dict[str, object]:
    """The test servers' settings: the given model and database, no web UI, small limits."""
    return {
        "model_dir": model_dir,
        "database_url": database_url,
        "web_dir": model_dir / "no-web-ui",
        "max_batch_size": 8,
        "max_queue": 32,
        "default_max_new_tokens": 32,
    }


def serving_settings(model_dir: Path, database_url: str, **overrides) -> Settings:
    return Settings(**{**serving_values(model_dir, database_url), **overrides})


def serving_env(model_dir: Path, database_url: str, **overrides: object) -> dict[str, str]:
    """The same settings as environment variables, for a server started as its own process."""
    values = {**serving_values(model_dir, database_url), **overrides}
    return {f"NANOPRIME_{name.upper()}": str(value) for name, value in values.items()}


@pytest.fixture(scope="session")
def live_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, one_torch_thread
) -> Iterator[LiveServer]:
    """One real server for the streaming tests: the tiny model, a SQLite file, default limits."""
    database = tmp_path_factory.mktemp("live") / "live.db"
    with LiveServer(serving_settings(tiny_model_dir, f"sqlite:///{database}")) as server:
        yield server


@pytest.fixture
def client(live_server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live_server.url, timeout=60) as http:
        yield http
