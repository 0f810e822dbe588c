"""The rollout document's ``next``: what happens next, for each strategy and phase.

Table-driven on a fake clock: each row stores a rollout in a given phase and state (over the
real store), moves the clock, reads ``GET /api/v1/rollouts/{id}`` and checks the stage, the
countdowns and the sentence a person reads.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from rollout.api import create_api
from rollout.clock import FakeClock
from rollout.engine.model import RolloutState, Target
from rollout.engine.runner import new_rollout
from rollout.plan import resolve_policy, validate_plan
from rollout.policies import PolicyLibrary
from rollout.sandbox.server import SandboxServer
from rollout.serving.auth import PatAuth
from rollout.serving.client import ServingClient
from rollout.settings import ApiSettings
from rollout.store.base import Store

T = 1_800_000_000.0
CANDIDATE = {"entity_name": "main.ml.ads_model", "entity_version": "4"}
CANARY = {
    "endpoint": "ads", "candidate": CANDIDATE, "strategy": "canary",
    "steps": [{"weight": 5, "bake": "10m"}, {"weight": 25, "bake": "10m"},
              {"weight": 50, "bake": "20m"}],
}
AB = {"endpoint": "ads", "candidate": CANDIDATE, "strategy": "ab", "split": 50,
      "duration": "30m"}
BLUE_GREEN = {"endpoint": "ads", "candidate": CANDIDATE, "strategy": "blue_green",
              "bake": "10m", "warmup": "5m"}
WITH_DEADLINE = {**CANARY, "policy": {"name": "timed", "deadline": "1h", "checks": [
    {"metric": "error_rate", "compare": "baseline", "max_ratio": 2}]}}
TARGET = Target(purpose="step", entities=[], split={}, known=[], requested_at=T)
INCONCLUSIVE = {
    "outcome": "inconclusive", "reason": "inconclusive: error_rate", "may_advance": False,
    "checks": [{"check": "error_rate vs baseline", "metric": "error_rate",
                "outcome": "inconclusive", "candidate_n": 1000.0,
                "statistic": {"fail": 0.1, "pass": 2.0}, "boundary": {"fail": 7.6, "pass": 3.0}},
               {"check": "latency_p99_ms vs baseline", "metric": "latency_p99_ms",
                "outcome": "pass", "candidate_n": 1000.0}],
}

# (id, plan, phase, state fields, seconds after T, expected fields, words in the summary)
ROWS: list[tuple[str, dict[str, Any], str, dict[str, Any], float, dict[str, Any], list[str]]] = [
    ("canary-pending", CANARY, "pending", {}, 0.0,
     {"stage": "starting", "step": None, "live_step": None, "steps": 3},
     ["deploying the candidate at 0 %", "step 1 of 3, candidate at 5 %"]),
    ("canary-deploying", CANARY, "preparing", {"target": TARGET}, 5.0,
     {"stage": "deploying", "live_step": None, "live_weight": 0},
     ["deploying the candidate at 0 %"]),
    ("canary-applying", CANARY, "progressing", {"step": 1, "candidate_weight": 5,
                                                "target": TARGET, "step_started_at": T}, 700.0,
     {"stage": "applying", "step": 2, "live_step": None, "live_weight": 5},
     ["applying step 2 of 3, candidate at 25 %"]),
    ("canary-baking", CANARY, "progressing",
     {"candidate_weight": 5, "step_started_at": T, "split_applied_at": T}, 240.0,
     {"stage": "baking", "step": 1, "live_step": 1, "bake_left": 360.0, "next_at": T + 600,
      "step_deadline_left": 1560.0, "warmup_left": None, "deadline_left": 7200.0 - 240.0},
     ["step 1 of 3, candidate at 5 %: bake 6m left; then step 2 of 3: 25 %",
      "rollout deadline in 1h56m (then pause)"]),
    ("canary-baking-in-warmup", CANARY, "progressing",
     {"candidate_weight": 5, "step_started_at": T, "split_applied_at": T}, 30.0,
     {"stage": "baking", "bake_left": 570.0, "warmup_left": 150.0},
     ["bake 9m30s left (warm-up 2m30s left, not scored)"]),
    ("canary-last-step-waiting", CANARY, "progressing",
     {"step": 2, "candidate_weight": 50, "step_started_at": T, "split_applied_at": T,
      "last_verdict": INCONCLUSIVE}, 1500.0,
     {"stage": "waiting", "step": 3, "live_step": 3, "bake_left": 0.0,
      "step_deadline_left": 3600.0 - 1500.0, "then": "100 % (promotion) on a pass",
      "waiting_on": [{"check": "error_rate vs baseline", "outcome": "inconclusive",
                      "requests_needed": 500.0}]},
     ["bake over, waiting for a pass", "error_rate vs baseline (~500 more candidate requests)",
      "step deadline in 35m (then pause for a person)"]),
    ("canary-paused", CANARY, "paused",
     {"candidate_weight": 5, "step_started_at": T, "paused_from": "progressing",
      "pause_reason": "paused by an operator"}, 60.0,
     {"stage": "paused", "step": 1, "live_step": 1, "bake_left": None, "deadline_left": None},
     ["paused (paused by an operator): waits for a person"]),
    ("canary-deadline", WITH_DEADLINE, "progressing",
     {"candidate_weight": 5, "step_started_at": T, "split_applied_at": T, "deadline_from": T + 60},
     600.0, {"stage": "waiting", "deadline_left": 3060.0},
     ["bake over, waiting for a pass, or no check leaning bad", "no verdict yet",
      "rollout deadline in 51m (then rollback)"]),
    ("canary-promoting", CANARY, "promoting", {"candidate_weight": 50, "step": 2}, 0.0,
     {"stage": "promoting"}, ["candidate to 100 %, baseline removed"]),
    ("canary-rolling-back", CANARY, "rolling_back", {"candidate_weight": 25}, 0.0,
     {"stage": "rolling_back"}, ["restoring the baseline at 100 %"]),
    ("canary-succeeded", CANARY, "succeeded", {"candidate_weight": 100}, 0.0,
     {"stage": "finished"}, ["finished: succeeded"]),
    ("ab-baking", AB, "progressing",
     {"candidate_weight": 50, "step_started_at": T, "split_applied_at": T}, 600.0,
     {"stage": "baking", "step": 1, "steps": 1, "live_step": 1, "bake_left": 1200.0},
     ["A/B split, candidate at 50 %: A/B duration 20m left",
      "candidate is promoted if its latency_p99_ms is clearly lower"]),
    ("ab-report", AB, "progressing",
     {"candidate_weight": 50, "step_started_at": T, "split_applied_at": T}, 1800.0,
     {"stage": "waiting", "bake_left": 0.0}, ["writing the A/B report"]),
    ("bg-preflight", BLUE_GREEN, "preparing", {"split_applied_at": T}, 10.0,
     {"stage": "preflight", "live_weight": 0, "live_step": None},
     ["preflight: 10 smoke invocation(s) and the schema check", "5m warm-up"]),
    ("bg-warmup", BLUE_GREEN, "preparing", {"split_applied_at": T, "preflight_passed": True},
     60.0, {"stage": "warmup", "warmup_left": 240.0, "next_at": T + 300, "live_step": None,
            "live_weight": 0},
     ["warm-up at 0 %: 4m left, then all traffic switches to the candidate for a 10m bake"]),
    ("bg-baking", BLUE_GREEN, "progressing",
     {"candidate_weight": 100, "step_started_at": T + 300, "split_applied_at": T + 300,
      "last_verdict": {**INCONCLUSIVE, "warmup": {"scored_from": T + 300}}}, 360.0,
     {"stage": "baking", "live_step": 1, "bake_left": 540.0, "warmup_left": None},
     ["blue/green bake, candidate at 100 % (baseline kept at 0 %): bake 9m left",
      "on a pass the baseline is removed"]),
]


@pytest.fixture
async def api(sandbox: SandboxServer, store: Store) -> AsyncIterator[
        tuple[httpx.AsyncClient, FakeClock]]:
    clock = FakeClock(T)
    client = ServingClient(sandbox.url, PatAuth(sandbox.token), clock=clock)
    app = create_api(store=store, client=client, clock=clock, library=PolicyLibrary(),
                     registry=CollectorRegistry(), settings=ApiSettings(tokens=None))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                 base_url="http://127.0.0.1") as http:
        yield http, clock
    await client.aclose()


def stored(store: Store, plan_data: dict[str, Any], phase: str, fields: dict[str, Any]) -> str:
    plan = validate_plan(plan_data)
    record, event = new_rollout(plan, resolve_policy(plan), T)
    state = RolloutState.model_validate({**record.state, **fields, "phase": phase})
    record = dataclasses.replace(record, phase=phase, state=state.model_dump(mode="json"))
    return store.create(record, event, []).id


@pytest.mark.parametrize(("plan", "phase", "fields", "after", "expected", "words"),
                         [row[1:] for row in ROWS], ids=[row[0] for row in ROWS])
async def test_next_says_what_happens_next(
    api: tuple[httpx.AsyncClient, FakeClock], store: Store, *, plan: dict[str, Any], phase: str,
    fields: dict[str, Any], after: float, expected: dict[str, Any], words: list[str],
) -> None:
    http, clock = api
    rollout_id = stored(store, plan, phase, fields)
    clock.advance(after)
    response = await http.get(f"/api/v1/rollouts/{rollout_id}")
    assert response.status_code == 200, response.text
    following = response.json()["next"]
    assert following["as_of"] == T + after
    for key, value in expected.items():
        assert following[key] == value, (key, following)
    for phrase in words:
        assert phrase in following["summary"], (phrase, following["summary"])


async def test_next_counts_down_as_the_clock_moves(
    api: tuple[httpx.AsyncClient, FakeClock], store: Store
) -> None:
    http, clock = api
    rollout_id = stored(store, CANARY, "progressing",
                        {"candidate_weight": 5, "step_started_at": T, "split_applied_at": T})
    seen = []
    for _ in range(3):
        clock.advance(100)
        seen.append((await http.get(f"/api/v1/rollouts/{rollout_id}")).json()["next"])
    assert [n["bake_left"] for n in seen] == [500.0, 400.0, 300.0]
    listed = (await http.get("/api/v1/rollouts?view=full")).json()["rollouts"]
    assert listed[0]["next"]["bake_left"] == 300.0
