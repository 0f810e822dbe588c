"""Route-optimized endpoints over real HTTP: the sandbox serves them at their own URL with OAuth
only, the client sends invocations (the blue/green smoke checks) there, and the API refuses a
blue/green plan on one when the controller signs in with a personal access token."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from rollout.clock import FakeClock
from rollout.engine.model import Phase
from rollout.engine.runner import Runner
from rollout.policies import PolicyLibrary
from rollout.sandbox.app import ROUTE_OPTIMIZED_PREFIX
from rollout.sandbox.server import SandboxServer
from rollout.serving.auth import Auth, OAuthM2MAuth, PatAuth
from rollout.serving.client import ServingClient
from rollout.serving.errors import ConfigurationError
from rollout.serving.retry import RetryPolicy
from rollout.store.base import Store
from tests.integration.test_api import Harness, asgi, assert_error, plan_dict
from tests.integration.test_engine_sandbox import (
    BASELINE,
    CANDIDATE,
    HEALTHY,
    TIMING,
    drive,
    plan,
)

ENDPOINT = "ads"
SMOKE_BODY = {"dataframe_records": [{"x": 1}]}


def route_optimized_endpoint(admin: httpx.Client, qps: float = 0.0) -> None:
    response = admin.post(
        "/endpoints",
        json={
            "name": ENDPOINT,
            "served_entities": [
                {
                    "name": BASELINE,
                    "entity_name": "main.ml.ads_model",
                    "entity_version": "3",
                    "workload_size": "Small",
                    "scale_to_zero_enabled": False,
                }
            ],
            "profiles": {BASELINE: HEALTHY, CANDIDATE: HEALTHY},
            "qps": qps,
            "route_optimized": True,
        },
    )
    assert response.status_code == 201, response.text


def requests_log(admin: httpx.Client) -> list[dict[str, Any]]:
    log: list[dict[str, Any]] = admin.get("/requests").json()["requests"]
    return log


def invocations(admin: httpx.Client) -> list[dict[str, Any]]:
    return [r for r in requests_log(admin) if r["path"].endswith("/invocations")]


def oauth(sandbox: SandboxServer) -> OAuthM2MAuth:
    return OAuthM2MAuth(sandbox.url, "sandbox-client", "sandbox-secret", clock=sandbox.clock)


def make_client(sandbox: SandboxServer, auth: Auth) -> ServingClient:
    return ServingClient(
        sandbox.url,
        auth,
        clock=sandbox.clock,
        retry=RetryPolicy(initial_backoff=0.1, max_backoff=1, budget_seconds=30),
        poll_interval=5,
    )


@pytest.fixture
async def oauth_client(sandbox: SandboxServer) -> AsyncIterator[ServingClient]:
    async with make_client(sandbox, oauth(sandbox)) as client:
        yield client


@pytest.fixture
async def pat_client(sandbox: SandboxServer) -> AsyncIterator[ServingClient]:
    async with make_client(sandbox, PatAuth(sandbox.token)) as client:
        yield client


def oauth_token(sandbox: SandboxServer) -> str:
    basic = base64.b64encode(b"sandbox-client:sandbox-secret").decode()
    response = httpx.post(
        f"{sandbox.url}/oidc/v1/token",
        data={"grant_type": "client_credentials", "scope": "all-apis"},
        headers={"Authorization": f"Basic {basic}"},
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def test_the_sandbox_serves_a_route_optimized_endpoint_at_its_own_url_with_oauth_only(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, sandbox_api: httpx.Client
) -> None:
    route_optimized_endpoint(sandbox_admin)
    described = sandbox_api.get(f"/api/2.0/serving-endpoints/{ENDPOINT}").json()
    assert described["route_optimized"] is True
    url = described["endpoint_url"]
    assert url == (
        f"{sandbox.url}{ROUTE_OPTIMIZED_PREFIX}/serving-endpoints/{ENDPOINT}/invocations"
    )
    pat = sandbox_api.post(url, json=SMOKE_BODY)
    assert pat.status_code == 401, pat.text
    assert "OAuth" in pat.json()["message"]
    bearer = {"Authorization": f"Bearer {oauth_token(sandbox)}"}
    answered = httpx.post(url, json=SMOKE_BODY, headers=bearer)
    assert answered.status_code == 200, answered.text
    assert answered.headers["served-model-name"] == BASELINE
    # Not through the workspace URL, as Databricks' newer route-optimized endpoints.
    workspace = httpx.post(
        f"{sandbox.url}/serving-endpoints/{ENDPOINT}/invocations", json=SMOKE_BODY, headers=bearer
    )
    assert workspace.status_code == 400, workspace.text
    assert "endpoint_url" in workspace.json()["message"]


async def test_smoke_invocations_go_to_the_endpoint_url_with_oauth(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, oauth_client: ServingClient
) -> None:
    route_optimized_endpoint(sandbox_admin)
    result = await oauth_client.query_served_model(ENDPOINT, BASELINE, SMOKE_BODY)
    assert result.status == 200
    assert result.served_model_name == BASELINE
    assert await oauth_client.query(ENDPOINT, SMOKE_BODY) is not None
    prefix = f"{ROUTE_OPTIMIZED_PREFIX}/serving-endpoints/{ENDPOINT}"
    assert [(r["path"], r["credential"]) for r in invocations(sandbox_admin)] == [
        (f"{prefix}/served-models/{BASELINE}/invocations", "oauth"),
        (f"{prefix}/invocations", "oauth"),
    ]


async def test_a_pat_client_refuses_to_invoke_a_route_optimized_endpoint(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, pat_client: ServingClient
) -> None:
    route_optimized_endpoint(sandbox_admin)
    with pytest.raises(ConfigurationError) as caught:
        await pat_client.query_served_model(ENDPOINT, BASELINE, SMOKE_BODY)
    assert "route-optimized" in str(caught.value)
    assert "OAuth" in str(caught.value)
    assert invocations(sandbox_admin) == [], "nothing sent"


async def test_an_ordinary_endpoint_is_still_queried_at_the_workspace(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, pat_client: ServingClient
) -> None:
    response = sandbox_admin.post(
        "/endpoints",
        json={
            "name": ENDPOINT,
            "served_entities": [
                {"name": BASELINE, "entity_name": "main.ml.ads_model", "entity_version": "3"}
            ],
        },
    )
    assert response.status_code == 201, response.text
    await pat_client.query_served_model(ENDPOINT, BASELINE, SMOKE_BODY)
    assert [(r["path"], r["credential"]) for r in invocations(sandbox_admin)] == [
        (f"/serving-endpoints/{ENDPOINT}/served-models/{BASELINE}/invocations", "pat")
    ]


async def test_blue_green_on_a_route_optimized_endpoint_smoke_checks_at_its_url(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, oauth_client: ServingClient
) -> None:
    route_optimized_endpoint(sandbox_admin, qps=200)
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    runner = Runner(store, oauth_client, clock=clock, timing=TIMING)
    bg = plan(steps=None, strategy="blue_green", bake="10m", warmup="30m")
    record = await runner.submit(bg, PolicyLibrary().get("default"))
    phase = await drive(runner, store, clock, record.id)
    kinds = [e.kind for e in store.events(record.id)]
    assert phase is Phase.SUCCEEDED, kinds[-6:]
    assert "preflight_passed" in kinds
    smoke = invocations(sandbox_admin)
    assert smoke, "the smoke checks ran"
    candidate_url = (
        f"{ROUTE_OPTIMIZED_PREFIX}/serving-endpoints/{ENDPOINT}/served-models/{CANDIDATE}"
        "/invocations"
    )
    assert {(r["path"], r["credential"]) for r in smoke} == {(candidate_url, "oauth")}


async def test_submission_refuses_blue_green_on_a_route_optimized_endpoint_with_a_pat(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store
) -> None:
    route_optimized_endpoint(sandbox_admin)
    harness = Harness(sandbox, store)
    try:
        async with asgi(harness.app()) as api:
            bg = plan_dict(steps=None, strategy="blue_green", bake="10m")
            refused = await api.post("/api/v1/rollouts", json=bg)
            error = assert_error(refused, 422, "oauth_required")
            assert "route-optimized" in error["message"]
            assert "personal access token" in error["message"]
            assert store.active_for_endpoint(ENDPOINT) is None, "nothing stored"
        async with asgi(harness.app(client=make_client(sandbox, oauth(sandbox)))) as api:
            accepted = await api.post("/api/v1/rollouts", json=bg)
            assert accepted.status_code == 201, accepted.text
    finally:
        await harness.aclose()
