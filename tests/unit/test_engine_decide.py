"""decide(): the rollout state machine, table-driven over states and inputs, no mocks."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from rollout.analysis.spec import CheckSpec, Policy
from rollout.engine.decide import Timing, config_key, decide, entity_identity, logs_excerpt
from rollout.engine.model import (
    Arm,
    Command,
    Decision,
    EndpointSnapshot,
    Observation,
    Phase,
    PreflightOutcome,
    PutConfig,
    RolloutState,
    RunPreflight,
    Target,
    UpdateOutcome,
)
from rollout.metrics.model import EntityWindow, Histogram, UnattributableScrape
from rollout.metrics.parse import ENTITY_LABELS
from rollout.plan import AnyPlan, validate_plan
from rollout.policies import PolicyLibrary

T0 = 1_800_000_000.0
BASE = "ads-3"
CAND = "ads_model-4"
BASE_ENTITY = {"name": BASE, "entity_name": "main.ml.ads_model", "entity_version": "3"}
CAND_ENTITY = {"name": CAND, "entity_name": "main.ml.ads_model", "entity_version": "4"}
TIMING = Timing(look_interval=60, update_poll=5, update_deadline=600, max_put_attempts=3)
CANARY = {
    "endpoint": "ads",
    "candidate": {"entity_name": "main.ml.ads_model", "entity_version": "4"},
    "strategy": "canary",
    "steps": [{"weight": 10, "bake": "10m"}, {"weight": 50, "bake": "10m"}],
}


def plan_of(**overrides: Any) -> AnyPlan:
    """The canary plan with fields replaced; a field given as None is dropped."""
    merged = {**CANARY, **overrides}
    return validate_plan({k: v for k, v in merged.items() if v is not None})


def policy(name: str = "default", **overrides: Any) -> Policy:
    base = PolicyLibrary().get(name)
    return base.model_copy(update=overrides) if overrides else base


def entity(name: str) -> dict[str, Any]:
    """A served entity as the endpoint shows it: the baseline and the candidate with their
    model versions, anything else by name only."""
    return dict({BASE: BASE_ENTITY, CAND: CAND_ENTITY}.get(name, {"name": name}))


def key(split: dict[str, int]) -> str:
    """The fingerprint of a config serving ``split``'s entities (``decide.config_key``)."""
    return config_key([entity_identity(name, entity(name)) for name in split], split)


def snapshot(
    split: dict[str, int],
    *,
    updating: bool = False,
    pending: dict[str, int] | None = None,
    config_update: str | None = None,
) -> EndpointSnapshot:
    entities = {name: entity(name) for name in split}
    return EndpointSnapshot(
        ready="READY",
        config_update=config_update or ("IN_PROGRESS" if updating else "NOT_UPDATING"),
        config_version=3,
        entities=entities,
        split=split,
        pending_entities=None if pending is None else sorted(pending),
        pending_split=pending,
    )


def target(
    purpose: str,
    split: dict[str, int],
    known: list[dict[str, int]] | None = None,
    *,
    at: float = T0,
    attempts: int = 1,
) -> Target:
    entities = [entity(name) for name in split]
    return Target(
        purpose=purpose,  # type: ignore[arg-type]
        entities=entities,
        split=split,
        known=[key(k) for k in (known or [{BASE: 100}])],
        requested_at=at,
        attempts=attempts,
    )


def state(phase: Phase = Phase.PENDING, **fields: Any) -> RolloutState:
    values: dict[str, Any] = {"phase": phase, "started_at": T0}
    if phase is not Phase.PENDING:
        values.update(baseline=BASE, baseline_entity=dict(BASE_ENTITY))
    values.update(fields)
    return RolloutState(**values)


def windows(
    start: float,
    count: int,
    *,
    cand: tuple[float, float],
    base: tuple[float, float],
    latency_c: float = 40.0,
    latency_b: float = 40.0,
) -> tuple[EntityWindow, ...]:
    """``count`` 60 s windows from ``start``; each arm as (requests, 5xx errors)."""
    out = []
    for i in range(count):
        begin = int((start + 60 * i) * 1000)
        for name, (n, errors), lat in ((CAND, cand, latency_c), (BASE, base, latency_b)):
            hist = Histogram((lat, lat * 2, float("inf")), (n * 0.98, n * 0.02, 0.0))
            out.append(EntityWindow(name, begin, requests=n, errors_5xx=errors, latency=hist))
    return tuple(out)


def progressing(step: int = 0, weight: int = 10, **fields: Any) -> RolloutState:
    values: dict[str, Any] = {"split_applied_at": T0, "step_started_at": T0, **fields}
    return state(Phase.PROGRESSING, step=step, candidate_weight=weight, **values)


def live(weight: int) -> EndpointSnapshot:
    return snapshot({BASE: 100 - weight, CAND: weight})


BLUE_GREEN = plan_of(strategy="blue_green", steps=None, bake="10m")


def baking(control_requests: float) -> RolloutState:
    """A blue/green bake just switched (candidate at 100 %), its control the baseline's
    five warm-up windows of ``control_requests`` in all at 1 % 5xx."""
    per_window = control_requests / 5
    warmup = windows(T0 - 300, 5, cand=(0, 0), base=(per_window, per_window / 100))
    control = Arm().plus([w for w in warmup if w.entity == BASE])
    return progressing(weight=100, control=control)


def bake_windows(count: int) -> tuple[EntityWindow, ...]:
    """``count`` windows of the candidate alone at 100 %: 600 requests each, 1 % 5xx."""
    return tuple(w for w in windows(T0, count, cand=(600, 6), base=(0, 0)) if w.entity == CAND)


def judged(outcome: str, *, may_advance: bool, **fields: Any) -> RolloutState:
    """A step whose judge last said ``outcome``: with no new window, decide acts on it."""
    verdict = {"outcome": outcome, "may_advance": may_advance, "reason": f"{outcome}: (test)"}
    return progressing(last_verdict=verdict, **fields)


@dataclass
class Case:
    name: str
    state: RolloutState
    obs: Observation
    now: float = T0
    plan: AnyPlan = field(default_factory=plan_of)
    policy: Policy = field(default_factory=policy)
    phase: Phase | None = None
    effect: str | None = None  # "put:<purpose>", "preflight" or None
    split: dict[str, int] | None = None
    events: tuple[str, ...] = ()
    alerts: tuple[str, ...] = ()
    consumed: tuple[int, ...] | None = None
    extra: Any = None


def run(case: Case) -> Decision:
    return decide(case.plan, case.state, case.obs, case.now, policy=case.policy, timing=TIMING)


FLIGHT_10 = target("step", {BASE: 90, CAND: 10}, [{BASE: 100, CAND: 0}])

