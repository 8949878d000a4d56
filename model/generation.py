"""From logits to streamed text: sampling, stopping, incremental detokenization and the thinking splitter.

The engine (backend/engine.py) owns batching and the model; everything here works on one sequence's tokens
(or, for sampling, on a batch of logit rows with per-row settings) and needs no model, so it is tested alone.

One assistant turn flows through `TurnDecoder.push(token_id)`:

    token id -> StreamingDetokenizer (whole UTF-8 characters only) -> ThinkingSplitter (<think>...</think>)
             -> answer text -> StopMatcher (stop strings) -> ThinkingDelta / TokenDelta events

and the decoder decides when the turn is over (end of turn, stop string, max_new_tokens) and when the
thinking budget forces `</think>`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from model.modules import cpu_kernels

THINK_START_TEXT = "<think>"
THINK_END_TEXT = "</think>"
FINISH_REASONS = ("stop", "stop_string", "length", "cancelled")
_MAX_UTF8_BYTES = 4  # a UTF-8 character spans at most four bytes, so at most four byte-level tokens


# ---- request settings --------------------------------------------------------------------------------------
@dataclass
class SamplingParams:
    """How one request samples and stops. temperature 0 means greedy."""

    temperature: float = 0.7
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    max_new_tokens: int = 512
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    thinking: bool = True
    thinking_budget: int | None = None
    ignore_eos: bool = False  # keep going past end of turn until max_new_tokens (benchmarks, tests)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first setting that cannot be used."""
        if not _is_number(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a number >= 0, got {self.temperature!r}")
        if not _is_number(self.top_p) or not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {self.top_k!r}")
        if not _is_number(self.min_p) or not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p!r}")
        if not _is_number(self.repetition_penalty) or self.repetition_penalty <= 0:
            raise ValueError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        if not _is_int(self.max_new_tokens) or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {self.max_new_tokens!r}")
        if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
            raise ValueError(f"stop must be a list of non-empty strings, got {self.stop!r}")
        if self.seed is not None and (not _is_int(self.seed) or self.seed < 0):
            raise ValueError(f"seed must be None or an integer >= 0, got {self.seed!r}")
        if not isinstance(self.thinking, bool):
            raise ValueError(f"thinking must be true or false, got {self.thinking!r}")
        if not isinstance(self.ignore_eos, bool):
            raise ValueError(f"ignore_eos must be true or false, got {self.ignore_eos!r}")
        budget = self.thinking_budget
        if budget is not None and (not _is_int(budget) or budget < 0):
            raise ValueError(f"thinking_budget must be None or an integer >= 0, got {budget!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def make_generator(self) -> torch.Generator:
        """A CPU generator of its own: a seeded request samples the same tokens whatever else is batched."""
        generator = torch.Generator()
        if self.seed is None:
            generator.seed()
        else:
            generator.manual_seed(self.seed)
        return generator


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---- events ------------------------------------------------------------------------------------------------
@dataclass
class ThinkingDelta:
    text: str


@dataclass
class TokenDelta:
    text: str


@dataclass
class Done:
    """The end of a turn. usage: prompt_tokens, completion_tokens, thinking_tokens, answer_tokens.
    timings: queue_ms, ttft_ms, total_ms, tokens_per_s, cache_bytes."""

    finish_reason: str
    usage: dict[str, int]
    timings: dict[str, float]


@dataclass
class Failed:
    message: str


Event = ThinkingDelta | TokenDelta | Done | Failed


# ---- sampling ----------------------------------------------------------------------------------------------
def apply_repetition_penalty(logits: torch.Tensor, seen_ids: torch.Tensor, penalty: float) -> None:
    """CTRL-style penalty, in place on one row: seen tokens' positive logits divided, negative multiplied."""
    if penalty == 1.0 or seen_ids.numel() == 0:
        return
    values = logits[seen_ids]
    logits[seen_ids] = torch.where(values > 0, values / penalty, values * penalty)


def sample_tokens(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator],
    seen_ids: Sequence[torch.Tensor | None] | None = None,
) -> list[int]:
    """One next token per row of `logits` (B, V), each row with its own settings and generator.

    Greedy rows take the argmax. Sampling rows go temperature -> top-k -> min-p -> top-p (filters on the
    sorted distribution, so the most likely token always survives), then draw one uniform number from the
    row's own generator and invert the cumulative distribution: a row consumes exactly one draw per token,
    whatever the batch around it, which keeps seeded requests reproducible under continuous batching. Rows
    with temperature alone, the default, invert it in one C call where the CPU kernels are built
    (cpu_kernels.sample).
    """
    if logits.dim() != 2 or logits.shape[0] != len(params) or len(generators) != len(params):
        shape = tuple(logits.shape)
        raise ValueError(f"sample_tokens needs logits (B, V) with B = {len(params)} rows, got {shape}")
    logits = logits.float()
    if seen_ids is not None and any(p.repetition_penalty != 1.0 for p in params):
        logits = logits.clone()
        for row, (p, seen) in enumerate(zip(params, seen_ids, strict=True)):
            if seen is not None:
                apply_repetition_penalty(logits[row], seen.to(logits.device), p.repetition_penalty)
    chosen = [0] * len(params)
    greedy = [i for i, p in enumerate(params) if p.greedy]
    if greedy:
        for row, token in zip(greedy, logits[greedy].argmax(dim=-1).tolist(), strict=True):
            chosen[row] = token
    rows = [i for i, p in enumerate(params) if not p.greedy]
    if rows:
        for row, token in zip(rows, _sample_rows(logits, params, generators, rows), strict=True):
            chosen[row] = token
    return chosen


