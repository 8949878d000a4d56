"""The loaded model, its engine, and admission of generations.

The model loads once, in a worker thread, while the server already answers (/health says 503 "loading").
Every generation, native or OpenAI, goes through `admit()`: at most max_batch_size running plus max_queue
waiting are accepted, the rest get 429 before anything is written. A `Generation` wraps the engine's handle
to feed the metrics (time to first token, inter-token gaps, tokens) and to give its admission slot back when
it ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import anyio
import torch
from starlette.types import Receive

from backend.engine import Engine, EngineBusy, torch_on_one_thread
from backend.errors import BadRequest, Busy, Unavailable
from backend.metrics import Metrics
from backend.model_card import Figure, read_card
from backend.settings import Settings
from model.checkpoint import load_model_dir, weights_sha256
from model.generation import Done, Event, Failed, SamplingParams, ThinkingDelta, TokenDelta

log = logging.getLogger("nanoprime.runtime")

LOADING, READY, FAILED = "loading", "ready", "failed"
RETRY_AFTER_S = 2


@dataclass
class ModelInfo:
    """What the API reports about the served model (GET /api/models, /v1/models, stored with each answer)."""

    name: str
    path: str
    weights_sha256: str
    parameters: int
    context_length: int
    cache_bytes_per_token: int
    state_bytes_per_sequence: int
    config: dict[str, Any]
    card: dict[str, Figure]


class Runtime:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.status = LOADING
        self.error: str | None = None
        self.info: ModelInfo | None = None
        self.tokenizer: Any = None
        self.engine: Engine | None = None
        self._lock = threading.Lock()
        self._admitted = 0  # accepted and not yet finished
        self.metrics = Metrics(
            active=lambda: self.engine_stat("active"),
            queued=lambda: self.engine_stat("queued"),
            admitted=lambda: self._admitted,
        )

    # ---- lifecycle -----------------------------------------------------------------------------------------
    def load(self) -> None:
        """Load the model directory and start the engine (blocking: run it in a thread)."""
        path = Path(self.settings.model_dir)
        try:
            if not (path / "config.json").is_file():
                raise FileNotFoundError(
                    f"no model directory at {path} (config.json missing): train or export one there, "
                    "or point NANOPRIME_MODEL_DIR at one"
                )
            started = time.perf_counter()
            with torch_on_one_thread():  # the engine's worker alone keeps a team of threads
                model, tokenizer = load_model_dir(path, device=self.settings.device)
                model.eval()
                info = describe_model(model, path, weights_sha256(path))
            engine = Engine(
                model,
                tokenizer,
                max_batch_size=self.settings.max_batch_size,
                max_queue=self.settings.max_queue,
                state_cache_bytes=self.settings.state_cache_bytes,
            )
            engine.start()
        except Exception as error:
            log.exception("model failed to load from %s", path)
            self.error = f"{type(error).__name__}: {error}"
            self.status = FAILED
            return
        self.tokenizer, self.engine, self.info = tokenizer, engine, info
        self.status = READY
        log.info("model %s ready in %.1f s", info.name, time.perf_counter() - started)

    def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.shutdown()

    def require_ready(self) -> ModelInfo:
        if self.status == LOADING:
            raise Unavailable(
                "the model is still loading; try again in a few seconds", headers={"Retry-After": "5"}
            )
        if self.status == FAILED or self.info is None:
            raise Unavailable(f"the model could not be loaded: {self.error}")
        return self.info

    # ---- requests ------------------------------------------------------------------------------------------
    def fit_to_context(
        self,
        messages: list[Mapping[str, Any]],
        params: SamplingParams,
        prompt_field: str,
        strict_field: str | None = None,
    ) -> tuple[SamplingParams, int]:
        """Count the prompt and bound max_new_tokens by what is left of the context.

        With `strict_field` (the client asked for that many tokens explicitly) an overflow is an error naming
        the field; otherwise max_new_tokens shrinks to fit.
        """
        info = self.require_ready()
        try:
            prompt = len(
                self.tokenizer.encode_chat(messages, add_generation_prompt=True, thinking=params.thinking)
            )
        except ValueError as error:
            raise BadRequest(f"{prompt_field}: {error}", prompt_field) from error
        room = info.context_length - prompt
        if room < 1:
            raise BadRequest(
                f"{prompt_field}: the prompt is {prompt} tokens, which fills the model's context of "
                f"{info.context_length} tokens and leaves no room for an answer",
                prompt_field,
            )
        if params.max_new_tokens > room:
            if strict_field is not None:
                raise BadRequest(
                    f"{strict_field}: the prompt ({prompt} tokens) plus {strict_field} "
                    f"({params.max_new_tokens}) exceeds the model's context of {info.context_length} tokens; "
                    f"ask for at most {room}",
                    strict_field,
                )
            params = replace(params, max_new_tokens=room)
        return params, prompt

    def admit(self) -> Slot:
        """Reserve room for one generation or refuse with 429 (nothing has been written yet)."""
        self.require_ready()
        with self._lock:
            if self._admitted >= self.settings.max_batch_size + self.settings.max_queue:
                self.metrics.rejected.inc()
                raise Busy(
                    "the server is busy: the generation queue is full; retry shortly",
                    headers={"Retry-After": str(RETRY_AFTER_S)},
                )
            self._admitted += 1
        return Slot(self)

    @property
    def in_flight(self) -> int:
        """Generations admitted and not yet finished (running, queued, or being written)."""
        return self._admitted

    def engine_stat(self, name: str) -> int:
        """One of the engine's counters (active, queued, free_slots...), 0 before the engine runs."""
        return int(self.engine.stats()[name]) if self.engine is not None else 0

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1


