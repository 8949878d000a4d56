"""Where conversations and messages are read and written.

A chat turn touches the database twice. `begin_*` commits the user's message together with a pending
assistant row in status "streaming" (so the message ids can be announced before the first token, and the
user's words survive whatever happens next); `finish_turn` fills that row in one write when the turn ends,
however it ends. The functions take a Session and leave committing to the caller (see db.session_scope).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, exists, func, or_, select, update
from sqlalchemy.orm import Session, selectinload

from backend import orm
from backend.errors import Conflict, NotFound

TITLE_LENGTH = 60
USAGE_COLUMNS = ("prompt_tokens", "completion_tokens", "thinking_tokens", "answer_tokens")
SNIPPET_CONTEXT = 40

# Decides a new answer's fields (settings, seed, model identity) from the conversation and the prompt history,
# or raises an APIError (a prompt over the context, say) so nothing of the turn is written.
Plan = Callable[["orm.Conversation", list[dict[str, str]]], dict[str, Any]]


@dataclass
class TurnRows:
    """What a started turn needs to know about its rows: ids and the prompt's conversation history."""

    conversation_id: str
    user_message_id: str
    assistant_message_id: str
    history: list[dict[str, str]]
    answer: dict[str, Any]


def create_conversation(
    session: Session, *, title: str | None, system_prompt: str, settings: dict[str, Any], model: str
) -> orm.Conversation:
    conversation = orm.Conversation(
        title=(title or "").strip(), system_prompt=system_prompt, settings=settings, model=model
    )
    session.add(conversation)
    session.flush()
    return conversation


def list_conversations(
    session: Session, *, query: str | None, limit: int, offset: int
) -> tuple[list[orm.Conversation], int]:
    """Newest activity first; `query` matches titles and message text, case-insensitively."""
    statement = select(orm.Conversation)
    if query:
        pattern = _like(query)
        in_messages = exists().where(
            orm.Message.conversation_id == orm.Conversation.id,
            orm.Message.content.ilike(pattern, escape="\\"),
        )
        statement = statement.where(or_(orm.Conversation.title.ilike(pattern, escape="\\"), in_messages))
    total = session.scalar(select(func.count()).select_from(statement.subquery())) or 0
    page = statement.order_by(orm.Conversation.updated_at.desc(), orm.Conversation.id.desc()).limit(limit)
    return list(session.scalars(page.offset(offset))), total


def search_snippets(session: Session, conversation_ids: list[str], query: str) -> dict[str, str]:
    """For each conversation, an excerpt around the first message text that matches `query`."""
    statement = (
        select(orm.Message.conversation_id, orm.Message.content)
        .where(
            orm.Message.conversation_id.in_(conversation_ids),
            orm.Message.content.ilike(_like(query), escape="\\"),
        )
        .order_by(orm.Message.position)
    )
    snippets: dict[str, str] = {}
    for conversation_id, content in session.execute(statement):
        if conversation_id not in snippets:
            snippets[conversation_id] = excerpt(content, query)
    return snippets


def excerpt(text: str, query: str) -> str:
    """A one-line window of `text` around the first case-insensitive occurrence of `query`."""
    index = max(text.lower().find(query.lower()), 0)
    start, end = max(index - SNIPPET_CONTEXT, 0), index + len(query) + SNIPPET_CONTEXT
    window = " ".join(text[start:end].split())
    return ("…" if start > 0 else "") + window + ("…" if end < len(text) else "")


def get_conversation(session: Session, conversation_id: str) -> orm.Conversation:
    conversation = session.scalar(
        select(orm.Conversation)
        .where(orm.Conversation.id == conversation_id)
        .options(selectinload(orm.Conversation.messages))
    )
    if conversation is None:
        raise NotFound(f"conversation_id: no conversation with id {conversation_id!r}", "conversation_id")
    return conversation


def update_conversation(session: Session, conversation_id: str, changes: dict[str, Any]) -> orm.Conversation:
    conversation = get_conversation(session, conversation_id)
    for name, value in changes.items():
        setattr(conversation, name, value.strip() if name == "title" else value)
    conversation.updated_at = orm.utcnow()
    session.flush()
    return conversation


def delete_conversation(session: Session, conversation_id: str) -> None:
    result = session.execute(delete(orm.Conversation).where(orm.Conversation.id == conversation_id))
    if result.rowcount == 0:
        raise NotFound(f"conversation_id: no conversation with id {conversation_id!r}", "conversation_id")


def begin_turn(session: Session, conversation_id: str, content: str, plan: Plan) -> TurnRows:
    """Append the user's message and a pending answer row; the first message titles the conversation."""
    conversation = get_conversation(session, conversation_id)
    _refuse_if_streaming(conversation)
    user = orm.Message(
        conversation_id=conversation.id,
        position=_next_position(conversation),
        role="user",
        content=content,
        status=orm.COMPLETE,
    )
    conversation.messages.append(user)
    if not conversation.title:
        conversation.title = make_title(content)
    return _add_pending_answer(session, conversation, user, plan)


