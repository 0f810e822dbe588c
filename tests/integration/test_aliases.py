"""Rollouts from Unity Catalog aliases, over real HTTP: the serving client's registered-model
calls against the sandbox, alias plans through the API, the alias watcher, and the
``on_success.set_alias`` move after a promotion (and its absence after a rollback).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from rollout.api import create_api
from rollout.cli import app as cli_app
from rollout.clock import Clock, FakeClock
from rollout.daemon import build, run
from rollout.engine.aliases import AliasMover, AliasWatch, AliasWatcher
from rollout.engine.decide import Timing
from rollout.engine.model import Phase
from rollout.engine.runner import Runner
from rollout.errors import ConfigurationProblem
from rollout.policies import PolicyLibrary
from rollout.sandbox.server import SandboxServer
from rollout.serving.auth import PatAuth
from rollout.serving.client import ServingClient
from rollout.serving.errors import InvalidRequest, NotFound, PermissionDenied
from rollout.serving.retry import RetryPolicy
from rollout.settings import AliasSettings, ApiSettings, Settings
from rollout.store import open_store
from rollout.store.base import Store
from rollout.store.model import RolloutRecord

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


# ---- plans naming an alias, through the API -------------------------------------------------

ENDPOINT = "ads"
BASELINE = "ads-3"
HEALTHY = {"error_rate": 0.002, "latency_p50_ms": 40, "latency_p99_ms": 120}
BROKEN = {**HEALTHY, "error_rate": 0.08}
TIMING = Timing(look_interval=30, update_poll=5, update_deadline=600)
TEMPLATE = {
    "endpoint": ENDPOINT,
    "candidate": {"entity_name": MODEL, "workload_size": "Small"},
    "strategy": "canary",
    "steps": [{"weight": 10, "bake": "5m"}, {"weight": 50, "bake": "5m"}],
    "on_success": {"set_alias": "champion"},
    "alerts": [{"type": "webhook", "url": "http://127.0.0.1:9/hook"}],
}


def make_endpoint(admin: httpx.Client, profiles: dict[str, dict[str, Any]]) -> None:
    response = admin.post(
        "/endpoints",
        json={
            "name": ENDPOINT,
            "served_entities": [
                {
                    "name": BASELINE,
                    "entity_name": MODEL,
                    "entity_version": "3",
                    "workload_size": "Small",
                    "scale_to_zero_enabled": False,
                }
            ],
            "profiles": {BASELINE: HEALTHY, **profiles},
            "qps": 1000,
        },
    )
    assert response.status_code == 201, response.text


def registry_at_three(admin: httpx.Client) -> None:
    """Versions 1-3 of the model; @champion and @challenger both on 3, which ads serves."""
    register(admin)
    register(admin)
    register(admin, "champion", "challenger")


def api_app(sandbox: SandboxServer, store: Store, client: ServingClient) -> FastAPI:
    return create_api(
        store=store,
        client=client,
        clock=sandbox.clock,
        library=PolicyLibrary(),
        registry=CollectorRegistry(),
        settings=ApiSettings(),
    )


async def test_api_resolves_the_alias_at_submission(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, client: ServingClient
) -> None:
    make_endpoint(sandbox_admin, {})
    registry_at_three(sandbox_admin)
    seven = [register(sandbox_admin) for _ in range(4)][-1]
    move(sandbox_admin, "challenger", seven)
    move(sandbox_admin, "champion", 6)
    plan = json.loads(json.dumps(TEMPLATE))
    plan["candidate"]["alias"] = "challenger"
    plan.pop("alerts")
    transport = httpx.ASGITransport(api_app(sandbox, store, client))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as api:
        response = await api.post("/api/v1/rollouts", json=plan)
        assert response.status_code == 201, response.text
        rollout = response.json()
        assert rollout["candidate"] == "ads_model-7"
        assert rollout["candidate_source"] == "main.ml.ads_model@challenger = version 7"
        stored = store.get(rollout["id"]).plan
        assert stored["candidate"]["entity_version"] == "7"
        assert stored["candidate"]["alias"] == "challenger"
        assert stored["on_success"] == {"set_alias": "champion", "previous_version": "6"}
        (submitted,) = store.events(rollout["id"])
        assert "candidate main.ml.ads_model@challenger = version 7" in submitted.reason
        assert submitted.data["candidate_version"] == "7"
        # Moving the alias later changes nothing in the stored rollout.
        move(sandbox_admin, "challenger", 5)
        again = await api.get(f"/api/v1/rollouts/{rollout['id']}")
        assert again.json()["candidate_source"] == "main.ml.ads_model@challenger = version 7"
        finish(store, rollout["id"], "aborted")

        plan["candidate"]["alias"] = "nightly"
        response = await api.post("/api/v1/rollouts", json=plan)
        assert response.status_code == 422, response.text
        error = response.json()["error"]
        assert error["code"] == "unknown_alias"
        assert error["details"] == [
            {
                "field": "candidate.alias",
                "message": "main.ml.ads_model has no alias @nightly (its aliases: "
                "@challenger = version 5, @champion = version 6)",
            }
        ]
        plan["candidate"].update(entity_name="main.ml.nothing", alias="challenger")
        response = await api.post("/api/v1/rollouts", json=plan)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["details"] == [
            {
                "field": "candidate.entity_name",
                "message": "registered model 'main.ml.nothing' does not exist",
            }
        ]
        plan["candidate"].update(entity_name=MODEL, entity_version="7")
        response = await api.post("/api/v1/rollouts", json=plan)
        assert response.status_code == 422, response.text
        assert response.json()["error"]["details"][0]["field"] == "candidate.alias"
    assert [r.id for r in store.list(ENDPOINT, None, 10)] == [rollout["id"]]


def finish(store: Store, rollout_id: str, phase: str) -> None:
    record = store.get(rollout_id)
    store.commit(
        rollout_id, record.version, phase=phase, state={**record.state, "phase": phase},
        due_at=None, updated_at=record.updated_at + 1, events=[], alerts=[],
        consumed_commands=[],
    )


# ---- the watcher, the mover ----------------------------------------------------------------


@pytest.fixture
def template(tmp_path: Path) -> Path:
    path = tmp_path / "canary.yaml"
    path.write_text(yaml.safe_dump(TEMPLATE), encoding="utf-8")
    return path


def watcher(store: Store, client: ServingClient, clock: Clock, template: Path) -> AliasWatcher:
    library = PolicyLibrary()
    watch = AliasWatch.load(f"{MODEL}@challenger", ENDPOINT, template, library)
    return AliasWatcher(store, client, clock, [watch], library=library, poll_interval=60)


async def drive(runner: Runner, store: Store, clock: FakeClock, rollout_id: str) -> Phase:
    start = clock.now()
    while clock.now() - start < 4 * 3600:
        result = await runner.reconcile(rollout_id)
        if result.phase.terminal:
            return result.phase
        due = store.get(rollout_id).due_at
        assert due is not None
        clock.advance(max(0.0, due - clock.now()))
    return Phase(store.get(rollout_id).phase)


async def alias_move_doc(
    sandbox: SandboxServer, store: Store, client: ServingClient, rollout_id: str
) -> dict[str, Any]:
    """The rollout's ``alias_move``, as ``GET /api/v1/rollouts/{id}`` shows it."""
    transport = httpx.ASGITransport(api_app(sandbox, store, client))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as api:
        response = await api.get(f"/api/v1/rollouts/{rollout_id}")
    assert response.status_code == 200, response.text
    assert response.json()["on_success"] == "champion"
    document: dict[str, Any] = response.json()["alias_move"]
    return document


