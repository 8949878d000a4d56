"""A chat turn, from the user's message to the stored answer, owned by the server rather than the connection.

`Turns.start` writes the user message and a pending answer row (status "streaming"), submits the prompt, and
hands the generation to a task that runs it to the end and stores the answer however it ends. The SSE response
only subscribes to the turn's events: a client that disconnects cancels the generation (the engine drops it at
its next step) and the task still stores the partial answer, as "stopped". A crash before the end leaves that
row in "streaming", which the next start marks "interrupted"; a database that is down when the answer ends
gets it stored when it is back.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import anyio
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from sse_starlette import ServerSentEvent
from starlette.concurrency import run_in_threadpool

from backend import orm, store
from backend.db import session_scope
from backend.errors import (
    DATABASE_UNAVAILABLE,
    Conflict,
    Unprocessable,
    database_problem,
    database_unavailable,
)
from backend.runtime import Generation, Runtime
from backend.schemas import TurnRequest
from model.generation import Done, Failed, SamplingParams, ThinkingDelta, TokenDelta

log = logging.getLogger("nanoprime.turns")

# The server's settings for anything neither the conversation nor the request sets (max_tokens comes from
# Settings.default_max_new_tokens).
DEFAULT_SETTINGS: dict[str, Any] = {
    "temperature": 0.7,
    "top_p": 1.0,
    "top_k": 0,
    "min_p": 0.0,
    "repetition_penalty": 1.0,
    "stop": [],
    "thinking": True,
    "thinking_budget": None,
    "ignore_eos": False,
}
SHUTDOWN_GRACE_S = 10.0
# While the database is down, a finished answer is stored again after these waits (doubling up to the max).
STORE_RETRY_FIRST_S = 0.25
STORE_RETRY_MAX_S = 4.0

Begin = Callable[[Session, store.Plan], store.TurnRows]


def check_max_tokens(settings: dict[str, Any], limit: int) -> None:
    if settings.get("max_tokens") is not None and settings["max_tokens"] > limit:
        raise Unprocessable(
            f"max_tokens: at most {limit} tokens per answer, got {settings['max_tokens']}", "max_tokens"
        )


def sampling_params(settings: dict[str, Any], seed: int) -> SamplingParams:
    """API-named settings (max_tokens) to the engine's SamplingParams (max_new_tokens)."""
    return SamplingParams(
        temperature=float(settings["temperature"]),
        top_p=float(settings["top_p"]),
        top_k=int(settings["top_k"]),
        min_p=float(settings["min_p"]),
        repetition_penalty=float(settings["repetition_penalty"]),
        max_new_tokens=int(settings["max_tokens"]),
        stop=list(settings["stop"]),
        seed=seed,
        thinking=bool(settings["thinking"]),
        thinking_budget=settings["thinking_budget"],
        ignore_eos=bool(settings["ignore_eos"]),
    )


# Line breaks that JSON leaves unescaped. An SSE reader that splits lines the way str.splitlines does (httpx's
# iter_lines, for one) would cut an event in two on them, and a random model does emit them; escaped, the JSON
# value is the same and every reader sees one line.
_UNICODE_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def sse_json(data: dict[str, Any]) -> str:
    """Compact-enough JSON for an SSE data line: UTF-8 text as is, but no character any reader splits on."""
    return json.dumps(data, ensure_ascii=False).translate(_UNICODE_LINE_BREAKS)


def storable(text: str) -> str:
    """Generated text as every database can hold it: a NUL (PostgreSQL refuses it) becomes U+FFFD. Applied to
    what is streamed too, so the client sees exactly what is stored."""
    return text.replace("\x00", "\ufffd")


def sse(name: str, data: dict[str, Any]) -> ServerSentEvent:
    return ServerSentEvent(event=name, data=sse_json(data))


