"""The records the store keeps: rollouts, their event log, the alert outbox and queued commands.

In the path of a rollout these are the values that cross the store boundary. A validated plan
becomes a ``RolloutRecord`` in phase ``pending``; each scheduler tick the runner reads due
records, the engine decides, and the runner commits the new phase and state together with
``NewEvent`` rows (the log of transitions and the numbers behind them) and ``NewAlert`` rows
(the outbox the alert dispatcher drains). ``Command`` rows are the manual inputs (pause,
promote, abort...) the API queues and the runner consumes in the commit that acts on them.

The runner also commits, with each decision, the metric windows it judged (``StoredWindow``
rows, kept apart from the small state and dropped as they stop mattering, ``WindowChanges``),
a ``StepSummary`` when a step ends, and the ``SummaryFields`` lists show
(``RolloutSummary``, read without decoding any state).

The store does not interpret ``plan``, ``state``, event ``data``, window and summary ``data``
or alert ``payload``: they are JSON objects owned by the engine and the notifiers. Only
``phase`` matters to the store, because a non-terminal phase holds the endpoint (one active
rollout per endpoint) and a terminal one drops the rollout's windows. Pure data, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

# The store keeps phases and commands by these words (rollout.vocabulary); re-exported.
from rollout.vocabulary import (
    ABORTED,
    ACTIVE,
    COMMAND_KINDS,
    FAILED,
    PAUSED,
    PENDING,
    PHASES,
    PREPARING,
    PROGRESSING,
    PROMOTING,
    ROLLED_BACK,
    ROLLING_BACK,
    SUCCEEDED,
    TERMINAL,
    CommandKind,
    PhaseName,
)

__all__ = [
    "ABORTED",
    "ACTIVE",
    "COMMAND_KINDS",
    "FAILED",
    "PAUSED",
    "PENDING",
    "PHASES",
    "PREPARING",
    "PROGRESSING",
    "PROMOTING",
    "ROLLED_BACK",
    "ROLLING_BACK",
    "SUCCEEDED",
    "SUMMARY_REASON_CHARS",
    "TERMINAL",
    "ArmSummary",
    "Command",
    "CommandKind",
    "EventRecord",
    "Fence",
    "JsonObject",
    "LeaseInfo",
    "NewAlert",
    "NewEvent",
    "OutboxAlert",
    "Ownership",
    "PhaseName",
    "RolloutRecord",
    "RolloutSummary",
    "StepSummary",
    "StoredWindow",
    "SummaryCursor",
    "SummaryFields",
    "WindowChanges",
]

JsonObject = dict[str, Any]
"""A JSON object: what ``json.loads`` returns for ``{...}``; nested values are JSON values."""


@dataclass(frozen=True)
class RolloutRecord:
    """One rollout as stored.

    ``version`` starts at 1 when the rollout is created and grows by one with every commit;
    a commit names the version it was decided from, so two writers never both win.
    ``due_at`` is when the runner should look at the rollout next (``None``: only on demand).
    Times are seconds since the Unix epoch.
    """

    id: str
    endpoint: str
    phase: str
    version: int
    plan: JsonObject
    state: JsonObject
    created_at: float
    updated_at: float
    due_at: float | None

    @property
    def terminal(self) -> bool:
        """Whether the rollout has finished (and so no longer holds its endpoint)."""
        return self.phase in TERMINAL


@dataclass(frozen=True)
class NewEvent:
    """An event to append to a rollout's log (a transition, a verdict, a manual action)."""

    kind: str
    from_phase: str | None
    to_phase: str | None
    reason: str
    data: JsonObject
    at: float


@dataclass(frozen=True)
class EventRecord:
    """An event as stored: ``seq`` numbers a rollout's events 1, 2, 3... without gaps."""

    seq: int
    rollout_id: str
    at: float
    kind: str
    from_phase: str | None
    to_phase: str | None
    reason: str
    data: JsonObject


@dataclass(frozen=True)
class NewAlert:
    """An alert to put in the outbox with the events of the same commit.

    ``dedup_key`` is unique across the whole outbox: writing a key that is already there is a
    silent no-op, so a commit that is replayed (after a crash, or by a second replica) never
    sends an alert twice. Callers make keys unique per rollout and occasion, e.g.
    ``f"{rollout_id}:rolled_back"``.
    """

    dedup_key: str
    channel: str
    payload: JsonObject


@dataclass(frozen=True)
class AliasTrigger:
    """An alias watch's record that the alias named ``version``: written once per (watch,
    version), with the rollout started for it (``rollout_id``) or without one (the endpoint
    already served it, or a rollout for it was in flight). ``watch`` names the watch, e.g.
    ``"main.ml.ads_model@challenger -> ads-endpoint"``."""

    watch: str
    version: str
    rollout_id: str | None
    at: float


@dataclass(frozen=True)
class NewAliasMove:
    """A Unity Catalog alias to move once the rollout it is created with ends ``succeeded``:
    ``model@alias`` to ``version``. Kept with the rollout from its creation, so a crash after
    the promotion loses nothing: the move waits in the store until it is done."""

    model: str
    alias: str
    version: str


@dataclass(frozen=True)
class AliasMove:
    """A pending or done alias move, as the store keeps it."""

    rollout_id: str
    model: str
    alias: str
    version: str
    attempts: int
    next_attempt_at: float
    done_at: float | None
    last_error: str | None


