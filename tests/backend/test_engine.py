"""The engine on the real tiny model: batching, cancellation, budgets, the queue bound and state reuse."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from backend.engine import Engine, EngineBusy, StateCache
from model.checkpoint import load_model_dir
from model.generation import Done, Failed, SamplingParams, ThinkingDelta, TokenDelta

PROMPTS = [
    "Ciao, come stai?",
    "Perché il caffè è così buono? 🍕",
    "Tell me a story about a robot 🤖 and a città",
    "1 2 3",
]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices gain nothing from threads, and on a shared two-core machine spinning threads thrash."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_dir):
    return load_model_dir(tiny_model_dir)


@pytest.fixture(scope="module")
def float64_model(tiny_model_dir):
    """The tiny model in float64, for the kept state vs full prefill equalities.

    A follow-up served from a kept state prefills the history in pieces, a full prefill in one go. In fp32 the
    two differ by rounding, which BitNet's 8-bit activation rounding can turn into another greedy token on a
    random model, whose logits are nearly flat (top-two gaps near 1e-3). In float64 that rounding stays far
    below a quantization step (as in tests/model), so the tokens must agree exactly.
    """
    model, _ = load_model_dir(tiny_model_dir)
    return model.double()


@pytest.fixture
def make_engine(model_and_tokenizer):
    engines: list[Engine] = []

    def make(start: bool = True, model: torch.nn.Module | None = None, **kwargs) -> Engine:
        model = model if model is not None else model_and_tokenizer[0]
        engine = Engine(model, model_and_tokenizer[1], **kwargs)
        if start:
            engine.start()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.shutdown()


def chat(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def greedy(max_new_tokens: int = 24, **kwargs) -> SamplingParams:
    return SamplingParams(temperature=0, max_new_tokens=max_new_tokens, **kwargs)


@torch.inference_mode()
def plain_greedy_loop(model, tokenizer, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """The reference: re-run model.forward over the whole sequence for every token, no state, argmax."""
    ids = list(prompt_ids)
    out: list[int] = []
    while len(out) < max_new_tokens:
        logits, _ = model(torch.tensor([ids]))
        token = int(logits[0, -1].argmax())
        out.append(token)
        ids.append(token)
        if token in (tokenizer.end_of_turn_id, tokenizer.eos_id):
            break
    return out


@torch.inference_mode()
def stateful_greedy_loop(model, tokenizer, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    """A plain token-by-token loop over model.forward with a state: the prompt, then one token a call."""
    state = model.new_state(batch_size=1)
    logits, state = model(torch.tensor([prompt_ids]), state)
    out: list[int] = []
    while len(out) < max_new_tokens:
        token = int(logits[0, -1].argmax())
        out.append(token)
        if token in (tokenizer.end_of_turn_id, tokenizer.eos_id):
            break
        logits, state = model(torch.tensor([[token]]), state)
    return out


def collect(handle) -> tuple[str, str, Done]:
    events = list(handle)
    assert isinstance(events[-1], Done), events[-1]
    thinking = "".join(e.text for e in events if isinstance(e, ThinkingDelta))
    answer = "".join(e.text for e in events if isinstance(e, TokenDelta))
    return thinking, answer, events[-1]


def test_engine_greedy_equals_a_plain_forward_loop(make_engine, model_and_tokenizer, float64_model):
    """In float64, against forward over the whole sequence for every token (no state): the engine's states
    are exact. In fp32 an inference state caches MLA latents in bf16, which moves the argmax of this random
    model's nearly flat logits against a stateless forward; there the reference is a token-by-token loop."""
    model, tokenizer = model_and_tokenizer
    prompt_ids = tokenizer.encode_chat(chat(PROMPTS[0]))
    exact = make_engine(model=float64_model).submit(chat(PROMPTS[0]), greedy())
    collect(exact)
    assert exact.output_ids == plain_greedy_loop(float64_model, tokenizer, prompt_ids, 24)
    engine = make_engine()
    for text in PROMPTS[:2]:
        handle = engine.submit(chat(text), greedy())
        thinking, answer, done = collect(handle)
        expected = stateful_greedy_loop(model, tokenizer, tokenizer.encode_chat(chat(text)), 24)
        assert handle.output_ids == expected
        assert done.usage["completion_tokens"] == len(expected)
        assert done.usage["prompt_tokens"] == len(tokenizer.encode_chat(chat(text)))
        ended = expected[-1] in (tokenizer.end_of_turn_id, tokenizer.eos_id)
        assert done.finish_reason == ("stop" if ended else "length")
        timings = done.timings
        assert timings["ttft_ms"] >= timings["queue_ms"] >= 0 and timings["total_ms"] >= timings["ttft_ms"]
        assert timings["tokens_per_s"] > 0 and timings["cache_bytes"] > 0