class Turn:
    def __init__(self, turns: Turns, rows: store.TurnRows, generation: Generation) -> None:
        self.rows = rows
        self.generation = generation
        self._turns = turns
        self._events: asyncio.Queue[ServerSentEvent | None] = asyncio.Queue()
        self._events.put_nowait(
            sse(
                "meta",
                {
                    "conversation_id": rows.conversation_id,
                    "user_message_id": rows.user_message_id,
                    "assistant_message_id": rows.assistant_message_id,
                    "model": rows.answer["model_name"],
                    "seed": rows.answer["seed"],
                    "settings": rows.answer["settings"],
                },
            )
        )
        self.ended = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def stream(self, shutdown: anyio.Event) -> AsyncIterator[ServerSentEvent]:
        """The SSE body: meta, thinking*, token*, then done or error. Leaving early cancels the generation;
        so does `shutdown`, after which the stream still ends properly with its done event."""
        watcher = asyncio.create_task(self.generation.cancel_on(shutdown))
        try:
            while (event := await self._events.get()) is not None:
                yield event
        finally:
            watcher.cancel()
            if not self.ended.is_set():
                self.generation.cancel()

    async def run(self) -> None:
        answer: list[str] = []
        thinking: list[str] = []
        thinking_s = 0.0  # time spent producing thinking text: each delta is charged the gap before it
        last = self.generation.submitted
        done: Done | None = None
        failure: str | None = None
        try:
            async for event in self.generation.events():
                now = time.perf_counter()
                if isinstance(event, ThinkingDelta):
                    thinking_s += now - last
                    thinking.append(storable(event.text))
                    self._events.put_nowait(sse("thinking", {"delta": thinking[-1]}))
                elif isinstance(event, TokenDelta):
                    answer.append(storable(event.text))
                    self._events.put_nowait(sse("token", {"delta": answer[-1]}))
                elif isinstance(event, Done):
                    done = event
                elif isinstance(event, Failed):
                    failure = event.message
                last = now
        except asyncio.CancelledError:
            # The server is going down without waiting for us: keep what there is, synchronously.
            outcome = self._outcome(answer, thinking, None, "the server shut down mid-answer", None)
            outcome["status"], outcome["finish_reason"] = orm.INTERRUPTED, None
            try:
                self._store_now(outcome)
            except Exception:
                log.exception("could not store answer %s", self.rows.assistant_message_id)
            self.ended.set()
            self._turns.forget(self)
            raise
        except Exception as error:
            log.exception("turn %s failed", self.rows.assistant_message_id)
            failure = f"internal error: {type(error).__name__}: {error}"
        if done is None and failure is None:
            failure = "the engine ended the generation without finishing it"
        thinking_ms = thinking_s * 1000 if thinking else None
        outcome = self._outcome(answer, thinking, done, failure, thinking_ms)
        database_down = False
        try:
            await run_in_threadpool(self._store_now, outcome)
        except DATABASE_UNAVAILABLE as error:
            log.warning(
                "answer %s not stored yet, the database is unavailable (%s); retrying",
                self.rows.assistant_message_id,
                database_problem(error),
            )
            database_down = True
            failure = "the answer is not saved yet: the database is unavailable (it is saved when it is back)"
        except Exception as error:
            log.exception("could not store answer %s", self.rows.assistant_message_id)
            failure = f"the answer could not be saved: {database_problem(error)}"
        if failure is None and done is not None:
            data = {
                "finish_reason": done.finish_reason,
                "usage": done.usage,
                "timings": outcome["timings"],
                "status": outcome["status"],
                "message_id": self.rows.assistant_message_id,
            }
            self._events.put_nowait(sse("done", data))
        else:
            self._events.put_nowait(sse("error", {"message": failure}))
        self.ended.set()
        self._events.put_nowait(None)
        try:
            if database_down:
                await self._store_when_the_database_is_back(outcome)
        finally:
            self._turns.forget(self)

    async def _store_when_the_database_is_back(self, outcome: dict[str, Any]) -> None:
        """Retry storing the answer until it is stored, so the answer row does not stay "streaming" (which
        would refuse every later turn of the conversation). The turn stays running meanwhile; if the server
        stops first, the next start marks the answer interrupted."""
        delay = STORE_RETRY_FIRST_S
        while True:
            await asyncio.sleep(delay)
            try:
                await run_in_threadpool(self._store_now, outcome)
            except DATABASE_UNAVAILABLE:
                delay = min(delay * 2, STORE_RETRY_MAX_S)
                continue
            except Exception:
                log.exception("could not store answer %s", self.rows.assistant_message_id)
                return
            log.info("answer %s stored now that the database is back", self.rows.assistant_message_id)
            return

    def _outcome(
        self,
        answer: list[str],
        thinking: list[str],
        done: Done | None,
        failure: str | None,
        thinking_ms: float | None,
    ) -> dict[str, Any]:
        outcome: dict[str, Any] = {"content": "".join(answer), "thinking": "".join(thinking)}
        if failure is not None:
            outcome.update(status=orm.ERROR, finish_reason="error", error=failure)
        elif done is not None:
            outcome.update(
                status=orm.STOPPED if done.finish_reason == "cancelled" else orm.COMPLETE,
                finish_reason=done.finish_reason,
            )
        if done is not None:
            outcome.update({name: done.usage.get(name) for name in store.USAGE_COLUMNS})
            outcome["timings"] = {**done.timings, "thinking_ms": thinking_ms}
        else:
            outcome["timings"] = {"thinking_ms": thinking_ms}
        return outcome

    def _store_now(self, outcome: dict[str, Any]) -> None:
        with session_scope(self._turns.sessions) as session:
            store.finish_turn(session, self.rows.assistant_message_id, outcome)


