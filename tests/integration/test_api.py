"""The HTTP API in process (ASGI), with its serving client on the sandbox over real HTTP and a
real SQLite store: every route's answers, auth roles, bounded and malformed bodies, and the
OpenAPI document."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate as validate_openapi
from prometheus_client import CollectorRegistry, Counter
from pydantic import SecretStr

from rollout.api import check_bind, create_api, parse_tokens
from rollout.clock import FakeClock
from rollout.engine.runner import new_rollout
from rollout.errors import ConfigurationProblem
from rollout.plan import resolve_policy, validate_plan
from rollout.policies import PolicyLibrary
from rollout.sandbox.server import SandboxServer
from rollout.serving.auth import PatAuth
from rollout.serving.client import ServingClient
from rollout.serving.retry import RetryPolicy
from rollout.settings import ApiSettings
from rollout.store.base import Store
from rollout.store.model import RolloutRecord

ENDPOINT = "ads"
OPERATOR = "op-secret-token-1"
VIEWER = "view-secret-token-2"
TOKENS = f"{OPERATOR}:operator,{VIEWER}:viewer"

CANARY_YAML = f"""\
name: ads-v4
endpoint: {ENDPOINT}
candidate:
  entity_name: main.ml.ads_model
  entity_version: "4"
  workload_size: Small
strategy: canary
steps:
  - {{weight: 5, bake: 10m}}
  - {{weight: 25, bake: 10m}}
  - {{weight: 50, bake: 20m}}
