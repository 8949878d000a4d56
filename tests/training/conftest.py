"""Training test fixtures: a small story corpus, a tiny tokenizer trained on generated text, recipes."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from training_helpers import make_stories

from model.tokenizer import Tokenizer
from training.generators.arithmetic import ArithmeticGenerator
from training.generators.counting import CountingGenerator
from training.tokenizer import train_tokenizer


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """stories.txt (documents separated by <|endoftext|>) and italian.txt."""
    path = tmp_path_factory.mktemp("corpus")
    (path / "stories.txt").write_text("\n<|endoftext|>\n".join(make_stories(60)) + "\n", encoding="utf-8")
    italian = "Perché la città è così bella? Caffè, però, è già più forte. Così è la vita! 🎉 ☕\n"
    (path / "italian.txt").write_text(italian * 20, encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tokenizer(corpus_dir: Path) -> Tokenizer:
    """A ~300-token byte-level BPE trained on generated tasks and the story corpus."""
    rng = random.Random(0)
    texts = [(corpus_dir / "stories.txt"), (corpus_dir / "italian.txt")]
    for generator in (ArithmeticGenerator(max_digits=3), CountingGenerator()):
        for _ in range(300):
            task = generator.sample(rng)
            texts.append(f"{task.prompt}\n{task.thinking}\n{task.answer}")
    return train_tokenizer(texts, vocab_size=300)


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Tokenizer) -> Path:
    path = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save(path)
    return path