def test_four_prompts_batched_equal_each_alone(make_engine):
    alone = []
    solo = make_engine(max_batch_size=1, state_cache_bytes=0)
    for text in PROMPTS:
        handle = solo.submit(chat(text), greedy(32))
        collect(handle)
        alone.append(handle.output_ids)
    engine = make_engine(start=False, max_batch_size=4, state_cache_bytes=0)
    handles = [engine.submit(chat(text), greedy(32)) for text in PROMPTS]
    engine.start()  # all four are waiting: they join the batch one per decode step and decode together
    for handle in handles:
        collect(handle)
    assert [h.output_ids for h in handles] == alone
    assert len(set(map(tuple, alone))) == 4  # four different continuations, so rows cannot be mixed up


def test_a_burst_of_new_requests_is_prefilled_in_batches_between_decode_steps(
    make_engine, model_and_tokenizer
):
    """Each prefill takes waiting prompts until they reach prefill_tokens; a decode step runs between two.

    The worker loop is driven by hand (admit, step, admit, ...) so that the batches are exact.
    """
    prompts = [chat(f"{text} {k}") for k in range(3) for text in PROMPTS]
    lengths = [len(model_and_tokenizer[1].encode_chat(p)) for p in prompts]
    budget = lengths[0] + lengths[1] + 1  # three prompts per prefill (the third goes past the budget)
    engine = make_engine(start=False, max_batch_size=16, state_cache_bytes=0, prefill_tokens=budget)
    handles = [engine.submit(p, greedy(16, ignore_eos=True)) for p in prompts]
    expected, taken, tokens = [], 0, 0
    for length in lengths:  # the documented rule, applied to the queue
        taken, tokens = taken + 1, tokens + length
        if tokens >= budget:
            expected.append(taken)
            taken, tokens = 0, 0
    expected += [taken] if taken else []
    assert len(expected) >= 3 and max(expected) > 1

    batches = []
    with torch.inference_mode():
        while len(batches) < len(expected):
            before = len(engine._active)
            engine._admit()
            batches.append(len(engine._active) - before)
            engine._step()
        assert [len(h.output_ids) for h in handles] == [
            len(expected) - group + 1 for group, size in enumerate(expected) for _ in range(size)
        ]  # each group's first token came from its prefill, then one per decode step after it
        while engine._active:
            engine._step()
    assert batches == expected
    assert all(len(h.output_ids) == 16 for h in handles)


def test_batched_prefill_gives_what_one_at_a_time_gives(make_engine, float64_model):
    """Prompts of different lengths prefilled together (padded) give the tokens each gives alone (greedy).

    In float64 (see float64_model): a padded batch and a single row may round differently in fp32.
    """
    prompts = [chat(text * (k + 1)) for k, text in enumerate(PROMPTS)]
    solo = make_engine(model=float64_model, max_batch_size=1, state_cache_bytes=0)
    alone = []
    for prompt in prompts:
        handle = solo.submit(prompt, greedy(24))
        collect(handle)
        alone.append(handle.output_ids)
    engine = make_engine(
        start=False, model=float64_model, max_batch_size=8, state_cache_bytes=0, prefill_tokens=10_000
    )
    handles = [engine.submit(p, greedy(24)) for p in prompts]
    with torch.inference_mode():
        engine._admit()
        assert len(engine._active) == len(prompts)  # one prefill took them all
    engine.start()
    for handle in handles:
        collect(handle)
    assert [h.output_ids for h in handles] == alone


