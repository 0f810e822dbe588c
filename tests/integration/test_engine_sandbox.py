"""The engine end to end, in process: runner + serving client + SQLite store + the sandbox over
real HTTP, all on one fake clock, so an hour of rollout takes a second."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from rollout.clock import FakeClock
from rollout.engine.decide import Timing
from rollout.engine.model import Phase
from rollout.engine.runner import Runner
from rollout.plan import AnyPlan, resolve_policy, validate_plan
from rollout.policies import PolicyLibrary
from rollout.sandbox.server import SandboxServer
from rollout.serving.auth import PatAuth
from rollout.serving.client import ServingClient
from rollout.serving.models import traffic_split
from rollout.serving.retry import RetryPolicy
from rollout.store.base import Store

ENDPOINT = "ads"
BASELINE = "ads-3"
CANDIDATE = "ads_model-4"
HEALTHY = {"error_rate": 0.002, "latency_p50_ms": 40, "latency_p99_ms": 120}
TIMING = Timing(look_interval=30, update_poll=5, update_deadline=600)


@pytest.fixture
async def client(sandbox: SandboxServer) -> AsyncIterator[ServingClient]:
    async with ServingClient(
        sandbox.url,
        PatAuth(sandbox.token),
        clock=sandbox.clock,
        retry=RetryPolicy(initial_backoff=0.1, max_backoff=1, budget_seconds=30),
        poll_interval=5,
    ) as client:
        yield client


def make_endpoint(admin: httpx.Client, candidate_profile: dict[str, Any], qps: float = 200) -> None:
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
            "profiles": {BASELINE: HEALTHY, CANDIDATE: candidate_profile},
            "qps": qps,
        },
    )
    assert response.status_code == 201, response.text


def plan(**fields: Any) -> AnyPlan:
    data: dict[str, Any] = {
        "endpoint": ENDPOINT,
        "candidate": {
            "entity_name": "main.ml.ads_model",
            "entity_version": "4",
            "workload_size": "Small",
        },
        "strategy": "canary",
        "steps": [{"weight": 10, "bake": "5m"}, {"weight": 50, "bake": "5m"}],
        "alerts": [{"type": "webhook", "url": "http://127.0.0.1:9/hook"}],
    }
    data.update(fields)
    return validate_plan({k: v for k, v in data.items() if v is not None})


async def drive(
    runner: Runner, store: Store, clock: FakeClock, rollout_id: str, limit: float = 4 * 3600
) -> Phase:
    """Reconcile whenever due, jumping the clock to the next due time, until the end."""
    start = clock.now()
    while clock.now() - start < limit:
        result = await runner.reconcile(rollout_id)
        if result.phase.terminal:
            return result.phase
        due = store.get(rollout_id).due_at
        assert due is not None
        clock.advance(max(0.0, due - clock.now()))
    return Phase(store.get(rollout_id).phase)


def step_splits(store: Store, rollout_id: str) -> list[dict[str, int]]:
    return [e.data["split"] for e in store.events(rollout_id) if e.kind == "step_applied"]


async def run_plan(
    sandbox: SandboxServer,
    store: Store,
    client: ServingClient,
    the_plan: AnyPlan,
    policy: str = "default",
) -> tuple[str, Phase]:
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    runner = Runner(store, client, clock=clock, timing=TIMING)
    record = await runner.submit(the_plan, PolicyLibrary().get(policy))
    return record.id, await drive(runner, store, clock, record.id)


async def test_healthy_canary_is_promoted(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, client: ServingClient
) -> None:
    make_endpoint(sandbox_admin, HEALTHY)
    rollout_id, phase = await run_plan(sandbox, store, client, plan())
    events = store.events(rollout_id)
    assert phase is Phase.SUCCEEDED, [(e.kind, e.reason) for e in events][-6:]
    endpoint = await client.get_endpoint(ENDPOINT)
    assert traffic_split(endpoint) == {CANDIDATE: 100}
    assert endpoint.config is not None
    assert endpoint.config.entity_names() == [CANDIDATE], "candidate alone at 100 %"
    assert step_splits(store, rollout_id) == [
        {BASELINE: 90, CANDIDATE: 10},
        {BASELINE: 50, CANDIDATE: 50},
    ], "each step applied exactly once, in order"
    verdicts = [e for e in events if e.kind == "verdict"]
    assert verdicts, "the candidate was judged"
    assert all(v.data["verdict"]["outcome"] != "fail" for v in verdicts)
    alerts = store.claim_alerts(now=sandbox.clock.now() + 1, limit=100, lease_seconds=60)
    assert {a.payload["event"] for a in alerts} >= {"started", "succeeded"}


async def test_regressed_canary_is_rolled_back(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, client: ServingClient
) -> None:
    make_endpoint(sandbox_admin, {**HEALTHY, "error_rate": 0.05})
    rollout_id, phase = await run_plan(sandbox, store, client, plan())
    events = store.events(rollout_id)
    assert phase is Phase.ROLLED_BACK, [(e.kind, e.reason) for e in events][-6:]
    endpoint = await client.get_endpoint(ENDPOINT)
    assert traffic_split(endpoint) == {BASELINE: 100}
    assert endpoint.config is not None
    assert endpoint.config.entity_names() == [BASELINE], "candidate removed"
    kinds = [e.kind for e in events]
    assert (
        kinds.index("rolling_back") < kinds.index("baseline_restored") < kinds.index("rolled_back")
    )
    assert step_splits(store, rollout_id) == [{BASELINE: 90, CANDIDATE: 10}], (
        "caught at the first step, before more traffic moved"
    )
    alerts = store.claim_alerts(now=sandbox.clock.now() + 1, limit=100, lease_seconds=60)
    rolled = [a for a in alerts if a.payload["event"] == "rolled_back"]
    assert len(rolled) == 1
    checks = rolled[0].payload["details"]["verdict"]["checks"]
    failing = [c for c in checks if c["outcome"] == "fail"]
    assert failing, "the alert carries the numbers behind the rollback"
    assert failing[0]["metric"] == "error_rate"
    assert failing[0]["candidate_value"] > failing[0]["baseline_value"]


async def test_update_failed_rolls_back_with_build_logs(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, client: ServingClient
) -> None:
    make_endpoint(sandbox_admin, {**HEALTHY, "fail_build": True})
    _, phase = await run_plan(sandbox, store, client, plan())
    assert phase is Phase.ROLLED_BACK
    endpoint = await client.get_endpoint(ENDPOINT)
    assert traffic_split(endpoint) == {BASELINE: 100}
    alerts = store.claim_alerts(now=sandbox.clock.now() + 1, limit=100, lease_seconds=60)
    rolled = next(a for a in alerts if a.payload["event"] == "rolled_back")
    assert rolled.payload["details"]["build_logs_tail"], "build logs kept for the alert"


async def test_ab_picks_the_faster_candidate(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, client: ServingClient
) -> None:
    make_endpoint(sandbox_admin, {**HEALTHY, "latency_p50_ms": 20, "latency_p99_ms": 60}, qps=100)
    ab = plan(steps=None, strategy="ab", split=50, duration="30m", objective="latency_p99_ms")
    rollout_id, phase = await run_plan(sandbox, store, client, ab)
    report = next(e for e in store.events(rollout_id) if e.kind == "ab_report").data["report"]
    assert report["winner"] == "candidate", report["summary"]
    objective = report["metrics"][0]
    assert objective["metric"] == "latency_p99_ms"
    assert objective["ci95"][1] < 1.0, "the whole interval says the candidate is faster"
    assert phase is Phase.SUCCEEDED
    assert traffic_split(await client.get_endpoint(ENDPOINT)) == {CANDIDATE: 100}


async def test_ab_keeps_the_baseline_against_a_slower_candidate(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, client: ServingClient
) -> None:
    make_endpoint(sandbox_admin, {**HEALTHY, "latency_p50_ms": 40, "latency_p99_ms": 130}, qps=100)
    ab = plan(steps=None, strategy="ab", split=50, duration="30m", objective="latency_p99_ms")
    rollout_id, phase = await run_plan(sandbox, store, client, ab)
    report = next(e for e in store.events(rollout_id) if e.kind == "ab_report").data["report"]
    assert report["winner"] == "baseline", report["summary"]
    assert phase is Phase.ROLLED_BACK
    assert traffic_split(await client.get_endpoint(ENDPOINT)) == {BASELINE: 100}


async def test_blue_green_switches_and_completes(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, client: ServingClient
) -> None:
    make_endpoint(sandbox_admin, HEALTHY)
    # A bake promotes only on a pass against the warm-up's control, whose sampling error is
    # part of the budget: a 30-minute warm-up at 200 req/s gives the control ~350,000
    # requests (the README advises a few thousand at least).
    bg = plan(steps=None, strategy="blue_green", bake="10m", warmup="30m", policy="default")
    rollout_id, phase = await run_plan(sandbox, store, client, bg)
    events = store.events(rollout_id)
    assert phase is Phase.SUCCEEDED, [(e.kind, e.reason) for e in events][-6:]
    kinds = [e.kind for e in events]
    assert "preflight_passed" in kinds
    assert step_splits(store, rollout_id) == [{BASELINE: 0, CANDIDATE: 100}], "one switch"
    endpoint = await client.get_endpoint(ENDPOINT)
    assert endpoint.config is not None
    assert endpoint.config.entity_names() == [CANDIDATE], "baseline removed at the end"


async def test_blue_green_switches_back_on_a_bad_candidate(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, client: ServingClient
) -> None:
    make_endpoint(sandbox_admin, {**HEALTHY, "error_rate": 0.08})
    # Smoke invocations would often catch an 8 % error rate; let them through so that the
    # bake's switch back is what this test watches.
    bg = plan(
        steps=None, strategy="blue_green", bake="10m", smoke={"requests": 5, "max_failures": 4}
    )
    rollout_id, phase = await run_plan(sandbox, store, client, bg)
    events = store.events(rollout_id)
    assert phase is Phase.ROLLED_BACK, [(e.kind, e.reason) for e in events][-6:]
    switched = next(e for e in events if e.kind == "step_applied")
    back = next(e for e in events if e.kind == "baseline_restored")
    assert back.at - switched.at <= 15 * 60, "switched back during the bake"
    assert traffic_split(await client.get_endpoint(ENDPOINT)) == {BASELINE: 100}


async def test_blue_green_refuses_an_incompatible_schema(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, client: ServingClient
) -> None:
    schema = {
        "type": "object",
        "required": ["dataframe_records"],
        "properties": {"dataframe_records": {"type": "array"}},
    }
    stricter = {**schema, "required": ["dataframe_records", "params"]}
    make_endpoint(sandbox_admin, {**HEALTHY, "input_schema": stricter})
    response = sandbox_admin.put(
        f"/endpoints/{ENDPOINT}/profiles/{BASELINE}", json={**HEALTHY, "input_schema": schema}
    )
    assert response.status_code == 200, response.text
    bg = plan(steps=None, strategy="blue_green", bake="10m")
    rollout_id, phase = await run_plan(sandbox, store, client, bg)
    events = store.events(rollout_id)
    assert phase is Phase.ROLLED_BACK
    failed = next(e for e in events if e.kind == "preflight_failed")
    assert "params" in failed.reason
    assert not step_splits(store, rollout_id), "no traffic ever moved to the candidate"


async def test_an_abort_during_a_long_config_update_is_seen_before_any_step(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, client: ServingClient
) -> None:
    make_endpoint(sandbox_admin, HEALTHY)
    # Every config update takes over 6 minutes, as a large model's build can on Databricks.
    response = sandbox_admin.put(f"/endpoints/{ENDPOINT}/updates", json={"duration_seconds": 400})
    assert response.status_code == 200, response.text
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    runner = Runner(store, client, clock=clock, timing=TIMING)
    record = await runner.submit(plan(), PolicyLibrary().get("default"))
    started = clock.now()
    first = await runner.reconcile(record.id)
    assert first.phase is Phase.PREPARING
    assert clock.now() - started < 120, "the reconcile came back while the deploy builds"
    store.add_command(record.id, "abort", {}, clock.now())
    phase = await drive(runner, store, clock, record.id)
    assert phase is Phase.ABORTED, [(e.kind, e.reason) for e in store.events(record.id)][-6:]
    kinds = [e.kind for e in store.events(record.id)]
    assert "aborted" in kinds
    assert "step_applied" not in kinds, "no traffic went to the candidate after the abort"
    endpoint = await client.get_endpoint(ENDPOINT)
    assert traffic_split(endpoint) == {BASELINE: 100}


async def test_a_restore_that_fails_after_an_abort_says_what_failed_and_what_is_served(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, client: ServingClient
) -> None:
    make_endpoint(sandbox_admin, HEALTHY)
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    runner = Runner(store, client, clock=clock, timing=TIMING)
    record = await runner.submit(plan(), PolicyLibrary().get("default"))
    while store.get(record.id).state.get("candidate_weight") != 10:
        result = await runner.reconcile(record.id)
        assert not result.phase.terminal
        due = store.get(record.id).due_at
        assert due is not None
        clock.advance(max(0.0, due - clock.now()))
    # Every update from now on fails: the restore cannot happen.
    response = sandbox_admin.put(f"/endpoints/{ENDPOINT}/updates", json={"fail_next": 10})
    assert response.status_code == 200, response.text
    store.add_command(record.id, "abort", {"reason": "the on-call asked to stop"}, clock.now())
    phase = await drive(runner, store, clock, record.id)

    events = store.events(record.id)
    assert phase is Phase.FAILED, [(e.kind, e.reason) for e in events][-6:]
    live = traffic_split(await client.get_endpoint(ENDPOINT))
    assert live == {BASELINE: 90, CANDIDATE: 10}, "the failed restore left the step serving"
    reason = store.get(record.id).state["ending_reason"]
    assert reason.startswith("could not restore the baseline: "), reason
    assert f"the endpoint serves {BASELINE} 90%, {CANDIDATE} 10%" in reason
    assert reason.endswith("; while rolling back: the on-call asked to stop")
    assert events[-1].kind == "failed"
    assert events[-1].reason == reason
    alerts = store.claim_alerts(now=clock.now() + 1, limit=100, lease_seconds=60)
    failed = [a.payload for a in alerts if a.payload["event"] == "failed"]
    assert len(failed) == 1
    assert failed[0]["summary"] == f"{ENDPOINT}: HUMAN NEEDED: {reason}"
    assert failed[0]["details"]["live_split"] == live
    assert failed[0]["details"]["while_rolling_back"] == "the on-call asked to stop"


class RecordingTransport(httpx.AsyncBaseTransport):
    """Real HTTP to the sandbox, keeping the body of every config PUT sent."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.puts: list[dict[str, Any]] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "PUT" and request.url.path.endswith("/config"):
            self.puts.append(json.loads(request.content))
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize(
    ("fault", "updates"),
    [
        # The candidate's image never builds, and the build takes three looks to say so.
        ({"fail_build": True}, {"duration_seconds": 90}),
        # One update fails once (a transient infrastructure failure), as slowly.
        ({}, {"duration_seconds": 90, "fail_next": 1}),
    ],
    ids=["slow failing build", "one-off UPDATE_FAILED"],
)
async def test_an_update_failed_seen_on_a_later_look_rolls_back_once_with_build_logs(
    sandbox: SandboxServer,
    sandbox_admin: httpx.Client,
    store: Store,
    fault: dict[str, Any],
    updates: dict[str, Any],
) -> None:
    make_endpoint(sandbox_admin, {**HEALTHY, **fault})
    response = sandbox_admin.put(f"/endpoints/{ENDPOINT}/updates", json=updates)
    assert response.status_code == 200, response.text
    assert updates["duration_seconds"] > 2 * TIMING.look_interval, "failure after two looks"
    recording = RecordingTransport()
    async with ServingClient(
        sandbox.url,
        PatAuth(sandbox.token),
        clock=sandbox.clock,
        transport=recording,
        retry=RetryPolicy(initial_backoff=0.1, max_backoff=1, budget_seconds=30),
        poll_interval=5,
    ) as client:
        rollout_id, phase = await run_plan(sandbox, store, client, plan())
        endpoint = await client.get_endpoint(ENDPOINT)

    events = store.events(rollout_id)
    assert phase is Phase.ROLLED_BACK, [(e.kind, e.reason) for e in events][-6:]
    with_candidate = [
        body for body in recording.puts
        if CANDIDATE in {e["name"] for e in body["served_entities"]}
    ]
    assert len(with_candidate) == 1, "the refused config was never sent again"
    assert "update_resent" not in [e.kind for e in events]
    assert not step_splits(store, rollout_id), "no traffic ever moved to the candidate"
    assert traffic_split(endpoint) == {BASELINE: 100}
    rolling = next(e for e in events if e.kind == "rolling_back")
    assert "ended UPDATE_FAILED" in rolling.reason, rolling.reason
    assert "ERROR Served entity ads_model-4" in rolling.data["build_logs"]

    alerts = store.claim_alerts(now=sandbox.clock.now() + 1, limit=100, lease_seconds=60)
    payloads = {a.payload["event"]: a.payload for a in alerts}
    assert "succeeded" not in payloads
    for event in ("rolling_back", "rolled_back"):
        tail = payloads[event]["details"]["build_logs_tail"]
        assert "ERROR Update to config version 2 of endpoint ads failed" in tail, tail
        assert len(tail) <= 4096
