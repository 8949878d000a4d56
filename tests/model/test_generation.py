"""Sampling, stopping, streaming detokenization and the thinking splitter, without a model."""

from __future__ import annotations

import pytest
import torch

from model.generation import (
    SamplingParams,
    StopMatcher,
    StreamingDetokenizer,
    ThinkingDelta,
    ThinkingSplitter,
    TokenDelta,
    TurnDecoder,
    sample_tokens,
)
from tests.fixtures import build_tiny_tokenizer

TEXTS = [
    "Perché il caffè ☕ è già pronto? Sì, più tardi 🍕🎉",
    "città università età ciò però 🤖🤖 end",
    "emoji run 🍕🍕🍕☕☕ and à è ì ò ù",
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


def channels(pieces):
    """Concatenate splitter output per channel."""
    out = {"thinking": "", "answer": ""}
    for channel, text in pieces:
        out[channel] += text
    return out


def stream_text(events):
    thinking = "".join(e.text for e in events if isinstance(e, ThinkingDelta))
    answer = "".join(e.text for e in events if isinstance(e, TokenDelta))
    return thinking, answer


# ---- SamplingParams ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("min_p", 2.0),
        ("repetition_penalty", 0.0),
        ("max_new_tokens", 0),
        ("stop", [""]),
        ("stop", "###"),
        ("seed", -3),
        ("thinking_budget", -1),
        ("thinking", "yes"),
        ("ignore_eos", 1),
    ],
)
def test_sampling_params_reject_bad_values_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})


# ---- sampling ----------------------------------------------------------------------------------------------
def test_greedy_is_argmax_and_ignores_generator():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(temperature=0)] * 3
    generators = [torch.Generator().manual_seed(i) for i in range(3)]
    assert sample_tokens(logits, params, generators) == logits.argmax(-1).tolist()


@pytest.mark.parametrize(
    "params", [SamplingParams(top_k=1), SamplingParams(top_p=1e-6), SamplingParams(min_p=1.0)], ids=str
)
def test_filters_at_their_tightest_reduce_to_greedy(params):
    logits = torch.randn(4, 100, generator=torch.Generator().manual_seed(1))
    generators = [torch.Generator().manual_seed(i) for i in range(4)]
    assert sample_tokens(logits, [params] * 4, generators) == logits.argmax(-1).tolist()


def test_top_k_and_top_p_keep_only_the_allowed_tokens():
    logits = torch.tensor([[4.0, 3.9, 3.8, 0.0, -1.0, -2.0]])
    top2 = [SamplingParams(temperature=1.0, top_k=2, seed=0)]
    gen = top2[0].make_generator()
    seen = {sample_tokens(logits, top2, [gen])[0] for _ in range(300)}
    assert seen == {0, 1}
    probs = torch.softmax(logits[0], -1)  # the first three hold ~97%: top_p 0.9 keeps exactly them
    assert probs[:2].sum() < 0.9 < probs[:3].sum()
    nucleus = [SamplingParams(temperature=1.0, top_p=0.9, seed=0)]
    gen = nucleus[0].make_generator()
    seen = {sample_tokens(logits, nucleus, [gen])[0] for _ in range(300)}
    assert seen == {0, 1, 2}


def test_temperature_sampling_follows_the_softmax():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    params = [SamplingParams(temperature=1.0, seed=7)]
    gen = params[0].make_generator()
    draws = torch.tensor([sample_tokens(logits, params, [gen])[0] for _ in range(4000)])
    freq = torch.bincount(draws, minlength=4).float() / len(draws)
    assert torch.allclose(freq, torch.softmax(logits[0], -1), atol=0.03)


def test_seeded_rows_sample_the_same_alone_and_in_a_batch():
    logits = torch.randn(3, 64, generator=torch.Generator().manual_seed(2))
    params = [SamplingParams(temperature=0.9, seed=11), SamplingParams(temperature=0), SamplingParams(seed=5)]
    together, alone = [], []
    gens = [p.make_generator() for p in params]
    for _ in range(20):
        together.append(sample_tokens(logits, params, gens))
    gens = [p.make_generator() for p in params]
    for _ in range(20):
        alone.append([sample_tokens(logits[i : i + 1], [params[i]], [gens[i]])[0] for i in range(3)])
    assert together == alone
    assert len({row[0] for row in together}) > 1  # it really samples


def test_repetition_penalty_demotes_seen_tokens():
    logits = torch.tensor([[3.0, 2.9, -1.0, -1.1]])
    params = [SamplingParams(temperature=0, repetition_penalty=1.5)]
    gen = [params[0].make_generator()]
    assert sample_tokens(logits, params, gen, [torch.tensor([], dtype=torch.long)]) == [0]
    assert sample_tokens(logits, params, gen, [torch.tensor([0])]) == [1]
    assert sample_tokens(logits[:, 2:], params, gen, [torch.tensor([0])]) == [1]  # negative: multiplied


# ---- detokenization ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", TEXTS)
def test_streaming_never_breaks_a_utf8_character(tokenizer, text):
    ids = tokenizer.encode(text)
    assert any("\ufffd" in tokenizer.decode([i]) for i in ids), "the text must split characters across tokens"
    detok = StreamingDetokenizer(tokenizer)
    deltas = [detok.push(i) for i in ids] + [detok.flush()]
    assert all("\ufffd" not in d for d in deltas)
    assert "".join(deltas) == text


