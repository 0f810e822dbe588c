"""Schemathesis over the API's own OpenAPI document, against the API served as ``rollout
serve`` serves it (uvicorn with ``server_config`` on 127.0.0.1, the sandbox workspace behind
it, a real SQLite store): for every operation, generated requests (schema-valid and not) never
get a 5xx, and every answer conforms to the document (status code, content type, body schema,
headers). Bounded: ``MAX_EXAMPLES`` per operation and a time budget for the whole run."""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation.case import Case

from rollout.sandbox.server import SandboxServer
from rollout.settings import ApiSettings
from rollout.store.base import Store
from tests.integration.test_api import make_endpoint
from tests.integration.test_cli_client import ApiServer

MAX_EXAMPLES = 30
BUDGET_SECONDS = 75.0
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]


@pytest.fixture
def server(sandbox: SandboxServer, store: Store, sandbox_admin: httpx.Client
           ) -> Iterator[ApiServer]:
    make_endpoint(sandbox_admin)  # some generated plans name it, and are stored
    with ApiServer(sandbox, store, settings=ApiSettings(max_body_bytes=65_536)) as running:
        yield running


def check_operation(
    operation: APIOperation, mode: GenerationMode, base_url: str, examples: int
) -> int:
    """Send ``examples`` generated requests for one operation; return how many were sent."""
    sent = 0

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests every run: a failure is reproducible
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Case) -> None:
        nonlocal sent
        sent += 1
        case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=10)

    try:
        run()
    except Unsatisfiable:
        # An operation without parameters or body has nothing to make invalid.
        if mode is not GenerationMode.NEGATIVE:
            raise
    return sent


def test_every_operation_answers_without_5xx_and_as_documented(server: ApiServer) -> None:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12, [op.label for op in operations]
    deadline = time.monotonic() + BUDGET_SECONDS
    sent: dict[str, int] = {}
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            if time.monotonic() > deadline:
                break
            count = check_operation(operation, mode, server.url, MAX_EXAMPLES // 2)
            sent[f"{operation.label} {mode.value}"] = count
    assert len(sent) == 2 * len(operations), "the time budget ran out"
    assert sum(sent.values()) >= len(operations) * 2, sent
