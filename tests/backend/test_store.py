"""Storage on SQLite and PostgreSQL: migrations, conversations, the two writes of a turn, crash recovery."""

from __future__ import annotations

from datetime import UTC

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, func, select, text

from backend import orm, store
from backend.db import create_session_factory, migrate, normalize_url, ping, session_scope
from backend.errors import BadRequest, Conflict, NotFound

ANSWER = {"settings": {"temperature": 0.5}, "seed": 7, "model_name": "tiny", "weights_hash": "ab" * 32}


def plan(_conversation: orm.Conversation, _history: list[dict[str, str]]) -> dict:
    return dict(ANSWER)


@pytest.fixture
def sessions(db_engine: Engine):
    return create_session_factory(db_engine)


def new_conversation(sessions, title: str | None = None, system_prompt: str = "") -> str:
    with session_scope(sessions) as session:
        conversation = store.create_conversation(
            session, title=title, system_prompt=system_prompt, settings={"top_p": 0.9}, model="tiny"
        )
        return conversation.id


def finish(sessions, rows: store.TurnRows, content: str = "the answer", status: str = orm.COMPLETE) -> None:
    outcome = {
        "content": content,
        "thinking": "hmm",
        "status": status,
        "finish_reason": "stop",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "thinking_tokens": 2,
        "answer_tokens": 3,
        "timings": {"ttft_ms": 12.5, "total_ms": 40.0},
    }
    with session_scope(sessions) as session:
        assert store.finish_turn(session, rows.assistant_message_id, outcome)


def test_migrations_build_exactly_the_orm_schema_and_rerun_cleanly(db_engine: Engine):
    migrate(db_engine)  # a second run at head changes nothing
    with db_engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), orm.Base.metadata) == []
        revision = connection.execute(text("SELECT version_num FROM alembic_version")).scalar_one()
    assert revision == "0001"


def test_sqlite_runs_in_wal_mode_with_foreign_keys(sqlite_url: str):
    from backend.db import create_db_engine

    engine = create_db_engine(sqlite_url)
    with engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar_one() == "wal"
        assert connection.execute(text("PRAGMA foreign_keys")).scalar_one() == 1
    engine.dispose()


def test_postgres_urls_go_through_psycopg3():
    assert normalize_url("postgresql://u@h/db").startswith("postgresql+psycopg://")
    assert normalize_url("postgres://u:p@h:5/db") == "postgresql+psycopg://u:p@h:5/db"
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"


def test_ping_reports_a_database_that_is_down():
    from backend.db import create_db_engine

    engine = create_db_engine("postgresql://nobody@127.0.0.1:1/none")
    error = ping(engine)
    assert error is not None and "OperationalError" in error


def test_conversations_list_newest_first_with_pages_and_total(sessions):
    ids = [new_conversation(sessions, f"chat {i}") for i in range(5)]
    with session_scope(sessions) as session:
        store.update_conversation(session, ids[1], {"title": "renamed"})  # activity moves it to the top
    with session_scope(sessions) as session:
        first, total = store.list_conversations(session, query=None, limit=2, offset=0)
        rest, _ = store.list_conversations(session, query=None, limit=10, offset=2)
    assert total == 5
    assert [c.id for c in first] == [ids[1], ids[4]]
    assert [c.id for c in rest] == [ids[3], ids[2], ids[0]]
    assert first[0].title == "renamed"


def test_search_matches_titles_and_message_text_literally(sessions):
    pizza = new_conversation(sessions, "Pizza dough")
    other = new_conversation(sessions, "Something else")
    percent = new_conversation(sessions, "rates")
    with session_scope(sessions) as session:
        rows = store.begin_turn(session, other, "How do I make PIZZA crust crispy?", plan)
    finish(sessions, rows)
    with session_scope(sessions) as session:
        store.begin_turn(session, percent, "is 100% a lot?", plan)
    with session_scope(sessions) as session:
        found, total = store.list_conversations(session, query="pizza", limit=10, offset=0)
        assert total == 2 and {c.id for c in found} == {pizza, other}
        snippets = store.search_snippets(session, [c.id for c in found], "pizza")
        assert "PIZZA crust" in snippets[other] and pizza not in snippets
        assert [c.id for c in store.list_conversations(session, query="100%", limit=10, offset=0)[0]] == [
            percent
        ]
        assert store.list_conversations(session, query="1_0", limit=10, offset=0)[1] == 0
        assert store.list_conversations(session, query="nothing like this", limit=10, offset=0)[1] == 0


def test_a_turn_commits_the_user_message_first_and_fills_the_answer_at_the_end(sessions):
    conversation_id = new_conversation(sessions, system_prompt="Be brief.")
    with session_scope(sessions) as session:
        rows = store.begin_turn(
            session, conversation_id, "  What is   a Mamba layer, in detail please?  ", plan
        )
    assert rows.history == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "  What is   a Mamba layer, in detail please?  "},
    ]
    with sessions() as session:
        conversation = store.get_conversation(session, conversation_id)
        assert conversation.title == "What is a Mamba layer, in detail please?"
        user, answer = conversation.messages
        assert (user.role, user.status, user.position) == ("user", orm.COMPLETE, 0)
        assert (answer.role, answer.status, answer.position) == ("assistant", orm.STREAMING, 1)
        assert (answer.seed, answer.model_name, answer.settings) == (7, "tiny", {"temperature": 0.5})
        started = conversation.updated_at
    finish(sessions, rows)
    with sessions() as session:
        conversation = store.get_conversation(session, conversation_id)
        answer = conversation.messages[1]
        assert (answer.content, answer.thinking, answer.status) == ("the answer", "hmm", orm.COMPLETE)
        assert (answer.completion_tokens, answer.timings["ttft_ms"]) == (5, 12.5)
        assert answer.weights_hash == "ab" * 32
        assert conversation.updated_at >= started
        assert conversation.updated_at.tzinfo == UTC and answer.created_at.tzinfo == UTC


