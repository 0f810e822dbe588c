"""What happens next in a rollout: time left, what the next step needs, the deadlines.

Where this sits: beside ``decide``, reading the same plan, policy and persisted state, but
deciding nothing. The API puts ``progress(...)`` into every rollout document as ``next``;
``rollout get``, ``get --watch`` and the status page show its ``summary`` and figures. Pure:
the clock's ``now`` is an argument, so the same state shows the same countdown in a test.

Steps are numbered from 1 here ("step 2 of 3, then 100 %"), as everywhere people read them;
``RolloutState.step`` stays the engine's 0-based index.

The stages, by phase::

    pending       -> "starting"      (reading the endpoint, then deploying at 0 %)
    preparing     -> "deploying"     (candidate being deployed at 0 %)
                  -> "preflight"     (blue/green smoke invocations and schema check)
                  -> "warmup"        (blue/green at 0 %: warm-up left, then the switch)
    progressing   -> "applying"      (the split being moved; not live yet)
                  -> "baking"        (bake or A/B duration left; warm-up left inside it)
                  -> "waiting"       (bake over, no verdict that lets it move on yet)
    paused        -> "paused"        (waits for a person: resume, promote or abort)
    promoting     -> "promoting"     (candidate alone at 100 %, baseline removed)
    rolling_back  -> "rolling_back"
    terminal      -> "finished"
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, Field

from rollout.analysis.spec import Policy
from rollout.analysis.verdict import Outcome, VerdictRecord
from rollout.engine.decide import DEFAULT_TIMING, Timing, step_bake, step_warmup
from rollout.engine.model import Phase, RolloutState
from rollout.plan import ABPlan, AnyPlan, BlueGreenPlan, CanaryPlan
from rollout.units import format_duration

Stage = Literal[
    "starting", "deploying", "preflight", "warmup", "applying", "baking", "waiting", "paused",
    "promoting", "rolling_back", "finished",
]


class Pending(BaseModel):
    """A check the next step still waits on, and roughly how much more traffic it needs."""

    check: str
    outcome: str
    requests_needed: float | None = Field(
        default=None,
        description="Rough candidate requests until the check's pass boundary, at the rate "
        "its evidence grew so far; null when it has not grown towards a pass.",
    )


class Progress(BaseModel):
    """What the rollout is doing now and what comes next; seconds are from ``as_of``."""

    summary: str = Field(description="One sentence: where the rollout is and what is next.")
    stage: Stage
    as_of: float = Field(description="Epoch seconds the figures were computed at.")
    step: int | None = Field(
        default=None, description="The current step, numbered from 1 (null before the first)."
    )
    steps: int = Field(description="How many judged steps the plan has (100 % follows).")
    live_step: int | None = Field(
        default=None,
        description="The step (from 1) whose weight is live on the endpoint now; null while "
        "the candidate takes 0 % or the split is still being applied.",
    )
    live_weight: int = Field(description="Candidate traffic percentage live now.")
    then: str | None = Field(default=None, description="What follows the current stage.")
    warmup_left: float | None = Field(
        default=None, description="Seconds of warm-up left (served but not scored)."
    )
    bake_left: float | None = Field(
        default=None,
        description="Seconds until the bake (A/B: the duration; blue/green: the bake after "
        "the switch) is over.",
    )
    next_at: float | None = Field(
        default=None, description="Epoch seconds from which the next step may start."
    )
    step_deadline_left: float | None = Field(
        default=None,
        description="Seconds until a step without a verdict that lets it move on pauses "
        "(or rolls back under on_no_data: rollback).",
    )
    deadline_left: float | None = Field(
        default=None, description="Seconds until the policy's rollout deadline."
    )
    waiting_on: list[Pending] = Field(
        default_factory=list, description="Checks not yet passed that the next step needs."
    )


def _then(plan: AnyPlan, weights: list[int], step: int) -> str:
    if isinstance(plan, ABPlan):
        direction = "lower" if plan.objective_direction == "lower" else "higher"
        return (
            f"the A/B report: the candidate is promoted if its {plan.objective} is clearly "
            f"{direction}, else the baseline is kept"
        )
    if isinstance(plan, BlueGreenPlan):
        return "on a pass the baseline is removed (candidate alone at 100 %)"
    if step + 1 < len(weights):
        return f"step {step + 2} of {len(weights)}: {weights[step + 1]} %"
    return "100 % (promotion) on a pass"


def _weights(plan: AnyPlan) -> list[int]:
    if isinstance(plan, CanaryPlan):
        return [s.weight for s in plan.canary_steps()] or [100]
    if isinstance(plan, ABPlan):
        return [plan.split]
    return [100]


def _step_words(plan: AnyPlan, step: int, total: int, weight: int) -> str:
    if isinstance(plan, ABPlan):
        return f"A/B split, candidate at {weight} %"
    if isinstance(plan, BlueGreenPlan):
        return "blue/green bake, candidate at 100 % (baseline kept at 0 %)"
    return f"step {step + 1} of {total}, candidate at {weight} %"


def _left(seconds: float) -> str:
    return format_duration(max(0.0, math.ceil(seconds)))


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def _waiting_on(verdict: VerdictRecord | None) -> list[Pending]:
    """The checks that have not passed, with a rough count of requests still needed.

    The sequential judge's pass evidence (a log e-value) grows roughly in proportion to the
    requests scored; its rate so far, divided into the distance to the boundary, says about
    how many more requests a pass takes if the candidate keeps behaving as it did.
    """
    pending: list[Pending] = []
    for check in verdict.checks if verdict is not None else ():
        if check.outcome == Outcome.PASS:
            continue
        needed = None
        statistic, boundary = check.statistic, check.boundary
        grown, goal, n = (_number(statistic.get("pass")), _number(boundary.get("pass")),
                          _number(check.candidate_n))
        requests = _number(statistic.get("requests"))
        if grown is not None and goal is not None and n is not None and grown > 0 and n > 0:
            needed = max(0.0, float(math.ceil((goal - grown) / (grown / n))))
        elif goal is not None and requests is not None:  # a count check: requests to go
            needed = max(0.0, goal - requests)
        pending.append(Pending(check=check.check or check.metric or "?",
                               outcome=check.outcome.value,
                               requests_needed=needed))
    return pending


def progress(
    plan: AnyPlan,
    policy: Policy,
    state: RolloutState,
    phase: Phase,
    now: float,
    *,
    timing: Timing = DEFAULT_TIMING,
) -> Progress:
    """What ``state`` is doing at ``now`` and what comes next (see the module docstring)."""
    weights = _weights(plan)
    total = len(weights)
    step = min(state.step, total - 1)
    live = state.candidate_weight
    base: dict[str, Any] = {"as_of": now, "steps": total, "live_weight": live}
    deadline_left = None
    if policy.deadline is not None and phase in (
        Phase.PENDING, Phase.PREPARING, Phase.PROGRESSING, Phase.PROMOTING
    ):
        start = state.deadline_from if state.deadline_from is not None else state.started_at
        deadline_left = max(0.0, policy.deadline - (now - start))
        base["deadline_left"] = deadline_left
    then_on_deadline = (
        "" if deadline_left is None
        else f"; rollout deadline in {_left(deadline_left)} (then "
        f"{'rollback' if policy.on_deadline == 'rollback' else 'pause'})"
    )
    first = _step_words(plan, 0, total, weights[0])

    if phase.terminal:
        return Progress(summary=f"finished: {phase.value.replace('_', ' ')}", stage="finished",
                        **base)
    if phase is Phase.PENDING:
        return Progress(summary="starting: reading the endpoint, then deploying the candidate "
                        f"at 0 %; then {first}", stage="starting", then=first, **base)
    if phase is Phase.PAUSED:
        return Progress(
            summary=f"paused ({state.pause_reason or 'no reason given'}): waits for a person "
            "to resume, promote or abort; the rollout deadline does not run while paused",
            stage="paused", step=step + 1 if state.paused_from is Phase.PROGRESSING else None,
            live_step=step + 1 if live == weights[step] and live > 0 else None, **base)
    if phase is Phase.PROMOTING:
        return Progress(summary="promoting: candidate to 100 %, baseline removed",
                        stage="promoting", then="succeeded", **base)
    if phase is Phase.ROLLING_BACK:
        words = ("restoring the baseline at 100 %" if live > 0
                 else "removing the candidate (baseline at 100 %)")
        return Progress(summary=f"rolling back: {words}", stage="rolling_back",
                        then=(state.ending or Phase.ROLLED_BACK).value, **base)
    if phase is Phase.PREPARING:
        return _preparing(plan, state, now, first=first, tail=then_on_deadline, base=base)
    return _progressing(plan, policy, state, now, timing=timing, tail=then_on_deadline,
                        base=base)


def _preparing(plan: AnyPlan, state: RolloutState, now: float, *, first: str, tail: str,
               base: dict[str, Any]) -> Progress:
    if not isinstance(plan, BlueGreenPlan) or state.split_applied_at is None:
        return Progress(summary=f"deploying the candidate at 0 %; then {first}{tail}",
                        stage="deploying", then=first, **base)
    if not state.preflight_passed:
        return Progress(
            summary=f"preflight: {plan.smoke.requests} smoke invocation(s)"
            f"{' and the schema check' if plan.schema_check else ''} on the candidate at 0 %; "
            f"then a {format_duration(plan.warmup)} warm-up and the switch to 100 %{tail}",
            stage="preflight", then="warm-up at 0 %", **base)
    left = max(0.0, plan.warmup - (now - state.split_applied_at))
    return Progress(
        summary=f"warm-up at 0 %: {_left(left)} left, then all traffic switches to the "
        f"candidate for a {format_duration(plan.bake)} bake{tail}",
        stage="warmup", warmup_left=left, next_at=now + left,
        then="switch to 100 %", **base)


def _progressing(plan: AnyPlan, policy: Policy, state: RolloutState, now: float, *,
                 timing: Timing, tail: str, base: dict[str, Any]) -> Progress:
    weights = _weights(plan)
    total = len(weights)
    step = min(state.step, total - 1)
    target_weight = weights[step]
    where = _step_words(plan, step, total, target_weight)
    then = _then(plan, weights, step)
    if state.target is not None or state.step_started_at is None \
            or state.candidate_weight != target_weight:
        return Progress(summary=f"applying {where} (config update in flight); then the bake",
                        stage="applying", step=step + 1, then=then, **base)
    elapsed = now - state.step_started_at
    bake = step_bake(plan, state.step)
    bake_left = max(0.0, bake - elapsed)
    step_deadline_left = max(0.0, bake * timing.step_deadline_factor - elapsed)
    verdict = state.last_verdict
    warm = verdict.warmup if verdict is not None else None
    warmup_left = None
    if warm is not None and warm.scored_from is not None:
        warmup_left = max(0.0, warm.scored_from - now) or None
    elif verdict is None and state.split_applied_at is not None:
        own = step_warmup(plan, state.step)
        seconds = own if own is not None else policy.warmup_windows * timing.metrics_window
        warmup_left = max(0.0, state.split_applied_at + seconds - now) or None
    last = state.step >= total - 1
    waiting_on = _waiting_on(verdict)
    figures: dict[str, Any] = {
        "step": step + 1, "live_step": step + 1, "then": then, "bake_left": bake_left,
        "next_at": state.step_started_at + bake, "step_deadline_left": step_deadline_left,
        "warmup_left": warmup_left, "waiting_on": waiting_on, **base,
    }
    warm_words = f" (warm-up {_left(warmup_left)} left, not scored)" if warmup_left else ""
    if bake_left > 0:
        span = "A/B duration" if isinstance(plan, ABPlan) else "bake"
        return Progress(summary=f"{where}: {span} {_left(bake_left)} left{warm_words}; then "
                        f"{then}{tail}", stage="baking", **figures)
    if isinstance(plan, ABPlan):
        return Progress(summary=f"{where}: duration over; writing the A/B report", stage="waiting",
                        **figures)
    moving = verdict is not None and (
        verdict.outcome == Outcome.PASS or (verdict.may_advance and not last))
    if moving:
        return Progress(summary=f"{where}: bake over and the verdict lets it move on; next: "
                        f"{then}", stage="waiting", **figures)
    needs = "a pass" if last or policy.advance == "pass" else "a pass, or no check leaning bad"
    checks = ", ".join(
        p.check + ("" if p.requests_needed is None else f" (~{p.requests_needed:.0f} more "
                   "candidate requests)")
        for p in waiting_on
    )
    if verdict is None:
        checks = "no verdict yet"
    on_timeout = "rollback" if policy.on_no_data == "rollback" else "pause for a person"
    return Progress(
        summary=f"{where}: bake over, waiting for {needs}{warm_words}"
        + (f"; waiting on {checks}" if checks else "")
        + f"; then {then}; step deadline in {_left(step_deadline_left)} (then {on_timeout})"
        + tail,
        stage="waiting", **figures)
