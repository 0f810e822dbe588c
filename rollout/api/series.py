"""A rollout's metric windows over time, per arm, with the moments its split changed.

Where this sits: people watch rollouts on the status page (``rollout/api/static``), which reads
the same HTTP API as the ``rollout`` CLI. ``GET /api/v1/rollouts/{id}/series`` answers with the
document built here, from what the engine already stores: the rollout's ``WindowTracker`` state
(every export-metrics window it kept, each counted once) reduced to the candidate's and the
baseline's windows, and the event log reduced to the changes of the candidate's weight (a step
applied, the promotion to 100 %, the start of a rollback, the baseline restored). The windows
are the ones the store still keeps (``Store.windows``: the current split's unfolded windows and
the last hour's); a state saved before windows had a table of their own carries them inside.
The page draws error rate and p99 latency per window for both arms and marks those changes, so
a person sees what the judge saw and when the traffic moved.

Nothing here is judged or recomputed for the engine: a window's numbers are the per-window
counts export-metrics reported, the error rate is 5xx over requests, and p99 is read from the
window's latency histogram as the judges read it (``Histogram.quantile``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from rollout.api.schemas import PhaseName, rollout_view, utc
from rollout.engine.model import Arm, RolloutState
from rollout.metrics.model import EntityWindow
from rollout.metrics.windows import MetricsStateError, WindowTracker
from rollout.store.model import EventRecord, RolloutRecord

DEFAULT_WINDOWS = 300
MAX_WINDOWS = 1000

MarkKind = Literal["step", "promoted", "rollback", "baseline_restored"]


class ArmWindow(BaseModel):
    """One arm's numbers in one window; a field export-metrics did not report is null."""

    requests: float | None = Field(description="Requests served in the window.")
    errors_5xx: float | None = Field(description="Of which answered with a 5xx.")
    error_rate: float | None = Field(
        description="errors_5xx / requests (a fraction); null without requests or error data."
    )
    p99_ms: float | None = Field(
        description="99th percentile latency in milliseconds, from the window's histogram; "
        "null without latency data."
    )


class SeriesWindow(BaseModel):
    """One export-metrics window: the candidate's and the baseline's numbers."""

    start: datetime = Field(description="When the window began (UTC).")
    start_ms: int = Field(description="The same instant in epoch milliseconds.")
    candidate: ArmWindow | None = Field(description="Null when the candidate served nothing.")
    baseline: ArmWindow | None = Field(description="Null when the baseline served nothing.")


class StepMark(BaseModel):
    """A moment the candidate's share of the traffic changed (or a rollback began)."""

    at: datetime
    at_ms: int
    kind: MarkKind = Field(
        description="step: a step's split is live; promoted: the candidate serves 100 %; "
        "rollback: the rollback was decided; baseline_restored: the baseline serves 100 %."
    )
    step: int | None = Field(description="Index (0-based) of the step, for kind step.")
    weight: int | None = Field(
        description="Candidate percentage from this moment; null when the event does not move "
        "traffic itself (a rollback decided)."
    )
    reason: str


class RolloutSeries(BaseModel):
    """What the status page charts for one rollout."""

    id: str
    endpoint: str
    phase: PhaseName
    candidate: str = Field(description="The candidate's served entity name.")
    baseline: str | None = Field(description="The baseline's served entity name, once known.")
    candidate_weight: int = Field(description="Candidate traffic percentage now.")
    updated_at: datetime
    split_applied_at: datetime | None = Field(
        description="When the current split took effect: windows from then on are the ones "
        "judged for the current step."
    )
    windows: list[SeriesWindow] = Field(
        description="Oldest first; the newest `limit` windows in which either arm served."
    )
    omitted_windows: int = Field(description="Older windows left out by `limit`.")
    steps: list[StepMark] = Field(description="Changes of the split, oldest first.")
    note: str | None = Field(
        default=None, description="Why windows may be missing (an unreadable metrics state)."
    )


