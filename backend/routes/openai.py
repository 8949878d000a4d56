"""The OpenAI chat-completions dialect: POST /v1/chat/completions (streaming or not) and GET /v1/models.

Stateless: nothing is stored. Thinking travels in `reasoning_content` (message or delta), the answer in
`content`. Unknown request fields are ignored, as clients send many optional ones; the extensions `top_k`,
`min_p`, `repetition_penalty`, `thinking`, `thinking_budget` and `ignore_eos` may come in the client's
extra_body.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from functools import partial
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sse_starlette import EventSourceResponse, ServerSentEvent

from backend.errors import APIError, Unprocessable, error_body
from backend.routes.chat import sse_response
from backend.routes.deps import get_runtime
from backend.runtime import Generation, ModelInfo, Runtime
from backend.schemas import MAX_COUNT
from backend.turns import DEFAULT_SETTINGS, check_max_tokens, sampling_params, sse_json
from model.generation import Done, Failed, ThinkingDelta, TokenDelta

router = APIRouter(prefix="/v1", tags=["openai"])

RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
FINISH_REASONS = {"stop": "stop", "stop_string": "stop", "length": "length", "cancelled": "stop"}


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatCompletionRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(default=1, ge=1, le=1, description="only one choice per request is supported")
    top_k: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    thinking: bool | None = None
    thinking_budget: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    ignore_eos: bool | None = None
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None

    @field_validator("messages")
    @classmethod
    def _user_text(cls, messages: list[ChatMessage]) -> list[ChatMessage]:
        for index, message in enumerate(messages):
            if message.role == "user" and not message.text().strip():
                raise ValueError(f"messages[{index}].content must not be empty")
        return messages

    @field_validator("stop")
    @classmethod
    def _stops(cls, stop: str | list[str] | None) -> str | list[str] | None:
        stops = [stop] if isinstance(stop, str) else stop or []
        if len(stops) > 8 or any(not text for text in stops):
            raise ValueError("stop must be up to 8 non-empty strings")
        return stop

    def chat(self) -> list[dict[str, str]]:
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]

    def settings(self, default_max_tokens: int) -> tuple[dict[str, Any], str | None]:
        """The generation settings, and the name of the token limit field when the client set one."""
        asked = self.max_completion_tokens or self.max_tokens
        field = (
            "max_completion_tokens"
            if self.max_completion_tokens
            else "max_tokens"
            if self.max_tokens
            else None
        )
        given = {
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
            "min_p": self.min_p,
            "repetition_penalty": self.repetition_penalty,
            "stop": [self.stop] if isinstance(self.stop, str) else self.stop,
            "thinking": False if self.reasoning_effort == "none" else self.thinking,
            "ignore_eos": self.ignore_eos,
        }
        settings = {**DEFAULT_SETTINGS, "max_tokens": asked or default_max_tokens}
        settings.update({name: value for name, value in given.items() if value is not None})
        settings["thinking_budget"] = self.thinking_budget
        return settings, field


@router.get("/models")
def list_models(runtime: RuntimeDep) -> dict[str, Any]:
    info = runtime.require_ready()
    return {
        "object": "list",
        "data": [{"id": info.name, "object": "model", "created": 0, "owned_by": "nanoprime"}],
    }


@router.post("/chat/completions", response_model=None)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, runtime: RuntimeDep
) -> dict[str, Any] | EventSourceResponse:
    info = runtime.require_ready()
    settings, limit_field = body.settings(runtime.settings.default_max_new_tokens)
    if limit_field is not None:
        try:
            check_max_tokens(settings, runtime.settings.max_new_tokens_limit)
        except APIError as error:
            raise Unprocessable(error.message.replace("max_tokens", limit_field, 1), limit_field) from error
    seed = body.seed if body.seed is not None else secrets.randbelow(2**31)
    messages = body.chat()
    params, _ = runtime.fit_to_context(messages, sampling_params(settings, seed), "messages", limit_field)
    slot = runtime.admit()
    generation = slot.submit(messages, params)
    completion = Completion(info)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return sse_response(partial(completion.stream, generation, include_usage))
    watcher = asyncio.create_task(generation.cancel_on_disconnect(request.receive))
    try:
        return await completion.collect(generation)  # ends with Done("cancelled") if the client left
    finally:
        watcher.cancel()


class Completion:
    """One chat completion's identity, and its two shapes: a whole response or a stream of chunks."""

    def __init__(self, info: ModelInfo) -> None:
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = info.name
        self.fingerprint = f"fp_{info.weights_sha256[:12]}"

    async def collect(self, generation: Generation) -> dict[str, Any]:
        answer: list[str] = []
        thinking: list[str] = []
        async for event in generation.events():
            if isinstance(event, ThinkingDelta):
                thinking.append(event.text)
            elif isinstance(event, TokenDelta):
                answer.append(event.text)
            elif isinstance(event, Failed):
                raise GenerationFailed(event.message)
            elif isinstance(event, Done):
                message = {
                    "role": "assistant",
                    "content": "".join(answer),
                    "reasoning_content": "".join(thinking),
                }
                return {
                    **self._head("chat.completion"),
                    "choices": [
                        {"index": 0, "message": message, "finish_reason": FINISH_REASONS[event.finish_reason]}
                    ],
                    "usage": usage(event),
                }
        raise GenerationFailed("the engine ended the generation without finishing it")

    async def stream(
        self, generation: Generation, include_usage: bool, shutdown: anyio.Event
    ) -> AsyncIterator[ServerSentEvent]:
        """Chunks, then `[DONE]`. A client that leaves, or the server stopping, cancels the generation."""
        extra = {"usage": None} if include_usage else {}
        watcher = asyncio.create_task(generation.cancel_on(shutdown))
        events = generation.events()
        try:
            yield self._chunk({"role": "assistant", "content": ""}, None, extra)
            async for event in events:
                if isinstance(event, ThinkingDelta):
                    yield self._chunk({"reasoning_content": event.text}, None, extra)
                elif isinstance(event, TokenDelta):
                    yield self._chunk({"content": event.text}, None, extra)
                elif isinstance(event, Failed):
                    yield ServerSentEvent(data=json.dumps(error_body(event.message, "server_error")))
                    return
                elif isinstance(event, Done):
                    yield self._chunk({}, FINISH_REASONS[event.finish_reason], extra)
                    if include_usage:
                        chunk = {**self._head("chat.completion.chunk"), "choices": [], "usage": usage(event)}
                        yield ServerSentEvent(data=json.dumps(chunk))
            yield ServerSentEvent(data="[DONE]")
        finally:
            watcher.cancel()
            await events.aclose()  # a client that left mid-stream: cancel now, not when this is collected

    def _head(self, kind: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": self.fingerprint,
        }

    def _chunk(
        self, delta: dict[str, Any], finish_reason: str | None, extra: dict[str, Any]
    ) -> ServerSentEvent:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        chunk = {**self._head("chat.completion.chunk"), "choices": [choice], **extra}
        return ServerSentEvent(data=sse_json(chunk))


class GenerationFailed(APIError):
    status_code = 500
    error_type = "server_error"


def usage(done: Done) -> dict[str, Any]:
    prompt, completion = done.usage["prompt_tokens"], done.usage["completion_tokens"]
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "completion_tokens_details": {"reasoning_tokens": done.usage["thinking_tokens"]},
    }
