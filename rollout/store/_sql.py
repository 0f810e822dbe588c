"""The store's logic, written once over a small transaction interface that each backend provides.

In the path of a rollout this is where the runner's one-transaction commit, the API's create
and the dispatcher's claims become SQL. ``rollout.store.sqlite`` and ``rollout.store.postgres``
subclass ``SqlStore`` and supply the connection, the transaction boundaries, JSON and array
adaptation, the two queries whose dialects differ (``list``'s phase filter and the outbox
claim), and the translation of their driver's errors. Everything that decides what a method
means (version checks, sequence numbers, dedup, which error to raise) lives here, so the two
backends cannot drift apart; the contract suite then checks that they behave the same.

All SQL is constant text with named parameters (``:name``); values only ever travel as
parameters. Every method holds the store's lock for its whole transaction: one connection per
store, used by one thread at a time (``asyncio.to_thread`` callers share the store).
"""

from __future__ import annotations

import builtins
import json
import math
import re
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any, ClassVar, Final, Protocol

from rollout.store.base import WRITE_PROBE_LEASE, Store
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
from rollout.store.migrations import MIGRATIONS, SCHEMA_MIGRATIONS_DDL, Dialect
from rollout.store.model import (
    COMMAND_KINDS,
    PHASES,
    SUMMARY_REASON_CHARS,
    TERMINAL,
    AliasMove,
    AliasTrigger,
    ArmSummary,
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

Params = Mapping[str, object]
Row = tuple[Any, ...]

# Names the backends translate their unique-violation reports to (PostgreSQL reports the index
# or constraint name; SQLite reports "table.column", mapped by rollout.store.sqlite).
ACTIVE_PER_ENDPOINT: Final = "rollouts_one_active_per_endpoint"
ROLLOUT_PKEY: Final = "rollouts_pkey"
ALIAS_TRIGGER_PKEY: Final = "alias_triggers_pkey"


class UniqueViolationError(StoreError):
    """A unique constraint refused a write; the store turns it into the caller-facing error."""

    def __init__(self, constraint: str | None, message: str) -> None:
        super().__init__(message)
        self.constraint = constraint


class Tx(Protocol):
    """One open transaction on a backend's connection."""

    def rows(self, sql: str, params: Params | None = None) -> builtins.list[Row]:
        """Execute and return every row (empty for statements that return none)."""
        ...

    def run(self, sql: str, params: Params | None = None) -> int:
        """Execute and return the number of rows changed."""
        ...


_INSERT_ROLLOUT: Final = """
INSERT INTO rollouts (id, endpoint, phase, version, plan, state, created_at, updated_at, due_at,
                      candidate, baseline, step, candidate_weight, verdict)
VALUES (:id, :endpoint, :phase, 1, :plan, :state, :created_at, :updated_at, :due_at,
        :candidate, :baseline, :step, :candidate_weight, :verdict)
RETURNING id, endpoint, phase, version, plan, state, created_at, updated_at, due_at
"""
_UPDATE_ROLLOUT: Final = """
UPDATE rollouts
SET phase = :phase, state = :state, due_at = :due_at, updated_at = :updated_at,
    version = version + 1,
    candidate = CASE WHEN :set_summary THEN :candidate ELSE candidate END,
    baseline = CASE WHEN :set_summary THEN :baseline ELSE baseline END,
    step = CASE WHEN :set_summary THEN :step ELSE step END,
    candidate_weight = CASE WHEN :set_summary THEN :candidate_weight ELSE candidate_weight END,
    verdict = CASE WHEN :set_summary THEN :verdict ELSE verdict END
WHERE id = :id AND version = :expected_version
RETURNING id, endpoint, phase, version, plan, NULL, created_at, updated_at, due_at
"""
_REPLACE_PLAN: Final = """
UPDATE rollouts
SET plan = :plan, updated_at = :updated_at, version = version + 1
WHERE id = :id AND version = :expected_version
RETURNING id, endpoint, phase, version, plan, state, created_at, updated_at, due_at
"""
_GET_ROLLOUT: Final = """
SELECT id, endpoint, phase, version, plan, state, created_at, updated_at, due_at
FROM rollouts WHERE id = :id
"""
_ROLLOUT_VERSION: Final = "SELECT version FROM rollouts WHERE id = :id"
# The phase list repeats the partial index's predicate so the planner can use that index.
_ACTIVE_FOR_ENDPOINT: Final = """
SELECT id, endpoint, phase, version, plan, state, created_at, updated_at, due_at
FROM rollouts
WHERE endpoint = :endpoint
  AND phase NOT IN ('succeeded', 'rolled_back', 'aborted', 'failed')
"""
_DUE: Final = """
SELECT id, endpoint, phase, version, plan, state, created_at, updated_at, due_at
FROM rollouts
WHERE due_at IS NOT NULL AND due_at <= :now
  AND phase NOT IN ('succeeded', 'rolled_back', 'aborted', 'failed')
ORDER BY due_at, created_at, id
LIMIT :limit
"""
# Two columns only: the scan runs every second and needs no plan or state. With a holder,
# rollouts under another holder's live lease are not this replica's to look at.
_DUE_SOON: Final = """
SELECT r.id, r.due_at
FROM rollouts r
WHERE r.due_at IS NOT NULL AND r.due_at <= :until
  AND r.phase NOT IN ('succeeded', 'rolled_back', 'aborted', 'failed')
  AND (CAST(:holder AS TEXT) IS NULL OR NOT EXISTS (
      SELECT 1 FROM ownership o
      WHERE o.rollout_id = r.id AND o.holder <> :holder AND o.expires_at > :now
  ))
ORDER BY r.due_at, r.created_at, r.id
LIMIT :limit
"""

# Windows: one row per (rollout, entity, start); a revision replaces the row.
_UPSERT_WINDOW: Final = """
INSERT INTO metric_windows (rollout_id, entity, start_ms, data)
VALUES (:rollout_id, :entity, :start_ms, :data)
ON CONFLICT (rollout_id, entity, start_ms) DO UPDATE SET data = excluded.data
"""
_DROP_WINDOWS_BEFORE: Final = """
DELETE FROM metric_windows WHERE rollout_id = :rollout_id AND start_ms < :before_ms
"""
_DROP_ALL_WINDOWS: Final = "DELETE FROM metric_windows WHERE rollout_id = :rollout_id"
_WINDOWS: Final = """
SELECT entity, start_ms, data FROM metric_windows
WHERE rollout_id = :rollout_id AND start_ms >= :since_ms
ORDER BY start_ms, entity
"""
_UPSERT_SUMMARY: Final = """
INSERT INTO step_summaries (rollout_id, key, at, data) VALUES (:rollout_id, :key, :at, :data)
ON CONFLICT (rollout_id, key) DO UPDATE SET at = excluded.at, data = excluded.data
"""
_SUMMARIES: Final = """
SELECT key, at, data FROM step_summaries WHERE rollout_id = :rollout_id ORDER BY at, key
"""
# --- summaries: the one place that says where each summary field is read from ------------------
#
# The rollout's own columns, then JSON paths into its plan and its state. The database pulls
# the paths out of each document in ONE pass per document (SQLite: json_extract with several
# paths; PostgreSQL: jsonb_to_record, which detoasts the value once) and hands back a short
# JSON array, so neither a whole state nor one parse per field ever reaches Python. Stored
# summary columns maintained at commit would replace entries here and nothing else.
SUMMARY_COLUMNS: Final = (
    "id",
    "endpoint",
    "phase",
    "version",
    "created_at",
    "updated_at",
    "due_at",
)
SUMMARY_PLAN_PATHS: Final[tuple[tuple[str, ...], ...]] = (
    ("name",),
    ("strategy",),
    ("candidate", "name"),
    ("candidate", "entity_name"),
    ("candidate", "entity_version"),
    ("steps",),
    ("step_weight",),
    ("max_weight",),
    ("policy", "deadline"),
)
SUMMARY_STATE_PATHS: Final[tuple[tuple[str, ...], ...]] = (
    ("step",),
    ("candidate_weight",),
    ("baseline",),
    ("started_at",),
    ("last_verdict", "outcome"),
    ("last_verdict", "reason"),
    ("candidate", "requests"),
    ("candidate", "errors_5xx"),
    ("candidate", "latency"),
    ("control", "requests"),
    ("control", "errors_5xx"),
    ("control", "latency"),
)

_SAFE_KEY = re.compile(r"^[a-z_][a-z0-9_]*$")


def _checked(paths: tuple[tuple[str, ...], ...]) -> tuple[tuple[str, ...], ...]:
    # Constants, but they are spliced into SQL text: never anything that could quote out.
    if not all(_SAFE_KEY.match(key) for path in paths for key in path):
        raise ValueError(f"bad summary paths {paths!r}")
    return paths


def _sqlite_values(column: str, paths: tuple[tuple[str, ...], ...]) -> str:
    # With two paths or more json_extract returns one JSON array: one parse of the document.
    where = ", ".join("'$." + ".".join(path) + "'" for path in _checked(paths))
    return f"json_extract(r.{column}, {where})"


def _postgres_values(alias: str, paths: tuple[tuple[str, ...], ...]) -> tuple[str, str]:
    """(the jsonb_build_array over the record's columns, the record's column list)."""
    tops = list(dict.fromkeys(path[0] for path in _checked(paths)))
    items = []
    for path in paths:
        top = f'{alias}."{path[0]}"'
        items.append(top if len(path) == 1 else f"{top} #> '{{{','.join(path[1:])}}}'")
    record = ", ".join(f'"{top}" JSONB' for top in tops)
    return f"CAST(jsonb_build_array({', '.join(items)}) AS TEXT)", record


def summary_sql(dialect: str) -> str:
    """``list_summaries``' query for ``"sqlite"`` or ``"postgresql"``.

    Parameters: ``endpoint`` (or NULL), ``phases`` (the backend's array parameter or NULL),
    ``after_created`` and ``after_id`` (the cursor, or NULL), ``limit``. Columns:
    ``SUMMARY_COLUMNS``, then the plan's and the state's values as JSON array text. The page
    is chosen first (inner query) so that only its rows are ever read into.
    """
    columns = ", ".join(SUMMARY_COLUMNS)
    outer_columns = ", ".join(f"r.{name}" for name in SUMMARY_COLUMNS)
    if dialect == "sqlite":
        filters = """(:endpoint IS NULL OR endpoint = :endpoint)
  AND (:phases IS NULL OR phase IN (SELECT value FROM json_each(:phases)))
  AND (:after_created IS NULL OR created_at < :after_created
       OR (created_at = :after_created AND id < :after_id))"""
        values = (
            f"{_sqlite_values('plan', SUMMARY_PLAN_PATHS)}, "
            f"{_sqlite_values('state', SUMMARY_STATE_PATHS)}"
        )
        joins = ""
    else:
        filters = """(CAST(:endpoint AS TEXT) IS NULL OR endpoint = :endpoint)
  AND (CAST(:phases AS TEXT[]) IS NULL OR phase = ANY (CAST(:phases AS TEXT[])))
  AND (CAST(:after_created AS DOUBLE PRECISION) IS NULL
       OR created_at < :after_created
       OR (created_at = :after_created AND id < CAST(:after_id AS TEXT)))"""
        plan_values, plan_record = _postgres_values("p", SUMMARY_PLAN_PATHS)
        state_values, state_record = _postgres_values("s", SUMMARY_STATE_PATHS)
        values = f"{plan_values}, {state_values}"
        joins = (
            f"\nCROSS JOIN LATERAL jsonb_to_record(r.plan) AS p({plan_record})"
            f"\nCROSS JOIN LATERAL jsonb_to_record(r.state) AS s({state_record})"
        )
    # Built from the constant tables above: no value ever reaches this text.
    return f"""
SELECT {outer_columns}, {values}
FROM (
    SELECT {columns}, plan, state FROM rollouts
    WHERE {filters}
    ORDER BY created_at DESC, id DESC
    LIMIT :limit
) AS r{joins}
ORDER BY r.created_at DESC, r.id DESC
"""  # noqa: S608


def _missed_update(tx: Tx, rollout_id: str, expected_version: int) -> StoreError:
    """Why a version-guarded UPDATE changed no row: the rollout is gone, or moved on."""
    current = tx.rows(_ROLLOUT_VERSION, {"id": rollout_id})
    if not current:
        return RolloutNotFound(rollout_id)
    return StaleVersion(rollout_id, expected_version, int(current[0][0]))


def _num(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _text(value: object) -> str | None:
    return None if value is None else str(value)


def _step_count(
    strategy: str, steps: float | None, step_weight: float | None, max_weight: float | None
) -> int:
    """Judged steps, as the API's ``steps``: canary steps without the implied 100 %, else 1."""
    if strategy != "canary":
        return 1
    if steps is not None:
        return max(1, int(steps))
    if step_weight is None or step_weight < 1:
        return 1
    ceiling = min(int(max_weight) if max_weight is not None else 100, 99)
    return max(1, len(range(int(step_weight), ceiling + 1, int(step_weight))))


def _served_name(name: str | None, entity: str | None, version: str | None) -> str:
    # As rollout.plan.CandidateEntity.served_name (the store does not import the plan).
    if name:
        return name
    if not entity:
        return "unknown"
    derived = f"{entity.rsplit('.', 1)[-1]}-{version or ''}"
    return re.sub(r"[^A-Za-z0-9_-]", "-", derived)[:63]


def _values(raw: object, count: int) -> builtins.list[Any]:
    values = json.loads(raw) if isinstance(raw, str | bytes) else raw
    if not isinstance(values, builtins.list) or len(values) != count:
        raise StoreError(f"a summary's values are not a list of {count}: {raw!r:.200}")
    return values


def summary_of(row: Row) -> RolloutSummary:
    """A ``RolloutSummary`` from one row of ``summary_sql``."""
    rollout_id, endpoint, phase, version, created_at, updated_at, due_at = row[:7]
    (
        name, strategy, cand_name, cand_entity, cand_version, steps, step_weight, max_weight,
        deadline,
    ) = _values(row[7], len(SUMMARY_PLAN_PATHS))  # fmt: skip
    (
        step, weight, baseline, started_at, outcome, reason,
        cand_requests, cand_5xx, cand_latency, ctl_requests, ctl_5xx, ctl_latency,
    ) = _values(row[8], len(SUMMARY_STATE_PATHS))  # fmt: skip
    strategy_text = _text(strategy) or "canary"
    reason_text = _text(reason)
    if reason_text is not None and len(reason_text) > SUMMARY_REASON_CHARS:
        reason_text = reason_text[: SUMMARY_REASON_CHARS - 1] + "\u2026"
    step_total = float(len(steps)) if isinstance(steps, builtins.list) else None
    return RolloutSummary(
        id=str(rollout_id),
        name=_text(name),
        endpoint=str(endpoint),
        phase=str(phase),
        strategy=strategy_text,
        candidate=_served_name(_text(cand_name), _text(cand_entity), _text(cand_version)),
        candidate_entity=_text(cand_entity),
        candidate_version=_text(cand_version),
        baseline=_text(baseline),
        step=int(_num(step) or 0),
        step_count=_step_count(strategy_text, step_total, _num(step_weight), _num(max_weight)),
        candidate_weight=int(_num(weight) or 0),
        verdict_outcome=_text(outcome),
        verdict_reason=reason_text,
        created_at=float(created_at),
        updated_at=float(updated_at),
        due_at=None if due_at is None else float(due_at),
        version=int(version),
        started_at=_num(started_at) or float(created_at),
        deadline_seconds=_num(deadline),
        candidate_arm=ArmSummary(
            requests=_num(cand_requests) or 0.0,
            errors_5xx=_num(cand_5xx) or 0.0,
            latency=cand_latency if isinstance(cand_latency, dict) else None,
        ),
        control_arm=ArmSummary(
            requests=_num(ctl_requests) or 0.0,
            errors_5xx=_num(ctl_5xx) or 0.0,
            latency=ctl_latency if isinstance(ctl_latency, dict) else None,
        ),
    )


_LAST_SEQ: Final = "SELECT COALESCE(MAX(seq), 0) FROM events WHERE rollout_id = :rollout_id"
_INSERT_EVENT: Final = """
INSERT INTO events (rollout_id, seq, at, kind, from_phase, to_phase, reason, data)
VALUES (:rollout_id, :seq, :at, :kind, :from_phase, :to_phase, :reason, :data)
"""
_EVENTS: Final = """
SELECT seq, rollout_id, at, kind, from_phase, to_phase, reason, data
FROM events WHERE rollout_id = :rollout_id AND seq > :after_seq
ORDER BY seq
"""

# ON CONFLICT DO NOTHING: a key already in the outbox (a replayed commit) is skipped silently,
# and the rest of the transaction still commits.
_INSERT_ALERT: Final = """
INSERT INTO outbox (rollout_id, event_seq, channel, dedup_key, payload, created_at, attempts,
                    next_attempt_at)
VALUES (:rollout_id, :event_seq, :channel, :dedup_key, :payload, :created_at, 0, :created_at)
ON CONFLICT (dedup_key) DO NOTHING
"""
_INSERT_CONTROLLER_ALERT: Final = """
INSERT INTO outbox (rollout_id, event_seq, channel, dedup_key, payload, created_at, attempts,
                    next_attempt_at)
VALUES (NULL, NULL, :channel, :dedup_key, :payload, :created_at, 0, :created_at)
ON CONFLICT (dedup_key) DO NOTHING
"""
_MARK_DELIVERED: Final = """
UPDATE outbox SET delivered_at = :at WHERE id = :id AND delivered_at IS NULL
"""
# A failure reported after another dispatcher delivered the alert must not revive it.
_MARK_FAILED: Final = """
UPDATE outbox SET last_error = :error, next_attempt_at = :next_attempt_at
WHERE id = :id AND delivered_at IS NULL
"""
_ALERT_EXISTS: Final = "SELECT 1 FROM outbox WHERE id = :id"

_INSERT_ALIAS_TRIGGER: Final = """
INSERT INTO alias_triggers (watch, version, rollout_id, seen_at)
VALUES (:watch, :version, :rollout_id, :seen_at)
"""
_RECORD_ALIAS_SEEN: Final = """
INSERT INTO alias_triggers (watch, version, rollout_id, seen_at)
VALUES (:watch, :version, :rollout_id, :seen_at)
ON CONFLICT (watch, version) DO NOTHING
"""
_GET_ALIAS_TRIGGER: Final = """
SELECT watch, version, rollout_id, seen_at FROM alias_triggers
WHERE watch = :watch AND version = :version
"""
_INSERT_ALIAS_MOVE: Final = """
INSERT INTO alias_moves (rollout_id, model, alias, version, attempts, next_attempt_at)
VALUES (:rollout_id, :model, :alias, :version, 0, :created_at)
"""
# Only moves whose rollout ended promoted are due; the others wait (and a rollout that ends
# otherwise never makes its move due). The outer conditions are checked again on the locked
# row (PostgreSQL re-reads a row another claimer updated), so two claimers never both take it.
_CLAIM_ALIAS_MOVES: Final = """
UPDATE alias_moves
SET attempts = attempts + 1, next_attempt_at = :lease_until
WHERE done_at IS NULL AND next_attempt_at <= :now AND rollout_id IN (
    SELECT m.rollout_id FROM alias_moves m JOIN rollouts r ON r.id = m.rollout_id
    WHERE m.done_at IS NULL AND m.next_attempt_at <= :now AND r.phase = 'succeeded'
    ORDER BY m.next_attempt_at, m.rollout_id
    LIMIT :limit
)
RETURNING rollout_id, model, alias, version, attempts, next_attempt_at, done_at, last_error
"""
_GET_ALIAS_MOVE: Final = """
SELECT rollout_id, model, alias, version, attempts, next_attempt_at, done_at, last_error
FROM alias_moves WHERE rollout_id = :id
"""
_ALIAS_MOVED: Final = """
UPDATE alias_moves SET done_at = :at, last_error = NULL
WHERE rollout_id = :id AND done_at IS NULL
"""
_ALIAS_MOVE_FAILED: Final = """
UPDATE alias_moves SET last_error = :error, next_attempt_at = :next_attempt_at
WHERE rollout_id = :id AND done_at IS NULL
"""
_PENDING_ALERTS: Final = "SELECT COUNT(*) FROM outbox WHERE delivered_at IS NULL"

# INSERT ... SELECT from rollouts: an unknown rollout inserts nothing, in one statement.
_ADD_COMMAND: Final = """
INSERT INTO commands (rollout_id, kind, payload, created_at)
SELECT id, :kind, :payload, :created_at FROM rollouts WHERE id = :rollout_id
RETURNING id, rollout_id, kind, payload, created_at, consumed_at
"""
_PENDING_COMMANDS: Final = """
SELECT id, rollout_id, kind, payload, created_at, consumed_at
FROM commands WHERE rollout_id = :rollout_id AND consumed_at IS NULL
ORDER BY id
"""
_CONSUME_COMMAND: Final = """
UPDATE commands SET consumed_at = :at
WHERE id = :id AND rollout_id = :rollout_id AND consumed_at IS NULL
"""
_COMMAND_OWNER: Final = "SELECT rollout_id FROM commands WHERE id = :id"

# The upsert's WHERE decides: a free name inserts, an expired or own lease is taken over or
# renewed, someone else's live lease leaves the row untouched and RETURNING yields nothing.
_TRY_LEASE: Final = """
INSERT INTO leases (name, holder, expires_at) VALUES (:name, :holder, :expires_at)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
WHERE leases.holder = excluded.holder OR leases.expires_at <= :now
RETURNING holder
"""
_RELEASE_LEASE: Final = "DELETE FROM leases WHERE name = :name AND holder = :holder"
# Always writes (an upsert that changes the row every time), so a read-only database refuses it;
# expired at once, so the row holds nothing.
_PROBE_WRITE: Final = """
INSERT INTO leases (name, holder, expires_at) VALUES (:name, 'readiness', :now)
ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at
"""
_LIVE_LEASES: Final = """
SELECT name, holder, expires_at FROM leases
WHERE name LIKE :pattern AND expires_at > :now
ORDER BY name
"""
# No LIKE wildcards ("%", "_") in a prefix, so it needs no escaping in either dialect.
_LEASE_PREFIX = re.compile(r"[A-Za-z0-9:.-]*")
_COUNT_ACTIVE: Final = """
SELECT COUNT(*) FROM rollouts
WHERE phase NOT IN ('succeeded', 'rolled_back', 'aborted', 'failed')
"""

# Rollout ownership. The upsert's WHERE decides like _TRY_LEASE's; the CASEs tell a renewal
# (same holder, still live: token and act_after kept) from a change of holder (token + 1, and
# act_after from the previous lease: its quiet release, or its expiry plus a config call's
# life). A fresh row has had no holder, so nothing of anyone's can be on the wire.
_CLAIM_ROLLOUT: Final = """
INSERT INTO ownership (rollout_id, holder, token, acquired_at, renewed_at, expires_at,
                       act_after, quiet_at)
VALUES (:rollout_id, :holder, 1, :now, :now, :expires_at, :now, NULL)
ON CONFLICT (rollout_id) DO UPDATE SET
    token = CASE WHEN ownership.holder = excluded.holder AND ownership.expires_at > :now
                 THEN ownership.token ELSE ownership.token + 1 END,
    act_after = CASE WHEN ownership.holder = excluded.holder AND ownership.expires_at > :now
                     THEN ownership.act_after
                     ELSE COALESCE(ownership.quiet_at, ownership.expires_at + :wire_seconds)
                END,
    acquired_at = CASE WHEN ownership.holder = excluded.holder AND ownership.expires_at > :now
                       THEN ownership.acquired_at ELSE excluded.acquired_at END,
    holder = excluded.holder,
    renewed_at = excluded.renewed_at,
    expires_at = excluded.expires_at,
    quiet_at = NULL
WHERE ownership.holder = excluded.holder OR ownership.expires_at <= :now
RETURNING rollout_id, holder, token, acquired_at, expires_at, act_after
"""
# An UPDATE, not a SELECT, even where only a check is meant (the fenced commit): on
# PostgreSQL it row-locks the lease until the transaction ends, so a takeover waits for it
# and then sees the lease as it was left.
_RENEW_ROLLOUT: Final = """
UPDATE ownership SET expires_at = :expires_at, renewed_at = :now
WHERE rollout_id = :rollout_id AND holder = :holder AND token = :token AND expires_at > :now
RETURNING rollout_id, holder, token, acquired_at, expires_at, act_after
"""
_RENEW_HELD: Final = """
UPDATE ownership SET expires_at = :expires_at, renewed_at = :now
WHERE holder = :holder AND expires_at > :now
RETURNING rollout_id, holder, token, acquired_at, expires_at, act_after
"""
_FENCE_ROLLOUT: Final = """
UPDATE ownership SET renewed_at = renewed_at
WHERE rollout_id = :rollout_id AND holder = :holder AND token = :token AND expires_at > :now
RETURNING token
"""
_RELEASE_ROLLOUT: Final = """
UPDATE ownership SET expires_at = :now, quiet_at = :quiet_at
WHERE rollout_id = :rollout_id AND holder = :holder AND token = :token AND expires_at > :now
"""
_OWNER_OF: Final = """
SELECT rollout_id, holder, token, acquired_at, expires_at, act_after FROM ownership
WHERE rollout_id = :rollout_id
"""
_OWNED_BY: Final = """
SELECT rollout_id, holder, token, acquired_at, expires_at, act_after FROM ownership
WHERE holder = :holder AND expires_at > :now
ORDER BY rollout_id
"""

_APPLIED_MIGRATIONS: Final = "SELECT version FROM schema_migrations ORDER BY version"
_MIGRATION_APPLIED: Final = "SELECT 1 FROM schema_migrations WHERE version = :version"
_RECORD_MIGRATION: Final = """
INSERT INTO schema_migrations (version, name, applied_at) VALUES (:version, :name, :applied_at)
"""
_PING: Final = "SELECT 1"

# json.dumps always escapes U+0000 as \u0000; an escape is real when preceded by an even number
# of backslashes (an odd run means the backslash itself was escaped in the original string).
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def dump_json(value: object, what: str) -> str:
    """Serialize a JSON object the same way for both backends, refusing what one would reject.

    NaN and infinities are not JSON (PostgreSQL's jsonb refuses them), text may not hold NUL
    (jsonb refuses ``\\u0000``) nor lone surrogates (not encodable as UTF-8); refusing them
    here keeps the backends' contract identical and fails before any write.
    """
    if not isinstance(value, dict):
        raise ValueError(f"{what} must be a JSON object (a dict), not {type(value).__name__}")
    try:
        text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} is not JSON-serializable: {exc}") from exc
    # The plain substring test first: it is cheap, the escape-aware search is not.
    if "\\u0000" in text and _NUL_ESCAPE.search(text):
        raise ValueError(f"{what} contains a NUL character, which the store cannot keep")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        # A lone surrogate (e.g. from a badly decoded byte string) has no UTF-8 form.
        raise ValueError(f"{what} contains text that is not valid Unicode: {exc}") from exc
    return text


def _entity_key(entity: str | None) -> str:
    # Endpoint totals (no entity label) are kept under '': key columns cannot be NULL.
    return "" if entity is None else entity


def _trigger_params(trigger: AliasTrigger, rollout_id: str | None) -> dict[str, object]:
    return {
        "watch": trigger.watch,
        "version": trigger.version,
        "rollout_id": rollout_id,
        "seen_at": trigger.at,
    }


def _alias_move(row: Row) -> AliasMove:
    return AliasMove(
        rollout_id=str(row[0]),
        model=str(row[1]),
        alias=str(row[2]),
        version=str(row[3]),
        attempts=int(row[4]),
        next_attempt_at=float(row[5]),
        done_at=_num(row[6]),
        last_error=_text(row[7]),
    )


def _summary_params(summary: SummaryFields | None) -> dict[str, object]:
    fields = summary or SummaryFields()
    return {
        "set_summary": summary is not None,
        "candidate": fields.candidate,
        "baseline": fields.baseline,
        "step": fields.step,
        "candidate_weight": fields.candidate_weight,
        "verdict": fields.verdict,
    }


def _write_windows(
    tx: Tx,
    *,
    rollout_id: str,
    phase: str,
    changes: WindowChanges,
    windows: Sequence[Params],
    summaries: Sequence[Params],
) -> None:
    if phase in TERMINAL:
        # A finished rollout judges nothing more: its windows go, its step summaries stay.
        tx.run(_DROP_ALL_WINDOWS, {"rollout_id": rollout_id})
    else:
        if changes.drop_before_ms is not None:
            tx.run(
                _DROP_WINDOWS_BEFORE,
                {"rollout_id": rollout_id, "before_ms": int(changes.drop_before_ms)},
            )
        for params in windows:
            tx.run(_UPSERT_WINDOW, params)
    for params in summaries:
        tx.run(_UPSERT_SUMMARY, params)


def _check_time(value: float | None, what: str) -> None:
    # SQLite would store NaN as NULL and PostgreSQL as NaN: refuse it for both.
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{what} must be a finite number of epoch seconds, got {value!r}")


def _check_phase(phase: str) -> None:
    if phase not in PHASES:
        raise ValueError(f"unknown phase {phase!r}; expected one of {sorted(PHASES)}")


def _check_positive(value: float, what: str) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{what} must be positive, got {value!r}")
_NOTHING: Final = object()


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")


class SqlStore(Store, ABC):
    """``Store`` over SQL; subclasses provide the connection and the dialect's pieces."""

    dialect: ClassVar[Dialect]
    LIST_SQL: ClassVar[str]
    """``list``: parameters ``endpoint`` (or NULL), ``phases`` (array param or NULL), ``limit``."""
    CLAIM_SQL: ClassVar[str]
    SUMMARY_SQL: ClassVar[str]
    """``list_summaries``: ``summary_sql`` rendered for the backend's dialect."""
    """``claim_alerts``: parameters ``now``, ``limit``, ``lease_until``; returns outbox rows."""
    """``list_summaries``: ``LIST_SQL``'s parameters; returns ``SUMMARY_COLUMNS`` rows."""
    concurrent_reads: bool = False
    """Whether reads may run beside a write (and each other) without the store's lock: the
    backend gives each reading thread a connection of its own."""

    def __init__(self, description: str) -> None:
        self._description = description
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._description})"

    # --- what a backend provides -------------------------------------------------------------

    @abstractmethod
    def _transaction(self, *, write: bool) -> AbstractContextManager[Tx]:
        """Open (connecting if needed) a transaction; commit on exit, roll back on error.

        ``write`` transactions must serialize with other writers from their first statement
        (SQLite: BEGIN IMMEDIATE; PostgreSQL: row locks taken by the statements themselves).
        Driver errors raised inside (or by the commit) leave it as ``StoreError`` subclasses.
        """

    @abstractmethod
    def _disconnect(self) -> None:
        """Close the connection if one is open."""

    @abstractmethod
    def _json_param(self, text: str) -> object:
        """Adapt serialized JSON text for a JSON column."""

    @abstractmethod
    def _json_value(self, raw: object) -> Any:
        """Read a JSON column back into Python values."""

    @abstractmethod
    def _array_param(self, values: builtins.list[str]) -> object:
        """Adapt a list of strings for ``LIST_SQL``'s ``phases`` parameter."""

    def _lock_migrations(self, tx: Tx) -> None:
        """Serialize concurrent ``migrate()`` calls beyond what the write transaction does."""

    # --- plumbing ----------------------------------------------------------------------------

    @contextmanager
    def _tx(self, *, write: bool) -> Iterator[Tx]:
        if not write and self.concurrent_reads:
            # Reads on their own connection: an API read or a /metrics scrape never waits
            # behind the runner's commits.
            if self._closed:
                raise StoreUnavailable(f"the store ({self._description}) is closed")
            with self._transaction(write=False) as tx:
                yield tx
            return
        with self._lock:
            if self._closed:
                raise StoreUnavailable(f"the store ({self._description}) is closed")
            with self._transaction(write=write) as tx:
                yield tx

    def _json(self, value: object, what: str) -> object:
        return self._json_param(dump_json(value, what))

    def _object(self, raw: object) -> JsonObject:
        value = self._json_value(raw)
        if not isinstance(value, dict):
            raise StoreError(f"stored JSON is not an object: {type(value).__name__}")
        return value

    def _rollout(self, row: Row, state: JsonObject | None = None) -> RolloutRecord:
        """A record from a row of the rollout columns; ``state``: the one just written (the
        row then need not carry it back, nor this decode it again)."""
        return RolloutRecord(
            id=str(row[0]),
            endpoint=str(row[1]),
            phase=str(row[2]),
            version=int(row[3]),
            plan=self._object(row[4]),
            state=self._object(row[5]) if state is None else state,
            created_at=float(row[6]),
            updated_at=float(row[7]),
            due_at=None if row[8] is None else float(row[8]),
        )

    def _event(self, row: Row) -> EventRecord:
        return EventRecord(
            seq=int(row[0]),
            rollout_id=str(row[1]),
            at=float(row[2]),
            kind=str(row[3]),
            from_phase=row[4],
            to_phase=row[5],
            reason=str(row[6]),
            data=self._object(row[7]),
        )

    def _alert(self, row: Row) -> OutboxAlert:
        return OutboxAlert(
            id=int(row[0]),
            rollout_id=None if row[1] is None else str(row[1]),
            event_seq=None if row[2] is None else int(row[2]),
            channel=str(row[3]),
            dedup_key=str(row[4]),
            payload=self._object(row[5]),
            created_at=float(row[6]),
            attempts=int(row[7]),
            next_attempt_at=float(row[8]),
            delivered_at=None if row[9] is None else float(row[9]),
            last_error=row[10],
        )

    def _command(self, row: Row) -> Command:
        return Command(
            id=int(row[0]),
            rollout_id=str(row[1]),
            kind=str(row[2]),
            payload=self._object(row[3]),
            created_at=float(row[4]),
            consumed_at=None if row[5] is None else float(row[5]),
        )

    def _event_params(
        self, rollout_id: str, events: Sequence[NewEvent]
    ) -> builtins.list[dict[str, object]]:
        # Serialized before the transaction opens, so a bad value raises before any write.
        params: builtins.list[dict[str, object]] = []
        for event in events:
            _check_time(event.at, "event time")
            for phase in (event.from_phase, event.to_phase):
                if phase is not None:
                    _check_phase(phase)
            params.append(
                {
                    "rollout_id": rollout_id,
                    "at": event.at,
                    "kind": event.kind,
                    "from_phase": event.from_phase,
                    "to_phase": event.to_phase,
                    "reason": event.reason,
                    "data": self._json(event.data, f"event {event.kind!r} data"),
                }
            )
        return params

    def _alert_params(
        self, rollout_id: str | None, alerts: Sequence[NewAlert], created_at: float
    ) -> builtins.list[dict[str, object]]:
        return [
            {
                "rollout_id": rollout_id,
                "channel": alert.channel,
                "dedup_key": alert.dedup_key,
                "payload": self._json(alert.payload, f"alert {alert.dedup_key!r} payload"),
                "created_at": created_at,
            }
            for alert in alerts
        ]

    def _active_id(self, endpoint: str) -> str | None:
        """Best effort, after a conflict: which rollout holds the endpoint now."""
        try:
            active = self.active_for_endpoint(endpoint)
        except StoreError:
            return None
        return None if active is None else active.id

    # --- schema ------------------------------------------------------------------------------

    def migrate(self) -> builtins.list[int]:
        tokens = self.dialect.tokens()
        with self._tx(write=True) as tx:
            self._lock_migrations(tx)
            tx.run(SCHEMA_MIGRATIONS_DDL.format(**tokens))
            known = {int(row[0]) for row in tx.rows(_APPLIED_MIGRATIONS)}
        latest = max(migration.version for migration in MIGRATIONS)
        if known and max(known) > latest:
            raise SchemaError(
                f"the database is at schema version {max(known)}, newer than this code knows "
                f"({latest}); run a newer rollout against it"
            )
        applied: builtins.list[int] = []
        for migration in MIGRATIONS:
            if migration.version in known:
                continue
            with self._tx(write=True) as tx:
                self._lock_migrations(tx)
                # Another process may have applied it between our read and our lock.
                if tx.rows(_MIGRATION_APPLIED, {"version": migration.version}):
                    continue
                for statement in migration.render(self.dialect):
                    tx.run(statement)
                tx.run(
                    _RECORD_MIGRATION,
                    {
                        "version": migration.version,
                        "name": migration.name,
                        "applied_at": time.time(),
                    },
                )
            applied.append(migration.version)
        return applied

    # --- rollouts ----------------------------------------------------------------------------

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
        _check_phase(record.phase)
        for value, what in (
            (record.created_at, "created_at"),
            (record.updated_at, "updated_at"),
            (record.due_at, "due_at"),
        ):
            _check_time(value, what)
        row_params = {
            "id": record.id,
            "endpoint": record.endpoint,
            "phase": record.phase,
            "plan": self._json(record.plan, "plan"),
            "state": self._json(record.state, "state"),
            "created_at": record.created_at,
            "updated_at": record.updated_at,
            "due_at": record.due_at,
            **_summary_params(summary or SummaryFields()),
        }
        (event_params,) = self._event_params(record.id, [event])
        alert_params = self._alert_params(record.id, alerts, record.created_at)
        try:
            with self._tx(write=True) as tx:
                (row,) = tx.rows(_INSERT_ROLLOUT, row_params)
                tx.run(_INSERT_EVENT, {**event_params, "seq": 1})
                for params in alert_params:
                    tx.run(_INSERT_ALERT, {**params, "event_seq": 1})
                if trigger is not None:
                    tx.run(_INSERT_ALIAS_TRIGGER, _trigger_params(trigger, record.id))
                if alias_move is not None:
                    tx.run(
                        _INSERT_ALIAS_MOVE,
                        {
                            "rollout_id": record.id,
                            "model": alias_move.model,
                            "alias": alias_move.alias,
                            "version": alias_move.version,
                            "created_at": record.created_at,
                        },
                    )
        except UniqueViolationError as exc:
            if exc.constraint == ROLLOUT_PKEY:
                raise DuplicateRollout(record.id) from exc
            if exc.constraint == ALIAS_TRIGGER_PKEY and trigger is not None:
                raise AliasMoveTaken(trigger.watch, trigger.version) from exc
            if exc.constraint == ACTIVE_PER_ENDPOINT:
                active_id = self._active_id(record.endpoint)
                raise ActiveRolloutExists(record.endpoint, active_id) from exc
            raise
        return self._rollout(row)

    def get(self, rollout_id: str) -> RolloutRecord:
        with self._tx(write=False) as tx:
            rows = tx.rows(_GET_ROLLOUT, {"id": rollout_id})
        if not rows:
            raise RolloutNotFound(rollout_id)
        return self._rollout(rows[0])

    def version_of(self, rollout_id: str) -> int:
        with self._tx(write=False) as tx:
            rows = tx.rows(_ROLLOUT_VERSION, {"id": rollout_id})
        if not rows:
            raise RolloutNotFound(rollout_id)
        return int(rows[0][0])

    def list(
        self,
        endpoint: str | None = None,
        phases: Iterable[str] | None = None,
        limit: int = 100,
    ) -> builtins.list[RolloutRecord]:
        params = self._list_params(endpoint, phases, limit)
        if params is None:
            return []
        with self._tx(write=False) as tx:
            rows = tx.rows(self.LIST_SQL, params)
        return [self._rollout(row) for row in rows]

    def _list_params(
        self, endpoint: str | None, phases: Iterable[str] | None, limit: int
    ) -> dict[str, object] | None:
        """``LIST_SQL``'s parameters; None when no phase is wanted (nothing matches)."""
        _check_limit(limit)
        phase_param = self._phases_param(phases)
        if phase_param is _NOTHING:
            return None
        return {"endpoint": endpoint, "phases": phase_param, "limit": limit}

    def _phases_param(self, phases: Iterable[str] | None) -> object:
        """The phase filter as a query parameter: None for all, ``_NOTHING`` for none."""
        if isinstance(phases, str):
            raise TypeError(f"phases is a collection of phase names, not one string: {phases!r}")
        if phases is None:
            return None
        wanted = sorted(set(phases))
        for phase in wanted:
            _check_phase(phase)
        if not wanted:
            return _NOTHING
        return self._array_param(wanted)

    def list_summaries(
        self,
        phases: Iterable[str] | None = None,
        endpoint: str | None = None,
        limit: int = 100,
        cursor: SummaryCursor | None = None,
    ) -> builtins.list[RolloutSummary]:
        _check_limit(limit)
        after_created: float | None = None
        after_id: str | None = None
        if cursor is not None:
            after_created, after_id = float(cursor[0]), str(cursor[1])
            _check_time(after_created, "cursor time")
        phase_param = self._phases_param(phases)
        if phase_param is _NOTHING:
            return []
        params = {
            "endpoint": endpoint,
            "phases": phase_param,
            "after_created": after_created,
            "after_id": after_id,
            "limit": limit,
        }
        with self._tx(write=False) as tx:
            rows = tx.rows(self.SUMMARY_SQL, params)
        return [summary_of(row) for row in rows]

    def active_for_endpoint(self, endpoint: str) -> RolloutRecord | None:
        with self._tx(write=False) as tx:
            rows = tx.rows(_ACTIVE_FOR_ENDPOINT, {"endpoint": endpoint})
        return self._rollout(rows[0]) if rows else None

    def due(self, now: float, limit: int = 100) -> builtins.list[RolloutRecord]:
        _check_time(now, "now")
        _check_limit(limit)
        with self._tx(write=False) as tx:
            rows = tx.rows(_DUE, {"now": now, "limit": limit})
        return [self._rollout(row) for row in rows]

    def due_soon(
        self, until: float, limit: int = 100, *, holder: str | None = None, now: float = 0.0
    ) -> builtins.list[DueRollout]:
        _check_time(until, "until")
        _check_time(now, "now")
        _check_limit(limit)
        params = {"until": until, "limit": limit, "holder": holder, "now": now}
        with self._tx(write=False) as tx:
            rows = tx.rows(_DUE_SOON, params)
        return [DueRollout(str(row[0]), float(row[1])) for row in rows]

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
        _check_phase(phase)
        _check_time(updated_at, "updated_at")
        _check_time(due_at, "due_at")
        if alerts and not events:
            raise ValueError("alerts are written with the event that caused them: add an event")
        state_text = dump_json(state, "state")
        update_params = {
            "id": rollout_id,
            "expected_version": expected_version,
            "phase": phase,
            "state": self._json_param(state_text),
            "due_at": due_at,
            "updated_at": updated_at,
            **_summary_params(summary),
        }
        changes = windows or WindowChanges()
        window_params, summary_params = self._window_params(rollout_id, changes)
        event_params = self._event_params(rollout_id, events)
        alert_params = self._alert_params(rollout_id, alerts, updated_at)
        # The same id twice would look like a command consumed by someone else.
        command_ids = builtins.list(dict.fromkeys(int(cid) for cid in consumed_commands))
        try:
            with self._tx(write=True) as tx:
                # The fence first: a replica that lost the rollout writes nothing at all.
                if fence is not None and not tx.rows(
                    _FENCE_ROLLOUT,
                    {
                        "rollout_id": rollout_id,
                        "holder": fence.holder,
                        "token": fence.token,
                        "now": updated_at,
                    },
                ):
                    raise LeaseLost(rollout_id, fence.holder, fence.token)
                # The version-guarded UPDATE comes first: on PostgreSQL it takes the row lock
                # that serializes committers of this rollout, so the MAX(seq) read below cannot
                # race another commit's events.
                rows = tx.rows(_UPDATE_ROLLOUT, update_params)
                if not rows:
                    raise _missed_update(tx, rollout_id, expected_version)
                if event_params:  # most looks log nothing (alerts come with an event)
                    seq = int(tx.rows(_LAST_SEQ, {"rollout_id": rollout_id})[0][0])
                    for params in event_params:
                        seq += 1
                        tx.run(_INSERT_EVENT, {**params, "seq": seq})
                    for params in alert_params:
                        tx.run(_INSERT_ALERT, {**params, "event_seq": seq})
                for command_id in command_ids:
                    changed = tx.run(
                        _CONSUME_COMMAND,
                        {"id": command_id, "rollout_id": rollout_id, "at": updated_at},
                    )
                    if changed == 1:
                        continue
                    owner = tx.rows(_COMMAND_OWNER, {"id": command_id})
                    if not owner or owner[0][0] != rollout_id:
                        raise ValueError(f"command {command_id} is not a command of {rollout_id!r}")
                    # Consumed already: the input this decision acted on was acted on before.
                    raise StaleVersion(rollout_id, expected_version, None)
                # The windows this decision judged land with it: no window is judged twice
                # after a crash, and none is lost.
                _write_windows(
                    tx,
                    rollout_id=rollout_id,
                    phase=phase,
                    changes=changes,
                    windows=window_params,
                    summaries=summary_params,
                )
        except UniqueViolationError as exc:
            if exc.constraint == ACTIVE_PER_ENDPOINT:
                endpoint = self._endpoint_of(rollout_id)
                raise ActiveRolloutExists(endpoint, self._active_id(endpoint)) from exc
            raise
        # The state as given (the database need not carry it back, nor this decode it).
        return self._rollout(rows[0], state=state)

    def replace_plan(
        self,
        rollout_id: str,
        expected_version: int,
        *,
        plan: JsonObject,
        updated_at: float,
        event: NewEvent,
    ) -> RolloutRecord:
        _check_time(updated_at, "updated_at")
        params = {
            "id": rollout_id,
            "expected_version": expected_version,
            "plan": self._json(plan, "plan"),
            "updated_at": updated_at,
        }
        event_params = self._event_params(rollout_id, [event])[0]
        with self._tx(write=True) as tx:
            rows = tx.rows(_REPLACE_PLAN, params)
            if not rows:
                raise _missed_update(tx, rollout_id, expected_version)
            seq = int(tx.rows(_LAST_SEQ, {"rollout_id": rollout_id})[0][0])
            tx.run(_INSERT_EVENT, {**event_params, "seq": seq + 1})
        return self._rollout(rows[0])

    def count_active(self) -> int:
        with self._tx(write=False) as tx:
            return int(tx.rows(_COUNT_ACTIVE)[0][0])

    # --- windows and step summaries ----------------------------------------------------------

    def windows(self, rollout_id: str, since_ms: int | None = None) -> builtins.list[StoredWindow]:
        with self._tx(write=False) as tx:
            rows = tx.rows(
                _WINDOWS,
                {"rollout_id": rollout_id, "since_ms": -(2**62) if since_ms is None else since_ms},
            )
            if not rows and not tx.rows(_ROLLOUT_VERSION, {"id": rollout_id}):
                raise RolloutNotFound(rollout_id)
        return [
            StoredWindow(entity=row[0] or None, start_ms=int(row[1]), data=self._object(row[2]))
            for row in rows
        ]

    def step_summaries(self, rollout_id: str) -> builtins.list[StepSummary]:
        with self._tx(write=False) as tx:
            rows = tx.rows(_SUMMARIES, {"rollout_id": rollout_id})
            if not rows and not tx.rows(_ROLLOUT_VERSION, {"id": rollout_id}):
                raise RolloutNotFound(rollout_id)
        return [StepSummary(key=str(r[0]), at=float(r[1]), data=self._object(r[2])) for r in rows]


    def _window_params(
        self, rollout_id: str, changes: WindowChanges
    ) -> tuple[builtins.list[dict[str, object]], builtins.list[dict[str, object]]]:
        # Serialized before the transaction opens, so a bad value raises before any write.
        windows: builtins.list[dict[str, object]] = [
            {
                "rollout_id": rollout_id,
                "entity": _entity_key(window.entity),
                "start_ms": int(window.start_ms),
                "data": self._json(window.data, f"window {window.entity!r}@{window.start_ms}"),
            }
            for window in changes.upsert
        ]
        summaries: builtins.list[dict[str, object]] = []
        for step in changes.summaries:
            _check_time(step.at, "step summary time")
            summaries.append(
                {
                    "rollout_id": rollout_id,
                    "key": step.key,
                    "at": step.at,
                    "data": self._json(step.data, f"step summary {step.key!r}"),
                }
            )
        return windows, summaries

    def _endpoint_of(self, rollout_id: str) -> str:
        try:
            return self.get(rollout_id).endpoint
        except StoreError:
            return "?"

    # --- events ------------------------------------------------------------------------------

    def events(self, rollout_id: str, after_seq: int = 0) -> builtins.list[EventRecord]:
        with self._tx(write=False) as tx:
            rows = tx.rows(_EVENTS, {"rollout_id": rollout_id, "after_seq": after_seq})
            if not rows and not tx.rows(_ROLLOUT_VERSION, {"id": rollout_id}):
                raise RolloutNotFound(rollout_id)
        return [self._event(row) for row in rows]

    # --- commands ----------------------------------------------------------------------------

    def add_command(self, rollout_id: str, kind: str, payload: JsonObject, at: float) -> Command:
        if kind not in COMMAND_KINDS:
            raise ValueError(f"unknown command {kind!r}; expected one of {sorted(COMMAND_KINDS)}")
        _check_time(at, "at")
        params = {
            "rollout_id": rollout_id,
            "kind": kind,
            "payload": self._json(payload, "command payload"),
            "created_at": at,
        }
        with self._tx(write=True) as tx:
            rows = tx.rows(_ADD_COMMAND, params)
        if not rows:
            raise RolloutNotFound(rollout_id)
        return self._command(rows[0])

    def pending_commands(self, rollout_id: str) -> builtins.list[Command]:
        with self._tx(write=False) as tx:
            rows = tx.rows(_PENDING_COMMANDS, {"rollout_id": rollout_id})
            if not rows and not tx.rows(_ROLLOUT_VERSION, {"id": rollout_id}):
                raise RolloutNotFound(rollout_id)
        return [self._command(row) for row in rows]

    def version_and_commands(self, rollout_id: str) -> tuple[int, builtins.list[Command]]:
        # Two statements where the calls apart take three (pending_commands reads the
        # version too when there is no command, to tell "none" from "no such rollout").
        with self._tx(write=False) as tx:
            version = tx.rows(_ROLLOUT_VERSION, {"id": rollout_id})
            if not version:
                raise RolloutNotFound(rollout_id)
            rows = tx.rows(_PENDING_COMMANDS, {"rollout_id": rollout_id})
        return int(version[0][0]), [self._command(row) for row in rows]

    # --- alert outbox ------------------------------------------------------------------------

    def claim_alerts(
        self, now: float, limit: int, lease_seconds: float
    ) -> builtins.list[OutboxAlert]:
        _check_time(now, "now")
        _check_limit(limit)
        if not (math.isfinite(lease_seconds) and lease_seconds > 0):
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds!r}")
        with self._tx(write=True) as tx:
            rows = tx.rows(
                self.CLAIM_SQL, {"now": now, "limit": limit, "lease_until": now + lease_seconds}
            )
        # RETURNING order is unspecified; ids grow with insertion, so this is oldest first.
        return sorted((self._alert(row) for row in rows), key=lambda alert: alert.id)

    def add_controller_alerts(self, alerts: Sequence[NewAlert], at: float) -> int:
        _check_time(at, "at")
        # Serialized (and refused) before the transaction opens, as in commit.
        params = self._alert_params(None, alerts, at)
        with self._tx(write=True) as tx:
            return sum(tx.run(_INSERT_CONTROLLER_ALERT, row) for row in params)

    def mark_delivered(self, alert_id: int, at: float) -> None:
        _check_time(at, "at")
        with self._tx(write=True) as tx:
            if tx.run(_MARK_DELIVERED, {"id": alert_id, "at": at}) == 0 and not tx.rows(
                _ALERT_EXISTS, {"id": alert_id}
            ):
                raise AlertNotFound(alert_id)

    def mark_failed(self, alert_id: int, error: str, next_attempt_at: float) -> None:
        _check_time(next_attempt_at, "next_attempt_at")
        params = {"id": alert_id, "error": error, "next_attempt_at": next_attempt_at}
        with self._tx(write=True) as tx:
            if tx.run(_MARK_FAILED, params) == 0 and not tx.rows(_ALERT_EXISTS, {"id": alert_id}):
                raise AlertNotFound(alert_id)

    def pending_alert_count(self) -> int:
        with self._tx(write=False) as tx:
            return int(tx.rows(_PENDING_ALERTS)[0][0])

    # --- alias watches and moves -------------------------------------------------------------

    def record_alias_seen(self, trigger: AliasTrigger) -> bool:
        _check_time(trigger.at, "at")
        with self._tx(write=True) as tx:
            return tx.run(_RECORD_ALIAS_SEEN, _trigger_params(trigger, trigger.rollout_id)) == 1

    def alias_trigger(self, watch: str, version: str) -> AliasTrigger | None:
        with self._tx(write=False) as tx:
            rows = tx.rows(_GET_ALIAS_TRIGGER, {"watch": watch, "version": version})
        if not rows:
            return None
        row = rows[0]
        return AliasTrigger(str(row[0]), str(row[1]), _text(row[2]), float(row[3]))

    def claim_alias_moves(
        self, now: float, limit: int, lease_seconds: float
    ) -> builtins.list[AliasMove]:
        _check_time(now, "now")
        _check_limit(limit)
        _check_positive(lease_seconds, "lease_seconds")
        with self._tx(write=True) as tx:
            rows = tx.rows(
                _CLAIM_ALIAS_MOVES,
                {"now": now, "limit": limit, "lease_until": now + lease_seconds},
            )
        return sorted((_alias_move(row) for row in rows), key=lambda m: m.rollout_id)

    def alias_move(self, rollout_id: str) -> AliasMove | None:
        with self._tx(write=False) as tx:
            rows = tx.rows(_GET_ALIAS_MOVE, {"id": rollout_id})
        return _alias_move(rows[0]) if rows else None

    def mark_alias_moved(self, rollout_id: str, at: float) -> None:
        _check_time(at, "at")
        with self._tx(write=True) as tx:
            tx.run(_ALIAS_MOVED, {"id": rollout_id, "at": at})

    def mark_alias_move_failed(self, rollout_id: str, error: str, next_attempt_at: float) -> None:
        _check_time(next_attempt_at, "next_attempt_at")
        params = {"id": rollout_id, "error": error, "next_attempt_at": next_attempt_at}
        with self._tx(write=True) as tx:
            tx.run(_ALIAS_MOVE_FAILED, params)

    # --- leases ------------------------------------------------------------------------------

    def try_lease(self, name: str, holder: str, ttl_seconds: float, now: float) -> bool:
        _check_time(now, "now")
        if not (math.isfinite(ttl_seconds) and ttl_seconds > 0):
            raise ValueError(f"ttl_seconds must be positive, got {ttl_seconds!r}")
        params = {"name": name, "holder": holder, "expires_at": now + ttl_seconds, "now": now}
        with self._tx(write=True) as tx:
            return bool(tx.rows(_TRY_LEASE, params))

    def release_lease(self, name: str, holder: str) -> bool:
        with self._tx(write=True) as tx:
            return tx.run(_RELEASE_LEASE, {"name": name, "holder": holder}) > 0

    def live_leases(self, prefix: str, now: float) -> builtins.list[LeaseInfo]:
        _check_time(now, "now")
        if not _LEASE_PREFIX.fullmatch(prefix):
            raise ValueError(f"a lease prefix is letters, digits and ':.-', not {prefix!r}")
        with self._tx(write=False) as tx:
            rows = tx.rows(_LIVE_LEASES, {"pattern": prefix + "%", "now": now})
        return [LeaseInfo(str(r[0]), str(r[1]), float(r[2])) for r in rows]

    # --- rollout ownership -------------------------------------------------------------------

    @staticmethod
    def _ownership(row: Row) -> Ownership:
        return Ownership(
            rollout_id=str(row[0]),
            holder=str(row[1]),
            token=int(row[2]),
            acquired_at=float(row[3]),
            expires_at=float(row[4]),
            act_after=float(row[5]),
        )

    def claim_rollout(
        self, rollout_id: str, holder: str, ttl_seconds: float, now: float, wire_seconds: float
    ) -> Ownership | None:
        _check_time(now, "now")
        _check_positive(ttl_seconds, "ttl_seconds")
        if not (math.isfinite(wire_seconds) and wire_seconds >= 0):
            raise ValueError(f"wire_seconds must be >= 0, got {wire_seconds!r}")
        params = {
            "rollout_id": rollout_id,
            "holder": holder,
            "now": now,
            "expires_at": now + ttl_seconds,
            "wire_seconds": wire_seconds,
        }
        with self._tx(write=True) as tx:
            rows = tx.rows(_CLAIM_ROLLOUT, params)
        return self._ownership(rows[0]) if rows else None

    def renew_rollout(
        self, rollout_id: str, holder: str, token: int, ttl_seconds: float, now: float
    ) -> Ownership:
        _check_time(now, "now")
        _check_positive(ttl_seconds, "ttl_seconds")
        params = {
            "rollout_id": rollout_id,
            "holder": holder,
            "token": token,
            "now": now,
            "expires_at": now + ttl_seconds,
        }
        with self._tx(write=True) as tx:
            rows = tx.rows(_RENEW_ROLLOUT, params)
        if not rows:
            raise LeaseLost(rollout_id, holder, token)
        return self._ownership(rows[0])

    def renew_held(self, holder: str, ttl_seconds: float, now: float) -> builtins.list[Ownership]:
        _check_time(now, "now")
        _check_positive(ttl_seconds, "ttl_seconds")
        params = {"holder": holder, "now": now, "expires_at": now + ttl_seconds}
        with self._tx(write=True) as tx:
            rows = tx.rows(_RENEW_HELD, params)
        return sorted((self._ownership(row) for row in rows), key=lambda o: o.rollout_id)

    def release_rollout(
        self, rollout_id: str, holder: str, token: int, now: float, *, quiet: bool
    ) -> bool:
        _check_time(now, "now")
        params = {
            "rollout_id": rollout_id,
            "holder": holder,
            "token": token,
            "now": now,
            "quiet_at": now if quiet else None,
        }
        with self._tx(write=True) as tx:
            return tx.run(_RELEASE_ROLLOUT, params) > 0

    def owner_of(self, rollout_id: str) -> Ownership | None:
        with self._tx(write=False) as tx:
            rows = tx.rows(_OWNER_OF, {"rollout_id": rollout_id})
        return self._ownership(rows[0]) if rows else None

    def owned_by(self, holder: str, now: float) -> builtins.list[Ownership]:
        _check_time(now, "now")
        with self._tx(write=False) as tx:
            rows = tx.rows(_OWNED_BY, {"holder": holder, "now": now})
        return [self._ownership(row) for row in rows]

    # --- lifecycle ---------------------------------------------------------------------------

    def reclaim(self) -> None:
        """See ``Store.reclaim``; a backend whose database needs it overrides this."""

    def ping(self) -> None:
        with self._tx(write=False) as tx:
            tx.rows(_PING)

    def probe_write(self, now: float) -> None:
        _check_time(now, "now")
        with self._tx(write=True) as tx:
            tx.run(_PROBE_WRITE, {"name": WRITE_PROBE_LEASE, "now": now})

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._disconnect()
