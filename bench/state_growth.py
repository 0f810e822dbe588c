"""How the stored state of aging rollouts grows, and what one look costs the runner.

Where this sits: not shipped; it measures ``rollout.engine.runner`` and ``rollout.store``.
N canary rollouts (one endpoint each, healthy candidate, steps of 2 h so a rollout is still
judging after 6 h) are driven through the real ``Runner`` against a real store (a SQLite file,
or a fresh schema on PostgreSQL), with the sandbox workspace in process (its HTTP app through
``httpx.ASGITransport``, its traffic generator simulating every window) and one ``FakeClock``:
60 s metric windows, a look every 30 s, hours of rollout in minutes. Every rollout is reconciled
whenever it is due, as the scheduler would.

It reports, per backend:

* ``stored KB / rollout-hour``: growth of the database (SQLite file after a WAL checkpoint;
  PostgreSQL tables with indexes and TOAST) over the last simulated hour, per rollout;
* ``state JSON KB``: the largest rollout row's state JSON at the end;
* ``CPU ms / look``: process CPU time of the runner and the store per reconcile, with the time
  spent inside the sandbox's app subtracted (the fake Databricks is not the controller's cost);
* ``peak RSS MB`` of the whole process (sandbox included).

Run: ``python bench/state_growth.py --rollouts 10 --hours 6`` (``--backend sqlite|postgres|both``;
PostgreSQL at ``ROLLOUT_TEST_POSTGRES_URL`` or ``postgresql://postgres@127.0.0.1:5432/test``).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import structlog
from psycopg import sql

from rollout.clock import FakeClock
from rollout.engine.decide import Timing
from rollout.engine.runner import Runner
from rollout.plan import validate_plan
from rollout.policies import PolicyLibrary
from rollout.sandbox.app import create_app
from rollout.sandbox.workspace import Workspace
from rollout.serving.auth import PatAuth
from rollout.serving.client import ServingClient
from rollout.serving.retry import RetryPolicy
from rollout.store.base import Store
from rollout.store.factory import open_store

POSTGRES_URL = os.environ.get(
    "ROLLOUT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)
HEALTHY = {"error_rate": 0.002, "latency_p50_ms": 40, "latency_p99_ms": 120}
WINDOW_SECONDS = 60.0
LOOK_SECONDS = 30.0
HOUR = 3600.0
ADMIN_URL = "http://sandbox.local/_sandbox/v1"


class _TimedTransport(httpx.AsyncBaseTransport):
    """The sandbox's ASGI app, with the CPU time spent inside it counted apart."""

    def __init__(self, inner: httpx.AsyncBaseTransport) -> None:
        self.inner = inner
        self.cpu = 0.0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        began = time.process_time()
        try:
            response = await self.inner.handle_async_request(request)
            await response.aread()
            return response
        finally:
            self.cpu += time.process_time() - began


def _plan(endpoint: str) -> dict[str, Any]:
    policy = PolicyLibrary().get("default").model_dump(mode="json", exclude_none=True)
    policy.update(name="bench", deadline="12h")
    return {
        "endpoint": endpoint,
        "candidate": {
            "entity_name": "main.ml.model",
            "entity_version": "4",
            "workload_size": "Small",
        },
        "strategy": "canary",
        "steps": [
            {"weight": 5, "bake": "2h"},
            {"weight": 10, "bake": "2h"},
            {"weight": 25, "bake": "2h"},
            {"weight": 50, "bake": "2h"},
        ],
        "policy": policy,
    }


@contextmanager
def _postgres_schema() -> Iterator[tuple[str, str]]:
    schema = f"bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            sep = "&" if "?" in POSTGRES_URL else "?"
            yield f"{POSTGRES_URL}{sep}options=-csearch_path%3D{schema}", schema
        finally:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))


def _stored_bytes(backend: str, where: str, *, live: bool = False) -> int:
    """Bytes on disk: SQLite's used pages; PostgreSQL's tables with TOAST and indexes, or,
    with ``live``, the rows that are live (dead versions waiting for vacuum left out)."""
    if backend == "sqlite":
        with sqlite3.connect(where) as db:
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)").close()
            pages = db.execute("PRAGMA page_count").fetchone()[0]
            free = db.execute("PRAGMA freelist_count").fetchone()[0]
            size = db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)
    if live:
        total = 0
        with psycopg.connect(POSTGRES_URL, autocommit=True) as db:
            db.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(where)))
            for table in _TABLE_JSON:
                try:
                    found = db.execute(
                        sql.SQL("SELECT COALESCE(SUM(pg_column_size(t.*)), 0) FROM {} t").format(
                            sql.Identifier(table)
                        )
                    ).fetchone()
                except psycopg.Error:
                    continue  # a table this version of the schema does not have
                total += int(found[0]) if found else 0
        return total
    with psycopg.connect(POSTGRES_URL, autocommit=True) as db:
        row = db.execute(
            "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relkind = 'r'",
            (where,),
        ).fetchone()
    return int(row[0]) if row else 0


_TABLE_JSON = {"rollouts": "state", "events": "data", "metric_windows": "data",
               "step_summaries": "data", "outbox": "payload"}


def _json_by_table(backend: str, where: str) -> dict[str, int]:
    """Bytes of JSON text per table (what each part of the state costs)."""
    out: dict[str, int] = {}
    for table, column in _TABLE_JSON.items():
        try:
            if backend == "sqlite":
                with sqlite3.connect(where) as db:
                    # Names from the constant table above, never from input.
                    query = f"SELECT SUM(LENGTH({column})) FROM {table}"  # noqa: S608
                    row = db.execute(query).fetchone()
            else:
                with psycopg.connect(POSTGRES_URL, autocommit=True) as db:
                    db.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(where)))
                    row = db.execute(
                        sql.SQL("SELECT SUM(LENGTH({}::text)) FROM {}").format(
                            sql.Identifier(column), sql.Identifier(table)
                        )
                    ).fetchone()
        except (sqlite3.Error, psycopg.Error):
            continue  # a table this version of the schema does not have
        out[table] = int(row[0] or 0) if row else 0
    return out