# ---- endpoints as they really come back -----------------------------------------------------

LEGACY_BASELINE = {
    "name": BASELINE,
    "model_name": "main.ml.ads_model",
    "model_version": "3",
    "workload_size": "Small",
    "scale_to_zero_enabled": False,
    # Never echoed on GET: only the plan can say it.
    "burst_scaling_enabled": False,
    "environment_vars": {"FEATURE_STORE": "online"},
    # A field this controller has never heard of: it must survive the rollout's PUTs.
    "future_setting": {"level": 2},
}


CAPTURE = {"catalog_name": "main", "schema_name": "ml", "table_name_prefix": "ads",
           "enabled": True}


def public_api(sandbox: SandboxServer) -> httpx.Client:
    return httpx.Client(base_url=sandbox.url, timeout=10.0,
                        headers={"Authorization": f"Bearer {sandbox.token}"})


def make_legacy_endpoint(
    sandbox: SandboxServer, admin: httpx.Client, candidate: dict[str, Any]
) -> dict[str, Any]:
    """An endpoint described with served_models, answering in proto3 JSON (defaults left out);
    returns its GET as sent."""
    with public_api(sandbox) as api:
        created = api.post("/api/2.0/serving-endpoints", json={
            "name": ENDPOINT,
            "config": {"served_models": [LEGACY_BASELINE], "auto_capture_config": CAPTURE},
        })
        assert created.status_code == 200, created.text
    assert isinstance(sandbox.clock, FakeClock)
    sandbox.clock.advance(10)
    for entity, profile in ((BASELINE, HEALTHY), (CANDIDATE, candidate)):
        response = admin.put(f"/endpoints/{ENDPOINT}/profiles/{entity}", json=profile)
        assert response.status_code == 200, response.text
    assert admin.put(f"/endpoints/{ENDPOINT}/load", json={"qps": 200}).status_code == 200
    sparse = admin.patch(f"/endpoints/{ENDPOINT}/realism", json={"sparse_json": True})
    assert sparse.status_code == 200, sparse.text
    with public_api(sandbox) as api:
        return dict(api.get(f"/api/2.0/serving-endpoints/{ENDPOINT}").json())


