"""Health that tells the truth: ``/readyz`` fails while the store refuses writes, and a
workspace that does not answer raises one alert, resolved when it answers again.

Real databases only: a SQLite file opened read-only and a PostgreSQL session in
``default_transaction_read_only`` (what a standby answers), behind the real API app. The
workspace is the sandbox answering 503 (an admin fault) or a port nothing listens on, on a
fake clock.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry
from structlog.testing import capture_logs

from rollout.alerts.alertmanager import alertmanager_alerts
from rollout.alerts.notifier import SendContext
from rollout.alerts.payload import AlertPayload, rfc3339
from rollout.api import create_api
from rollout.clock import FakeClock
from rollout.engine.runner import new_rollout
from rollout.health import StoreWriteCheck, WorkspaceWatch
from rollout.plan import AlertChannel, validate_plan
from rollout.policies import PolicyLibrary
from rollout.sandbox.server import SandboxServer
from rollout.serving.auth import PatAuth
from rollout.serving.client import ServingClient
from rollout.serving.errors import NotFound, ServingError
from rollout.serving.retry import RetryPolicy
from rollout.settings import ApiSettings
from rollout.store.base import Store
from rollout.store.factory import open_store
from rollout.store.model import OutboxAlert
from rollout.store.postgres import PostgresStore
from rollout.store.sqlite import SqliteStore
from tests.postgres import fresh_schema

T0 = 1_800_000_000.0


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, Store]]:
    """(a writable store, a read-only store on the same database), both migrated."""
    if request.param == "sqlite":
        path = tmp_path / "rollout.db"
        writable: Store = open_store(f"sqlite:///{path}")
        writable.migrate()
        read_only: Store = SqliteStore(str(path), read_only=True)
        yield writable, read_only
        read_only.close()
        writable.close()
        return
    with fresh_schema("health") as url:
        writable = open_store(url)
        writable.migrate()
        read_only = PostgresStore(url + "%20-cdefault_transaction_read_only%3Don")
        yield writable, read_only
        read_only.close()
        writable.close()


@pytest.fixture
async def client(sandbox: SandboxServer) -> AsyncIterator[ServingClient]:
    async with ServingClient(sandbox.url, PatAuth(sandbox.token), clock=sandbox.clock) as client:
        yield client


def api_on(store: Store, client: ServingClient, clock: FakeClock) -> httpx.AsyncClient:
    """The API app with the daemon's store-write check as its readiness, over ASGI."""
    check = StoreWriteCheck(store, clock)
    app = create_api(
        store=store,
        client=client,
        clock=clock,
        library=PolicyLibrary(),
        registry=CollectorRegistry(),
        settings=ApiSettings(),
        ready=check.check,
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://127.0.0.1")


async def test_readyz_fails_while_the_store_refuses_writes(
    stores: tuple[Store, Store], client: ServingClient
) -> None:
    writable, read_only = stores
    clock = FakeClock(T0)
    async with api_on(writable, client, clock) as api:
        ok = await api.get("/readyz")
    assert (ok.status_code, ok.json()) == (200, {"status": "ready", "problems": {}})

    async with api_on(read_only, client, clock) as api:
        refused = await api.get("/readyz")
    assert refused.status_code == 503
    body = refused.json()
    assert body["status"] == "not ready"
    assert set(body["problems"]) == {"store_write"}, "the store still answers reads"
    assert body["problems"]["store_write"].startswith("the store cannot be written: ")


class CountingStore(SqliteStore):
    """A real SQLite store that counts its write probes."""

    probes = 0

    def probe_write(self, now: float) -> None:
        self.probes += 1
        super().probe_write(now)


async def test_the_write_probe_is_cached_for_its_ttl(tmp_path: Path) -> None:
    store = CountingStore(str(tmp_path / "rollout.db"))
    store.migrate()
    clock = FakeClock(T0)
    check = StoreWriteCheck(store, clock, ttl=2.0)
    try:
        for _ in range(5):
            assert await check.check() == {}
        assert store.probes == 1, "five readiness calls within the TTL: one write"
        clock.advance(1.9)
        await check.check()
        assert store.probes == 1
        clock.advance(0.1)
        await check.check()
        assert store.probes == 2, "a fresh probe once the TTL has passed"
        store.close()
        clock.advance(2.0)
        problems = await check.check()
        assert set(problems) == {"store_write"}
    finally:
        store.close()


# ---- a workspace that does not answer -------------------------------------------------------

CHANNELS = [
    AlertChannel(type="webhook", url="http://127.0.0.1:9/hook", severity="info"),
    AlertChannel(type="alertmanager", url="http://127.0.0.1:9/am", severity="error"),
]
PLAN_CHANNEL = {"type": "slack", "url": "https://hooks.slack.example/T/B/x", "severity": "warn"}


def watched_client(url: str, token: str, clock: FakeClock, watch: WorkspaceWatch) -> ServingClient:
    return ServingClient(
        url,
        PatAuth(token),
        clock=clock,
        # One retry, so that each call is two attempts, both reported.
        retry=RetryPolicy(initial_backoff=1, max_backoff=1, budget_seconds=5, max_attempts=2),
        timeout=2.0,
        on_response=watch.on_response,
    )


async def failing_call(client: ServingClient) -> None:
    with pytest.raises(ServingError):
        await client.get_endpoint("ads")


async def test_an_unreachable_workspace_raises_one_alert_and_resolves_it(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store
) -> None:
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    # An active rollout's own channels hear about it too (the plan is stored as submitted).
    record, event = new_rollout(
        validate_plan({"endpoint": "ads", "candidate": {"entity_name": "m", "entity_version": "2"},
                       "strategy": "canary", "steps": [{"weight": 10, "bake": "5m"}],
                       "alerts": [PLAN_CHANNEL]}),
        PolicyLibrary().get("default"),
        clock.now(),
    )
    store.create(record, event, [])
    watch = WorkspaceWatch(store, clock, workspace="ws", outage_after=120, channels=CHANNELS)
    response = sandbox_admin.post("/faults", json={"status": 503})
    assert response.status_code == 201, response.text

    async with watched_client(sandbox.url, sandbox.token, clock, watch) as client:
        with capture_logs() as logs:
            await failing_call(client)
            clock.advance(100)
            await failing_call(client)
            await watch.drain()
            assert store.pending_alert_count() == 0, "not yet an outage"
            clock.advance(30)
            for _ in range(5):  # the outage goes on: still one alert
                await failing_call(client)
                clock.advance(30)
            await watch.drain()
            raised = drain(store)
            sandbox_admin.delete("/faults")
            with pytest.raises(NotFound):
                await client.get_endpoint("ads")  # a 404 is an answer
            await client.list_endpoints()
            await watch.drain()
            resolved = drain(store)

    assert sorted(a.payload["channel"]["type"] for a in raised) == [
        "alertmanager", "slack", "webhook"], "default channels and the active rollout's"
    assert {a.payload["event"] for a in raised} == {"workspace_unreachable"}
    assert all(a.rollout_id is None for a in raised)
    first = raised[0].payload
    assert first["severity"] == "error"
    assert first["summary"].startswith("workspace ws unreachable for 2m")
    assert "HTTP 503" in first["summary"]
    assert {a.payload["event"] for a in resolved} == {"workspace_reachable"}
    assert len(resolved) == 3
    assert all(a.payload["details"]["resolves"] == "workspace_unreachable" for a in resolved)

    levels = [(e["log_level"], e["event"]) for e in logs if e["event"].startswith("workspace.")
              and e["log_level"] != "debug"]
    assert levels == [("warning", "workspace.unreachable"), ("info", "workspace.reachable")]

    # Alertmanager: the alert fires with its labels, and the resolve ends exactly that alert.
    am_raised = next(a for a in raised if a.channel == "alertmanager")
    am_resolved = next(a for a in resolved if a.channel == "alertmanager")
    context = SendContext(now=clock.now(), rollout_ended=False)
    fired = alertmanager_alerts(AlertPayload.from_outbox(am_raised), context)
    assert len(fired) == 1
    assert fired[0]["labels"]["alertname"] == "RolloutWorkspaceUnreachable"
    assert fired[0]["endsAt"] > rfc3339(clock.now())
    ends = alertmanager_alerts(AlertPayload.from_outbox(am_resolved), context)
    assert fired[0]["labels"] in [e["labels"] for e in ends]
    assert all(e["endsAt"] == rfc3339(clock.now()) for e in ends)


def drain(store: Store) -> list[OutboxAlert]:
    alerts = store.claim_alerts(now=T0 * 2, limit=100, lease_seconds=60)
    for alert in alerts:
        store.mark_delivered(alert.id, T0)
    return alerts


async def test_a_stopped_workspace_is_an_outage_too(store: Store) -> None:
    clock = FakeClock(T0)
    with socket.socket() as sock:  # a port nothing listens on: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    watch = WorkspaceWatch(store, clock, workspace="ws", outage_after=120, channels=CHANNELS)
    async with watched_client(f"http://127.0.0.1:{port}", "t", clock, watch) as client:
        await failing_call(client)
        clock.advance(121)
        await failing_call(client)
        await watch.drain()
    raised = drain(store)
    assert len(raised) == 2
    assert "no answer (connection error or timeout)" in raised[0].payload["summary"]
