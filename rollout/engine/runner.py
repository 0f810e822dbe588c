"""The runner: carries out what ``decide`` asks, against a real endpoint and a real store.

Where this sits: the scheduler calls ``Runner.reconcile(rollout_id)`` when a rollout is due.
One reconcile is: read the rollout from the store; observe (GET the endpoint, scrape
export-metrics into new windows, run the policy's checks on own metrics once per arm through
``rollout.metrics.prometheus``, read queued commands); ``decide``; commit the decision (new
state, events, alert-outbox rows, consumed commands) in one transaction; then carry out the
decision's effect (PUT the config and wait until it is applied, run the blue/green
preflight, or call a gate hook of the plan) and feed its outcome straight back into
``decide``. The plan's notification hooks are outbox rows (channel ``hook``) of the same
transaction, delivered by the alert dispatcher (``rollout.alerts.hooks``).

Crash safety comes from that order. The intent (a ``Target``) is committed before the PUT, and
the confirmation (the ``step_applied`` event) only after the endpoint shows the config, so a
process killed anywhere in between finds the intent on restart, recognises its own update on
the endpoint, and neither skips nor repeats a step. Window dedup state is committed with the
verdict it fed, so no window is judged twice. The store's version check makes a second runner
working on the same rollout fail its commit instead of double-acting.

What a config change can come to, as the outcome ``decide`` gets (``UpdateOutcome``)::

    PUT config
    ├── 409 UpdateInProgress ........ "conflict": wait for the other update, then send again
    ├── 400 InvalidRequest .......... "rejected": roll back; never sent again
    ├── 404 NotFound ................ the endpoint is gone: failed
    ├── any other ServingError ...... "unavailable": looked at again, up to the update deadline
    └── accepted: the response announces config version v (kept with the target)
        └── wait, one look at most
            ├── applied ............. "applied"
            ├── UpdateFailed ........ "failed" + the candidate's build logs: roll back
            ├── ConfigMismatch ...... the endpoint as read: a late read, or someone's drift
            └── UpdateTimeout, other  "timeout" / "unavailable"; any later look at an endpoint
                                      showing UPDATE_FAILED on a version below v is this
                                      update's failure: "failed" + build logs, roll back,
                                      never sent again

With replicas (an ``Owner`` given), every config PUT is preceded by a lease check that
extends this replica's lease on the rollout (``LeaseLost`` if another replica holds it now:
the reconcile stops before touching the endpoint), and every commit carries the lease's
fencing token, so a replica that lost the rollout can neither PUT nor write. The reconcile
loop decides when a rollout may be reconciled at all (see ``rollout.engine.ownership``).

What a look costs does not grow with the rollout's age. The rollout row keeps the small state
(phase, step, the arms' sums, the judge's state, the tracker's counter baselines: 10-20 KB,
bounded);
the metric windows are rows of their own (``Store.windows``), and a look commits only the
windows it saw for the first time or revised, drops those no longer needed (older than the
current split and than the dedup horizon), and, when a split ends, one step summary. Between
looks the runner keeps each rollout's tracker (its windows), parsed plan and committed state
in memory, keyed by the version it committed: the next look of the same rollout reads only
the row's version, and any other version (another controller committed, a command's
``replace_plan``, a restart, a failed commit) reads the row and reloads the windows from the
store.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol, cast

import httpx
import structlog

from rollout.alerts.hooks import HookMessage, call_gate
from rollout.alerts.payload import HOOK_CHANNEL
from rollout.alerts.targets import TargetPolicy, guarded_client
from rollout.analysis.queries import ArmReading, QueryReading, promql_duration
from rollout.analysis.spec import Policy
from rollout.analysis.verdict import VerdictRecord
from rollout.clock import Clock
from rollout.engine.decide import DEFAULT_TIMING, Timing, current_fold, decide, update_failure
from rollout.engine.model import (
    CallGate,
    Command,
    Decision,
    EndpointSnapshot,
    GateOutcome,
    Observation,
    Phase,
    PreflightOutcome,
    PutConfig,
    RolloutState,
    RunPreflight,
    Target,
    UpdateOutcome,
)
from rollout.engine.ownership import Owner
from rollout.engine.schema import entity_input_schema, input_compatible
from rollout.metrics.model import EntityWindow
from rollout.metrics.parse import MetricsError, Scrape, parse_export_metrics
from rollout.metrics.prometheus import OwnMetrics
from rollout.metrics.windows import TrackerState, WindowTracker
from rollout.plan import (
    MAX_HOOK_TIMEOUT,
    AlertChannel,
    AnyPlan,
    resolve_policy,
    validate_plan,
)
from rollout.serving.client import ServingClient
from rollout.serving.errors import (
    ConfigMismatch,
    InvalidRequest,
    NotFound,
    ServingError,
    UpdateFailed,
    UpdateInProgress,
    UpdateTimeout,
)
from rollout.serving.models import ConfigSpec, Endpoint, ServedEntity, traffic_split
from rollout.store.base import Store
from rollout.store.errors import StaleVersion
from rollout.store.model import (
    COMMAND_KINDS,
    CommandKind,
    NewAlert,
    NewAliasMove,
    NewEvent,
    RolloutRecord,
    StepSummary,
    StoredWindow,
    SummaryFields,
    WindowChanges,
)
from rollout.store.model import Command as StoreCommand

log = structlog.get_logger("rollout.engine")

# Effects carried out within one reconcile before handing back to the scheduler: a rollback is
# two updates, a step is one; more than this means something loops.
_MAX_EFFECTS_PER_RECONCILE = 6
NOT_WIRED = "no source client: this runner was built without one (own_metrics)"
DEFAULT_DEDUP_HORIZON = 1800.0
"""Seconds a window stays revisable: export-metrics showing it again within this is the same
window (a revision), and the current split's windows older than this are folded into the
state's sums. Databricks shows the last closed window, so 30 windows of 60 s are many times
what an exporter repeats or delivers late; it is also how far back the chart shows windows,
and what each active rollout keeps in memory (about 2.6 KB a window, two windows a minute)."""


class DecisionObserver(Protocol):
    """Told about every committed decision (the controller's metrics count from it)."""

    def __call__(
        self,
        endpoint: str,
        created_at: float,
        now: float,
        events: Sequence[tuple[str, str | None, dict[str, Any]]],
        cause: str | None,
    ) -> None: ...


def snapshot_of(endpoint: Endpoint) -> EndpointSnapshot:
    """Reduce a served endpoint to what ``decide`` looks at."""
    entities: dict[str, dict[str, Any]] = {}
    if endpoint.config is not None:
        # Legacy served_models come converted to served entities: the PUTs that carry them
        # through must name entity_name and entity_version.
        for entity in endpoint.config.entities():
            entities.setdefault(entity.derived_name(), entity.to_input())
    pending_entities = pending_split = pending_version = None
    if endpoint.pending_config is not None:
        pending_entities = endpoint.pending_config.entity_names()
        pending_split = traffic_split(endpoint.pending_config)
        pending_version = endpoint.pending_config.config_version
    return EndpointSnapshot(
        ready="UNKNOWN" if endpoint.state.ready is None else str(endpoint.state.ready),
        config_update=str(endpoint.state.config_update),
        config_version=endpoint.config.config_version if endpoint.config else None,
        entities=entities,
        split=traffic_split(endpoint),
        pending_entities=pending_entities,
        pending_split=pending_split,
        pending_version=pending_version,
        auto_capture_config=endpoint.config.auto_capture_input() if endpoint.config else None,
    )


def stored_plan(plan: AnyPlan, policy: Policy) -> dict[str, Any]:
    """The plan as persisted: validated fields, with the policy resolved and inlined.

    Inlining means a later edit of a policy file never changes a rollout already running.
    """
    data = plan.model_dump(mode="json", exclude_none=True)
    data["policy"] = policy.model_dump(mode="json", exclude_none=True)
    return data


def load_stored_plan(data: dict[str, Any]) -> tuple[AnyPlan, Policy]:
    plan = validate_plan(data, stored=True)
    return plan, resolve_policy(plan)


def summary_of(plan: AnyPlan, state: RolloutState) -> SummaryFields:
    """The columns lists read (``Store.list_summaries``), from the plan and the state."""
    verdict = state.last_verdict.outcome if state.last_verdict is not None else None
    return SummaryFields(
        candidate=plan.candidate.served_name,
        baseline=state.baseline,
        step=state.step,
        candidate_weight=state.candidate_weight,
        verdict=None if verdict is None else str(verdict),
    )


def keep_windows_from_ms(
    state: RolloutState, now: float, horizon_seconds: float = DEFAULT_DEDUP_HORIZON
) -> int:
    """The oldest window start still needed: the current split's first window not folded
    into the state's sums, or the dedup horizon, whichever is older."""
    horizon = int((now - horizon_seconds) * 1000)
    if state.split_applied_at is None or state.phase.terminal:
        return horizon
    start = int(state.split_applied_at * 1000)
    folded = current_fold(state)
    if folded is not None:
        start = max(start, folded.before_ms)
    return min(horizon, start)


def step_summary(before: RolloutState, after: RolloutState, now: float) -> StepSummary | None:
    """The summary of the step ``before`` was in, if this decision ended it: the rollout moved
    to another step, or finished. (Written again under the same key is harmless: a replace.)"""
    if before.split_applied_at is None:
        return None
    if after.phase.terminal and not before.phase.terminal:
        source = after  # the end: the last sums are the final ones
    elif after.step != before.step:
        source = before  # moving on: the step's sums before the next split resets them
    else:
        return None
    verdict = source.last_verdict
    return StepSummary(
        key=f"{source.step}@{source.split_applied_at}",
        at=float(source.split_applied_at or now),
        data={
            "step": source.step,
            "candidate_weight": source.candidate_weight,
            "split_applied_at": source.split_applied_at,
            "ended_at": now,
            "judged_windows": source.judged_windows,
            "candidate": source.candidate.model_dump(mode="json"),
            "control": source.control.model_dump(mode="json"),
            "served": source.served.model_dump(mode="json"),
            "verdict": None if verdict is None else verdict.outcome.value,
            "reason": None if verdict is None else verdict.reason,
        },
    )


def stored_window(window: EntityWindow) -> StoredWindow:
    if window.start_ms is None:
        raise ValueError("only windows with a start time are stored")
    return StoredWindow(window.entity, window.start_ms, window.to_dict())


@dataclass
class _Kept:
    """A rollout's parsed plan and tracker, as of the version the runner last committed, and
    that commit's record (its ``state`` left empty) and parsed state (``None``: read them from
    the store)."""

    version: int
    plan: AnyPlan
    policy: Policy
    tracker: WindowTracker
    record: RolloutRecord | None = None
    state: RolloutState | None = None
    scraped: tuple[str, Scrape] | None = None
    """The last export-metrics text and what it parsed into. Export-metrics shows the last
    closed window, so a look within the same window (every other one at 30 s looks and 60 s
    windows) gets the same text again: it is not parsed again (parsing is a function of the
    text alone; the tracker still observes the scrape, as time matters there)."""


def new_rollout(
    plan: AnyPlan,
    policy: Policy,
    now: float,
    rollout_id: str | None = None,
    *,
    origin: str | None = None,
) -> tuple[RolloutRecord, NewEvent]:
    """The record and first event of a newly submitted rollout, in ``pending``. ``origin``
    says who started it when not a person (an alias watch); the event names a candidate
    given by alias with the version it was resolved to."""
    record = RolloutRecord(
        id=rollout_id or uuid.uuid4().hex[:12],
        endpoint=plan.endpoint,
        phase=Phase.PENDING.value,
        version=1,
        plan=stored_plan(plan, policy),
        state=RolloutState(started_at=now).model_dump(mode="json"),
        created_at=now,
        updated_at=now,
        due_at=now,
    )
    event = NewEvent(
        kind="submitted",
        from_phase=None,
        to_phase=Phase.PENDING.value,
        reason=f"{plan.strategy} plan for {plan.endpoint} with policy {policy.name}"
        + (f"; candidate {plan.candidate.describe()}" if plan.candidate.alias else "")
        + (f" ({origin})" if origin else ""),
        data={"candidate": plan.candidate.served_name} | _alias_data(plan),
        at=now,
    )
    return record, event


def _alias_data(plan: AnyPlan) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if plan.candidate.alias is not None:
        data["candidate_alias"] = f"{plan.candidate.entity_name}@{plan.candidate.alias}"
        data["candidate_version"] = plan.candidate.entity_version
    if plan.on_success is not None and plan.on_success.set_alias is not None:
        data["on_success_set_alias"] = plan.on_success.set_alias
    return data


def alias_move_of(plan: AnyPlan) -> NewAliasMove | None:
    """The alias a promotion of ``plan`` moves (``on_success.set_alias``), kept with the
    rollout from its creation."""
    if plan.on_success is None or plan.on_success.set_alias is None:
        return None
    version = plan.candidate.entity_version
    if version is None:
        raise ValueError(f"{plan.candidate.describe()}: the candidate's version is not known")
    return NewAliasMove(plan.candidate.entity_name, plan.on_success.set_alias, version)


@dataclass(frozen=True)
class ReconcileResult:
    rollout_id: str
    phase: Phase
    decisions: int


class Runner:
    """Applies decisions for any number of rollouts; one reconcile per rollout at a time."""

    def __init__(
        self,
        store: Store,
        client: ServingClient,
        *,
        clock: Clock,
        timing: Timing = DEFAULT_TIMING,
        default_channels: Sequence[AlertChannel] = (),
        observer: DecisionObserver | None = None,
        ownership: Owner | None = None,
        dedup_horizon: float = DEFAULT_DEDUP_HORIZON,
        own_metrics: OwnMetrics | None = None,
        hook_http: httpx.AsyncClient | None = None,
        hook_targets: TargetPolicy | None = None,
    ) -> None:
        if not dedup_horizon > 0:
            raise ValueError(f"dedup_horizon must be positive seconds, got {dedup_horizon!r}")
        self.dedup_horizon = dedup_horizon
        self.own_metrics = own_metrics
        self.store = store
        self.ownership = ownership
        self.client = client
        self.clock = clock
        self.timing = timing
        self.default_channels = list(default_channels)
        self.observer = observer
        # Gate hooks go where alerts may go (``hook_targets``, checked before every call),
        # through a client that connects only to checked addresses; one is made on the first
        # gate call when none is given (``aclose`` closes it then).
        self.hook_targets = hook_targets if hook_targets is not None else TargetPolicy()
        self._hook_http = hook_http
        self._own_hook_http = False
        self._locks: dict[str, asyncio.Lock] = {}
        self._kept: dict[str, _Kept] = {}

    async def aclose(self) -> None:
        """Close what the runner opened itself (the gate hooks' HTTP client)."""
        if self._own_hook_http and self._hook_http is not None:
            await self._hook_http.aclose()
            self._hook_http, self._own_hook_http = None, False

    # ---- submission ---------------------------------------------------------------------

    async def submit(
        self, plan: AnyPlan, policy: Policy, *, rollout_id: str | None = None
    ) -> RolloutRecord:
        """Store a new rollout in ``pending``; the next reconcile starts it."""
        record, event = new_rollout(plan, policy, self.clock.now(), rollout_id)
        summary = summary_of(plan, RolloutState.model_validate(record.state))
        return await asyncio.to_thread(
            functools.partial(
                self.store.create, record, event, [], summary=summary,
                alias_move=alias_move_of(plan),
            )
        )

    # ---- one reconcile ------------------------------------------------------------------

    async def reconcile(self, rollout_id: str) -> ReconcileResult:
        lock = self._locks.setdefault(rollout_id, asyncio.Lock())
        async with lock:
            return await self._reconcile(rollout_id)

    async def _reconcile(self, rollout_id: str) -> ReconcileResult:
        # Popped: a reconcile that fails half way leaves nothing behind that could be stale.
        kept = self._kept.pop(rollout_id, None)
        queued: list[StoreCommand] | None = None
        record: RolloutRecord | None = None
        state: RolloutState | None = None
        if kept is not None and kept.record is not None and kept.state is not None:
            # One read: the version, and the commands the look needs anyway.
            version, queued = await asyncio.to_thread(
                self.store.version_and_commands, rollout_id
            )
            if version == kept.version:
                # Nothing committed since this runner's last commit: what it committed is
                # what a read would give back, without decoding the state again.
                record, state = kept.record, kept.state
        if record is None or state is None:
            record = await asyncio.to_thread(self.store.get, rollout_id)
            state = RolloutState.model_validate(record.state)
            queued = None  # read again, after the record
        if state.phase.terminal:
            return ReconcileResult(rollout_id, state.phase, 0)
        changed: dict[tuple[str | None, int], EntityWindow] = {}
        if kept is None or kept.version != record.version:
            kept = await self._load(record, state, changed)
        plan, policy, tracker = kept.plan, kept.policy, kept.tracker
        observation = await self._observe(
            plan, policy, state, kept, record.id, changed=changed, queued=queued
        )
        decisions = 0
        while True:
            decision = decide(
                plan, state, observation, self.clock.now(), policy=policy, timing=self.timing
            )
            decisions += 1
            keep_from = keep_windows_from_ms(decision.state, self.clock.now(), self.dedup_horizon)
            tracker.prune(keep_from)
            windows = WindowChanges(
                upsert=[
                    stored_window(w)
                    for key, w in sorted(changed.items(), key=lambda item: item[0][1])
                    if key[1] >= keep_from
                ],
                drop_before_ms=keep_from,
                summaries=[
                    s for s in [step_summary(state, decision.state, self.clock.now())] if s
                ],
            )
            new_state = decision.state.model_copy(
                update={"tracker": tracker.to_state(windows=False)}
            )
            verdict = decision.state.last_verdict
            judged = verdict if verdict is not None and verdict != state.last_verdict else None
            record = await self._commit(
                record, plan, new_state, decision, windows=windows, judged=judged
            )
            state = new_state
            changed.clear()
            if decision.effect is None or decisions > _MAX_EFFECTS_PER_RECONCILE:
                if not state.phase.terminal:
                    # The record's own copy of the state is not kept: the parsed state is
                    # what the next look uses, and one copy per rollout is memory enough.
                    self._kept[rollout_id] = _Kept(
                        record.version, plan, policy, tracker, replace(record, state={}), state,
                        kept.scraped,
                    )
                return ReconcileResult(rollout_id, state.phase, decisions)
            observation = await self._carry_out(record.id, plan, decision)

    async def _load(
        self,
        record: RolloutRecord,
        state: RolloutState,
        changed: dict[tuple[str | None, int], EntityWindow],
    ) -> _Kept:
        """Parse the plan and rebuild the tracker from the small state and the stored windows."""
        plan, policy = load_stored_plan(record.plan)
        if not state.tracker:
            return _Kept(record.version, plan, policy, WindowTracker())
        stored = await asyncio.to_thread(self.store.windows, record.id)
        tracker = WindowTracker.from_state(
            state.tracker, [EntityWindow.from_dict(w.data) for w in stored]
        )
        if isinstance(state.tracker, TrackerState) and state.tracker.windows:
            # Saved by a version that kept the windows inside the state: move them out.
            for window in tracker.windows():
                if window.start_ms is not None:
                    changed[(window.entity, window.start_ms)] = window
        return _Kept(record.version, plan, policy, tracker)

    async def _commit(
        self,
        record: RolloutRecord,
        plan: AnyPlan,
        state: RolloutState,
        decision: Decision,
        *,
        windows: WindowChanges,
        judged: VerdictRecord | None = None,
    ) -> RolloutRecord:
        now = self.clock.now()
        events = [
            NewEvent(
                kind=e.kind,
                from_phase=None if e.from_phase is None else e.from_phase.value,
                to_phase=None if e.to_phase is None else e.to_phase.value,
                reason=e.reason,
                data=e.data,
                at=now,
            )
            for e in decision.events
        ]
        alerts = self._outbox_rows(record, plan, state, decision)
        if alerts and not events:
            # The outbox ties each alert to an event; an alert never comes without its reason.
            first = decision.alerts[0]
            phase = state.phase.value
            events.append(NewEvent("alert", phase, phase, first.summary, {}, now))
        due = None if decision.next_check_in is None else now + decision.next_check_in
        for event in decision.events:
            log.info(
                "rollout.decision",
                rollout=record.id,
                endpoint=record.endpoint,
                kind=event.kind,
                phase=state.phase.value,
                step=state.step,
                weight=state.candidate_weight,
                reason=event.reason,
                verdict=_verdict_numbers(state.last_verdict) if event.kind == "verdict" else None,
            )
        try:
            committed = await asyncio.to_thread(
                self.store.commit,
                record.id,
                record.version,
                phase=state.phase.value,
                state=state.model_dump(mode="json"),
                due_at=due,
                updated_at=now,
                events=events,
                alerts=alerts,
                consumed_commands=list(decision.consumed_commands),
                fence=None if self.ownership is None else self.ownership.fence(record.id),
                windows=windows,
                summary=summary_of(plan, state),
            )
        except StaleVersion:
            log.warning("rollout.stale", rollout=record.id, version=record.version)
            raise
        if self.observer is not None:
            observed = [(e.kind, e.to_phase, e.data) for e in events]
            if judged and not any(e.kind == "verdict" for e in events):
                # The log keeps only verdicts that changed; the metrics count every look.
                observed.append(("verdict", state.phase.value, {"verdict": judged.data()}))
            self.observer(
                record.endpoint, record.created_at, now, observed, state.ending_cause
            )
        return committed

    def _channels(self, plan: AnyPlan) -> list[AlertChannel]:
        return [*plan.alerts, *self.default_channels]

    def _outbox_rows(
        self, record: RolloutRecord, plan: AnyPlan, state: RolloutState, decision: Decision
    ) -> list[NewAlert]:
        rows = []
        for alert in decision.alerts:
            for index, channel in enumerate(self._channels(plan)):
                if not channel.takes(alert.severity, alert.event):
                    continue
                rows.append(
                    NewAlert(
                        dedup_key=f"{record.id}:{alert.key}:{index}",
                        channel=channel.type,
                        payload={
                            "rollout": record.id,
                            "endpoint": record.endpoint,
                            "candidate": plan.candidate.served_name,
                            "baseline": state.baseline,
                            "event": alert.event,
                            "severity": alert.severity,
                            "summary": alert.summary,
                            "phase": state.phase.value,
                            "details": alert.details,
                            "channel": channel.model_dump(mode="json"),
                        },
                    )
                )
        for note in decision.hooks:
            hook = plan.hooks.notification(note.hook)
            if hook is None:  # pragma: no cover - decide names only the plan's hooks
                continue
            rows.append(
                NewAlert(
                    # Each notification happens once per rollout: its name is its key.
                    dedup_key=f"{record.id}:{note.hook}",
                    channel=HOOK_CHANNEL,
                    payload={
                        "rollout": record.id,
                        "endpoint": record.endpoint,
                        "candidate": plan.candidate.served_name,
                        "baseline": state.baseline,
                        "event": note.hook,
                        "severity": "info",
                        "summary": note.summary,
                        "phase": state.phase.value,
                        "details": note.details,
                        "channel": hook.model_dump(mode="json"),
                    },
                )
            )
        return rows

    # ---- observing ----------------------------------------------------------------------

    async def _observe(
        self,
        plan: AnyPlan,
        policy: Policy,
        state: RolloutState,
        kept: _Kept,
        rollout_id: str,
        *,
        changed: dict[tuple[str | None, int], EntityWindow],
        queued: Sequence[StoreCommand] | None = None,
    ) -> Observation:
        """What ``decide`` looks at; ``queued``: the pending commands when already read."""
        if queued is None:
            queued = await asyncio.to_thread(self.store.pending_commands, rollout_id)
        commands = tuple(
            Command(c.id, cast(CommandKind, c.kind), c.payload)
            for c in queued
            # The store refuses any other kind; an older row with one is not ours to act on.
            if c.kind in COMMAND_KINDS
        )
        observation = await self._read_endpoint(plan.endpoint)
        observation = replace(observation, commands=commands)
        if state.target is not None:
            # The update our last PUT started may have failed after the runner stopped
            # waiting for it (a build slower than one look).
            observation = await self._failed_since(plan, state.target, observation)
        if state.split_applied_at is not None and state.phase in (
            Phase.PREPARING,
            Phase.PROGRESSING,
        ):
            observation = await self._scrape(plan.endpoint, kept, state, observation, changed)
        if (
            state.split_applied_at is not None
            and state.phase is Phase.PROGRESSING
            and state.baseline is not None
            and policy.query_checks
        ):
            observation = replace(
                observation, readings=await self._query(plan, policy, state.baseline)
            )
        return observation

    async def _query(
        self, plan: AnyPlan, policy: Policy, baseline: str
    ) -> tuple[QueryReading, ...]:
        """The policy's query checks, run once per arm (``rollout.metrics.prometheus``);
        ``{{ window }}`` is the look interval."""
        window = promql_duration(self.timing.look_interval)
        if self.own_metrics is None:
            # A runner built without a client (tests, tools) asks no source: an outage.
            return tuple(
                QueryReading(
                    check.describe(),
                    check.source,
                    ArmReading(check.template, outage=NOT_WIRED),
                    ArmReading(check.template, outage=NOT_WIRED),
                )
                for check in policy.query_checks
            )
        return await self.own_metrics.readings(
            policy,
            endpoint=plan.endpoint,
            candidate=plan.candidate.served_name,
            baseline=baseline,
            window=window,
        )

    async def _read_endpoint(self, endpoint: str) -> Observation:
        try:
            return Observation(endpoint=snapshot_of(await self.client.get_endpoint(endpoint)))
        except NotFound:
            return Observation(endpoint_missing=True)
        except ServingError as exc:
            return Observation(endpoint_error=str(exc))

    async def _scrape(
        self,
        endpoint: str,
        kept: _Kept,
        state: RolloutState,
        observation: Observation,
        changed: dict[tuple[str | None, int], EntityWindow],
    ) -> Observation:
        tracker = kept.tracker
        try:
            text = await self.client.export_metrics(endpoint)
            if kept.scraped is not None and kept.scraped[0] == text:
                scrape = kept.scraped[1]
            else:
                scrape = parse_export_metrics(text)
                kept.scraped = (text, scrape)
        except (ServingError, MetricsError) as exc:
            return replace(observation, metrics_error=f"export-metrics unusable: {exc}")
        # New and revised windows are what this look adds to the store.
        for window in [*tracker.observe(scrape, int(self.clock.now() * 1000)),
                       *tracker.last_revised]:
            if window.start_ms is not None:
                changed[(window.entity, window.start_ms)] = window
        # Every window of the current split, revisions applied: decide sums them afresh.
        since_ms = (state.split_applied_at or 0.0) * 1000.0
        windows = tuple(
            w for w in tracker.windows() if w.start_ms is not None and w.start_ms >= since_ms
        )
        return replace(
            observation,
            windows=windows,
            unattributable=scrape.unattributable(),
            # Past the dedup horizon a window is never revised again: decide may fold it.
            fold_before_ms=int((self.clock.now() - self.dedup_horizon) * 1000),
        )

    # ---- effects ------------------------------------------------------------------------

    async def _carry_out(self, rollout_id: str, plan: AnyPlan, decision: Decision) -> Observation:
        effect = decision.effect
        if isinstance(effect, PutConfig):
            if self.ownership is not None:
                # Still ours, and for a full TTL from now: longer than the PUT can live.
                await self.ownership.check(rollout_id)
            return await self._apply(plan, effect.target)
        if isinstance(effect, RunPreflight):
            return await self._preflight(plan.endpoint, effect)
        if isinstance(effect, CallGate):
            return await self._call_gate(rollout_id, plan, decision.state, effect)
        return Observation()  # pragma: no cover - decide returns only these effects

    async def _call_gate(
        self, rollout_id: str, plan: AnyPlan, state: RolloutState, effect: CallGate
    ) -> Observation:
        """Ask the plan's gate, then read the endpoint: ``decide`` gets the answer with it."""
        hook = plan.hooks.gate(effect.gate)
        if hook is None:  # pragma: no cover - decide calls only the plan's gates
            raise ValueError(f"the plan has no {effect.gate} hook")
        baseline = state.baseline or effect.details.get("baseline")
        message = HookMessage(
            id=f"{rollout_id}:{effect.gate}:{effect.call}",
            hook=effect.gate,
            rollout=rollout_id,
            endpoint=plan.endpoint,
            candidate=plan.candidate.served_name,
            baseline=None if baseline is None else str(baseline),
            phase=state.phase.value,
            summary=effect.summary,
            details=effect.details,
            occurred_at=self.clock.now(),
        )
        if self._hook_http is None:
            self._hook_http = guarded_client(self.hook_targets, timeout=MAX_HOOK_TIMEOUT)
            self._own_hook_http = True
        reply = await call_gate(
            self._hook_http, self.hook_targets, hook, message, clock=self.clock
        )
        log.info(
            "rollout.gate",
            rollout=rollout_id,
            endpoint=plan.endpoint,
            gate=effect.gate,
            call=effect.call,
            answer=reply.answer,
            status=reply.status,
            attempts=reply.attempts,
            reason=reply.reason,
        )
        outcome = GateOutcome(
            effect.gate, effect.call, reply.answer, reply.reason, reply.status, reply.attempts
        )
        observation = await self._read_endpoint(plan.endpoint)
        return replace(observation, gate=outcome)

    async def _apply(self, plan: AnyPlan, target: Target) -> Observation:
        endpoint = plan.endpoint
        try:
            spec = ConfigSpec.build(
                [ServedEntity.model_validate(e) for e in target.entities],
                target.split,
                target.auto_capture_config,
            )
        except ValueError as exc:
            return await self._after(endpoint, UpdateOutcome("rejected", f"invalid config: {exc}"))
        log.info(
            "rollout.put_config",
            endpoint=endpoint,
            purpose=target.purpose,
            split=target.split,
            attempt=target.attempts,
        )
        try:
            put = await self.client.update_config(endpoint, spec)
        except UpdateInProgress as exc:
            return await self._after(endpoint, UpdateOutcome("conflict", str(exc)))
        except InvalidRequest as exc:
            return await self._after(endpoint, UpdateOutcome("rejected", str(exc)))
        except NotFound:
            return Observation(endpoint_missing=True)
        except ServingError as exc:
            return await self._after(endpoint, UpdateOutcome("unavailable", str(exc)))
        # Every outcome from here on carries the version this PUT announced: decide keeps it
        # with the target, and tells this update's UPDATE_FAILED from any earlier one by it.
        version = put.announced_version
        try:
            # Waited for in slices of one look: a long build (minutes on Databricks) returns
            # to the scheduler in between, so an abort queued meanwhile is seen within a
            # look, not after the build; decide() follows the update across slices and gives
            # up at update_deadline.
            applied = await self.client.wait_until_applied(
                endpoint,
                spec,
                deadline_seconds=min(self.timing.update_deadline, self.timing.look_interval),
            )
        except UpdateFailed as exc:
            logs = await self._build_logs(endpoint, plan.candidate.served_name)
            return Observation(
                endpoint=snapshot_of(exc.endpoint_snapshot),
                update=UpdateOutcome("failed", str(exc), logs, version),
            )
        except UpdateTimeout as exc:
            after = await self._after(
                endpoint, UpdateOutcome("timeout", str(exc), config_version=version)
            )
        except ConfigMismatch as exc:
            # Settled, but not on what we asked: decide tells a late read from drift.
            return Observation(endpoint=snapshot_of(exc.endpoint_snapshot))
        except ServingError as exc:
            after = await self._after(
                endpoint, UpdateOutcome("unavailable", str(exc), config_version=version)
            )
        else:
            return Observation(
                endpoint=snapshot_of(applied),
                update=UpdateOutcome("applied", config_version=version),
            )
        # The read after the wait may already show the failure (it settled as the wait ran out).
        sent = target.model_copy(update={"announced_version": version})
        return await self._failed_since(plan, sent, after)

    async def _failed_since(
        self, plan: AnyPlan, target: Target, observation: Observation
    ) -> Observation:
        """``observation`` with a ``failed`` outcome and the candidate's build logs when the
        endpoint it read shows that ``target``'s update failed (``update_failure``); as it was
        otherwise. The logs are fetched now, while they still explain the failure."""
        snapshot = observation.endpoint
        failure = None if snapshot is None else update_failure(target, snapshot)
        if failure is None:
            return observation
        logs = await self._build_logs(plan.endpoint, plan.candidate.served_name)
        outcome = UpdateOutcome("failed", failure, logs, target.announced_version)
        return replace(observation, update=outcome)

    async def _after(self, endpoint: str, outcome: UpdateOutcome) -> Observation:
        observation = await self._read_endpoint(endpoint)
        return replace(observation, update=outcome)

    async def _build_logs(self, endpoint: str, served_model: str) -> str | None:
        try:
            return await self.client.build_logs(endpoint, served_model)
        except ServingError as exc:
            return f"(build logs unavailable: {exc})"

    async def _preflight(self, endpoint: str, effect: RunPreflight) -> Observation:
        failed = 0
        for _ in range(effect.smoke_requests):
            try:
                result = await self.client.query_served_model(
                    endpoint, effect.candidate, effect.smoke_body
                )
            except ServingError:
                failed += 1
                continue
            if result.status >= 400:
                failed += 1
        compatible: bool | None = None
        message = ""
        if effect.schema_check:
            try:
                document = await self.client.openapi(endpoint)
            except ServingError as exc:
                compatible, message = False, f"OpenAPI document unavailable: {exc}"
            else:
                base = entity_input_schema(document, effect.baseline)
                cand = entity_input_schema(document, effect.candidate)
                if base is None or cand is None:
                    compatible = False
                    message = "the OpenAPI document has no input schema for " + (
                        effect.baseline if base is None else effect.candidate
                    )
                else:
                    compatible, message = input_compatible(base, cand)
        outcome = PreflightOutcome(effect.smoke_requests, failed, compatible, message)
        observation = await self._read_endpoint(endpoint)
        return replace(observation, preflight=outcome)


def _verdict_numbers(verdict: VerdictRecord | None) -> list[dict[str, Any]] | None:
    if verdict is None:
        return None
    return [
        {
            "check": c.check,
            "outcome": c.outcome.value,
            "candidate": c.candidate_value,
            "baseline": c.baseline_value,
            "n": [c.candidate_n, c.baseline_n],
        }
        for c in verdict.checks
    ]


def active_ids(records: Iterable[RolloutRecord]) -> list[str]:
    return [r.id for r in records if not Phase(r.phase).terminal]