@dataclass(frozen=True)
class OutboxAlert:
    """An alert in the outbox, with its delivery bookkeeping.

    ``event_seq`` is the last event of the commit that wrote the alert. ``attempts`` counts
    claims; ``next_attempt_at`` is when the alert may next be claimed (a claim pushes it forward
    by the lease, a failure sets the retry time); ``delivered_at`` is set once, on success.
    """

    id: int
    rollout_id: str | None  # None for the controller's own alerts (``add_controller_alerts``)
    event_seq: int | None
    channel: str
    dedup_key: str
    payload: JsonObject
    created_at: float
    attempts: int
    next_attempt_at: float
    delivered_at: float | None
    last_error: str | None


@dataclass(frozen=True)
class Command:
    """A manual input for a rollout, queued by the API, consumed by the runner's commit."""

    id: int
    rollout_id: str
    kind: str
    payload: JsonObject
    created_at: float
    consumed_at: float | None


@dataclass(frozen=True)
class Ownership:
    """One replica's hold on one rollout, as the ``ownership`` table has it.

    ``token`` is the fencing token: it grows by one every time the rollout changes holder
    (an expired lease taken again by the same holder counts as a change), so a call made
    under an older token can always be told apart. ``act_after`` is when the holder may first
    act on the endpoint: until then, what the previous holder sent may still land.
    """

    rollout_id: str
    holder: str
    token: int
    acquired_at: float
    expires_at: float
    act_after: float


@dataclass(frozen=True)
class DueRollout:
    """A non-terminal rollout's next look, as the scheduler's scan reads it (no plan, no state)."""

    id: str
    due_at: float


@dataclass(frozen=True)
class Fence:
    """What a fenced write presents: the holder and the token it holds the rollout under."""

    holder: str
    token: int


@dataclass(frozen=True)
class LeaseInfo:
    """A live named lease (``try_lease``): who holds it and until when."""

    name: str
    holder: str
    expires_at: float


@dataclass(frozen=True)
class StoredWindow:
    """One metric window of one served entity, kept while the current step may judge it.

    ``entity`` is ``None`` for endpoint totals (series without an entity label). A rollout has
    at most one window per ``(entity, start_ms)``: writing one again replaces it (a revision).
    ``data`` is the window's numbers, owned by the engine.
    """

    entity: str | None
    start_ms: int
    data: JsonObject


@dataclass(frozen=True)
class StepSummary:
    """What one finished step of a rollout came to, kept after its windows are dropped.

    ``key`` names the step within the rollout (writing the same key again replaces the
    row); ``at`` orders the summaries (when the step's split took effect). ``data`` is owned
    by the engine (arms' sums, the last verdict...).
    """

    key: str
    at: float
    data: JsonObject


@dataclass(frozen=True)
class WindowChanges:
    """The metric windows one commit adds, replaces and drops, with the decision they fed.

    ``upsert``: windows to add or replace. ``drop_before_ms``: drop the rollout's windows that
    began before this instant (epoch ms). ``summaries``: step summaries to add or replace.
    Moving the rollout to a terminal phase drops all its windows whatever this says.
    """

    upsert: Sequence[StoredWindow] = ()
    drop_before_ms: int | None = None
    summaries: Sequence[StepSummary] = ()


@dataclass(frozen=True)
class SummaryFields:
    """The few fields of a rollout's state kept in columns, so lists need not decode state.

    Written by ``Store.create`` and ``Store.commit``; read back by ``Store.list_summaries``.
    """

    candidate: str | None = None
    baseline: str | None = None
    step: int = 0
    candidate_weight: int = 0
    verdict: str | None = None
    """The last verdict's outcome (pass, fail, inconclusive), if any."""


SummaryCursor = tuple[float, str]
"""Where a page of summaries ended: the ``(created_at, id)`` of its last rollout.

Pages run newest first by ``(created_at, id)``; the next page holds the rollouts strictly
after this pair in that order, so rollouts created meanwhile (newer) never shift a page.
"""


@dataclass(frozen=True)
class ArmSummary:
    """One arm's sums over the current split's scored windows (what ``/metrics`` exports)."""

    requests: float
    errors_5xx: float
    latency: JsonObject | None
    """The summed latency histogram (``rollout.metrics.model.Histogram.to_dict``), if any."""


@dataclass(frozen=True)
class RolloutSummary:
    """The few fields of a rollout that lists and gauges show, read without its whole state.

    The store builds it from single fields of the stored plan and state (never by decoding
    them whole), so its cost stays the same however long the rollout's history grows.
    ``step`` is 0-based and ``step_count`` counts the judged steps (canary steps without the
    implied 100 %, 1 for A/B and blue/green), as ``step`` and ``steps`` of the API's rollout.
    ``verdict_reason`` is cut to ``SUMMARY_REASON_CHARS`` characters.
    """

    id: str
    name: str | None
    endpoint: str
    phase: str
    strategy: str
    candidate: str
    """The candidate's served entity name (explicit, or derived as Databricks derives it)."""
    candidate_entity: str | None
    candidate_version: str | None
    baseline: str | None
    step: int
    step_count: int
    candidate_weight: int
    verdict_outcome: str | None
    verdict_reason: str | None
    created_at: float
    updated_at: float
    due_at: float | None
    version: int
    started_at: float
    deadline_seconds: float | None
    """The policy's rollout deadline, counted from ``started_at`` (``None``: no deadline)."""
    candidate_arm: ArmSummary
    control_arm: ArmSummary

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    @property
    def cursor(self) -> SummaryCursor:
        """The cursor of a page that ends with this rollout."""
        return (self.created_at, self.id)


SUMMARY_REASON_CHARS: Final = 200
