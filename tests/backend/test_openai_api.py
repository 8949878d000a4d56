"""The OpenAI-compatible API, driven by the official `openai` client against a real uvicorn server."""

from __future__ import annotations

import http.client
import json
import time
from urllib.parse import urlsplit

import httpx
import openai
import pytest

from tests.backend.live import LiveServer, iter_sse, metric

QUESTION = [{"role": "user", "content": "Perché il caffè è buono?"}]


@pytest.fixture
def oai(live_server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{live_server.url}/v1", api_key="unused", max_retries=0, timeout=60)


def collect(stream) -> tuple[str, str, list]:
    """(reasoning, content, chunks) of a streamed completion."""
    chunks = list(stream)
    reasoning = "".join(
        getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices
    )
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return reasoning, content, chunks


def test_the_openai_client_streams_reasoning_then_usage(oai: openai.OpenAI, live_server: LiveServer):
    stream = oai.chat.completions.create(
        model="nanoprime",
        messages=QUESTION,
        stream=True,
        stream_options={"include_usage": True},
        max_tokens=48,
        temperature=0.8,
        seed=21,
    )
    reasoning, content, chunks = collect(stream)
    assert reasoning  # thinking is on by default and arrives as reasoning_content deltas
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.id == chunks[0].id and c.model == live_server.runtime.info.name for c in chunks)
    finished = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finished) == 1 and finished[0].choices[0].finish_reason in ("stop", "length")
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert 0 < last.usage.completion_tokens <= 48
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert last.usage.completion_tokens_details.reasoning_tokens > 0

    whole = oai.chat.completions.create(
        model="nanoprime", messages=QUESTION, max_tokens=48, temperature=0.8, seed=21
    )
    message = whole.choices[0].message
    assert (message.reasoning_content, message.content) == (reasoning, content)  # same seed, same tokens
    assert whole.usage.completion_tokens == last.usage.completion_tokens
    assert (
        whole.object == "chat.completion"
        and whole.choices[0].finish_reason == finished[0].choices[0].finish_reason
    )


def answer(oai: openai.OpenAI, **kwargs) -> tuple[str, str]:
    """(content, finish_reason) of a non-streamed completion without thinking."""
    kwargs.setdefault("max_tokens", 40)
    body = {"thinking": False}
    response = oai.chat.completions.create(model="nanoprime", messages=QUESTION, extra_body=body, **kwargs)
    return response.choices[0].message.content, response.choices[0].finish_reason


