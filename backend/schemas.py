"""Pydantic request and response bodies of the native API (the web UI's).

Requests forbid unknown fields so a misspelt setting is a 422 that names it instead of being silently ignored.
Generation settings are all optional in a request: a turn's settings are the server defaults, overridden by
the conversation's settings, overridden by the request's.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)


def no_nul(value: str) -> str:
    """PostgreSQL text cannot hold U+0000, so no text that may reach the database has it, on any database."""
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (U+0000)")
    return value


# Text from a client that is stored or looked up: ids, titles, prompts, messages, stop strings, searches.
Text = Annotated[str, AfterValidator(no_nul)]
NonBlank = Annotated[str, StringConstraints(min_length=1), AfterValidator(no_nul)]
# The largest count a request may give: anything beyond fits no database integer column or tensor index.
MAX_COUNT = 2**31 - 1


class Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class GenerationSettings(Request):
    """Sampling settings, named as in the OpenAI API; they map onto model.generation.SamplingParams.

    A field left out (or sent as null) keeps the conversation's or the server's value, except
    `thinking_budget`, where null means "no limit".
    """

    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = Field(default=None, gt=0, le=1)
    top_k: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    min_p: float | None = Field(default=None, ge=0, le=1)
    repetition_penalty: float | None = Field(default=None, gt=0)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: list[NonBlank] | None = Field(default=None, max_length=8)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)
    thinking: bool | None = None
    thinking_budget: int | None = Field(default=None, ge=0, le=MAX_COUNT)
    ignore_eos: bool | None = Field(default=None, description="keep generating past the end of the turn")

    def given(self) -> dict[str, Any]:
        """The settings this request actually sets."""
        return {
            name: getattr(self, name)
            for name in GenerationSettings.model_fields
            if name in self.model_fields_set
            and (getattr(self, name) is not None or name == "thinking_budget")
        }


class TurnRequest(GenerationSettings):
    """What the UI sends with every turn: the settings, and the conversation's system prompt."""

    system_prompt: Text | None = Field(default=None, max_length=20_000)


class ConversationCreate(Request):
    title: Text | None = Field(default=None, max_length=200)
    system_prompt: Text = Field(default="", max_length=20_000)
    settings: GenerationSettings | None = None


class ConversationUpdate(Request):
    title: Text | None = Field(default=None, max_length=200)
    system_prompt: Text | None = Field(default=None, max_length=20_000)
    settings: GenerationSettings | None = None

    @model_validator(mode="after")
    def _something_to_change(self) -> ConversationUpdate:
        if self.title is None and self.system_prompt is None and self.settings is None:
            raise ValueError("give at least one of title, system_prompt, settings")
        return self


class MessageCreate(TurnRequest):
    """A new user message (POST .../messages), or the new text of an edited one (.../messages/{id}/edit)."""

    content: Text = Field(max_length=200_000)

    @field_validator("content")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("content must not be empty")
        return value


class MessageOut(BaseModel):
    """A stored message; token counts and timings are flat fields, as the web UI reads them."""

    id: str
    conversation_id: str
    position: int
    role: Literal["user", "assistant"]
    content: str
    thinking: str
    status: Literal["streaming", "complete", "stopped", "error", "interrupted"]
    finish_reason: str | None
    error: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    thinking_tokens: int | None
    answer_tokens: int | None
    queue_ms: float | None
    ttft_ms: float | None
    total_ms: float | None
    tokens_per_s: float | None
    thinking_ms: float | None
    cache_bytes: int | None
    settings: dict[str, Any] | None
    seed: int | None
    model_name: str | None
    weights_hash: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, message: Any) -> MessageOut:
        timings = message.timings or {}
        fields = {
            name: getattr(message, name, None) for name in cls.model_fields if name not in TIMING_FIELDS
        }
        return cls(**fields, **{name: timings.get(name) for name in TIMING_FIELDS})


TIMING_FIELDS = ("queue_ms", "ttft_ms", "total_ms", "tokens_per_s", "thinking_ms", "cache_bytes")


class ConversationSummary(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    title: str
    model: str
    created_at: datetime
    updated_at: datetime
    snippet: str | None = None  # an excerpt of the text that matched the search, when searching


class ConversationDetail(ConversationSummary):
    system_prompt: str
    settings: dict[str, Any]
    messages: list[MessageOut]

    @classmethod
    def of(cls, conversation: Any) -> ConversationDetail:
        summary = ConversationSummary.model_validate(conversation).model_dump()
        return cls(
            **summary,
            system_prompt=conversation.system_prompt,
            settings=conversation.settings,
            messages=[MessageOut.of(message) for message in conversation.messages],
        )


class ConversationPage(BaseModel):
    items: list[ConversationSummary]
    total: int
    limit: int
    offset: int
