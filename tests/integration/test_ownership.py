"""Rollout ownership against the sandbox: a replica that lost its lease never PUTs, a new owner
waits out the old owner's PUT and recognises it on the endpoint, the loop's readiness, and one
driving process per SQLite file.

Two ``Owner``s on one SQLite store stand for two replicas (per-rollout leases behave the same
on both backends: the contract suite checks that); the fake clock moves leases past expiry.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from rollout.clock import FakeClock
from rollout.daemon import build, loop_problems, run
from rollout.engine.decide import Timing
from rollout.engine.ownership import DriverAlreadyRunning, DriverLeaseLostError, Owner
from rollout.engine.runner import Runner
from rollout.engine.scheduler import Reconciler
from rollout.errors import ConfigurationProblem
from rollout.plan import validate_plan
from rollout.policies import PolicyLibrary
from rollout.sandbox.server import SandboxServer
from rollout.serving.auth import PatAuth
from rollout.serving.client import ServingClient
from rollout.serving.models import ConfigSpec, ServedEntity
from rollout.serving.retry import RetryPolicy
from rollout.settings import Settings
from rollout.store.base import Store
from rollout.store.errors import LeaseLost
from rollout.store.factory import open_store

TTL = 30.0
WIRE = 10.0  # the PUT deadline: how long a PUT of the old owner may still land


def make_endpoint(admin: httpx.Client, name: str) -> None:
    response = admin.post(
        "/endpoints",
        json={
            "name": name,
            "served_entities": [{"name": "m-1", "entity_name": "m", "entity_version": "1"}],
            "qps": 50,
        },
    )
    assert response.status_code == 201, response.text


def puts(admin: httpx.Client, name: str) -> list[dict[str, Any]]:
    response = admin.get(f"/endpoints/{name}/config-log")
    assert response.status_code == 200, response.text
    return list(response.json()["puts"])


def owner(store: Store, clock: FakeClock, name: str) -> Owner:
    return Owner(store, clock, holder=name, lease_ttl=TTL, wire_seconds=WIRE)


@pytest.fixture
async def client(sandbox: SandboxServer) -> AsyncIterator[ServingClient]:
    async with ServingClient(
        sandbox.url,
        PatAuth(sandbox.token),
        clock=sandbox.clock,
        poll_interval=1,
        retry=RetryPolicy(initial_backoff=0.05, max_backoff=0.2, budget_seconds=5),
        timeout=15,
        put_deadline=WIRE,
    ) as serving:
        yield serving


def runner_for(store: Store, client: ServingClient, clock: FakeClock, own: Owner) -> Runner:
    return Runner(store, client, clock=clock, timing=Timing(look_interval=30), ownership=own)


async def submit(runner: Runner, endpoint: str) -> str:
    plan = validate_plan(
        {
            "endpoint": endpoint,
            "candidate": {"entity_name": "m", "entity_version": "2"},
            "strategy": "canary",
            "steps": [{"weight": 10, "bake": "5m"}],
        }
    )
    return (await runner.submit(plan, PolicyLibrary().get("default"))).id


class CrashAfterCommitError(Exception):
    """Raised by a decision observer: the process 'dies' between the commit and the PUT."""


async def test_a_replica_that_lost_the_rollout_does_not_put(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, client: ServingClient
) -> None:
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    make_endpoint(sandbox_admin, "ep-lost")
    a, b = owner(store, clock, "a"), owner(store, clock, "b")
    runner_a = runner_for(store, client, clock, a)
    rollout_id = await submit(runner_a, "ep-lost")
    assert await a.hold(rollout_id) is not None

    def stall_then_lose(*_: Sequence[Any]) -> None:
        # Between a's commit of its intent and its PUT, a stalls past its lease and b
        # takes the rollout over.
        clock.advance(TTL + 1)
        taken = store.claim_rollout(rollout_id, "b", TTL, clock.now(), WIRE)
        assert taken is not None
        assert taken.token == 2

    runner_a.observer = stall_then_lose
    with pytest.raises(LeaseLost):
        await runner_a.reconcile(rollout_id)
    assert puts(sandbox_admin, "ep-lost") == [], "no PUT under a stale token"
    assert a.owned == []
    assert store.owned_by("b", clock.now())[0].token == 2
    # Nor can a commit anything more: its commit presents token 1.
    runner_a.observer = None
    with pytest.raises(LeaseLost):
        await runner_a.reconcile(rollout_id)
    assert store.get(rollout_id).state["target"]["purpose"] == "deploy"
    del b


async def test_a_new_owner_waits_out_the_old_owners_put_and_recognises_it(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, client: ServingClient
) -> None:
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    make_endpoint(sandbox_admin, "ep-late")
    a, b = owner(store, clock, "a"), owner(store, clock, "b")
    runner_a = runner_for(store, client, clock, a)
    runner_b = runner_for(store, client, clock, b)
    rollout_id = await submit(runner_a, "ep-late")
    lease_a = await a.hold(rollout_id)
    assert lease_a is not None

    def die(*_: Sequence[Any]) -> None:
        raise CrashAfterCommitError

    # a commits its intent (deploy the candidate at 0 %) and "dies" with the PUT on the wire.
    runner_a.observer = die
    with pytest.raises(CrashAfterCommitError):
        await runner_a.reconcile(rollout_id)
    target = store.get(rollout_id).state["target"]
    assert target["purpose"] == "deploy"
    assert puts(sandbox_admin, "ep-late") == []

    # While a's lease is live, b's scan leaves the rollout out (no claim, not even a read
    # per scan) until the lease would run out.
    reconciler_b = Reconciler(runner_b, store, clock, ownership=b)
    clock.advance(TTL / 2)  # due again (the update's poll), a's lease still live
    assert store.due_soon(clock.now(), holder="a", now=clock.now())[0].id == rollout_id
    assert await reconciler_b.scan() == []
    await reconciler_b.drain()
    assert b.owned == []
    # a's lease runs out; b's loop claims the rollout but must not act yet.
    clock.advance(TTL / 2 + 1)
    assert await reconciler_b.scan() == [rollout_id]
    await reconciler_b.drain()
    lease_b = b.lease(rollout_id)
    assert lease_b is not None
    assert lease_b.token == lease_a.token + 1
    assert lease_b.act_after == pytest.approx(lease_a.expires_at + WIRE)
    assert puts(sandbox_admin, "ep-late") == [], "b leaves the endpoint alone"
    assert store.get(rollout_id).state["target"] == target, "nor does it decide anything"
    assert await reconciler_b.scan() == [], "it comes back only after act_after"

    # a's held PUT lands now, late but within its deadline.
    spec = ConfigSpec.build(
        [ServedEntity.model_validate(e) for e in target["entities"]], target["split"]
    )
    await client.update_config("ep-late", spec)
    clock.advance(lease_b.act_after - clock.now() + 0.1)
    for _ in range(6):  # follow the update to its end, as the loop would
        await reconciler_b.scan()
        await reconciler_b.drain()
        if store.get(rollout_id).phase == "progressing":
            break
        clock.advance(5)
    record = store.get(rollout_id)
    kinds = [e.kind for e in store.events(rollout_id)]
    assert "drift" not in kinds, "the old owner's PUT is recognised, not taken for a human's"
    assert "candidate_deployed" in kinds
    assert record.phase == "progressing"
    log = [p for p in puts(sandbox_admin, "ep-late") if p["outcome"] == "accepted"]
    splits = [p["split"] for p in log]
    assert splits[0] == target["split"], "the deploy config reached the endpoint once"
    assert splits.count(target["split"]) == 1, "and was not sent a second time by b"


async def test_the_heartbeat_spreads_rollouts_over_live_replicas(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, client: ServingClient
) -> None:
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    a = Owner(store, clock, holder="a", lease_ttl=TTL, wire_seconds=WIRE, slack=0)
    runner = runner_for(store, client, clock, a)
    ids = []
    for index in range(4):
        make_endpoint(sandbox_admin, f"ep-share-{index}")
        ids.append(await submit(runner, f"ep-share-{index}"))
    await a.heartbeat()
    assert a.share == 4
    for rollout_id in ids:
        assert await a.hold(rollout_id) is not None
    b = Owner(store, clock, holder="b", lease_ttl=TTL, wire_seconds=WIRE, slack=0)
    await b.heartbeat()
    assert b.share == 2
    assert [await b.hold(rollout_id) for rollout_id in ids] == [None] * 4, "all a's"
    await a.heartbeat(busy={ids[3]})  # a sees two replicas: keeps two, never a busy one
    assert len(a.owned) == 2
    assert ids[3] in a.owned
    freed = [rollout_id for rollout_id in ids if rollout_id not in a.owned]
    taken = [await b.hold(rollout_id) for rollout_id in freed]
    assert all(t is not None and t.act_after <= clock.now() for t in taken), (
        "released quietly: b may act at once"
    )
    # a dies: its heartbeat and leases run out within one TTL and b takes everything,
    # renewing its own every third of the TTL meanwhile.
    died_at = clock.now()
    for _ in range(3):
        assert [await b.hold(rollout_id) for rollout_id in a.owned] == [None, None]
        clock.advance(TTL / 3 + 0.01)
        await b.heartbeat()
    assert clock.now() - died_at < TTL + 1
    assert b.replicas == 1
    assert b.share == 4
    for rollout_id in a.owned:
        lease = await b.hold(rollout_id)
        assert lease is not None
        assert lease.act_after == pytest.approx(died_at + TTL + WIRE), "a's PUTs waited out"
    assert sorted(b.owned) == sorted(ids)


async def test_rollouts_submitted_between_heartbeats_are_taken_at_once(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, client: ServingClient
) -> None:
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    a = Owner(store, clock, holder="a", lease_ttl=TTL, wire_seconds=WIRE, slack=0)
    await a.heartbeat()  # nothing active yet: a share of one
    runner = runner_for(store, client, clock, a)
    ids = []
    for index in range(3):
        make_endpoint(sandbox_admin, f"ep-new-{index}")
        ids.append(await submit(runner, f"ep-new-{index}"))
    clock.advance(1)
    assert all([await a.hold(rollout_id) is not None for rollout_id in ids])
    assert a.share == 3


async def test_readyz_fails_when_the_loop_stops_scanning(tmp_path: Path) -> None:
    clock = FakeClock()
    settings = Settings.model_validate(
        {
            "databricks": {"host": "http://127.0.0.1:9", "token": "dapi-x"},
            "store": {"url": f"sqlite:///{tmp_path / 'r.db'}"},
            "api": {"port": 0},
            # Real seconds between scans: none comes after the first during this test.
            "engine": {"scan_interval": 30},
        }
    )
    controller = build(settings, clock=clock)
    stopping = asyncio.Event()
    loop = asyncio.create_task(controller.reconciler.run(stopping))
    transport = httpx.ASGITransport(app=controller.server.config.app)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as api:
            for _ in range(100):
                if controller.reconciler.last_scan_at is not None:
                    break
                await asyncio.sleep(0.01)
            ready = await api.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["owned"] == []
            clock.advance(3 * 30 + 1)  # three scan intervals without a completed scan
            stalled = await api.get("/readyz")
            assert stalled.status_code == 503
            problem = stalled.json()["problems"]["reconcile"]
            assert "no scan completed for 91.0 s" in problem
            metrics = (await api.get("/metrics")).text
            assert "rollout_owned_rollouts 0.0" in metrics
    finally:
        stopping.set()
        await controller.reconciler.stop(grace=1)
        await asyncio.wait_for(loop, timeout=5)
        await controller.client.aclose()
        await controller.alerts_http.aclose()
        controller.sock.close()
        controller.store.close()
    assert loop_problems(controller.reconciler, clock) == {
        "reconcile": "the reconcile loop is not running"
    }


async def test_scans_that_cannot_read_the_store_do_not_count_as_completed(
    tmp_path: Path, sandbox: SandboxServer, client: ServingClient
) -> None:
    clock = FakeClock()
    store = open_store(f"sqlite:///{tmp_path / 'gone.db'}")
    store.migrate()
    store.close()  # every call now raises StoreUnavailable
    runner = Runner(store, client, clock=clock)
    reconciler = Reconciler(runner, store, clock, scan_interval=30)
    stopping = asyncio.Event()
    loop = asyncio.create_task(reconciler.run(stopping))
    try:
        for _ in range(100):
            if reconciler.running:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)  # the first scan has run (and failed)
        assert reconciler.last_scan_at is None
        assert loop_problems(reconciler, clock) == {}, "not stalled yet"
        clock.advance(91)
        problem = loop_problems(reconciler, clock)["reconcile"]
        assert "no scan completed for 91.0 s since start" in problem
    finally:
        stopping.set()
        await reconciler.stop(grace=1)
        await asyncio.wait_for(loop, timeout=5)
    del sandbox


def test_the_put_deadline_must_be_shorter_than_the_lease(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {
            "databricks": {"host": "http://127.0.0.1:9", "token": "dapi-x"},
            "store": {"url": f"sqlite:///{tmp_path / 'r.db'}"},
            "serving": {"put_deadline": 30},
            "engine": {"lease_ttl": 30},
        }
    )
    with pytest.raises(ConfigurationProblem) as problem:
        build(settings)
    assert "ROLLOUT_SERVING_PUT_DEADLINE (30 s)" in str(problem.value)
    assert "ROLLOUT_ENGINE_LEASE_TTL (30 s)" in str(problem.value)


async def test_a_driver_that_lost_its_sqlite_lease_stops(store: Store) -> None:
    clock = FakeClock()
    first = Owner(store, clock, holder="first", lease_ttl=TTL, wire_seconds=WIRE,
                  single_driver=True)
    first.take_driver()
    await first.heartbeat()
    second = Owner(store, clock, holder="second", lease_ttl=TTL, wire_seconds=WIRE,
                   single_driver=True)
    with pytest.raises(DriverAlreadyRunning, match="first"):
        second.take_driver()
    clock.advance(TTL + 1)  # first stalls past its lease; second starts
    second.take_driver()
    with pytest.raises(DriverLeaseLostError):
        await first.heartbeat()


def _serve(env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "rollout.cli", "serve"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=log.open("a"),
        text=True,
    )


def _wait_listening(process: subprocess.Popen[str]) -> None:
    assert process.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if "http://127.0.0.1:" in line:
            return
        if process.poll() is not None:
            break
    raise AssertionError("the first controller did not start")


def test_a_second_controller_on_one_sqlite_file_refuses_to_start(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "ROLLOUT_"))}
    env.update(
        {
            "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
            "DATABRICKS_HOST": "http://127.0.0.1:9",
            "DATABRICKS_TOKEN": "dapi-x",
            "ROLLOUT_STORE_URL": f"sqlite:///{tmp_path / 'rollout.db'}",
            "ROLLOUT_API_PORT": "0",
        }
    )
    first = _serve(env, tmp_path / "first.log")
    try:
        _wait_listening(first)
        for command in ("serve", "engine"):
            second = subprocess.run(
                [sys.executable, "-m", "rollout.cli", command],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )
            assert second.returncode != 0, second.stdout + second.stderr
            message = second.stdout + second.stderr
            assert "already drives this SQLite store" in message
            assert f"pid {first.pid} since " in message, message
        # Killed without a word: the next one takes the file over (the pid is gone).
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        third = _serve(env, tmp_path / "third.log")
        try:
            _wait_listening(third)
        finally:
            third.send_signal(signal.SIGTERM)
            assert third.wait(timeout=60) == 0
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=10)


async def test_a_dying_reconcile_loop_ends_the_daemon_with_exit_1(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {
            "databricks": {"host": "http://127.0.0.1:9", "token": "dapi-x"},
            "store": {"url": f"sqlite:///{tmp_path / 'r.db'}"},
            "api": {"port": 0},
            "engine": {"scan_interval": 0.05},
        }
    )
    controller = build(settings)
    scans = 0

    async def broken_scan() -> list[str]:
        nonlocal scans
        scans += 1
        if scans == 3:
            raise RuntimeError("the loop itself broke")
        return []

    # The loop catches every reconcile's failure; only a failure of the loop itself gets out.
    controller.reconciler.scan = broken_scan  # type: ignore[method-assign]
    code = await asyncio.wait_for(run(controller), timeout=30)
    assert code == 1
    assert scans == 3
    assert controller.stopping.is_set(), "the other root tasks were stopped"
