"""What the runner stores as a rollout ages: the engine end to end in process (runner + serving
client + a real SQLite store + the sandbox over real HTTP, on one fake clock), checked through
the store: a small state row whatever the age, windows in their own bounded table, a summary
per finished step, nothing left once the rollout ends, and a controller restarted with an
empty memory judging exactly what one that never stopped judges."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import httpx
import pytest

import rollout.engine.runner as runner_module
from rollout.clock import FakeClock
from rollout.engine.model import Phase, RolloutState
from rollout.engine.runner import DEFAULT_DEDUP_HORIZON, Runner
from rollout.plan import resolve_policy
from rollout.sandbox.server import SandboxServer
from rollout.serving.auth import PatAuth
from rollout.serving.client import ServingClient
from rollout.serving.retry import RetryPolicy
from rollout.store.base import Store
from rollout.store.factory import open_store
from tests.integration.test_engine_sandbox import (
    CANDIDATE,
    HEALTHY,
    TIMING,
    make_endpoint,
    plan,
)
from tests.integration.test_engine_sandbox import (
    client as client,  # noqa: PLC0414 - the fixture, re-exported for this module
)

LONG = {"steps": [{"weight": 10, "bake": "3h"}, {"weight": 50, "bake": "20m"}],
        "policy": {"name": "long", "deadline": "8h", "checks": [
            {"metric": "error_rate", "compare": "baseline", "max_ratio": 2,
             "max_increase": "0.05%"}]}}

pytestmark = pytest.mark.slow


async def _look_until(
    runner: Runner, store: Store, clock: FakeClock, rollout_id: str, until: float
) -> Phase:
    """Reconcile whenever due, jumping the clock, until ``until`` or the end."""
    phase = Phase(store.get(rollout_id).phase)
    while clock.now() < until and not phase.terminal:
        phase = (await runner.reconcile(rollout_id)).phase
        due = store.get(rollout_id).due_at
        if due is None:
            break
        clock.advance(max(0.0, min(due, until) - clock.now()))
    return phase


def _state_bytes(store: Store, rollout_id: str) -> int:
    return len(json.dumps(store.get(rollout_id).state))


async def test_an_aging_rollout_keeps_a_small_state_and_bounded_windows(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, client: ServingClient
) -> None:
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    make_endpoint(sandbox_admin, HEALTHY, qps=50)
    runner = Runner(store, client, clock=clock, timing=TIMING)
    the_plan = plan(**LONG)
    record = await runner.submit(the_plan, resolve_policy(the_plan))
    start = clock.now()
    sizes: list[int] = []
    window_counts: list[int] = []
    for hour in (1, 2, 3):
        phase = await _look_until(runner, store, clock, record.id, start + hour * 3600)
        assert phase is Phase.PROGRESSING
        sizes.append(_state_bytes(store, record.id))
        window_counts.append(len(store.windows(record.id)))
    state = RolloutState.model_validate(store.get(record.id).state)
    assert state.step == 0, "still the 3 h step"
    assert state.folded is not None, "the oldest windows of the split were folded"
    assert state.tracker is not None
    assert state.tracker.windows == [], "no window inside the state row"
    assert max(sizes) < 24_000, sizes
    # The first fold (after the dedup horizon) adds the folded sums once; then nothing grows.
    assert sizes[2] < sizes[1] * 1.1, f"the state does not grow with age: {sizes}"
    # Two entities, one window a minute, kept for the dedup horizon (plus a few in flight).
    horizon_windows = 2 * int(DEFAULT_DEDUP_HORIZON) // 60
    assert all(n <= horizon_windows + 6 for n in window_counts), window_counts
    assert window_counts[2] >= horizon_windows - 6, "the horizon's windows are kept"
    oldest = min(w.start_ms for w in store.windows(record.id))
    assert oldest >= (clock.now() - DEFAULT_DEDUP_HORIZON) * 1000 - 2 * 60_000
    # Every window judged: one per minute since the split, warm-up included.
    assert state.split_applied_at is not None
    minutes = (clock.now() - state.split_applied_at) / 60
    assert minutes - 3 <= state.judged_windows <= minutes + 1
    (summary,) = store.list_summaries()
    assert (summary.id, summary.phase) == (record.id, "progressing")
    assert (summary.candidate, summary.candidate_weight) == (CANDIDATE, 10)
    assert state.last_verdict is not None
    assert summary.verdict_outcome == state.last_verdict.outcome

    phase = await _look_until(runner, store, clock, record.id, start + 5 * 3600)
    assert phase is Phase.SUCCEEDED
    assert store.windows(record.id) == [], "a finished rollout keeps no windows"
    summaries = store.step_summaries(record.id)
    assert [s.data["step"] for s in summaries] == [0, 1]
    assert summaries[0].data["candidate_weight"] == 10
    assert summaries[0].data["judged_windows"] >= 170, "the whole 3 h step is summed"
    assert summaries[0].data["candidate"]["requests"] > 0
    assert summaries[1].data["verdict"] == "pass"
    assert store.list_summaries()[0].phase == "succeeded"


async def _trace(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, *, restart_every: float
) -> list[tuple[Any, ...]]:
    """Drive one rollout for 100 minutes on a fresh clock; what its state was after each look.
    ``restart_every``: seconds between two new runners (an empty memory, as after a restart)."""
    clock = FakeClock()
    sandbox.workspace.reset(clock=clock)
    make_endpoint(sandbox_admin, HEALTHY, qps=50)
    async with ServingClient(
        sandbox.url,
        PatAuth(sandbox.token),
        clock=clock,
        retry=RetryPolicy(initial_backoff=0.1, max_backoff=1, budget_seconds=30),
        poll_interval=5,
    ) as client:
        the_plan = plan(**LONG)
        runner = Runner(store, client, clock=clock, timing=TIMING)
        rollout_id = (await runner.submit(the_plan, resolve_policy(the_plan))).id
        start = clock.now()
        last_restart = start
        trace: list[tuple[Any, ...]] = []
        while clock.now() < start + 100 * 60:
            if clock.now() - last_restart >= restart_every:
                runner = Runner(store, client, clock=clock, timing=TIMING)
                last_restart = clock.now()
            await runner.reconcile(rollout_id)
            state = RolloutState.model_validate(store.get(rollout_id).state)
            trace.append((clock.now() - start, state.candidate_weight, state.judged_windows,
                          state.folded, state.candidate, state.control, state.judge_state))
            due = store.get(rollout_id).due_at
            assert due is not None
            clock.advance(max(0.0, due - clock.now()))
        trace.append(tuple((w.entity, w.start_ms) for w in store.windows(rollout_id)))
    return trace


async def test_a_restarted_runner_judges_what_an_uninterrupted_one_judges(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, tmp_path: Path
) -> None:
    # The same world twice (the sandbox's traffic is seeded by endpoint and window): once
    # with one runner throughout, once with a new runner every 10 minutes, which rebuilds
    # its windows from the store. Every look must leave the same state.
    steady = await _trace(sandbox, sandbox_admin, store, restart_every=math.inf)
    other = open_store(f"sqlite:///{tmp_path / 'restarted.db'}")
    other.migrate()
    try:
        restarted = await _trace(sandbox, sandbox_admin, other, restart_every=600)
    finally:
        other.close()
    assert len(steady) > 150
    assert steady[-2][3] is not None, "windows were folded along the way"
    assert len(restarted) == len(steady)
    for one, two in zip(steady, restarted, strict=True):
        assert one == two, one[0]


async def test_a_runner_reads_the_row_again_after_another_controller_committed(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store
) -> None:
    # A runner keeps what it committed and, while the version is its own, reads only the
    # version; a commit by anyone else must make it read the row (not act on its memory).
    clock = FakeClock()
    sandbox.workspace.reset(clock=clock)
    make_endpoint(sandbox_admin, HEALTHY, qps=50)
    async with ServingClient(
        sandbox.url, PatAuth(sandbox.token), clock=clock, poll_interval=5,
        retry=RetryPolicy(initial_backoff=0.1, max_backoff=1, budget_seconds=30),
    ) as client:  # fmt: skip
        the_plan = plan(**LONG)
        first = Runner(store, client, clock=clock, timing=TIMING)
        second = Runner(store, client, clock=clock, timing=TIMING)
        rollout_id = (await first.submit(the_plan, resolve_policy(the_plan))).id
        await _look_until(first, store, clock, rollout_id, clock.now() + 600)
        reads: list[str] = []
        get = store.get

        def counted_get(wanted: str) -> Any:
            reads.append(wanted)
            return get(wanted)

        store.get = counted_get  # type: ignore[method-assign]
        try:
            clock.advance(30)
            await first.reconcile(rollout_id)
            assert reads == [], "its own version: the kept state, no row read"
            clock.advance(30)
            await second.reconcile(rollout_id)  # another controller's look
            reads.clear()
            version = store.version_of(rollout_id)
            clock.advance(30)
            await first.reconcile(rollout_id)  # would be StaleVersion on its old memory
            assert reads == [rollout_id]
            assert store.version_of(rollout_id) == version + 1
        finally:
            del store.get


async def test_a_scrape_repeating_the_last_text_is_not_parsed_again(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Export-metrics shows the last closed window: two looks within one window get one text.
    clock = FakeClock()
    sandbox.workspace.reset(clock=clock)
    make_endpoint(sandbox_admin, HEALTHY, qps=50)
    parsed: list[str] = []
    scraped: list[str] = []
    parse = runner_module.parse_export_metrics
    export = ServingClient.export_metrics

    def counted_parse(text: str) -> Any:
        parsed.append(text)
        return parse(text)

    async def counted_export(self: ServingClient, name: str) -> str:
        text = await export(self, name)
        scraped.append(text)
        return text

    monkeypatch.setattr(runner_module, "parse_export_metrics", counted_parse)
    monkeypatch.setattr(ServingClient, "export_metrics", counted_export)
    async with ServingClient(
        sandbox.url, PatAuth(sandbox.token), clock=clock, poll_interval=5,
        retry=RetryPolicy(initial_backoff=0.1, max_backoff=1, budget_seconds=30),
    ) as client:  # fmt: skip
        the_plan = plan(**LONG)
        runner = Runner(store, client, clock=clock, timing=TIMING)
        rollout_id = (await runner.submit(the_plan, resolve_policy(the_plan))).id
        await _look_until(runner, store, clock, rollout_id, clock.now() + 1200)
    assert len(scraped) > 20
    distinct_in_a_row = [t for i, t in enumerate(scraped) if i == 0 or scraped[i - 1] != t]
    assert len(distinct_in_a_row) < len(scraped), "some looks saw the same text again"
    assert parsed == distinct_in_a_row
