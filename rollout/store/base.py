"""The one interface to durable state: what the runner, the API and the outbox dispatcher call.

In the path of a rollout the store sits at three places. The API calls ``create`` for a new
rollout in phase ``pending`` (with its first event) and ``add_command`` for manual inputs. Each
scheduler tick the runner reads the ``due`` rollouts and their ``pending_commands``, the pure
engine decides, and the runner calls ``commit`` with the new phase and state, the events of the
transition, the alert-outbox rows and the consumed commands: ONE transaction, guarded by the
version it read. The alert dispatcher takes alerts with ``claim_alerts`` under a lease and
reports each with ``mark_delivered`` or ``mark_failed``.

Two backends implement it (``rollout.store.sqlite``, the embedded default, and
``rollout.store.postgres``, for replicas) and share one contract test suite; ``open_store``
picks one from a URL. Every method is synchronous and thread-safe: the async runner calls them
through ``asyncio.to_thread``. Errors are the ``rollout.store.errors`` tree only.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable, Sequence
from typing import Protocol

from rollout.store.errors import (
    ActiveRolloutExists,
    AlertNotFound,
    DuplicateRollout,
    RolloutNotFound,
    SchemaError,
    StaleVersion,
    StoreError,
    StoreUnavailable,
)
from rollout.store.model import (
    Command,
    EventRecord,
    JsonObject,
    NewAlert,
    NewEvent,
    OutboxAlert,
    RolloutRecord,
    RolloutSummary,
    SummaryCursor,
)

__all__ = [
    "ActiveRolloutExists",
    "AlertNotFound",
    "DuplicateRollout",
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
        self, record: RolloutRecord, event: NewEvent, alerts: Sequence[NewAlert]
    ) -> RolloutRecord:
        """Insert a new rollout with its first event (seq 1) and that event's alerts.

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

    def due(self, now: float, limit: int = 100) -> builtins.list[RolloutRecord]:
        """Non-terminal rollouts with ``due_at <= now``, the longest overdue first."""
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
    ) -> RolloutRecord:
        """Persist one decision atomically and return the rollout at its new version.

        In one transaction: update the rollout if it is still at ``expected_version`` (and bump
        it), append ``events`` with the next sequence numbers, insert ``alerts`` tied to the
        last of those events (a ``dedup_key`` already in the outbox is skipped), and mark
        ``consumed_commands`` consumed. Alerts need at least one event in the same commit
        (``ValueError``). Moving to a terminal phase frees the endpoint.

        Raises ``RolloutNotFound``; ``StaleVersion`` if the version moved on or a command was
        already consumed; ``ActiveRolloutExists`` if a terminal rollout is moved back to an
        active phase while another rollout holds the endpoint; ``ValueError`` if a command
        belongs to another rollout or does not exist. Nothing is written when it raises.
        """
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

    def mark_delivered(self, alert_id: int, at: float) -> None:
        """Record a successful delivery (the first one wins); ``AlertNotFound``."""
        ...

    def mark_failed(self, alert_id: int, error: str, next_attempt_at: float) -> None:
        """Record a failed attempt and when to retry; ignored once delivered; ``AlertNotFound``."""
        ...

    def pending_alert_count(self) -> int:
        """How many alerts are not delivered yet (the outbox backlog)."""
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

    def ping(self) -> None:
        """Check the database answers; ``StoreUnavailable`` if it does not (or is closed)."""
        ...

    def close(self) -> None:
        """Close the connection; later calls raise ``StoreUnavailable``. Idempotent."""
        ...
