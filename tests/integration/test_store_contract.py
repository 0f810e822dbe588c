"""The store contract, run against both backends: SQLite in a temporary file and PostgreSQL in a
fresh schema of the server on 127.0.0.1:5432.

Everything the runner, the API and the alert dispatcher rely on is asserted here through the
public ``Store`` interface only: one active rollout per endpoint (also under racing writers),
optimistic concurrency that writes nothing on conflict, gapless event logs, deduplicated and
leased alerts, commands consumed in the commit that acts on them, idempotent migrations, and a
database that stays consistent when a writer is killed mid-commit.

PostgreSQL is required, not optional: if it is unreachable the postgres cases fail with a
message saying how to start it.
"""

from __future__ import annotations

import math
import os
import queue
import random
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rollout.store import (
    ACTIVE,
    PHASES,
    TERMINAL,
    ActiveRolloutExists,
    AlertNotFound,
    AliasMoveTaken,
    AliasTrigger,
    DuplicateRollout,
    Fence,
    LeaseLost,
    NewAlert,
    NewAliasMove,
    NewEvent,
    OutboxAlert,
    RolloutNotFound,
    RolloutRecord,
    SchemaError,
    StaleVersion,
    StepSummary,
    Store,
    StoredWindow,
    StoreError,
    StoreUnavailable,
    SummaryFields,
    WindowChanges,
    open_store,
)
from rollout.store._sql import dump_json
from rollout.store.base import WRITE_PROBE_LEASE
from rollout.store.migrations import MIGRATIONS
from rollout.store.postgres import PostgresStore
from rollout.store.sqlite import SqliteStore
from tests.postgres import fresh_schema

T = TypeVar("T")

REPO_ROOT = Path(__file__).resolve().parents[2]
T0 = 1_800_000_000.0


# --- backends ------------------------------------------------------------------------------


@dataclass
class Backend:
    """One database for one test, and every store opened on it (closed at teardown)."""

    name: str
    url: str
    unreachable_url: str
    raw: Callable[[str, tuple[object, ...]], None]
    """Run one SQL statement (with parameters) directly on the database, bypassing the store."""
    read_only: Callable[[], Store]
    """A store on the same database that may read but not write (SQLite ``mode=ro``,
    PostgreSQL ``default_transaction_read_only``, as on a standby)."""
    stores: list[Store] = field(default_factory=list)

    def open_read_only(self) -> Store:
        store = self.read_only()
        self.stores.append(store)
        return store

    def open(self, *, migrate: bool = True) -> Store:
        store = open_store(self.url)
        self.stores.append(store)
        if migrate:
            store.migrate()
        return store

    def close_all(self) -> None:
        for store in self.stores:
            store.close()


@contextmanager
def sqlite_backend(tmp_path: Path) -> Iterator[Backend]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "rollout.db"

    def raw(statement: str, params: tuple[object, ...]) -> None:
        with sqlite3.connect(path) as connection:
            connection.execute(statement, params)
        connection.close()

    backend = Backend(
        name="sqlite",
        url=f"sqlite:///{path}",
        unreachable_url=f"sqlite:///{tmp_path / 'no-such-directory' / 'rollout.db'}",
        raw=raw,
        read_only=lambda: SqliteStore(str(path), read_only=True),
    )
    try:
        yield backend
    finally:
        backend.close_all()


@contextmanager
def postgres_backend() -> Iterator[Backend]:
    with fresh_schema("store_contract") as url:

        def raw(statement: str, params: tuple[object, ...]) -> None:
            with psycopg.connect(url, autocommit=True) as connection:
                connection.execute(statement.replace("?", "%s").encode(), params)

        backend = Backend(
            name="postgres",
            url=url,
            # Port 1 on the loopback: nothing listens there, the connection is refused at once.
            unreachable_url="postgresql://postgres@127.0.0.1:1/test?connect_timeout=2",
            raw=raw,
            # fresh_schema's URL ends with options=-csearch_path...; one more -c setting.
            read_only=lambda: PostgresStore(url + "%20-cdefault_transaction_read_only%3Don"),
        )
        try:
            yield backend
        finally:
            backend.close_all()


@pytest.fixture(
    params=[pytest.param("sqlite"), pytest.param("postgres", marks=pytest.mark.postgres)]
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        with sqlite_backend(tmp_path) as sqlite:
            yield sqlite
    else:
        with postgres_backend() as postgres:
            yield postgres


@pytest.fixture
def store(backend: Backend) -> Store:
    return backend.open()


# --- helpers -------------------------------------------------------------------------------


def event(kind: str = "step", *, at: float = T0, to: str | None = None, **data: Any) -> NewEvent:
    return NewEvent(
        kind=kind, from_phase=None, to_phase=to, reason=f"{kind} happened", data=data, at=at
    )


def new_rollout(
    store: Store,
    rollout_id: str | None = None,
    *,
    endpoint: str = "ads-endpoint",
    phase: str = "pending",
    created_at: float = T0,
    due_at: float | None = T0,
    alerts: list[NewAlert] | None = None,
) -> RolloutRecord:
    rollout_id = rollout_id or f"r-{uuid.uuid4().hex[:12]}"
    record = RolloutRecord(
        id=rollout_id,
        endpoint=endpoint,
        phase=phase,
        version=1,
        plan={"endpoint": endpoint, "steps": [{"weight": 5, "bake": 600}]},
        state={"step": 0},
        created_at=created_at,
        updated_at=created_at,
        due_at=due_at,
    )
    return store.create(record, event("created", at=created_at, to=phase), alerts or [])


def advance(
    store: Store,
    record: RolloutRecord,
    *,
    phase: str | None = None,
    events: list[NewEvent] | None = None,
    alerts: list[NewAlert] | None = None,
    consumed: list[int] | None = None,
    due_at: float | None = None,
) -> RolloutRecord:
    return store.commit(
        record.id,
        record.version,
        phase=phase or record.phase,
        state={**record.state, "step": record.state.get("step", 0) + 1},
        due_at=due_at,
        updated_at=record.updated_at + 1,
        events=[event(at=record.updated_at + 1)] if events is None else events,
        alerts=alerts or [],
        consumed_commands=consumed or [],
    )


def drain_alerts(store: Store, now: float = T0 + 10_000) -> list[OutboxAlert]:
    return store.claim_alerts(now, 1000, 60)


def run_in_threads(count: int, work: Callable[[int], T]) -> list[T]:
    """Run ``work(i)`` in ``count`` threads released together by a barrier."""
    barrier = threading.Barrier(count)

    def start(index: int) -> T:
        barrier.wait(timeout=10)
        return work(index)

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(start, range(count)))


def migrate_together(stores: list[Store]) -> list[list[int]]:
    """Call ``migrate()`` on every store at once, one thread each."""
    return run_in_threads(len(stores), lambda index: stores[index].migrate())


# --- create, get, list ---------------------------------------------------------------------


def test_create_then_get_returns_what_was_stored(store: Store) -> None:
    alert = NewAlert("r-1:created", "webhook", {"text": "started"})
    created = new_rollout(store, "r-1", due_at=T0 + 5, alerts=[alert])

    assert created.version == 1
    assert store.get("r-1") == created
    assert created.phase == "pending"
    assert created.due_at == T0 + 5
    assert created.plan == {"endpoint": "ads-endpoint", "steps": [{"weight": 5, "bake": 600}]}
    (first,) = store.events("r-1")
    assert (first.seq, first.kind, first.to_phase, first.at) == (1, "created", "pending", T0)
    (outbox,) = drain_alerts(store)
    assert (outbox.rollout_id, outbox.event_seq, outbox.payload) == ("r-1", 1, {"text": "started"})
    assert outbox.created_at == T0
    assert outbox.delivered_at is None


def test_unknown_rollout_raises_not_found_everywhere(store: Store) -> None:
    with pytest.raises(RolloutNotFound):
        store.get("nope")
    with pytest.raises(RolloutNotFound):
        store.events("nope")
    with pytest.raises(RolloutNotFound):
        store.pending_commands("nope")
    with pytest.raises(RolloutNotFound):
        store.version_and_commands("nope")
    with pytest.raises(RolloutNotFound):
        store.add_command("nope", "pause", {}, T0)
    with pytest.raises(RolloutNotFound):
        store.commit(
            "nope",
            1,
            phase="paused",
            state={},
            due_at=None,
            updated_at=T0,
            events=[],
            alerts=[],
            consumed_commands=[],
        )


def test_duplicate_id_is_refused_and_writes_nothing(store: Store) -> None:
    new_rollout(store, "r-1", endpoint="a")
    with pytest.raises(DuplicateRollout):
        new_rollout(store, "r-1", endpoint="b", alerts=[NewAlert("dup", "slack", {})])
    assert store.get("r-1").endpoint == "a"
    assert store.active_for_endpoint("b") is None
    assert len(store.events("r-1")) == 1
    assert store.pending_alert_count() == 0


