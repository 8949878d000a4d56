"""A PostgreSQL server of a test's own, which the test may stop and start again.

The shared server at 127.0.0.1:5432 serves other tests and must stay up, so a test that takes the database
away runs its own: `initdb` into a fresh directory with the installed binaries (Debian's
/usr/lib/postgresql/<version>/bin), trust auth on a free loopback port. PostgreSQL refuses to run as root; as
root the server runs as the `postgres` system user, which owns the directory.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.backend.live import free_port

BINARIES = Path("/usr/lib/postgresql")


def find_binaries() -> Path | None:
    """The newest installed version's bin directory (the one with initdb and pg_ctl), if any."""
    versions = sorted(
        (path for path in BINARIES.glob("*/bin") if (path / "initdb").is_file()),
        key=lambda path: int(path.parent.name) if path.parent.name.isdigit() else 0,
    )
    return versions[-1] if versions else None


def service_user() -> str | None:
    """Who runs the server: this user, or `postgres` when this is root (None if that user is missing)."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        return pwd.getpwnam("postgres").pw_name
    except KeyError:
        return None


class PrivatePostgres:
    def __init__(self, binaries: Path, user: str) -> None:
        self.binaries = binaries
        self.user = user
        self.port = free_port()
        # Not under pytest's tmp_path: as root that is a 0700 directory the postgres user cannot enter.
        self.root = Path(tempfile.mkdtemp(prefix="nanoprime-pg-"))
        self.data = self.root / "data"
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        shutil.chown(self.root, user=user)
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.binaries / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", self.user, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{tool} failed ({result.returncode}): {result.stderr or result.stdout}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w", "start"
        )

    def stop(self) -> None:
        """A fast shutdown: open connections are closed, as when the database host goes away."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
