"""Chat turns over SSE: send a message, regenerate the last answer, edit a user message, stop.

Each streaming route answers with `text/event-stream` events meta, thinking*, token*, then done or error;
errors found before the stream starts (unknown ids, bad settings, a prompt over the context, a full queue) are
ordinary JSON error responses with their 4xx status instead.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Annotated

import anyio
from fastapi import APIRouter, Body, Depends
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.concurrency import run_in_threadpool

from backend import store
from backend.db import session_scope
from backend.routes.deps import get_sessions, get_turns
from backend.schemas import MessageCreate, Text, TurnRequest
from backend.turns import Turn, Turns

router = APIRouter(prefix="/api/conversations", tags=["chat"])

# Proxies (nginx and friends) must pass each event on as it comes, not collect the response first.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
# When the server stops, running answers are cancelled and get this long to send their last events.
SHUTDOWN_GRACE_S = 5.0

TurnsDep = Annotated[Turns, Depends(get_turns)]


def sse_response(events: Callable[[anyio.Event], AsyncIterator[ServerSentEvent]]) -> EventSourceResponse:
    """An SSE response whose body gets the server's shutdown event, to end cleanly instead of being cut."""
    shutdown = anyio.Event()
    return EventSourceResponse(
        events(shutdown),
        headers=SSE_HEADERS,
        ping=15,
        shutdown_event=shutdown,
        shutdown_grace_period=SHUTDOWN_GRACE_S,
    )


def event_stream(turn: Turn) -> EventSourceResponse:
    return sse_response(turn.stream)


@router.post("/{conversation_id}/messages", response_class=EventSourceResponse)
async def send_message(conversation_id: Text, body: MessageCreate, turns: TurnsDep) -> EventSourceResponse:
    """Add a user message and stream the answer."""
    turn = await turns.start(
        conversation_id,
        lambda session, plan: store.begin_turn(session, conversation_id, body.content, plan),
        body,
        new_user_message=True,
    )
    return event_stream(turn)


@router.post("/{conversation_id}/regenerate", response_class=EventSourceResponse)
async def regenerate(
    conversation_id: Text, turns: TurnsDep, body: Annotated[TurnRequest | None, Body()] = None
) -> EventSourceResponse:
    """Replace the last answer with a new one to the same user message."""
    turn = await turns.start(
        conversation_id,
        lambda session, plan: store.begin_regenerate(session, conversation_id, plan),
        body or TurnRequest(),
        new_user_message=False,
    )
    return event_stream(turn)


@router.post("/{conversation_id}/messages/{message_id}/edit", response_class=EventSourceResponse)
async def edit_message(
    conversation_id: Text, message_id: Text, body: MessageCreate, turns: TurnsDep
) -> EventSourceResponse:
    """Rewrite a user message, drop the messages after it, and stream a new answer."""
    turn = await turns.start(
        conversation_id,
        lambda session, plan: store.begin_edit(session, conversation_id, message_id, body.content, plan),
        body,
        new_user_message=False,
    )
    return event_stream(turn)


@router.post("/{conversation_id}/stop")
async def stop(
    conversation_id: Text, turns: TurnsDep, sessions: Annotated[sessionmaker[Session], Depends(get_sessions)]
) -> dict[str, bool]:
    """Stop the running answer; it is stored with what was generated so far, as "stopped"."""
    if turns.stop(conversation_id):  # a running answer stops even while the database is unavailable
        return {"stopped": True}

    def exists() -> None:
        with session_scope(sessions) as session:
            store.get_conversation(session, conversation_id)

    await run_in_threadpool(exists)
    return {"stopped": False}
