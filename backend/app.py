"""The FastAPI application: `create_app(settings)` wires storage, the model runtime, routes and middleware.

At start the database is migrated and answers a crashed server left "streaming" become "interrupted"; the
model then loads in a worker thread while the server already answers (/health is 503 until it is ready). At
stop, running answers are cancelled and stored as stopped before the engine shuts down.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from backend import store
from backend.db import create_db_engine, create_session_factory, migrate, session_scope
from backend.errors import ERROR_RESPONSES, install_error_handlers
from backend.middleware import ApiKey, BodyLimit, RequestMetrics
from backend.routes import chat, conversations, openai, ops
from backend.runtime import Runtime
from backend.settings import Settings
from backend.turns import Turns

log = logging.getLogger("nanoprime.app")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    db_engine = create_db_engine(settings.database_url)
    sessions = create_session_factory(db_engine)
    runtime = Runtime(settings)
    turns = Turns(runtime, sessions)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(migrate, db_engine)
        interrupted = await run_in_threadpool(_recover, sessions)
        if interrupted:
            log.warning("marked %d answer(s) left streaming by an earlier run as interrupted", interrupted)
        loading = asyncio.create_task(asyncio.to_thread(runtime.load), name="load model")
        try:
            yield
        finally:
            await loading
            await turns.shutdown()
            await run_in_threadpool(runtime.shutdown)
            db_engine.dispose()

    app = FastAPI(
        title="NanoPrime",
        summary="Chat with a pocket-size hybrid language model: native SSE API and OpenAI-compatible API.",
        version="0.1.0",
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.state.settings = settings
    app.state.db_engine = db_engine
    app.state.sessions = sessions
    app.state.runtime = runtime
    app.state.turns = turns
    install_error_handlers(app)
    for module in (conversations, chat, openai, ops):
        app.include_router(module.router)
    if settings.web_dir.is_dir():
        app.mount("/", StaticFiles(directory=settings.web_dir, html=True), name="web")

    # Outermost last: CORS answers preflights and decorates every answer (401 and 413 included), the metrics
    # count every request, and the key is checked before a body is read.
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    if settings.api_key:
        app.add_middleware(ApiKey, key=settings.api_key)
    app.add_middleware(RequestMetrics, metrics=runtime.metrics)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "Accept"],
            expose_headers=["Retry-After", "Content-Disposition"],
        )
    return app


def _recover(sessions) -> int:
    with session_scope(sessions) as session:
        return store.mark_interrupted(session)
