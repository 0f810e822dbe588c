"""Whether an endpoint's traffic can give a rollout's first step a verdict, said up front.

Where this sits: ``POST /api/v1/rollouts`` (and so ``rollout submit``) validates a plan,
checks its endpoint, and reads the endpoint's export-metrics once before storing the
rollout. ``recent_traffic`` turns that scrape into requests per second; ``low_traffic_warning``
compares what the first judged step would see before its step deadline with the policy's
``min_requests``. Below it every verdict of the step is inconclusive, and the rollout pauses
for a person (or rolls back under ``on_no_data: rollback``) after hours of waiting; the
submitter learns it now. A warning, never a refusal: traffic may pick up, and a person may
choose to promote by hand. Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from rollout.analysis.spec import Policy
from rollout.engine.decide import Timing
from rollout.metrics.parse import Scrape
from rollout.plan import ABPlan, AnyPlan, BlueGreenPlan
from rollout.units import format_duration

# Databricks exports one window per minute; a scrape holding a single window cannot say how
# long it was.
DATABRICKS_WINDOW_SECONDS = 60.0
# Windows older than this before the newest one in a scrape say little about traffic now.
RECENT_SECONDS = 600.0


@dataclass(frozen=True)
class RecentTraffic:
    """Requests the endpoint served in all over ``seconds`` of its newest metric windows."""

    requests: float
    seconds: float

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def recent_traffic(
    scrape: Scrape,
    *,
    window_seconds: float = DATABRICKS_WINDOW_SECONDS,
    recent_seconds: float = RECENT_SECONDS,
) -> RecentTraffic | None:
    """The endpoint's requests over the scrape's windows of the last ``recent_seconds``.

    Sums every served entity's ``requests`` (or the endpoint totals when the series carry no
    entity label) per window. A window is ``window_seconds`` long unless the scrape holds
    several, whose spacing says how long; samples without a timestamp are one window, the
    last. None when the scrape cannot tell: no window, a window whose request count is
    unusable, or true cumulative counters (one scrape of those holds totals since some
    start, not a rate).
    """
    if scrape.kind != "window":
        return None
    labelled = scrape.has_entity_labels
    windows = [w for w in scrape.windows if (w.entity is not None) == labelled]
    if not windows or any("requests" in w.missing for w in windows):
        return None
    starts = sorted({w.start_ms for w in windows if w.start_ms is not None})
    if not starts:
        return RecentTraffic(sum(w.requests for w in windows), window_seconds)
    recent = [start for start in starts if start > starts[-1] - recent_seconds * 1000.0]
    gaps = [later - earlier for earlier, later in pairwise(recent)]
    length = min(gaps) / 1000.0 if gaps else window_seconds
    requests = sum(w.requests for w in windows if w.start_ms in recent)
    return RecentTraffic(requests=requests, seconds=length * len(recent))


@dataclass(frozen=True)
class _FirstStep:
    weight: int  # the candidate's share, in percent
    seconds: float  # how long it is judged before the rollout stops waiting
    how_long: str  # where that time comes from, in words
    baseline_seconds: float  # how long the baseline's share is summed as the control
    baseline_weight: int


def _first_step(plan: AnyPlan, timing: Timing) -> _FirstStep:
    factor = timing.step_deadline_factor
    if isinstance(plan, ABPlan):
        # An A/B split runs its whole duration, then reports once.
        return _FirstStep(
            plan.split,
            plan.duration,
            "the A/B duration",
            plan.duration,
            100 - plan.split,
        )
    if isinstance(plan, BlueGreenPlan):
        # After the switch the baseline serves nothing: its control is the warm-up, at 100 %.
        return _FirstStep(
            100,
            plan.bake * factor,
            f"bake {format_duration(plan.bake)} x step_deadline_factor {factor:g}",
            plan.warmup,
            100,
        )
    step = plan.canary_steps()[0]
    return _FirstStep(
        step.weight,
        step.bake * factor,
        f"bake {format_duration(step.bake)} x step_deadline_factor {factor:g}",
        step.bake * factor,
        100 - step.weight,
    )


def low_traffic_warning(
    endpoint: str,
    plan: AnyPlan,
    policy: Policy,
    timing: Timing,
    traffic: RecentTraffic,
) -> str | None:
    """A warning when the first judged step cannot reach ``min_requests`` on an arm in time.

    Each arm sees the recent requests per second times its share times the time it is judged
    (the step deadline: ``bake x step_deadline_factor``; an A/B split's duration; for a
    blue/green control, the warm-up). The baseline arm counts only when a check compares
    with it. None when every arm that counts would reach ``min_requests``.
    """
    needed = policy.min_requests
    rate = traffic.per_second
    step = _first_step(plan, timing)
    short: list[str] = []
    candidate = rate * step.weight / 100.0 * step.seconds
    if candidate < needed:
        short.append(
            f"at {step.weight} % for {format_duration(step.seconds)} ({step.how_long}) the "
            f"candidate would see about {candidate:,.0f} requests"
        )
    if any(check.compare == "baseline" for check in policy.metric_checks):
        baseline = rate * step.baseline_weight / 100.0 * step.baseline_seconds
        if baseline < needed:
            if isinstance(plan, BlueGreenPlan):
                short.append(
                    f"the {format_duration(step.baseline_seconds)} warm-up would give the "
                    f"baseline's control about {baseline:,.0f} requests"
                )
            else:
                short.append(
                    f"the baseline at {step.baseline_weight} % would see about "
                    f"{baseline:,.0f} requests"
                )
    if not short:
        return None
    if isinstance(plan, ABPlan):
        expect = "expect no winner: the A/B report cannot be conclusive and keeps the baseline"
    elif policy.on_no_data == "rollback":
        expect = "expect the rollout to roll back for want of data (on_no_data: rollback)"
    else:
        expect = "expect the rollout to pause for a person"
    return (
        f"low traffic: {endpoint} served {_rate(rate)} req/s over the last "
        f"{format_duration(traffic.seconds)}; {'; '.join(short)}, below min_requests "
        f"{needed}: {expect}"
    )


def _rate(per_second: float) -> str:
    if per_second >= 10:
        return f"{per_second:,.0f}"
    if per_second >= 1:
        return f"{per_second:.1f}"
    return f"{per_second:.2g}"
