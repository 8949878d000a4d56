"""The generation engine: one worker thread owns the model and decodes every active request as one batch.

Continuous batching: waiting requests are prefilled together (one right-padded forward, up to
`prefill_tokens` prompt tokens, one such prefill between two decode steps) and their inference states join the
running batch with `InferenceState.concat`; every step feeds one token per active sequence through the batched
state; a sequence that finishes or is cancelled leaves with `state.select` before the next step, so it stops
costing compute at once. Requests wait in a bounded queue; a submit to a full queue raises EngineBusy
immediately.

Conversation state reuse: the state at the end of each prompt and at the end of each generated turn is kept
in an LRU bounded in bytes, keyed by the tokens it has consumed. A follow-up turn whose prompt extends a kept
state prefills only the new tokens; anything else is a full prefill, with the same output. The history a
client sends back rarely holds the exact generated tokens (the server drops the thinking; text re-encodes to
canonical tokens), so when the engine is idle it also prefills, from the kept prompt state, the turn as the
chat template will render it in the history (with and without the thinking) and keeps that state too.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch

from model.generation import (
    Done,
    Event,
    Failed,
    SamplingParams,
    ThinkingDelta,
    TokenDelta,
    TurnDecoder,
    sample_tokens,
)
from model.state import InferenceState

DEFAULT_STATE_CACHE_BYTES = 256 * 2**20
DEFAULT_PREFILL_TOKENS = 256  # a prefill between two decode steps costs about as much as 20 steps (pocket)


@contextmanager
def torch_on_one_thread() -> Iterator[None]:
    """Run the block's torch work on the calling thread alone; torch's thread setting is restored after.

    For loading and probing a model on any thread but the engine's worker. A thread that runs a parallel torch
    op keeps an OpenMP team of its own for good. With a second team on the machine (the worker's), libgomp
    counts more threads than cores and stops letting idle threads spin, so every parallel region of the
    worker then waits for its threads to wake: on 2 cores, 16 concurrent requests got 1,150 tokens/s
    instead of 1,680.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class EngineBusy(RuntimeError):
    """The request queue is full; the server answers 429."""


# ---- the caller's side of one request ----------------------------------------------------------------------
class RequestHandle:
    """Events of one request, as a plain iterator (CLI) or an async iterator (server), plus cancel().

    Abandoning either iterator before its final event cancels the request: nobody is listening any more.
    """

    def __init__(self, request_id: int, prompt_tokens: int) -> None:
        self.id = request_id
        self.prompt_tokens = prompt_tokens
        self.output_ids: list[int] = []  # generated token ids, complete once Done has been sent
        self._events: deque[Event] = deque()
        self._cond = threading.Condition()
        self._wakeups: list[Callable[[], None]] = []
        self._cancelled = threading.Event()
        self.finished = False

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        """Ask the worker to stop this request: it leaves the batch at the next step, reason 'cancelled'."""
        self._cancelled.set()

    def _put(self, event: Event) -> None:
        """Called by the worker thread."""
        with self._cond:
            self._events.append(event)
            if isinstance(event, Done | Failed):
                self.finished = True
            self._cond.notify_all()
            wakeups = list(self._wakeups)
        for wake in wakeups:
            wake()

    def _take(self) -> Event | None:
        """The next event, or None. The final event stays, so a new iterator (after an interrupted one) ends
        with it too."""
        if not self._events:
            return None
        event = self._events[0]
        if not isinstance(event, Done | Failed):
            self._events.popleft()
        return event

    def __iter__(self) -> Iterator[Event]:
        done = False
        try:
            while not done:
                with self._cond:
                    while not self._events:
                        self._cond.wait()
                    event = self._take()
                done = isinstance(event, Done | Failed)
                yield event
        finally:
            if not done:
                self.cancel()

    async def aiter(self) -> AsyncIterator[Event]:
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()

        def wake() -> None:
            loop.call_soon_threadsafe(ready.set)

        with self._cond:
            self._wakeups.append(wake)
        done = False
        try:
            while not done:
                ready.clear()
                with self._cond:
                    event = self._take()
                if event is None:
                    await ready.wait()
                    continue
                done = isinstance(event, Done | Failed)
                yield event
        finally:
            with self._cond:
                self._wakeups.remove(wake)
            if not done:
                self.cancel()


@dataclass
class _Request:
    handle: RequestHandle
    prompt_ids: list[int]
    params: SamplingParams
    submitted: float = field(default_factory=time.perf_counter)


@dataclass
class _Sequence:
    """A request while it is in the batch."""

    request: _Request
    turn: TurnDecoder
    generator: torch.Generator
    started: float
    seen: set[int] = field(default_factory=set)  # for the repetition penalty: prompt and generated ids
    next_token: int = -1  # sampled, not yet fed to the model
    first_token_at: float = 0.0
    thinking: list[str] = field(default_factory=list)  # the streamed text, for the history warm-up
    answer: list[str] = field(default_factory=list)


@dataclass
class _Warmup:
    """Idle-time work: continue the state kept after `prompt_ids` with each continuation; keep the results."""

    prompt_ids: list[int]
    continuations: list[list[int]]


# ---- kept conversation states ------------------------------------------------------------------------------
class StateCache:
    """An LRU of inference states keyed by the token ids they have consumed, bounded by state.nbytes()."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[int, ...], InferenceState] = OrderedDict()
        self._sizes: dict[tuple[int, ...], int] = {}
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.reused_tokens = 0  # prompt tokens that did not need a prefill

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, tokens: Sequence[int], state: InferenceState) -> None:
        """Keep `state` (owned by the cache from now on) as the state after `tokens`."""
        key = tuple(tokens)
        size = state.nbytes()
        if size > self.max_bytes or not key:
            return
        self._drop(key)
        while self.bytes + size > self.max_bytes:
            self._drop(next(iter(self._entries)))
        self._entries[key] = state
        self._sizes[key] = size
        self.bytes += size

    def get(self, tokens: Sequence[int]) -> InferenceState | None:
        """A copy of the state kept for exactly `tokens`, if any."""
        state = self._entries.get(tuple(tokens))
        return None if state is None else state.clone()

    def longest_prefix(self, tokens: Sequence[int]) -> tuple[int, InferenceState | None]:
        """(length, a copy of the state) of the longest kept key that is a proper prefix of `tokens`."""
        best: tuple[int, ...] | None = None
        for key in self._entries:
            if (
                len(key) < len(tokens)
                and (best is None or len(key) > len(best))
                and tuple(tokens[: len(key)]) == key
            ):
                best = key
        if best is None:
            self.misses += 1
            return 0, None
        self.hits += 1
        self.reused_tokens += len(best)
        self._entries.move_to_end(best)
        return len(best), self._entries[best].clone()

    def _drop(self, key: tuple[int, ...]) -> None:
        if key in self._entries:
            del self._entries[key]
            self.bytes -= self._sizes.pop(key)


# ---- the engine --------------------------------------------------------------------------------------------
class Engine:
    """Serves generation requests for one model with continuous batching. Thread-safe submit()."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        max_batch_size: int = 16,
        max_queue: int = 64,
        state_cache_bytes: int = DEFAULT_STATE_CACHE_BYTES,
        prefill_tokens: int = DEFAULT_PREFILL_TOKENS,
    ) -> None:
        """`prefill_tokens`: the prompt tokens one prefill takes before it stops taking more requests."""
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_queue < 1:
            raise ValueError(f"max_queue must be >= 1, got {max_queue}")
        if state_cache_bytes < 0:
            raise ValueError(f"state_cache_bytes must be >= 0, got {state_cache_bytes}")
        if prefill_tokens < 1:
            raise ValueError(f"prefill_tokens must be >= 1, got {prefill_tokens}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.max_queue = max_queue
        self.prefill_tokens = prefill_tokens
        self.max_seq_len: int = model.config.max_seq_len
        self.states = StateCache(state_cache_bytes)
        self._device = next(model.parameters()).device
        self._queue: queue.Queue[_Request] = queue.Queue(maxsize=max_queue)
        self._ids = itertools.count(1)
        self._active: list[_Sequence] = []
        self._batch: InferenceState | None = None
        self._warmups: deque[_Warmup] = deque(maxlen=2 * max_batch_size)
        self._in_flight = 0  # submitted requests not yet running or finished
        self._in_flight_lock = threading.Lock()
        self._busy = False  # the worker is doing something other than waiting for a request
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the engine is already started")
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="nanoprime-engine", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        """Stop the worker; requests still queued or running end with Failed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._fail_all("the engine is shutting down")

    # ---- the caller's side ---------------------------------------------------------------------------------
    def submit(
        self, messages: list[Mapping[str, Any]], params: SamplingParams | None = None
    ) -> RequestHandle:
        """Queue a chat turn. Raises ValueError for bad input and EngineBusy when the queue is full."""
        params = params or SamplingParams()
        params.validate()
        prompt_ids = self.tokenizer.encode_chat(
            messages, add_generation_prompt=True, thinking=params.thinking
        )
        if len(prompt_ids) > self.max_seq_len:
            raise ValueError(
                f"the conversation is {len(prompt_ids)} tokens, "
                f"more than the model's context of {self.max_seq_len}"
            )
        handle = RequestHandle(next(self._ids), len(prompt_ids))
        self._count_in_flight(+1)
        try:
            self._queue.put_nowait(_Request(handle, prompt_ids, params))
        except queue.Full:
            self._count_in_flight(-1)
            raise EngineBusy(f"the engine is busy: {self.max_queue} requests are already waiting") from None
        return handle

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued, running or warming up; False if `timeout` seconds pass first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._busy or self._in_flight or self._active or self._warmups:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.002)
        return True

    def _count_in_flight(self, change: int) -> None:
        with self._in_flight_lock:
            self._in_flight += change

    def stats(self) -> dict[str, int]:
        """Counters for /metrics."""
        active = len(self._active)
        return {
            "active": active,
            "queued": self._queue.qsize(),
            "free_slots": self.max_batch_size - active,
            "max_batch_size": self.max_batch_size,
            "max_queue": self.max_queue,
            "kept_states": len(self.states),
            "kept_state_bytes": self.states.bytes,
            "state_cache_hits": self.states.hits,
            "state_cache_misses": self.states.misses,
            "state_cache_reused_tokens": self.states.reused_tokens,
        }

    # ---- the worker ----------------------------------------------------------------------------------------
    def _run(self) -> None:
        with torch.inference_mode():
            while not self._stop.is_set():
                self._admit()
                if self._active:
                    self._step()
                elif self._warmups:
                    self._warm_up(self._warmups[0])
                    self._warmups.popleft()
        self._busy = False

    def _admit(self) -> None:
        """Prefill waiting requests into free slots; wait briefly for work when there is nothing to do.

        Waiting requests are prefilled together in one padded forward, taken in order until their prompts
        reach `prefill_tokens` tokens (at least one request, so one prompt may go past it). One such prefill
        runs between two decode steps: a burst of new requests delays each running answer by a bounded
        amount instead of by all of them together, and is prefilled in a few batched forwards, not one by one.
        """
        if len(self._active) >= self.max_batch_size or self._stop.is_set():
            return
        if not (self._active or self._warmups):
            self._busy = False
            try:
                first = self._queue.get(timeout=0.05)
            except queue.Empty:
                return
            finally:
                self._busy = True
            requests = [first]
        else:
            requests = []
        tokens = sum(len(r.prompt_ids) for r in requests)
        while len(self._active) + len(requests) < self.max_batch_size and tokens < self.prefill_tokens:
            try:
                request = self._queue.get_nowait()
            except queue.Empty:
                break
            requests.append(request)
            tokens += len(request.prompt_ids)
        if not requests:
            return
        started = time.perf_counter()
        live = []
        for request in requests:
            if request.handle.cancelled:
                self._finish_unstarted(request, started)
                self._count_in_flight(-1)
            else:
                live.append(request)
        if not live:
            return
        try:
            self._prefill(live, started)
        except Exception as error:  # a failed prefill fails its requests, not the engine
            for request in live:
                request.handle._put(Failed(f"generation failed: {error}"))
        finally:
            self._count_in_flight(-len(live))

    def _prefill(self, requests: list[_Request], started: float) -> None:
        """One forward over the new prompt tokens of every request (right-padded), then their first tokens.

        Each request continues the longest kept state its prompt extends, or starts from an empty one.
        """
        states, new_ids = [], []
        for request in requests:
            prompt = request.prompt_ids
            kept, state = self.states.longest_prefix(prompt) if self.states.max_bytes else (0, None)
            states.append(state if state is not None else self.model.new_state(batch_size=1))
            new_ids.append(prompt[kept:])
        width = max(len(ids) for ids in new_ids)
        lengths = torch.tensor([len(ids) for ids in new_ids], device=self._device)
        padded = [ids + [self.tokenizer.eos_id] * (width - len(ids)) for ids in new_ids]
        batch = states[0] if len(states) == 1 else InferenceState.concat(states)
        logits, batch = self.model(
            torch.tensor(padded, dtype=torch.long, device=self._device),
            batch,
            lengths=lengths if bool((lengths < width).any()) else None,
            last_only=True,
        )
        for row, request in enumerate(requests):
            state = batch if len(requests) == 1 else batch.select([row])
            prompt = request.prompt_ids
            if self.states.max_bytes:
                self.states.put(prompt, state.clone())
            params = request.params
            seq = _Sequence(
                request=request,
                turn=TurnDecoder(self.tokenizer, params, max_tokens=self.max_seq_len - len(prompt) + 1),
                generator=params.make_generator(),
                started=started,
                seen=set(prompt) if params.repetition_penalty != 1.0 else set(),
            )
            self._accept(seq, self._choose([seq], logits[row : row + 1, -1])[0])
            if seq.turn.finish_reason is not None:
                self._finish(seq, state, seq.turn.finish_reason)
                continue
            self._batch = state if self._batch is None else InferenceState.concat([self._batch, state])
            self._active.append(seq)

    def _step(self) -> None:
        """Drop cancelled sequences, then decode one token for every active sequence."""
        self._retire([i for i, seq in enumerate(self._active) if seq.request.handle.cancelled], "cancelled")
        if not self._active:
            return
        ids = torch.tensor([[seq.next_token] for seq in self._active], dtype=torch.long, device=self._device)
        try:
            logits, self._batch = self.model(ids, self._batch)
            tokens = self._choose(self._active, logits[:, -1])
        except Exception as error:  # the batch state is unusable now: fail everyone in it
            self._fail_active(f"generation failed: {error}")
            return
        for seq, token in zip(self._active, tokens, strict=True):
            self._accept(seq, token)
        finished = [i for i, seq in enumerate(self._active) if seq.turn.finish_reason is not None]
        self._retire(finished, "stop")

    def _choose(self, seqs: Sequence[_Sequence], logits: torch.Tensor) -> list[int]:
        """The next token of each sequence: `</think>` where the thinking budget forces it, else sampled."""
        forced = [seq.turn.forced_token() for seq in seqs]
        free = [i for i, token in enumerate(forced) if token is None]
        if free:
            rows = [seqs[i] for i in free]
            seen = [torch.tensor(sorted(s.seen), dtype=torch.long) if s.seen else None for s in rows]
            chosen = logits if len(free) == len(seqs) else logits[free]  # usually all: no copy
            sampled = sample_tokens(
                chosen, [s.request.params for s in rows], [s.generator for s in rows], seen
            )
            for i, token in zip(free, sampled, strict=True):
                forced[i] = token
        return [int(token) for token in forced]  # type: ignore[arg-type]

    def _accept(self, seq: _Sequence, token: int) -> None:
        """Record a generated token and stream the events it completes."""
        if not seq.turn.token_ids:
            seq.first_token_at = time.perf_counter()
        for event in seq.turn.push(token):
            self._emit(seq, event)
        seq.request.handle.output_ids.append(token)
        if seq.request.params.repetition_penalty != 1.0:
            seq.seen.add(token)
        seq.next_token = token

    def _retire(self, rows: list[int], reason: str) -> None:
        """Remove rows from the batch, keep their states for reuse and send their Done events."""
        if not rows or self._batch is None:
            return
        leaving = [(self._active[i], self._batch.select([i])) for i in rows]
        gone = set(rows)
        keep = [i for i in range(len(self._active)) if i not in gone]
        self._batch = self._batch.select(keep) if keep else None
        self._active = [self._active[i] for i in keep]
        for seq, state in leaving:  # after the batch shrank, so stats() agrees with the Done a caller sees
            self._finish(seq, state, reason)

    def _finish(self, seq: _Sequence, state: InferenceState, reason: str) -> None:
        """Send the last events and Done for a sequence whose `state` holds all but its last sampled token.

        `reason` applies unless the turn has already ended by itself (end of turn, stop string, length).
        """
        turn = seq.turn
        for event in turn.finish(reason):
            self._emit(seq, event)
        reason = turn.finish_reason or reason
        if self.states.max_bytes:
            if len(turn.token_ids) > 1:
                self.states.put(seq.request.prompt_ids + turn.token_ids[:-1], state)
            continuations = self._history_continuations(seq)
            if continuations:
                self._warmups.append(_Warmup(seq.request.prompt_ids, continuations))
        now = time.perf_counter()
        request = seq.request
        decode_s = now - seq.first_token_at
        n = len(turn.token_ids)
        timings = {
            "queue_ms": (seq.started - request.submitted) * 1e3,
            "ttft_ms": (seq.first_token_at - request.submitted) * 1e3,
            "total_ms": (now - request.submitted) * 1e3,
            "tokens_per_s": (n - 1) / decode_s if n > 1 and decode_s > 0 else 0.0,
            "cache_bytes": float(state.nbytes()),
        }
        request.handle._put(Done(reason, self._usage(request, turn), timings))

    def _emit(self, seq: _Sequence, event: Event) -> None:
        if isinstance(event, ThinkingDelta):
            seq.thinking.append(event.text)
        elif isinstance(event, TokenDelta):
            seq.answer.append(event.text)
        seq.request.handle._put(event)

    def _history_continuations(self, seq: _Sequence) -> list[list[int]]:
        """Tokens that follow the prompt when this turn comes back as history, and differ from what was fed.

        The chat template renders an assistant turn as the generation prompt followed by the (thinking and)
        answer; the server sends it back without the thinking, the CLI with it.
        """
        prompt_end = self.tokenizer.encode_chat([], thinking=seq.request.params.thinking)
        answer, thinking = "".join(seq.answer), "".join(seq.thinking)
        messages = [{"role": "assistant", "content": answer}]
        if thinking:
            messages.append({"role": "assistant", "content": answer, "thinking": thinking})
        fed = seq.turn.token_ids[:-1]
        continuations: list[list[int]] = []
        for message in messages:
            rendered = self.tokenizer.encode_chat([message], add_generation_prompt=False)
            continuation = rendered[len(prompt_end) :]
            if rendered[: len(prompt_end)] != prompt_end or continuation[: len(fed)] == fed:
                continue  # another template, or the state at the end of the turn already covers it
            if len(seq.request.prompt_ids) + len(continuation) <= self.max_seq_len:
                continuations.append(continuation)
        return continuations

    def _warm_up(self, job: _Warmup) -> None:
        """Prefill history continuations from the kept prompt state (skipped if it was evicted meanwhile)."""
        for continuation in job.continuations:
            state = self.states.get(job.prompt_ids)
            if state is None:
                return
            try:
                ids = torch.tensor([continuation], dtype=torch.long, device=self._device)
                self.model(ids, state, last_only=True)
            except Exception:  # an optimisation only: a failure here must not disturb serving
                return
            self.states.put(job.prompt_ids + continuation, state)

    def _finish_unstarted(self, request: _Request, now: float) -> None:
        waited = (now - request.submitted) * 1e3
        usage = {"prompt_tokens": len(request.prompt_ids), "completion_tokens": 0}
        usage |= {"thinking_tokens": 0, "answer_tokens": 0}
        timings = {
            "queue_ms": waited,
            "ttft_ms": 0.0,
            "total_ms": waited,
            "tokens_per_s": 0.0,
            "cache_bytes": 0.0,
        }
        request.handle._put(Done("cancelled", usage, timings))

    @staticmethod
    def _usage(request: _Request, turn: TurnDecoder) -> dict[str, int]:
        return {
            "prompt_tokens": len(request.prompt_ids),
            "completion_tokens": len(turn.token_ids),
            "thinking_tokens": turn.thinking_tokens,
            "answer_tokens": turn.answer_tokens,
        }

    def _fail_active(self, message: str) -> None:
        for seq in self._active:
            seq.request.handle._put(Failed(message))
        self._active, self._batch = [], None

    def _fail_all(self, message: str) -> None:
        self._fail_active(message)
        self._warmups.clear()
        while True:
            try:
                self._queue.get_nowait().handle._put(Failed(message))
            except queue.Empty:
                return
            self._count_in_flight(-1)