def _sample_rows(
    logits: torch.Tensor,
    params: Sequence[SamplingParams],
    generators: Sequence[torch.Generator],
    rows: list[int],
) -> list[int]:
    device = logits.device
    every_row = len(rows) == logits.shape[0]  # a decoding batch usually samples all: no copy of the rows
    chosen = logits if every_row else logits[rows]
    temperatures = torch.tensor([params[i].temperature for i in rows], device=device)
    vocab = chosen.shape[-1]
    filtered = any(0 < params[i].top_k < vocab or params[i].min_p > 0 or params[i].top_p < 1 for i in rows)
    if not filtered and device.type == "cpu" and cpu_kernels.enabled():
        draws = torch.cat([torch.rand(1, generator=generators[i]) for i in rows])
        return cpu_kernels.sample(chosen.contiguous(), temperatures, draws)
    sub = chosen / temperatures[:, None]
    order = None
    if filtered:
        top_k = torch.tensor([params[i].top_k or vocab for i in rows], device=device)
        min_p = torch.tensor([params[i].min_p for i in rows], device=device)
        top_p = torch.tensor([params[i].top_p for i in rows], device=device)
        sub, order = sub.sort(dim=-1, descending=True)
        probs = torch.softmax(sub, dim=-1)
        ranks = torch.arange(vocab, device=device)
        remove = ranks[None, :] >= top_k[:, None]
        remove |= probs < min_p[:, None] * probs[:, :1]
        remove |= probs.cumsum(dim=-1) - probs > top_p[:, None]
        probs = probs.masked_fill(remove, 0.0)
    else:
        probs = torch.softmax(sub, dim=-1)
    cdf = probs.cumsum(dim=-1)
    draws = torch.cat([torch.rand(1, generator=generators[i]) for i in rows]).to(device)
    index = torch.searchsorted(cdf, (draws * cdf[:, -1])[:, None], right=True).clamp_(max=vocab - 1)
    if order is not None:
        index = order.gather(-1, index)
    return index[:, 0].tolist()


# ---- text streaming ----------------------------------------------------------------------------------------
class Decoder(Protocol):
    def decode(self, ids: list[int]) -> str: ...


