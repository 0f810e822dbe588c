"""Rollouts from Unity Catalog aliases, over real HTTP: the serving client's registered-model
calls against the sandbox, alias plans through the API, the alias watcher, and the
``on_success.set_alias`` move after a promotion (and its absence after a rollback).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from rollout.clock import Clock
from rollout.serving.auth import PatAuth
from rollout.serving.client import ServingClient
from rollout.serving.errors import InvalidRequest, NotFound, PermissionDenied
from rollout.serving.retry import RetryPolicy

MODEL = "main.ml.ads_model"


def register(admin: httpx.Client, *aliases: str, model: str = MODEL) -> int:
    """Register the model's next version, pointing ``aliases`` at it; its number."""
    response = admin.post(f"/models/{model}/versions", json={"aliases": list(aliases)})
    assert response.status_code == 200, response.text
    version: int = response.json()["version"]
    return version


def move(admin: httpx.Client, alias: str, version: int, model: str = MODEL) -> None:
    response = admin.put(f"/models/{model}/aliases/{alias}", json={"version": version})
    assert response.status_code == 200, response.text


def aliases_of(admin: httpx.Client, model: str = MODEL) -> dict[str, int]:
    response = admin.get(f"/models/{model}")
    assert response.status_code == 200, response.text
    found: dict[str, int] = response.json()["aliases"]
    return found


def make_client(sandbox: Any, token: str | None = None) -> ServingClient:
    clock: Clock = sandbox.workspace.clock
    return ServingClient(
        sandbox.url,
        PatAuth(token or sandbox.token),
        clock=clock,
        retry=RetryPolicy(initial_backoff=0.05, max_backoff=0.5, budget_seconds=5.0,
                          rng=random.Random(0)),
        timeout=10.0,
    )


@pytest.fixture
async def client(sandbox: Any) -> AsyncIterator[ServingClient]:
    async with make_client(sandbox) as serving:
        yield serving


# ---- the serving client's registered-model calls, against the sandbox ----------------------


async def test_client_reads_and_moves_aliases(
    client: ServingClient, sandbox_admin: httpx.Client
) -> None:
    register(sandbox_admin, "champion")
    register(sandbox_admin)
    seven = register(sandbox_admin, "challenger")
    assert seven == 3

    by_alias = await client.get_model_version_by_alias(MODEL, "challenger")
    assert by_alias.version == "3"
    assert [a.alias_name for a in by_alias.aliases] == ["challenger"]
    model = await client.get_registered_model(MODEL)
    assert model.full_name == MODEL
    assert model.alias_version("champion") == "1"
    assert model.alias_version("challenger") == "3"
    assert model.alias_version("nothing") is None

    moved = await client.set_alias(MODEL, "champion", "3")
    assert (moved.alias_name, moved.version_num) == ("champion", "3")
    assert await client.set_alias(MODEL, "champion", "3") == moved  # idempotent
    assert aliases_of(sandbox_admin) == {"challenger": 3, "champion": 3}

    await client.delete_alias(MODEL, "challenger")
    assert aliases_of(sandbox_admin) == {"champion": 3}
    with pytest.raises(NotFound, match="challenger"):
        await client.get_model_version_by_alias(MODEL, "challenger")
    with pytest.raises(NotFound, match=r"main\.ml\.other"):
        await client.get_registered_model("main.ml.other")
    with pytest.raises(NotFound, match="version 9"):
        await client.set_alias(MODEL, "champion", "9")
    with pytest.raises(InvalidRequest):
        await client.set_alias(MODEL, "9lives", "1")


async def test_client_alias_calls_share_auth_and_retries(
    sandbox: Any, client: ServingClient, sandbox_admin: httpx.Client
) -> None:
    register(sandbox_admin, "challenger")
    fault = sandbox_admin.post(
        "/faults", json={"path_pattern": "unity-catalog", "status": 429, "count": 2}
    )
    assert fault.status_code == 201, fault.text
    try:
        assert (await client.get_model_version_by_alias(MODEL, "challenger")).version == "1"
    finally:
        sandbox_admin.delete("/faults")
    assert sandbox_admin.get("/stats").json()["faults_served"] == 2
    viewer = sandbox_admin.post("/tokens", json={"token": "dapi-viewer", "permission": "CAN_VIEW"})
    assert viewer.status_code == 201, viewer.text
    async with make_client(sandbox, "dapi-viewer") as reader:
        assert (await reader.get_registered_model(MODEL)).alias_version("challenger") == "1"
        with pytest.raises(PermissionDenied):
            await reader.set_alias(MODEL, "champion", "1")