def rollouts(store: Store) -> list[RolloutRecord]:
    return store.list(ENDPOINT, None, 100)


def alert_summaries(store: Store, clock: Clock, event: str) -> list[str]:
    alerts = store.claim_alerts(now=clock.now() + 1, limit=100, lease_seconds=60)
    return [a.payload["summary"] for a in alerts if a.payload["event"] == event]


async def test_an_alias_move_starts_one_rollout_and_success_moves_champion(
    *,
    sandbox: SandboxServer,
    sandbox_admin: httpx.Client,
    store: Store,
    client: ServingClient,
    template: Path,
    tmp_path: Path,
) -> None:
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    make_endpoint(sandbox_admin, {"ads_model-4": HEALTHY})
    registry_at_three(sandbox_admin)
    first = watcher(store, client, clock, template)
    # The endpoint serves what the alias names: nothing to do, and that is remembered.
    assert await first.check_all() == {f"{MODEL}@challenger -> {ENDPOINT}": "serving"}
    assert rollouts(store) == []

    register(sandbox_admin, "challenger")  # version 4
    # A second controller on the same database, watching the same alias at the same time.
    other_store = open_store(f"sqlite:///{tmp_path / 'rollout.db'}")
    try:
        second = watcher(other_store, client, clock, template)
        outcomes = await asyncio.gather(first.check_all(), second.check_all())
        seen = [o for result in outcomes for o in result.values()]
        assert seen.count("started") == 1, seen
        assert set(seen) - {"started"} <= {"taken", "in_flight", "seen"}, seen
        (record,) = rollouts(store)
        # Another pass, and a restarted watcher, find the version taken up.
        assert set((await first.check_all()).values()) == {"seen"}
        restarted = watcher(other_store, client, clock, template)
        assert set((await restarted.check_all()).values()) == {"seen"}
    finally:
        other_store.close()
    assert len(rollouts(store)) == 1
    assert record.plan["candidate"]["entity_version"] == "4"
    assert record.plan["on_success"]["previous_version"] == "3"
    (submitted,) = store.events(record.id)
    assert "alias watch main.ml.ads_model@challenger -> ads" in submitted.reason

    runner = Runner(store, client, clock=clock, timing=TIMING)
    mover = AliasMover(store, client, clock)
    assert await mover.move_once() == [], "nothing moves before the promotion"
    assert await drive(runner, store, clock, record.id) is Phase.SUCCEEDED
    assert aliases_of(sandbox_admin)["champion"] == 3, "moved after the commit, by the mover"
    assert (await alias_move_doc(sandbox, store, client, record.id))["status"] == "waiting"
    # The workspace refuses the move for a while: retried later, never dropped.
    fault = sandbox_admin.post("/faults", json={
        "path_pattern": "unity-catalog", "methods": ["PUT"], "status": 503, "count": 1000,
    })
    assert fault.status_code == 201, fault.text
    try:
        assert await mover.move_once() == []
    finally:
        sandbox_admin.delete("/faults")
    retrying = await alias_move_doc(sandbox, store, client, record.id)
    assert retrying["status"] == "retrying"
    assert "503" in retrying["last_error"]
    assert aliases_of(sandbox_admin)["champion"] == 3
    assert await mover.move_once() == [], "not before its backoff"
    clock.advance(AliasSettings().move_max_backoff)
    assert await mover.move_once() == [record.id]
    assert aliases_of(sandbox_admin) == {"challenger": 4, "champion": 4}
    assert await mover.move_once() == [], "done once"
    document = await alias_move_doc(sandbox, store, client, record.id)
    assert document["alias"] == "main.ml.ads_model@champion"
    assert (document["version"], document["previous_version"]) == ("4", "3")
    assert (document["status"], document["attempts"], document["last_error"]) == ("done", 2, None)
    (summary,) = alert_summaries(store, clock, "succeeded")
    assert summary.endswith("; main.ml.ads_model@champion moves to version 4")
    # Promoted: the endpoint serves version 4 now; the watch has nothing more to do.
    assert set((await first.check_all()).values()) == {"seen"}