def test_sampling_settings_are_honoured(oai: openai.OpenAI):
    greedy, _ = answer(oai, temperature=0, seed=1)
    assert answer(oai, temperature=0, seed=2)[0] == greedy  # temperature 0 ignores the seed
    assert answer(oai, temperature=1.0, top_p=1e-9, seed=3)[0] == greedy  # top_p keeps only the top token
    hot = answer(oai, temperature=1.0, seed=5)[0]
    assert answer(oai, temperature=1.0, seed=5)[0] == hot  # a seed reproduces a sampled answer
    assert answer(oai, temperature=1.0, seed=6)[0] != hot

    short, reason = answer(oai, temperature=0, max_tokens=5)
    assert reason == "length" and greedy.startswith(short) and len(short) < len(greedy)

    full = oai.chat.completions.create(
        model="nanoprime",
        messages=QUESTION,
        max_tokens=30,
        extra_body={"ignore_eos": True, "thinking": False},
    )
    assert full.usage.completion_tokens == 30 and full.choices[0].finish_reason == "length"

    stop = greedy[len(greedy) // 2 : len(greedy) // 2 + 2]
    stopped, reason = answer(oai, temperature=0, stop=[stop])
    assert reason == "stop" and stopped == greedy[: greedy.index(stop)]


@pytest.mark.parametrize(
    ("change", "status", "field"),
    [
        ({"temperature": -0.5}, 422, "temperature"),
        ({"top_p": 0}, 422, "top_p"),
        ({"top_p": 1.5}, 422, "top_p"),
        ({"max_tokens": "lots"}, 422, "max_tokens"),
        ({"messages": []}, 422, "messages"),
        ({"messages": [{"role": "user", "content": ""}]}, 422, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 422, "messages[0].role"),
        ({"n": 2}, 422, "n"),
        ({"max_tokens": 10**6}, 422, "max_tokens"),
        ({"max_tokens": 2000, "messages": [{"role": "user", "content": "caffè " * 300}]}, 400, "max_tokens"),
        ({"messages": [{"role": "user", "content": "Perché il caffè? " * 400}]}, 400, "messages"),
    ],
)
def test_bad_requests_get_a_4xx_naming_the_field(client: httpx.Client, change, status, field):
    body = {"model": "nanoprime", "messages": QUESTION, "max_tokens": 8, **change}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["param"] == field and field.split("[")[0] in error["message"]


def test_malformed_json_and_openai_errors_reach_the_client(client: httpx.Client, oai: openai.OpenAI):
    broken = client.post("/v1/chat/completions", content=b"{", headers={"Content-Type": "application/json"})
    assert broken.status_code == 400 and broken.json()["error"]["param"] == "body"
    with pytest.raises(openai.UnprocessableEntityError, match="temperature"):
        oai.chat.completions.create(model="nanoprime", messages=QUESTION, temperature=-1)


def test_a_streamed_completion_that_is_abandoned_frees_its_slot(
    client: httpx.Client, live_server: LiveServer
):
    body = {
        "model": "nanoprime",
        "messages": [{"role": "user", "content": "long"}],
        "max_tokens": 1500,
        "ignore_eos": True,
        "thinking": False,
        "stream": True,
    }
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["x-accel-buffering"] == "no"
        events = iter_sse(response.iter_lines())
        assert [next(events).json()["object"] for _ in range(3)] == ["chat.completion.chunk"] * 3
    engine = live_server.runtime.engine
    deadline = time.monotonic() + 5
    while (engine.stats()["active"] or live_server.runtime.in_flight) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine.stats()["active"] == 0 and live_server.runtime.in_flight == 0


def wait_for_generations(client: httpx.Client, gauge: str, value: int, timeout: float = 60) -> str:
    """/metrics once the gauge nanoprime_generations_<gauge> reads `value`."""
    deadline = time.monotonic() + timeout
    while metric(text := client.get("/metrics").text, f"nanoprime_generations_{gauge}") != value:
        assert time.monotonic() < deadline, f"nanoprime_generations_{gauge} is not {value} after {timeout} s"
        time.sleep(0.01)
    return text


def test_a_non_streamed_completion_whose_client_leaves_is_cancelled(
    client: httpx.Client, live_server: LiveServer
):
    """Nothing is sent before the answer is whole, so only the connection tells that nobody waits for it.

    The request metrics count it as 499 (client closed request), not as a 200 that nobody received.
    """
    closed = 'nanoprime_http_requests_total{method="POST",route="/v1/chat/completions",status="499"}'
    closed_before = metric_or_zero(client.get("/metrics").text, closed)
    max_tokens = 2000
    body = {
        "model": "nanoprime",
        "messages": [{"role": "user", "content": "long"}],
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "thinking": False,
    }
    tokens_before = metric(client.get("/metrics").text, "nanoprime_tokens_generated_total")
    server = urlsplit(live_server.url)
    connection = http.client.HTTPConnection(server.hostname, server.port, timeout=60)
    connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    wait_for_generations(client, "active", 1)  # admitted and decoding
    connection.close()  # before any answer: the client is gone
    metrics = wait_for_generations(client, "admitted", 0)
    assert metric(metrics, "nanoprime_generations_active") == 0
    generated = metric(metrics, "nanoprime_tokens_generated_total") - tokens_before
    assert 0 < generated < max_tokens // 4, f"{generated:.0f} of {max_tokens} tokens: it was not cancelled"
    deadline = time.monotonic() + 10  # the route returns right after the cancellation; metrics follow it
    while metric_or_zero(client.get("/metrics").text, closed) == closed_before:
        assert time.monotonic() < deadline, "the abandoned request was not counted as 499"
        time.sleep(0.05)
    assert metric_or_zero(client.get("/metrics").text, closed) == closed_before + 1


def metric_or_zero(text: str, name: str) -> float:
    """A sample that may not exist yet (a label combination seen for the first time)."""
    return metric(text, name) if any(line.startswith(name + " ") for line in text.splitlines()) else 0.0


def test_models_list(oai: openai.OpenAI, live_server: LiveServer):
    models = oai.models.list()
    assert [model.id for model in models.data] == [live_server.runtime.info.name]
