"""The API's documents: what a rollout, its events and a queued command look like over HTTP.

Where this sits: users submit plans and steer rollouts through the HTTP API; the engine keeps
each rollout as a store record whose ``state`` is its own JSON. These pydantic models are the
public face of those records (and so the OpenAPI document's schemas), and ``rollout_view``
builds one from a record. Times are ISO 8601 in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal, cast

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rollout.analysis.spec import Policy
from rollout.analysis.verdict import VerdictRecord
from rollout.api.auth import Role
from rollout.engine.decide import DEFAULT_TIMING, Timing
from rollout.engine.model import GateState, Phase, RolloutState
from rollout.engine.progress import Progress, progress
from rollout.plan import (
    AlertChannel,
    AnyPlan,
    GateName,
    PlanError,
    judged_weights,
    validate_plan,
)
from rollout.redaction import redacted_plan
from rollout.store.model import (
    SUCCEEDED,
    TERMINAL,
    Command,
    CommandKind,
    EventRecord,
    PhaseName,
    RolloutRecord,
)
from rollout.store.model import AliasMove as StoredAliasMove
from rollout.store.model import RolloutSummary as StoredSummary
from rollout.vocabulary import GateAnswer

__all__ = ["CommandKind", "PhaseName"]  # the store's vocabularies, re-exported for the API
Number = float | str | None  # verdict numbers: "+Inf"/"-Inf" where infinite, null where NaN


# ---- errors --------------------------------------------------------------------------------


class FieldIssue(BaseModel):
    field: str = Field(description="Where the problem is, e.g. steps[1].weight.")
    message: str


class ErrorDetail(BaseModel):
    code: str = Field(
        description="Stable word: invalid_plan, invalid_request, rollout_active, "
        "rollout_not_found, ambiguous_rollout, rollout_finished, command_not_allowed, "
        "command_queued, endpoint_not_found, endpoint_permission, "
        "workspace_unavailable, workspace_error, store_unavailable, unauthenticated, "
        "forbidden, body_too_large, plan_too_large, unsupported_media_type, cross_site, "
        "host_not_allowed, not_found, method_not_allowed, "
        "internal."
    )
    message: str
    details: list[FieldIssue] | None = Field(
        default=None, description="invalid_plan / invalid_request: every invalid field."
    )
    active_rollout: str | None = Field(
        default=None, description="rollout_active: the rollout holding the endpoint."
    )
    phase: str | None = Field(
        default=None,
        description="command_not_allowed, command_queued, rollout_finished: the rollout's phase.",
    )
    allowed_commands: list[str] | None = Field(
        default=None,
        description="command_not_allowed, command_queued, rollout_finished: the commands the "
        "rollout takes in its phase (pause, resume, promote, abort).",
    )
    candidates: list[str] | None = Field(
        default=None, description="ambiguous_rollout: the ids of every rollout that fits."
    )


class ErrorResponse(BaseModel):
    error: ErrorDetail


# ---- rollouts ------------------------------------------------------------------------------


class CheckResult(BaseModel):
    """One check of a verdict, with the numbers behind its outcome."""

    model_config = ConfigDict(extra="allow")

    check: str | None = Field(default=None, description="The check, as the policy states it.")
    metric: str | None = None
    outcome: str | None = Field(default=None, description="pass, fail or inconclusive.")
    reason: str | None = None
    candidate_value: Number = Field(default=None, description="The metric on the candidate.")
    baseline_value: Number = Field(default=None, description="The metric on the baseline.")
    candidate_n: Number = Field(default=None, description="Samples behind candidate_value.")
    baseline_n: Number = Field(default=None, description="Samples behind baseline_value.")
    limit: str | None = Field(default=None, description="The tolerance, in words.")


class Verdict(BaseModel):
    """The judge's last answer, as stored with the rollout (more keys may be present)."""

    model_config = ConfigDict(extra="allow")

    outcome: str | None = Field(default=None, description="pass, fail or inconclusive.")
    summary: str | None = Field(
        default=None,
        description="The verdict in one plain sentence, values with units, then what it means "
        "(absent from verdicts recorded before it existed).",
    )
    reason: str | None = Field(
        default=None, description="The judge's reasoning, check by check (e-values are in each "
        "check's detail.e_values)."
    )
    may_advance: bool | None = None
    judge: str | None = None
    policy: str | None = None
    look: int | None = None
    candidate_requests: Number = None
    baseline_requests: Number = None
    checks: list[CheckResult] = Field(default_factory=list)
    missing: list[str] = Field(default_factory=list)


