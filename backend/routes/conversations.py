"""Conversations: create, list (newest first, paged, searchable), get, rename, delete, export."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Response
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from backend import store
from backend.db import session_scope
from backend.export import to_markdown
from backend.routes.deps import get_runtime, get_sessions, get_settings, get_turns
from backend.runtime import Runtime
from backend.schemas import (
    MAX_COUNT,
    ConversationCreate,
    ConversationDetail,
    ConversationPage,
    ConversationSummary,
    ConversationUpdate,
    Text,
)
from backend.settings import Settings
from backend.turns import Turns, check_max_tokens

router = APIRouter(prefix="/api/conversations", tags=["conversations"])

Sessions = Annotated[sessionmaker[Session], Depends(get_sessions)]


@router.post("", status_code=201, response_model=ConversationDetail)
def create_conversation(
    body: ConversationCreate,
    sessions: Sessions,
    runtime: Annotated[Runtime, Depends(get_runtime)],
    settings: Annotated[Settings, Depends(get_settings)],
) -> ConversationDetail:
    given = body.settings.given() if body.settings else {}
    check_max_tokens(given, settings.max_new_tokens_limit)
    model = runtime.info.name if runtime.info else settings.model_dir.name
    with session_scope(sessions) as session:
        conversation = store.create_conversation(
            session, title=body.title, system_prompt=body.system_prompt, settings=given, model=model
        )
        return ConversationDetail.of(conversation)


@router.get("", response_model=ConversationPage)
def list_conversations(
    sessions: Sessions,
    q: Annotated[Text | None, Query(max_length=200, description="search titles and message text")] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 30,
    offset: Annotated[int, Query(ge=0, le=MAX_COUNT)] = 0,
) -> ConversationPage:
    query = q.strip() if q else None
    with session_scope(sessions) as session:
        conversations, total = store.list_conversations(session, query=query, limit=limit, offset=offset)
        snippets = store.search_snippets(session, [c.id for c in conversations], query) if query else {}
        items = [
            ConversationSummary.model_validate(c).model_copy(update={"snippet": snippets.get(c.id)})
            for c in conversations
        ]
    return ConversationPage(items=items, total=total, limit=limit, offset=offset)


@router.get("/{conversation_id}", response_model=ConversationDetail)
def get_conversation(conversation_id: Text, sessions: Sessions) -> ConversationDetail:
    with session_scope(sessions) as session:
        return ConversationDetail.of(store.get_conversation(session, conversation_id))


@router.patch("/{conversation_id}", response_model=ConversationDetail)
def update_conversation(
    conversation_id: Text,
    body: ConversationUpdate,
    sessions: Sessions,
    settings: Annotated[Settings, Depends(get_settings)],
) -> ConversationDetail:
    changes = body.model_dump(include={"title", "system_prompt"}, exclude_none=True)
    if body.settings is not None:
        changes["settings"] = body.settings.given()
        check_max_tokens(changes["settings"], settings.max_new_tokens_limit)
    with session_scope(sessions) as session:
        store.update_conversation(session, conversation_id, changes)
    with session_scope(sessions) as session:
        return ConversationDetail.of(store.get_conversation(session, conversation_id))


@router.delete("/{conversation_id}", status_code=204)
async def delete_conversation(
    conversation_id: Text, sessions: Sessions, turns: Annotated[Turns, Depends(get_turns)]
) -> Response:
    """Delete it with its messages; an answer still running is stopped first."""
    turns.stop(conversation_id)

    def delete() -> None:
        with session_scope(sessions) as session:
            store.delete_conversation(session, conversation_id)

    await run_in_threadpool(delete)
    return Response(status_code=204)


@router.get("/{conversation_id}/export")
def export_conversation(
    conversation_id: Text,
    sessions: Sessions,
    format: Annotated[Literal["json", "markdown"], Query()] = "json",
) -> Response:
    with session_scope(sessions) as session:
        conversation = ConversationDetail.of(store.get_conversation(session, conversation_id))
    if format == "markdown":
        body, media_type, suffix = to_markdown(conversation), "text/markdown; charset=utf-8", "md"
    else:
        body, media_type, suffix = conversation.model_dump_json(indent=2), "application/json", "json"
    disposition = f'attachment; filename="conversation-{conversation_id}.{suffix}"'
    return Response(body, media_type=media_type, headers={"Content-Disposition": disposition})
