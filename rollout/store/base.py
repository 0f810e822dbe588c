"""The one interface to durable state: what the runner, the API and the outbox dispatcher call.

In the path of a rollout the store sits at three places. The API calls ``create`` for a new
rollout in phase ``pending`` (with its first event) and ``add_command`` for manual inputs. Each
scheduler tick the runner reads the ``due`` rollouts and their ``pending_commands``, the pure
engine decides, and the runner calls ``commit`` with the new phase and state, the events of the
transition, the alert-outbox rows, the consumed commands and the metric windows the decision
judged: ONE transaction, guarded by the version it read. Lists (the API, the status page,
``/metrics``) read ``list_summaries``: a few columns per rollout, never the plan or state JSON.
The alert dispatcher takes alerts with ``claim_alerts`` under a lease and reports each with
``mark_delivered`` or ``mark_failed``.

What stays small: the rollout row's state JSON is the engine's small state (a few KB,
whatever the rollout's age). Metric windows live in their own table, one row per entity and
window, bounded to what the current step may judge (``WindowChanges.drop_before_ms``) and
dropped when the rollout ends; a finished step leaves one ``StepSummary`` row.

Two backends implement it (``rollout.store.sqlite``, the embedded default, and
``rollout.store.postgres``, for replicas) and share one contract test suite; ``open_store``
picks one from a URL. Every method is synchronous and thread-safe: the async runner calls them
through ``asyncio.to_thread``. Reads do not wait behind writes (SQLite: WAL with a read
connection per thread; PostgreSQL: a connection pool). Errors are the ``rollout.store.errors``
tree only.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from typing import Protocol

from rollout.store.errors import (
    ActiveRolloutExists,
    AlertNotFound,
    AliasMoveTaken,
    DuplicateRollout,
    LeaseLost,
    RolloutNotFound,
    SchemaError,
    StaleVersion,
    StoreError,
    StoreUnavailable,
)
from rollout.store.model import (
    AliasMove,
    AliasTrigger,
    Command,
    DueRollout,
    EventRecord,
    Fence,
    JsonObject,
    LeaseInfo,
    NewAlert,
    NewAliasMove,
    NewEvent,
    OutboxAlert,
    Ownership,
    RolloutRecord,
    RolloutSummary,
    StepSummary,
    StoredWindow,
    SummaryCursor,
    SummaryFields,
    WindowChanges,
)

# The lease name ``probe_write`` writes under; not for ``try_lease``.
WRITE_PROBE_LEASE = "rollout.write-probe"

__all__ = [
    "WRITE_PROBE_LEASE",
    "ActiveRolloutExists",
    "AlertNotFound",
    "AliasMoveTaken",
    "DuplicateRollout",
    "LeaseLost",
    "RolloutNotFound",
    "SchemaError",
    "StaleVersion",
    "Store",
    "StoreError",
    "StoreUnavailable",
]


class Store(Protocol):
    """Durable state of rollouts, their event logs, the alert outbox, commands and leases.

    Every method may raise ``StoreUnavailable`` (retry later) and ``SchemaError`` (run
    ``migrate()``); the other errors are listed per method. ``ValueError`` means the caller
    passed something the store refuses to keep (an unknown phase, a JSON value that is not a
    JSON object, NaN, a NUL character) and is raised before anything is written.

    JSON objects (plan, state, event data, alert and command payloads) come back equal to what
    was stored, ints as ints and floats as floats; key order is not kept (PostgreSQL's jsonb
    orders keys its own way).
    """

    def migrate(self) -> builtins.list[int]:
        """Bring the schema up to date; return the migration versions applied by this call.

        Safe to call at every start and from several processes at once: migrations are applied
        in order, each exactly once, each in its own transaction with its bookkeeping row.
        Raises ``SchemaError`` if the database was migrated by newer code.
        """
        ...

    def create(
        self,
        record: RolloutRecord,
        event: NewEvent,
        alerts: Sequence[NewAlert],
        *,
        summary: SummaryFields | None = None,
        trigger: AliasTrigger | None = None,
        alias_move: NewAliasMove | None = None,
    ) -> RolloutRecord:
        """Insert a new rollout with its first event (seq 1) and that event's alerts.

        ``summary`` fills the columns ``list_summaries`` reads (empty values without it).
        ``trigger``: an alias watch's record of the version this rollout is started for,
        written in the same transaction (its ``rollout_id`` is taken from ``record``):
        ``AliasMoveTaken`` when the watch recorded that version already. ``alias_move``: the
        alias to move once this rollout is ``succeeded`` (``claim_alias_moves``).
        The stored rollout starts at version 1 whatever ``record.version`` says. Raises
        ``DuplicateRollout`` if the id exists and ``ActiveRolloutExists`` if the record is
        non-terminal and another non-terminal rollout holds the endpoint (enforced by the
        database, so it holds between replicas too). Nothing is written when it raises.
        """
        ...

    def get(self, rollout_id: str) -> RolloutRecord:
        """The rollout with this id; ``RolloutNotFound`` otherwise."""
        ...

    def list(
        self,
        endpoint: str | None = None,
        phases: Iterable[str] | None = None,
        limit: int = 100,
    ) -> builtins.list[RolloutRecord]:
        """Rollouts, newest first, optionally only one endpoint's and only in some phases."""
        ...

    def list_summaries(
        self,
        phases: Iterable[str] | None = None,
        endpoint: str | None = None,
        limit: int = 100,
        cursor: SummaryCursor | None = None,
    ) -> builtins.list[RolloutSummary]:
        """One page of rollout summaries, newest first by ``(created_at, id)``.

        Reads only the summary's fields, never whole plans and states: what ``/metrics`` and
        the lists use, at a cost that does not grow with a rollout's history. ``cursor`` is the
        ``cursor`` of the last summary of the previous page; the page then holds the rollouts
        after it in that order (``[]`` past the end). A rollout created while a client pages
        sorts before the cursor, so paging never repeats nor skips one. Filters as ``list``.
        """
        ...

    def active_for_endpoint(self, endpoint: str) -> RolloutRecord | None:
        """The non-terminal rollout holding the endpoint, if any."""
        ...

    def version_of(self, rollout_id: str) -> int:
        """The rollout's current version (one integer column); ``RolloutNotFound``."""
        ...

    def version_and_commands(self, rollout_id: str) -> tuple[int, builtins.list[Command]]:
        """``version_of`` and ``pending_commands`` in one call (what a look of a rollout whose
        state the runner kept reads first); ``RolloutNotFound``."""
        ...

    def due(self, now: float, limit: int = 100) -> builtins.list[RolloutRecord]:
        """Non-terminal rollouts with ``due_at <= now``, the longest overdue first."""
        ...

    def due_soon(
        self, until: float, limit: int = 100, *, holder: str | None = None, now: float = 0.0
    ) -> builtins.list[DueRollout]:
        """Ids and due times of non-terminal rollouts with ``due_at <= until``, soonest first.

        Reads two columns, never a plan or a state: the scheduler's scan, which looks ahead
        (``until`` past now) so that it can start each look at its due time. With ``holder``,
        rollouts under another holder's lease live at ``now`` are left out (that replica
        drives them; nothing here could claim them).
        """
        ...

    def commit(
        self,
        rollout_id: str,
        expected_version: int,
        *,
        phase: str,
        state: JsonObject,
        due_at: float | None,
        updated_at: float,
        events: Sequence[NewEvent],
        alerts: Sequence[NewAlert],
        consumed_commands: Sequence[int],
        fence: Fence | None = None,
        windows: WindowChanges | None = None,
        summary: SummaryFields | None = None,
    ) -> RolloutRecord:
        """Persist one decision atomically and return the rollout at its new version (its
        ``state`` the object given, not decoded again).

        In one transaction: update the rollout if it is still at ``expected_version`` (and bump
        it), append ``events`` with the next sequence numbers, insert ``alerts`` tied to the
        last of those events (a ``dedup_key`` already in the outbox is skipped), mark
        ``consumed_commands`` consumed, drop the windows that began before
        ``windows.drop_before_ms``, write ``windows.upsert`` (a window already stored under
        the same entity and start is replaced) and ``windows.summaries``, and, with
        ``summary``, set the summary columns (kept as they were without it). Alerts need at
        least one event in the same commit (``ValueError``). Moving to a terminal phase frees
        the endpoint and drops every window of the rollout (its step summaries stay).

        Raises ``RolloutNotFound``; ``StaleVersion`` if the version moved on or a command was
        already consumed; ``ActiveRolloutExists`` if a terminal rollout is moved back to an
        active phase while another rollout holds the endpoint; ``ValueError`` if a command
        belongs to another rollout or does not exist. Nothing is written when it raises.

        With a ``fence`` the commit is also fenced: it raises ``LeaseLost`` (a ``StaleVersion``)
        unless ``fence.holder`` holds the rollout under ``fence.token`` with a lease not
        expired at ``updated_at``; the check and the write are one transaction, so a takeover
        cannot slip in between.
        """
        ...

    def replace_plan(
        self,
        rollout_id: str,
        expected_version: int,
        *,
        plan: JsonObject,
        updated_at: float,
        event: NewEvent,
    ) -> RolloutRecord:
        """Replace the rollout's stored plan (an operator rotating its alert channels) and
        append ``event`` saying so, in one transaction; return the rollout at its new version.

        Version-guarded like ``commit`` (a decision taken on the old plan then fails with
        ``StaleVersion`` and is taken again). Raises ``RolloutNotFound``, ``StaleVersion``.
        """
        ...

    def count_active(self) -> int:
        """How many rollouts are in a non-terminal phase (what replicas share)."""
        ...

    def windows(self, rollout_id: str, since_ms: int | None = None) -> builtins.list[StoredWindow]:
        """The rollout's stored windows that began at or after ``since_ms``, oldest first
        (then by entity); ``RolloutNotFound``."""
        ...

    def step_summaries(self, rollout_id: str) -> builtins.list[StepSummary]:
        """The rollout's step summaries ordered by ``at``; ``RolloutNotFound``."""
        ...

    def events(self, rollout_id: str, after_seq: int = 0) -> builtins.list[EventRecord]:
        """The rollout's events with ``seq > after_seq``, in order; ``RolloutNotFound``."""
        ...

    def add_command(self, rollout_id: str, kind: str, payload: JsonObject, at: float) -> Command:
        """Queue a manual input for the runner; ``RolloutNotFound`` if there is no rollout."""
        ...

    def pending_commands(self, rollout_id: str) -> builtins.list[Command]:
        """Commands not yet consumed, oldest first; ``RolloutNotFound``."""
        ...

    def claim_alerts(
        self, now: float, limit: int, lease_seconds: float
    ) -> builtins.list[OutboxAlert]:
        """Take up to ``limit`` undelivered alerts whose ``next_attempt_at <= now``.

        In the same transaction each claimed alert's ``next_attempt_at`` becomes
        ``now + lease_seconds`` and its ``attempts`` grows by one, so concurrent dispatchers
        (threads, processes, replicas) never hold the same alert at the same time. A
        dispatcher that dies mid-send loses nothing: the alert is claimable again when the
        lease runs out (delivery is at-least-once). Returned oldest first.
        """
        ...

    def add_controller_alerts(self, alerts: Sequence[NewAlert], at: float) -> int:
        """Put alerts of the controller itself, tied to no rollout, in the outbox.

        For what concerns the whole controller (a workspace it cannot reach), not one
        rollout: the rows have no ``rollout_id`` and no ``event_seq`` and are claimed and
        delivered like any other. A ``dedup_key`` already in the outbox is skipped; returns
        how many rows were inserted. ``ValueError`` for a payload the store refuses, before
        anything is written.
        """
        ...

    def mark_delivered(self, alert_id: int, at: float) -> None:
        """Record a successful delivery (the first one wins); ``AlertNotFound``."""
        ...

    def mark_failed(self, alert_id: int, error: str, next_attempt_at: float) -> None:
        """Record a failed attempt and when to retry; ignored once delivered; ``AlertNotFound``."""
        ...

    def pending_alert_count(self) -> int:
        """How many alerts are not delivered yet (the outbox backlog)."""
        ...

    def record_alias_seen(self, trigger: AliasTrigger) -> bool:
        """Record that an alias watch saw ``trigger.version`` without starting a rollout for
        it (or with one started elsewhere); False when the watch had recorded it already."""
        ...

    def alias_trigger(self, watch: str, version: str) -> AliasTrigger | None:
        """The watch's record of ``version``, or None when it never recorded it."""
        ...

    def claim_alias_moves(
        self, now: float, limit: int, lease_seconds: float
    ) -> builtins.list[AliasMove]:
        """Take up to ``limit`` due alias moves of ``succeeded`` rollouts for
        ``lease_seconds``: hidden from every other claimer meanwhile, due again after it
        unless marked. A move whose rollout ended otherwise is never due."""
        ...

    def alias_move(self, rollout_id: str) -> AliasMove | None:
        """The rollout's alias move, pending or done; None when it has none."""
        ...

    def mark_alias_moved(self, rollout_id: str, at: float) -> None:
        """The move is done (a no-op when it was already)."""
        ...

    def mark_alias_move_failed(self, rollout_id: str, error: str, next_attempt_at: float) -> None:
        """The attempt failed: keep ``error``, try again at ``next_attempt_at``."""
        ...

    def try_lease(self, name: str, holder: str, ttl_seconds: float, now: float) -> bool:
        """Acquire or renew the named lease for ``ttl_seconds``; whether ``holder`` holds it.

        Succeeds when the lease is free, expired (``expires_at <= now``) or already held by
        ``holder`` (a renewal). Atomic: of two holders racing for a free lease one wins.
        """
        ...

    def release_lease(self, name: str, holder: str) -> bool:
        """Give the lease up if ``holder`` holds it; whether it did."""
        ...

    def live_leases(self, prefix: str, now: float) -> builtins.list[LeaseInfo]:
        """The named leases starting with ``prefix`` that have not expired at ``now``, by name.

        ``prefix`` is letters, digits and ``:.-`` only (``ValueError`` otherwise).
        """
        ...

    # ---- rollout ownership (fencing) -------------------------------------------------------

    def claim_rollout(
        self, rollout_id: str, holder: str, ttl_seconds: float, now: float, wire_seconds: float
    ) -> Ownership | None:
        """Take or renew ``holder``'s lease on one rollout; ``None`` if another holds it.

        Free, expired or released: ``holder`` takes it with the next fencing token (the first
        is 1) and ``act_after`` = when what the previous holder sent may no longer land: its
        lease's expiry plus ``wire_seconds`` (the longest a config call lives), or the time of
        a quiet release. Held by ``holder`` and live: renewed to ``now + ttl_seconds``, same
        token and ``act_after``. Atomic: of two claimers racing, one wins.
        """
        ...

    def renew_rollout(
        self, rollout_id: str, holder: str, token: int, ttl_seconds: float, now: float
    ) -> Ownership:
        """Extend a held lease to ``now + ttl_seconds``; the check before every endpoint call.

        Raises ``LeaseLost`` unless ``holder`` holds the rollout under ``token`` and the lease
        has not expired at ``now``. The token never changes here.
        """
        ...

    def renew_held(self, holder: str, ttl_seconds: float, now: float) -> builtins.list[Ownership]:
        """Extend every lease ``holder`` holds live at ``now`` to ``now + ttl_seconds``, in one
        statement; return them (by rollout id). A lease that expired is not renewed (it may
        have been taken over): the caller counts what is missing as lost. Tokens never change
        here (a holder's live lease carries the token it was claimed under)."""
        ...

    def release_rollout(
        self, rollout_id: str, holder: str, token: int, now: float, *, quiet: bool
    ) -> bool:
        """End the lease now if ``holder`` holds it under ``token``; whether it did.

        ``quiet``: nothing this holder sent for the rollout can still land, so the next holder
        may act at once; otherwise it waits out ``wire_seconds`` from now.
        """
        ...

    def owner_of(self, rollout_id: str) -> Ownership | None:
        """The rollout's lease as it stands (live or not), or ``None`` if never claimed."""
        ...

    def owned_by(self, holder: str, now: float) -> builtins.list[Ownership]:
        """The rollouts ``holder`` holds with a lease live at ``now``, by rollout id."""
        ...

    def reclaim(self) -> None:
        """Make the space of row versions that commits replaced or deleted reusable now.

        Every look rewrites its rollout's row and turns its windows over; PostgreSQL keeps
        the old versions until a VACUUM, and its autovacuum looks at a database about once a
        minute, in which time 1,000 rollouts leave megabytes of them and the files grow. The
        reconcile loop calls this every few seconds: PostgreSQL vacuums the tables looks
        rewrite (a plain VACUUM: no exclusive lock, reads and writes go on); SQLite reuses
        freed pages by itself and does nothing. ``StoreUnavailable`` as any call.
        """
        ...

    def ping(self) -> None:
        """Check the database answers; ``StoreUnavailable`` if it does not (or is closed)."""
        ...

    def probe_write(self, now: float) -> None:
        """Check the database takes a write: one small committed write, for readiness.

        Upserts a heartbeat row (the lease named ``WRITE_PROBE_LEASE``, expired at ``now``,
        so that it never holds anything). ``StoreUnavailable`` when the write is refused: a
        read-only file or database (a PostgreSQL standby, ``default_transaction_read_only``),
        a full disk, a lock held too long, a lost connection.
        """
        ...

    def close(self) -> None:
        """Close the connection; later calls raise ``StoreUnavailable``. Idempotent."""
        ...
