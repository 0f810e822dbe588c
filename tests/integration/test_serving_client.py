"""The serving client over real HTTP against the sandbox workspace.

Every client call, the update lifecycle (IN_PROGRESS -> NOT_UPDATING, 409 while updating,
UPDATE_FAILED), retries through injected 429/503 faults, no retries on 400/403, OAuth M2M token
caching and refresh, and NotFound. The client shares the sandbox's clock: when that clock is a
FakeClock, the client's polls and backoffs move the workspace's time, so multi-second updates
and token lifetimes play out in milliseconds; on a system clock the same tests take a few
seconds.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from rollout.clock import Clock
from rollout.serving.auth import OAuthM2MAuth, PatAuth
from rollout.serving.client import ServingClient
from rollout.serving.errors import (
    AlreadyExists,
    ConfigMismatch,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServerError,
    ServingError,
    ServingTransportError,
    Unauthenticated,
    Unavailable,
    UpdateFailed,
    UpdateInProgress,
)
from rollout.serving.models import (
    ConfigSpec,
    ConfigUpdate,
    Ready,
    Route,
    ServedEntity,
    TrafficConfig,
    traffic_split,
)
from rollout.serving.retry import RetryPolicy
from rollout.settings import DatabricksSettings, ServingSettings

Admin = httpx.Client


def entity(version: int) -> ServedEntity:
    return ServedEntity(
        name=f"ads-{version}",
        entity_name="main.ml.ads",
        entity_version=str(version),
        workload_size="Small",
        scale_to_zero_enabled=False,
    )


def two_way(candidate_percent: int) -> ConfigSpec:
    return ConfigSpec.build(
        [entity(1), entity(2)], {"ads-1": 100 - candidate_percent, "ads-2": candidate_percent}
    )


def sandbox_clock(sandbox: Any) -> Clock:
    clock: Clock = sandbox.workspace.clock
    return clock


def create_endpoint(
    admin: Admin,
    *,
    profiles: dict[str, dict[str, Any]] | None = None,
    qps: float = 0.0,
    update_seconds: float = 2.0,
) -> str:
    """A READY endpoint serving ads-1 at 100 %, config version 1, with short updates."""
    name = f"it-{uuid.uuid4().hex[:10]}"
    created = admin.post(
        "/endpoints",
        json={
            "name": name,
            "served_entities": [entity(1).to_input()],
            "traffic_config": {
                "routes": [{"served_entity_name": "ads-1", "traffic_percentage": 100}]
            },
            "profiles": profiles or {},
            "qps": qps,
        },
    )
    assert created.status_code == 201, created.text
    updates = admin.put(f"/endpoints/{name}/updates", json={"duration_seconds": update_seconds})
    assert updates.status_code == 200, updates.text
    return name


def stats(admin: Admin) -> dict[str, Any]:
    response = admin.get("/stats")
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def add_fault(admin: Admin, **fault: Any) -> None:
    response = admin.post("/faults", json=fault)
    assert response.status_code == 201, response.text


@pytest.fixture
def calls() -> list[tuple[str, int | None]]:
    return []


@pytest.fixture
def retries() -> list[tuple[str, int, str, float]]:
    return []


@pytest.fixture
def make_client(
    sandbox: Any,
    sandbox_admin: Admin,
    calls: list[tuple[str, int | None]],
    retries: list[tuple[str, int, str, float]],
) -> Iterator[Callable[..., ServingClient]]:
    def make(auth: Any = None, **kwargs: Any) -> ServingClient:
        options: dict[str, Any] = {
            "clock": sandbox_clock(sandbox),
            "retry": RetryPolicy(
                initial_backoff=0.05, max_backoff=0.5, budget_seconds=5.0, rng=random.Random(0)
            ),
            "poll_interval": 0.25,
            "timeout": 10.0,
            "update_deadline": 60.0,
            "on_response": lambda call, status, _s: calls.append((call, status)),
            "on_retry": lambda call, n, err, delay: retries.append(
                (call, n, type(err).__name__, delay)
            ),
        }
        options.update(kwargs)
        return ServingClient(sandbox.url, auth or PatAuth(sandbox.token), **options)

    yield make
    # Faults outlive a test only if it fails half-way; never let them leak into the next one.
    sandbox_admin.delete("/faults")


@pytest.fixture
async def client(make_client: Callable[..., ServingClient]) -> AsyncIterator[ServingClient]:
    async with make_client() as serving:
        yield serving


# --- every call -------------------------------------------------------------------------------


async def test_endpoint_lifecycle_through_every_call(
    client: ServingClient, sandbox_admin: Admin, calls: list[tuple[str, int | None]]
) -> None:
    name = f"it-{uuid.uuid4().hex[:10]}"
    one = ConfigSpec.build([entity(1)], {"ads-1": 100})
    created = await client.create_endpoint(name, one, {"team": "ads"}, description="it")
    assert created.name == name
    assert created.state.config_update == ConfigUpdate.IN_PROGRESS
    with pytest.raises(AlreadyExists):
        await client.create_endpoint(name, one)

    live = await client.wait_until_applied(name, one)
    assert live.state.ready == Ready.READY
    assert traffic_split(live) == {"ads-1": 100}
    assert {t.key: t.value for t in live.tags} == {"team": "ads"}

    listed = {e.name: e for e in await client.list_endpoints()}
    assert name in listed
    assert listed[name].state is not None

    two = two_way(10)
    put = await client.update_config(name, two)
    assert put.state.config_update == ConfigUpdate.IN_PROGRESS
    applied = await client.wait_until_applied(name, two)
    assert traffic_split(applied) == {"ads-1": 90, "ads-2": 10}
    assert applied.config is not None
    assert applied.config.config_version == 2
    fetched = await client.get_endpoint(name)
    assert fetched.config == applied.config

    tags = await client.patch_tags(name, add={"stage": "canary"}, delete=["team"])
    assert {t.key: t.value for t in tags} == {"stage": "canary"}

    # No load and no closed window with traffic yet: an empty exposition is a valid answer.
    assert isinstance(await client.export_metrics(name), str)

    assert "ads-2" in await client.build_logs(name, "ads-2")
    assert "ads-2" in await client.server_logs(name, "ads-2")

    document = await client.openapi(name)
    assert "/invocations" in document["paths"]

    answered = await client.query(name, {"dataframe_records": [{"x": 1}, {"x": 2}]})
    assert answered.status == 200
    assert answered.served_model_name in {"ads-1", "ads-2"}
    assert len(answered.body["predictions"]) == 2
    direct = await client.query_served_model(name, "ads-2", {"inputs": [[1.0, 2.0]]})
    assert direct.served_model_name == "ads-2"

    stopped = await client.stop_endpoint(name)
    assert stopped is not None
    assert stopped.state.ready == Ready.NOT_READY
    with pytest.raises(InvalidRequest):
        await client.query(name, {"inputs": [[1.0]]})
    with pytest.raises(InvalidRequest) as refused:
        await client.update_config(name, two_way(50))
    # The sandbox says "stopped" with INVALID_STATE: that is not an update to wait for.
    assert refused.value.error_code == "INVALID_STATE"

    started = await client.start_endpoint(name)
    assert started is not None
    assert started.state.config_update == ConfigUpdate.IN_PROGRESS
    restarted = await client.wait_until_applied(name, two)
    assert restarted.config is not None
    assert restarted.config.config_version == 3

    await client.delete_endpoint(name)
    with pytest.raises(NotFound):
        await client.get_endpoint(name)

    labels = {call for call, _ in calls}
    assert labels >= {
        "create_endpoint",
        "get_endpoint",
        "list_endpoints",
        "update_config",
        "patch_tags",
        "export_metrics",
        "build_logs",
        "server_logs",
        "openapi",
        "query",
        "query_served_model",
        "stop_endpoint",
        "start_endpoint",
        "delete_endpoint",
    }


async def test_export_metrics_text_of_a_loaded_endpoint(
    client: ServingClient, sandbox: Any, sandbox_admin: Admin
) -> None:
    name = create_endpoint(sandbox_admin, qps=20.0)
    window = sandbox.workspace.window_seconds
    # Let one full window close under load (instant on a fake clock).
    await sandbox_clock(sandbox).sleep(2 * window)
    text = await client.export_metrics(name)
    assert "request_count_total" in text
    assert 'served_entity_name="ads-1"' in text
    # The accept header asked for text; what came back is exposition text, not JSON.
    assert not text.lstrip().startswith("{")


async def test_missing_endpoint_is_not_found_everywhere(client: ServingClient) -> None:
    missing = f"it-missing-{uuid.uuid4().hex[:6]}"
    with pytest.raises(NotFound) as caught:
        await client.get_endpoint(missing)
    assert caught.value.error_code == "RESOURCE_DOES_NOT_EXIST"
    assert caught.value.endpoint == missing
    for attempt in (
        lambda: client.update_config(missing, two_way(5)),
        lambda: client.export_metrics(missing),
        lambda: client.delete_endpoint(missing),
        lambda: client.query(missing, {"inputs": [[1.0]]}),
    ):
        with pytest.raises(NotFound):
            await attempt()


# --- the update lifecycle ---------------------------------------------------------------------


async def test_update_is_observed_in_progress_then_applied(
    client: ServingClient, sandbox_admin: Admin, calls: list[tuple[str, int | None]]
) -> None:
    name = create_endpoint(sandbox_admin, update_seconds=2.0)
    spec = two_way(25)
    put = await client.update_config(name, spec)
    assert put.state.config_update == ConfigUpdate.IN_PROGRESS
    assert put.pending_config is not None
    assert put.pending_config.config_version == 2
    # While the update runs, the old config keeps serving and the new one is pending.
    during = await client.get_endpoint(name)
    assert during.state.config_update == ConfigUpdate.IN_PROGRESS
    assert traffic_split(during) == {"ads-1": 100}

    polls_before = sum(1 for call, _ in calls if call == "get_endpoint")
    applied = await client.wait_until_applied(name, spec)
    polls = sum(1 for call, _ in calls if call == "get_endpoint") - polls_before
    assert polls >= 2, "the waiter saw the update in progress before it settled"
    assert applied.state.config_update == ConfigUpdate.NOT_UPDATING
    assert applied.pending_config is None
    assert applied.config is not None
    assert applied.config.config_version == 2
    assert traffic_split(applied) == {"ads-1": 75, "ads-2": 25}


async def test_put_during_an_update_is_update_in_progress(
    client: ServingClient, sandbox_admin: Admin, retries: list[tuple[str, int, str, float]]
) -> None:
    name = create_endpoint(sandbox_admin, update_seconds=30.0)
    await client.update_config(name, two_way(5))
    with pytest.raises(UpdateInProgress) as caught:
        await client.update_config(name, two_way(50))
    assert caught.value.status == 409
    assert caught.value.retryable
    assert not caught.value.transient
    assert retries == []


async def test_failed_build_surfaces_as_update_failed(
    client: ServingClient, sandbox_admin: Admin
) -> None:
    name = create_endpoint(sandbox_admin, profiles={"ads-2": {"fail_build": True}})
    await client.update_config(name, two_way(10))
    with pytest.raises(UpdateFailed) as caught:
        await client.wait_until_applied(name, two_way(10))
    snapshot = caught.value.endpoint_snapshot
    assert snapshot.state.config_update == ConfigUpdate.UPDATE_FAILED
    # The old config keeps serving.
    assert traffic_split(snapshot) == {"ads-1": 100}
    assert "fail" in (await client.build_logs(name, "ads-2")).lower()


async def test_injected_update_failure_surfaces_as_update_failed(
    client: ServingClient, sandbox_admin: Admin
) -> None:
    name = create_endpoint(sandbox_admin)
    response = sandbox_admin.put(f"/endpoints/{name}/updates", json={"fail_next": 1})
    assert response.status_code == 200, response.text
    await client.update_config(name, two_way(10))
    with pytest.raises(UpdateFailed):
        await client.wait_until_applied(name, two_way(10))
    # The next update goes through.
    await client.update_config(name, two_way(10))
    applied = await client.wait_until_applied(name, two_way(10))
    assert traffic_split(applied) == {"ads-1": 90, "ads-2": 10}


async def test_a_change_by_hand_is_config_mismatch(
    client: ServingClient, make_client: Callable[..., ServingClient], sandbox_admin: Admin
) -> None:
    name = create_endpoint(sandbox_admin)
    ours = two_way(10)
    await client.update_config(name, ours)
    await client.wait_until_applied(name, ours)
    # Someone else moves the split with their own client.
    async with make_client() as human:
        await human.update_config(name, two_way(50))
        await human.wait_until_applied(name, two_way(50))
    with pytest.raises(ConfigMismatch) as caught:
        await client.wait_until_applied(name, ours)
    assert caught.value.expected == {"ads-1": 90, "ads-2": 10}
    assert caught.value.actual == {"ads-1": 50, "ads-2": 50}


# --- retries ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "cls"), [(429, "RateLimited"), (503, "Unavailable")])
async def test_retry_rides_through_faults_with_retry_after(
    client: ServingClient,
    sandbox_admin: Admin,
    retries: list[tuple[str, int, str, float]],
    status: int,
    cls: str,
) -> None:
    name = create_endpoint(sandbox_admin)
    before = stats(sandbox_admin)["faults_served"]
    add_fault(
        sandbox_admin,
        status=status,
        count=2,
        retry_after_seconds=1,
        path_pattern=f"^/api/2.0/serving-endpoints/{name}$",
        methods=["GET"],
    )
    endpoint = await client.get_endpoint(name)
    assert endpoint.name == name
    assert stats(sandbox_admin)["faults_served"] - before == 2
    assert [(call, n, kind) for call, n, kind, _ in retries] == [
        ("get_endpoint", 1, cls),
        ("get_endpoint", 2, cls),
    ]
    # Retry-After: 1 is the floor of each wait.
    assert all(delay >= 1.0 for *_, delay in retries)


async def test_retry_gives_up_when_the_budget_is_spent(
    make_client: Callable[..., ServingClient],
    sandbox_admin: Admin,
    retries: list[tuple[str, int, str, float]],
) -> None:
    name = create_endpoint(sandbox_admin)
    add_fault(
        sandbox_admin,
        status=429,
        retry_after_seconds=1,
        path_pattern=f"^/api/2.0/serving-endpoints/{name}/metrics$",
    )
    before = stats(sandbox_admin)["faults_served"]
    budget = RetryPolicy(initial_backoff=0.05, max_backoff=0.5, budget_seconds=2.5)
    async with make_client(retry=budget) as client:
        with pytest.raises(RateLimited) as caught:
            await client.export_metrics(name)
    assert caught.value.retry_after == 1.0
    served = stats(sandbox_admin)["faults_served"] - before
    # Waits of 1 s inside a 2.5 s budget: the first try and two retries, then give up.
    assert served == 3
    assert len(retries) == 2


async def test_500_internal_error_is_retried(
    client: ServingClient, sandbox_admin: Admin, retries: list[tuple[str, int, str, float]]
) -> None:
    name = create_endpoint(sandbox_admin)
    add_fault(sandbox_admin, status=500, count=1, path_pattern=f"/{name}/config$")
    await client.update_config(name, two_way(5))
    assert [kind for _, _, kind, _ in retries] == ["Unavailable"]


async def test_a_failing_model_is_reported_not_retried(
    client: ServingClient, sandbox_admin: Admin, retries: list[tuple[str, int, str, float]]
) -> None:
    name = create_endpoint(sandbox_admin, profiles={"ads-1": {"error_rate": 1.0}})
    with pytest.raises(ServerError) as caught:
        await client.query_served_model(name, "ads-1", {"inputs": [[1.0]]})
    assert caught.value.status == 500
    assert not caught.value.transient
    assert retries == []


async def test_bad_request_is_not_retried(
    client: ServingClient, sandbox_admin: Admin, retries: list[tuple[str, int, str, float]]
) -> None:
    name = create_endpoint(sandbox_admin)
    # Skip the client-side validation to see the server's verdict on routes summing to 90.
    bad = ConfigSpec.model_construct(
        served_entities=[entity(1), entity(2)],
        traffic_config=TrafficConfig(
            routes=[
                Route(served_entity_name="ads-1", traffic_percentage=80),
                Route(served_entity_name="ads-2", traffic_percentage=10),
            ]
        ),
    )
    before = stats(sandbox_admin)["requests"]
    with pytest.raises(InvalidRequest) as caught:
        await client.update_config(name, bad)
    assert caught.value.status == 400
    assert caught.value.error_code == "INVALID_PARAMETER_VALUE"
    assert stats(sandbox_admin)["requests"] - before == 1
    assert retries == []


async def test_permission_denied_is_not_retried(
    make_client: Callable[..., ServingClient],
    sandbox_admin: Admin,
    retries: list[tuple[str, int, str, float]],
) -> None:
    name = create_endpoint(sandbox_admin)
    viewer = f"dapi-viewer-{uuid.uuid4().hex[:8]}"
    added = sandbox_admin.post("/tokens", json={"token": viewer, "permission": "CAN_VIEW"})
    assert added.status_code == 201, added.text
    before = stats(sandbox_admin)["requests"]
    async with make_client(PatAuth(viewer)) as client:
        assert (await client.get_endpoint(name)).permission_level == "CAN_VIEW"
        with pytest.raises(PermissionDenied) as caught:
            await client.update_config(name, two_way(5))
        with pytest.raises(PermissionDenied):
            await client.query(name, {"inputs": [[1.0]]})
    assert caught.value.status == 403
    assert stats(sandbox_admin)["requests"] - before == 3
    assert retries == []


async def test_unknown_token_is_unauthenticated(
    make_client: Callable[..., ServingClient], sandbox_admin: Admin
) -> None:
    name = create_endpoint(sandbox_admin)
    async with make_client(PatAuth("dapi-nobody")) as client:
        with pytest.raises(Unauthenticated) as caught:
            await client.get_endpoint(name)
    assert "dapi-nobody" not in str(caught.value)


async def test_a_slow_answer_times_out_as_a_transport_error(
    make_client: Callable[..., ServingClient], client: ServingClient, sandbox_admin: Admin
) -> None:
    name = create_endpoint(sandbox_admin)
    add_fault(sandbox_admin, status=0, count=1, delay_seconds=1.0, path_pattern=f"/{name}$")
    async with make_client(timeout=0.3, retry=RetryPolicy.never()) as impatient:
        with pytest.raises(ServingTransportError) as caught:
            await impatient.get_endpoint(name)
    assert "timed out" in str(caught.value)
    assert isinstance(caught.value.__cause__, httpx.TimeoutException)
    # The fault fired once; the next request is answered.
    assert (await client.get_endpoint(name)).name == name


async def test_nothing_listening_is_a_transport_error() -> None:
    # Port 9 (discard) on loopback: nothing listens there in a test environment.
    async with ServingClient(
        "http://127.0.0.1:9", PatAuth("dapi-x"), retry=RetryPolicy.never(), timeout=2.0
    ) as client:
        with pytest.raises(ServingTransportError) as caught:
            await client.list_endpoints()
    assert caught.value.transient


# --- OAuth M2M --------------------------------------------------------------------------------


async def test_oauth_token_is_fetched_once_across_many_calls(
    make_client: Callable[..., ServingClient], sandbox: Any, sandbox_admin: Admin
) -> None:
    name = create_endpoint(sandbox_admin)
    before = stats(sandbox_admin)["oauth_tokens_issued"]
    auth = OAuthM2MAuth(
        sandbox.url, "sandbox-client", "sandbox-secret", clock=sandbox_clock(sandbox)
    )
    async with make_client(auth) as client:
        for _ in range(15):
            await client.get_endpoint(name)
        await client.list_endpoints()
        await client.export_metrics(name)
    assert stats(sandbox_admin)["oauth_tokens_issued"] - before == 1
    assert auth.tokens_fetched == 1


async def test_oauth_token_is_refreshed_near_expiry(
    make_client: Callable[..., ServingClient], sandbox: Any, sandbox_admin: Admin
) -> None:
    name = create_endpoint(sandbox_admin)
    client_id = f"sp-{uuid.uuid4().hex[:8]}"
    created = sandbox_admin.post(
        "/oauth-clients",
        json={"client_id": client_id, "client_secret": "s3cret", "token_lifetime_seconds": 3},
    )
    assert created.status_code == 201, created.text
    clock = sandbox_clock(sandbox)
    before = stats(sandbox_admin)["oauth_tokens_issued"]
    auth = OAuthM2MAuth(sandbox.url, client_id, SecretStr("s3cret"), clock=clock)
    async with make_client(auth) as client:
        await client.get_endpoint(name)
        await clock.sleep(2.0)  # 1 s left of 3: more than the 0.3 s margin, still cached
        await client.get_endpoint(name)
        assert stats(sandbox_admin)["oauth_tokens_issued"] - before == 1
        await clock.sleep(0.8)  # 0.2 s left: inside the margin, refreshed before it expires
        await client.get_endpoint(name)
        assert stats(sandbox_admin)["oauth_tokens_issued"] - before == 2
        await clock.sleep(5.0)  # long expired: a fresh token, never a 401
        await client.get_endpoint(name)
    assert stats(sandbox_admin)["oauth_tokens_issued"] - before == 3


async def test_wrong_client_secret_is_unauthenticated(
    make_client: Callable[..., ServingClient], sandbox: Any
) -> None:
    auth = OAuthM2MAuth(
        sandbox.url, "sandbox-client", "not-the-secret", clock=sandbox_clock(sandbox)
    )
    async with make_client(auth) as client:
        with pytest.raises(Unauthenticated) as caught:
            await client.list_endpoints()
    assert caught.value.error_code == "invalid_client"
    assert "not-the-secret" not in str(caught.value)


async def test_client_from_settings_with_builtin_oauth(
    sandbox: Any, sandbox_admin: Admin
) -> None:
    name = create_endpoint(sandbox_admin)
    databricks = DatabricksSettings(
        host=sandbox.url,
        client_id="sandbox-client",
        client_secret=SecretStr("sandbox-secret"),
        token=None,
        config_profile=None,
        auth_type=None,
    )
    serving = ServingSettings(update_poll_interval=0.25, retry_budget=5.0, auth_resolver="builtin")
    client = ServingClient.from_settings(databricks, serving, clock=sandbox_clock(sandbox))
    async with client:
        assert isinstance(client.auth, OAuthM2MAuth)
        assert name in {e.name for e in await client.list_endpoints()}
        await client.update_config(name, two_way(30))
        applied = await client.wait_until_applied(name, two_way(30), deadline_seconds=30)
    assert traffic_split(applied) == {"ads-1": 70, "ads-2": 30}


def test_error_classes_used_here_are_serving_errors() -> None:
    for cls in (Unavailable, RateLimited, UpdateFailed, ConfigMismatch, ServingTransportError):
        assert issubclass(cls, ServingError)