def baseline_fields(sandbox: SandboxServer) -> dict[str, Any]:
    """The baseline's fields as the workspace holds them, unechoed ones included."""
    config = sandbox.workspace.endpoints[ENDPOINT].config
    assert config is not None
    spec = config.spec.entity(BASELINE)
    assert spec is not None
    return dict(spec.fields)


@pytest.mark.parametrize(
    "case",
    [({**HEALTHY, "error_rate": 0.05}, Phase.ROLLED_BACK), (HEALTHY, Phase.SUCCEEDED)],
    ids=["regressed", "healthy"],
)
async def test_legacy_sparse_endpoint_round_trips_through_a_rollout(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, client: ServingClient,
    case: tuple[dict[str, Any], Phase],
) -> None:
    candidate, ending = case
    raw = make_legacy_endpoint(sandbox, sandbox_admin, candidate)
    assert "config_update" not in raw["state"], "GET leaves NOT_UPDATING out"
    assert "served_entities" not in raw["config"]
    assert "burst_scaling_enabled" not in raw["config"]["served_models"][0]

    the_plan = plan(entity_settings={BASELINE: {"burst_scaling_enabled": False}})
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    runner = Runner(store, client, clock=clock, timing=TIMING)
    record = await runner.submit(the_plan, PolicyLibrary().get("default"))
    # Through the first step: the deploy PUT routed 0 % to the candidate, which a sparse GET
    # shows as a route without traffic_percentage.
    while not step_splits(store, record.id):
        result = await runner.reconcile(record.id)
        assert not result.phase.terminal, [(e.kind, e.reason) for e in store.events(record.id)]
        due = store.get(record.id).due_at
        assert due is not None
        clock.advance(max(0.0, due - clock.now()))
    during = baseline_fields(sandbox)
    assert during == {
        "name": BASELINE,
        "entity_name": "main.ml.ads_model",
        "entity_version": "3",
        "workload_size": "Small",
        "burst_scaling_enabled": False,
        "environment_vars": {"FEATURE_STORE": "online"},
        "future_setting": {"level": 2},
    }, "every baseline field carried into served_entities, nothing reset"
    live = sandbox.workspace.endpoints[ENDPOINT].config
    assert live is not None
    assert live.spec.auto_capture_config == CAPTURE, "inference tables left as they were"

    phase = await drive(runner, store, clock, record.id)
    events = store.events(record.id)
    assert phase is ending, [(e.kind, e.reason) for e in events][-6:]
    assert not [e for e in events if e.kind in ("drift", "paused")], "no false drift"
    endpoint = await client.get_endpoint(ENDPOINT)
    if ending is Phase.ROLLED_BACK:
        assert traffic_split(endpoint) == {BASELINE: 100}
        assert baseline_fields(sandbox) == during, "the restored baseline is the one we found"
    else:
        assert traffic_split(endpoint) == {CANDIDATE: 100}
    final = sandbox.workspace.endpoints[ENDPOINT].config
    assert final is not None
    assert final.spec.auto_capture_config == CAPTURE


