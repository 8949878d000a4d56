"""Prometheus metrics for one app.

Each app gets its own CollectorRegistry, so several apps in one process (tests) never share counters. Request
counts are labelled by route template, not raw path, so conversation ids cannot blow up the label set.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
INTER_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(
        self, active: Callable[[], int], queued: Callable[[], int], admitted: Callable[[], int]
    ) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "nanoprime_http_requests",
            "HTTP requests answered, by method, route template and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.generations = Counter(
            "nanoprime_generations",
            "Generations finished, by how they ended.",
            ["outcome"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "nanoprime_tokens_generated", "Tokens generated (thinking and answer).", registry=self.registry
        )
        self.rejected = Counter(
            "nanoprime_generations_rejected",
            "Generations refused because the queue was full.",
            registry=self.registry,
        )
        self.ttft = Histogram(
            "nanoprime_time_to_first_token_seconds",
            "From accepting a generation to its first streamed text.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inter_token = Histogram(
            "nanoprime_inter_token_seconds",
            "Time between consecutive streamed text events of one generation.",
            buckets=INTER_TOKEN_BUCKETS,
            registry=self.registry,
        )
        active_gauge = Gauge(
            "nanoprime_generations_active", "Generations streaming tokens now.", registry=self.registry
        )
        active_gauge.set_function(active)
        queued_gauge = Gauge(
            "nanoprime_generations_queued",
            "Generations accepted but not yet streaming.",
            registry=self.registry,
        )
        queued_gauge.set_function(queued)
        # Admission slots held: back to 0 whenever the server is idle (a slot never given back would make the
        # server refuse work with 429 some day).
        admitted_gauge = Gauge(
            "nanoprime_generations_admitted",
            "Generations accepted and not yet finished (queued, streaming, or being stored).",
            registry=self.registry,
        )
        admitted_gauge.set_function(admitted)

    def render(self) -> bytes:
        return generate_latest(self.registry)
