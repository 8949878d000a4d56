"""The tokenizer: exact round trips, the chat template, and parity with transformers.AutoTokenizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from model.tokenizer import SPECIAL_TOKENS, Tokenizer
from training.tokenizer import train_tokenizer

CONVERSATION = [
    {"role": "system", "content": "Sei un assistente gentile."},
    {"role": "user", "content": "Quanto fa 12 + 7? 🤔"},
    {"role": "assistant", "content": "12 + 7 = 19", "thinking": "ones: 2 + 7 = 9\ntens: 1 + 0 = 1"},
    {"role": "user", "content": "E adesso? Perché?"},
]


@pytest.mark.parametrize(
    "text",
    [
        "Perché la città è così bella? Caffè, però, è già più forte.",
        "Emoji: 🎉🤖☕ and a ZWJ family 👨‍👩‍👧 and flags 🇮🇹",
        "<|user|>Ciao!<|end|>\n<|assistant|><think>pensiero</think>Risposta è qui<|end|>\n<|endoftext|>",
        "  leading spaces, tabs\tand\nnew lines  ",
        "ordinal ª º, math ∑ ∞ ≠, CJK 漢字",
    ],
)
def test_round_trip_is_exact(tokenizer: Tokenizer, text: str) -> None:
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_tokens_are_single_ids(tokenizer: Tokenizer) -> None:
    for token in SPECIAL_TOKENS:
        ids = tokenizer.encode(f"a{token}b")
        assert tokenizer.token_id(token) in ids
        assert len(tokenizer.encode(token)) == 1
    assert tokenizer.pad_id == tokenizer.eos_id == tokenizer.token_id("<|endoftext|>")
    assert tokenizer.end_of_turn_id == tokenizer.token_id("<|end|>")
    assert tokenizer.think_start_id != tokenizer.think_end_id


def test_digits_are_split_one_per_token(tokenizer: Tokenizer) -> None:
    assert len(tokenizer.encode("1234567")) == 7


def test_render_chat_matches_the_contract(tokenizer: Tokenizer) -> None:
    messages = CONVERSATION[:3]
    expected = (
        "<|system|>Sei un assistente gentile.<|end|>\n<|user|>Quanto fa 12 + 7? 🤔<|end|>\n"
        "<|assistant|><think>ones: 2 + 7 = 9\ntens: 1 + 0 = 1</think>12 + 7 = 19<|end|>\n"
    )
    assert tokenizer.render_chat(messages, add_generation_prompt=False) == expected
    assert tokenizer.render_chat(messages[:2]).endswith("<|end|>\n<|assistant|><think>")
    assert tokenizer.render_chat(messages[:2], thinking=False).endswith("<|assistant|><think></think>")
    with pytest.raises(ValueError, match="unknown chat role"):
        tokenizer.render_chat([{"role": "tool", "content": "x"}])


@pytest.mark.parametrize("thinking", [True, False])
@pytest.mark.parametrize("generation_prompt", [True, False])
def test_auto_tokenizer_renders_and_encodes_the_same(
    tokenizer: Tokenizer, tokenizer_dir: Path, thinking: bool, generation_prompt: bool
) -> None:
    auto = AutoTokenizer.from_pretrained(tokenizer_dir)
    ours = tokenizer.render_chat(CONVERSATION, add_generation_prompt=generation_prompt, thinking=thinking)
    theirs = auto.apply_chat_template(
        CONVERSATION, tokenize=False, add_generation_prompt=generation_prompt, enable_thinking=thinking
    )
    assert theirs == ours
    ids = auto.apply_chat_template(
        CONVERSATION, tokenize=True, add_generation_prompt=generation_prompt, enable_thinking=thinking
    )
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert list(ids) == tokenizer.encode_chat(CONVERSATION, generation_prompt, thinking)


def test_auto_tokenizer_special_tokens_and_plain_text(tokenizer: Tokenizer, tokenizer_dir: Path) -> None:
    auto = AutoTokenizer.from_pretrained(tokenizer_dir)
    assert auto.eos_token == auto.pad_token == "<|endoftext|>"
    assert auto.pad_token_id == tokenizer.eos_id
    text = "Perché 🎉 12 + 7<|end|>"
    assert auto.encode(text) == tokenizer.encode(text)
    assert auto.decode(tokenizer.encode(text)) == text
    config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text())
    assert set(config["additional_special_tokens"]) | {config["eos_token"]} == set(SPECIAL_TOKENS)


def test_save_load_round_trip(tokenizer: Tokenizer, tmp_path: Path) -> None:
    tokenizer.save(tmp_path)
    loaded = Tokenizer.load(tmp_path)
    text = "Così 🎉<|user|>"
    assert loaded.encode(text) == tokenizer.encode(text)
    assert Tokenizer.from_str(tokenizer.to_str()).vocab_size == tokenizer.vocab_size


def test_tokenizer_without_special_tokens_is_refused(tmp_path: Path) -> None:
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import models, pre_tokenizers, trainers

    plain = HFTokenizer(models.BPE())
    plain.pre_tokenizer = pre_tokenizers.ByteLevel()
    plain.train_from_iterator(
        ["some text"], trainers.BpeTrainer(vocab_size=270, special_tokens=["<|endoftext|>"])
    )
    plain.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"lacks the special tokens <\|system\|>"):
        Tokenizer.load(tmp_path)


def test_train_tokenizer_reads_files_and_checks_sizes(corpus_dir: Path) -> None:
    tokenizer = train_tokenizer([corpus_dir / "stories.txt"], vocab_size=280)
    assert tokenizer.vocab_size == 280
    assert "<|endoftext|>" not in tokenizer.decode(tokenizer.encode("Once upon a time"))
    with pytest.raises(ValueError, match="too small"):
        train_tokenizer(["text"], vocab_size=100)
    with pytest.raises(ValueError, match="not found"):
        train_tokenizer([corpus_dir / "missing.txt"], vocab_size=280)
