"""docker-compose.yml validates, and says what the deployment needs: a PostgreSQL with a volume and a health
check, and a backend that waits for it to be healthy and reaches it with the password from the environment.

Validating needs the compose tool but no Docker engine: `docker compose` (the plugin) or Debian's
`docker-compose`. A developer machine without either skips; CI installs it (.ci/run), so there it must run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def compose_command() -> list[str]:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy:
        return [legacy]
    reason = "neither `docker compose` nor `docker-compose` is installed (apt-get install docker-compose)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"CI must validate docker-compose.yml but cannot: {reason}")
    pytest.skip(reason)


def compose_config(extra_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`compose config` on the project's file with only PATH, HOME and `extra_env` set."""
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), **extra_env}
    return subprocess.run(
        [*compose_command(), "-f", str(COMPOSE_FILE), "config", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=COMPOSE_FILE.parent,
        timeout=60,
    )


def test_the_compose_file_validates_and_wires_postgres_to_the_backend():
    quiet = compose_config({"POSTGRES_PASSWORD": "pw-from-env"}, "-q")
    assert quiet.returncode == 0, quiet.stderr

    resolved = compose_config({"POSTGRES_PASSWORD": "pw-from-env", "NANOPRIME_API_KEY": "key-from-env"})
    assert resolved.returncode == 0, resolved.stderr
    services = yaml.safe_load(resolved.stdout)["services"]
    db, backend = services["db"], services["backend"]
    assert db["image"].startswith("postgres:")
    assert db["environment"]["POSTGRES_PASSWORD"] == "pw-from-env"
    assert any(volume.startswith("pgdata:/var/lib/postgresql/data") for volume in _volumes(db))
    assert "pg_isready" in " ".join(db["healthcheck"]["test"])
    assert backend["depends_on"]["db"]["condition"] == "service_healthy"
    assert backend["environment"]["NANOPRIME_DATABASE_URL"].startswith("postgresql+psycopg://")
    assert ":pw-from-env@db:5432/" in backend["environment"]["NANOPRIME_DATABASE_URL"]
    assert backend["environment"]["NANOPRIME_API_KEY"] == "key-from-env"
    assert "/health" in " ".join(backend["healthcheck"]["test"])
    assert [int(port["target"]) for port in backend["ports"]] == [8000]  # both tools print the long syntax


def test_the_compose_file_refuses_to_start_without_a_database_password():
    missing = compose_config({}, "-q")
    assert missing.returncode != 0
    assert "POSTGRES_PASSWORD" in missing.stderr


def _volumes(service: dict) -> list[str]:
    """Volumes in either spelling compose versions print: "src:dst[:mode]" or {source, target}."""
    return [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in service["volumes"]]