class Turns:
    """The turns running now, one per conversation at most."""

    def __init__(self, runtime: Runtime, sessions: sessionmaker[Session]) -> None:
        self.runtime = runtime
        self.sessions = sessions
        self._running: dict[str, Turn] = {}
        self._starting: set[str] = set()

    async def start(
        self, conversation_id: str, begin: Begin, request: TurnRequest, new_user_message: bool
    ) -> Turn:
        """Write the turn's rows, submit it, and run it in a task. Raises an APIError (nothing written) when
        the conversation is busy or unknown, the settings or prompt are unusable, or the queue is full."""
        info = self.runtime.require_ready()
        running = self._running.get(conversation_id)
        if running is not None and running.ended.is_set():  # its answer waits for the database to be stored
            raise database_unavailable()
        if running is not None or conversation_id in self._starting:
            raise Conflict(
                "conversation_id: an answer is already being generated in this conversation",
                "conversation_id",
            )
        given = request.given()
        check_max_tokens(given, self.runtime.settings.max_new_tokens_limit)
        self._starting.add(conversation_id)
        slot = None
        try:
            slot = self.runtime.admit()
            planned: dict[str, SamplingParams] = {}

            def plan(conversation: orm.Conversation, history: list[dict[str, str]]) -> dict[str, Any]:
                settings = {
                    **DEFAULT_SETTINGS,
                    "max_tokens": self.runtime.settings.default_max_new_tokens,
                    **conversation.settings,
                    **given,
                }
                seed = settings.pop("seed", None)
                seed = secrets.randbelow(2**31) if seed is None else seed
                params, _ = self.runtime.fit_to_context(
                    history, sampling_params(settings, seed), prompt_field="content", strict_field=None
                )
                planned["params"] = params
                settings["max_tokens"] = params.max_new_tokens
                return {
                    "settings": settings,
                    "seed": seed,
                    "model_name": info.name,
                    "weights_hash": info.weights_sha256,
                }

            def write() -> store.TurnRows:
                with session_scope(self.sessions) as session:
                    if request.system_prompt is not None:
                        store.update_conversation(
                            session, conversation_id, {"system_prompt": request.system_prompt}
                        )
                    return begin(session, plan)

            try:
                rows = await run_in_threadpool(write)
            except IntegrityError as error:
                raise Conflict(
                    "conversation_id: the conversation changed meanwhile; retry", "conversation_id"
                ) from error
            try:
                generation = slot.submit(rows.history, planned["params"])
            except Exception:  # refused (429) or broken: leave no answer row "streaming" behind
                await run_in_threadpool(self._discard, rows, not new_user_message)
                raise
            turn = Turn(self, rows, generation)
            self._running[conversation_id] = turn
            turn.task = asyncio.create_task(turn.run(), name=f"turn {rows.assistant_message_id}")
            return turn
        except BaseException:
            if slot is not None:
                slot.release()
            raise
        finally:
            self._starting.discard(conversation_id)

    def stop(self, conversation_id: str) -> bool:
        """Cancel the conversation's running answer; False when none is running."""
        turn = self._running.get(conversation_id)
        if turn is None:
            return False
        turn.generation.cancel()
        return True

    def running(self, conversation_id: str) -> Turn | None:
        return self._running.get(conversation_id)

    def forget(self, turn: Turn) -> None:
        if self._running.get(turn.rows.conversation_id) is turn:
            del self._running[turn.rows.conversation_id]

    async def shutdown(self) -> None:
        """Stop every running answer and wait (briefly) until each is stored as stopped."""
        turns = list(self._running.values())
        for turn in turns:
            turn.generation.cancel()
        tasks = [turn.task for turn in turns if turn.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=SHUTDOWN_GRACE_S)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _discard(self, rows: store.TurnRows, keep_user_message: bool) -> None:
        with session_scope(self.sessions) as session:
            store.discard_turn(session, rows, keep_user_message)
