"""Property-based requests from the OpenAPI schema (schemathesis): whatever the input, never a server error.

Valid and invalid bodies, parameters and ids go to every route; the routes that generate text get only invalid
input (each valid case would cost a model run; they are driven by hand in test_chat_stream.py and
test_openai_api.py). Each answer must be below 500.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from tests.backend.conftest import serving_settings
from tests.backend.live import LiveServer

GENERATING = r"/messages$|/regenerate$|/edit$|/chat/completions$"


@pytest.fixture(scope="module")
def fuzz_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory, one_torch_thread
) -> Iterator[str]:
    database = tmp_path_factory.mktemp("fuzz") / "fuzz.db"
    with LiveServer(serving_settings(tiny_model_dir, f"sqlite:///{database}")) as server:
        yield server.url


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_makes_a_server_error(fuzz_server: str, mode: GenerationMode):
    schema = schemathesis.openapi.from_url(f"{fuzz_server}/openapi.json")
    if mode == GenerationMode.POSITIVE:
        schema = schema.exclude(path_regex=GENERATING)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 10
    exercised = 0
    for operation in operations:

        @given(case=operation.as_strategy(mode))
        @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def no_server_error(case) -> None:
            case.call_and_validate(base_url=fuzz_server, checks=[not_a_server_error], timeout=30)

        try:
            no_server_error()
            exercised += 1
        except Unsatisfiable:
            # Only in negative mode, for an operation with no input that can be wrong (no parameters, or only
            # free-form strings such as an id): there is nothing invalid to send.
            assert mode == GenerationMode.NEGATIVE, operation.label
    assert exercised >= (len(operations) if mode == GenerationMode.POSITIVE else 4)