class StreamingDetokenizer:
    """Turns token ids into text deltas that never end in half a UTF-8 character.

    A byte-level BPE token can hold part of a multi-byte character; decoding it alone gives U+FFFD. So we
    decode a small window (one token of left context plus the unread tokens) and hold text back while it ends
    in U+FFFD. After four unread tokens the bytes cannot complete a character any more, so they are emitted
    as the replacement character they are.
    """

    def __init__(self, tokenizer: Decoder) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0  # start of the context window
        self._read = 0  # tokens before this one have been emitted

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._tokenizer.decode(self._ids[self._prefix : self._read])
        text = self._tokenizer.decode(self._ids[self._prefix :])
        unread = len(self._ids) - self._read
        if len(text) <= len(prefix_text) or (text.endswith("\ufffd") and unread < _MAX_UTF8_BYTES):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return text[len(prefix_text) :]

    def flush(self) -> str:
        """Whatever is still held back (an incomplete character at the very end becomes U+FFFD)."""
        prefix_text = self._tokenizer.decode(self._ids[self._prefix : self._read])
        text = self._tokenizer.decode(self._ids[self._prefix :])
        self._ids, self._prefix, self._read = [], 0, 0
        return text[len(prefix_text) :]


def _partial_suffix(text: str, needle: str) -> int:
    """Length of the longest proper prefix of `needle` that ends `text` (text that may still become it)."""
    for size in range(min(len(needle) - 1, len(text)), 0, -1):
        if text.endswith(needle[:size]):
            return size
    return 0


class ThinkingSplitter:
    """Routes streamed text to the thinking channel (between <think> and </think>) or the answer channel.

    Tags are matched in the text, so they are found even when the model spells them over several tokens; a
    possible partial tag at the end of a chunk is held back until the next chunk decides. With thinking on
    the prompt already ends in `<think>`, so we start inside the block: text before `</think>` is thinking
    whether or not the model repeats the opening tag. A `<think>` in the answer opens a new block; a stray
    `</think>` in the answer is dropped.
    """

    def __init__(self, in_thinking: bool = True) -> None:
        self.in_thinking = in_thinking
        self._at_block_start = in_thinking  # nothing but whitespace seen since the block opened
        self._pending = ""

    def feed(self, text: str) -> list[tuple[str, str]]:
        """(channel, text) pieces, channel "thinking" or "answer", in order."""
        buffer = self._pending + text
        self._pending = ""
        pieces: list[tuple[str, str]] = []
        while buffer:
            if self.in_thinking and self._at_block_start:
                stripped = buffer.lstrip()
                if stripped.startswith(THINK_START_TEXT):
                    buffer = stripped[len(THINK_START_TEXT) :]
                    continue
                if THINK_START_TEXT.startswith(stripped):  # could still become a repeated opening tag
                    self._pending = buffer
                    break
                self._at_block_start = False
            needle = THINK_END_TEXT if self.in_thinking else THINK_START_TEXT
            index = buffer.find(needle)
            stray = -1 if self.in_thinking else buffer.find(THINK_END_TEXT)
            if stray >= 0 and (index < 0 or stray < index):
                self._emit(pieces, buffer[:stray])
                buffer = buffer[stray + len(THINK_END_TEXT) :]
                continue
            if index >= 0:
                self._emit(pieces, buffer[:index])
                buffer = buffer[index + len(needle) :]
                self.in_thinking = not self.in_thinking
                self._at_block_start = self.in_thinking
                continue
            hold = _partial_suffix(buffer, needle)
            if not self.in_thinking:
                hold = max(hold, _partial_suffix(buffer, THINK_END_TEXT))
            self._emit(pieces, buffer[: len(buffer) - hold])
            self._pending = buffer[len(buffer) - hold :]
            break
        return pieces

    def flush(self) -> list[tuple[str, str]]:
        pieces: list[tuple[str, str]] = []
        self._emit(pieces, self._pending)
        self._pending = ""
        return pieces

    def _emit(self, pieces: list[tuple[str, str]], text: str) -> None:
        if text:
            pieces.append(("thinking" if self.in_thinking else "answer", text))