async def test_unattributable_metrics_pause_the_rollout_naming_the_labels(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, client: ServingClient
) -> None:
    make_endpoint(sandbox_admin, HEALTHY)
    relabel = sandbox_admin.patch(f"/endpoints/{ENDPOINT}/realism", json={"entity_label": "model"})
    assert relabel.status_code == 200, relabel.text
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    runner = Runner(store, client, clock=clock, timing=TIMING)
    record = await runner.submit(plan(), PolicyLibrary().get("default"))
    phase = Phase.PENDING
    for _ in range(50):
        phase = (await runner.reconcile(record.id)).phase
        if phase is Phase.PAUSED or phase.terminal:
            break
        due = store.get(record.id).due_at
        assert due is not None
        clock.advance(max(0.0, due - clock.now()))
    events = store.events(record.id)
    assert phase is Phase.PAUSED, [(e.kind, e.reason) for e in events][-6:]
    (pause,) = [e for e in events if e.kind == "unattributable_metrics"]
    assert "labels found: endpoint_name, model" in pause.reason
    assert not [e for e in events if e.kind == "verdict"], "nothing judged on summed arms"
    endpoint = await client.get_endpoint(ENDPOINT)
    assert traffic_split(endpoint) == {BASELINE: 90, CANDIDATE: 10}, "held where it was"


