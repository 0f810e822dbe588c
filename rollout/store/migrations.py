"""The schema, as an ordered list of migrations shared by both backends.

In the path of a rollout this runs before anything else touches the store: the daemon calls
``Store.migrate()`` at every start, which applies the migrations below that the database has not
seen yet, in order, each once, recording each in ``schema_migrations``. Both backends run the
same list; the few dialect differences are explicit ``Dialect`` tokens (the JSON column type,
the float type, the auto-numbered key) substituted into the statement text. The statements are
constants: no value ever reaches this text.

A migration is never edited once released; a change to the schema is a new migration at the end.
The phase lists in the constraints below spell out ``rollout.store.model.TERMINAL`` as it was
when they were written; the contract suite checks that every terminal phase frees an endpoint
and every other phase holds it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Dialect:
    """What differs between the backends' DDL, spelled as SQL type text."""

    name: str
    json: str
    """Column type for JSON objects: TEXT in SQLite, JSONB in PostgreSQL."""
    time: str
    """Column type for epoch seconds: a 64-bit float in both."""
    identity_pk: str
    """An auto-numbered integer primary key."""

    def tokens(self) -> dict[str, str]:
        return {"json": self.json, "time": self.time, "identity_pk": self.identity_pk}


SQLITE = Dialect(
    name="sqlite",
    json="TEXT",
    time="REAL",
    # Exactly "INTEGER PRIMARY KEY" makes the column the rowid: numbered by SQLite itself.
    identity_pk="INTEGER PRIMARY KEY",
)
POSTGRES = Dialect(
    name="postgresql",
    json="JSONB",
    time="DOUBLE PRECISION",
    identity_pk="BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY",
)


@dataclass(frozen=True)
class Migration:
    """One step of the schema: statements run in one transaction with its bookkeeping row."""

    version: int
    name: str
    statements: tuple[str, ...]
    # Statements for one dialect in place of ``statements``, by ``Dialect.name``: for changes
    # the two databases spell differently (SQLite cannot drop a NOT NULL in place).
    by_dialect: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def render(self, dialect: Dialect) -> list[str]:
        """The statements with the dialect's types filled in."""
        tokens = dialect.tokens()
        statements = self.by_dialect.get(dialect.name, self.statements)
        return [statement.format(**tokens) for statement in statements]