policy: default
"""


def plan_dict(endpoint: str = ENDPOINT, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "endpoint": endpoint,
        "candidate": {"entity_name": "main.ml.ads_model", "entity_version": "4"},
        "strategy": "canary",
        "steps": [{"weight": 10, "bake": "5m"}, {"weight": 50, "bake": "5m"}],
    }
    data.update(fields)
    return {key: value for key, value in data.items() if value is not None}


def make_endpoint(admin: httpx.Client, name: str = ENDPOINT) -> None:
    response = admin.post(
        "/endpoints",
        json={
            "name": name,
            "served_entities": [
                {
                    "name": f"{name}-3",
                    "entity_name": "main.ml.ads_model",
                    "entity_version": "3",
                    "workload_size": "Small",
                }
            ],
            "qps": 10,
        },
    )
    assert response.status_code == 201, response.text


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code, error
    assert isinstance(error["message"], str)
    assert error["message"]
    assert "Traceback" not in response.text
    return dict(error)


def serving_client(sandbox: SandboxServer, *, token: str | None = None, url: str | None = None
                   ) -> ServingClient:
    return ServingClient(
        url or sandbox.url,
        PatAuth(token or sandbox.token),
        clock=sandbox.clock,
        retry=RetryPolicy(initial_backoff=0.1, max_backoff=1, budget_seconds=5),
        poll_interval=5,
    )


class Harness:
    """An API app over the sandbox and a store, and the calls it made to ``wake``."""

    def __init__(self, sandbox: SandboxServer, store: Store) -> None:
        self.sandbox = sandbox
        self.store = store
        self.woken: list[str] = []
        self.registry = CollectorRegistry()
        self.clients: list[ServingClient] = []

    def app(
        self,
        *,
        tokens: str | None = None,
        max_body_bytes: int = 1_048_576,
        store: Store | None = None,
        client: ServingClient | None = None,
        ready: Any = None,
    ) -> FastAPI:
        if client is None:
            client = serving_client(self.sandbox)
        self.clients.append(client)
        return create_api(
            store=store or self.store,
            client=client,
            clock=self.sandbox.clock,
            library=PolicyLibrary(),
            registry=self.registry,
            settings=ApiSettings(
                tokens=SecretStr(tokens) if tokens else None, max_body_bytes=max_body_bytes
            ),
            ready=ready,
            wake=self.woken.append,
        )

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


# What the CLI sends with a bodiless command: no page on another origin can send it.
CLI = {"X-Rollout-Client": "test"}


def asgi(app: FastAPI, token: str | None = None) -> httpx.AsyncClient:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://127.0.0.1", headers=headers
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


async def submit_yaml(api: httpx.AsyncClient, text: str = CANARY_YAML) -> httpx.Response:
    return await api.post(
        "/api/v1/rollouts", content=text, headers={"Content-Type": "application/yaml"}
    )


async def submit_json(api: httpx.AsyncClient, data: Any) -> httpx.Response:
    return await api.post("/api/v1/rollouts", json=data)


def finish(store: Store, rollout_id: str, phase: str) -> RolloutRecord:
    record = store.get(rollout_id)
    return store.commit(
        rollout_id,
        record.version,
        phase=phase,
        state={**record.state, "phase": phase},
        due_at=None,
        updated_at=record.updated_at + 1,
        events=[],
        alerts=[],
        consumed_commands=[],
    )


# ---- submitting ------------------------------------------------------------------------------


async def test_submit_yaml_creates_a_pending_rollout(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    response = await submit_yaml(api)
    assert response.status_code == 201, response.text
    body = response.json()
    assert response.headers["Location"] == f"/api/v1/rollouts/{body['id']}"
    assert body["endpoint"] == ENDPOINT
    assert body["name"] == "ads-v4"
    assert body["strategy"] == "canary"
    assert body["candidate"] == "ads_model-4"
    assert body["policy"] == "default"
    assert body["phase"] == "pending"
    assert body["step"] == 0
    assert body["steps"] == [5, 25, 50]
    assert body["candidate_weight"] == 0
    assert body["last_verdict"] is None
    assert body["warnings"] == [], "a new endpoint has no closed metrics window yet"
    assert body["plan"]["policy"]["name"] == "default"  # resolved and inlined
    started = datetime.fromisoformat(body["started_at"])
    assert started.utcoffset() is not None
    assert started.timestamp() == harness.sandbox.clock.now()
    assert harness.woken == [body["id"]]
    stored = harness.store.get(body["id"])
    assert stored.phase == "pending"
    assert harness.store.active_for_endpoint(ENDPOINT) == stored


@pytest.mark.parametrize("content_type", ["text/yaml", "application/x-yaml",
                                          "application/yaml; charset=utf-8"])
async def test_every_yaml_media_type_is_accepted(api: httpx.AsyncClient, content_type: str
                                                 ) -> None:
    response = await api.post("/api/v1/rollouts", content=CANARY_YAML,
                              headers={"Content-Type": content_type})
    assert response.status_code == 201, response.text


async def test_submit_json_for_each_strategy_reports_its_steps(
    api: httpx.AsyncClient, sandbox_admin: httpx.Client
) -> None:
    make_endpoint(sandbox_admin, "ab-ep")
    make_endpoint(sandbox_admin, "bg-ep")
    canary = await submit_json(api, plan_dict(steps=None, step_weight=20, bake="5m"))
    ab = await submit_json(api, plan_dict("ab-ep", strategy="ab", steps=None, split=30,
                                          duration="1h"))
    blue_green = await submit_json(api, plan_dict("bg-ep", strategy="blue_green", steps=None,
                                                  bake="10m", policy="strict"))
    assert canary.status_code == ab.status_code == blue_green.status_code == 201
    assert canary.json()["steps"] == [20, 40, 60, 80]
    assert ab.json()["steps"] == [30]
    assert ab.json()["strategy"] == "ab"
    assert blue_green.json()["steps"] == [100]
    assert blue_green.json()["policy"] == "strict"


def serve_for_a_minute(admin: httpx.Client, harness: Harness, qps: float) -> None:
    """Endpoint ``ads`` under ``qps`` simulated requests per second for one closed window."""
    response = admin.put(f"/endpoints/{ENDPOINT}/load", json={"qps": qps})
    assert response.status_code == 200, response.text
    clock = harness.sandbox.clock
    assert isinstance(clock, FakeClock)
    clock.advance(60)


async def test_low_traffic_is_said_at_submission_with_the_numbers(
    api: httpx.AsyncClient, harness: Harness, sandbox_admin: httpx.Client
) -> None:
    serve_for_a_minute(sandbox_admin, harness, qps=0.4)
    last = sandbox_admin.get(f"/endpoints/{ENDPOINT}/windows/last").json()
    served = sum(e["requests"] for e in last["entities"].values())
    assert 0 < served < 60
    response = await submit_yaml(api)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["phase"] == "pending", "a warning, not a refusal"
    expected = served / 60 * 0.05 * 1800  # 5 % for bake 10m x step_deadline_factor 3
    rate = served / 60
    shown = f"{rate:.1f}" if rate >= 1 else f"{rate:.2g}"
    assert body["warnings"][0] == (
        f"low traffic: {ENDPOINT} served {shown} req/s over the last 1m; at 5 % for 30m (bake "
        f"10m x step_deadline_factor 3) the candidate would see about {expected:,.0f} "
        "requests, below min_requests 50: expect the rollout to pause for a person"
    )
    assert harness.store.get(body["id"]).phase == "pending"


async def test_enough_traffic_says_nothing(
    api: httpx.AsyncClient, harness: Harness, sandbox_admin: httpx.Client
) -> None:
    serve_for_a_minute(sandbox_admin, harness, qps=200)
    response = await submit_yaml(api)
    assert response.status_code == 201, response.text
    assert not [w for w in response.json()["warnings"] if w.startswith("low traffic")]


async def test_a_latency_tolerance_the_buckets_cannot_resolve_is_said_with_the_numbers(
    api: httpx.AsyncClient, harness: Harness, sandbox_admin: httpx.Client
) -> None:
    # The sandbox's default profile: p99 200 ms, inside the (100, 250] ms bucket, so the
    # default policy's 1.25x is judged at the 500 ms bound.
    serve_for_a_minute(sandbox_admin, harness, qps=200)
    response = await submit_yaml(api)
    assert response.status_code == 201, response.text
    notes = [w for w in response.json()["warnings"] if "exported buckets" in w]
    assert len(notes) == 1, response.json()["warnings"]
    note = notes[0]
    assert note.startswith("latency_p99_ms vs baseline: max_ratio 1.25: the baseline's ")
    assert "first bound beyond" in note
    assert "at 500 ms" in note
    assert note.endswith("not 1.25x")


async def test_an_export_naming_no_entity_is_said_at_submission(
    api: httpx.AsyncClient, harness: Harness, sandbox_admin: httpx.Client
) -> None:
    relabel = sandbox_admin.patch(f"/endpoints/{ENDPOINT}/realism", json={"entity_label": "model"})
    assert relabel.status_code == 200, relabel.text
    serve_for_a_minute(sandbox_admin, harness, qps=200)
    response = await submit_yaml(api)
    assert response.status_code == 201, response.text
    warnings = response.json()["warnings"]
    assert warnings[0].startswith("export-metrics series name no served entity"), warnings
    assert "labels found: endpoint_name, model" in warnings[0]
    assert "will pause at its first look" in warnings[0]


async def test_unreadable_metrics_never_fail_a_submission(
    api: httpx.AsyncClient, harness: Harness, sandbox_admin: httpx.Client
) -> None:
    serve_for_a_minute(sandbox_admin, harness, qps=0.4)
    fault = sandbox_admin.post("/faults", json={"status": 500, "path_pattern": "/metrics$"})
    assert fault.status_code == 201, fault.text
    response = await submit_yaml(api)
    assert response.status_code == 201, response.text
    assert response.json()["warnings"] == []
    served = sandbox_admin.get("/faults").json()["faults"][0]["served"]
    assert served >= 1, "the metrics were asked for"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/xml",
                                          "multipart/form-data"])
async def test_other_content_types_are_415(api: httpx.AsyncClient, content_type: str | None
                                           ) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = await api.post("/api/v1/rollouts", content=CANARY_YAML.encode(), headers=headers)
    error = assert_error(response, 415, "unsupported_media_type")
    assert "application/yaml" in error["message"]


@pytest.mark.parametrize(
    ("content_type", "body", "field", "words"),
    [
        ("application/json", b'{"endpoint": "ads",', "(document)", "invalid JSON at line 1"),
        ("application/json", b'{"endpoint": NaN}', "(document)", "NaN"),
        ("application/json", b"", "(document)", "empty"),
        ("application/json", b"[1, 2]", "(plan)", "must be a mapping"),
        ("application/json", b'"a string"', "(plan)", "must be a mapping"),
        ("application/json", b"\xff\xfe{}", "(document)", "not UTF-8"),
        ("application/json", b"[" * 5000 + b"]" * 5000, "(document)", "nested"),
        ("application/yaml", b"endpoint: [unclosed", "(document)", "invalid YAML"),
        ("application/yaml", b"- a\n- b\n", "(plan)", "must be a mapping"),
        ("application/yaml", b"42\n", "(plan)", "must be a mapping"),
        ("application/yaml", b"endpoint: ads\nwhen: 2020-01-01\n", "when", "date"),
        ("application/yaml", b"endpoint: ads\nblob: !!binary aGVsbG8=\n", "blob", "bytes"),
        ("application/yaml", b"endpoint: ads\nx: .nan\n", "x", "finite"),
        ("application/yaml", b"endpoint: ads\n1: x\n", "(plan)", "not a string"),
        ("application/yaml", b"a: &a [*a]\n", "(document)", "refers to itself"),
        ("application/yaml", b"a: !!python/object/apply:os.system ['true']\n", "(document)",
         "invalid YAML"),
    ],
)
async def test_malformed_documents_are_422_naming_the_problem(
    api: httpx.AsyncClient, harness: Harness, *, content_type: str, body: bytes, field: str,
    words: str
) -> None:
    response = await api.post("/api/v1/rollouts", content=body,
                              headers={"Content-Type": content_type})
    error = assert_error(response, 422, "invalid_plan")
    fields = [d["field"] for d in error["details"]]
    assert field in fields, error
    assert words in json.dumps(error["details"]), error
    assert harness.store.list() == []
    assert harness.woken == []


async def test_a_yaml_alias_bomb_is_refused_without_expanding_it(api: httpx.AsyncClient) -> None:
    lines = ['a0: ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 10)]
    lines[0] = 'a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]'
    text = "\n".join(lines) + "\nendpoint: ads\nstrategy: canary\n"
    response = await submit_yaml(api, text)
    error = assert_error(response, 422, "invalid_plan")
    assert "YAML aliases" in error["message"]


async def test_yaml_lone_surrogates_are_refused_not_echoed_into_a_500(
    api: httpx.AsyncClient,
) -> None:
    # YAML's "\\ud800" escapes make lone surrogates, which no JSON document or store can hold.
    for text in ('"\\ud800\\udc00": {"\\x00": null}\n', 'endpoint: "\\ud800"\n'):
        response = await submit_yaml(api, text)
        error = assert_error(response, 422, "invalid_plan")
        assert "not valid Unicode" in error["message"], error


async def test_a_plan_with_three_bad_fields_gets_three_details(api: httpx.AsyncClient) -> None:
    data = plan_dict(endpoint="bad name!", steps=[{"weight": 0, "bake": "10m"}])
    data["candidate"] = {"entity_name": "main.ml.ads_model"}
    response = await submit_json(api, data)
    error = assert_error(response, 422, "invalid_plan")
    assert sorted(d["field"] for d in error["details"]) == [
        "candidate.entity_version",
        "endpoint",
        "steps[0].weight",
    ]
    assert "3 problems" in error["message"]


SIX_PROBLEMS = {
    "duration": "not a field of a canary plan",
    "endpoint": "not a valid endpoint name",
    "candidate.workload_sizee": "unknown field",
    "steps[1].weight": "must be greater than the previous step's weight",
    "alerts[0].url": "should match pattern",
    "policy": "unknown policy 'nope'",
}


async def test_a_plan_with_six_problems_gets_all_six_in_one_answer(
    api: httpx.AsyncClient,
) -> None:
    # A field of another strategy, a bad name, an unknown field, out-of-order steps, a bad
    # alert URL and an unknown policy: none of them hides another.
    data = plan_dict(
        endpoint="bad name!",
        steps=[{"weight": 50, "bake": "10m"}, {"weight": 20, "bake": "10m"}],
        duration="10m",
        policy="nope",
        alerts=[{"type": "webhook", "url": "ftp://x"}],
    )
    data["candidate"] = {**data["candidate"], "workload_sizee": "Small"}
    response = await submit_json(api, data)
    error = assert_error(response, 422, "invalid_plan")
    found = {d["field"]: d["message"] for d in error["details"]}
    assert sorted(found) == sorted(SIX_PROBLEMS), error
    for field, words in SIX_PROBLEMS.items():
        assert words in found[field], (field, found[field])
    assert "6 problems" in error["message"]


@pytest.mark.parametrize(
    ("policy", "field"),
    [
        ("no-such-policy", "policy"),
        ("../../etc/passwd", "policy"),
        ({"checks": [{"metric": "no_such_metric", "max": 1}]}, "policy.checks"),
    ],
)
async def test_bad_policies_are_422_on_the_policy_field(
    api: httpx.AsyncClient, policy: Any, field: str
) -> None:
    response = await submit_json(api, plan_dict(policy=policy))
    error = assert_error(response, 422, "invalid_plan")
    assert any(d["field"].startswith(field) for d in error["details"]), error


async def test_wrong_types_anywhere_are_422(api: httpx.AsyncClient) -> None:
    response = await submit_json(api, plan_dict(steps="five", candidate=["x"], alerts={"a": 1}))
    error = assert_error(response, 422, "invalid_plan")
    assert {"steps", "candidate", "alerts"} <= {d["field"] for d in error["details"]}


async def test_a_second_active_rollout_on_the_endpoint_is_409(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    first = await submit_yaml(api)
    second = await submit_json(api, plan_dict())
    error = assert_error(second, 409, "rollout_active")
    assert error["active_rollout"] == first.json()["id"]
    assert len(harness.store.list()) == 1
    # Once the first one has ended, the endpoint is free again.
    finish(harness.store, first.json()["id"], "rolled_back")
    third = await submit_json(api, plan_dict())
    assert third.status_code == 201, third.text


class LaggingStore:
    """A store whose view of active rollouts lags (as a replica's may): the race case."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner

    def active_for_endpoint(self, _endpoint: str) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_the_stores_conflict_on_a_race_is_409_too(
    harness: Harness, sandbox_admin: httpx.Client
) -> None:
    make_endpoint(sandbox_admin)
    app = harness.app(store=LaggingStore(harness.store))  # type: ignore[arg-type]
    async with asgi(app) as api:
        first = await submit_yaml(api)
        assert first.status_code == 201
        error = assert_error(await submit_yaml(api), 409, "rollout_active")
    assert error["active_rollout"] == first.json()["id"]


async def test_an_endpoint_missing_from_the_workspace_is_404(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    error = assert_error(await submit_json(api, plan_dict("nowhere")), 404, "endpoint_not_found")
    assert "'nowhere'" in error["message"]
    assert harness.store.list() == []


async def test_an_endpoint_the_controller_cannot_manage_is_403(
    harness: Harness, sandbox: SandboxServer, sandbox_admin: httpx.Client
) -> None:
    make_endpoint(sandbox_admin)
    created = sandbox_admin.post("/tokens", json={"token": "view-only", "permission": "CAN_VIEW"})
    assert created.status_code == 201
    app = harness.app(client=serving_client(sandbox, token="view-only"))
    async with asgi(app) as api:
        error = assert_error(await submit_yaml(api), 403, "endpoint_permission")
    assert "CAN_VIEW" in error["message"]
    assert "CAN_MANAGE" in error["message"]


async def test_a_workspace_answering_503_makes_a_503(
    api: httpx.AsyncClient, sandbox_admin: httpx.Client, harness: Harness
) -> None:
    fault = sandbox_admin.post("/faults", json={"status": 503, "path_pattern": "serving-endpoints"})
    assert fault.status_code == 201
    error = assert_error(await submit_yaml(api), 503, "workspace_unavailable")
    assert "try again" in error["message"]
    assert harness.store.list() == []


async def test_an_unreachable_workspace_makes_a_503(
    harness: Harness, sandbox: SandboxServer, sandbox_admin: httpx.Client, unused_tcp_port: int
) -> None:
    make_endpoint(sandbox_admin)
    client = serving_client(sandbox, url=f"http://127.0.0.1:{unused_tcp_port}")
    async with asgi(harness.app(client=client)) as api:
        assert_error(await submit_yaml(api), 503, "workspace_unavailable")


async def test_refused_credentials_make_a_502(
    harness: Harness, sandbox: SandboxServer, sandbox_admin: httpx.Client
) -> None:
    make_endpoint(sandbox_admin)
    async with asgi(harness.app(client=serving_client(sandbox, token="wrong"))) as api:
        error = assert_error(await submit_yaml(api), 502, "workspace_error")
    assert "credentials" in error["message"]


# ---- reading ---------------------------------------------------------------------------------


async def test_list_is_newest_first_and_filters(
    api: httpx.AsyncClient, harness: Harness, sandbox_admin: httpx.Client
) -> None:
    make_endpoint(sandbox_admin, "other")
    first = (await submit_yaml(api)).json()
    finish(harness.store, first["id"], "succeeded")
    harness.sandbox.workspace.advance_clock(10)
    second = (await submit_json(api, plan_dict())).json()
    harness.sandbox.workspace.advance_clock(10)
    third = (await submit_json(api, plan_dict("other"))).json()

    everything = (await api.get("/api/v1/rollouts")).json()["rollouts"]
    assert [r["id"] for r in everything] == [third["id"], second["id"], first["id"]]
    by_endpoint = (await api.get("/api/v1/rollouts", params={"endpoint": ENDPOINT})).json()
    assert [r["id"] for r in by_endpoint["rollouts"]] == [second["id"], first["id"]]
    done = (await api.get("/api/v1/rollouts", params={"phase": "succeeded"})).json()
    assert [r["id"] for r in done["rollouts"]] == [first["id"]]
    assert done["rollouts"][0]["phase"] == "succeeded"
    several = await api.get("/api/v1/rollouts", params=[("phase", "succeeded"),
                                                        ("phase", "pending")])
    assert len(several.json()["rollouts"]) == 3
    limited = (await api.get("/api/v1/rollouts", params={"limit": 1})).json()
    assert [r["id"] for r in limited["rollouts"]] == [third["id"]]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"phase": "finished"}, "phase[0]"),
        ({"limit": 0}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"limit": 100_000}, "limit"),
        ({"view": "everything"}, "view"),
    ],
)
async def test_bad_list_parameters_are_422(
    api: httpx.AsyncClient, params: dict[str, Any], field: str
) -> None:
    error = assert_error(await api.get("/api/v1/rollouts", params=params), 422,
                         "invalid_request")
    assert [d["field"] for d in error["details"]] == [field]