def test_invalid_bytes_are_emitted_after_four_tokens_not_held_forever(tokenizer):
    lone = next(i for i in range(tokenizer.vocab_size) if tokenizer.decode([i]) == "\ufffd")
    detok = StreamingDetokenizer(tokenizer)
    out = [detok.push(lone) for _ in range(6)]
    assert out[:3] == ["", "", ""] and "\ufffd" in "".join(out)


# ---- thinking splitter -------------------------------------------------------------------------------------
def split_all(text: str, cuts: list[int], in_thinking: bool = True):
    splitter = ThinkingSplitter(in_thinking=in_thinking)
    bounds = [0, *cuts, len(text)]
    pieces = []
    for a, b in zip(bounds, bounds[1:], strict=False):
        pieces += splitter.feed(text[a:b])
    return channels(pieces + splitter.flush())


@pytest.mark.parametrize("text", ["<think>reason a<b</think>answer <x>", "reason a<b</think>answer <x>"])
def test_splitter_handles_tags_split_at_every_position_and_a_missing_opening_tag(text):
    for cut in range(1, len(text)):
        for second in (cut + 1, cut + 3):
            assert split_all(text, [cut, min(second, len(text))]) == {
                "thinking": "reason a<b",
                "answer": "answer <x>",
            }, (cut, second)


def test_splitter_character_by_character_streams_before_the_end():
    splitter = ThinkingSplitter()
    pieces = []
    for ch in "abc</think>def":
        pieces += splitter.feed(ch)
    assert channels(pieces) == {"thinking": "abc", "answer": "def"}  # nothing needed flushing
    assert splitter.flush() == []


def test_splitter_with_thinking_off_routes_to_answer_and_opens_on_a_think_tag():
    expected = {"thinking": "", "answer": "hello world"}
    assert split_all("hello </think>world", [3], in_thinking=False) == expected
    assert split_all("<think>hmm</think>ok", [2, 9], in_thinking=False) == {"thinking": "hmm", "answer": "ok"}


def test_splitter_flushes_a_partial_tag_as_text():
    assert split_all("thought </thi", [5]) == {"thinking": "thought </thi", "answer": ""}


# ---- stop strings ------------------------------------------------------------------------------------------
def test_stop_matcher_finds_a_stop_string_across_chunks_and_holds_back_its_start():
    matcher = StopMatcher(["###", "END"])
    assert matcher.push("abc#") == ("abc", False)
    assert matcher.push("#") == ("", False)
    assert matcher.push("x") == ("##x", False)
    assert matcher.push("yE") == ("y", False)
    assert matcher.push("NDzz") == ("", True)


# ---- a whole turn ------------------------------------------------------------------------------------------
def test_turn_ends_on_end_of_turn_and_counts_thinking(tokenizer):
    ids = tokenizer.encode("ragiono è così") + [tokenizer.think_end_id] + tokenizer.encode("risposta 🍕")
    turn = TurnDecoder(tokenizer, SamplingParams())
    events = [e for i in ids + [tokenizer.end_of_turn_id] for e in turn.push(i)]
    assert turn.finish_reason == "stop"
    assert stream_text(events) == ("ragiono è così", "risposta 🍕")
    assert turn.thinking_tokens == len(tokenizer.encode("ragiono è così")) + 1
    assert turn.answer_tokens == len(ids) + 1 - turn.thinking_tokens


def test_ignore_eos_runs_past_the_end_of_turn_to_max_new_tokens(tokenizer):
    turn = TurnDecoder(tokenizer, SamplingParams(thinking=False, ignore_eos=True, max_new_tokens=3))
    turn.push(tokenizer.end_of_turn_id)
    turn.push(tokenizer.eos_id)
    assert turn.finish_reason is None
    turn.push(tokenizer.end_of_turn_id)
    assert turn.finish_reason == "length"


def test_turn_stops_on_a_stop_string_and_cuts_it(tokenizer):
    turn = TurnDecoder(tokenizer, SamplingParams(thinking=False, stop=["STOP"]))
    events = []
    for i in tokenizer.encode("una risposta STOP e poi altro"):
        events += turn.push(i)
        if turn.finish_reason:
            break
    assert turn.finish_reason == "stop_string"
    assert stream_text(events) == ("", "una risposta ")


def test_turn_stops_at_max_new_tokens(tokenizer):
    ids = tokenizer.encode("abc def ghi jkl mno")
    turn = TurnDecoder(tokenizer, SamplingParams(thinking=False, max_new_tokens=3))
    events = []
    for i in ids[:3]:
        events += turn.push(i)
    assert turn.finish_reason == "length"
    assert stream_text(events)[1] == tokenizer.decode(ids[:3])
    with pytest.raises(ValueError, match="finished"):
        turn.push(ids[3])


def test_thinking_budget_forces_the_closing_tag_after_n_tokens(tokenizer):
    turn = TurnDecoder(tokenizer, SamplingParams(thinking_budget=4))
    filler = tokenizer.encode("a long long long thought")
    for i in filler[:4]:
        assert turn.forced_token() is None
        turn.push(i)
    assert turn.forced_token() == tokenizer.think_end_id
    turn.push(tokenizer.think_end_id)
    assert turn.forced_token() is None  # the answer is free
    events = turn.push(filler[0]) + turn.finish("cancelled")
    assert turn.thinking_tokens == 5 and turn.finish_reason == "cancelled"
    assert stream_text(events)[1] == tokenizer.decode(filler[:1])


def test_finish_reasons_are_checked(tokenizer):
    with pytest.raises(ValueError, match="finish reason"):
        TurnDecoder(tokenizer, SamplingParams()).finish("tired")
