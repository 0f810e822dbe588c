"""The records the store keeps: rollouts, their event log, the alert outbox and queued commands.

In the path of a rollout these are the values that cross the store boundary. A validated plan
becomes a ``RolloutRecord`` in phase ``pending``; each scheduler tick the runner reads due
records, the engine decides, and the runner commits the new phase and state together with
``NewEvent`` rows (the log of transitions and the numbers behind them) and ``NewAlert`` rows
(the outbox the alert dispatcher drains). ``Command`` rows are the manual inputs (pause,
promote, abort...) the API queues and the runner consumes in the commit that acts on them.

The store does not interpret ``plan``, ``state``, event ``data`` or alert ``payload``: they are
JSON objects owned by the engine and the notifiers. Only ``phase`` matters to the store, because
a non-terminal phase holds the endpoint (one active rollout per endpoint). Pure data, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

PENDING: Final = "pending"
PREPARING: Final = "preparing"
PROGRESSING: Final = "progressing"
PAUSED: Final = "paused"
PROMOTING: Final = "promoting"
SUCCEEDED: Final = "succeeded"
ROLLING_BACK: Final = "rolling_back"
ROLLED_BACK: Final = "rolled_back"
ABORTED: Final = "aborted"
FAILED: Final = "failed"

PHASES: Final[frozenset[str]] = frozenset(
    {
        PENDING,
        PREPARING,
        PROGRESSING,
        PAUSED,
        PROMOTING,
        SUCCEEDED,
        ROLLING_BACK,
        ROLLED_BACK,
        ABORTED,
        FAILED,
    }
)
"""Every phase a rollout can be in (see DESIGN.md, "States")."""

TERMINAL: Final[frozenset[str]] = frozenset({SUCCEEDED, ROLLED_BACK, ABORTED, FAILED})
"""Phases a rollout never leaves; a rollout in one of them no longer holds its endpoint."""

ACTIVE: Final[frozenset[str]] = PHASES - TERMINAL
"""Non-terminal phases: at most one rollout per endpoint may be in one of these."""

COMMAND_KINDS: Final[frozenset[str]] = frozenset(
    {"pause", "resume", "promote", "promote_full", "abort"}
)
"""Manual inputs a person can queue for a rollout."""

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
class OutboxAlert:
    """An alert in the outbox, with its delivery bookkeeping.

    ``event_seq`` is the last event of the commit that wrote the alert. ``attempts`` counts
    claims; ``next_attempt_at`` is when the alert may next be claimed (a claim pushes it forward
    by the lease, a failure sets the retry time); ``delivered_at`` is set once, on success.
    """

    id: int
    rollout_id: str
    event_seq: int
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