def seed_rollouts(store: Store, count: int, *, start: float, prefix: str = "e") -> list[str]:
    """``count`` pending rollouts created one second apart; their ids, newest first."""
    plan = validate_plan(plan_dict("x"))
    policy = resolve_policy(plan)
    ids = []
    for index in range(count):
        endpoint_plan = plan.model_copy(update={"endpoint": f"{prefix}{index}"})
        record, event = new_rollout(endpoint_plan, policy, start + index)
        ids.append(store.create(record, event, []).id)
    return ids[::-1]


async def all_pages(
    api: httpx.AsyncClient, params: dict[str, Any], between: Callable[[], None] | None = None
) -> tuple[list[dict[str, Any]], int]:
    rollouts: list[dict[str, Any]] = []
    pages = 0
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = await api.get("/api/v1/rollouts", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        rollouts.extend(body["rollouts"])
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            return rollouts, pages
        if between is not None:
            between()


async def test_pages_cover_more_rollouts_than_a_page_once_each(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    ids = seed_rollouts(harness.store, 23, start=1_700_000_000.0)
    rollouts, pages = await all_pages(api, {"limit": 5})
    assert [r["id"] for r in rollouts] == ids
    assert pages == 5  # 5 + 5 + 5 + 5 + 3, and the last page says so with no cursor
    exact, exact_pages = await all_pages(api, {"limit": 23})
    assert ([r["id"] for r in exact], exact_pages) == (ids, 1)
    full, _ = await all_pages(api, {"limit": 10, "view": "full"})
    assert [r["id"] for r in full] == ids
    assert all(r["plan"]["endpoint"] == r["endpoint"] for r in full)
    assert "plan" not in rollouts[0]  # a summary carries no plan


async def test_a_cursor_is_stable_while_new_rollouts_arrive(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    ids = seed_rollouts(harness.store, 12, start=1_700_000_000.0)
    arrivals = iter(range(100))

    def arrive() -> None:
        # Newer than every rollout listed so far: sorts before the first page.
        n = next(arrivals)
        seed_rollouts(harness.store, 1, start=1_800_000_000.0 + n, prefix=f"new{n}-")

    rollouts, pages = await all_pages(api, {"limit": 4}, between=arrive)
    assert [r["id"] for r in rollouts] == ids
    assert pages == 3
    first = (await api.get("/api/v1/rollouts", params={"limit": 2})).json()
    assert [r["endpoint"] for r in first["rollouts"]] == ["new1-0", "new0-0"]


async def test_summaries_say_where_each_rollout_is(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    created = (await submit_yaml(api)).json()
    record = harness.store.get(created["id"])
    verdict = {"outcome": "fail", "reason": "error_rate +2.1% over the baseline", "look": 4}
    harness.store.commit(
        record.id,
        record.version,
        phase="progressing",
        state={**record.state, "step": 1, "candidate_weight": 25, "baseline": "ads-model-3",
               "last_verdict": verdict},
        due_at=record.created_at + 30,
        updated_at=record.created_at + 20,
        events=[],
        alerts=[],
        consumed_commands=[],
    )  # fmt: skip
    (summary,) = (await api.get("/api/v1/rollouts")).json()["rollouts"]
    full = (await api.get(f"/api/v1/rollouts/{record.id}")).json()
    for key in ("id", "name", "endpoint", "phase", "strategy", "candidate", "baseline", "step",
                "candidate_weight", "created_at", "updated_at", "started_at"):
        assert summary[key] == full[key], key
    assert (summary["phase"], summary["step"], summary["candidate_weight"]) == (
        "progressing", 1, 25)  # fmt: skip
    assert summary["step_count"] == len(full["steps"]) == 3
    assert summary["candidate"] == "ads_model-4"
    assert (summary["candidate_entity"], summary["candidate_version"]) == (
        "main.ml.ads_model", "4")  # fmt: skip
    assert summary["last_verdict"] == {"outcome": "fail", "reason": verdict["reason"]}
    assert summary["version"] == 2
    assert datetime.fromisoformat(summary["due_at"]).timestamp() == record.created_at + 30


@pytest.mark.parametrize(
    "cursor", ["nonsense", "WzEsMl0", "W251bGwsImEiXQ", "x" * 401, "WyJhIiwiYiJd"]
)
async def test_a_cursor_the_api_never_gave_is_422(api: httpx.AsyncClient, cursor: str) -> None:
    error = assert_error(
        await api.get("/api/v1/rollouts", params={"cursor": cursor}), 422, "invalid_request"
    )
    assert [d["field"] for d in error["details"]] in (["cursor"], ["query.cursor"])


async def test_get_one_rollout_and_unknown_ids(api: httpx.AsyncClient) -> None:
    created = (await submit_yaml(api)).json()
    fetched = await api.get(f"/api/v1/rollouts/{created['id']}")
    assert fetched.status_code == 200
    assert created.pop("warnings") == []
    assert fetched.json() == created
    assert_error(await api.get("/api/v1/rollouts/abc123"), 404, "rollout_not_found")
    assert_error(await api.get("/api/v1/rollouts/%00%27;drop"), 404, "rollout_not_found")
    assert_error(await api.get("/api/v1/rollouts/" + "a" * 500), 404, "rollout_not_found")


async def test_last_verdict_is_shown_with_both_arms(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    created = (await submit_yaml(api)).json()
    record = harness.store.get(created["id"])
    verdict = {
        "outcome": "inconclusive",
        "reason": "too few requests",
        "judge": "sequential",
        "look": 3,
        "candidate_requests": 120.0,
        "baseline_requests": 2280.0,
        "checks": [
            {"check": "error_rate vs baseline", "metric": "error_rate",
             "outcome": "inconclusive", "candidate_value": 0.01, "baseline_value": "+Inf",
             "candidate_n": 120.0, "baseline_n": 2280.0, "limit": "ratio <= 2",
             "statistic": {"fail": 0.1}},
        ],
        "missing": [],
        "extra_key": {"kept": True},
    }
    harness.store.commit(
        record.id, record.version, phase="progressing",
        state={**record.state, "phase": "progressing", "step": 1, "candidate_weight": 25,
               "baseline": "ads-3", "last_verdict": verdict},
        due_at=None, updated_at=record.updated_at + 60, events=[], alerts=[],
        consumed_commands=[],
    )
    body = (await api.get(f"/api/v1/rollouts/{record.id}")).json()
    assert body["phase"] == "progressing"
    assert (body["step"], body["candidate_weight"], body["baseline"]) == (1, 25, "ads-3")
    check = body["last_verdict"]["checks"][0]
    assert (check["candidate_value"], check["baseline_value"]) == (0.01, "+Inf")
    assert (check["candidate_n"], check["baseline_n"]) == (120.0, 2280.0)
    assert check["statistic"] == {"fail": 0.1}
    assert body["last_verdict"]["extra_key"] == {"kept": True}
    assert datetime.fromisoformat(body["updated_at"]).timestamp() == record.updated_at + 60


async def test_steps_an_operator_skipped_are_listed_as_skipped(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    created = (await submit_yaml(api)).json()
    assert created["skipped_steps"] == []
    record = harness.store.get(created["id"])
    harness.store.commit(
        record.id, record.version, phase="promoting",
        state={**record.state, "phase": "promoting", "step": 1, "baseline": "ads-3",
               "skipped_steps": [1, 2]},
        due_at=None, updated_at=record.updated_at + 60, events=[], alerts=[],
        consumed_commands=[],
    )
    body = (await api.get(f"/api/v1/rollouts/{record.id}")).json()
    assert (body["phase"], body["skipped_steps"]) == ("promoting", [1, 2])


async def test_events_in_order_with_iso_times_and_after(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    created = (await submit_yaml(api)).json()
    record = harness.store.get(created["id"])
    from rollout.store.model import NewEvent  # noqa: PLC0415 -- only this test writes events

    harness.store.commit(
        record.id, record.version, phase="preparing",
        state={**record.state, "phase": "preparing"}, due_at=None,
        updated_at=record.updated_at + 5,
        events=[NewEvent("phase", "pending", "preparing", "deploying the candidate at 0 %",
                         {"split": {"ads-3": 100}}, record.updated_at + 5)],
        alerts=[], consumed_commands=[],
    )
    events = (await api.get(f"/api/v1/rollouts/{record.id}/events")).json()["events"]
    assert [e["seq"] for e in events] == [1, 2]
    assert events[0]["kind"] == "submitted"
    assert (events[1]["from_phase"], events[1]["to_phase"]) == ("pending", "preparing")
    assert events[1]["data"] == {"split": {"ads-3": 100}}
    assert set(events[1]) == {"seq", "at", "kind", "from_phase", "to_phase", "reason", "data"}
    at = datetime.fromisoformat(events[1]["at"])
    assert at.utcoffset() is not None
    assert at.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert at.timestamp() == record.updated_at + 5
    later = (await api.get(f"/api/v1/rollouts/{record.id}/events", params={"after": 1})).json()
    assert [e["seq"] for e in later["events"]] == [2]
    assert_error(await api.get("/api/v1/rollouts/nope/events"), 404, "rollout_not_found")
    assert_error(await api.get(f"/api/v1/rollouts/{record.id}/events", params={"after": -1}),
                 422, "invalid_request")


# ---- commands --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("phase", "action", "body", "kind", "payload"),
    [
        ("progressing", "pause", None, "pause", {}),
        ("progressing", "pause", {"reason": "looking at a dashboard"}, "pause",
         {"reason": "looking at a dashboard"}),
        ("pending", "pause", None, "pause", {}),
        ("paused", "resume", None, "resume", {}),
        ("paused", "resume", {}, "resume", {}),
        ("progressing", "promote", None, "promote", {}),
        ("paused", "promote", {"full": False}, "promote", {}),
        ("progressing", "promote", {"full": True}, "promote_full", {}),
        ("pending", "abort", {"reason": "wrong model"}, "abort", {"reason": "wrong model"}),
        ("promoting", "abort", None, "abort", {}),
    ],
)
async def test_commands_are_queued_for_the_engine(
    api: httpx.AsyncClient, harness: Harness, *, phase: str, action: str,
    body: dict[str, Any] | None, kind: str, payload: dict[str, Any]
) -> None:
    created = (await submit_yaml(api)).json()
    finish(harness.store, created["id"], phase)
    harness.woken.clear()
    # Without a body, the header the CLI sends says it is no page on another origin.
    headers = {"X-Rollout-Client": "test"} if body is None else {}
    response = await api.post(f"/api/v1/rollouts/{created['id']}/{action}", json=body,
                              headers=headers)
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["command"]["kind"] == kind
    assert answer["rollout"]["id"] == created["id"]
    pending = harness.store.pending_commands(created["id"])
    assert [(c.id, c.kind, c.payload) for c in pending] == [
        (answer["command"]["id"], kind, payload)
    ]
    assert harness.woken == [created["id"]]


async def test_commands_on_finished_or_unknown_rollouts(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    created = (await submit_yaml(api)).json()
    finish(harness.store, created["id"], "aborted")
    for action in ("pause", "resume", "promote", "abort"):
        error = assert_error(
            await api.post(f"/api/v1/rollouts/{created['id']}/{action}", json={}), 409,
            "rollout_finished")
        assert "aborted" in error["message"]
        assert_error(await api.post(f"/api/v1/rollouts/unknown/{action}", json={}), 404,
                     "rollout_not_found")
    assert harness.store.pending_commands(created["id"]) == []


@pytest.mark.parametrize(
    ("phase", "action", "body", "allowed"),
    [
        ("progressing", "resume", None, ["pause", "promote", "abort"]),
        ("paused", "pause", None, ["resume", "promote", "abort"]),
        ("promoting", "promote", {"full": True}, ["abort"]),
        ("rolling_back", "abort", None, []),
    ],
)
async def test_a_command_the_phase_does_not_take_is_refused(
    api: httpx.AsyncClient, harness: Harness, *, phase: str, action: str,
    body: dict[str, Any] | None, allowed: list[str]
) -> None:
    created = (await submit_yaml(api)).json()
    finish(harness.store, created["id"], phase)
    response = await api.post(f"/api/v1/rollouts/{created['id']}/{action}", json=body,
                              headers=CLI)
    error = assert_error(response, 409, "command_not_allowed")
    assert error["phase"] == phase
    assert error["allowed_commands"] == allowed
    assert f"is {phase}: {action}" in error["message"]
    assert harness.store.pending_commands(created["id"]) == []


async def test_a_command_already_queued_is_refused(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    created = (await submit_yaml(api)).json()
    finish(harness.store, created["id"], "progressing")
    first = await api.post(f"/api/v1/rollouts/{created['id']}/pause", headers=CLI)
    assert first.status_code == 202, first.text
    again = await api.post(f"/api/v1/rollouts/{created['id']}/pause", headers=CLI)
    error = assert_error(again, 409, "command_queued")
    assert f"command {first.json()['command']['id']}" in error["message"]
    assert [c.kind for c in harness.store.pending_commands(created["id"])] == ["pause"]
    # Another command is still taken.
    abort = await api.post(f"/api/v1/rollouts/{created['id']}/abort", headers=CLI)
    assert abort.status_code == 202


def _stored(harness: Harness, rollout_id: str, name: str, phase: str, endpoint: str = ENDPOINT
            ) -> None:
    plan = validate_plan({**yaml.safe_load(CANARY_YAML), "name": name, "endpoint": endpoint})
    record, event = new_rollout(plan, resolve_policy(plan, PolicyLibrary()), 1.0e9, rollout_id)
    harness.store.create(record, event, [])
    finish(harness.store, rollout_id, phase)


async def test_rollouts_are_named_by_id_prefix_or_endpoint_and_name(
    api: httpx.AsyncClient, harness: Harness
) -> None:
    _stored(harness, "abc111111111", "v1", "rolled_back")
    _stored(harness, "abc222222222", "v1", "succeeded")
    _stored(harness, "abd333333333", "v2", "progressing")
    for ref, expected in [
        ("abc1", "abc111111111"),
        ("abd", "abd333333333"),
        ("abc222222222", "abc222222222"),
        (f"{ENDPOINT}/v2", "abd333333333"),
    ]:
        response = await api.get(f"/api/v1/rollouts/{ref}")
        assert response.status_code == 200, (ref, response.text)
        assert response.json()["id"] == expected
    events = await api.get(f"/api/v1/rollouts/{ENDPOINT}/v2/events")
    assert events.status_code == 200, events.text
    assert events.json()["events"]
    assert (await api.get(f"/api/v1/rollouts/{ENDPOINT}/v2/series")).status_code == 200
    paused = await api.post(f"/api/v1/rollouts/{ENDPOINT}%2Fv2/pause", headers=CLI)
    assert paused.status_code == 202, paused.text
    assert paused.json()["rollout"]["id"] == "abd333333333"

    error = assert_error(await api.get("/api/v1/rollouts/abc"), 409, "ambiguous_rollout")
    assert sorted(error["candidates"]) == ["abc111111111", "abc222222222"]
    assert "abc111111111 (ads, rolled_back)" in error["message"]
    # Two finished rollouts share the name and none is active: which one is meant is unclear.
    error = assert_error(await api.get(f"/api/v1/rollouts/{ENDPOINT}/v1"), 409,
                         "ambiguous_rollout")
    assert sorted(error["candidates"]) == ["abc111111111", "abc222222222"]
    assert_error(await api.post("/api/v1/rollouts/ab/abort", headers=CLI), 409, "ambiguous_rollout")
    assert_error(await api.get("/api/v1/rollouts/fff"), 404, "rollout_not_found")
    assert_error(await api.get(f"/api/v1/rollouts/{ENDPOINT}/v3"), 404, "rollout_not_found")
    assert_error(await api.get("/api/v1/rollouts/other/v2"), 404, "rollout_not_found")
    assert harness.store.pending_commands("abc111111111") == []


@pytest.mark.parametrize(
    ("action", "content", "content_type", "status", "code"),
    [
        ("pause", b"{not json", "application/json", 422, "invalid_request"),
        ("pause", b"[]", "application/json", 422, "invalid_request"),
        ("pause", b'{"reason": "a\\u0000b"}', "application/json", 422, "invalid_request"),
        ("abort", b'{"reason": NaN}', "application/json", 422, "invalid_request"),
        ("pause", b'{"reason": 5}', "application/json", 422, "invalid_request"),
        ("pause", b'{"why": "x"}', "application/json", 422, "invalid_request"),
        ("promote", b'{"full": "very"}', "application/json", 422, "invalid_request"),
        ("resume", b'{"reason": "x"}', "application/json", 422, "invalid_request"),
        ("abort", b"reason: x", "application/yaml", 415, "unsupported_media_type"),
    ],
)
async def test_bad_command_bodies_are_4xx(
    api: httpx.AsyncClient, harness: Harness, *, action: str, content: bytes,
    content_type: str, status: int, code: str
) -> None:
    created = (await submit_yaml(api)).json()
    response = await api.post(f"/api/v1/rollouts/{created['id']}/{action}", content=content,
                              headers={"Content-Type": content_type})
    assert_error(response, status, code)
    assert harness.store.pending_commands(created["id"]) == []


# ---- monitoring ------------------------------------------------------------------------------


async def test_health_readiness_and_metrics(harness: Harness) -> None:
    problems: dict[str, str] = {}

    async def ready() -> dict[str, str]:
        return dict(problems)

    Counter("rollout_test_things", "Things counted by the test.", registry=harness.registry).inc(3)
    async with asgi(harness.app(tokens=TOKENS, ready=ready)) as api:
        assert (await api.get("/healthz")).json() == {"status": "ok"}
        readyz = await api.get("/readyz")
        assert (readyz.status_code, readyz.json()) == (200, {"status": "ready", "problems": {}})
        problems["scheduler"] = "not started"
        readyz = await api.get("/readyz")
        assert readyz.status_code == 503
        assert readyz.json() == {"status": "not ready", "problems": {"scheduler": "not started"}}
        metrics = await api.get("/metrics")
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain; version=")
        assert "rollout_test_things_total 3.0" in metrics.text
        openmetrics = await api.get("/metrics", headers={
            "Accept": "application/openmetrics-text; version=1.0.0"})
        assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
        assert openmetrics.text.endswith("# EOF\n")


async def test_readiness_reports_a_failing_check_and_a_closed_store(
    harness: Harness, tmp_path: Any
) -> None:
    from rollout.store.factory import open_store  # noqa: PLC0415 -- a store of its own to close

    async def broken() -> dict[str, str]:
        raise RuntimeError("scheduler crashed")

    store = open_store(f"sqlite:///{tmp_path / 'closed.db'}")
    store.migrate()
    store.close()
    async with asgi(harness.app(store=store, ready=broken)) as api:
        response = await api.get("/readyz")
    assert response.status_code == 503
    problems = response.json()["problems"]
    assert "scheduler crashed" in problems["readiness"]
    assert "store" in problems


# ---- auth ------------------------------------------------------------------------------------


async def test_roles(harness: Harness, sandbox_admin: httpx.Client) -> None:
    make_endpoint(sandbox_admin)
    app = harness.app(tokens=TOKENS)
    async with asgi(app) as anonymous, asgi(app, VIEWER) as viewer, \
            asgi(app, OPERATOR) as operator, asgi(app, "guessed-token") as stranger:
        for client in (anonymous, stranger):
            response = await client.get("/api/v1/rollouts")
            assert_error(response, 401, "unauthenticated")
            assert response.headers["WWW-Authenticate"] == "Bearer"
            assert_error(await submit_yaml(client), 401, "unauthenticated")
        basic = await anonymous.get("/api/v1/rollouts", headers={"Authorization": "Basic eDp5"})
        assert_error(basic, 401, "unauthenticated")

        error = assert_error(await submit_yaml(viewer), 403, "forbidden")
        assert error["message"] == "operator role required"
        created = await submit_yaml(operator)
        assert created.status_code == 201
        rollout_id = created.json()["id"]
        assert (await viewer.get("/api/v1/rollouts")).status_code == 200
        assert (await viewer.get(f"/api/v1/rollouts/{rollout_id}")).status_code == 200
        assert (await viewer.get(f"/api/v1/rollouts/{rollout_id}/events")).status_code == 200
        for action in ("pause", "resume", "promote", "abort"):
            assert_error(await viewer.post(f"/api/v1/rollouts/{rollout_id}/{action}"), 403,
                         "forbidden")
        paused = await operator.post(f"/api/v1/rollouts/{rollout_id}/pause", json={})
        assert paused.status_code == 202
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert (await anonymous.get(path)).status_code == 200, path
    assert len(harness.store.pending_commands(rollout_id)) == 1


async def test_session_says_the_role_of_the_presented_token(harness: Harness) -> None:
    app = harness.app(tokens=TOKENS)
    async with asgi(app) as anonymous, asgi(app, VIEWER) as viewer, \
            asgi(app, OPERATOR) as operator, asgi(app, "guessed-token") as stranger:
        for client, role in ((operator, "operator"), (viewer, "viewer")):
            response = await client.get("/api/v1/session")
            assert response.status_code == 200, response.text
            assert response.json() == {"role": role, "auth": True}
        for client in (anonymous, stranger):
            response = await client.get("/api/v1/session")
            assert_error(response, 401, "unauthenticated")
            assert response.headers["WWW-Authenticate"] == "Bearer"
        basic = await anonymous.get("/api/v1/session", headers={"Authorization": "Basic eDp5"})
        assert_error(basic, 401, "unauthenticated")
        # Near misses: the configuration item rather than the token, another case, a prefix.
        for wrong in (f"{OPERATOR}:operator", OPERATOR.upper(), VIEWER[:-1]):
            response = await anonymous.get(
                "/api/v1/session", headers={"Authorization": f"Bearer {wrong}"})
            assert_error(response, 401, "unauthenticated")


async def test_session_of_an_open_api_is_an_operator_without_auth(harness: Harness) -> None:
    app = harness.app()
    async with asgi(app) as anonymous, asgi(app, "any-token-at-all") as bearer:
        for client in (anonymous, bearer):
            response = await client.get("/api/v1/session")
            assert response.status_code == 200, response.text
            assert response.json() == {"role": "operator", "auth": False}


def test_token_specs() -> None:
    table = parse_tokens(SecretStr(" a:operator , b:viewer,c:d:viewer,"))
    assert len(table) == 3
    assert table.role_of("a") == "operator"
    assert table.role_of("b") == "viewer"
    assert table.role_of("c:d") == "viewer"
    assert table.role_of("a:operator") is None
    assert table.role_of("") is None
    assert "a" not in repr(table).replace("TokenTable", "").replace("operator", "")
    assert not parse_tokens(None)
    assert not parse_tokens("")


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("s3cret-one", "item 1: expected 'token:role'"),
        ("ok:viewer,s3cret-two:admin", "item 2: role 'admin'"),
        (":operator", "item 1: the token before ':operator' is empty"),
        ("s3cret-x:viewer,s3cret-x:operator", "item 2: repeats the token of item 1"),
    ],
)
def test_bad_token_specs_name_the_item_not_the_token(spec: str, words: str) -> None:
    with pytest.raises(ValueError, match="API tokens") as caught:
        parse_tokens(SecretStr(spec))
    assert words in str(caught.value)
    assert "s3cret" not in str(caught.value)


async def test_create_api_refuses_a_bad_token_spec(harness: Harness) -> None:
    with pytest.raises(ValueError, match="item 1") as caught:
        harness.app(tokens="s3cret-only")
    assert "s3cret" not in str(caught.value)


def test_check_bind() -> None:
    for host in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"):
        check_bind(host, None)
    check_bind("0.0.0.0", SecretStr("t:operator"))  # noqa: S104 -- with tokens it may listen
    check_bind("10.1.2.3", parse_tokens("t:viewer"))
    for host in ("0.0.0.0", "::", "192.168.1.5", "example.com", ""):  # noqa: S104
        with pytest.raises(ConfigurationProblem, match="ROLLOUT_API_TOKENS"):
            check_bind(host, None)
        with pytest.raises(ConfigurationProblem):
            check_bind(host, SecretStr(" , "))


# ---- robustness ------------------------------------------------------------------------------


async def test_bodies_over_the_limit_are_413_declared_or_streamed(
    harness: Harness, sandbox_admin: httpx.Client
) -> None:
    make_endpoint(sandbox_admin)
    small = harness.app(max_body_bytes=len(CANARY_YAML))
    async with asgi(small) as api:
        assert (await submit_yaml(api)).status_code == 201
        error = assert_error(await submit_yaml(api, CANARY_YAML + "#" * 10), 413,
                             "body_too_large")
        assert str(len(CANARY_YAML)) in error["message"]

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(100):
                yield b"# padding line in a YAML comment\n"

        streamed = await api.post("/api/v1/rollouts", content=chunks(),
                                  headers={"Content-Type": "application/yaml"})
        assert "content-length" not in streamed.request.headers
        assert_error(streamed, 413, "body_too_large")
        created = harness.store.list()[0]
        big_reason = json.dumps({"reason": "x" * 2000}).encode()
        assert_error(await api.post(f"/api/v1/rollouts/{created.id}/pause", content=big_reason,
                                    headers={"Content-Type": "application/json"}),
                     413, "body_too_large")
    assert len(harness.store.list()) == 1


async def test_unknown_routes_and_wrong_methods_answer_json(api: httpx.AsyncClient) -> None:
    assert_error(await api.get("/api/v1/nothing-here"), 404, "not_found")
    assert_error(await api.get("/static/nothing.js"), 404, "not_found")
    assert_error(await api.get("/index.html"), 404, "not_found")
    response = await api.delete("/api/v1/rollouts")
    error = assert_error(response, 405, "method_not_allowed")
    assert response.headers["Allow"] == "GET, POST"
    assert "GET, POST" in error["message"]
    assert_error(await api.get("/api/v1/rollouts/x/pause"), 405, "method_not_allowed")
    assert_error(await api.put("/healthz"), 405, "method_not_allowed")


class BrokenStore:
    """A store whose reads fail in a way nothing expects (a bug, not bad input)."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner

    def get(self, _rollout_id: str) -> RolloutRecord:
        raise RuntimeError("secret internal detail")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


async def test_an_unexpected_failure_is_a_500_without_details(
    harness: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    app = harness.app(store=BrokenStore(harness.store), tokens=TOKENS)  # type: ignore[arg-type]
    async with asgi(app, OPERATOR) as api:
        response = await api.get("/api/v1/rollouts/abc")
        assert_error(response, 500, "internal")
        assert "secret internal detail" not in response.text
        # The app keeps serving.
        assert (await api.get("/healthz")).status_code == 200
    logged = capsys.readouterr()
    assert "api.unhandled_error" in logged.out + logged.err
    assert "secret internal detail" in logged.out + logged.err  # the log has the details
    assert OPERATOR not in logged.out + logged.err


# ---- OpenAPI ---------------------------------------------------------------------------------


async def test_the_openapi_document_is_valid_and_describes_the_api(harness: Harness) -> None:
    async with asgi(harness.app(tokens=TOKENS)) as api:
        response = await api.get("/openapi.json")
    assert response.status_code == 200
    document = response.json()
    validate_openapi(document)  # raises on an invalid OpenAPI 3.1 document
    paths = document["paths"]
    assert set(paths) >= {
        "/api/v1/rollouts", "/api/v1/rollouts/{rollout_id}", "/api/v1/rollouts/{rollout_id}/events",
        "/api/v1/rollouts/{rollout_id}/pause", "/api/v1/rollouts/{rollout_id}/resume",
        "/api/v1/rollouts/{rollout_id}/promote", "/api/v1/rollouts/{rollout_id}/abort",
        "/api/v1/session", "/healthz", "/readyz", "/metrics",
    }
    submit = paths["/api/v1/rollouts"]["post"]
    assert set(submit["requestBody"]["content"]) == {
        "application/json", "application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"
    }
    assert {"201", "409", "422", "404", "401", "403", "413", "415"} <= set(submit["responses"])
    schemas = document["components"]["schemas"]
    created = submit["responses"]["201"]["content"]["application/json"]["schema"]
    assert created == {"$ref": "#/components/schemas/SubmittedRollout"}
    warnings = schemas["SubmittedRollout"]["properties"]["warnings"]
    assert warnings["type"] == "array"
    assert "min_requests" in warnings["description"]
    rollout = schemas["Rollout"]["properties"]
    assert set(rollout) >= {"id", "name", "endpoint", "strategy", "candidate", "baseline",
                            "policy", "phase", "step", "steps", "candidate_weight",
                            "skipped_steps", "last_verdict", "pause_reason", "ending_reason",
                            "report", "created_at", "updated_at", "started_at", "plan"}
    assert rollout["created_at"]["format"] == "date-time"
    assert set(schemas["Plan"]["discriminator"]["mapping"]) == {"canary", "ab", "blue_green"}
    bake = schemas["CanaryStep"]["properties"]["bake"]
    assert {"number", "string"} == {option["type"] for option in bake["anyOf"]}
    assert any(s.get("scheme") == "bearer"
               for s in document["components"]["securitySchemes"].values())
    assert "security" in paths["/api/v1/rollouts"]["get"]
    assert "security" not in paths["/healthz"]["get"]
    session = paths["/api/v1/session"]["get"]
    assert session["summary"]
    assert "security" in session
    assert session["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Session"}
    assert session["responses"]["401"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorResponse"}
    assert schemas["Session"]["required"] == ["role", "auth"]
    assert schemas["Session"]["properties"]["role"]["enum"] == ["viewer", "operator"]
    assert schemas["Session"]["properties"]["auth"]["type"] == "boolean"


async def test_an_open_api_declares_no_security(harness: Harness) -> None:
    async with asgi(harness.app()) as api:
        document = (await api.get("/openapi.json")).json()
    validate_openapi(document)
    assert "security" not in document["paths"]["/api/v1/rollouts"]["post"]
    assert "security" not in document["paths"]["/api/v1/session"]["get"]


# ---- never a 500 for bad input ---------------------------------------------------------------

_JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=20,
)


@pytest.fixture
def fuzz_target(harness: Harness, sandbox_admin: httpx.Client) -> Callable[[], FastAPI]:
    make_endpoint(sandbox_admin)
    app = harness.app(max_body_bytes=4096)
    return lambda: app


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    path=st.sampled_from(["/api/v1/rollouts", "/api/v1/rollouts/abc/pause",
                          "/api/v1/rollouts/abc/promote", "/api/v1/rollouts/abc/abort"]),
    content_type=st.sampled_from(["application/json", "application/yaml", "text/plain", ""]),
    body=st.one_of(
        _JSONISH.map(lambda value: json.dumps(value).encode()),
        _JSONISH.map(lambda value: yaml.safe_dump(value).encode()),
        st.binary(max_size=200),
        st.fixed_dictionaries({"endpoint": st.text(max_size=10), "strategy": st.text(max_size=12),
                               "candidate": _JSONISH, "steps": _JSONISH, "policy": _JSONISH},
                              ).map(lambda value: json.dumps(value).encode()),
    ),
)
async def test_random_input_never_makes_a_500(
    fuzz_target: Callable[[], FastAPI], path: str, content_type: str, body: bytes
) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    async with asgi(fuzz_target()) as api:
        response = await api.post(path, content=body, headers=headers)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert set(response.json()["error"]) >= {"code", "message"}


def test_new_rollout_ids_fit_the_api_pattern() -> None:
    plan = validate_plan(plan_dict())
    record, _ = new_rollout(plan, resolve_policy(plan), 0.0)
    assert 1 <= len(record.id) <= 64
    assert record.id.isalnum()
