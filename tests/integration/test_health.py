"""Readiness that tells the truth: ``/readyz`` fails while the store refuses writes.

Real databases only: a SQLite file opened read-only and a PostgreSQL session in
``default_transaction_read_only`` (what a standby answers), behind the real API app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client import CollectorRegistry

from rollout.api import create_api
from rollout.clock import FakeClock
from rollout.health import StoreWriteCheck
from rollout.policies import PolicyLibrary
from rollout.sandbox.server import SandboxServer
from rollout.serving.auth import PatAuth
from rollout.serving.client import ServingClient
from rollout.settings import ApiSettings
from rollout.store.base import Store
from rollout.store.factory import open_store
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
    return httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url="http://api")


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
