"""A real uvicorn server on a free loopback port (in a thread of the test process, or as its own process),
an SSE reader and a /metrics reader.

Streaming is tested over real sockets: that is where buffering, disconnects and concurrency show. The server
runs as a process (`python -m backend.server`, configured by environment as in production) where a test kills
it, reads its memory or its logs. The reader parses the event stream the way a browser's EventSource does
(lines, `event:`/`data:` fields, blank line ends an event, `:` comments ignored), whatever line endings the
server uses.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from backend.app import create_app
from backend.settings import Settings


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LiveServer:
    def __init__(self, settings: Settings) -> None:
        self.app = create_app(settings.model_copy(update={"host": "127.0.0.1", "port": free_port()}))
        settings = self.app.state.settings
        self.url = f"http://127.0.0.1:{settings.port}"
        config = uvicorn.Config(self.app, host=settings.host, port=settings.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="uvicorn", daemon=True)

    def start(self, wait_ready: bool = True, timeout: float = 60) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        while wait_ready and httpx.get(f"{self.url}/health").status_code != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready: {httpx.get(f'{self.url}/health').text}")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    @property
    def runtime(self):
        return self.app.state.runtime

    def __enter__(self) -> LiveServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class ServerProcess:
    """`python -m backend.server` with NANOPRIME_* settings from `env`, one torch thread, output in `log`."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "OMP_NUM_THREADS": "1",
            "NANOPRIME_HOST": "127.0.0.1",
            "NANOPRIME_API_KEY": "",
            **env,
            "NANOPRIME_PORT": str(self.port),
        }
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> ServerProcess:
        """Start the process and wait until /health answers 200."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "backend.server"], env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}:\n{self.output()}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/health", timeout=5).status_code == 200:
                    return self
            time.sleep(0.1)
        raise RuntimeError(f"the server was not healthy within {timeout:.0f} s:\n{self.output()}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def rss_bytes(self) -> int:
        """Resident memory of the server process now (VmRSS in /proc/<pid>/status)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS line")

    def signal(self, number: int) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    def wait(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout)

    def stop(self) -> None:
        """SIGTERM (a graceful stop), then SIGKILL if it is still there after 30 s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def output(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def metric(text: str, name: str) -> float:
    """The value of the sample `name` (labels included, as Prometheus writes them) in a /metrics text."""
    return float(next(line for line in text.splitlines() if line.startswith(name + " ")).split()[-1])


@dataclass
class SSEEvent:
    event: str
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


def iter_sse(lines: Iterator[str]) -> Iterator[SSEEvent]:
    """Events from the lines of an event stream (httpx's iter_lines splits like str.splitlines)."""
    name, data = "", []
    for line in lines:
        if line == "":
            if data:
                yield SSEEvent(name or "message", "\n".join(data))
            name, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)


def stream_events(client: httpx.Client, url: str, body: dict[str, Any] | None = None) -> list[SSEEvent]:
    """POST and read the whole event stream; the response must be a 200 event stream."""
    with client.stream("POST", url, json=body) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(iter_sse(response.iter_lines()))
