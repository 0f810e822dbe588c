"""The API at its edges, probed as an attacker or a careless user would: plans built to
amplify, values of the wrong shape, secrets a viewer must not read, alert targets inside the
network, requests a browser on another origin could send, and the OpenAPI document.

In process (ASGI) over the sandbox workspace on real HTTP and a real SQLite store, with the
fixtures of ``test_api``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from rollout.plan import MAX_PLAN_BYTES, MAX_STRING_CHARS
from rollout.sandbox.server import SandboxServer
from rollout.store.base import Store
from tests.integration.test_api import (
    CANARY_YAML,
    ENDPOINT,
    Harness,
    asgi,
    assert_error,
    make_endpoint,
    plan_dict,
    submit_json,
    submit_yaml,
)


@pytest.fixture
async def harness(sandbox: SandboxServer, store: Store) -> AsyncIterator[Harness]:
    built = Harness(sandbox, store)
    yield built
    await built.aclose()


@pytest.fixture
async def api(harness: Harness, sandbox_admin: httpx.Client) -> AsyncIterator[httpx.AsyncClient]:
    """An open API (no tokens) with endpoint ``ads`` in the workspace."""
    make_endpoint(sandbox_admin)
    async with asgi(harness.app()) as client:
        yield client

# ---- plan limits -----------------------------------------------------------------------------


def alias_amplification_yaml() -> str:
    """About 20 KB of YAML that stands for tens of megabytes: a long string, aliased in a list
    that is aliased again, inside a field of the candidate that takes any string."""
    chunk = "x" * 10_000
    return (
        f"endpoint: {ENDPOINT}\n"
        "strategy: canary\n"
        "steps: [{weight: 10, bake: 5m}]\n"
        f"pad: &s {chunk}\n"
        "list: &l [" + ", ".join(["*s"] * 60) + "]\n"
        "more: &m [" + ", ".join(["*l"] * 60) + "]\n"
        "candidate:\n"
        "  entity_name: main.ml.ads_model\n"
        "  entity_version: '4'\n"
        "  environment_vars: {A: *s}\n"
        "smoke: {body: {rows: *m}}\n"
    )


async def test_the_alias_amplification_plan_is_413_and_nothing_is_stored(
    api: httpx.AsyncClient, store: Store
) -> None:
    text = alias_amplification_yaml()
    assert len(text) < 50_000
    response = await submit_yaml(api, text)
    error = assert_error(response, 413, "plan_too_large")
    assert str(MAX_PLAN_BYTES) in error["message"]
    assert store.list() == []


async def test_an_oversized_string_is_422_naming_its_field_and_nothing_is_stored(
    api: httpx.AsyncClient, store: Store
) -> None:
    plan = plan_dict(name=None)
    plan["candidate"]["environment_vars"] = {"TOKEN": "y" * (MAX_STRING_CHARS + 1)}
    error = assert_error(await submit_json(api, plan), 422, "invalid_plan")
    assert error["details"][0]["field"] == "candidate.environment_vars.TOKEN"
    assert str(MAX_STRING_CHARS) in error["details"][0]["message"]
    assert store.list() == []


async def test_a_string_at_the_limit_is_accepted(api: httpx.AsyncClient) -> None:
    plan = plan_dict()
    plan["candidate"]["environment_vars"] = {"NOTE": "y" * MAX_STRING_CHARS}
    response = await submit_json(api, plan)
    assert response.status_code == 201, response.text


async def test_non_scalars_where_a_scalar_belongs_are_422_naming_the_field(
    api: httpx.AsyncClient, store: Store
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"strategy": {}}, "strategy"),
        ({"strategy": ["canary"]}, "strategy"),
        ({"policy": ["default"]}, "policy"),
        ({"steps": [{"weight": [10], "bake": "5m"}]}, "steps[0].weight"),
        ({"steps": [{"weight": 10, "bake": {"m": 5}}]}, "steps[0].bake"),
        ({"endpoint": {"name": ENDPOINT}}, "endpoint"),
    ]
    for fields, field in cases:
        error = assert_error(await submit_json(api, plan_dict(**fields)), 422, "invalid_plan")
        assert [d["field"] for d in error["details"]] == [field], (fields, error)
    # The same in YAML, as `strategy: {}` was first sent.
    yaml_text = CANARY_YAML.replace("strategy: canary", "strategy: {}")
    error = assert_error(await submit_yaml(api, yaml_text), 422, "invalid_plan")
    assert error["details"][0]["field"] == "strategy"
    assert store.list() == []


async def test_plans_as_json_text_count_the_same(api: httpx.AsyncClient) -> None:
    # A JSON body has no aliases, but a long enough one is refused the same way (413 for the
    # body, or the plan's own limit when the body limit allows more).
    plan = plan_dict()
    plan["smoke_notes"] = ["z" * 1000] * 300
    response = await api.post(
        "/api/v1/rollouts", content=json.dumps(plan), headers={"Content-Type": "application/json"}
    )
    assert_error(response, 413, "plan_too_large")
