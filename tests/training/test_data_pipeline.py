"""Data pipeline: packing, loss masks, sources (text, JSONL, generators, saved HF dataset), mixtures."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from model.tokenizer import Tokenizer
from training.encoding import encode_sample
from training.generators.arithmetic import ArithmeticGenerator
from training.packing import Packer
from training.sources import (
    GeneratorSource,
    HFDatasetSource,
    LocalSource,
    Sample,
    SourceContext,
    build_source,
    read_jsonl_documents,
    split_long_text,
)
from training.stream import DataStream, rows_to_batch, validation_rows


def test_packing_on_a_hand_checked_example() -> None:
    packer = Packer(seq_len=5, pad_id=0, open_rows=2)  # rows of 6 tokens
    packer.add([1, 2, 3], [1, 1, 1])  # A opens row 1
    packer.add([4, 5, 6, 7], [0, 1, 1, 1])  # B does not fit beside A (3 left): opens row 2
    packer.add([8, 9], [1, 1])  # C fits both; best fit is B's row (2 left), which is now full
    assert len(packer) == 1
    packer.add(list(range(10, 18)), [1] * 8)  # D: a full 6-token chunk, then [16, 17] into A's row
    packer.flush()
    rows = [packer.pop() for _ in range(len(packer))]
    assert rows == [
        ([4, 5, 6, 7, 8, 9], [0, 1, 1, 1, 1, 1]),
        ([10, 11, 12, 13, 14, 15], [1, 1, 1, 1, 1, 1]),
        ([1, 2, 3, 16, 17, 0], [1, 1, 1, 1, 1, 0]),
    ]
    x, y, mask = rows_to_batch(rows)
    assert x[2].tolist() == [1, 2, 3, 16, 17] and y[2].tolist() == [2, 3, 16, 17, 0]
    assert mask[2].tolist() == [1, 1, 1, 1, 0]  # the pad target never trains
    assert mask[0].tolist() == [1, 1, 1, 1, 1]


def test_packer_evicts_the_fullest_row_and_never_splits_a_fitting_document() -> None:
    packer = Packer(seq_len=9, pad_id=0, open_rows=1)
    packer.add([1] * 7, [1] * 7)
    packer.add([2] * 5, [1] * 5)  # does not fit (3 left): two rows open, the fuller (7) leaves
    assert packer.pop() == ([1] * 7 + [0] * 3, [1] * 7 + [0] * 3)
    packer.add([3] * 4, [1] * 4)
    packer.add([4] * 3, [0] * 3)  # no targets: dropped
    packer.flush()
    assert packer.pop()[0] == [2] * 5 + [3] * 4 + [0]


def test_chat_loss_mask_covers_assistant_turns_only(tokenizer: Tokenizer) -> None:
    messages = (
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4", "thinking": "2 + 2 = 4"},
        {"role": "user", "content": "Thanks"},
        {"role": "assistant", "content": "You are welcome."},
    )
    ids, mask = encode_sample(tokenizer, Sample(messages=messages))
    rendered = tokenizer.render_chat(list(messages), add_generation_prompt=False)
    assert ids == tokenizer.encode(rendered) + [tokenizer.eos_id]
    trained = [tokenizer.decode([i]) for i, m in zip(ids, mask, strict=True) if m]
    assert "".join(trained) == "<think>2 + 2 = 4</think>4<|end|><think></think>You are welcome.<|end|>"
    assert mask[-1] == 0 and ids[-1] == tokenizer.eos_id


def test_text_documents_train_on_every_token(tokenizer: Tokenizer) -> None:
    ids, mask = encode_sample(tokenizer, Sample(text="Once upon a time"))
    assert ids == tokenizer.encode("Once upon a time") + [tokenizer.eos_id]
    assert mask == [1] * len(ids)


def test_split_long_text_cuts_at_line_breaks() -> None:
    text = "\n".join(f"line {i:03d}" for i in range(100))
    pieces = split_long_text(text, 100)
    assert all(len(p) <= 100 for p in pieces)
    assert "\n".join(pieces) == text


def _docs(n: int) -> list[Sample]:
    return [Sample(text=f"document {i}") for i in range(n)]


def test_local_source_split_shards_and_shuffle_are_deterministic() -> None:
    docs = _docs(50)
    sources = [
        LocalSource("s", docs, SourceContext(seed=3, rank=r, world_size=2, val_fraction=0.1)) for r in (0, 1)
    ]
    val = sources[0].validation()
    assert len(val) == 5 and val == sources[1].validation()
    epoch = [list(itertools.islice(s.train_iter(), len(s))) for s in sources]
    assert not set(epoch[0]) & set(epoch[1])  # ranks see disjoint shards
    assert set(epoch[0]) | set(epoch[1]) | set(val) == set(docs)  # nothing lost, validation held out
    again = LocalSource("s", docs, SourceContext(seed=3, rank=0, world_size=2, val_fraction=0.1))
    assert list(itertools.islice(again.train_iter(), 40)) == list(
        itertools.islice(sources[0].train_iter(), 40)
    )
    second_epoch = list(itertools.islice(sources[0].train_iter(len(sources[0])), len(sources[0])))
    assert second_epoch != epoch[0] and set(second_epoch) == set(epoch[0])  # reshuffled each epoch
    other_seed = LocalSource("s", docs, SourceContext(seed=4, rank=0, world_size=2, val_fraction=0.1))
    assert list(itertools.islice(other_seed.train_iter(), 20)) != epoch[0][:20]


def test_sources_resume_at_any_position() -> None:
    ctx = SourceContext(seed=1, rank=1, world_size=2, val_fraction=0.1, val_docs=4)
    local = LocalSource("s", _docs(30), ctx)
    generated = GeneratorSource("arithmetic", ArithmeticGenerator(), ctx)
    for source in (local, generated):
        full = list(itertools.islice(source.train_iter(), 40))
        assert list(itertools.islice(source.train_iter(23), 17)) == full[23:]
    assert len(generated.validation()) == 4
    other_rank = GeneratorSource("arithmetic", ArithmeticGenerator(), SourceContext(1, 0, 2, 0.1, 4))
    assert not set(map(repr, itertools.islice(other_rank.train_iter(), 20))) & set(map(repr, full[:20]))


def test_jsonl_source_reads_text_and_chats(tmp_path: Path) -> None:
    path = tmp_path / "data.jsonl"
    chat = {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hey", "thinking": "t"},
        ]
    }
    path.write_text(json.dumps({"text": "plain"}) + "\n\n" + json.dumps(chat) + "\n")
    docs = read_jsonl_documents([path])
    assert docs[0] == Sample(text="plain")
    assert docs[1].messages[1] == {"role": "assistant", "content": "hey", "thinking": "t"}
    path.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"data.jsonl:2: expected a 'text' string or a 'messages' list"):
        read_jsonl_documents([path])
    path.write_text(json.dumps({"messages": [{"role": "user", "content": "no answer"}]}) + "\n")
    with pytest.raises(ValueError, match="at least one assistant message"):
        read_jsonl_documents([path])


def test_hf_dataset_saved_to_disk(tmp_path: Path) -> None:
    import datasets

    rows = [{"text": f"record number {i}"} for i in range(40)]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "ds"))
    ctx = SourceContext(seed=0, rank=0, world_size=1, val_fraction=0.1, val_docs=5)
    source = build_source("hf", {"type": "hf", "dataset": "ds", "shuffle_buffer": 8}, ctx, base_dir=tmp_path)
    assert isinstance(source, HFDatasetSource)
    val = source.validation()
    assert [s.text for s in val] == [f"record number {i}" for i in range(5)]
    epoch = [s.text for s in itertools.islice(source.train_iter(), 35)]
    assert sorted(epoch) == sorted(f"record number {i}" for i in range(5, 40))  # one epoch, shuffled
    assert epoch != sorted(epoch, key=lambda t: int(t.split()[-1]))
    assert [s.text for s in itertools.islice(source.train_iter(30), 10)] == [
        s.text for s in itertools.islice(source.train_iter(), 40)
    ][30:]


def _stream(tokenizer: Tokenizer, seed: int = 5) -> DataStream:
    ctx = SourceContext(seed=seed, val_fraction=0.0)
    sources = {
        "a": LocalSource("a", [Sample(text="alpha " * (i % 7 + 1)) for i in range(20)], ctx),
        "b": LocalSource("b", [Sample(text="beta " * (i % 5 + 1)) for i in range(20)], ctx),
    }
    phases = [("one", {"a": 3.0, "b": 1.0}), ("two", {"b": 1.0})]
    return DataStream(tokenizer, sources, phases, seed=seed, open_rows=4)


def test_stream_mixture_follows_phase_weights(tokenizer: Tokenizer) -> None:
    stream = _stream(tokenizer)
    for _ in range(400):
        stream.next_sample()
    assert 0.68 < stream.consumed["a"] / 400 < 0.82
    stream.set_phase(1)
    before = dict(stream.consumed)
    for _ in range(50):
        stream.next_sample()
    assert stream.consumed["a"] == before["a"] and stream.consumed["b"] == before["b"] + 50


def test_stream_state_restores_the_exact_batches(tokenizer: Tokenizer) -> None:
    stream = _stream(tokenizer)
    for _ in range(3):
        stream.next_batch(2, 16)
    state = json.loads(json.dumps(stream.state_dict()))  # survives the JSON of a checkpoint
    expected = [stream.next_batch(2, 24 if i > 1 else 16) for i in range(4)]  # a curriculum change inside
    restored = _stream(tokenizer)
    restored.load_state_dict(state)
    for want, (x, y, mask) in zip(
        expected, (restored.next_batch(2, 24 if i > 1 else 16) for i in range(4)), strict=True
    ):
        assert torch.equal(want[0], x) and torch.equal(want[1], y) and torch.equal(want[2], mask)
    assert not torch.equal(
        _stream(tokenizer, seed=6).next_batch(2, 16)[0], _stream(tokenizer).next_batch(2, 16)[0]
    )


def test_validation_rows_keep_every_held_out_token(tokenizer: Tokenizer) -> None:
    samples = [Sample(text=f"story {i} " * 5) for i in range(6)]
    rows = validation_rows(tokenizer, samples, seq_len=32)
    kept = sum(sum(1 for t in mask if t) for _, mask in rows)
    assert kept == sum(len(encode_sample(tokenizer, s)[0]) for s in samples)