def test_one_active_rollout_per_endpoint(store: Store) -> None:
    first = new_rollout(store, "r-1", endpoint="ads")
    with pytest.raises(ActiveRolloutExists) as raised:
        new_rollout(store, "r-2", endpoint="ads", alerts=[NewAlert("r-2:created", "slack", {})])
    assert raised.value.endpoint == "ads"
    assert raised.value.active_id == "r-1"
    # The refused create left no trace.
    with pytest.raises(RolloutNotFound):
        store.get("r-2")
    assert store.pending_alert_count() == 0
    # Other endpoints are independent; a terminal record never holds its endpoint.
    new_rollout(store, "r-3", endpoint="search")
    new_rollout(store, "r-4", endpoint="ads", phase="aborted")
    assert store.active_for_endpoint("ads") == first
    assert store.active_for_endpoint("unknown") is None


def test_racing_creates_for_one_endpoint_exactly_one_wins(backend: Backend) -> None:
    # Separate stores = separate connections, as separate replicas would have.
    stores = [backend.open() for _ in range(6)]

    def attempt(index: int) -> str | None:
        try:
            new_rollout(
                stores[index],
                f"r-{index}",
                endpoint="ads",
                alerts=[NewAlert(f"r-{index}:created", "webhook", {})],
            )
        except ActiveRolloutExists:
            return None
        return f"r-{index}"

    winners = [winner for winner in run_in_threads(len(stores), attempt) if winner]
    assert len(winners) == 1
    active = stores[0].active_for_endpoint("ads")
    assert active is not None
    assert active.id == winners[0]
    assert [r.id for r in stores[0].list()] == winners
    assert stores[0].pending_alert_count() == 1


def test_every_terminal_phase_frees_the_endpoint_and_no_other_does(store: Store) -> None:
    assert TERMINAL | ACTIVE == PHASES
    assert not TERMINAL & ACTIVE
    for phase in sorted(PHASES - {"pending"}):
        endpoint = f"ep-{phase}"
        record = new_rollout(store, endpoint=endpoint)
        moved = advance(store, record, phase=phase)
        assert moved.terminal == (phase in TERMINAL)
        if phase in TERMINAL:
            assert store.active_for_endpoint(endpoint) is None
            assert new_rollout(store, endpoint=endpoint).version == 1
        else:
            assert store.active_for_endpoint(endpoint) == moved
            with pytest.raises(ActiveRolloutExists):
                new_rollout(store, endpoint=endpoint)


def test_reviving_a_finished_rollout_while_another_holds_the_endpoint_is_refused(
    store: Store,
) -> None:
    old = advance(store, new_rollout(store, "old", endpoint="ads"), phase="rolled_back")
    new_rollout(store, "new", endpoint="ads")
    with pytest.raises(ActiveRolloutExists) as raised:
        advance(store, old, phase="progressing", alerts=[NewAlert("revive", "slack", {})])
    assert raised.value.active_id == "new"
    assert store.get("old") == old
    assert len(store.events("old")) == 2
    assert store.pending_alert_count() == 0


def test_list_is_newest_first_and_filters(store: Store) -> None:
    a = advance(
        store, new_rollout(store, "a", endpoint="ads", created_at=T0 + 1), phase="succeeded"
    )
    b = new_rollout(store, "b", endpoint="search", created_at=T0 + 2)
    c = advance(store, new_rollout(store, "c", endpoint="ads", created_at=T0 + 3), phase="paused")

    assert [r.id for r in store.list()] == ["c", "b", "a"]
    assert store.list(limit=2) == [c, b]
    assert store.list(endpoint="ads") == [c, a]
    assert store.list(phases=["paused", "pending"]) == [c, b]
    assert store.list(endpoint="ads", phases=TERMINAL) == [a]
    assert store.list(phases=[]) == []
    assert store.list(endpoint="nowhere") == []
    with pytest.raises(ValueError, match="unknown phase"):
        store.list(phases=["bogus"])
    with pytest.raises(ValueError, match="limit"):
        store.list(limit=0)
    with pytest.raises(TypeError, match="not one string"):
        store.list(phases="paused")


def _summary_state(**changes: Any) -> dict[str, Any]:
    latency = {"bounds": [5.0, 10.0, 25.0], "counts": [10, 80, 10], "overflow": 0}
    state: dict[str, Any] = {
        "phase": "progressing",
        "started_at": T0 + 5,
        "step": 1,
        "candidate_weight": 25,
        "baseline": "ads-model-3",
        "candidate": {"requests": 400.0, "errors_5xx": 4.0, "latency": latency},
        "control": {"requests": 1200.0, "errors_5xx": 6.0, "latency": None},
        "last_verdict": {"outcome": "inconclusive", "reason": "x" * 500, "look": 3},
        # History that a summary must not need: windows and judge bookkeeping.
        "tracker": {"windows": [{"start": T0 + i, "requests": i} for i in range(200)]},
    }
    return {**state, **changes}


def test_summaries_read_the_listed_fields_from_plan_and_state(store: Store) -> None:
    plan = {
        "name": "ads-v4",
        "endpoint": "ads",
        "strategy": "canary",
        "candidate": {"entity_name": "main.ml.ads_model", "entity_version": "4"},
        "steps": [{"weight": 5, "bake": 600}, {"weight": 25, "bake": 600}, {"weight": 50}],
        "policy": {"name": "default", "deadline": 7200.0},
    }
    record = RolloutRecord(
        id="s1",
        endpoint="ads",
        phase="pending",
        version=1,
        plan=plan,
        state={"started_at": T0},
        created_at=T0,
        updated_at=T0,
        due_at=T0,
    )
    created = store.create(record, event("created", to="pending"), [])
    (fresh,) = store.list_summaries()
    assert (fresh.step, fresh.candidate_weight, fresh.verdict_outcome) == (0, 0, None)
    assert (fresh.candidate_arm.requests, fresh.candidate_arm.latency) == (0.0, None)
    assert fresh.started_at == T0
    assert fresh.baseline is None
    moved = store.commit(
        created.id,
        created.version,
        phase="progressing",
        state=_summary_state(),
        due_at=T0 + 30,
        updated_at=T0 + 20,
        events=[event(at=T0 + 20)],
        alerts=[],
        consumed_commands=[],
    )
    (summary,) = store.list_summaries()
    assert summary.id == "s1"
    assert summary.name == "ads-v4"
    assert summary.endpoint == "ads"
    assert (summary.phase, summary.strategy, summary.version) == ("progressing", "canary", 2)
    # The derived served name, as Databricks derives it (no explicit name in the plan).
    assert summary.candidate == "ads_model-4"
    assert (summary.candidate_entity, summary.candidate_version) == ("main.ml.ads_model", "4")
    assert (summary.step, summary.step_count, summary.candidate_weight) == (1, 3, 25)
    assert summary.baseline == "ads-model-3"
    assert summary.verdict_outcome == "inconclusive"
    assert summary.verdict_reason is not None
    assert 0 < len(summary.verdict_reason) <= 200
    assert (summary.created_at, summary.updated_at, summary.due_at) == (T0, T0 + 20, T0 + 30)
    assert summary.updated_at == moved.updated_at
    assert (summary.started_at, summary.deadline_seconds) == (T0 + 5, 7200.0)
    assert summary.candidate_arm.requests == 400.0
    assert summary.candidate_arm.errors_5xx == 4.0
    assert summary.candidate_arm.latency == _summary_state()["candidate"]["latency"]
    assert summary.control_arm.requests == 1200.0
    assert summary.control_arm.latency is None
    assert summary.cursor == (T0, "s1")


def test_summaries_of_linear_ab_and_named_plans(store: Store) -> None:
    plans = {
        "lin": {"strategy": "canary", "step_weight": 20, "bake": 60,
                "candidate": {"name": "explicit", "entity_name": "m", "entity_version": "2"}},
        "cap": {"strategy": "canary", "step_weight": 10, "max_weight": 30, "bake": 60,
                "candidate": {"entity_name": "m.x", "entity_version": "7"}},
        "ab": {"strategy": "ab", "split": 50,
               "candidate": {"entity_name": "m", "entity_version": "1"}},
        "bg": {"strategy": "blue_green",
               "candidate": {"entity_name": "m", "entity_version": "1"}},
    }  # fmt: skip
    for index, (rollout_id, plan) in enumerate(plans.items()):
        record = RolloutRecord(
            id=rollout_id,
            endpoint=f"e-{rollout_id}",
            phase="pending",
            version=1,
            plan={"endpoint": f"e-{rollout_id}", **plan},
            state={"started_at": T0},
            created_at=T0 + index,
            updated_at=T0 + index,
            due_at=None,
        )
        store.create(record, event("created", to="pending"), [])
    by_id = {summary.id: summary for summary in store.list_summaries()}
    # 20, 40, 60, 80 (100 is implied); 10, 20, 30; one judged step for A/B and blue/green.
    assert {key: value.step_count for key, value in by_id.items()} == {
        "lin": 4,
        "cap": 3,
        "ab": 1,
        "bg": 1,
    }
    assert by_id["lin"].candidate == "explicit"
    assert by_id["cap"].candidate == "x-7"
    assert by_id["ab"].strategy == "ab"
    assert by_id["bg"].strategy == "blue_green"
    assert by_id["bg"].due_at is None
    assert by_id["bg"].deadline_seconds is None