def test_history_includes_earlier_answers_but_not_empty_failed_ones(sessions):
    conversation_id = new_conversation(sessions)
    with session_scope(sessions) as session:
        first = store.begin_turn(session, conversation_id, "one", plan)
    finish(sessions, first, content="")
    with session_scope(sessions) as session:
        second = store.begin_turn(session, conversation_id, "two", plan)
    finish(sessions, second, content="answer two")
    with session_scope(sessions) as session:
        third = store.begin_turn(session, conversation_id, "three", plan)
    assert third.history == [
        {"role": "user", "content": "one"},
        {"role": "user", "content": "two"},
        {"role": "assistant", "content": "answer two"},
        {"role": "user", "content": "three"},
    ]


def test_a_refused_plan_writes_nothing(sessions):
    conversation_id = new_conversation(sessions)

    def too_long(_conversation, _history):
        raise BadRequest("content: too long", "content")

    with pytest.raises(BadRequest), session_scope(sessions) as session:
        store.begin_turn(session, conversation_id, "hello", too_long)
    with sessions() as session:
        conversation = store.get_conversation(session, conversation_id)
        assert conversation.messages == [] and conversation.title == ""


def test_one_answer_at_a_time_per_conversation(sessions):
    conversation_id = new_conversation(sessions)
    with session_scope(sessions) as session:
        store.begin_turn(session, conversation_id, "first", plan)
    with pytest.raises(Conflict, match="already being generated"), session_scope(sessions) as session:
        store.begin_turn(session, conversation_id, "second", plan)


def test_regenerate_replaces_the_last_answer(sessions):
    conversation_id = new_conversation(sessions)
    with session_scope(sessions) as session, pytest.raises(Conflict, match="no user message"):
        store.begin_regenerate(session, conversation_id, plan)
    with session_scope(sessions) as session:
        rows = store.begin_turn(session, conversation_id, "question", plan)
    finish(sessions, rows, content="old answer")
    with session_scope(sessions) as session:
        again = store.begin_regenerate(session, conversation_id, plan)
    assert again.user_message_id == rows.user_message_id
    assert again.assistant_message_id != rows.assistant_message_id
    assert again.history == [{"role": "user", "content": "question"}]
    with sessions() as session:
        messages = store.get_conversation(session, conversation_id).messages
        assert [(m.role, m.status, m.position) for m in messages] == [
            ("user", "complete", 0),
            ("assistant", "streaming", 1),
        ]


def test_edit_rewrites_a_user_message_and_drops_what_followed(sessions):
    conversation_id = new_conversation(sessions)
    turns = []
    for text_ in ("first question", "second question"):
        with session_scope(sessions) as session:
            turns.append(store.begin_turn(session, conversation_id, text_, plan))
        finish(sessions, turns[-1])
    with session_scope(sessions) as session:
        with pytest.raises(Conflict, match="only a user message"):
            store.begin_edit(session, conversation_id, turns[0].assistant_message_id, "x", plan)
        with pytest.raises(NotFound, match="message_id"):
            store.begin_edit(session, conversation_id, "no-such-id", "x", plan)
    with session_scope(sessions) as session:
        edited = store.begin_edit(session, conversation_id, turns[0].user_message_id, "better question", plan)
    assert edited.history == [{"role": "user", "content": "better question"}]
    with sessions() as session:
        messages = store.get_conversation(session, conversation_id).messages
        assert [(m.role, m.content, m.status) for m in messages] == [
            ("user", "better question", "complete"),
            ("assistant", "", "streaming"),
        ]


def test_delete_removes_the_conversation_with_its_messages(sessions):
    conversation_id = new_conversation(sessions)
    with session_scope(sessions) as session:
        rows = store.begin_turn(session, conversation_id, "hi", plan)
    with session_scope(sessions) as session:
        store.delete_conversation(session, conversation_id)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(orm.Message)) == 0
        with pytest.raises(NotFound, match="conversation_id"):
            store.get_conversation(session, conversation_id)
    with session_scope(sessions) as session:
        assert store.finish_turn(session, rows.assistant_message_id, {"status": orm.STOPPED}) is False
        with pytest.raises(NotFound):
            store.delete_conversation(session, conversation_id)


def test_discarding_a_refused_turn_leaves_no_trace_of_it(sessions):
    conversation_id = new_conversation(sessions)
    with session_scope(sessions) as session:
        rows = store.begin_turn(session, conversation_id, "hi", plan)
    with session_scope(sessions) as session:
        store.discard_turn(session, rows, keep_user_message=False)
    with sessions() as session:
        assert store.get_conversation(session, conversation_id).messages == []


def test_answers_left_streaming_by_a_crash_become_interrupted(sessions):
    conversation_id = new_conversation(sessions)
    with session_scope(sessions) as session:
        rows = store.begin_turn(session, conversation_id, "hi", plan)
    with session_scope(sessions) as session:
        assert store.mark_interrupted(session) == 1
    with sessions() as session:
        answer = session.get(orm.Message, rows.assistant_message_id)
        assert answer.status == orm.INTERRUPTED
    with session_scope(sessions) as session:
        assert store.mark_interrupted(session) == 0
        store.begin_turn(session, conversation_id, "a new turn is allowed again", plan)