def series_view(
    record: RolloutRecord,
    events: Sequence[EventRecord],
    *,
    limit: int = DEFAULT_WINDOWS,
    windows: Sequence[dict[str, Any]] = (),
    steps: Sequence[dict[str, Any]] = (),
) -> RolloutSeries:
    """The chart's document for a stored rollout, its event log, its stored windows
    (``StoredWindow.data``) and its step summaries (``StepSummary.data``): a step whose
    windows are gone (an earlier step, or a finished rollout) is one point at its start,
    its sums over the whole step."""
    view = rollout_view(record)
    state = RolloutState.model_validate(record.state)
    note = None
    kept: list[EntityWindow] = []
    if state.tracker or windows:
        try:
            kept = WindowTracker.from_state(
                state.tracker or WindowTracker().to_state(),
                [EntityWindow.from_dict(data) for data in windows],
            ).windows()
        except (MetricsStateError, KeyError, TypeError, ValueError) as exc:
            # Stored by code whose tracker format has since changed: the rest still shows.
            note = f"the stored metric windows cannot be read: {exc}"
    arms = {view.candidate: "candidate"}
    if view.baseline is not None and view.baseline != view.candidate:
        arms[view.baseline] = "baseline"
    by_start: dict[int, dict[str, ArmWindow]] = {}
    for window in kept:
        arm = arms.get(window.entity) if window.entity is not None else None
        if arm is None or window.start_ms is None:
            continue
        by_start.setdefault(window.start_ms, {})[arm] = _arm(window)
    oldest = min(by_start, default=None)
    for step in steps:
        at = step.get("split_applied_at")
        if not isinstance(at, int | float):
            continue
        start = round(at * 1000)
        if oldest is not None and start >= oldest:
            continue  # its windows are still shown one by one
        point = {
            arm: _arm_of_sums(step.get(key))
            for arm, key in (("candidate", "candidate"), ("baseline", "control"))
        }
        by_start[start] = {arm: value for arm, value in point.items() if value is not None}
    starts = sorted(by_start)
    shown = starts[-limit:]
    return RolloutSeries(
        id=view.id,
        endpoint=view.endpoint,
        phase=view.phase,
        candidate=view.candidate,
        baseline=view.baseline,
        candidate_weight=view.candidate_weight,
        updated_at=view.updated_at,
        split_applied_at=None if state.split_applied_at is None else utc(state.split_applied_at),
        windows=[
            SeriesWindow(
                start=utc(start / 1000),
                start_ms=start,
                candidate=by_start[start].get("candidate"),
                baseline=by_start[start].get("baseline"),
            )
            for start in shown
        ],
        omitted_windows=len(starts) - len(shown),
        steps=[mark for event in events if (mark := _mark(event)) is not None],
        note=note,
    )


def _arm(window: EntityWindow) -> ArmWindow:
    requests = None if "requests" in window.missing else _finite(window.requests)
    errors = None if "errors_5xx" in window.missing else _finite(window.errors_5xx)
    rate = None
    if requests and errors is not None:
        rate = errors / requests
    p99 = None
    if "latency" not in window.missing and window.latency is not None:
        p99 = _finite(window.latency.quantile(0.99))
    return ArmWindow(requests=requests, errors_5xx=errors, error_rate=rate, p99_ms=p99)


def _arm_of_sums(data: object) -> ArmWindow | None:
    """One arm's numbers from a step summary's sums (``engine.model.Arm``'s JSON)."""
    if not isinstance(data, dict):
        return None
    try:
        totals = Arm.model_validate(data).totals()
    except ValueError:
        return None
    if totals.windows == 0:
        return None
    return _arm(
        EntityWindow(
            entity=None,
            start_ms=None,
            requests=totals.requests,
            errors_5xx=totals.errors_5xx,
            latency=totals.latency,
            missing=frozenset({"latency"}) if totals.latency is None else frozenset(),
        )
    )


def _finite(value: float | None) -> float | None:
    # An exporter's NaN or infinity cannot be charted (nor written as strict JSON).
    return value if value is not None and math.isfinite(value) else None


def _mark(event: EventRecord) -> StepMark | None:
    step: int | None = None
    weight: int | None = None
    kind: MarkKind
    if event.kind == "step_applied":
        kind = "step"
        step = _int(event.data.get("step"))
        weight = _int(event.data.get("weight"))
    elif event.kind == "baseline_restored":
        kind, weight = "baseline_restored", 0
    elif event.to_phase == "succeeded" and event.from_phase != "succeeded":
        kind, weight = "promoted", 100
    elif event.to_phase == "rolling_back" and event.from_phase != "rolling_back":
        kind = "rollback"
    else:
        return None
    return StepMark(
        at=utc(event.at),
        at_ms=round(event.at * 1000),
        kind=kind,
        step=step,
        weight=weight,
        reason=event.reason,
    )


def _int(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value)