def test_seeded_sampling_is_the_same_alone_and_batched(make_engine):
    params = [SamplingParams(temperature=1.0, top_p=0.9, seed=i, max_new_tokens=20) for i in range(3)]
    solo = make_engine(max_batch_size=1)
    alone = []
    for text, p in zip(PROMPTS, params, strict=False):
        handle = solo.submit(chat(text), p)
        collect(handle)
        alone.append(handle.output_ids)
    engine = make_engine(start=False, max_batch_size=3)
    handles = [engine.submit(chat(text), p) for text, p in zip(PROMPTS, params, strict=False)]
    engine.start()
    for handle in handles:
        collect(handle)
    assert [h.output_ids for h in handles] == alone


def test_a_cancelled_request_frees_its_slot_and_the_others_continue_unchanged(make_engine):
    solo = make_engine(max_batch_size=1, state_cache_bytes=0)
    expected = []
    for text in PROMPTS[:3]:
        handle = solo.submit(chat(text), greedy(40))
        collect(handle)
        expected.append(handle.output_ids)
    long_params = greedy(2000, thinking_budget=1000)
    engine = make_engine(start=False, max_batch_size=2, state_cache_bytes=0)
    victim = engine.submit(chat(PROMPTS[3]), long_params)
    first = engine.submit(chat(PROMPTS[0]), greedy(40))
    waiting = [engine.submit(chat(text), greedy(40)) for text in PROMPTS[1:3]]
    engine.start()
    events = iter(victim)
    next(events)  # the victim is running
    victim.cancel()
    rest = list(events)
    assert isinstance(rest[-1], Done) and rest[-1].finish_reason == "cancelled"
    assert len(victim.output_ids) < 50  # it stopped within a few steps of the cancel
    for handle, ids in zip([first, *waiting], expected, strict=True):
        collect(handle)
        assert handle.output_ids == ids
    assert engine.stats()["active"] == 0 and engine.stats()["free_slots"] == 2


def test_a_finished_handle_iterated_again_ends_with_its_final_event(make_engine):
    engine = make_engine()
    handle = engine.submit(chat(PROMPTS[0]), greedy(6))
    first = list(handle)
    assert list(handle) == [first[-1]] and isinstance(first[-1], Done)


def test_cancel_while_queued_ends_without_running(make_engine):
    engine = make_engine(start=False)
    handle = engine.submit(chat("ciao"), greedy())
    handle.cancel()
    engine.start()
    thinking, answer, done = collect(handle)
    assert done.finish_reason == "cancelled" and handle.output_ids == [] and thinking == answer == ""