class StopMatcher:
    """Finds stop strings in streamed text, holding back any tail that may be the start of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = list(stops)
        self._pending = ""

    def push(self, text: str) -> tuple[str, bool]:
        """(text safe to emit, whether a stop string was hit). After a hit the rest is discarded."""
        buffer = self._pending + text
        hits = [i for i in (buffer.find(stop) for stop in self._stops) if i >= 0]
        if hits:
            self._pending = ""
            return buffer[: min(hits)], True
        hold = max((_partial_suffix(buffer, stop) for stop in self._stops), default=0)
        self._pending = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold], False

    def flush(self) -> str:
        text, self._pending = self._pending, ""
        return text


# ---- one assistant turn ------------------------------------------------------------------------------------
class TurnTokenizer(Decoder, Protocol):
    @property
    def eos_id(self) -> int: ...
    @property
    def end_of_turn_id(self) -> int: ...
    @property
    def think_start_id(self) -> int: ...
    @property
    def think_end_id(self) -> int: ...


class TurnDecoder:
    """Follows one assistant turn token by token: events out, finish reason, thinking budget, token counts.

    `max_tokens` caps the turn below max_new_tokens when the model's context would run out first.
    Thinking tokens are those generated inside the thinking block, the closing `</think>` included.
    """

    def __init__(
        self, tokenizer: TurnTokenizer, params: SamplingParams, max_tokens: int | None = None
    ) -> None:
        self.params = params
        self._tokenizer = tokenizer
        self._detokenizer = StreamingDetokenizer(tokenizer)
        self._splitter = ThinkingSplitter(in_thinking=params.thinking)
        self._stop = StopMatcher(params.stop)
        self._limit = params.max_new_tokens if max_tokens is None else min(max_tokens, params.max_new_tokens)
        self._end_ids = set() if params.ignore_eos else {tokenizer.eos_id, tokenizer.end_of_turn_id}
        self._tags = {tokenizer.think_start_id: THINK_START_TEXT, tokenizer.think_end_id: THINK_END_TEXT}
        self.token_ids: list[int] = []
        self.thinking_tokens = 0
        self.finish_reason: str | None = None

    @property
    def answer_tokens(self) -> int:
        return len(self.token_ids) - self.thinking_tokens

    def forced_token(self) -> int | None:
        """`</think>` once the thinking budget is spent, else None (sample freely)."""
        budget = self.params.thinking_budget
        if budget is not None and self._splitter.in_thinking and self.thinking_tokens >= budget:
            return self._tokenizer.think_end_id
        return None

    def push(self, token_id: int) -> list[Event]:
        """Take the next generated token; return the events it completes, set finish_reason at the end."""
        if self.finish_reason is not None:
            raise ValueError("this turn has already finished")
        self.token_ids.append(token_id)
        if self._splitter.in_thinking:
            self.thinking_tokens += 1
        if token_id in self._end_ids:
            return self.finish("stop")
        if token_id in self._tags:
            text = self._detokenizer.flush() + self._tags[token_id]
        else:
            text = self._detokenizer.push(token_id)
        events = self._route(self._splitter.feed(text))
        if self.finish_reason is None and len(self.token_ids) >= self._limit:
            events += self.finish("length")
        return events

    def finish(self, reason: str) -> list[Event]:
        """End the turn (if not already ended by a stop string) and flush held-back text."""
        if reason not in FINISH_REASONS:
            raise ValueError(f"unknown finish reason {reason!r}; use one of {FINISH_REASONS}")
        if self.finish_reason is not None:
            return []
        events = self._route(self._splitter.feed(self._detokenizer.flush()) + self._splitter.flush())
        if self.finish_reason is None:
            tail = self._stop.flush()
            if tail:
                events.append(TokenDelta(tail))
            self.finish_reason = reason
        return _merge(events)

    def _route(self, pieces: list[tuple[str, str]]) -> list[Event]:
        events: list[Event] = []
        for channel, text in pieces:
            if self.finish_reason is not None:
                break
            if channel == "thinking":
                events.append(ThinkingDelta(text))
                continue
            text, hit = self._stop.push(text)
            if text:
                events.append(TokenDelta(text))
            if hit:
                self.finish_reason = "stop_string"
        return _merge(events)


def _merge(events: list[Event]) -> list[Event]:
    """Join neighbouring deltas of the same channel, so one token gives at most one event per channel."""
    merged: list[Event] = []
    for event in events:
        last = merged[-1] if merged else None
        if isinstance(event, ThinkingDelta | TokenDelta) and type(last) is type(event):
            last.text += event.text  # type: ignore[union-attr]
        else:
            merged.append(event)
    return merged