CASES = [
    # ---- pending ------------------------------------------------------------------------
    Case(
        "start deploys the candidate at 0 %",
        state(),
        Observation(endpoint=snapshot({BASE: 100})),
        phase=Phase.PREPARING,
        effect="put:deploy",
        split={BASE: 100, CAND: 0},
        events=("started",),
        alerts=("started",),
    ),
    Case(
        "start waits while the endpoint is updating",
        state(),
        Observation(endpoint=snapshot({BASE: 100}, updating=True, pending={BASE: 100})),
        phase=Phase.PENDING,
    ),
    Case(
        "start on a missing endpoint fails",
        state(),
        Observation(endpoint_missing=True),
        phase=Phase.FAILED,
        events=("failed",),
        alerts=("failed",),
    ),
    Case(
        "start with no entity at 100 % fails",
        state(),
        Observation(endpoint=snapshot({BASE: 60, "other": 40})),
        phase=Phase.FAILED,
    ),
    Case(
        "start when the candidate name is taken fails",
        state(),
        Observation(endpoint=snapshot({BASE: 100, CAND: 0})),
        phase=Phase.FAILED,
    ),
    Case(
        "start with an unreadable endpoint retries",
        state(),
        Observation(endpoint_error="503 TEMPORARILY_UNAVAILABLE"),
        phase=Phase.PENDING,
    ),
    # ---- a target in flight -------------------------------------------------------------
    Case(
        "deploy confirmed: first step's split",
        state(Phase.PREPARING, target=target("deploy", {BASE: 100, CAND: 0})),
        Observation(endpoint=snapshot({BASE: 100, CAND: 0}), update=UpdateOutcome("applied")),
        phase=Phase.PROGRESSING,
        effect="put:step",
        split={BASE: 90, CAND: 10},
        events=("candidate_deployed", "progressing"),
    ),
    Case(
        "update in progress: wait",
        progressing(target=FLIGHT_10),
        Observation(
            endpoint=snapshot({BASE: 100, CAND: 0}, updating=True, pending={BASE: 90, CAND: 10})
        ),
        phase=Phase.PROGRESSING,
    ),
    Case(
        "step confirmed: split applied and alerted",
        progressing(target=FLIGHT_10),
        Observation(endpoint=live(10)),
        phase=Phase.PROGRESSING,
        events=("step_applied",),
        alerts=("step_advanced",),
    ),
    Case(
        "UPDATE_FAILED on a step rolls back and keeps build logs",
        progressing(target=FLIGHT_10),
        Observation(
            endpoint=snapshot({BASE: 100, CAND: 0}, config_update="UPDATE_FAILED"),
            update=UpdateOutcome("failed", "build failed", "ERROR: missing numpy"),
        ),
        phase=Phase.ROLLING_BACK,
        effect="put:restore",
        split={BASE: 100, CAND: 0},
        events=("rolling_back",),
        alerts=("rolling_back",),
        extra="build_logs",
    ),
    Case(
        "failed deploy removes the candidate directly",
        state(Phase.PREPARING, target=target("deploy", {BASE: 100, CAND: 0})),
        Observation(
            endpoint=snapshot({BASE: 100}, config_update="UPDATE_FAILED"),
            update=UpdateOutcome("failed", "build failed", "pip error"),
        ),
        phase=Phase.ROLLING_BACK,
        effect="put:remove_candidate",
        split={BASE: 100},
    ),
    Case(
        "409 while another update runs: wait",
        progressing(target=FLIGHT_10),
        Observation(
            endpoint=snapshot({BASE: 100, CAND: 0}, updating=True, pending={BASE: 50, CAND: 50}),
            update=UpdateOutcome("conflict", "currently updating"),
        ),
        phase=Phase.PROGRESSING,
    ),
    Case(
        "PUT never landed (crash before send): send again",
        progressing(target=FLIGHT_10),
        Observation(endpoint=snapshot({BASE: 100, CAND: 0})),
        phase=Phase.PROGRESSING,
        effect="put:step",
        split={BASE: 90, CAND: 10},
        events=("update_resent",),
    ),
    Case(
        "third unconfirmed attempt gives up and rolls back",
        progressing(
            target=target("step", {BASE: 90, CAND: 10}, [{BASE: 100, CAND: 0}], attempts=3)
        ),
        Observation(endpoint=snapshot({BASE: 100, CAND: 0})),
        phase=Phase.ROLLING_BACK,
        effect="put:restore",
    ),
    Case(
        "drift: someone changed the split by hand -> pause, never fight",
        progressing(target=FLIGHT_10),
        Observation(endpoint=snapshot({BASE: 70, CAND: 30})),
        phase=Phase.PAUSED,
        events=("drift",),
        alerts=("paused",),
    ),
    Case(
        "drift while a step bakes (no change of ours in flight) -> pause, never fight",
        progressing(live_key=key({BASE: 90, CAND: 10})),
        Observation(endpoint=snapshot({BASE: 100, CAND: 0})),
        now=T0 + 700,
        phase=Phase.PAUSED,
        events=("drift",),
        alerts=("paused",),
    ),
    Case(
        "someone else's update in flight while a step bakes -> wait, do not advance",
        progressing(live_key=key({BASE: 90, CAND: 10})),
        Observation(
            endpoint=snapshot({BASE: 90, CAND: 10}, updating=True, pending={BASE: 100, CAND: 0})
        ),
        now=T0 + 700,
        phase=Phase.PROGRESSING,
    ),
    Case(
        "the live config is what the last step left -> no drift, the step goes on baking",
        progressing(live_key=key({BASE: 90, CAND: 10})),
        Observation(endpoint=live(10)),
        now=T0 + 300,
        phase=Phase.PROGRESSING,
    ),
    Case(
        "rollback finds the candidate at 0 % but a human's hotfix serving -> failed, untouched",
        state(
            Phase.ROLLING_BACK,
            candidate_weight=10,
            target=target("restore", {BASE: 100, CAND: 0}, [{BASE: 90, CAND: 10}]),
        ),
        Observation(endpoint=snapshot({BASE: 50, "hotfix-5": 50, CAND: 0})),
        phase=Phase.FAILED,
        alerts=("failed",),
    ),
    Case(
        "rollback finds the candidate already at 0 % and nothing else changed -> remove it",
        state(
            Phase.ROLLING_BACK,
            candidate_weight=10,
            target=target("restore", {BASE: 100, CAND: 0}, [{BASE: 90, CAND: 10}]),
        ),
        Observation(endpoint=snapshot({BASE: 100, CAND: 0})),
        phase=Phase.ROLLING_BACK,
        effect="put:remove_candidate",
        split={BASE: 100},
    ),
    Case(
        "resume after drift before the first step -> deploy at 0 % again",
        state(Phase.PAUSED, paused_from=Phase.PREPARING, pause_reason="drift: endpoint now x"),
        Observation(endpoint=snapshot({BASE: 100}), commands=(Command(7, "resume", {}),)),
        phase=Phase.PREPARING,
        effect="put:deploy",
        split={BASE: 100, CAND: 0},
        consumed=(7,),
    ),
    Case(
        "drift during a rollback -> failed, human needed",
        state(
            Phase.ROLLING_BACK,
            candidate_weight=10,
            target=target("restore", {BASE: 100, CAND: 0}, [{BASE: 90, CAND: 10}]),
        ),
        Observation(endpoint=snapshot({BASE: 70, CAND: 30})),
        phase=Phase.FAILED,
        alerts=("failed",),
    ),
    Case(
        "update never settles within the deadline -> rollback",
        progressing(target=FLIGHT_10),
        Observation(
            endpoint=snapshot({BASE: 100, CAND: 0}, updating=True, pending={BASE: 90, CAND: 10})
        ),
        now=T0 + 601,
        phase=Phase.ROLLING_BACK,
        effect="put:restore",
    ),
    Case(
        "restore confirmed -> remove the candidate",
        state(Phase.ROLLING_BACK, target=target("restore", {BASE: 100, CAND: 0})),
        Observation(endpoint=snapshot({BASE: 100, CAND: 0})),
        phase=Phase.ROLLING_BACK,
        effect="put:remove_candidate",
        split={BASE: 100},
        events=("baseline_restored",),
    ),
    Case(
        "candidate removed -> rolled_back with an alert",
        state(
            Phase.ROLLING_BACK,
            ending_reason="analysis failed",
            target=target("remove_candidate", {BASE: 100}),
        ),
        Observation(endpoint=snapshot({BASE: 100})),
        phase=Phase.ROLLED_BACK,
        events=("rolled_back",),
        alerts=("rolled_back",),
    ),
    Case(
        "restore refused -> failed, human needed",
        state(Phase.ROLLING_BACK, target=target("restore", {BASE: 100, CAND: 0})),
        Observation(
            endpoint=snapshot({BASE: 50, CAND: 50}),
            update=UpdateOutcome("rejected", "400 INVALID_PARAMETER_VALUE"),
        ),
        phase=Phase.FAILED,
        alerts=("failed",),
    ),
    Case(
        "promotion confirmed -> succeeded",
        state(Phase.PROMOTING, step=1, target=target("promote", {CAND: 100})),
        Observation(endpoint=snapshot({CAND: 100})),
        phase=Phase.SUCCEEDED,
        events=("succeeded",),
        alerts=("succeeded",),
    ),
    Case(
        "endpoint deleted mid-rollout -> failed",
        progressing(),
        Observation(endpoint_missing=True),
        phase=Phase.FAILED,
    ),
    # ---- judging --------------------------------------------------------------------------
    Case(
        "healthy windows before the bake ends: keep baking",
        progressing(),
        Observation(endpoint=live(10), windows=windows(T0, 5, cand=(300, 0), base=(2700, 3))),
        now=T0 + 300,
        phase=Phase.PROGRESSING,
        events=("verdict",),
    ),
    Case(
        "bake done, healthy: next step",
        progressing(),
        Observation(endpoint=live(10), windows=windows(T0, 10, cand=(600, 0), base=(5400, 5))),
        now=T0 + 600,
        phase=Phase.PROGRESSING,
        effect="put:step",
        split={BASE: 50, CAND: 50},
    ),
    Case(
        "regressed candidate fails the analysis -> rollback",
        progressing(),
        # Three windows of warm-up, then three decide (no one or two may).
        Observation(endpoint=live(10), windows=windows(T0, 6, cand=(600, 60), base=(5400, 5))),
        now=T0 + 360,
        phase=Phase.ROLLING_BACK,
        effect="put:restore",
        alerts=("rolling_back",),
    ),
    Case(
        "windows that began before the split are not judged",
        progressing(split_applied_at=T0 + 600, step_started_at=T0 + 600),
        Observation(endpoint=live(10), windows=windows(T0, 5, cand=(600, 60), base=(5400, 5))),
        now=T0 + 610,
        phase=Phase.PROGRESSING,
        extra="no_requests",
    ),
    Case(
        "metrics 404: inconclusive, never a rollback",
        progressing(),
        Observation(endpoint=live(10), metrics_error="export-metrics: 404 not found"),
        now=T0 + 300,
        phase=Phase.PROGRESSING,
        alerts=("analysis_error",),
    ),
    Case(
        "garbage metrics past the step deadline -> hold (pause), not rollback",
        progressing(),
        Observation(endpoint=live(10), metrics_error="line 3: not a sample"),
        now=T0 + 1801,
        phase=Phase.PAUSED,
        events=("verdict", "awaiting_decision"),
    ),
    Case(
        "no data past the step deadline with on_no_data=rollback -> rollback",
        progressing(),
        Observation(endpoint=live(10), metrics_error="empty export-metrics"),
        policy=policy(on_no_data="rollback"),
        now=T0 + 1801,
        phase=Phase.ROLLING_BACK,
        effect="put:restore",
    ),
    Case(
        "totals-only metrics while two entities serve: paused, the labels found named",
        progressing(),
        Observation(
            endpoint=live(10),
            unattributable=UnattributableScrape(("endpoint_name", "model"), ENTITY_LABELS),
            windows=(EntityWindow(None, int(T0 * 1000), requests=600),),
        ),
        now=T0 + 60,
        phase=Phase.PAUSED,
        events=("unattributable_metrics",),
        alerts=("paused",),
        extra="no_labels",
    ),
    # ---- deadlines --------------------------------------------------------------------------
    Case(
        "rollout deadline passes during an update -> rollback (bounded wait on it)",
        progressing(
            target=target("step", {BASE: 90, CAND: 10}, [{BASE: 100, CAND: 0}], at=T0 + 3590)
        ),
        Observation(
            endpoint=snapshot({BASE: 100, CAND: 0}, updating=True, pending={BASE: 90, CAND: 10})
        ),
        policy=policy(deadline=3600, on_deadline="rollback"),
        now=T0 + 3601,
        phase=Phase.ROLLING_BACK,
        effect="put:restore",
        alerts=("deadline_passed",),
    ),
    Case(
        "rollout deadline with on_deadline=hold -> paused",
        progressing(),
        Observation(endpoint=live(10)),
        policy=policy(deadline=3600, on_deadline="hold"),
        now=T0 + 3601,
        phase=Phase.PAUSED,
        events=("deadline_passed",),
    ),
    # ---- manual inputs ----------------------------------------------------------------------
    Case(
        "abort -> rolling back, ends aborted",
        progressing(),
        Observation(endpoint=live(10), commands=(Command(1, "abort"),)),
        phase=Phase.ROLLING_BACK,
        effect="put:restore",
        consumed=(1,),
        events=("aborted",),
    ),
    Case(
        "abort while a step update is in flight: rollback knows that update is ours",
        progressing(target=FLIGHT_10),
        Observation(
            endpoint=snapshot({BASE: 100, CAND: 0}, updating=True, pending={BASE: 90, CAND: 10}),
            commands=(Command(1, "abort"),),
        ),
        phase=Phase.ROLLING_BACK,
        effect="put:restore",
        consumed=(1,),
        extra="known",
    ),
    Case(
        "pause while an update is in flight stays queued",
        progressing(target=FLIGHT_10),
        Observation(
            endpoint=snapshot({BASE: 100, CAND: 0}, updating=True, pending={BASE: 90, CAND: 10}),
            commands=(Command(2, "pause"),),
        ),
        phase=Phase.PROGRESSING,
        consumed=(),
    ),
    Case(
        "pause",
        progressing(),
        Observation(endpoint=live(10), commands=(Command(2, "pause"),)),
        now=T0 + 60,
        phase=Phase.PAUSED,
        consumed=(2,),
        alerts=("paused",),
    ),
    Case(
        "resume re-asserts the current step's split",
        state(Phase.PAUSED, paused_from=Phase.PROGRESSING, candidate_weight=10),
        Observation(endpoint=live(10), commands=(Command(3, "resume"),)),
        phase=Phase.PROGRESSING,
        effect="put:step",
        split={BASE: 90, CAND: 10},
        consumed=(3,),
    ),
    Case(
        "paused ignores time passing",
        state(Phase.PAUSED, paused_from=Phase.PROGRESSING),
        Observation(endpoint=live(10)),
        now=T0 + 99999,
        phase=Phase.PAUSED,
    ),
    Case(
        "promote forces the next step",
        progressing(),
        Observation(endpoint=live(10), commands=(Command(4, "promote"),)),
        now=T0 + 60,
        phase=Phase.PROGRESSING,
        effect="put:step",
        split={BASE: 50, CAND: 50},
        consumed=(4,),
    ),
    Case(
        "promote full skips the remaining steps",
        progressing(),
        Observation(endpoint=live(10), commands=(Command(5, "promote_full"),)),
        now=T0 + 60,
        phase=Phase.PROMOTING,
        effect="put:promote",
        split={CAND: 100},
        consumed=(5,),
    ),
    Case(
        "a failing verdict beats a racing promote",
        progressing(),
        Observation(
            endpoint=live(10),
            windows=windows(T0, 6, cand=(600, 60), base=(5400, 5)),
            commands=(Command(6, "promote_full"),),
        ),
        now=T0 + 300,
        phase=Phase.ROLLING_BACK,
        effect="put:restore",
        consumed=(),
    ),
    Case(
        "resume while progressing is ignored (and consumed)",
        progressing(),
        Observation(endpoint=live(10), commands=(Command(7, "resume"),)),
        now=T0 + 60,
        phase=Phase.PROGRESSING,
        consumed=(7,),
        events=("command_ignored",),
    ),
    Case(
        "commands on a finished rollout are consumed and ignored",
        state(Phase.SUCCEEDED),
        Observation(commands=(Command(8, "abort"),)),
        phase=Phase.SUCCEEDED,
        consumed=(8,),
        events=("command_ignored",),
    ),
    # ---- blue/green -------------------------------------------------------------------------
    Case(
        "blue/green: deployed at 0 % -> preflight checks",
        state(Phase.PREPARING, target=target("deploy", {BASE: 100, CAND: 0})),
        Observation(endpoint=snapshot({BASE: 100, CAND: 0})),
        plan=plan_of(strategy="blue_green", steps=None, bake="10m"),
        phase=Phase.PREPARING,
        effect="preflight",
    ),
    Case(
        "blue/green: preflight passed -> warm up at 0 %",
        state(Phase.PREPARING, preflight_pending=True),
        Observation(
            endpoint=snapshot({BASE: 100, CAND: 0}), preflight=PreflightOutcome(10, 0, True)
        ),
        plan=plan_of(strategy="blue_green", steps=None, bake="10m"),
        phase=Phase.PREPARING,
        events=("preflight_passed",),
    ),
    Case(
        "blue/green: warm-up done -> switch everything at once",
        state(Phase.PREPARING, preflight_passed=True, split_applied_at=T0),
        Observation(endpoint=snapshot({BASE: 100, CAND: 0})),
        now=T0 + 300,
        plan=plan_of(strategy="blue_green", steps=None, bake="10m", warmup="5m"),
        phase=Phase.PREPARING,
        effect="put:switch",
        split={BASE: 0, CAND: 100},
    ),
    Case(
        "blue/green: still warming up",
        state(Phase.PREPARING, preflight_passed=True, split_applied_at=T0),
        Observation(endpoint=snapshot({BASE: 100, CAND: 0})),
        now=T0 + 200,
        plan=plan_of(strategy="blue_green", steps=None, bake="10m", warmup="5m"),
        phase=Phase.PREPARING,
    ),
    Case(
        "blue/green: smoke failures -> back out",
        state(Phase.PREPARING, preflight_pending=True),
        Observation(
            endpoint=snapshot({BASE: 100, CAND: 0}), preflight=PreflightOutcome(10, 4, True)
        ),
        plan=plan_of(strategy="blue_green", steps=None, bake="10m"),
        phase=Phase.ROLLING_BACK,
        effect="put:restore",
    ),
    Case(
        "blue/green: incompatible schema -> back out",
        state(Phase.PREPARING, preflight_pending=True),
        Observation(
            endpoint=snapshot({BASE: 100, CAND: 0}),
            preflight=PreflightOutcome(10, 0, False, "column 'age' removed"),
        ),
        plan=plan_of(strategy="blue_green", steps=None, bake="10m"),
        phase=Phase.ROLLING_BACK,
        effect="put:restore",
    ),
    Case(
        # Under advance: lean an inconclusive verdict may advance an intermediate step; the
        # bake's advance is the promotion.
        "blue/green: bake over, inconclusive (even one that may advance) -> keep baking",
        judged("inconclusive", may_advance=True, weight=100),
        Observation(endpoint=live(100)),
        plan=BLUE_GREEN,
        now=T0 + 600,
        phase=Phase.PROGRESSING,
    ),
    Case(
        "blue/green: bake over with a pass -> promote, baseline removed",
        judged("pass", may_advance=True, weight=100),
        Observation(endpoint=live(100)),
        plan=BLUE_GREEN,
        now=T0 + 600,
        phase=Phase.PROMOTING,
        effect="put:promote",
        split={CAND: 100},
        events=("promoting",),
    ),
    Case(
        "blue/green: no pass by the step deadline -> pause for a person",
        judged("inconclusive", may_advance=True, weight=100),
        Observation(endpoint=live(100)),
        plan=BLUE_GREEN,
        now=T0 + 1801,
        phase=Phase.PAUSED,
        events=("awaiting_decision",),
        alerts=("paused",),
    ),
    Case(
        "blue/green: no pass by the step deadline with on_no_data=rollback -> switch back",
        judged("inconclusive", may_advance=True, weight=100),
        Observation(endpoint=live(100)),
        plan=BLUE_GREEN,
        policy=policy(on_no_data="rollback"),
        now=T0 + 1801,
        phase=Phase.ROLLING_BACK,
        effect="put:restore",
        split={BASE: 100, CAND: 0},
    ),
    Case(
        "canary: an intermediate step still advances on a verdict that may advance",
        judged("inconclusive", may_advance=True),
        Observation(endpoint=live(10)),
        now=T0 + 600,
        phase=Phase.PROGRESSING,
        effect="put:step",
        split={BASE: 50, CAND: 50},
    ),
    Case(
        "blue/green: failure during the bake switches back at once",
        progressing(weight=100, control={"windows": 10, "requests": 6000.0, "errors_5xx": 6.0}),
        Observation(
            endpoint=live(100),
            windows=tuple(
                w for w in windows(T0, 6, cand=(1200, 200), base=(0, 0)) if w.entity == CAND
            ),
        ),
        plan=plan_of(strategy="blue_green", steps=None, bake="10m"),
        now=T0 + 300,
        phase=Phase.ROLLING_BACK,
        effect="put:restore",
        split={BASE: 100, CAND: 0},
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decide(case: Case) -> None:
    decision = run(case)
    if case.phase is not None:
        assert decision.state.phase is case.phase, [e.reason for e in decision.events]
    effect = decision.effect
    if case.effect is None:
        assert effect is None, effect
    elif case.effect == "preflight":
        assert isinstance(effect, RunPreflight)
        assert effect.candidate == CAND
    else:
        assert isinstance(effect, PutConfig)
        assert f"put:{effect.target.purpose}" == case.effect
        assert decision.state.target == effect.target, "the intent is persisted before the PUT"
        if case.split is not None:
            assert effect.target.split == case.split
        names = {e["name"] for e in effect.target.entities}
        assert names == set(effect.target.split), "full served_entities, every route named"
    kinds = [e.kind for e in decision.events]
    for kind in case.events:
        assert kind in kinds, kinds
    alert_events = [a.event for a in decision.alerts]
    for alert in case.alerts:
        assert alert in alert_events, alert_events
    if case.consumed is not None:
        assert decision.consumed_commands == case.consumed
    if decision.state.phase.terminal:
        assert decision.next_check_in is None
    else:
        assert decision.next_check_in is not None
        assert decision.next_check_in > 0
    if case.extra == "build_logs":
        assert decision.state.build_logs == "ERROR: missing numpy"
    if case.extra == "no_requests":
        assert decision.state.candidate.requests == 0
    if case.extra == "no_labels":
        reason = decision.state.pause_reason or ""
        assert "labels found: endpoint_name, model" in reason
        assert "served_entity_name" in reason
        # Nothing was judged on the summed arms.
        assert decision.state.last_verdict is None
        assert decision.state.paused_from is Phase.PROGRESSING
    if case.extra == "known":
        assert isinstance(effect, PutConfig)
        assert key({BASE: 90, CAND: 10}) in effect.target.known


def test_decide_is_pure_and_replayable() -> None:
    case = CASES[0]
    first, second = run(case), run(case)
    assert first == second
    assert [a.key for a in first.alerts] == [a.key for a in second.alerts]


def test_state_round_trips_through_json() -> None:
    decision = run(next(c for c in CASES if c.name.startswith("regressed")))
    restored = RolloutState.model_validate_json(decision.state.model_dump_json())
    assert restored == decision.state


def test_full_canary_walk_promotes_a_healthy_candidate() -> None:
    """Drive decide through a whole canary, playing a perfect endpoint."""
    plan, pol = plan_of(), policy()
    st, now = state(), T0
    live_split = {BASE: 100}
    applied: list[dict[str, int]] = []
    # The runner passes every window of the current split, as its tracker keeps them.
    obs_windows: tuple[EntityWindow, ...] = ()
    split_at: float | None = None
    for _ in range(200):
        if st.split_applied_at != split_at:
            obs_windows, split_at = (), st.split_applied_at
        if st.phase is Phase.PROGRESSING and st.target is None and st.split_applied_at:
            w = st.candidate_weight
            obs_windows += windows(now - 60, 1, cand=(60 * w, 0), base=(60 * (100 - w), 1))
        obs = Observation(endpoint=snapshot(live_split), windows=obs_windows)
        decision = decide(plan, st, obs, now, policy=pol, timing=TIMING)
        st = decision.state
        if isinstance(decision.effect, PutConfig):
            live_split = dict(decision.effect.target.split)
            applied.append(live_split)
        if st.phase.terminal:
            break
        now += decision.next_check_in or 60
    assert st.phase is Phase.SUCCEEDED
    assert applied == [
        {BASE: 100, CAND: 0},
        {BASE: 90, CAND: 10},
        {BASE: 50, CAND: 50},
        {CAND: 100},
    ]


def test_ab_picks_the_faster_candidate() -> None:
    plan = plan_of(steps=None, strategy="ab", split=50, duration="30m", objective="latency_p99_ms")
    st = progressing(weight=50)
    obs = Observation(
        endpoint=live(50),
        windows=windows(T0, 30, cand=(3000, 3), base=(3000, 3), latency_c=20.0, latency_b=80.0),
    )
    decision = decide(plan, st, obs, T0 + 1800, policy=policy(), timing=TIMING)
    assert decision.state.report is not None
    assert decision.state.report["winner"] == "candidate", decision.state.report["summary"]
    assert decision.state.phase is Phase.PROMOTING


def test_ab_keeps_the_baseline_when_the_candidate_is_slower() -> None:
    plan = plan_of(steps=None, strategy="ab", split=50, duration="30m", objective="latency_p99_ms")
    obs = Observation(
        endpoint=live(50),
        windows=windows(T0, 30, cand=(3000, 3), base=(3000, 3), latency_c=80.0, latency_b=80.0),
    )
    decision = decide(plan, progressing(weight=50), obs, T0 + 1800, policy=policy(), timing=TIMING)
    assert decision.state.report is not None
    assert decision.state.report["winner"] == "baseline"
    assert decision.state.phase is Phase.ROLLING_BACK


def test_last_step_promotes_only_on_a_pass_judged_window_by_window() -> None:
    st, now = progressing(step=1, weight=50), T0
    decision = None
    for i in range(40):
        now = T0 + 60 * (i + 1)
        obs = Observation(
            endpoint=live(50), windows=windows(T0, i + 1, cand=(3000, 30), base=(3000, 30))
        )
        decision = decide(plan_of(), st, obs, now, policy=policy(), timing=TIMING)
        st = decision.state
        if decision.effect is not None:
            break
    assert decision is not None
    assert st.phase is Phase.PROMOTING
    assert isinstance(decision.effect, PutConfig)
    assert decision.effect.target.split == {CAND: 100}
    assert st.last_verdict is not None
    assert st.last_verdict.outcome == "pass"
    assert now >= T0 + 600, "never before the bake is over"


def test_resume_after_a_held_deadline_does_not_pause_again() -> None:
    held = policy(deadline=3600.0, on_deadline="hold")
    paused = run(Case("", progressing(live_key=key({BASE: 90, CAND: 10})),
                      Observation(endpoint=live(10)), now=T0 + 3601, policy=held))
    assert paused.state.phase is Phase.PAUSED
    assert [e.kind for e in paused.events] == ["deadline_passed"]
    resumed = run(Case("", paused.state, Observation(
        endpoint=live(10), commands=(Command(1, "resume", {}),)), now=T0 + 3700, policy=held))
    assert resumed.state.phase is Phase.PROGRESSING
    assert isinstance(resumed.effect, PutConfig), "the step is re-asserted"
    confirmed = run(Case("", resumed.state, Observation(endpoint=live(10),
                    update=UpdateOutcome("applied")), now=T0 + 3710, policy=held))
    assert confirmed.state.phase is Phase.PROGRESSING, [e.reason for e in confirmed.events]
    assert "deadline_passed" not in [e.kind for e in confirmed.events]
    # The deadline counts again from the resume.
    later = run(Case("", confirmed.state, Observation(endpoint=live(10)), now=T0 + 3700 + 3601,
                     policy=held))
    assert later.state.phase is Phase.PAUSED
    assert "since the last resume" in later.events[-1].reason


def test_two_alerts_of_one_kind_at_one_step_have_their_own_keys() -> None:
    baking = progressing(live_key=key({BASE: 90, CAND: 10}))
    drifted = run(Case("", baking, Observation(endpoint=snapshot({BASE: 80, CAND: 20})),
                       now=T0 + 60))
    assert [a.event for a in drifted.alerts] == ["paused"]
    resumed = run(Case("", drifted.state, Observation(
        endpoint=snapshot({BASE: 80, CAND: 20}), commands=(Command(1, "resume", {}),)),
        now=T0 + 120))
    confirmed = run(Case("", resumed.state, Observation(endpoint=live(10),
                    update=UpdateOutcome("applied")), now=T0 + 130))
    paused = run(Case("", confirmed.state, Observation(
        endpoint=live(10), commands=(Command(2, "pause", {}),)), now=T0 + 140))
    assert [a.event for a in paused.alerts] == ["paused"]
    keys = [a.key for d in (drifted, resumed, confirmed, paused) for a in d.alerts]
    assert len(keys) == len(set(keys)), keys
    # Replaying a decision gives the same key: the outbox drops the repeat after a crash.
    replay = run(Case("", confirmed.state, Observation(
        endpoint=live(10), commands=(Command(2, "pause", {}),)), now=T0 + 140))
    assert [a.key for a in replay.alerts] == [a.key for a in paused.alerts]


def test_a_gauge_check_keeps_judging_after_the_kept_gauge_values_roll_over() -> None:
    cpu = policy("flagger-compatible").model_copy(update={
        "checks": (CheckSpec.model_validate({"metric": "cpu_usage_percentage", "max": 90}),),
        "deadline": None,
    })
    long_bake = plan_of(steps=[{"weight": 10, "bake": "3h"}, {"weight": 50, "bake": "10m"}])
    current = progressing()
    outcomes = []
    kept: tuple[EntityWindow, ...] = ()
    # 70 one-minute windows at 40 % CPU, then the candidate runs hot: more windows than the
    # state keeps gauge values for (model.GAUGES_KEPT).
    for minute in range(80):
        level = 40.0 if minute < 70 else 99.0
        start = int((T0 + 60 * minute) * 1000)
        kept += tuple(EntityWindow(name, start, requests=100, cpu_percent=level)
                      for name in (CAND, BASE))
        decision = run(Case("", current, Observation(endpoint=live(10), windows=kept),
                            now=T0 + 60 * minute + 61, plan=long_bake, policy=cpu))
        current = decision.state
        outcomes.append(None if current.last_verdict is None else current.last_verdict.outcome)
        if current.phase is not Phase.PROGRESSING:
            break
    assert outcomes[65] == "pass", "still judged after 60 windows"
    assert current.phase is Phase.ROLLING_BACK, outcomes[-12:]
    assert len(current.candidate.cpu_percent) <= 60, "the state stays bounded"


def test_the_baseline_redeployed_under_its_name_with_another_version_is_drift() -> None:
    baking = progressing(live_key=key({BASE: 90, CAND: 10}))
    redeployed = snapshot({BASE: 90, CAND: 10})
    redeployed.entities[BASE] = {**BASE_ENTITY, "entity_version": "5"}
    decision = run(Case("", baking, Observation(endpoint=redeployed), now=T0 + 60))
    assert decision.state.phase is Phase.PAUSED, [e.reason for e in decision.events]
    assert [e.kind for e in decision.events] == ["drift"]
    same = run(Case("", baking, Observation(endpoint=live(10)), now=T0 + 60))
    assert same.state.phase is Phase.PROGRESSING


def test_a_blue_green_bake_promotes_only_on_a_pass() -> None:
    """Whatever the warm-up saw and however long the bake ran: promotion means a pass."""
    held = 0
    for control_requests in (300, 1500, 7500, 30000, 120000):
        for minutes in (10, 20, 29):
            decision = run(Case(
                "", baking(control_requests),
                Observation(endpoint=live(100), windows=bake_windows(minutes)),
                plan=BLUE_GREEN, now=T0 + 60 * minutes,
            ))
            verdict = decision.state.last_verdict
            assert verdict is not None
            assert verdict.final is True, "the bake is judged as the step that promotes"
            promoted = decision.state.phase is Phase.PROMOTING
            assert promoted == (verdict.outcome == "pass"), (control_requests, verdict)
            held += not promoted
    assert held, "some bakes end without a pass (a small warm-up cannot prove one)"


def test_a_blue_green_bake_without_a_pass_says_so_when_it_pauses() -> None:
    decision = run(Case("", judged("inconclusive", may_advance=True, weight=100),
                        Observation(endpoint=live(100)), plan=BLUE_GREEN, now=T0 + 1801))
    paused = decision.events[-1]
    assert paused.kind == "awaiting_decision"
    assert paused.reason == (
        "the blue/green bake has no conclusive verdict after 30m1s (inconclusive: (test))"
    )
    assert "all steps passed" not in " ".join(e.reason for e in decision.events)


# ---- who promoted, and which steps were skipped --------------------------------------------

THREE_STEPS = plan_of(steps=[{"weight": 5, "bake": "10m"}, {"weight": 25, "bake": "10m"},
                             {"weight": 50, "bake": "10m"}])


@dataclass
class Promotion:
    name: str
    state: RolloutState
    command: str
    reason: str  # the promoting event's reason, or the manual_promotion note's
    skipped: list[int]
    plan: AnyPlan = field(default_factory=plan_of)
    promoted: bool = True


PROMOTIONS = [
    Promotion(
        "promote full at step 2 of 3 skips steps 2 and 3",
        progressing(step=1, weight=25),
        "promote_full",
        "promoted to 100 % by an operator (steps 2-3 of 3 skipped)",
        [1, 2],
        plan=THREE_STEPS,
    ),
    Promotion(
        "promote at the first step skips it and goes on to the next",
        progressing(),
        "promote",
        "step 1 of 2 skipped by an operator; next step",
        [0],
        promoted=False,
    ),
    Promotion(
        "promote at the last step promotes, the last step skipped",
        progressing(step=1, weight=50),
        "promote",
        "promoted to 100 % by an operator (step 2 of 2 skipped)",
        [1],
    ),
    Promotion(
        "an earlier skip is counted with the later ones",
        progressing(step=2, weight=50, skipped_steps=[0]),
        "promote_full",
        "promoted to 100 % by an operator (steps 1, 3 of 3 skipped)",
        [0, 2],
        plan=THREE_STEPS,
    ),
    Promotion(
        "promote full while paused for a person",
        state(Phase.PAUSED, paused_from=Phase.PROGRESSING, candidate_weight=10,
              pause_reason="step 1 has no conclusive verdict"),
        "promote_full",
        "promoted to 100 % by an operator (steps 1-2 of 2 skipped)",
        [0, 1],
    ),
    Promotion(
        "promote while paused skips the paused step",
        state(Phase.PAUSED, paused_from=Phase.PROGRESSING, candidate_weight=10),
        "promote",
        "step 1 of 2 skipped by an operator; next step",
        [0],
        promoted=False,
    ),
    Promotion(
        "promote full during a blue/green bake",
        progressing(weight=100),
        "promote_full",
        "promoted to 100 % by an operator (the blue/green bake skipped)",
        [0],
        plan=BLUE_GREEN,
    ),
    Promotion(
        "promote during an A/B split",
        progressing(weight=50),
        "promote",
        "promoted to 100 % by an operator (the A/B split skipped)",
        [0],
        plan=plan_of(steps=None, strategy="ab", split=50, duration="30m",
                     objective="latency_p99_ms"),
    ),
]


@pytest.mark.parametrize("case", PROMOTIONS, ids=[c.name for c in PROMOTIONS])
def test_an_operators_promotion_is_the_operators_and_shows_its_skipped_steps(
    case: Promotion,
) -> None:
    weight = case.state.candidate_weight
    decision = run(Case("", case.state, Observation(
        endpoint=live(weight), commands=(Command(9, case.command),)), now=T0 + 60, plan=case.plan))
    assert decision.consumed_commands == (9,)
    assert decision.state.skipped_steps == case.skipped
    reasons = " | ".join(e.reason for e in decision.events)
    assert "passed" not in reasons, reasons
    note = next(e for e in decision.events if e.kind == "manual_promotion")
    assert note.data["skipped_steps"] == [s for s in case.skipped
                                          if s not in case.state.skipped_steps]
    assert isinstance(decision.effect, PutConfig)
    if not case.promoted:
        assert decision.state.phase is Phase.PROGRESSING
        assert decision.effect.target.purpose == "step"
        assert note.reason == case.reason
        return
    assert decision.state.phase is Phase.PROMOTING
    assert decision.effect.target.purpose == "promote"
    promoting = next(e for e in decision.events if e.kind == "promoting")
    assert promoting.reason == case.reason
    assert promoting.data == {"promoted_by": "operator", "skipped_steps": case.skipped}


@pytest.mark.parametrize(
    ("skipped", "reason"),
    [
        ([], "all steps passed; candidate to 100 %"),
        ([0], "the judged steps passed (step 1 of 2 skipped by an operator); candidate to 100 %"),
    ],
)
def test_only_the_judges_passes_say_the_steps_passed(skipped: list[int], reason: str) -> None:
    last_step_passed = judged("pass", may_advance=True, step=1, weight=50, skipped_steps=skipped)
    decision = run(Case("", last_step_passed, Observation(endpoint=live(50)), now=T0 + 600))
    assert decision.state.phase is Phase.PROMOTING
    promoting = next(e for e in decision.events if e.kind == "promoting")
    assert promoting.reason == reason
    assert promoting.data == {"promoted_by": "judge", "skipped_steps": skipped}


def test_a_step_that_moved_on_without_a_pass_is_not_called_passed() -> None:
    # Step 1 ends its bake inconclusive with nothing leaning bad: it moves on, as a lean.
    leaning = judged("inconclusive", may_advance=True, step=0, weight=10)
    moved = run(Case("", leaning, Observation(endpoint=live(10)), now=T0 + 600))
    assert moved.state.leaned_steps == [0]
    assert isinstance(moved.effect, PutConfig)
    assert moved.effect.target.purpose == "step"
    # The last step passes: the promotion says what each step did.
    last = judged("pass", may_advance=True, step=1, weight=50, leaned_steps=[0])
    decision = run(Case("", last, Observation(endpoint=live(50)), now=T0 + 600))
    promoting = next(e for e in decision.events if e.kind == "promoting")
    assert "all steps passed" not in promoting.reason
    assert promoting.reason.startswith("the last step passed; step(s) 1 of 2 moved on")


def test_the_success_alert_names_the_skipped_steps() -> None:
    promoting = state(Phase.PROMOTING, step=1, skipped_steps=[1],
                      target=target("promote", {CAND: 100}))
    decision = run(Case("", promoting, Observation(endpoint=snapshot({CAND: 100}))))
    assert decision.state.phase is Phase.SUCCEEDED
    succeeded = next(e for e in decision.events if e.kind == "succeeded")
    assert succeeded.reason.endswith("(step 2 of 2 skipped by an operator)")
    assert succeeded.data["skipped_steps"] == [1]
    alert = next(a for a in decision.alerts if a.event == "succeeded")
    assert "step 2 of 2 skipped by an operator" in alert.summary
    assert alert.details["skipped_steps"] == [1]


def test_a_state_persisted_before_skipped_steps_existed_still_loads() -> None:
    old = {"phase": "progressing", "started_at": T0, "step": 1, "candidate_weight": 50}
    assert RolloutState.model_validate(old).skipped_steps == []


# ---- a failed rollout's reason is what failed ----------------------------------------------

ROLLING_BACK_ON_ABORT = state(
    Phase.ROLLING_BACK,
    candidate_weight=50,
    ending=Phase.ABORTED,
    ending_cause="aborted",
    ending_reason="the dashboard looks wrong",
    target=target("restore", {BASE: 100, CAND: 0}, [{BASE: 50, CAND: 50}]),
)


@dataclass
class Failure:
    name: str
    state: RolloutState
    obs: Observation
    reason: str
    during: str | None
    now: float = T0


FAILURES = [
    Failure(
        "the restore after an abort is refused",
        ROLLING_BACK_ON_ABORT,
        Observation(endpoint=snapshot({BASE: 50, CAND: 50}),
                    update=UpdateOutcome("rejected", "400 INVALID_PARAMETER_VALUE")),
        "could not restore the baseline: 400 INVALID_PARAMETER_VALUE; the endpoint serves "
        "ads-3 50%, ads_model-4 50% (config_update NOT_UPDATING); "
        "while rolling back: the dashboard looks wrong",
        "the dashboard looks wrong",
    ),
    Failure(
        "the restore after a failed analysis ends UPDATE_FAILED",
        state(Phase.ROLLING_BACK, candidate_weight=10, ending_reason="analysis failed: 5xx x3",
              target=target("restore", {BASE: 100, CAND: 0}, [{BASE: 90, CAND: 10}])),
        Observation(endpoint=snapshot({BASE: 90, CAND: 10}, config_update="UPDATE_FAILED"),
                    update=UpdateOutcome("failed", "served entity ads-3 failed to start")),
        "could not restore the baseline: served entity ads-3 failed to start; the endpoint "
        "serves ads-3 90%, ads_model-4 10% (config_update UPDATE_FAILED); "
        "while rolling back: analysis failed: 5xx x3",
        "analysis failed: 5xx x3",
    ),
    Failure(
        "the restore never settles and the endpoint cannot be read",
        ROLLING_BACK_ON_ABORT,
        Observation(endpoint_error="503 TEMPORARILY_UNAVAILABLE"),
        "could not restore the baseline: config update not settled after 10m (503 "
        "TEMPORARILY_UNAVAILABLE); the endpoint could not be read (503 "
        "TEMPORARILY_UNAVAILABLE); while rolling back: the dashboard looks wrong",
        "the dashboard looks wrong",
        now=T0 + 600,
    ),
    Failure(
        "someone else's update is in flight when the restore gives up",
        ROLLING_BACK_ON_ABORT,
        Observation(endpoint=snapshot({BASE: 50, CAND: 50}, updating=True,
                                      pending={BASE: 20, CAND: 80})),
        "could not restore the baseline: config update not settled after 10m (another update "
        "is in progress); the endpoint serves ads-3 50%, ads_model-4 50% (config_update "
        "IN_PROGRESS towards ads_model-4 80%, ads-3 20%); "
        "while rolling back: the dashboard looks wrong",
        "the dashboard looks wrong",
        now=T0 + 600,
    ),
    Failure(
        "a human changes the endpoint during the rollback",
        ROLLING_BACK_ON_ABORT,
        Observation(endpoint=snapshot({BASE: 70, CAND: 30})),
        "the endpoint was changed by hand during the rollback; the endpoint serves ads-3 70%, "
        "ads_model-4 30% (config_update NOT_UPDATING); "
        "while rolling back: the dashboard looks wrong",
        "the dashboard looks wrong",
    ),
    Failure(
        "the endpoint is deleted while a step bakes: nothing was rolling back",
        progressing(),
        Observation(endpoint_missing=True),
        "endpoint 'ads' no longer exists",
        None,
    ),
]


@pytest.mark.parametrize("case", FAILURES, ids=[c.name for c in FAILURES])
def test_a_failed_rollouts_reason_is_what_failed_and_what_the_endpoint_serves(
    case: Failure,
) -> None:
    decision = run(Case("", case.state, case.obs, now=case.now))
    assert decision.state.phase is Phase.FAILED, [e.reason for e in decision.events]
    assert decision.state.ending_reason == case.reason
    failed = next(e for e in decision.events if e.kind == "failed")
    assert failed.reason == case.reason
    assert failed.data["while_rolling_back"] == case.during
    alert = next(a for a in decision.alerts if a.event == "failed")
    assert alert.severity == "error"
    assert alert.summary == f"ads: HUMAN NEEDED: {case.reason}"
    assert alert.details["while_rolling_back"] == case.during
    assert alert.details["live_split"] == (
        None if case.obs.endpoint is None else case.obs.endpoint.split
    )


def test_an_abort_whose_restore_fails_ends_failed_with_the_restores_error() -> None:
    """The whole path: an operator aborts with a reason typed by hand, the restore fails."""
    aborted = run(Case("", progressing(step=1, weight=50), Observation(
        endpoint=live(50), commands=(Command(1, "abort", {"reason": "pager says stop"}),)),
        now=T0 + 60))
    assert aborted.state.phase is Phase.ROLLING_BACK
    assert isinstance(aborted.effect, PutConfig)
    refused = run(Case("", aborted.state, Observation(
        endpoint=snapshot({BASE: 50, CAND: 50}, config_update="UPDATE_FAILED"),
        update=UpdateOutcome("failed", "ads-3: container exited with code 137")),
        now=T0 + 120))
    assert refused.state.phase is Phase.FAILED
    reason = refused.state.ending_reason or ""
    assert reason.startswith(
        "could not restore the baseline: ads-3: container exited with code 137; "
        "the endpoint serves ads-3 50%, ads_model-4 50% (config_update UPDATE_FAILED)"
    ), reason
    assert reason.endswith("; while rolling back: pager says stop")
    assert [a.event for a in refused.alerts] == ["failed"]


@pytest.mark.parametrize(
    ("obs", "reason"),
    [
        (Observation(endpoint_missing=True), "endpoint 'ads' does not exist"),
        (Observation(endpoint=snapshot({BASE: 60, "other": 40})),
         ("cannot start: no served entity takes 100 % of traffic (ads-3 60%, other 40%); "
          "name the baseline in the plan")),
    ],
)
def test_a_rollout_that_cannot_start_says_why_it_failed(obs: Observation, reason: str) -> None:
    decision = run(Case("", state(), obs))
    assert decision.state.phase is Phase.FAILED
    assert decision.state.ending_reason == reason


# ---- UPDATE_FAILED whenever it is seen ------------------------------------------------------


def at_version(
    split: dict[str, int], version: int, config_update: str = "NOT_UPDATING", **fields: Any
) -> EndpointSnapshot:
    """``snapshot(split)`` showing live config ``version`` and ``config_update``."""
    return replace(snapshot(split, config_update=config_update), config_version=version, **fields)


def sent(t: Target, version: int | None) -> Target:
    """``t`` after its PUT announced config ``version``."""
    return t.model_copy(update={"announced_version": version})


DEPLOY = target("deploy", {BASE: 100, CAND: 0})
LOGS = "\n".join(f"line {i}" for i in range(100)) + "\nERROR: pip could not resolve numpy\n"


@dataclass
class Refusal:
    name: str
    state: RolloutState
    obs: Observation
    phase: Phase
    effect: str | None  # "put:<purpose>" or None
    resent: bool = False
    logs: bool = False  # the runner's build logs reach the state, the event and the alert
    announced: int | None = None  # the version the decision's target keeps, if any


REFUSALS = [
    Refusal(
        "UPDATE_FAILED seen on a later look, after the wait for the deploy ran out",
        state(Phase.PREPARING, target=sent(DEPLOY, 4)),
        Observation(endpoint=at_version({BASE: 100}, 3, "UPDATE_FAILED")),
        Phase.ROLLING_BACK,
        "put:remove_candidate",
    ),
    Refusal(
        "the same look with the runner's build logs: they go to the rollback",
        state(Phase.PREPARING, target=sent(DEPLOY, 4)),
        Observation(
            endpoint=at_version({BASE: 100}, 3, "UPDATE_FAILED"),
            update=UpdateOutcome("failed", "update to version 4 failed", LOGS, 4),
        ),
        Phase.ROLLING_BACK,
        "put:remove_candidate",
        logs=True,
    ),
    Refusal(
        "a step's update canceled on a later look: restore, not send again",
        progressing(target=sent(FLIGHT_10, 5)),
        Observation(endpoint=at_version({BASE: 100, CAND: 0}, 4, "UPDATE_CANCELED")),
        Phase.ROLLING_BACK,
        "put:restore",
    ),
    Refusal(
        "the version the PUT announced comes with the wait's timeout and is kept",
        state(Phase.PREPARING, target=DEPLOY),
        Observation(
            endpoint=at_version({BASE: 100}, 3, "IN_PROGRESS", pending_entities=[BASE, CAND],
                                pending_split={BASE: 100, CAND: 0}, pending_version=4),
            update=UpdateOutcome("timeout", "not settled after 30s", config_version=4),
        ),
        Phase.PREPARING,
        None,
        announced=4,
    ),
    Refusal(
        "after a restart the pending config shows our PUT's version",
        state(Phase.PREPARING, target=DEPLOY),
        Observation(
            endpoint=at_version({BASE: 100}, 3, "IN_PROGRESS", pending_entities=[BASE, CAND],
                                pending_split={BASE: 100, CAND: 0}, pending_version=4),
        ),
        Phase.PREPARING,
        None,
        announced=4,
    ),
    Refusal(
        "a PUT never seen through (no version) with an old UPDATE_FAILED: send again",
        state(Phase.PREPARING, target=DEPLOY),
        Observation(endpoint=at_version({BASE: 100}, 3, "UPDATE_FAILED")),
        Phase.PREPARING,
        "put:deploy",
        resent=True,
    ),
    Refusal(
        "settled on an older version than announced, not failed: a late read, wait",
        state(Phase.PREPARING, target=sent(DEPLOY, 4)),
        Observation(endpoint=at_version({BASE: 100}, 3)),
        Phase.PREPARING,
        None,
        announced=4,
    ),
    Refusal(
        "ours applied, someone's later update failed: confirmed, not refused",
        state(Phase.PREPARING, target=sent(DEPLOY, 4)),
        Observation(endpoint=at_version({BASE: 100, CAND: 0}, 4, "UPDATE_FAILED")),
        Phase.PROGRESSING,
        "put:step",
    ),
]


@pytest.mark.parametrize("case", REFUSALS, ids=[c.name for c in REFUSALS])
def test_a_refused_config_is_never_sent_again(case: Refusal) -> None:
    decision = run(Case("", case.state, case.obs))
    kinds = [e.kind for e in decision.events]
    assert decision.state.phase is case.phase, [e.reason for e in decision.events]
    effect = decision.effect
    if case.effect is None:
        assert effect is None, effect
    else:
        assert isinstance(effect, PutConfig)
        assert f"put:{effect.target.purpose}" == case.effect
    assert ("update_resent" in kinds) is case.resent, kinds
    if case.phase is Phase.ROLLING_BACK:
        assert decision.state.ending_cause == "update_failed"
        assert isinstance(effect, PutConfig)
        assert CAND not in {n for n, pct in effect.target.split.items() if pct}
        rolling = next(e for e in decision.events if e.kind == "rolling_back")
        alert = next(a for a in decision.alerts if a.event == "rolling_back")
        if case.logs:
            tail = decision.state.build_logs or ""
            assert tail.endswith("ERROR: pip could not resolve numpy")
            assert len(tail.splitlines()) == 40
            assert rolling.data["build_logs"] == tail
            assert alert.details["build_logs_tail"] == tail
        else:
            assert decision.state.build_logs is None
            assert "config version" in decision.state.ending_reason  # type: ignore[operator]
    if case.announced is not None:
        assert decision.state.target is not None
        assert decision.state.target.announced_version == case.announced


def test_a_restore_refused_on_a_later_look_fails_without_sending_it_again() -> None:
    rolling = state(
        Phase.ROLLING_BACK,
        candidate_weight=10,
        ending_reason="analysis failed",
        target=sent(target("restore", {BASE: 100, CAND: 0}, [{BASE: 90, CAND: 10}]), 6),
    )
    decision = run(Case("", rolling, Observation(
        endpoint=at_version({BASE: 90, CAND: 10}, 5, "UPDATE_FAILED"))))
    assert decision.state.phase is Phase.FAILED
    assert decision.effect is None
    assert (decision.state.ending_reason or "").startswith(
        "could not restore the baseline: the update to config version 6 ended UPDATE_FAILED"
    )


def test_a_resent_target_forgets_the_version_of_the_attempt_before() -> None:
    decision = run(Case("", state(Phase.PREPARING, target=DEPLOY),
                        Observation(endpoint=at_version({BASE: 100}, 3))))
    assert isinstance(decision.effect, PutConfig)
    assert decision.effect.target.attempts == 2
    assert decision.effect.target.announced_version is None


@pytest.mark.parametrize(
    ("text", "lines", "chars"),
    [
        ("short\n", 1, 5),
        (LOGS, 40, None),
        ("x" * 10_000 + "\n" + "y" * 10, 2, 4096),
    ],
)
def test_the_build_log_excerpt_is_bounded(text: str, lines: int, chars: int | None) -> None:
    tail = logs_excerpt(text)
    assert len(tail) <= 4096
    assert len(tail.splitlines()) == lines
    assert text.rstrip("\n").endswith(tail)
    if chars is not None:
        assert len(tail) == chars
def test_settings_a_get_does_not_show_ride_with_every_put() -> None:
    the_plan = plan_of(entity_settings={BASE: {"burst_scaling_enabled": False}},
                       candidate={**CANARY["candidate"], "burst_scaling_enabled": False})
    unknown = {**entity(BASE), "future_setting": {"level": 2}}
    endpoint = EndpointSnapshot(
        ready="READY", config_update="NOT_UPDATING", config_version=3,
        entities={BASE: unknown}, split={BASE: 100},
    )
    decision = decide(the_plan, state(), Observation(endpoint=endpoint), T0, policy=policy(),
                      timing=TIMING)
    assert isinstance(decision.effect, PutConfig)
    sent = {str(e["name"]): e for e in decision.effect.target.entities}
    assert sent[BASE] == {**unknown, "burst_scaling_enabled": False}
    assert sent[CAND]["burst_scaling_enabled"] is False
    # Remembered for every later PUT of the rollout, the restore included.
    assert decision.state.baseline_entity == sent[BASE]