def test_summaries_page_newest_first_with_a_cursor_and_filters(store: Store) -> None:
    for index in range(7):
        # Two rollouts share each creation time: the id breaks the tie.
        new_rollout(store, f"p{index}", endpoint=f"e{index}", created_at=T0 + index // 2)
    advance(store, store.get("p3"), phase="succeeded")
    every = [summary.id for summary in store.list_summaries(limit=100)]
    assert every == ["p6", "p5", "p4", "p3", "p2", "p1", "p0"]
    pages: list[list[str]] = []
    cursor = None
    while True:
        page = store.list_summaries(limit=3, cursor=cursor)
        if not page:
            break
        pages.append([summary.id for summary in page])
        cursor = page[-1].cursor
    assert pages == [["p6", "p5", "p4"], ["p3", "p2", "p1"], ["p0"]]
    active = store.list_summaries(phases=ACTIVE, limit=2)
    assert [s.id for s in active] == ["p6", "p5"]
    assert [s.id for s in store.list_summaries(phases=ACTIVE, cursor=active[-1].cursor)] == [
        "p4",
        "p2",
        "p1",
        "p0",
    ]
    assert [s.id for s in store.list_summaries(phases=TERMINAL)] == ["p3"]
    assert [s.id for s in store.list_summaries(endpoint="e2")] == ["p2"]
    assert store.list_summaries(phases=[]) == []
    with pytest.raises(ValueError, match="unknown phase"):
        store.list_summaries(phases=["bogus"])
    with pytest.raises(ValueError, match="limit"):
        store.list_summaries(limit=0)
    with pytest.raises(TypeError, match="not one string"):
        store.list_summaries(phases="paused")


def test_a_cursor_is_stable_while_new_rollouts_arrive(store: Store) -> None:
    for index in range(6):
        new_rollout(store, f"old{index}", endpoint=f"o{index}", created_at=T0 + index)
    first = store.list_summaries(limit=4)
    for index in range(3):
        new_rollout(store, f"new{index}", endpoint=f"n{index}", created_at=T0 + 100 + index)
    rest = store.list_summaries(limit=4, cursor=first[-1].cursor)
    seen = [s.id for s in first] + [s.id for s in rest]
    assert seen == [f"old{index}" for index in range(5, -1, -1)]
    assert [s.id for s in store.list_summaries(limit=3)] == ["new2", "new1", "new0"]


def _due_rollouts(store: Store) -> None:
    """Due at T0 + 10 and + 30, later, never, and one finished (due at T0, never looked at)."""
    new_rollout(store, "late", endpoint="e1", due_at=T0 + 30)
    new_rollout(store, "early", endpoint="e2", due_at=T0 + 10)
    new_rollout(store, "future", endpoint="e3", due_at=T0 + 500)
    new_rollout(store, "whenever", endpoint="e4", due_at=None)
    done = new_rollout(store, "done", endpoint="e5", due_at=T0)
    advance(store, done, phase="succeeded", due_at=T0)


def test_due_returns_active_overdue_rollouts_oldest_due_first(store: Store) -> None:
    _due_rollouts(store)
    new_rollout(store, "exact", endpoint="e6", due_at=T0 + 100)

    assert [r.id for r in store.due(T0 + 100)] == ["early", "late", "exact"]
    assert [r.id for r in store.due(T0 + 100, limit=1)] == ["early"]
    assert store.due(T0) == []
    # Moving due_at forward takes a rollout out of the set.
    early = store.get("early")
    advance(store, early, due_at=T0 + 1000)
    assert [r.id for r in store.due(T0 + 100)] == ["late", "exact"]


def test_due_soon_reads_ids_and_due_times_and_leaves_out_other_holders_rollouts(
    store: Store,
) -> None:
    _due_rollouts(store)

    due = store.due_soon(T0 + 100)
    assert [(d.id, d.due_at) for d in due] == [("early", T0 + 10), ("late", T0 + 30)]
    assert [d.id for d in store.due_soon(T0 + 100, limit=1)] == ["early"]
    assert store.due_soon(T0) == []
    # Under b's live lease, "early" is b's: a's scan leaves it out, b's keeps it.
    assert store.claim_rollout("early", "b", 10, T0, WIRE) is not None
    assert [d.id for d in store.due_soon(T0 + 100, holder="a", now=T0 + 5)] == ["late"]
    assert [d.id for d in store.due_soon(T0 + 100, holder="b", now=T0 + 5)] == ["early", "late"]
    # Once b's lease has run out, it is anyone's again.
    assert [d.id for d in store.due_soon(T0 + 100, holder="a", now=T0 + 10)] == [
        "early",
        "late",
    ]
    with pytest.raises(ValueError, match="limit"):
        store.due_soon(T0, limit=0)


# --- commit ----------------------------------------------------------------------------------


def test_commit_updates_the_row_bumps_the_version_and_appends_events(store: Store) -> None:
    record = new_rollout(store, "r-1")
    committed = store.commit(
        "r-1",
        1,
        phase="progressing",
        state={"step": 1, "weights": [5, 95]},
        due_at=T0 + 600,
        updated_at=T0 + 1,
        events=[
            NewEvent("transition", "pending", "preparing", "plan accepted", {}, T0 + 1),
            NewEvent("transition", "preparing", "progressing", "5% live", {"weight": 5}, T0 + 1),
        ],
        alerts=[],
        consumed_commands=[],
    )
    assert committed == store.get("r-1")
    assert committed.version == 2
    assert store.version_of("r-1") == 2
    with pytest.raises(RolloutNotFound):
        store.version_of("nope")
    assert (committed.phase, committed.due_at, committed.updated_at) == (
        "progressing",
        T0 + 600,
        T0 + 1,
    )
    assert committed.state == {"step": 1, "weights": [5, 95]}
    # What the commit does not own stays as created.
    assert (committed.plan, committed.created_at, committed.endpoint) == (
        record.plan,
        record.created_at,
        record.endpoint,
    )
    assert [(e.seq, e.to_phase, e.data) for e in store.events("r-1")] == [
        (1, "pending", {}),
        (2, "preparing", {}),
        (3, "progressing", {"weight": 5}),
    ]


def test_replace_plan_swaps_the_plan_bumps_the_version_and_appends_its_event(
    store: Store,
) -> None:
    record = new_rollout(store, "r-1")
    advanced = advance(store, record)
    plan = {**record.plan, "alerts": [{"type": "webhook", "url": "https://x.example/h"}]}
    replaced = store.replace_plan(
        "r-1", advanced.version, plan=plan, updated_at=T0 + 5,
        event=NewEvent("alerts_replaced", "pending", "pending", "rotated", {"n": 1}, T0 + 5),
    )
    assert replaced == store.get("r-1")
    assert (replaced.plan, replaced.version, replaced.updated_at) == (plan, 3, T0 + 5)
    # What it does not own stays as the last commit left it.
    assert (replaced.state, replaced.phase, replaced.due_at) == (
        advanced.state, advanced.phase, advanced.due_at
    )
    assert [(e.seq, e.kind, e.data) for e in store.events("r-1")][-1] == (
        3, "alerts_replaced", {"n": 1}
    )
    # A decision taken on the old plan cannot commit over the new one, and vice versa.
    with pytest.raises(StaleVersion):
        advance(store, advanced)
    with pytest.raises(StaleVersion):
        store.replace_plan("r-1", advanced.version, plan=record.plan, updated_at=T0 + 6,
                           event=event(at=T0 + 6))
    assert store.get("r-1").plan == plan
    assert len(store.events("r-1")) == 3
    with pytest.raises(RolloutNotFound):
        store.replace_plan("nope", 1, plan=plan, updated_at=T0, event=event(at=T0))


def test_stale_version_writes_nothing(store: Store) -> None:
    record = new_rollout(store, "r-1")
    command = store.add_command("r-1", "pause", {}, T0)
    current = advance(store, record)  # version 2

    with pytest.raises(StaleVersion) as raised:
        store.commit(
            "r-1",
            record.version,
            phase="rolling_back",
            state={"lost": True},
            due_at=None,
            updated_at=T0 + 50,
            events=[event("stale")],
            alerts=[NewAlert("stale", "slack", {})],
            consumed_commands=[command.id],
        )
    assert (raised.value.expected, raised.value.actual) == (1, 2)
    assert store.get("r-1") == current
    assert [e.seq for e in store.events("r-1")] == [1, 2]
    assert store.pending_alert_count() == 0
    assert [c.id for c in store.pending_commands("r-1")] == [command.id]


def test_racing_commits_from_one_version_exactly_one_wins(backend: Backend) -> None:
    stores = [backend.open() for _ in range(4)]
    record = new_rollout(stores[0], "r-1")

    def attempt(index: int) -> bool:
        try:
            advance(
                stores[index],
                record,
                events=[event(writer=index), event(writer=index)],
                alerts=[NewAlert(f"writer-{index}", "webhook", {})],
            )
        except StaleVersion:
            return False
        return True

    outcomes = run_in_threads(len(stores), attempt)
    assert outcomes.count(True) == 1
    winner = outcomes.index(True)
    events = stores[0].events("r-1")
    assert [e.seq for e in events] == [1, 2, 3]
    assert [e.data for e in events[1:]] == [{"writer": winner}, {"writer": winner}]
    assert stores[0].get("r-1").version == 2
    assert [a.dedup_key for a in drain_alerts(stores[0])] == [f"writer-{winner}"]


def test_events_are_gapless_ordered_and_readable_from_a_seq(store: Store) -> None:
    record = new_rollout(store, "r-1")
    for batch in (3, 0, 1, 2):
        record = advance(store, record, events=[event(n=n) for n in range(batch)])
    events = store.events("r-1")
    assert [e.seq for e in events] == list(range(1, 8))
    assert all(e.rollout_id == "r-1" for e in events)
    assert [e.data for e in events[1:]] == [
        {"n": 0},
        {"n": 1},
        {"n": 2},
        {"n": 0},
        {"n": 0},
        {"n": 1},
    ]
    assert [e.seq for e in store.events("r-1", after_seq=5)] == [6, 7]
    assert store.events("r-1", after_seq=7) == []
    # Another rollout numbers its own events from 1.
    new_rollout(store, "r-2", endpoint="other")
    assert [e.seq for e in store.events("r-2")] == [1]


def test_alerts_are_tied_to_the_last_event_and_deduplicated_on_replay(store: Store) -> None:
    record = new_rollout(store, "r-1")
    rollback_alert = NewAlert("r-1:rolled_back", "slack", {"text": "rolled back", "n": 1})
    record = advance(
        store,
        record,
        phase="rolled_back",
        events=[event("verdict"), event("transition")],
        alerts=[rollback_alert, NewAlert("r-1:rolled_back", "slack", {"n": 2})],
    )
    # A replay of the same decision (say, by a runner that crashed after committing and
    # re-decided) carries the same key: the rest of the commit goes through, the alert does not.
    advance(store, record, events=[event("transition")], alerts=[rollback_alert])

    (alert,) = drain_alerts(store)
    assert alert.dedup_key == "r-1:rolled_back"
    assert alert.payload == {"text": "rolled back", "n": 1}
    assert alert.event_seq == 3
    assert [e.seq for e in store.events("r-1")] == [1, 2, 3, 4]


def test_alerts_need_an_event_in_the_same_commit(store: Store) -> None:
    record = new_rollout(store, "r-1")
    with pytest.raises(ValueError, match="event"):
        advance(store, record, events=[], alerts=[NewAlert("k", "slack", {})])
    assert store.get("r-1").version == 1


def test_refused_values_raise_value_error_before_writing(store: Store) -> None:
    record = new_rollout(store, "r-1")
    bad_commits: list[dict[str, Any]] = [
        {"phase": "exploded"},
        {"state": {"x": math.nan}},
        {"state": {"text": "nul\x00byte"}},
        {"state": {"text": "lone \ud800 surrogate"}},
        {"state": {"not": {1, 2}}},
        {"events": [event(bad=math.inf)]},
        {"events": [NewEvent("t", "bogus", None, "", {}, T0)]},
        {"due_at": math.nan},
    ]
    for overrides in bad_commits:
        arguments: dict[str, Any] = {
            "phase": "progressing",
            "state": {},
            "due_at": None,
            "updated_at": T0 + 1,
            "events": [event()],
            "alerts": [],
            "consumed_commands": [],
        }
        arguments.update(overrides)
        with pytest.raises(ValueError):  # noqa: PT011 - the message varies by refused value
            store.commit("r-1", 1, **arguments)
    with pytest.raises(ValueError, match="JSON object"):
        store.create(
            RolloutRecord(
                id="r-2",
                endpoint="e",
                phase="pending",
                version=1,
                plan=[],  # type: ignore[arg-type]  # a list where an object belongs, on purpose
                state={},
                created_at=T0,
                updated_at=T0,
                due_at=None,
            ),
            event(),
            [],
        )
    with pytest.raises(ValueError, match="unknown command"):
        store.add_command("r-1", "explode", {}, T0)
    assert store.get("r-1") == record
    assert len(store.events("r-1")) == 1


# --- commands ------------------------------------------------------------------------------


def test_commands_are_queued_in_order_and_consumed_with_the_commit(store: Store) -> None:
    record = new_rollout(store, "r-1")
    pause = store.add_command("r-1", "pause", {"by": "ana"}, T0 + 1)
    promote = store.add_command("r-1", "promote", {"by": "bo", "note": "ünïcode"}, T0 + 2)
    assert (pause.kind, pause.payload, pause.created_at, pause.consumed_at) == (
        "pause",
        {"by": "ana"},
        T0 + 1,
        None,
    )
    assert store.pending_commands("r-1") == [pause, promote]
    assert store.version_and_commands("r-1") == (record.version, [pause, promote])

    record = advance(store, record, phase="paused", consumed=[pause.id, pause.id])
    assert store.pending_commands("r-1") == [promote]
    assert store.version_and_commands("r-1") == (record.version, [promote])
    # Consuming it again means deciding on an input that was already acted on: stale.
    with pytest.raises(StaleVersion):
        advance(store, record, consumed=[promote.id, pause.id])
    assert store.pending_commands("r-1") == [promote]
    assert store.get("r-1") == record

    other = new_rollout(store, "r-2", endpoint="other")
    with pytest.raises(ValueError, match="not a command of"):
        advance(store, other, consumed=[promote.id])
    with pytest.raises(ValueError, match="not a command of"):
        advance(store, other, consumed=[10**9])
    assert store.pending_commands("r-1") == [promote]
    assert store.pending_commands("r-2") == []
    assert store.get("r-2").version == 1


# --- alert outbox --------------------------------------------------------------------------


def test_claim_leases_alerts_and_counts_attempts(store: Store) -> None:
    new_rollout(store, "r-1", alerts=[NewAlert(f"k{n}", "webhook", {"n": n}) for n in range(3)])
    assert store.pending_alert_count() == 3
    assert store.claim_alerts(T0 - 1, 10, 30) == []  # not yet due

    first = store.claim_alerts(T0, 2, 30)
    assert [a.dedup_key for a in first] == ["k0", "k1"]
    assert all(a.attempts == 1 and a.next_attempt_at == T0 + 30 for a in first)
    # Leased alerts are not handed out again while the lease runs.
    assert [a.dedup_key for a in store.claim_alerts(T0 + 1, 10, 30)] == ["k2"]
    assert store.claim_alerts(T0 + 29, 10, 30) == []
    # A dispatcher that died mid-send loses nothing: the lease runs out, the alert comes back.
    again = store.claim_alerts(T0 + 30, 10, 30)
    assert [(a.dedup_key, a.attempts) for a in again] == [("k0", 2), ("k1", 2)]
    assert store.pending_alert_count() == 3
    with pytest.raises(ValueError, match="lease_seconds"):
        store.claim_alerts(T0, 1, 0)


def test_delivered_and_failed_bookkeeping(store: Store) -> None:
    new_rollout(store, "r-1", alerts=[NewAlert("ok", "slack", {}), NewAlert("flaky", "slack", {})])
    ok, flaky = store.claim_alerts(T0, 10, 30)

    store.mark_delivered(ok.id, T0 + 1)
    store.mark_delivered(ok.id, T0 + 5)  # a duplicate report keeps the first time
    store.mark_failed(flaky.id, "HTTP 503 from hooks.slack.com", T0 + 60)
    assert store.pending_alert_count() == 1
    assert store.claim_alerts(T0 + 59, 10, 30) == []
    (retry,) = store.claim_alerts(T0 + 60, 10, 30)
    assert (retry.id, retry.attempts, retry.last_error) == (
        flaky.id,
        2,
        "HTTP 503 from hooks.slack.com",
    )

    store.mark_delivered(retry.id, T0 + 61)
    # A late failure report from another dispatcher does not revive a delivered alert.
    store.mark_failed(retry.id, "timeout", T0 + 62)
    assert store.pending_alert_count() == 0
    assert store.claim_alerts(T0 + 10_000, 10, 30) == []
    with pytest.raises(AlertNotFound):
        store.mark_delivered(10**9, T0)
    with pytest.raises(AlertNotFound):
        store.mark_failed(10**9, "x", T0)


def test_concurrent_claimers_get_disjoint_alerts(backend: Backend) -> None:
    stores = [backend.open() for _ in range(4)]
    keys = [f"k{n}" for n in range(80)]
    new_rollout(stores[0], "r-1", alerts=[NewAlert(key, "webhook", {}) for key in keys])

    def claim_until_empty(index: int) -> list[str]:
        claimed: list[str] = []
        while batch := stores[index].claim_alerts(T0, 3, 300):
            claimed += [alert.dedup_key for alert in batch]
        return claimed

    per_claimer = run_in_threads(len(stores), claim_until_empty)
    everything = [key for claimed in per_claimer for key in claimed]
    assert sorted(everything) == sorted(keys)  # each alert claimed exactly once
    assert len(set(everything)) == len(everything)


def controller_alert(key: str, **payload: Any) -> NewAlert:
    return NewAlert(key, "webhook", {"event": "workspace_unreachable", **payload})


def test_controller_alerts_belong_to_no_rollout_and_are_delivered_like_the_others(
    store: Store,
) -> None:
    record = new_rollout(store, alerts=[NewAlert("r:1", "webhook", {"n": 1})])
    assert store.add_controller_alerts([controller_alert("c:1", n=2)], T0 + 1) == 1
    # A replayed insert (the same outage seen again) is skipped; a new key is not.
    assert store.add_controller_alerts(
        [controller_alert("c:1", n=3), controller_alert("c:2", n=4)], T0 + 2
    ) == 1
    assert store.pending_alert_count() == 3
    claimed = drain_alerts(store)
    assert [(a.dedup_key, a.rollout_id, a.event_seq) for a in claimed] == [
        ("r:1", record.id, 1),
        ("c:1", None, None),
        ("c:2", None, None),
    ]
    assert claimed[1].payload == {"event": "workspace_unreachable", "n": 2}
    assert claimed[1].created_at == T0 + 1
    assert claimed[1].attempts == 1
    store.mark_failed(claimed[1].id, "receiver down", T0 + 100)
    store.mark_delivered(claimed[2].id, T0 + 3)
    assert store.pending_alert_count() == 2
    with pytest.raises(ValueError, match=r"NaN|JSON"):
        store.add_controller_alerts([controller_alert("c:3", x=math.nan)], T0 + 4)
    with pytest.raises(ValueError, match="at"):
        store.add_controller_alerts([controller_alert("c:3")], math.inf)
    assert store.pending_alert_count() == 2, "nothing written when refused"


def test_the_outbox_keeps_its_rows_and_ids_across_migration_5(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    import rollout.store._sql as sql  # noqa: PLC0415 -- the list migrate() reads

    monkeypatch.setattr(sql, "MIGRATIONS", tuple(m for m in MIGRATIONS if m.version < 5))
    old = backend.open()
    record = new_rollout(old, alerts=[NewAlert("r:1", "webhook", {"n": 1}),
                                      NewAlert("r:2", "slack", {"n": 2})])
    first = drain_alerts(old)
    old.mark_delivered(first[0].id, T0 + 5)
    old.close()
    monkeypatch.setattr(sql, "MIGRATIONS", MIGRATIONS)

    store = backend.open(migrate=False)
    assert store.migrate() == [m.version for m in MIGRATIONS if m.version >= 5]
    assert store.pending_alert_count() == 1
    store.add_controller_alerts([controller_alert("c:1")], T0 + 6)
    # The second alert's lease (from the claim before the migration) runs out at T0 + 10_060.
    again = drain_alerts(store, now=T0 + 20_000)
    assert [(a.dedup_key, a.rollout_id, a.attempts) for a in again] == [
        ("r:2", record.id, 2),
        ("c:1", None, 1),
    ]
    assert again[0].id == first[1].id, "ids kept"
    assert again[1].id > first[1].id, "new ids after the old ones"


# --- leases --------------------------------------------------------------------------------


def test_leases_acquire_renew_expire_and_release(store: Store) -> None:
    assert store.try_lease("scheduler", "a", 10, T0)
    assert not store.try_lease("scheduler", "b", 10, T0 + 5)
    assert store.try_lease("scheduler", "a", 10, T0 + 5)  # renewal, now until T0 + 15
    assert not store.try_lease("scheduler", "b", 10, T0 + 14)
    assert store.try_lease("scheduler", "b", 10, T0 + 15)  # expired: taken over
    assert not store.release_lease("scheduler", "a")  # not a's any more
    assert not store.try_lease("scheduler", "a", 10, T0 + 16)
    assert store.release_lease("scheduler", "b")
    assert store.try_lease("scheduler", "a", 10, T0 + 16)
    assert store.try_lease("outbox", "b", 10, T0 + 16)  # names are independent


def test_racing_for_a_free_lease_exactly_one_wins(backend: Backend) -> None:
    stores = [backend.open() for _ in range(4)]
    won = run_in_threads(len(stores), lambda i: stores[i].try_lease("x", f"h{i}", 30, T0))
    assert won.count(True) == 1


def test_live_leases_lists_unexpired_leases_by_prefix(store: Store) -> None:
    assert store.try_lease("replica:a", "a", 10, T0)
    assert store.try_lease("replica:b", "b", 5, T0)
    assert store.try_lease("driver", "a", 10, T0)
    live = store.live_leases("replica:", T0 + 6)  # b's expired at T0 + 5
    assert [(lease.name, lease.holder, lease.expires_at) for lease in live] == [
        ("replica:a", "a", T0 + 10)
    ]
    assert [lease.name for lease in store.live_leases("", T0)] == [
        "driver",
        "replica:a",
        "replica:b",
    ]
    with pytest.raises(ValueError, match="prefix"):
        store.live_leases("replica%", T0)


# --- rollout ownership and fencing ---------------------------------------------------------

WIRE = 4.0  # seconds a config call may live: what a new owner waits past the old lease


def test_renew_held_extends_every_live_lease_of_a_holder_at_once(store: Store) -> None:
    for rollout_id in ("r-1", "r-2", "r-3"):
        assert store.claim_rollout(rollout_id, "a", 10, T0, WIRE) is not None
    assert store.claim_rollout("r-4", "b", 10, T0, WIRE) is not None
    store.release_rollout("r-3", "a", 1, T0 + 1, quiet=True)
    renewed = store.renew_held("a", 10, T0 + 5)
    assert [(o.rollout_id, o.token, o.expires_at) for o in renewed] == [
        ("r-1", 1, T0 + 15),
        ("r-2", 1, T0 + 15),
    ]
    assert [o.expires_at for o in store.owned_by("b", T0 + 5)] == [T0 + 10], "b's untouched"
    # Expired leases are not renewed: they may have been taken over meanwhile.
    assert store.renew_held("a", 10, T0 + 15) == []
    assert store.owned_by("a", T0 + 15) == []


def test_claiming_a_rollout_gives_tokens_that_grow_with_every_change_of_holder(
    store: Store,
) -> None:
    first = store.claim_rollout("r-1", "a", 10, T0, WIRE)
    assert first is not None
    assert (first.holder, first.token, first.expires_at) == ("a", 1, T0 + 10)
    assert first.act_after == T0  # nobody held it before: nothing can be on the wire
    assert store.claim_rollout("r-1", "b", 10, T0 + 5, WIRE) is None  # a's lease is live
    renewed = store.claim_rollout("r-1", "a", 10, T0 + 5, WIRE)
    assert renewed is not None
    assert (renewed.token, renewed.expires_at, renewed.acquired_at) == (1, T0 + 15, T0)
    assert store.claim_rollout("r-1", "b", 10, T0 + 14.9, WIRE) is None
    taken = store.claim_rollout("r-1", "b", 10, T0 + 15, WIRE)  # expired: b takes over
    assert taken is not None
    assert (taken.holder, taken.token, taken.acquired_at) == ("b", 2, T0 + 15)
    # What a sent before its lease ended may land until then: b must not act before.
    assert taken.act_after == T0 + 15 + WIRE
    back = store.claim_rollout("r-1", "a", 10, T0 + 30, WIRE)
    assert back is not None
    assert back.token == 3  # a again, but a new tenure: its old token is dead
    assert store.claim_rollout("r-2", "b", 10, T0, WIRE) is not None  # rollouts independent
    assert store.owner_of("r-1") == back
    assert store.owner_of("r-9") is None
    assert [o.rollout_id for o in store.owned_by("a", T0 + 31)] == ["r-1"]
    assert [o.rollout_id for o in store.owned_by("b", T0 + 5)] == ["r-2"]
    assert store.owned_by("b", T0 + 10) == []  # r-2's lease ran out


def test_renewing_with_a_stale_token_or_after_expiry_is_lease_lost(store: Store) -> None:
    first = store.claim_rollout("r-1", "a", 10, T0, WIRE)
    assert first is not None
    renewed = store.renew_rollout("r-1", "a", first.token, 10, T0 + 8)
    assert renewed.expires_at == T0 + 18
    assert renewed.token == first.token
    with pytest.raises(LeaseLost):
        store.renew_rollout("r-1", "a", first.token + 1, 10, T0 + 9)  # not its token
    with pytest.raises(LeaseLost):
        store.renew_rollout("r-1", "b", first.token, 10, T0 + 9)  # not its lease
    with pytest.raises(LeaseLost):
        store.renew_rollout("r-1", "a", first.token, 10, T0 + 18)  # expired
    taken = store.claim_rollout("r-1", "b", 10, T0 + 18, WIRE)
    assert taken is not None
    with pytest.raises(LeaseLost) as lost:
        store.renew_rollout("r-1", "a", first.token, 10, T0 + 19)
    assert isinstance(lost.value, StaleVersion)  # handled like any stale write
    with pytest.raises(LeaseLost):
        store.renew_rollout("r-9", "a", 1, 10, T0)  # never claimed


def test_a_quiet_release_lets_the_next_owner_act_at_once(store: Store) -> None:
    first = store.claim_rollout("r-1", "a", 10, T0, WIRE)
    assert first is not None
    assert not store.release_rollout("r-1", "a", first.token + 1, T0 + 1, quiet=True)
    assert store.release_rollout("r-1", "a", first.token, T0 + 2, quiet=True)
    assert store.owned_by("a", T0 + 2) == []
    taken = store.claim_rollout("r-1", "b", 10, T0 + 3, WIRE)
    assert taken is not None
    assert (taken.token, taken.act_after) == (2, T0 + 2)
    # Released with a call possibly still out: the next owner waits out its life.
    assert store.release_rollout("r-1", "b", taken.token, T0 + 4, quiet=False)
    again = store.claim_rollout("r-1", "a", 10, T0 + 5, WIRE)
    assert again is not None
    assert (again.token, again.act_after) == (3, T0 + 4 + WIRE)


def test_a_fenced_commit_needs_the_current_token(store: Store) -> None:
    record = new_rollout(store, "r-1")
    first = store.claim_rollout("r-1", "a", 10, T0, WIRE)
    assert first is not None

    def commit(version: int, fence: Fence, at: float) -> RolloutRecord:
        return store.commit(
            "r-1",
            version,
            phase="preparing",
            state={"step": version},
            due_at=None,
            updated_at=at,
            events=[event(at=at)],
            alerts=[NewAlert(f"r-1:{version}", "webhook", {})],
            consumed_commands=[],
            fence=fence,
        )

    committed = commit(record.version, Fence("a", first.token), T0 + 1)
    assert committed.version == 2
    taken = store.claim_rollout("r-1", "b", 10, T0 + 10, WIRE)
    assert taken is not None
    with pytest.raises(LeaseLost):
        commit(committed.version, Fence("a", first.token), T0 + 11)
    with pytest.raises(StaleVersion):  # LeaseLost is one: callers need no new handler
        commit(committed.version, Fence("a", first.token), T0 + 11)
    assert store.get("r-1").version == 2  # nothing written, no event, no alert
    assert [e.seq for e in store.events("r-1")] == [1, 2]
    assert len(drain_alerts(store)) == 1
    assert commit(committed.version, Fence("b", taken.token), T0 + 12).version == 3
    with pytest.raises(LeaseLost):  # b's own lease, expired
        commit(3, Fence("b", taken.token), T0 + 20)


def test_racing_claimers_of_one_rollout_exactly_one_wins(backend: Backend) -> None:
    stores = [backend.open() for _ in range(4)]
    for round_ in range(3):
        now = T0 + 100 * round_  # each round starts after the last winner's lease expired
        won = run_in_threads(
            len(stores),
            lambda i, now=now: stores[i].claim_rollout("r-1", f"h{i}", 30, now, WIRE),
        )
        winners = [o for o in won if o is not None]
        assert len(winners) == 1
        assert winners[0].token == round_ + 1


def test_count_active_counts_non_terminal_rollouts(store: Store) -> None:
    assert store.count_active() == 0
    new_rollout(store, "r-1", endpoint="e1")
    new_rollout(store, "r-2", endpoint="e2", phase="succeeded")
    new_rollout(store, "r-3", endpoint="e3", phase="paused")
    assert store.count_active() == 2
# --- metric windows, step summaries, summaries ---------------------------------------------


def window(entity: str | None, start_ms: int, requests: float = 100.0) -> StoredWindow:
    return StoredWindow(entity, start_ms, {"requests": requests, "latency": [1, 2.5, None]})


def commit_windows(
    store: Store,
    record: RolloutRecord,
    changes: WindowChanges,
    *,
    phase: str | None = None,
    summary: SummaryFields | None = None,
) -> RolloutRecord:
    return store.commit(
        record.id,
        record.version,
        phase=phase or record.phase,
        state=record.state,
        due_at=None,
        updated_at=record.updated_at + 1,
        events=[],
        alerts=[],
        consumed_commands=[],
        windows=changes,
        summary=summary,
    )


def test_windows_are_upserted_dropped_before_an_instant_and_read_in_order(store: Store) -> None:
    record = new_rollout(store, "r-1", phase="progressing")
    other = new_rollout(store, "r-2", endpoint="other", phase="progressing")
    assert store.windows("r-1") == []
    record = commit_windows(
        store,
        record,
        WindowChanges(upsert=[window("cand", 120_000), window("base", 60_000), window(None, 0)]),
    )
    commit_windows(store, other, WindowChanges(upsert=[window("cand", 0)]))
    assert store.windows("r-1") == [
        window(None, 0),
        window("base", 60_000),
        window("cand", 120_000),
    ]
    later = store.windows("r-1", since_ms=60_000)
    assert later == [window("base", 60_000), window("cand", 120_000)]
    # A revision replaces its window; windows before the instant go, in the same commit.
    record = commit_windows(
        store,
        record,
        WindowChanges(upsert=[window("cand", 120_000, requests=7.0)], drop_before_ms=60_000),
    )
    assert store.windows("r-1") == [window("base", 60_000), window("cand", 120_000, 7.0)]
    assert store.windows("r-2") == [window("cand", 0)]  # another rollout's are untouched
    with pytest.raises(RolloutNotFound):
        store.windows("nope")


def test_a_terminal_phase_drops_the_windows_and_keeps_the_step_summaries(store: Store) -> None:
    record = new_rollout(store, "r-1", phase="progressing")
    first = StepSummary("0@1", T0, {"step": 0, "requests": 1200})
    record = commit_windows(
        store, record, WindowChanges(upsert=[window("cand", 0)], summaries=[first])
    )
    assert store.step_summaries("r-1") == [first]
    last = StepSummary("1@2", T0 + 600, {"step": 1, "requests": 2400})
    commit_windows(
        store,
        record,
        WindowChanges(upsert=[window("cand", 60_000)], summaries=[last]),
        phase="succeeded",
    )
    assert store.windows("r-1") == []
    assert store.step_summaries("r-1") == [first, last]
    with pytest.raises(RolloutNotFound):
        store.step_summaries("nope")


def test_windows_are_written_with_their_decision_or_not_at_all(store: Store) -> None:
    record = new_rollout(store, "r-1", phase="progressing")
    current = commit_windows(store, record, WindowChanges(upsert=[window("cand", 0)]))
    with pytest.raises(StaleVersion):
        commit_windows(
            store,
            record,  # version 1: stale
            WindowChanges(
                upsert=[window("cand", 60_000)],
                drop_before_ms=10**12,
                summaries=[StepSummary("0@1", T0, {})],
            ),
        )
    assert store.windows("r-1") == [window("cand", 0)]
    assert store.step_summaries("r-1") == []
    with pytest.raises(ValueError, match="window"):
        commit_windows(
            store,
            current,
            WindowChanges(upsert=[window("cand", 60_000), StoredWindow("x", 1, {"v": math.nan})]),
        )
    assert store.windows("r-1") == [window("cand", 0)]
    assert store.get("r-1") == current


def test_reads_do_not_wait_behind_the_store_lock(store: Store) -> None:
    # The lock writers take: a read must not queue behind a commit in progress.
    if isinstance(store, SqliteStore | PostgresStore):
        record = new_rollout(store, "r-1")
        with store._lock:
            result: list[Any] = []
            reader = threading.Thread(
                target=lambda: result.extend([store.get("r-1"), store.list_summaries()])
            )
            reader.start()
            reader.join(timeout=10)
            assert not reader.is_alive(), "a read waited for the writers' lock"
        assert result[0] == record
        assert [s.id for s in result[1]] == ["r-1"]


# --- schema, lifecycle ---------------------------------------------------------------------


def test_migrations_are_ordered_applied_once_and_keep_data(backend: Backend) -> None:
    versions = [m.version for m in MIGRATIONS]
    assert versions == list(range(1, len(versions) + 1)), "numbered 1, 2, 3, ... in order"

    store = backend.open(migrate=False)
    with pytest.raises(SchemaError, match="migrate"):
        store.get("r-1")
    assert store.migrate() == versions
    assert store.migrate() == []
    new_rollout(store, "r-1", alerts=[NewAlert("k", "webhook", {})])
    store.close()

    reopened = backend.open(migrate=False)
    assert reopened.migrate() == []
    assert reopened.get("r-1").version == 1
    assert reopened.pending_alert_count() == 1


def test_concurrent_migrations_apply_each_migration_once(backend: Backend) -> None:
    stores = [backend.open(migrate=False) for _ in range(4)]
    applied = migrate_together(stores)
    assert sorted(v for result in applied for v in result) == [m.version for m in MIGRATIONS]
    new_rollout(stores[0], "r-1")
    assert stores[3].get("r-1").version == 1


def test_many_stores_opening_a_new_sqlite_file_at_once(tmp_path: Path) -> None:
    # SQLite only: the first opens of a new file race to switch it to WAL, a lock wait SQLite
    # does not route through its busy handler; every store must still come up.
    for attempt in range(40):
        with sqlite_backend(tmp_path / str(attempt)) as backend:
            stores = [backend.open(migrate=False) for _ in range(8)]
            migrate_together(stores)
            new_rollout(stores[0], "r-1")
            assert all(store.get("r-1").version == 1 for store in stores)


def test_a_schema_newer_than_the_code_is_refused(backend: Backend) -> None:
    backend.open()
    backend.raw(
        "INSERT INTO schema_migrations (version, name, applied_at) VALUES (?, ?, ?)",
        (999, "from newer code", T0),
    )
    with pytest.raises(SchemaError, match="newer"):
        backend.open()


def test_ping_and_close(backend: Backend) -> None:
    store = backend.open()
    store.ping()
    store.close()
    store.close()
    with pytest.raises(StoreUnavailable):
        store.ping()
    with pytest.raises(StoreUnavailable):
        store.get("r-1")
    assert StoreUnavailable.retryable
    assert not StaleVersion.retryable


def test_the_write_probe_writes_and_holds_nothing(backend: Backend) -> None:
    store = backend.open()
    assert store.try_lease("scheduler", "a", 60, T0)
    store.probe_write(T0)
    store.probe_write(T0 + 1)  # again and again: an upsert
    assert not store.try_lease("scheduler", "b", 60, T0 + 2), "other leases are untouched"
    # Expired as soon as written: the probe's row never stands in anyone's way.
    assert store.try_lease(WRITE_PROBE_LEASE, "someone", 60, T0 + 2)
    store.probe_write(T0 + 3)
    with pytest.raises(ValueError, match="now"):
        store.probe_write(math.nan)
    store.close()
    with pytest.raises(StoreUnavailable):
        store.probe_write(T0 + 4)


def test_a_read_only_database_refuses_the_write_probe_but_still_reads(backend: Backend) -> None:
    writable = backend.open()
    record = new_rollout(writable)
    read_only = backend.open_read_only()
    read_only.ping()
    assert read_only.get(record.id) == record
    with pytest.raises(StoreUnavailable, match=r"read-only|readonly"):
        read_only.probe_write(T0)
    with pytest.raises(StoreUnavailable):
        advance(read_only, record)
    assert writable.get(record.id) == record, "nothing was written"
    writable.probe_write(T0)


def test_unreachable_database_raises_store_unavailable(backend: Backend) -> None:
    store = open_store(backend.unreachable_url)
    try:
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.ping()
        with pytest.raises(StoreUnavailable):
            store.migrate()
        assert time.monotonic() - started < 10
    finally:
        store.close()


NESTED: dict[str, Any] = {
    "text": 'Zürich \u2013 東京, Ελλάδα, 🚀🔥, \u2028, tab\t, "quoted", back\\slash',
    "not_a_nul": "\\u0000 is six characters here",
    "emoji key 🔑": [1, -2, 3.5, 1e-9, 0.1, T0 + 0.125, True, False, None],
    "deep": {"a": [[{"b": {"c": ["ÿ", {"d": []}]}}]], "empty": {}},
    "big": 2**63 + 1,
    "floats": [1e16, 1e300, -2.5e-300, 5e-324, 1.7976931348623157e308],
}


def test_json_round_trips_nested_unicode_data_everywhere(store: Store) -> None:
    record = RolloutRecord("r-☃", "endpoint-ü", "pending", 1, NESTED, NESTED, T0, T0, None)
    created = store.create(
        record,
        NewEvent("créé", None, "pending", "pourquoi ✓", NESTED, T0),
        [NewAlert("clé-☃", "slack", NESTED)],
    )
    command = store.add_command("r-☃", "abort", NESTED, T0)

    fetched = store.get("r-☃")
    assert fetched == created
    assert fetched.plan == NESTED
    assert fetched.state == NESTED
    assert [type(v) for v in fetched.plan["floats"]] == [float] * 5
    (first,) = store.events("r-☃")
    assert (first.kind, first.reason, first.data) == ("créé", "pourquoi ✓", NESTED)
    (alert,) = drain_alerts(store)
    assert (alert.dedup_key, alert.payload) == ("clé-☃", NESTED)
    assert store.pending_commands("r-☃") == [command]
    assert command.payload == NESTED
    assert store.list(endpoint="endpoint-ü") == [created]


# Any text the store keeps: everything but NUL and lone surrogates (refused, tested above).
json_text = st.text(st.characters(exclude_characters="\x00", exclude_categories=["Cs"]))
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(json_text, children, max_size=4)
    ),
    max_leaves=20,
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(state=st.dictionaries(json_text, json_values))
def test_any_json_object_round_trips(store: Store, state: dict[str, Any]) -> None:
    # Floats compare by value, so -0.0 == 0.0 is fine; ints stay ints, floats stay floats.
    created = new_rollout(store, endpoint=f"e-{uuid.uuid4().hex}")
    committed = store.commit(
        created.id,
        1,
        phase="paused",
        state=state,
        due_at=None,
        updated_at=T0,
        events=[],
        alerts=[],
        consumed_commands=[],
    )
    fetched = store.get(created.id)
    assert fetched.state == state == committed.state
    assert _types(fetched.state) == _types(state)


def _types(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _types(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_types(item) for item in value]
    return type(value)


# --- threads and processes -----------------------------------------------------------------


def test_one_store_shared_by_many_threads(store: Store) -> None:
    def work(index: int) -> int:
        record = new_rollout(store, f"r-{index}", endpoint=f"e-{index}")
        for _ in range(10):
            record = advance(
                store, record, alerts=[NewAlert(f"r-{index}:{record.version}", "webhook", {})]
            )
            store.list(limit=5)
            store.due(T0)
        return record.version

    assert run_in_threads(8, work) == [11] * 8
    assert store.pending_alert_count() == 80
    for index in range(8):
        assert [e.seq for e in store.events(f"r-{index}")] == list(range(1, 12))


@pytest.mark.postgres
def test_connection_loss_raises_store_unavailable_then_recovers() -> None:
    # PostgreSQL only: a server can drop a client's connection; an SQLite file cannot.
    with postgres_backend() as backend:
        victim = f"victim_{uuid.uuid4().hex[:12]}"
        backend.url += f"&application_name={victim}"
        store = backend.open()
        new_rollout(store, "r-1")
        backend.raw(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = ?",
            (victim,),
        )
        with pytest.raises(StoreUnavailable):
            store.get("r-1")
        assert store.get("r-1").version == 1  # reconnected by itself


CRASHING_WRITER = textwrap.dedent(
    """
    import sys
    from rollout.store import NewAlert, NewEvent, open_store

    store = open_store(sys.argv[1])
    rollout_id = sys.argv[2]
    record = store.get(rollout_id)
    while True:
        n = record.version  # this commit is number n; the version becomes n + 1
        record = store.commit(
            rollout_id, record.version, phase="progressing",
            state={"commits": n, "padding": "x" * 4000}, due_at=float(n), updated_at=float(n),
            events=[
                NewEvent("step", "progressing", "progressing", "first half", {"n": n}, float(n)),
                NewEvent("step", "progressing", "progressing", "second half", {"n": n}, float(n)),
            ],
            alerts=[NewAlert(f"{rollout_id}:{n}", "webhook", {"n": n})],
            consumed_commands=[],
        )
        print(n, flush=True)
    """
)


def _read_lines(stream: Any, into: queue.Queue[str]) -> None:
    for line in stream:
        into.put(line)


def _kill_writer_at_random(url: str, rng: random.Random) -> int:
    """Run CRASHING_WRITER, SIGKILL it during a random commit; the last commit it printed."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_WRITER, url, "r-1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(child.stdout, lines))
    reader.start()
    printed_lines = 0
    last = 0
    target = rng.randint(1, 25)
    deadline = time.monotonic() + 20
    try:
        while printed_lines < target:
            if child.poll() is not None or time.monotonic() > deadline:
                stderr = child.stderr.read() if child.poll() is not None and child.stderr else ""
                pytest.fail(
                    f"the writer stopped or stalled after {printed_lines} commits: {stderr}"
                )
            try:
                last = int(lines.get(timeout=0.2))
                printed_lines += 1
            except queue.Empty:
                continue
        # Land the kill at a random moment, most likely inside one of the next commits.
        time.sleep(rng.uniform(0, 0.01))
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        reader.join(timeout=10)
    while not lines.empty():
        last = int(lines.get())
    return last


def test_a_writer_killed_mid_commit_leaves_a_consistent_database(backend: Backend) -> None:
    new_rollout(backend.open(), "r-1")
    rng = random.Random()
    commits = 0
    for _ in range(3):
        printed = _kill_writer_at_random(backend.url, rng)
        store = backend.open()  # a fresh connection, as after a restart
        record = store.get("r-1")
        before, commits = commits, record.version - 1
        # Every commit the writer reported is there; at most one more got in before the kill.
        assert printed <= commits <= printed + 1
        assert commits > before
        assert record.state["commits"] == commits
        events = store.events("r-1")
        assert [e.seq for e in events] == list(range(1, 2 * commits + 2))
        assert [e.data["n"] for e in events[1:]] == [n for n in range(1, commits + 1) for _ in "ab"]
        assert store.pending_alert_count() == commits
        if isinstance(store, SqliteStore):
            with sqlite3.connect(store.path) as check:
                assert check.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            check.close()
    claimed = drain_alerts(store)
    assert [a.event_seq for a in claimed] == [2 * n + 1 for n in range(1, commits + 1)]
    # And the database takes new commits after the crashes.
    assert advance(store, store.get("r-1")).version == commits + 2


# --- opening -------------------------------------------------------------------------------


def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///data/rollout.db")
    assert isinstance(relative, SqliteStore)
    assert relative.path == str(tmp_path / "data" / "rollout.db")
    absolute = open_store(f"sqlite:///{tmp_path}/abs.db")
    assert isinstance(absolute, SqliteStore)
    assert absolute.path == str(tmp_path / "abs.db")
    memory = open_store("sqlite:///:memory:")
    assert isinstance(memory, SqliteStore)
    assert memory.path == ":memory:"
    memory.migrate()
    new_rollout(memory, "r-1")
    assert memory.get("r-1").version == 1
    memory.close()
    assert isinstance(open_store("postgresql://u@h:5432/d"), PostgresStore)
    assert isinstance(open_store("postgres://u:secret@h/d"), PostgresStore)
    assert "secret" not in repr(open_store("postgres://u:secret@h/d"))

    for url, message in [
        ("mysql://u:hunter2@h/d", "unsupported store URL scheme 'mysql'"),
        ("sqlite://rollout.db", "three slashes"),
        ("sqlite:///", "names no SQLite file"),
        ("rollout.db", "unsupported store URL scheme"),
    ]:
        with pytest.raises(ValueError, match=message) as raised:
            open_store(url)
        assert "hunter2" not in str(raised.value)


def test_errors_form_one_tree() -> None:
    for error in (
        RolloutNotFound,
        AlertNotFound,
        DuplicateRollout,
        ActiveRolloutExists,
        StaleVersion,
        SchemaError,
        StoreUnavailable,
    ):
        assert issubclass(error, StoreError)


# --- alias watches and alias moves ---------------------------------------------------------


def _record(rollout_id: str, endpoint: str = "ads-endpoint") -> tuple[RolloutRecord, NewEvent]:
    record = RolloutRecord(
        id=rollout_id,
        endpoint=endpoint,
        phase="pending",
        version=1,
        plan={"endpoint": endpoint},
        state={"step": 0},
        created_at=T0,
        updated_at=T0,
        due_at=T0,
    )
    return record, event("created", to="pending")


def test_one_rollout_per_alias_move_between_racing_watchers(backend: Backend) -> None:
    stores = [backend.open(), backend.open(migrate=False)]
    watch = "main.ml.ads_model@challenger -> ads-endpoint"

    def start(index: int) -> str:
        # Each watcher on its own endpoint, so only the alias record can stop the second.
        record, first = _record(f"w-{index}", endpoint=f"ads-{index}")
        try:
            stores[index].create(
                record, first, [], trigger=AliasTrigger(watch, "7", None, T0)
            )
        except AliasMoveTaken as exc:
            return f"taken {exc.watch} {exc.version}"
        return "started"

    outcomes = run_in_threads(2, start)
    assert sorted(outcomes) == ["started", f"taken {watch} 7"]
    winner = stores[0].alias_trigger(watch, "7")
    assert winner is not None
    assert winner.rollout_id == f"w-{outcomes.index('started')}"
    # The loser wrote nothing at all: no rollout, no event.
    loser = f"w-{1 - outcomes.index('started')}"
    with pytest.raises(RolloutNotFound):
        stores[0].get(loser)
    # A version seen without a rollout is recorded once; a second record is a no-op.
    assert stores[0].record_alias_seen(AliasTrigger(watch, "6", None, T0)) is True
    assert stores[1].record_alias_seen(AliasTrigger(watch, "6", None, T0 + 1)) is False
    assert stores[1].record_alias_seen(AliasTrigger(watch, "7", None, T0 + 1)) is False
    seen = stores[1].alias_trigger(watch, "6")
    assert seen == AliasTrigger(watch, "6", None, T0)
    assert stores[1].alias_trigger(watch, "8") is None


def test_alias_moves_wait_for_a_promotion(store: Store) -> None:
    move = NewAliasMove("main.ml.ads_model", "champion", "7")
    promoted, first = _record("promoted", endpoint="a")
    store.create(promoted, first, [], alias_move=move)
    rolled_back, first = _record("rolled-back", endpoint="b")
    store.create(rolled_back, first, [], alias_move=move)
    # Nothing is due while the rollouts run.
    assert store.claim_alias_moves(T0 + 10, 10, 30) == []
    for record, phase in ((promoted, "succeeded"), (rolled_back, "rolled_back")):
        advance(store, store.get(record.id), phase=phase)
    (claimed,) = store.claim_alias_moves(T0 + 10, 10, 30)
    assert (claimed.rollout_id, claimed.model, claimed.alias, claimed.version) == (
        "promoted", "main.ml.ads_model", "champion", "7"
    )
    assert claimed.attempts == 1
    # Claimed: hidden until the lease runs out, then due again (a claimer that died).
    assert store.claim_alias_moves(T0 + 20, 10, 30) == []
    (again,) = store.claim_alias_moves(T0 + 41, 10, 30)
    assert again.attempts == 2
    store.mark_alias_move_failed("promoted", "HTTP 503", T0 + 100)
    assert store.claim_alias_moves(T0 + 99, 10, 30) == []
    failed = store.alias_move("promoted")
    assert failed is not None
    assert failed.last_error == "HTTP 503"
    assert failed.done_at is None
    (third,) = store.claim_alias_moves(T0 + 100, 10, 30)
    store.mark_alias_moved(third.rollout_id, T0 + 101)
    store.mark_alias_moved(third.rollout_id, T0 + 102)  # idempotent
    done = store.alias_move("promoted")
    assert done is not None
    assert (done.done_at, done.last_error) == (T0 + 101, None)
    assert store.claim_alias_moves(T0 + 10_000, 10, 30) == []
    # The rolled-back rollout's move never became due, and no rollout without one has any.
    waiting = store.alias_move("rolled-back")
    assert waiting is not None
    assert (waiting.attempts, waiting.done_at) == (0, None)
    assert store.alias_move("no-such-rollout") is None


def _store_bytes(backend: Backend) -> int:
    """What the store's tables take: SQLite pages in use, PostgreSQL relations with TOAST and
    indexes, dead row versions included."""
    if backend.name == "sqlite":
        with sqlite3.connect(backend.url.removeprefix("sqlite:///")) as connection:
            pages = connection.execute("PRAGMA page_count").fetchone()[0]
            free = connection.execute("PRAGMA freelist_count").fetchone()[0]
            size = connection.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)
    with psycopg.connect(backend.url, autocommit=True) as connection:
        row = connection.execute(
            "SELECT SUM(pg_total_relation_size(c.oid)) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind = 'r'"
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_reclaim_keeps_a_row_rewritten_at_every_look_from_growing_the_store(
    backend: Backend,
) -> None:
    store = backend.open()
    new_rollout(store, "r-1")
    rng = random.Random(7)
    version = 1

    def looks(count: int) -> int:
        """``count`` commits of a fresh 20 KB state, reclaiming every fifth; bytes written."""
        nonlocal version
        written = 0
        for index in range(count):
            state = {"look": index, "sums": [rng.random() for _ in range(1000)]}
            written += len(dump_json(state, "state"))
            store.commit(
                "r-1", version, phase="progressing", state=state, due_at=T0 + index,
                updated_at=T0 + index, events=[], alerts=[], consumed_commands=[],
            )  # fmt: skip
            version += 1
            if index % 5 == 4:
                store.reclaim()
        return written

    looks(20)
    before = _store_bytes(backend)
    written = looks(60)
    grown = _store_bytes(backend) - before
    # Without reclaiming, PostgreSQL keeps every replaced version: more than half of what
    # was written. Reclaimed, the space of the old versions is written over.
    assert grown < written / 6, (grown, written)
    assert store.get("r-1").state["look"] == 59