async def test_a_rolled_back_alias_move_leaves_the_aliases_alone(
    sandbox: SandboxServer,
    sandbox_admin: httpx.Client,
    store: Store,
    client: ServingClient,
    template: Path,
) -> None:
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    make_endpoint(sandbox_admin, {"ads_model-4": BROKEN})
    registry_at_three(sandbox_admin)
    register(sandbox_admin, "challenger")  # version 4, broken
    watching = watcher(store, client, clock, template)
    assert set((await watching.check_all()).values()) == {"started"}
    (record,) = rollouts(store)
    runner = Runner(store, client, clock=clock, timing=TIMING)
    assert await drive(runner, store, clock, record.id) is Phase.ROLLED_BACK
    mover = AliasMover(store, client, clock)
    clock.advance(3600)
    assert await mover.move_once() == []
    assert aliases_of(sandbox_admin) == {"challenger": 4, "champion": 3}
    document = await alias_move_doc(sandbox, store, client, record.id)
    assert (document["status"], document["attempts"]) == ("not_made", 0)
    (summary,) = alert_summaries(store, clock, "rolled_back")
    assert "aliases left unchanged: @champion stays at version 3" in summary
    # The alias still names version 4, which was rolled back: it is not tried again.
    assert set((await watching.check_all()).values()) == {"seen"}
    assert len(rollouts(store)) == 1