def begin_regenerate(session: Session, conversation_id: str, plan: Plan) -> TurnRows:
    """Replace the last answer with a new "streaming" answer row that answers the same user message."""
    conversation = get_conversation(session, conversation_id)
    _refuse_if_streaming(conversation)
    messages = conversation.messages
    if messages and messages[-1].role == "assistant":
        session.delete(messages[-1])
        session.flush()
        session.expire(conversation, ["messages"])
        messages = conversation.messages
    if not messages:
        raise Conflict("conversation_id: the conversation has no user message to answer", "conversation_id")
    return _add_pending_answer(session, conversation, messages[-1], plan)


def begin_edit(session: Session, conversation_id: str, message_id: str, content: str, plan: Plan) -> TurnRows:
    """Rewrite a user message, drop everything after it, and start a new answer to it."""
    conversation = get_conversation(session, conversation_id)
    _refuse_if_streaming(conversation)
    target = next((message for message in conversation.messages if message.id == message_id), None)
    if target is None:
        raise NotFound(f"message_id: no message with id {message_id!r} in this conversation", "message_id")
    if target.role != "user":
        raise Conflict("message_id: only a user message can be edited", "message_id")
    target.content = content
    target.updated_at = orm.utcnow()
    session.execute(
        delete(orm.Message).where(
            orm.Message.conversation_id == conversation.id, orm.Message.position > target.position
        )
    )
    session.flush()
    session.expire(conversation, ["messages"])
    return _add_pending_answer(session, conversation, target, plan)


def finish_turn(session: Session, assistant_message_id: str, outcome: dict[str, Any]) -> bool:
    """Fill the pending answer with how the turn ended; False when the conversation was deleted meanwhile."""
    now = orm.utcnow()
    result = session.execute(
        update(orm.Message).where(orm.Message.id == assistant_message_id).values(**outcome, updated_at=now)
    )
    if result.rowcount == 0:
        return False
    owner = (
        select(orm.Message.conversation_id).where(orm.Message.id == assistant_message_id).scalar_subquery()
    )
    session.execute(update(orm.Conversation).where(orm.Conversation.id == owner).values(updated_at=now))
    return True


def discard_turn(session: Session, rows: TurnRows, keep_user_message: bool) -> None:
    """Undo a turn the engine refused: remove the pending answer (and the user message when it was new)."""
    ids = [rows.assistant_message_id] + ([] if keep_user_message else [rows.user_message_id])
    session.execute(delete(orm.Message).where(orm.Message.id.in_(ids)))


def mark_interrupted(session: Session) -> int:
    """Crash recovery: answers still "streaming" at start belonged to a server that died mid-turn."""
    result = session.execute(
        update(orm.Message)
        .where(orm.Message.status == orm.STREAMING)
        .values(status=orm.INTERRUPTED, finish_reason=None, updated_at=orm.utcnow())
    )
    return result.rowcount


def _like(query: str) -> str:
    """A LIKE pattern matching `query` literally anywhere (its % and _ escaped with a backslash)."""
    return "%" + query.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def make_title(content: str) -> str:
    words = " ".join(content.split())
    return words if len(words) <= TITLE_LENGTH else words[: TITLE_LENGTH - 1].rstrip() + "…"


def _refuse_if_streaming(conversation: orm.Conversation) -> None:
    if any(message.status == orm.STREAMING for message in conversation.messages):
        raise Conflict(
            "conversation_id: an answer is already being generated in this conversation", "conversation_id"
        )


def _next_position(conversation: orm.Conversation) -> int:
    return conversation.messages[-1].position + 1 if conversation.messages else 0


def _add_pending_answer(
    session: Session, conversation: orm.Conversation, user: orm.Message, plan: Plan
) -> TurnRows:
    history = _history(conversation, upto=user.position)
    answer = plan(conversation, history)
    pending = orm.Message(
        conversation_id=conversation.id,
        position=user.position + 1,
        role="assistant",
        status=orm.STREAMING,
        **answer,
    )
    session.add(pending)
    conversation.updated_at = orm.utcnow()
    session.flush()
    return TurnRows(conversation.id, user.id, pending.id, history, answer)


def _history(conversation: orm.Conversation, upto: int) -> list[dict[str, str]]:
    """The prompt's messages: the system prompt, then every message up to and including position `upto`.

    Answers that produced no text (errors, interruptions) are left out rather than shown to the model empty.
    """
    history = (
        [{"role": "system", "content": conversation.system_prompt}] if conversation.system_prompt else []
    )
    for message in conversation.messages:
        if message.position > upto:
            break
        if message.role == "assistant" and not message.content:
            continue
        history.append({"role": message.role, "content": message.content})
    return history
