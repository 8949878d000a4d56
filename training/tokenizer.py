"""Training a byte-level BPE with NanoPrime's special tokens.

Byte-level means every string round-trips (accents, emoji, stray bytes) with no unknown token; digits are
split one per token so that arithmetic sees each digit, which the generated reasoning data depends on.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from model.tokenizer import SPECIAL_TOKENS, Tokenizer

MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def train_tokenizer(
    texts_or_files: Iterable[str | Path],
    vocab_size: int,
    min_frequency: int = 2,
    delimiter: str | None = "<|endoftext|>",
    show_progress: bool = False,
) -> Tokenizer:
    """Train on texts and/or files (a Path, or a str naming an existing file, is read as UTF-8 text).

    `delimiter` separates documents inside files; it is removed so it never becomes an ordinary merge.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(
            f"vocab_size {vocab_size} is too small: a byte-level BPE needs at least {MIN_VOCAB_SIZE}"
        )
    items = list(texts_or_files)
    if not items:
        raise ValueError("no texts or files to train the tokenizer on")
    hf_tokenizer = HFTokenizer(models.BPE())
    hf_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    hf_tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    documents = (_without_special_tokens(doc) for doc in _documents(items, delimiter))
    hf_tokenizer.train_from_iterator(documents, trainer=trainer)
    return Tokenizer(hf_tokenizer)


def _documents(items: list[str | Path], delimiter: str | None) -> Iterator[str]:
    for item in items:
        if isinstance(item, Path) or _is_file(item):
            path = Path(item)
            if not path.is_file():
                raise ValueError(f"tokenizer training file not found: {path}")
            text = path.read_text(encoding="utf-8")
            if not text.strip():
                raise ValueError(f"tokenizer training file is empty: {path}")
            parts = text.split(delimiter) if delimiter else [text]
            yield from (part for part in parts if part.strip())
        else:
            yield item


def _without_special_tokens(text: str) -> str:
    """BPE training does not isolate special tokens: a rendered chat would spend merges on '<|', '|>'."""
    for token in SPECIAL_TOKENS:
        text = text.replace(token, "\n")
    return text


def _is_file(item: str) -> bool:
    """A short single-line string that names an existing file; long or multi-line strings are texts."""
    if len(item) > 1024 or "\n" in item:
        return False
    try:
        return Path(item).is_file()
    except OSError:  # e.g. a name too long for the file system: it is text
        return False
