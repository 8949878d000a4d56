"""Property-based requests from the OpenAPI schema (schemathesis): whatever the input, no server error, and
every answer is what the schema documents.

Valid and invalid bodies, parameters and ids go to every route; the routes that generate text get only invalid
input (each valid case would cost a model run; they are driven by hand in test_chat_stream.py and
test_openai_api.py). Each answer must be below 500, have a documented content type, and a body that matches
the documented schema for its status (errors included: they all have the shape of backend.errors.ErrorBody).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

from tests.backend.conftest import serving_settings
from tests.backend.live import LiveServer

GENERATING = r"/messages$|/regenerate$|/edit$|/chat/completions$"
CHECKS = [not_a_server_error, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 40
MIN_CASES = 500


@pytest.fixture
def fuzz_server(tiny_model_dir: Path, db_url: str, one_torch_thread) -> Iterator[str]:
    """A server on each database: PostgreSQL refuses values SQLite takes (a NUL in text, say)."""
    with LiveServer(serving_settings(tiny_model_dir, db_url)) as server:
        yield server.url


def run_cases(operation, mode: GenerationMode, base_url: str) -> int:
    """Send one operation's generated cases; how many were sent and passed every check."""
    sent = 0

    @given(case=operation.as_strategy(mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def answers_as_documented(case) -> None:
        nonlocal sent
        case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=30)
        sent += 1

    answers_as_documented()
    return sent


def test_no_input_makes_a_server_error_and_every_answer_matches_the_schema(fuzz_server: str):
    executed: Counter[GenerationMode] = Counter()
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        schema = schemathesis.openapi.from_url(f"{fuzz_server}/openapi.json")
        if mode == GenerationMode.POSITIVE:
            schema = schema.exclude(path_regex=GENERATING)
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 10
        exercised = 0
        for operation in operations:
            try:
                executed[mode] += run_cases(operation, mode, fuzz_server)
                exercised += 1
            except Unsatisfiable:
                # Only in negative mode, for an operation with no input that can be wrong (no parameters, or
                # only free-form strings such as an id): there is nothing invalid to send.
                assert mode == GenerationMode.NEGATIVE, operation.label
        assert exercised >= (len(operations) if mode == GenerationMode.POSITIVE else 4)
    assert min(executed.values()) >= MIN_CASES // 4, executed
    assert executed.total() >= MIN_CASES, executed