# ---- the command and the watch's checks -----------------------------------------------------


def test_watch_alias_command_starts_the_rollout_once(
    sandbox: SandboxServer,
    sandbox_admin: httpx.Client,
    template: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_endpoint(sandbox_admin, {})
    registry_at_three(sandbox_admin)
    register(sandbox_admin, "challenger")
    database = tmp_path / "watch.db"
    for name, value in {
        "DATABRICKS_HOST": sandbox.url,
        "DATABRICKS_TOKEN": sandbox.token,
        "ROLLOUT_SERVING_AUTH_RESOLVER": "builtin",
        "ROLLOUT_STORE_URL": f"sqlite:///{database}",
        "ROLLOUT_LOG_LEVEL": "warning",
    }.items():
        monkeypatch.setenv(name, value)
    args = ["watch-alias", f"{MODEL}@challenger", "--endpoint", ENDPOINT,
            "--plan-template", str(template), "--once"]
    first = CliRunner().invoke(cli_app, args)
    assert first.exit_code == 0, first.output
    assert first.output.strip().endswith(f"{MODEL}@challenger: started")
    again = CliRunner().invoke(cli_app, args)
    assert again.output.strip().endswith(f"{MODEL}@challenger: seen"), again.output
    store = open_store(f"sqlite:///{database}")
    try:
        (record,) = rollouts(store)
        assert record.plan["candidate"]["entity_version"] == "4"
    finally:
        store.close()
    broken = CliRunner().invoke(cli_app, [*args[:2], "--endpoint", "other", *args[4:]])
    assert broken.exit_code == 2
    assert "endpoint is 'ads', the watch's is 'other'" in broken.output


def test_a_template_for_another_model_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "other.yaml"
    other = {**TEMPLATE, "candidate": {"entity_name": "main.ml.other", "entity_version": "2"}}
    path.write_text(yaml.safe_dump(other), encoding="utf-8")
    with pytest.raises(ConfigurationProblem, match=r"the watch's model is 'main\.ml\.ads_model'"):
        AliasWatch.load(f"{MODEL}@challenger", ENDPOINT, path, PolicyLibrary())
    with pytest.raises(ConfigurationProblem, match=r"catalog\.schema\.model@alias"):
        AliasWatch.load(MODEL, ENDPOINT, path, PolicyLibrary())


async def test_the_daemon_runs_the_watches_of_its_settings(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, template: Path, tmp_path: Path
) -> None:
    make_endpoint(sandbox_admin, {})
    registry_at_three(sandbox_admin)
    register(sandbox_admin, "challenger")
    database = tmp_path / "daemon.db"
    settings = Settings.model_validate(
        {
            "databricks": {"host": sandbox.url, "token": sandbox.token},
            "serving": {"auth_resolver": "builtin"},
            "store": {"url": f"sqlite:///{database}"},
            "api": {"port": 0},
            "engine": {"update_poll": 0.1, "scan_interval": 0.2},
            "aliases": {
                "watches": [{"alias": f"{MODEL}@challenger", "endpoint": ENDPOINT,
                             "plan_template": str(template)}],
                "poll_interval": 0.05,
            },
        }
    )
    controller = build(settings)
    running = asyncio.create_task(run(controller))
    reader = open_store(f"sqlite:///{database}")
    try:
        for _ in range(200):
            if rollouts(reader):
                break
            await asyncio.sleep(0.05)
        # Many looks later, still the one rollout.
        await asyncio.sleep(0.3)
        (record,) = rollouts(reader)
        assert record.plan["candidate"]["entity_version"] == "4"
    finally:
        controller.stopping.set()
        code = await asyncio.wait_for(running, timeout=30)
        reader.close()
    assert code == 0
    bad = settings.model_copy(deep=True)
    bad.aliases.watches[0] = bad.aliases.watches[0].model_copy(
        update={"plan_template": tmp_path / "missing.yaml"}
    )
    with pytest.raises(ConfigurationProblem, match="ROLLOUT_ALIASES_WATCHES: plan template"):
        build(bad)
