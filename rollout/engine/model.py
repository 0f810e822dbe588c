"""The engine's vocabulary: a rollout's state, what the runner observed, and what to do next.

Where this sits: the runner builds an ``Observation`` (the endpoint as Databricks reports it,
new metric windows, the outcome of the last config update, manual commands), calls
``rollout.engine.decide.decide(plan, state, observation, now)``, persists the returned
``Decision`` (new state, events, alerts, notification hooks) in one store transaction, and only
then carries out its ``effect`` (a config PUT, blue/green preflight checks, a gate hook call).
Everything here is plain data that round-trips through JSON, because the state is what a
restarted controller resumes from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from rollout import vocabulary as stored
from rollout.analysis.queries import QueryReading
from rollout.analysis.verdict import VerdictRecord
from rollout.metrics.model import (
    GAUGE_FIELDS,
    ArmTotals,
    EntityWindow,
    Histogram,
    UnattributableScrape,
)
from rollout.metrics.windows import TrackerState
from rollout.plan import GateName, NotificationName, Severity
from rollout.vocabulary import CommandKind, GateAnswer


class Phase(StrEnum):
    """A rollout's phase; the names are the store's (``rollout.store.model``), spelled once."""

    PENDING = stored.PENDING
    PREPARING = stored.PREPARING
    PROGRESSING = stored.PROGRESSING
    PAUSED = stored.PAUSED
    PROMOTING = stored.PROMOTING
    SUCCEEDED = stored.SUCCEEDED
    ROLLING_BACK = stored.ROLLING_BACK
    ROLLED_BACK = stored.ROLLED_BACK
    ABORTED = stored.ABORTED
    FAILED = stored.FAILED

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_PHASES


TERMINAL_PHASES = frozenset(Phase(name) for name in stored.TERMINAL)

TargetPurpose = Literal[
    "deploy",  # add the candidate at 0 % so it builds with no traffic on it
    "step",  # move the split to the current step's weight
    "switch",  # blue/green: all traffic to the candidate, baseline kept at 0 %
    "promote",  # candidate alone at 100 %, baseline removed
    "restore",  # rollback, first half: baseline at 100 %, candidate kept at 0 %
    "remove_candidate",  # rollback, second half: candidate removed
]


# Why a rollout is being rolled back, as a label for metrics and alert routing.
RollbackCause = Literal[
    "analysis", "update_failed", "preflight", "deadline", "no_data", "ab_lost", "aborted", "gate"
]



class Target(BaseModel):
    """A config the engine wants live, from the moment it decides until it is confirmed.

    Persisted before the PUT is sent, so a controller killed between the PUT and its
    confirmation finds the intent on restart and recognises its own update instead of
    mistaking it for a human's change.
    """

    model_config = ConfigDict(frozen=True)

    purpose: TargetPurpose
    entities: list[dict[str, Any]]
    split: dict[str, int]
    # Fingerprints (``decide.config_key``) of configs this rollout itself put or was about to
    # put when the target was decided. Seeing one of them live means "not applied yet, send
    # again"; seeing anything else live means a human changed the endpoint.
    known: list[str]
    requested_at: float
    attempts: int = 1
    # The config version the PUT of this attempt announced (its response's pending
    # ``config_version``), once known. An endpoint showing UPDATE_FAILED while its live
    # version is below this one says *this* update failed, not some earlier one.
    announced_version: int | None = None
    # The endpoint's auto_capture_config as the rollout found it, sent back unchanged.
    auto_capture_config: dict[str, Any] | None = None

    @property
    def entity_names(self) -> list[str]:
        return sorted(str(e["name"]) for e in self.entities)


GAUGES_KEPT = 15  # gauge values kept per arm (one per window): levels, not evidence


def _dropped(totals: ArmTotals) -> dict[str, int]:
    """Gauge values dropped so far, once the lists are cut to GAUGES_KEPT."""
    dropped = dict(totals.gauges_dropped)
    for name in GAUGE_FIELDS:
        values = getattr(totals, name)
        if len(values) > GAUGES_KEPT:
            dropped[name] = dropped.get(name, 0) + len(values) - GAUGES_KEPT
    return dropped


class Arm(BaseModel):
    """``ArmTotals`` in a JSON-friendly form (the state is persisted as JSON)."""

    windows: int = 0
    requests: float = 0.0
    errors_4xx: float = 0.0
    errors_5xx: float = 0.0
    latency: dict[str, Any] | None = None
    queue_time: dict[str, Any] | None = None
    cpu_percent: list[float] = Field(default_factory=list)
    mem_percent: list[float] = Field(default_factory=list)
    gpu_percent: list[float] = Field(default_factory=list)
    gpu_mem_percent: list[float] = Field(default_factory=list)
    inference_latency: dict[str, Any] | None = None
    missing: dict[str, int] = Field(default_factory=dict)
    gauges_dropped: dict[str, int] = Field(default_factory=dict)

    def totals(self) -> ArmTotals:
        return ArmTotals(
            windows=self.windows,
            requests=self.requests,
            errors_4xx=self.errors_4xx,
            errors_5xx=self.errors_5xx,
            latency=None if self.latency is None else Histogram.from_dict(self.latency),
            queue_time=None if self.queue_time is None else Histogram.from_dict(self.queue_time),
            cpu_percent=list(self.cpu_percent),
            mem_percent=list(self.mem_percent),
            gpu_percent=list(self.gpu_percent),
            gpu_mem_percent=list(self.gpu_mem_percent),
            inference_latency=None
            if self.inference_latency is None
            else Histogram.from_dict(self.inference_latency),
            missing=dict(self.missing),
            gauges_dropped=dict(self.gauges_dropped),
        )

    @classmethod
    def of(cls, totals: ArmTotals) -> Arm:
        return cls(
            windows=totals.windows,
            requests=totals.requests,
            errors_4xx=totals.errors_4xx,
            errors_5xx=totals.errors_5xx,
            latency=None if totals.latency is None else totals.latency.to_dict(),
            queue_time=None if totals.queue_time is None else totals.queue_time.to_dict(),
            # Gauges are levels; the last quarter hour of windows is plenty for an average.
            cpu_percent=totals.cpu_percent[-GAUGES_KEPT:],
            mem_percent=totals.mem_percent[-GAUGES_KEPT:],
            gpu_percent=totals.gpu_percent[-GAUGES_KEPT:],
            gpu_mem_percent=totals.gpu_mem_percent[-GAUGES_KEPT:],
            inference_latency=None
            if totals.inference_latency is None
            else totals.inference_latency.to_dict(),
            missing=dict(totals.missing),
            gauges_dropped=_dropped(totals),
        )

    def plus(self, windows: list[EntityWindow]) -> Arm:
        totals = self.totals()
        for window in windows:
            totals.add(window)
        return Arm.of(totals)


class Folded(BaseModel):
    """The current split's windows that began before ``before_ms``, summed once for good.

    ``decide`` re-sums the split's windows at every look (so a revised window counts in its
    final form), but windows older than the runner's dedup horizon can no longer be revised
    nor find a late partner: ``decide`` folds them into these sums when the runner says so
    (``Observation.fold_before_ms``) and the runner stops keeping them. A look's cost and the
    stored windows then stay bounded however long a step runs.
    """

    model_config = ConfigDict(frozen=True)

    split_applied_at: float
    before_ms: int
    # Candidate windows folded: the judge's window count goes on from there.
    candidate_windows: int = 0
    candidate: Arm = Field(default_factory=Arm)
    control: Arm = Field(default_factory=Arm)
    served: Arm = Field(default_factory=Arm)
    warm_candidate: Arm = Field(default_factory=Arm)
    warm_control: Arm = Field(default_factory=Arm)


class GateState(BaseModel):
    """A gate the rollout is waiting at (``pre_rollout`` or ``confirm_promotion``).

    Persisted with every decision, so a restarted controller goes on waiting where this one
    stopped: a gate that said yes is in ``RolloutState.gates_passed`` and never called again;
    a call decided but not answered (``next_call_at`` None) is simply made again.
    """

    model_config = ConfigDict(frozen=True)

    name: GateName
    started_at: float  # the limit counts from here (the first call, or the last resume)
    calls: int = 0  # calls decided so far, each with its own retries
    # When the next call is due; None: now (or a call was in flight when the controller stopped).
    next_call_at: float | None = None
    last_answer: GateAnswer | None = None
    last_reason: str | None = None
    last_status: int | None = None
    last_at: float | None = None
    # The rollout is paused on this gate's answer: a resume asks it again, a promote
    # goes past it on an operator's word.
    held: bool = False
    # confirm_promotion: why the judge would promote (the promotion's reason once it says yes).
    promote_reason: str | None = None


class RolloutState(BaseModel):
    """Everything the engine knows about one rollout between two ticks."""

    model_config = ConfigDict(frozen=True)

    phase: Phase = Phase.PENDING
    started_at: float
    step: int = 0
    candidate_weight: int = 0
    baseline: str | None = None
    baseline_entity: dict[str, Any] | None = None
    other_entities: list[dict[str, Any]] = Field(default_factory=list)
    # The endpoint's legacy inference-table config at the start (None: it had none).
    auto_capture_config: dict[str, Any] | None = None
    target: Target | None = None
    # Windows that began at or after this instant (epoch seconds) show the current split.
    split_applied_at: float | None = None
    step_started_at: float | None = None
    # The current split's sums: candidate and control over the scored (paired, post-warm-up)
    # windows; ``served`` is everything the candidate served in the split, warm-up included.
    candidate: Arm = Field(default_factory=Arm)
    control: Arm = Field(default_factory=Arm)
    served: Arm = Field(default_factory=Arm)
    # The current split's candidate windows judged so far (each window is one unit of evidence).
    judged_windows: int = 0
    # The current split's oldest windows, summed (None: every window is still passed in).
    folded: Folded | None = None
    # Steps (from 0) that moved on at the end of their bake without a pass (advance: lean).
    leaned_steps: list[int] = Field(default_factory=list)
    judge_state: dict[str, Any] = Field(default_factory=dict)
    last_verdict: VerdictRecord | None = None
    # The current split's last verdict written to the event log ("outcome/may_advance") and
    # when: a verdict is logged when it differs, not at every look.
    verdict_logged: str | None = None
    verdict_logged_at: float | None = None
    preflight_pending: bool = False
    preflight_passed: bool = False
    paused_from: Phase | None = None
    pause_reason: str | None = None
    ending: Phase | None = None  # the terminal phase a rollback ends in (rolled_back/aborted)
    # Why the rollout is ending or ended; for ``failed``, what failed and what the endpoint
    # serves, then the rollback that was under way, if any ("while rolling back: ...").
    ending_reason: str | None = None
    ending_cause: RollbackCause | None = None
    build_logs: str | None = None
    report: dict[str, Any] | None = None
    # The runner's window tracker, its windows left out (they are stored apart); else JSON
    # this version cannot read as one, kept as stored: ``{}`` until the runner first keeps a
    # tracker, or a tracker of another ``STATE_VERSION`` (the rest of the state still loads,
    # and ``WindowTracker.from_state`` says why it cannot be read).
    tracker: TrackerState | dict[str, Any] = Field(
        default_factory=dict, union_mode="left_to_right"
    )
    put_failures: int = 0
    # The config the endpoint showed when the rollout's last change was confirmed
    # (``decide.config_key``): between changes, anything else is someone else's doing.
    live_key: str | None = None
    # The rollout deadline counts from here (the start, or the last resume).
    deadline_from: float | None = None
    # Alerts raised so far: numbers each alert's key, so two alerts never share one.
    alerts_raised: int = 0
    # Steps (0-based, as ``step``) an operator's promote skipped before the judge finished
    # them: shown as skipped, never as passed. Empty in states persisted before it existed.
    skipped_steps: list[int] = Field(default_factory=list)
    # The query checks' runs of failing and passing looks (``rollout.analysis.queries``).
    query_state: dict[str, Any] = Field(default_factory=dict)
    # Why the source of a query check cannot be asked, while it cannot (one alert per
    # outage: raised when this is set, resolved when it is cleared).
    query_outage: str | None = None
    # The gate being waited at, if any, and the gates that said yes (never called again).
    gate: GateState | None = None
    gates_passed: list[GateName] = Field(default_factory=list)


# ---- what the runner observed -------------------------------------------------------------


@dataclass(frozen=True)
class EndpointSnapshot:
    """The endpoint as one GET showed it, reduced to what the engine decides on."""

    ready: str
    config_update: str
    config_version: int | None
    entities: dict[str, dict[str, Any]]
    split: dict[str, int]
    pending_entities: list[str] | None = None
    pending_split: dict[str, int] | None = None
    pending_version: int | None = None
    auto_capture_config: dict[str, Any] | None = None

    @property
    def failed(self) -> bool:
        """The last update ended without being applied (the previous config keeps serving)."""
        return self.config_update in ("UPDATE_FAILED", "UPDATE_CANCELED")

    @property
    def updating(self) -> bool:
        return self.config_update == "IN_PROGRESS"

    @property
    def entity_names(self) -> list[str]:
        return sorted(self.entities)


UpdateKind = Literal["applied", "failed", "rejected", "conflict", "timeout", "unavailable"]


@dataclass(frozen=True)
class UpdateOutcome:
    """What became of the PUT the runner sent for the current target.

    ``config_version`` is the version the PUT's response announced (None when no PUT got
    through); ``build_logs`` the failing candidate's build logs, for a ``failed`` update.
    """

    kind: UpdateKind
    message: str = ""
    build_logs: str | None = None
    config_version: int | None = None


@dataclass(frozen=True)
class PreflightOutcome:
    """Blue/green checks on the candidate before any traffic moves to it."""

    smoke_sent: int
    smoke_failed: int
    schema_compatible: bool | None
    message: str = ""


# Which commands each phase acts on: the one table the engine takes its commands by
# (``rollout.engine.decide``) and the API refuses the others by, so that an accepted command
# is one the engine will apply. ``promote_full`` is ``promote`` with ``full: true``. A command
# queued while a config update is in flight waits for its confirmation; should the phase have
# changed by then, the engine records it as ignored (``command_ignored``).
# Before the first step is live (pending, preparing) pause and promote wait for it, except a
# blue/green pause during the warm-up, which holds the candidate at 0 %.
COMMANDS_BY_PHASE: dict[Phase, tuple[CommandKind, ...]] = {
    Phase.PENDING: ("pause", "promote", "promote_full", "abort"),
    Phase.PREPARING: ("pause", "promote", "promote_full", "abort"),
    Phase.PROGRESSING: ("pause", "promote", "promote_full", "abort"),
    Phase.PAUSED: ("resume", "promote", "promote_full", "abort"),
    Phase.PROMOTING: ("abort",),
    Phase.ROLLING_BACK: (),
    Phase.SUCCEEDED: (),
    Phase.ROLLED_BACK: (),
    Phase.ABORTED: (),
    Phase.FAILED: (),
}


def allowed_commands(phase: Phase) -> tuple[CommandKind, ...]:
    """The commands a rollout in ``phase`` acts on (``promote_full`` included)."""
    return COMMANDS_BY_PHASE[phase]


@dataclass(frozen=True)
class Command:
    id: int
    kind: CommandKind
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GateOutcome:
    """What the runner's call of a gate came to (``CallGate``): ``call`` is the call's number,
    ``attempts`` the requests it took, ``status`` the last HTTP status, if any answered."""

    gate: GateName
    call: int
    answer: GateAnswer
    reason: str
    status: int | None = None
    attempts: int = 1


@dataclass(frozen=True)
class Observation:
    """Inputs to one decision. ``endpoint`` is None when it could not be read this tick."""

    endpoint: EndpointSnapshot | None = None
    endpoint_missing: bool = False
    endpoint_error: str | None = None
    update: UpdateOutcome | None = None
    # Every window the runner's tracker keeps that began at or after the current split took
    # effect (and after ``state.folded.before_ms``), revisions applied: ``decide`` sums them
    # afresh at every look, on top of the folded sums.
    windows: tuple[EntityWindow, ...] = ()
    # Windows that began before this (epoch ms) will not change any more (the runner's dedup
    # horizon): ``decide`` may fold them into ``state.folded``; None folds nothing.
    fold_before_ms: int | None = None
    metrics_error: str | None = None
    # Set when the scrape had windows but none named a served entity (endpoint totals only).
    unattributable: UnattributableScrape | None = None
    commands: tuple[Command, ...] = ()
    preflight: PreflightOutcome | None = None
    # The policy's query checks, run once per arm at this look (empty: not run).
    readings: tuple[QueryReading, ...] = ()
    gate: GateOutcome | None = None


# ---- what to do ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PutConfig:
    target: Target


@dataclass(frozen=True)
class RunPreflight:
    candidate: str
    baseline: str
    smoke_requests: int
    smoke_body: dict[str, Any]
    schema_check: bool


@dataclass(frozen=True)
class CallGate:
    """Call the plan's gate ``gate`` (call number ``call``) with ``summary`` and ``details``
    in its body, and feed the answer back (``Observation.gate``)."""

    gate: GateName
    call: int
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


Effect = PutConfig | RunPreflight | CallGate



@dataclass(frozen=True)
class EventOut:
    kind: str
    reason: str
    from_phase: Phase | None
    to_phase: Phase | None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AlertOut:
    """A notification to send; ``key`` makes it unique per rollout (the outbox dedups on it)."""

    key: str
    event: str
    severity: Severity
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class HookOut:
    """A notification hook to send (``post_rollout``, ``on_rollback``): written to the alert
    outbox with the decision, so it is delivered at least once, after the decision is."""

    hook: NotificationName
    summary: str
    details: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    state: RolloutState
    events: tuple[EventOut, ...] = ()
    alerts: tuple[AlertOut, ...] = ()
    effect: Effect | None = None
    # Seconds until this rollout should be looked at again; None when it is finished.
    next_check_in: float | None = None
    consumed_commands: tuple[int, ...] = ()
    hooks: tuple[HookOut, ...] = ()