@pytest.mark.parametrize(
    "case",
    # At 40 requests/s a Small entity (4 concurrent) is busy a quarter of the time at 50 %
    # with 50 ms requests, and all the time at 10 % with 2 s ones.
    [({**HEALTHY, "latency_p50_ms": 2000, "latency_p99_ms": 5000}, Phase.ROLLED_BACK),
     (HEALTHY, Phase.SUCCEEDED)],
    ids=["saturated", "healthy"],
)
async def test_a_gpu_usage_check_judges_a_gpu_candidate(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, client: ServingClient,
    case: tuple[dict[str, Any], Phase],
) -> None:
    profile, ending = case
    make_endpoint(sandbox_admin, profile, qps=40)
    gpu_plan = plan(
        candidate={"entity_name": "main.ml.ads_model", "entity_version": "4",
                   "workload_size": "Small", "workload_type": "GPU_SMALL"},
        policy={"name": "gpu", "checks": [{"metric": "gpu_usage_percentage", "max": "80%"}]},
    )
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    runner = Runner(store, client, clock=clock, timing=TIMING)
    record = await runner.submit(gpu_plan, resolve_policy(gpu_plan))
    rollout_id = record.id
    phase = await drive(runner, store, clock, rollout_id)
    events = store.events(rollout_id)
    assert phase is ending, [(e.kind, e.reason) for e in events][-6:]
    verdicts = [e.data["verdict"] for e in events if e.kind == "verdict"]
    checks = [c for v in verdicts for c in v["checks"]]
    assert checks
    assert {c["metric"] for c in checks} >= {"gpu_usage_percentage"}
    gpu = [c for c in checks if c["metric"] == "gpu_usage_percentage"]
    if ending is Phase.ROLLED_BACK:
        assert gpu[-1]["outcome"] == "fail"
        assert gpu[-1]["candidate_value"] > 80.0
    else:
        assert all(c["outcome"] != "fail" for c in gpu)
        # Only verdicts that changed are logged: the first may predate any GPU reading.
        values = [c["candidate_value"] for c in gpu if c["candidate_value"] is not None]
        assert values, gpu
        assert max(values) < 80.0