def _state_bytes(backend: str, where: str) -> int:
    if backend == "sqlite":
        with sqlite3.connect(where) as db:
            row = db.execute("SELECT MAX(LENGTH(state)) FROM rollouts").fetchone()
        return int(row[0] or 0)
    with psycopg.connect(POSTGRES_URL, autocommit=True) as db:
        db.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(where)))
        row = db.execute("SELECT MAX(LENGTH(state::text)) FROM rollouts").fetchone()
    return int(row[0] or 0) if row else 0


async def _run(store: Store, backend: str, where: str, rollouts: int, hours: float) -> None:
    clock = FakeClock()
    workspace = Workspace(clock, seed=1, window_seconds=WINDOW_SECONDS, update_seconds=5.0)
    transport = _TimedTransport(httpx.ASGITransport(app=create_app(workspace)))
    policies = PolicyLibrary()
    async with ServingClient(
        "http://sandbox.local",
        PatAuth(workspace.default_token),
        transport=transport,
        clock=clock,
        retry=RetryPolicy(initial_backoff=0.1, max_backoff=1, budget_seconds=30),
        poll_interval=5,
    ) as client:
        runner = Runner(
            store,
            client,
            clock=clock,
            timing=Timing(look_interval=LOOK_SECONDS, update_poll=5, update_deadline=600),
        )
        ids = []
        admin = httpx.AsyncClient(transport=transport.inner, base_url=ADMIN_URL)
        for index in range(rollouts):
            endpoint = f"ep-{index}"
            response = await admin.post(
                "/endpoints",
                json={
                    "name": endpoint,
                    "served_entities": [
                        {
                            "name": "model-3",
                            "entity_name": "main.ml.model",
                            "entity_version": "3",
                            "workload_size": "Small",
                            "scale_to_zero_enabled": False,
                        }
                    ],
                    "profiles": {"model-3": HEALTHY, "model-4": HEALTHY},
                    "qps": 20.0,
                },
            )
            response.raise_for_status()
            plan = validate_plan(_plan(endpoint))
            record = await runner.submit(plan, policies.resolve(plan.policy))
            ids.append(record.id)
        await admin.aclose()
        start = clock.now()
        end = start + hours * HOUR
        looks = 0
        cpu = 0.0
        sandbox_cpu_before = transport.cpu
        mark = start + max(0.0, hours - 1.0) * HOUR
        bytes_at_mark: int | None = None
        live_at_mark = 0
        while clock.now() < end:
            due = store.due(clock.now(), limit=rollouts)
            if not due:
                upcoming = [r.due_at for r in (store.get(i) for i in ids) if r.due_at]
                if not upcoming:
                    break
                clock.advance(max(0.0, min(upcoming) - clock.now()))
                if bytes_at_mark is None and clock.now() >= mark:
                    bytes_at_mark = _stored_bytes(backend, where)
                    live_at_mark = _stored_bytes(backend, where, live=True)
                continue
            began = time.process_time()
            for record in due:
                await runner.reconcile(record.id)
                looks += 1
            cpu += time.process_time() - began
        sandbox_cpu = transport.cpu - sandbox_cpu_before
        final_bytes = _stored_bytes(backend, where)
        final_live = _stored_bytes(backend, where, live=True)
        phases = sorted({store.get(i).phase for i in ids})
    by_table = _json_by_table(backend, where)
    last_hour = (final_bytes - (bytes_at_mark or 0)) / rollouts / 1024
    whole = final_bytes / rollouts / hours / 1024
    live_last = (final_live - live_at_mark) / rollouts / 1024
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{backend:9} rollouts={rollouts} hours={hours:g} looks={looks} phases={phases}\n"
        f"          stored KB/rollout-hour: last hour {last_hour:.1f}, whole run {whole:.1f}"
        f" (total {final_bytes / 1024 / 1024:.1f} MB)\n"
        f"          live rows KB/rollout-hour, last hour: {live_last:.1f}"
        f" (total {final_live / 1024 / 1024:.1f} MB)\n"
        f"          state JSON KB (largest): {_state_bytes(backend, where) / 1024:.1f}\n"
        f"          CPU ms/look (runner+store): {1000 * (cpu - sandbox_cpu) / max(looks, 1):.2f}"
        f"  (sandbox: {1000 * sandbox_cpu / max(looks, 1):.2f})\n"
        f"          peak RSS MB (process): {rss:.0f}\n"
        f"          JSON KB per rollout by table: "
        + ", ".join(f"{t} {b / rollouts / 1024:.1f}" for t, b in by_table.items())
    )


def main() -> None:
    # One log line per decision is the daemon's cost too, but not the store's: keep it out.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=10)
    parser.add_argument("--hours", type=float, default=6.0)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    args = parser.parse_args()
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as folder:
            path = str(Path(folder) / "bench.db")
            store = open_store(f"sqlite:///{path}")
            store.migrate()
            try:
                asyncio.run(_run(store, "sqlite", path, args.rollouts, args.hours))
            finally:
                store.close()
    if args.backend in ("postgres", "both"):
        with _postgres_schema() as (url, schema):
            store = open_store(url)
            store.migrate()
            try:
                asyncio.run(_run(store, "postgres", schema, args.rollouts, args.hours))
            finally:
                store.close()


if __name__ == "__main__":
    main()
