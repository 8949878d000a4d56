"""A real uvicorn server on a free loopback port, in a thread of the test process, and an SSE reader.

Streaming is tested over real sockets: that is where buffering, disconnects and concurrency show. The reader
parses the event stream the way a browser's EventSource does (lines, `event:`/`data:` fields, blank line ends
an event, `:` comments ignored), whatever line endings the server uses.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
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


@dataclass
class SSEEvent:
    event: str
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


def iter_sse(lines: Iterator[str]) -> Iterator[SSEEvent]:
    """Events from the lines of an event stream (httpx's iter_lines splits on \\r\\n, \\n and \\r)."""
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
