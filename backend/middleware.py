"""ASGI middleware: request metrics, the optional API key, and the request body limit.

They are plain ASGI callables rather than BaseHTTPMiddleware so streamed (SSE) responses pass through
untouched and a client disconnect still reaches the route.
"""

from __future__ import annotations

import hmac

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.errors import error_response
from backend.metrics import Metrics

# Everything the API key protects: the whole API but /health. The static UI is not behind the key, because a
# browser cannot send an Authorization header when it loads a page; the UI sends the key on its API calls.
PROTECTED_PREFIXES = ("/api", "/v1", "/metrics", "/docs", "/redoc", "/openapi.json")


CLIENT_CLOSED = 499  # the status nginx logs for a client that left before the response began


class RequestMetrics:
    """Counts every answered request by method, route template and status (after the inner layers ran).

    A request whose client disconnected before the response began is counted as 499, not as the status the
    route then returned to nobody (a non-streamed completion cancelled by the disconnect, for instance).
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        started = left_first = False

        async def receive_and_note() -> Message:
            nonlocal left_first
            message = await receive()
            if message["type"] == "http.disconnect" and not started:
                left_first = True
            return message

        async def send_and_note(message: Message) -> None:
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            await self.app(scope, receive_and_note, send_and_note)
        finally:
            status = CLIENT_CLOSED if left_first else status
            route = scope.get("route")
            template = getattr(route, "path", None) or ("static" if status < 400 else "unmatched")
            self.metrics.requests.labels(scope["method"], template, str(status)).inc()


class ApiKey:
    """With a key configured, protected paths need `Authorization: Bearer <key>` (CORS preflights pass)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self.expected = f"Bearer {key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] != "OPTIONS"
            and scope["path"].startswith(PROTECTED_PREFIXES)
        ):
            given = Headers(scope=scope).get("authorization", "").encode()
            if not hmac.compare_digest(given, self.expected):
                message = (
                    "authorization: a valid API key is required (send the header Authorization: Bearer <key>)"
                )
                response = error_response(
                    401,
                    message,
                    "authentication_error",
                    "authorization",
                    headers={"WWW-Authenticate": "Bearer"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuses request bodies over `max_bytes` with 413, by Content-Length up front or while reading."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        message = f"body: the request body is larger than the limit of {self.max_bytes} bytes"
        length = Headers(scope=scope).get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            await error_response(413, message, "invalid_request_error", "body")(scope, receive, send)
            return
        received = 0

        async def counted_receive() -> Message:
            nonlocal received
            incoming = await receive()
            if incoming["type"] == "http.request":
                received += len(incoming.get("body", b""))
                if received > self.max_bytes:
                    # FastAPI passes HTTPExceptions raised while reading the body on to the error handlers.
                    raise HTTPException(413, message)
            return incoming

        await self.app(scope, counted_receive, send)
