"""Data sources: local text files, JSONL (text or chat), the task generators, and Hugging Face datasets.

Every source gives each rank an endless, deterministic stream of samples (`train_iter(start)`, resumable at
any position without replaying what came before where the source allows it) and a fixed held-out validation
list that never appears in the training stream. Seeds are strings fed to `random.Random`, which hashes them
the same way in every process, so all ranks agree on splits and shuffles without talking to each other.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from model.tokenizer import ROLE_TOKENS, render_chat
from training.generators import Generator, build_generator

DEFAULT_DELIMITER = "<|endoftext|>"


@dataclass(frozen=True)
class Sample:
    """A plain document (`text`) or a conversation (`messages`, assistant turns may carry `thinking`)."""

    text: str | None = None
    messages: tuple[Mapping[str, Any], ...] | None = None

    def as_text(self) -> str:
        """What a tokenizer should be trained on: the text, or the rendered conversation."""
        if self.text is not None:
            return self.text
        return render_chat(list(self.messages or ()), add_generation_prompt=False)


class Source(Protocol):
    name: str

    def train_iter(self, start: int = 0) -> Iterator[Sample]: ...

    def validation(self) -> list[Sample]: ...


@dataclass
class SourceContext:
    """What every source needs besides its own settings."""

    seed: int
    rank: int = 0
    world_size: int = 1
    val_fraction: float = 0.02
    val_docs: int = 200


# ---- local documents ---------------------------------------------------------------------------------------
class LocalSource:
    """Documents held in memory: a seeded split into validation and training, then a reshuffle every epoch."""

    def __init__(self, name: str, docs: list[Sample], ctx: SourceContext, val_fraction: float | None = None):
        self.name = name
        if not docs:
            raise ValueError(f"data source '{name}' has no documents")
        fraction = ctx.val_fraction if val_fraction is None else val_fraction
        order = list(range(len(docs)))
        random.Random(f"{ctx.seed}:{name}:split").shuffle(order)
        n_val = min(ctx.val_docs, max(1, int(len(docs) * fraction))) if fraction > 0 and len(docs) > 1 else 0
        self._val = [docs[i] for i in sorted(order[:n_val])]
        train = [docs[i] for i in sorted(order[n_val:])]
        self._shard = train[ctx.rank :: ctx.world_size]
        if not self._shard:
            raise ValueError(
                f"data source '{name}': {len(train)} training documents, too few for {ctx.world_size} ranks"
            )
        self._seed = f"{ctx.seed}:{name}:{ctx.rank}"

    def __len__(self) -> int:
        return len(self._shard)

    def train_iter(self, start: int = 0) -> Iterator[Sample]:
        epoch, position = divmod(start, len(self._shard))
        while True:
            order = list(range(len(self._shard)))
            random.Random(f"{self._seed}:epoch{epoch}").shuffle(order)
            for index in order[position:]:
                yield self._shard[index]
            epoch, position = epoch + 1, 0

    def validation(self) -> list[Sample]:
        return list(self._val)


def read_text_documents(paths: list[str | Path], delimiter: str | None, max_doc_chars: int) -> list[Sample]:
    """Documents of text files split on `delimiter`; longer than max_doc_chars, split at line breaks."""
    docs: list[Sample] = []
    for path in _existing_files(paths):
        text = path.read_text(encoding="utf-8")
        if not text.strip():
            raise ValueError(f"data file is empty: {path}")
        parts = text.split(delimiter) if delimiter else [text]
        for part in parts:
            docs += [Sample(text=piece) for piece in split_long_text(part.strip(), max_doc_chars) if piece]
    return docs


def split_long_text(text: str, max_chars: int) -> list[str]:
    """Pieces of at most ~max_chars, cut at paragraph or line breaks (a single longer line stays whole)."""
    if len(text) <= max_chars:
        return [text]
    pieces, current, size = [], [], 0
    for line in text.splitlines(keepends=True):
        if current and size + len(line) > max_chars:
            pieces.append("".join(current).strip())
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        pieces.append("".join(current).strip())
    return [p for p in pieces if p]


def read_jsonl_documents(paths: list[str | Path]) -> list[Sample]:
    """One sample per line: {"text": ...} or {"messages": [{"role", "content", "thinking"?}, ...]}."""
    docs: list[Sample] = []
    for path in _existing_files(paths):
        lines = path.read_text(encoding="utf-8").splitlines()
        if not any(line.strip() for line in lines):
            raise ValueError(f"data file is empty: {path}")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not valid JSON ({error.msg})") from error
            docs.append(record_to_sample(record, f"{path}:{number}"))
    return docs


def record_to_sample(
    record: Any, where: str, text_field: str = "text", messages_field: str = "messages"
) -> Sample:
    if isinstance(record, Mapping) and isinstance(record.get(messages_field), list):
        return Sample(messages=tuple(validate_messages(record[messages_field], where)))
    if isinstance(record, Mapping) and isinstance(record.get(text_field), str):
        return Sample(text=record[text_field])
    raise ValueError(f"{where}: expected a '{text_field}' string or a '{messages_field}' list")


def validate_messages(messages: list[Any], where: str) -> list[dict[str, str]]:
    """Chat messages with known roles, string content and at least one assistant turn to learn from."""
    clean = []
    for message in messages:
        if not isinstance(message, Mapping) or message.get("role") not in ROLE_TOKENS:
            raise ValueError(f"{where}: each message needs a role among {list(ROLE_TOKENS)}")
        item = {"role": message["role"], "content": message.get("content") or ""}
        if message.get("thinking"):
            item["thinking"] = message["thinking"]
        if not all(isinstance(v, str) for v in item.values()):
            raise ValueError(f"{where}: message content and thinking must be strings")
        clean.append(item)
    if not any(m["role"] == "assistant" for m in clean):
        raise ValueError(f"{where}: a conversation needs at least one assistant message")
    return clean


def _existing_files(paths: list[str | Path]) -> list[Path]:
    if isinstance(paths, str | Path):
        paths = [paths]
    if not paths:
        raise ValueError("a data source lists no files")
    files = [Path(p) for p in paths]
    for file in files:
        if not file.is_file():
            raise ValueError(f"data file not found: {file}")
    return files


# ---- generated tasks ---------------------------------------------------------------------------------------
class GeneratorSource:
    """Task k of the run is drawn from Random(seed:name:k): random access, so resuming costs nothing."""

    def __init__(
        self, name: str, generator: Generator, ctx: SourceContext, no_thinking_fraction: float = 0.25
    ):
        if not 0 <= no_thinking_fraction <= 1:
            raise ValueError(f"data source '{name}': no_thinking_fraction must be in [0, 1]")
        self.name = name
        self.generator = generator
        self.no_thinking_fraction = no_thinking_fraction
        self._ctx = ctx
        self._n_val = ctx.val_docs if ctx.val_fraction > 0 else 0

    def task(self, split: str, index: int) -> tuple[Any, bool]:
        rng = random.Random(f"{self._ctx.seed}:{self.name}:{split}:{index}")
        task = self.generator.sample(rng)
        return task, rng.random() >= self.no_thinking_fraction

    def train_iter(self, start: int = 0) -> Iterator[Sample]:
        position = start
        while True:
            task, thinking = self.task("train", position * self._ctx.world_size + self._ctx.rank)
            yield Sample(messages=tuple(task.messages(thinking=thinking)))
            position += 1

    def validation(self) -> list[Sample]:
        return [Sample(messages=tuple(self.task("val", k)[0].messages())) for k in range(self._n_val)]


# ---- Hugging Face datasets ---------------------------------------------------------------------------------
class HFDatasetSource:
    """A dataset by hub name (streamed) or a local `save_to_disk` directory, read as an iterable dataset.

    The first `val_docs` records are held out; the rest is split by rank and shuffled with a buffer each
    epoch.
    Resuming skips `start` records of this rank's stream, which streams them again (the hub gives no random
    access).
    """

    def __init__(
        self,
        name: str,
        dataset: str,
        ctx: SourceContext,
        split: str = "train",
        config_name: str | None = None,
        text_field: str = "text",
        messages_field: str = "messages",
        shuffle_buffer: int = 10_000,
    ):
        import datasets  # imported here: loading `datasets` costs a second nobody else needs to pay
        from datasets.distributed import split_dataset_by_node

        self.name = name
        self._ctx = ctx
        self._fields = (text_field, messages_field)
        self._buffer = shuffle_buffer
        path = Path(dataset)
        if path.exists():
            try:
                loaded = datasets.load_from_disk(str(path))
            except Exception as error:  # datasets raises FileNotFoundError or its own errors on a bad folder
                raise ValueError(f"data source '{name}': cannot load dataset from {path}: {error}") from error
            if isinstance(loaded, datasets.DatasetDict):
                if split not in loaded:
                    raise ValueError(f"data source '{name}': {path} has no split '{split}' ({list(loaded)})")
                loaded = loaded[split]
            if len(loaded) == 0:
                raise ValueError(f"data source '{name}': dataset {path} is empty")
            stream = loaded.to_iterable_dataset(num_shards=min(len(loaded), 64))
        else:
            try:
                stream = datasets.load_dataset(dataset, config_name, split=split, streaming=True)
            except Exception as error:  # no network, unknown name, missing split
                raise ValueError(f"data source '{name}': cannot open dataset '{dataset}': {error}") from error
        self._n_val = ctx.val_docs if ctx.val_fraction > 0 else 0
        self._val_stream = stream.take(self._n_val)
        train = stream.skip(self._n_val)
        self._train = split_dataset_by_node(train, rank=ctx.rank, world_size=ctx.world_size)

    def _sample(self, record: Any, index: int) -> Sample:
        text_field, messages_field = self._fields
        return record_to_sample(record, f"dataset '{self.name}' record {index}", text_field, messages_field)

    def train_iter(self, start: int = 0) -> Iterator[Sample]:
        shuffled = self._train.shuffle(seed=self._ctx.seed, buffer_size=self._buffer)
        position, epoch = 0, 0
        while True:
            shuffled.set_epoch(epoch)
            produced = False
            for record in shuffled:
                produced = True
                if position >= start:
                    yield self._sample(record, position)
                position += 1
            if not produced:
                raise ValueError(
                    f"data source '{self.name}': rank {self._ctx.rank} received no training records"
                )
            epoch += 1

    def validation(self) -> list[Sample]:
        return [self._sample(record, i) for i, record in enumerate(self._val_stream)]


# ---- construction from a recipe ----------------------------------------------------------------------------
_KEYS = {
    "text": {"type", "paths", "delimiter", "max_doc_chars", "val_fraction"},
    "jsonl": {"type", "paths", "val_fraction"},
    "generator": {"type", "generator", "options", "no_thinking_fraction"},
    "hf": {"type", "dataset", "split", "config_name", "text_field", "messages_field", "shuffle_buffer"},
}


def build_source(
    name: str, spec: Mapping[str, Any], ctx: SourceContext, base_dir: Path | None = None
) -> Source:
    """A source from its recipe table; relative paths are resolved against base_dir."""
    kind = spec.get("type")
    if kind not in _KEYS:
        raise ValueError(f"data source '{name}' has type {kind!r}; use one of {sorted(_KEYS)}")
    unknown = sorted(set(spec) - _KEYS[kind])
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown} in data source '{name}'")

    def resolve(paths: Any) -> list[Path]:
        paths = [paths] if isinstance(paths, str) else list(paths or [])
        return [Path(p) if base_dir is None or Path(p).is_absolute() else base_dir / p for p in paths]

    if kind == "text":
        docs = read_text_documents(
            resolve(spec.get("paths")),
            spec.get("delimiter", DEFAULT_DELIMITER),
            int(spec.get("max_doc_chars", 8000)),
        )
        return LocalSource(name, docs, ctx, spec.get("val_fraction"))
    if kind == "jsonl":
        return LocalSource(
            name, read_jsonl_documents(resolve(spec.get("paths"))), ctx, spec.get("val_fraction")
        )
    if kind == "generator":
        options = dict(spec.get("options", {}))
        if "paths" in options:
            options["paths"] = resolve(options["paths"])
        generator = build_generator(spec.get("generator", name), options)
        return GeneratorSource(name, generator, ctx, float(spec.get("no_thinking_fraction", 0.25)))
    dataset = spec.get("dataset")
    if not dataset:
        raise ValueError(
            f"data source '{name}' (type hf) needs 'dataset': a hub name or a saved dataset folder"
        )
    local = resolve(dataset)[0]
    return HFDatasetSource(
        name,
        str(local) if local.exists() else dataset,
        ctx,
        split=spec.get("split", "train"),
        config_name=spec.get("config_name"),
        text_field=spec.get("text_field", "text"),
        messages_field=spec.get("messages_field", "messages"),
        shuffle_buffer=int(spec.get("shuffle_buffer", 10_000)),
    )