class Gate(BaseModel):
    """A gate hook the rollout is waiting at (README, "Gates and hooks")."""

    name: GateName
    waiting_since: datetime = Field(description="When the wait (and its limit) began.")
    calls: int = Field(description="Calls made so far in this wait, each with its retries.")
    next_call_at: datetime | None = Field(
        description="When the gate is asked again; null: at the next look."
    )
    last_answer: GateAnswer | None
    last_reason: str | None = Field(description="The gate's reason, or what failed.")
    last_status: int | None = Field(description="The HTTP status of the last answer, if any.")
    held: bool = Field(description="The rollout is paused on this gate's answer.")


class AliasMove(BaseModel):
    """What a promotion does to the plan's ``on_success.set_alias``, and how far it got."""

    alias: str = Field(description="The alias moved on success, e.g. main.ml.ads_model@champion.")
    version: str = Field(description="The candidate's version, where the alias moves.")
    status: Literal["waiting", "done", "retrying", "not_made"] = Field(
        description="waiting (the rollout runs, or the move is being made), done, retrying "
        "(the workspace refused it so far: last_error), not_made (the rollout ended without "
        "a promotion; the alias stays where it was)."
    )
    previous_version: str | None = Field(
        description="The version the alias named at submission (null: it was not set)."
    )
    attempts: int = Field(description="Tries so far.")
    done_at: datetime | None
    last_error: str | None


class Rollout(BaseModel):
    """A rollout: its plan, where it is, and why."""

    id: str
    name: str | None = Field(description="The plan's optional label.")
    endpoint: str
    strategy: Literal["canary", "ab", "blue_green"]
    candidate: str = Field(description="The candidate's served entity name.")
    on_success: str | None = Field(
        default=None,
        description="The alias a promotion moves (on_success.set_alias), if any.",
    )
    alias_move: AliasMove | None = Field(
        default=None,
        description="With on_success: what became of the alias move (GET of one rollout only).",
    )
    candidate_source: str | None = Field(
        default=None,
        description="For a candidate given by Unity Catalog alias: the alias and the version "
        "it named at submission, e.g. 'main.ml.ads_model@challenger = version 7'.",
    )
    baseline: str | None = Field(
        description="The baseline's served entity name (known once the rollout prepared)."
    )
    policy: str = Field(description="Name of the analysis policy (stored resolved in plan).")
    phase: PhaseName
    step: int = Field(description="Index (0-based) of the current step in steps.")
    steps: list[int] = Field(
        description="Judged candidate weights in order: canary steps (100 % follows), "
        "[split] for ab, [100] for blue_green."
    )
    candidate_weight: int = Field(description="Candidate traffic percentage now.")
    skipped_steps: list[int] = Field(
        default_factory=list,
        description="Indexes (0-based, as step) of the steps an operator's promote skipped "
        "before the judge finished them: skipped, not passed.",
    )
    leaned_steps: list[int] = Field(
        default_factory=list,
        description="Indexes (0-based, as step) of the steps that moved on at the end of their "
        "bake without a pass, no check leaning towards a regression (advance: lean).",
    )
    last_verdict: Verdict | None
    pause_reason: str | None
    ending_reason: str | None
    gate: Gate | None = Field(
        default=None, description="The gate hook the rollout is waiting at, if any."
    )
    gates_passed: list[GateName] = Field(
        default_factory=list, description="Gate hooks that said yes (never asked again)."
    )
    report: dict[str, Any] | None = Field(description="The A/B report, once written.")
    next: Progress | None = Field(
        default=None,
        description="What happens next: bake, warm-up and A/B time left, when the next step "
        "may start and which checks it waits on, the deadlines (computed when the document "
        "is served; null for a plan this version cannot read).",
    )
    created_at: datetime
    updated_at: datetime
    started_at: datetime
    plan: dict[str, Any] = Field(
        description="The validated plan with its policy inlined; alert channels and hooks "
        "show the scheme and host of their url only, and a secret or routing_key as "
        "'(redacted)'."
    )


class SubmittedRollout(Rollout):
    """A rollout just stored, with what its submitter should know before it starts."""

    warnings: list[str] = Field(
        default_factory=list,
        description="What may keep the rollout from going as planned; never a refusal. "
        "Low traffic: the endpoint's recent requests per second (from its export-metrics) "
        "times the first step's weight and step deadline stay below the policy's "
        "min_requests, so the step cannot get a verdict and the rollout will pause for a "
        "person (or roll back under on_no_data: rollback). Empty when the metrics could not "
        "be read.",
    )


class RolloutList(BaseModel):
    rollouts: list[Rollout] = Field(description="Newest first.")


class VerdictSummary(BaseModel):
    """The judge's last answer in brief; the rollout's own document has the numbers."""

    outcome: str | None = Field(description="pass, fail or inconclusive.")
    reason: str | None = Field(description="Why, cut to 200 characters.")