class Slot:
    """An admitted place in the engine, turned into a Generation by submit() or given back by release()."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime
        self._held = True

    def submit(self, messages: list[Mapping[str, Any]], params: SamplingParams) -> Generation:
        try:
            handle = self._runtime.engine.submit(messages, params)
        except EngineBusy as error:
            self.release()
            self._runtime.metrics.rejected.inc()
            raise Busy(f"the server is busy: {error}", headers={"Retry-After": str(RETRY_AFTER_S)}) from error
        except ValueError as error:
            self.release()
            raise BadRequest(str(error)) from error
        self._held = False
        return Generation(self._runtime, handle)

    def release(self) -> None:
        if self._held:
            self._held = False
            self._runtime._release()


class Generation:
    """One request running in the engine: its events, with metrics, and cancel()."""

    def __init__(self, runtime: Runtime, handle: Any) -> None:
        self._runtime = runtime
        self._handle = handle
        self.submitted = time.perf_counter()
        self.first_text_at: float | None = None
        self.finished = False

    def cancel(self) -> None:
        """Ask the engine to drop the sequence at its next step; a Done("cancelled") event follows."""
        if not self.finished:
            self._handle.cancel()

    async def cancel_on(self, event: anyio.Event) -> None:
        """Cancel when `event` is set (the server is shutting down); the stream then ends with its Done."""
        await event.wait()
        self.cancel()

    async def cancel_on_disconnect(self, receive: Receive) -> None:
        """Cancel when the client goes away: a request whose body has been read gets only http.disconnect."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self.cancel()

    def _end(self, outcome: str) -> None:
        """Count the outcome and give the admission slot back, once."""
        if not self.finished:
            self.finished = True
            self._runtime._release()
            self._runtime.metrics.generations.labels(outcome=outcome).inc()

    async def events(self) -> AsyncIterator[Event]:
        """The engine's events up to Done or Failed. A consumer that stops early cancels the generation."""
        metrics = self._runtime.metrics
        last = self.submitted
        outcome: str | None = None
        try:
            async for event in self._handle.aiter():
                now = time.perf_counter()
                if isinstance(event, ThinkingDelta | TokenDelta):
                    if self.first_text_at is None:
                        self.first_text_at = now
                        metrics.ttft.observe(now - self.submitted)
                    else:
                        metrics.inter_token.observe(now - last)
                    last = now
                elif isinstance(event, Done):
                    outcome = event.finish_reason
                    metrics.tokens.inc(event.usage.get("completion_tokens", 0))
                elif isinstance(event, Failed):
                    outcome = "failed"
                if outcome is not None:
                    self._end(outcome)  # before the consumer sees the last event, so it may stop there
                yield event
                if outcome is not None:
                    break
        finally:
            if outcome is None:
                self._handle.cancel()
                self._end("abandoned")


def describe_model(model: Any, path: Path, weights_hash: str) -> ModelInfo:
    """Name, size, context and cache figures of a loaded model; cache growth is measured on a real state."""
    per_token, fixed = measure_cache_bytes(model)
    name, card = read_card(path)
    return ModelInfo(
        name=name or path.resolve().name,
        path=str(path),
        weights_sha256=weights_hash,
        parameters=model.num_parameters(),
        context_length=model.config.max_seq_len,
        cache_bytes_per_token=per_token,
        state_bytes_per_sequence=fixed,
        config=model.config.to_dict(),
        card=card,
    )


@torch.inference_mode()
def measure_cache_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(bytes the inference state grows per token, bytes it holds per sequence whatever the length)."""
    device = next(model.parameters()).device
    state = model.new_state(batch_size=1)
    _, state = model(torch.zeros(1, 1, dtype=torch.long, device=device), state)
    one = state.nbytes()
    _, state = model(torch.zeros(1, 1, dtype=torch.long, device=device), state)
    per_token = state.nbytes() - one
    return per_token, one - per_token