# Created before any migration runs, so it cannot itself be a migration.
SCHEMA_MIGRATIONS_DDL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at {time} NOT NULL
)
"""

MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        version=1,
        name="rollouts, events, alert outbox, commands",
        statements=(
            """
            CREATE TABLE rollouts (
                id TEXT PRIMARY KEY,
                endpoint TEXT NOT NULL,
                phase TEXT NOT NULL CHECK (phase IN (
                    'pending', 'preparing', 'progressing', 'paused', 'promoting', 'succeeded',
                    'rolling_back', 'rolled_back', 'aborted', 'failed'
                )),
                version BIGINT NOT NULL CHECK (version >= 1),
                plan {json} NOT NULL,
                state {json} NOT NULL,
                created_at {time} NOT NULL,
                updated_at {time} NOT NULL,
                due_at {time}
            )
            """,
            # One active rollout per endpoint, enforced by the database itself so that two
            # replicas (or two threads) creating at once cannot both pass a check-then-insert.
            """
            CREATE UNIQUE INDEX rollouts_one_active_per_endpoint ON rollouts (endpoint)
            WHERE phase NOT IN ('succeeded', 'rolled_back', 'aborted', 'failed')
            """,
            # The scheduler's query (due) reads only active rollouts with a due time.
            """
            CREATE INDEX rollouts_due ON rollouts (due_at)
            WHERE due_at IS NOT NULL
              AND phase NOT IN ('succeeded', 'rolled_back', 'aborted', 'failed')
            """,
            "CREATE INDEX rollouts_by_created ON rollouts (created_at)",
            "CREATE INDEX rollouts_by_endpoint ON rollouts (endpoint, created_at)",
            # The key is the gapless per-rollout sequence: a second writer of the same seq fails.
            """
            CREATE TABLE events (
                rollout_id TEXT NOT NULL REFERENCES rollouts (id),
                seq BIGINT NOT NULL CHECK (seq >= 1),
                at {time} NOT NULL,
                kind TEXT NOT NULL,
                from_phase TEXT,
                to_phase TEXT,
                reason TEXT NOT NULL,
                data {json} NOT NULL,
                PRIMARY KEY (rollout_id, seq)
            )
            """,
            # dedup_key UNIQUE is what makes a replayed commit's alerts a no-op.
            """
            CREATE TABLE outbox (
                id {identity_pk},
                rollout_id TEXT NOT NULL,
                event_seq BIGINT NOT NULL,
                channel TEXT NOT NULL,
                dedup_key TEXT NOT NULL UNIQUE,
                payload {json} NOT NULL,
                created_at {time} NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt_at {time} NOT NULL,
                delivered_at {time},
                last_error TEXT,
                FOREIGN KEY (rollout_id, event_seq) REFERENCES events (rollout_id, seq)
            )
            """,
            """
            CREATE INDEX outbox_pending ON outbox (next_attempt_at, id)
            WHERE delivered_at IS NULL
            """,
            """
            CREATE TABLE commands (
                id {identity_pk},
                rollout_id TEXT NOT NULL REFERENCES rollouts (id),
                kind TEXT NOT NULL CHECK (kind IN (
                    'pause', 'resume', 'promote', 'promote_full', 'abort'
                )),
                payload {json} NOT NULL,
                created_at {time} NOT NULL,
                consumed_at {time}
            )
            """,
            """
            CREATE INDEX commands_pending ON commands (rollout_id, id)
            WHERE consumed_at IS NULL
            """,
        ),
    ),
    Migration(
        version=2,
        name="leases for replicas",
        statements=(
            """
            CREATE TABLE leases (
                name TEXT PRIMARY KEY,
                holder TEXT NOT NULL,
                expires_at {time} NOT NULL
            )
            """,
        ),
    ),
    Migration(
        version=3,
        name="rollout ownership with fencing tokens",
        statements=(
            # One row per rollout ever owned. token only grows (a new holder gets token + 1);
            # quiet_at is set by a holder releasing with nothing left on the wire, so its
            # successor need not wait for the lease's expiry plus a PUT's life.
            """
            CREATE TABLE ownership (
                rollout_id TEXT PRIMARY KEY,
                holder TEXT NOT NULL,
                token BIGINT NOT NULL CHECK (token >= 1),
                acquired_at {time} NOT NULL,
                renewed_at {time} NOT NULL,
                expires_at {time} NOT NULL,
                act_after {time} NOT NULL,
                quiet_at {time}
            )
            """,
            "CREATE INDEX ownership_by_holder ON ownership (holder, expires_at)",
        ),
    ),
    Migration(
        version=4,
        name="metric windows and step summaries in their own tables, summary columns",
        statements=(
            # The windows the current step may still judge, one row per entity and window
            # start: a look appends its new windows instead of rewriting the rollout's state.
            # entity '' stands for endpoint totals (a key column cannot be NULL everywhere).
            """
            CREATE TABLE metric_windows (
                rollout_id TEXT NOT NULL REFERENCES rollouts (id),
                entity TEXT NOT NULL,
                start_ms BIGINT NOT NULL,
                data {json} NOT NULL,
                PRIMARY KEY (rollout_id, entity, start_ms)
            )
            """,
            # A finished step's sums, kept for the history once its windows are dropped.
            """
            CREATE TABLE step_summaries (
                rollout_id TEXT NOT NULL REFERENCES rollouts (id),
                key TEXT NOT NULL,
                at {time} NOT NULL,
                data {json} NOT NULL,
                PRIMARY KEY (rollout_id, key)
            )
            """,
            # What lists show, readable without decoding the state JSON.
            "ALTER TABLE rollouts ADD COLUMN candidate TEXT",
            "ALTER TABLE rollouts ADD COLUMN baseline TEXT",
            "ALTER TABLE rollouts ADD COLUMN step INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE rollouts ADD COLUMN candidate_weight INTEGER NOT NULL DEFAULT 0",
            "ALTER TABLE rollouts ADD COLUMN verdict TEXT",
        ),
    ),
    # Alerts of the controller itself (a workspace that cannot be reached) belong to no
    # rollout: their outbox rows have neither rollout_id nor event_seq (a foreign key with a
    # NULL column is not checked), and a row has both or neither.
    Migration(
        version=5,
        name="outbox rows without a rollout, for the controller's own alerts",
        statements=(),
        by_dialect={
            "postgresql": (
                """
                ALTER TABLE outbox
                    ALTER COLUMN rollout_id DROP NOT NULL,
                    ALTER COLUMN event_seq DROP NOT NULL,
                    ADD CONSTRAINT outbox_owner_whole
                        CHECK ((rollout_id IS NULL) = (event_seq IS NULL))
                """,
            ),
            # SQLite changes a column's constraints only by copying the table. Nothing
            # references the outbox, ids are copied as they are, and new ids continue after
            # the largest (INTEGER PRIMARY KEY).
            "sqlite": (
                """
                CREATE TABLE outbox_v5 (
                    id {identity_pk},
                    rollout_id TEXT,
                    event_seq BIGINT,
                    channel TEXT NOT NULL,
                    dedup_key TEXT NOT NULL UNIQUE,
                    payload {json} NOT NULL,
                    created_at {time} NOT NULL,
                    attempts INTEGER NOT NULL DEFAULT 0,
                    next_attempt_at {time} NOT NULL,
                    delivered_at {time},
                    last_error TEXT,
                    FOREIGN KEY (rollout_id, event_seq) REFERENCES events (rollout_id, seq),
                    CHECK ((rollout_id IS NULL) = (event_seq IS NULL))
                )
                """,
                """
                INSERT INTO outbox_v5 (id, rollout_id, event_seq, channel, dedup_key, payload,
                                       created_at, attempts, next_attempt_at, delivered_at,
                                       last_error)
                SELECT id, rollout_id, event_seq, channel, dedup_key, payload, created_at,
                       attempts, next_attempt_at, delivered_at, last_error
                FROM outbox
                """,
                "DROP TABLE outbox",
                "ALTER TABLE outbox_v5 RENAME TO outbox",
                """
                CREATE INDEX outbox_pending ON outbox (next_attempt_at, id)
                WHERE delivered_at IS NULL
                """,
            ),
        },
    ),
    # Rollouts from Unity Catalog aliases. An alias watch records each version the alias
    # named, once (the key): the record and the rollout it starts are one transaction, so
    # two watchers (or a restart) start exactly one rollout per alias move. An alias move
    # after a promotion is kept with its rollout from its creation and done once the rollout
    # is succeeded (at least once: moving an alias is idempotent).
    Migration(
        version=6,
        name="alias watches and alias moves",
        statements=(
            """
            CREATE TABLE alias_triggers (
                watch TEXT NOT NULL,
                version TEXT NOT NULL,
                rollout_id TEXT REFERENCES rollouts (id),
                seen_at {time} NOT NULL,
                PRIMARY KEY (watch, version)
            )
            """,
            """
            CREATE TABLE alias_moves (
                rollout_id TEXT PRIMARY KEY REFERENCES rollouts (id),
                model TEXT NOT NULL,
                alias TEXT NOT NULL,
                version TEXT NOT NULL,
                attempts INTEGER NOT NULL DEFAULT 0,
                next_attempt_at {time} NOT NULL,
                done_at {time},
                last_error TEXT
            )
            """,
            """
            CREATE INDEX alias_moves_pending ON alias_moves (next_attempt_at)
            WHERE done_at IS NULL
            """,
        ),
    ),
)