class RolloutSummary(BaseModel):
    """A rollout in brief: what a list shows, read without the rollout's history."""

    id: str
    name: str | None = Field(description="The plan's optional label.")
    endpoint: str
    phase: PhaseName
    strategy: Literal["canary", "ab", "blue_green"]
    candidate: str = Field(description="The candidate's served entity name.")
    candidate_entity: str | None = Field(description="The candidate's entity_name.")
    candidate_version: str | None = Field(description="The candidate's entity_version.")
    baseline: str | None = Field(description="The baseline's served entity name, once known.")
    step: int = Field(description="Index (0-based) of the current step, as in a Rollout.")
    step_count: int = Field(
        description="How many judged steps there are: len(steps) of the Rollout document."
    )
    candidate_weight: int = Field(description="Candidate traffic percentage now (live split).")
    last_verdict: VerdictSummary | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime
    due_at: datetime | None = Field(description="When the controller looks at it next.")
    version: int = Field(description="Grows by one with every decision stored.")


class RolloutPage(BaseModel):
    """One page of a list; follow next_cursor for the next."""

    rollouts: list[RolloutSummary] | list[Rollout] = Field(
        description="Newest first: summaries (view=summary) or whole rollouts (view=full)."
    )
    next_cursor: str | None = Field(
        description="Pass as cursor to get the next page; null on the last page. Opaque. "
        "Rollouts created after the first page sort before it, so paging never repeats nor "
        "skips one."
    )


class Event(BaseModel):
    """One entry of a rollout's log: a transition, a verdict, a manual action."""

    seq: int = Field(description="1, 2, 3... without gaps.")
    at: datetime
    kind: str
    from_phase: str | None
    to_phase: str | None
    reason: str
    data: dict[str, Any]


class EventList(BaseModel):
    events: list[Event]


class QueuedCommand(BaseModel):
    id: int
    kind: CommandKind


class CommandAccepted(BaseModel):
    """A command was queued; the engine applies it (or records why not) at its next look."""

    command: QueuedCommand
    rollout: Rollout = Field(description="The rollout as it was when the command was queued.")


# ---- command bodies ------------------------------------------------------------------------


class _CommandBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReasonBody(_CommandBody):
    """Optional body of pause and abort."""

    reason: str | None = Field(
        default=None, max_length=2000, description="Why; kept in the event log and alerts."
    )


class PromoteBody(_CommandBody):
    """Optional body of promote."""

    full: bool = Field(
        default=False,
        description="true: straight to 100 % (promote_full); false: skip to the next step.",
    )


class EmptyBody(_CommandBody):
    """resume takes no fields."""


class AlertsBody(_CommandBody):
    """Body of PUT /rollouts/{id}/alerts: the rollout's alert channels, all of them."""

    alerts: list[AlertChannel] = Field(
        max_length=20,
        description="Replaces the plan's channels (an empty list removes them); the secrets, "
        "routing keys and URLs given here are stored and used, never shown again.",
    )


# ---- the caller ----------------------------------------------------------------------------


class Session(BaseModel):
    """Who is asking: the role of the presented token, so a client offers only what it may do."""

    role: Role = Field(
        description="viewer reads; operator also submits, pauses, resumes, promotes and "
        "aborts. An open API (no tokens configured) answers operator."
    )
    auth: bool = Field(
        description="Whether the API checks tokens; false: an open API, which listens on "
        "loopback only."
    )


# ---- health --------------------------------------------------------------------------------


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    problems: dict[str, str] = Field(
        default_factory=dict, description="What is not ready, by component."
    )
    owned: list[str] | None = Field(
        default=None,
        description="The rollouts this replica drives now (holds the lease of), by id.",
    )


# ---- building views ------------------------------------------------------------------------


def utc(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)




def _candidate_name(plan: AnyPlan | None, raw: dict[str, Any]) -> str:
    if plan is not None:
        return plan.candidate.served_name
    candidate = raw.get("candidate")
    if isinstance(candidate, dict):
        return str(candidate.get("name") or candidate.get("entity_name") or "?")
    return "?"


def _policy_name(raw: dict[str, Any]) -> str:
    policy = raw.get("policy")
    if isinstance(policy, dict):
        return str(policy.get("name") or "inline")
    return str(policy or "default")


def _verdict(verdict: VerdictRecord | None) -> Verdict | None:
    # The verdict's stored JSON, as the document has always shown it.
    return None if verdict is None else Verdict.model_validate(verdict.data())


def _progress(
    plan: AnyPlan | None, record: RolloutRecord, state: RolloutState, now: float | None,
    timing: Timing,
) -> Progress | None:
    if plan is None or now is None:
        return None
    try:
        policy = Policy.model_validate(record.plan.get("policy"))
    except ValidationError:
        return None
    return progress(plan, policy, state, Phase(record.phase), now, timing=timing)