def test_thinking_budget_forces_the_closing_tag_at_n(make_engine, model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    engine = make_engine()
    for budget in (0, 5):
        handle = engine.submit(chat(PROMPTS[1]), greedy(30, thinking_budget=budget))
        thinking, answer, done = collect(handle)
        ids = handle.output_ids
        assert ids[budget] == tokenizer.think_end_id
        assert tokenizer.think_end_id not in ids[:budget]
        # The random model may open another thinking block later on: the tokens after its <think> count as
        # thinking too, and the spent budget closes it at once.
        later, inside = 0, False
        for previous, token in zip(ids[budget:-1], ids[budget + 1 :], strict=True):
            inside = (inside or previous == tokenizer.think_start_id) and previous != tokenizer.think_end_id
            later += inside
            if inside:
                assert token == tokenizer.think_end_id
        assert done.usage["thinking_tokens"] == budget + 1 + later
        assert done.usage["answer_tokens"] == len(ids) - budget - 1 - later
        assert answer  # the answer began after the forced tag


def test_thinking_off_prefills_the_empty_block(make_engine, model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    engine = make_engine()
    handle = engine.submit(chat(PROMPTS[0]), greedy(16, thinking=False))
    thinking, answer, done = collect(handle)
    prompt = tokenizer.encode_chat(chat(PROMPTS[0]), thinking=False)
    assert prompt[-2:] == [tokenizer.think_start_id, tokenizer.think_end_id]
    assert handle.output_ids == plain_greedy_loop(model, tokenizer, prompt, 16)
    if tokenizer.think_start_id not in handle.output_ids:
        assert thinking == "" and done.usage["thinking_tokens"] == 0


def test_the_queue_refuses_past_its_bound(make_engine):
    engine = make_engine(start=False, max_batch_size=1, max_queue=2)
    handles = [engine.submit(chat(text), greedy(4)) for text in PROMPTS[:2]]
    assert engine.stats()["queued"] == 2
    with pytest.raises(EngineBusy, match="busy"):
        engine.submit(chat(PROMPTS[2]), greedy(4))
    engine.start()
    for handle in handles:
        assert collect(handle)[2].usage["completion_tokens"] >= 1
    engine.submit(chat(PROMPTS[2]), greedy(4))  # room again


def test_bad_requests_fail_at_submit(make_engine):
    engine = make_engine(start=False)
    with pytest.raises(ValueError, match="context"):
        engine.submit(chat("ciao " * 5000), greedy())
    with pytest.raises(ValueError, match="role"):
        engine.submit([{"role": "wizard", "content": "hi"}], greedy())
    with pytest.raises(ValueError, match="top_p"):
        engine.submit(chat("ciao"), SamplingParams(top_p=0))


@pytest.mark.parametrize("keep_thinking", [False, True], ids=["server-history", "cli-history"])
def test_a_follow_up_turn_from_a_kept_state_equals_a_full_prefill(
    make_engine, model_and_tokenizer, float64_model, keep_thinking
):
    _, tokenizer = model_and_tokenizer
    engine = make_engine(model=float64_model)
    fresh = make_engine(model=float64_model, state_cache_bytes=0)
    history = chat(PROMPTS[1])
    for turn, question in enumerate(["E poi? 🎉", "Grazie, più tardi.", "Ok!"]):
        reused_before = engine.states.reused_tokens
        reused = engine.submit(history, greedy(20))
        thinking, answer, _ = collect(reused)
        full = fresh.submit(history, greedy(20))
        collect(full)
        assert reused.output_ids == full.output_ids, f"turn {turn}"
        if turn:  # everything but the new user message came from a kept state
            kept = len(tokenizer.encode_chat(history[:-1], add_generation_prompt=False))
            assert engine.states.reused_tokens - reused_before == kept, f"turn {turn}"
        assistant = {"role": "assistant", "content": answer} | (
            {"thinking": thinking} if keep_thinking else {}
        )
        history = [*history, assistant, *chat(question)]
        assert engine.wait_idle(timeout=30)  # the history warm-up runs while the user would be typing
    assert engine.states.hits == 2 and fresh.states.hits == 0


def test_a_follow_up_and_a_new_chat_prefilled_together_equal_full_prefills(make_engine, float64_model):
    """One prefill batch mixes a row that continues a kept state with a row that starts from nothing."""
    engine = make_engine(model=float64_model)
    first = chat(PROMPTS[0])
    collect(engine.submit(first, greedy(12)))
    assert engine.wait_idle(timeout=30)  # the turn, rendered back into the history, is kept now
    engine.shutdown()
    follow_up = [*first, {"role": "assistant", "content": "Una risposta."}, *chat("E poi? 🎉")]
    requests = [follow_up, chat(PROMPTS[2])]
    fresh = make_engine(model=float64_model, state_cache_bytes=0)
    expected = []
    for messages in requests:
        handle = fresh.submit(messages, greedy(16))
        collect(handle)
        expected.append(handle.output_ids)

    batched = Engine(float64_model, engine.tokenizer, state_cache_bytes=2**30)
    batched.states = engine.states  # the kept states of the first engine
    hits_before = batched.states.hits
    handles = [batched.submit(messages, greedy(16)) for messages in requests]
    with torch.inference_mode():
        batched._admit()
        assert len(batched._active) == 2  # one prefill took both
    assert batched.states.hits == hits_before + 1  # the follow-up continued a kept state
    batched.start()
    try:
        for handle in handles:
            collect(handle)
    finally:
        batched.shutdown()
    assert [h.output_ids for h in handles] == expected


def test_an_edited_answer_in_the_history_reuses_the_prompt_state(
    make_engine, model_and_tokenizer, float64_model
):
    _, tokenizer = model_and_tokenizer
    engine = make_engine(model=float64_model)
    first = chat(PROMPTS[0])
    collect(engine.submit(first, greedy(12)))
    assert engine.wait_idle(timeout=30)
    history = [*first, {"role": "assistant", "content": "una risposta scritta a mano"}, *chat("E poi?")]
    reused_before = engine.states.reused_tokens
    handle = engine.submit(history, greedy(12))
    collect(handle)
    assert engine.states.reused_tokens - reused_before == len(tokenizer.encode_chat(first))
    full = make_engine(model=float64_model, state_cache_bytes=0).submit(history, greedy(12))
    collect(full)
    assert handle.output_ids == full.output_ids


def test_async_iterator_gives_the_same_events(make_engine):
    engine = make_engine()
    sync_events = list(engine.submit(chat(PROMPTS[2]), greedy(12)))

    async def consume():
        return [event async for event in engine.submit(chat(PROMPTS[2]), greedy(12)).aiter()]

    async_events = asyncio.run(consume())
    strip = [e for e in async_events if not isinstance(e, Done)]
    assert strip == [e for e in sync_events if not isinstance(e, Done)]
    assert async_events[-1].usage == sync_events[-1].usage


def test_abandoning_the_async_iterator_cancels(make_engine):
    engine = make_engine()

    async def first_event_then_leave():
        handle = engine.submit(chat(PROMPTS[0]), greedy(2000, thinking_budget=1000))
        stream = handle.aiter()
        await stream.__anext__()
        await stream.aclose()
        return handle

    handle = asyncio.run(first_event_then_leave())
    assert collect(handle)[2].finish_reason == "cancelled"


def test_shutdown_fails_waiting_requests(make_engine):
    engine = make_engine(start=False)
    handle = engine.submit(chat("ciao"), greedy())
    engine.shutdown()
    events = list(handle)
    assert len(events) == 1 and isinstance(events[0], Failed) and "shutting down" in events[0].message


def test_state_cache_is_an_lru_bounded_in_bytes(model_and_tokenizer):
    model, _ = model_and_tokenizer
    with torch.inference_mode():
        states = []
        for n in (3, 5, 7):
            state = model.new_state(batch_size=1)
            model(torch.arange(1, n + 1)[None], state)
            states.append(state)
    size = states[2].nbytes()
    cache = StateCache(max_bytes=states[0].nbytes() + states[1].nbytes() + size // 2)
    cache.put([1, 2, 3], states[0])
    cache.put([1, 2, 3, 4, 5], states[1])
    assert cache.longest_prefix([1, 2, 3, 4, 5, 6])[0] == 5
    assert cache.longest_prefix([1, 2, 3, 4, 5])[0] == 3  # a key must leave at least one token to prefill
    assert cache.longest_prefix([1, 2, 3, 4, 5, 6])[0] == 5  # ... and this use makes [1..5] the newest
    cache.put(list(range(1, 8)), states[2])  # over budget: the least recently used ([1, 2, 3]) goes
    assert len(cache) == 2 and cache.bytes <= cache.max_bytes
    assert cache.longest_prefix([1, 2, 3, 9])[0] == 0
    kept, state = cache.longest_prefix(list(range(1, 10)))
    assert kept == 7 and state is not None and torch.equal(state.lengths, states[2].lengths)


def test_work_on_one_thread_starts_no_thread_team_and_restores_the_setting():
    """torch_on_one_thread (model loading in the server and the CLI): a parallel op inside starts no OpenMP
    team in the calling thread, counted in /proc/self/task, while the same op outside does; torch's thread
    setting comes back. In a fresh process, where no thread has a team yet."""
    script = (
        "import os, torch\n"
        "from backend.engine import torch_on_one_thread\n"
        "torch.set_num_threads(2)\n"
        "def tasks(): return len(os.listdir('/proc/self/task'))\n"
        "big = torch.empty(4_000_000)\n"
        "before = tasks()\n"
        "with torch_on_one_thread():\n"
        "    inside = torch.get_num_threads()\n"
        "    big.mul_(2.0)\n"
        "during = tasks() - before\n"
        "big.mul_(2.0)\n"
        "print(inside, torch.get_num_threads(), during, tasks() - before)\n"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "2", "0", "1"]
