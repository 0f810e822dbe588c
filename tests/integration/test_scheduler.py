"""The reconcile loop: due rollouts are picked up, each in its own task, and a slow endpoint
never holds up another."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator

import httpx
import pytest

from rollout.clock import FakeClock
from rollout.engine.decide import Timing
from rollout.engine.ownership import Owner
from rollout.engine.runner import Runner, new_rollout
from rollout.engine.scheduler import Reconciler
from rollout.plan import validate_plan
from rollout.policies import PolicyLibrary
from rollout.sandbox.server import SandboxServer
from rollout.serving.auth import PatAuth
from rollout.serving.client import ServingClient
from rollout.serving.retry import RetryPolicy
from rollout.store.base import Store


@pytest.fixture
async def runner(sandbox: SandboxServer, store: Store) -> AsyncIterator[Runner]:
    async with ServingClient(
        sandbox.url,
        PatAuth(sandbox.token),
        clock=sandbox.clock,
        poll_interval=1,
        retry=RetryPolicy(initial_backoff=0.05, max_backoff=0.2, budget_seconds=5),
        timeout=15,
    ) as client:
        yield Runner(store, client, clock=sandbox.clock, timing=Timing(look_interval=30))


def endpoint(admin: httpx.Client, name: str) -> None:
    response = admin.post(
        "/endpoints",
        json={
            "name": name,
            "served_entities": [{"name": "m-1", "entity_name": "m", "entity_version": "1"}],
            "qps": 50,
        },
    )
    assert response.status_code == 201, response.text


async def submit(runner: Runner, name: str) -> str:
    plan = validate_plan(
        {
            "endpoint": name,
            "candidate": {"entity_name": "m", "entity_version": "2"},
            "strategy": "canary",
            "steps": [{"weight": 10, "bake": "5m"}],
        }
    )
    record = await runner.submit(plan, PolicyLibrary().get("default"))
    return record.id


async def test_the_loop_drives_due_rollouts_and_records_its_scans(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, runner: Runner
) -> None:
    endpoint(sandbox_admin, "ep-a")
    rollout_id = await submit(runner, "ep-a")
    reconciler = Reconciler(runner, store, sandbox.clock, scan_interval=0.05)
    stopping = asyncio.Event()
    loop = asyncio.create_task(reconciler.run(stopping))
    try:
        for _ in range(200):
            if store.get(rollout_id).phase == "progressing":
                break
            await asyncio.sleep(0.05)
        assert reconciler.running
        assert reconciler.last_scan_at is not None
    finally:
        await reconciler.stop(grace=5)
        stopping.set()
        await asyncio.wait_for(loop, timeout=5)
    assert not reconciler.running
    assert store.get(rollout_id).phase == "progressing"
    kinds = [e.kind for e in store.events(rollout_id)]
    assert kinds[:2] == ["submitted", "started"]
    assert "step_applied" in kinds


async def test_a_slow_endpoint_does_not_block_another(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, runner: Runner
) -> None:
    endpoint(sandbox_admin, "slow-ep")
    endpoint(sandbox_admin, "fast-ep")
    slow_id = await submit(runner, "slow-ep")
    fast_id = await submit(runner, "fast-ep")
    # Every call about the slow endpoint takes 3 s of real time.
    fault = sandbox_admin.post(
        "/faults", json={"status": 0, "delay_seconds": 3.0, "path_pattern": "slow-ep"}
    )
    assert fault.status_code == 201, fault.text
    reconciler = Reconciler(runner, store, sandbox.clock, scan_interval=0.05)
    started = await reconciler.scan()
    assert set(started) == {slow_id, fast_id}
    assert await reconciler.scan() == [], "a rollout in flight is not started twice"
    for _ in range(100):
        if store.get(fast_id).phase == "progressing":
            break
        await asyncio.sleep(0.02)
    assert store.get(fast_id).phase == "progressing", "the fast endpoint moved on"
    assert store.get(slow_id).phase == "pending", "while the slow one is still waiting"
    assert slow_id in reconciler.in_flight
    sandbox_admin.delete("/faults")
    await reconciler.drain()
    assert reconciler.in_flight == []


async def test_a_crashing_reconcile_backs_off_and_does_not_stop_the_loop(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, runner: Runner
) -> None:
    endpoint(sandbox_admin, "ep-b")
    good_id = await submit(runner, "ep-b")
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    # A rollout whose stored plan no longer validates: its reconcile raises every time.
    plan = validate_plan(
        {
            "endpoint": "ep-c",
            "candidate": {"entity_name": "m", "entity_version": "2"},
            "strategy": "canary",
            "steps": [{"weight": 10, "bake": "5m"}],
        }
    )
    record, event = new_rollout(plan, PolicyLibrary().get("default"), clock.now(), "broken")
    store.create(dataclasses.replace(record, plan={"endpoint": "ep-c"}), event, [])
    reconciler = Reconciler(runner, store, clock, failure_backoff=30)
    assert set(await reconciler.scan()) == {good_id, "broken"}
    await reconciler.drain()
    assert store.get(good_id).phase != "pending", "the healthy rollout moved on"
    assert await reconciler.scan() == [], "the broken one waits out its backoff"
    clock.advance(31)
    assert "broken" in await reconciler.scan()
    await reconciler.drain()


async def test_the_reconcile_lag_is_reported_at_every_scan_and_falls_to_zero_when_idle(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, runner: Runner
) -> None:
    endpoint(sandbox_admin, "ep-lag")
    rollout_id = await submit(runner, "ep-lag")
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    due_at = store.get(rollout_id).due_at
    assert due_at is not None
    lags: list[float] = []
    reconciler = Reconciler(runner, store, clock, on_lag=lags.append)
    clock.advance(7)
    assert await reconciler.scan() == [rollout_id]
    assert lags == [pytest.approx(clock.now() - due_at)]
    assert lags[0] >= 7
    await reconciler.drain()
    # Nothing is due now (the rollout bakes): the next scan says so instead of repeating 7 s.
    assert await reconciler.scan() == []
    assert lags[-1] == 0.0


async def test_a_look_due_before_the_next_scan_starts_at_its_due_time(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, runner: Runner
) -> None:
    endpoint(sandbox_admin, "ep-soon")
    rollout_id = await submit(runner, "ep-soon")
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    await runner.reconcile(rollout_id)
    reconciler = Reconciler(runner, store, clock, scan_interval=3600)

    async def not_due_yet() -> float:
        due_at = store.get(rollout_id).due_at
        assert due_at is not None
        assert due_at > clock.now()
        # Not due yet, but before the next scan: remembered, not started.
        assert await reconciler.scan() == []
        assert reconciler.next_due() == due_at
        assert reconciler.start_upcoming() == []
        return due_at

    due_at = await not_due_yet()
    clock.advance(due_at - clock.now())
    assert reconciler.start_upcoming() == [rollout_id]
    assert reconciler.next_due() is None
    await reconciler.drain()
    # A rollout poked before its remembered due time is not started again at that time.
    due_at = await not_due_yet()
    assert reconciler.poke(rollout_id)
    await reconciler.drain()
    assert reconciler.next_due() is None
    clock.advance(due_at - clock.now())
    assert reconciler.start_upcoming() == []


async def test_one_replica_per_period_has_the_store_reclaim_space(
    sandbox: SandboxServer, store: Store, runner: Runner
) -> None:
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    calls: list[str] = []
    store.reclaim = lambda: calls.append("reclaim")  # type: ignore[method-assign]
    try:
        replicas = [
            Reconciler(
                runner,
                store,
                clock,
                reclaim_every=10,
                ownership=Owner(store, clock, holder=name, lease_ttl=30, wire_seconds=20),
            )
            for name in ("a", "b")
        ]
        for reconciler in replicas:
            await reconciler.reclaim()
        assert calls == ["reclaim"], "the other replica found the period taken"
        clock.advance(10)
        await replicas[1].reclaim()
        assert calls == ["reclaim", "reclaim"]
    finally:
        del store.reclaim