def rollout_view(
    record: RolloutRecord, now: float | None = None, timing: Timing = DEFAULT_TIMING
) -> Rollout:
    """The public document of a stored rollout; ``next`` is computed when ``now`` is given."""
    state = RolloutState.model_validate(record.state)
    plan: AnyPlan | None
    try:
        plan = validate_plan(record.plan, stored=True)
    except PlanError:
        # Stored by code whose plan format has since changed: show what can be read.
        plan = None
    strategy = record.plan.get("strategy")
    if plan is not None:
        strategy = plan.strategy
    steps = judged_weights(plan) if plan is not None else []
    baseline = state.baseline
    if baseline is None and plan is not None:
        baseline = plan.baseline
    return Rollout(
        id=record.id,
        name=plan.name if plan is not None else record.plan.get("name"),
        endpoint=record.endpoint,
        strategy=strategy if strategy in ("ab", "blue_green") else "canary",
        candidate=_candidate_name(plan, record.plan),
        candidate_source=(
            plan.candidate.describe()
            if plan is not None and plan.candidate.alias is not None
            else None
        ),
        on_success=(
            plan.on_success.set_alias
            if plan is not None and plan.on_success is not None
            else None
        ),
        baseline=baseline,
        policy=_policy_name(record.plan),
        phase=cast(PhaseName, record.phase),  # the store keeps known phases only
        step=state.step,
        steps=steps,
        candidate_weight=state.candidate_weight,
        skipped_steps=list(state.skipped_steps),
        leaned_steps=list(state.leaned_steps),
        last_verdict=_verdict(state.last_verdict),
        pause_reason=state.pause_reason,
        ending_reason=state.ending_reason,
        gate=_gate(state.gate),
        gates_passed=list(state.gates_passed),
        report=state.report,
        next=_progress(plan, record, state, now, timing),
        created_at=utc(record.created_at),
        updated_at=utc(record.updated_at),
        started_at=utc(state.started_at),
        plan=redacted_plan(record.plan),
    )


def _gate(gate: GateState | None) -> Gate | None:
    if gate is None:
        return None
    return Gate(
        name=gate.name,
        waiting_since=utc(gate.started_at),
        calls=gate.calls,
        next_call_at=None if gate.next_call_at is None else utc(gate.next_call_at),
        last_answer=gate.last_answer,
        last_reason=gate.last_reason,
        last_status=gate.last_status,
        held=gate.held,
    )


def alias_move_view(record: RolloutRecord, move: StoredAliasMove | None) -> AliasMove | None:
    """The rollout's alias move as its document shows it (None: the rollout has none)."""
    if move is None:
        return None
    phase = record.phase
    on_success = record.plan.get("on_success")
    previous = on_success.get("previous_version") if isinstance(on_success, dict) else None
    if move.done_at is not None:
        status: Literal["waiting", "done", "retrying", "not_made"] = "done"
    elif phase in TERMINAL and phase != SUCCEEDED:
        status = "not_made"
    elif move.last_error is not None:
        status = "retrying"
    else:
        status = "waiting"
    return AliasMove(
        alias=f"{move.model}@{move.alias}",
        version=move.version,
        status=status,
        previous_version=None if previous is None else str(previous),
        attempts=move.attempts,
        done_at=None if move.done_at is None else utc(move.done_at),
        last_error=move.last_error,
    )


def summary_view(summary: StoredSummary) -> RolloutSummary:
    """The public document of a stored summary."""
    verdict = None
    if summary.verdict_outcome is not None or summary.verdict_reason is not None:
        verdict = VerdictSummary(outcome=summary.verdict_outcome, reason=summary.verdict_reason)
    strategy = summary.strategy if summary.strategy in ("ab", "blue_green") else "canary"
    return RolloutSummary(
        id=summary.id,
        name=summary.name,
        endpoint=summary.endpoint,
        phase=cast(PhaseName, summary.phase),  # the store keeps known phases only
        strategy=cast(Literal["canary", "ab", "blue_green"], strategy),
        candidate=summary.candidate,
        candidate_entity=summary.candidate_entity,
        candidate_version=summary.candidate_version,
        baseline=summary.baseline,
        step=summary.step,
        step_count=summary.step_count,
        candidate_weight=summary.candidate_weight,
        last_verdict=verdict,
        created_at=utc(summary.created_at),
        updated_at=utc(summary.updated_at),
        started_at=utc(summary.started_at),
        due_at=None if summary.due_at is None else utc(summary.due_at),
        version=summary.version,
    )


def event_view(event: EventRecord) -> Event:
    return Event(
        seq=event.seq,
        at=utc(event.at),
        kind=event.kind,
        from_phase=event.from_phase,
        to_phase=event.to_phase,
        reason=event.reason,
        data=event.data,
    )


def command_view(command: Command) -> QueuedCommand:
    return QueuedCommand(id=command.id, kind=cast(CommandKind, command.kind))
