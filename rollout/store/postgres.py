"""The shared store: PostgreSQL, for several controller replicas over one database.

In the path of a rollout this is where the state lands when more than one daemon runs
(``open_store("postgresql://user@host:5432/db")``): replicas take rollouts and outbox alerts
from the same tables, and the database's row locks, unique indexes and ``SKIP LOCKED`` keep
them from stepping on each other. The shared logic is in ``rollout.store._sql``; this module
supplies the connection, the transactions, JSONB adaptation and the translation of psycopg
errors.

Choices, and why:

- Autocommit connection with explicit ``conn.transaction()`` blocks for writes: reads are
  single statements (no transaction left open between calls holding back vacuum), and writes
  are exactly the transactions the store means.
- READ COMMITTED is enough: every write that depends on a read is either one statement or
  starts with the version-guarded ``UPDATE`` that locks the rollout row; conflicts between
  replicas are caught by the unique indexes, not by serializable retries.
- The outbox claim selects with ``FOR UPDATE SKIP LOCKED``: two dispatchers take disjoint
  alerts without waiting on each other.
- ``migrate()`` takes a transaction-scoped advisory lock, so replicas starting together apply
  each migration once.
- A connection pool (``psycopg_pool``, up to ``pool_size`` connections, opened lazily on the
  first call): reads and writes from different threads run side by side, so an API read or a
  ``/metrics`` scrape never waits behind the runner's commits; PostgreSQL's row locks, not a
  Python lock, order concurrent writers. A connection found broken is discarded by the pool
  and the next call gets a fresh one (the failed call raises ``StoreUnavailable``); no free
  connection within the connect timeout is ``StoreUnavailable`` too.
"""

from __future__ import annotations

import builtins
import functools
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from decimal import Decimal
from typing import Any, Final

import psycopg
import psycopg_pool
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import Jsonb

from rollout.store._sql import Params, Row, SqlStore, Tx, UniqueViolationError, summary_sql
from rollout.store.errors import SchemaError, StoreError, StoreUnavailable
from rollout.store.migrations import POSTGRES

DEFAULT_CONNECT_TIMEOUT: Final = 5
"""Seconds to wait for a connection before ``StoreUnavailable`` (unless the URL says)."""

# A statement (or a lock wait) longer than 30 s fails with StoreUnavailable instead of holding
# the store's lock, and with it every caller, indefinitely. Not set when the URL's own
# "options" already choose a statement_timeout.
_SET_STATEMENT_TIMEOUT: Final = "SET statement_timeout = 30000"

# Any constant works; it only has to be the same for every replica of this program.
_MIGRATION_LOCK_SQL: Final = "SELECT pg_advisory_xact_lock(7236845502371266304)"

DEFAULT_POOL_SIZE: Final = 8
"""Connections a store keeps at most (the runner's threads, the API's and the dispatcher's)."""

_LIST_WHERE: Final = """
FROM rollouts
WHERE (CAST(:endpoint AS TEXT) IS NULL OR endpoint = :endpoint)
  AND (CAST(:phases AS TEXT[]) IS NULL OR phase = ANY (CAST(:phases AS TEXT[])))
ORDER BY created_at DESC, id DESC
LIMIT :limit
"""
_LIST_SQL: Final = (
    "SELECT id, endpoint, phase, version, plan, state, created_at, updated_at, due_at"
    + _LIST_WHERE
)

# SKIP LOCKED: rows another dispatcher is claiming right now are left to it. Rows it claimed
# and committed since our snapshot are re-checked against the WHERE on their new version
# (next_attempt_at moved forward), so they are not claimed twice either.
_CLAIM_SQL: Final = """
WITH picked AS (
    SELECT id FROM outbox
    WHERE delivered_at IS NULL AND next_attempt_at <= :now
    ORDER BY next_attempt_at, id
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
)
UPDATE outbox
SET attempts = outbox.attempts + 1, next_attempt_at = :lease_until
FROM picked
WHERE outbox.id = picked.id
RETURNING outbox.id, outbox.rollout_id, outbox.event_seq, outbox.channel, outbox.dedup_key,
          outbox.payload, outbox.created_at, outbox.attempts, outbox.next_attempt_at,
          outbox.delivered_at, outbox.last_error
"""

# The tables every look rewrites or turns over (the rollout's row and its TOASTed state, the
# windows, the lease rows), in the connection's search_path. Dead versions in the others
# (events, step summaries, the outbox) are rare and left to autovacuum.
_RECLAIM_SQL: Final = "VACUUM (SKIP_LOCKED) rollouts, metric_windows, ownership, leases"

# ":name" not preceded by ":" or a word character (so "::jsonb" casts are left alone).
_NAMED_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")


@functools.lru_cache(maxsize=256)
def to_pyformat(sql: str) -> str:
    """The store's ``:name`` placeholders in psycopg's ``%(name)s`` style."""
    return _NAMED_PARAM.sub(r"%(\1)s", sql.replace("%", "%%"))


# A JSON string (skipped as a whole) or a number in exponent form (json.dumps writes floats
# of magnitude >= 1e16 or < 1e-4 that way).
_JSON_STRING_OR_EXPONENT = re.compile(r'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?[eE][-+]?\d+')
# What every exponent-form number holds: a digit, then e or E, then a sign or a digit. Most
# texts have none, and finding that out this way skips visiting every string of the text.
_EXPONENT_MARK = re.compile(r"[eE][-+\d]")


def _plain_decimal(match: re.Match[str]) -> str:
    token = match.group(0)
    if token.startswith('"'):
        return token
    plain = format(Decimal(token), "f")
    return plain if "." in plain else plain + ".0"


def plain_decimals(text: str) -> str:
    """Rewrite exponent-form numbers in JSON text as plain decimals with a fraction.

    jsonb keeps numbers as exact decimals and prints ``1e+16`` back as ``10000000000000000``,
    which ``json.loads`` would read as an int (and ``1e300`` as an int that is not equal to the
    float). Written as ``10000000000000000.0`` the value comes back a float, the same one.
    """
    if not any(
        (at := mark.start()) > 0 and text[at - 1].isdigit()
        for mark in _EXPONENT_MARK.finditer(text)
    ):
        return text  # no number in exponent form, in a string or out of one
    return _JSON_STRING_OR_EXPONENT.sub(_plain_decimal, text)


def _identity(text: Any) -> Any:
    return text


def describe(url: str) -> str:
    """The URL without its password, for messages and logs; ``ValueError`` if unparsable."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.ProgrammingError as exc:
        raise ValueError(f"invalid PostgreSQL URL: {exc}") from exc
    user = params.get("user") or ""
    host = params.get("host") or "localhost"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or user
    return f"postgresql://{user}@{host}:{port}/{dbname}"


def translate(exc: psycopg.Error, description: str) -> StoreError:
    """Map a psycopg error onto the store's tree (the caller raises it ``from exc``)."""
    message = str(exc).strip()
    if isinstance(exc, pg_errors.UniqueViolation):
        return UniqueViolationError(exc.diag.constraint_name, message)
    if isinstance(exc, pg_errors.UndefinedTable):
        return SchemaError(f"{description} has no rollout schema ({message}): call migrate()")
    # OperationalError covers refused connections, lost servers, admin shutdowns, statement
    # timeouts, serialization failures and deadlocks; InterfaceError a closed connection.
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return StoreUnavailable(f"{description}: {message}")
    if isinstance(exc, pg_errors.ReadOnlySqlTransaction):
        # A standby (before or after a failover) or default_transaction_read_only: writes may
        # be taken again later, as after a lost connection.
        return StoreUnavailable(f"{description}: {message}")
    return StoreError(f"{description}: {message}")


class _PostgresTx:
    def __init__(self, cursor: psycopg.Cursor[Row]) -> None:
        self._cursor = cursor

    def rows(self, sql: str, params: Params | None = None) -> builtins.list[Row]:
        self._cursor.execute(to_pyformat(sql), params)
        return self._cursor.fetchall() if self._cursor.description is not None else []

    def run(self, sql: str, params: Params | None = None) -> int:
        self._cursor.execute(to_pyformat(sql), params)
        return self._cursor.rowcount


class PostgresStore(SqlStore):
    """A store in a PostgreSQL database (the tables live in the connection's search_path)."""

    dialect = POSTGRES
    LIST_SQL = _LIST_SQL
    CLAIM_SQL = _CLAIM_SQL
    concurrent_reads = True
    SUMMARY_SQL = summary_sql("postgresql")

    def __init__(self, url: str, *, pool_size: int = DEFAULT_POOL_SIZE) -> None:
        super().__init__(describe(url))
        self._url = url
        given = conninfo_to_dict(url)
        self._connect_options: dict[str, Any] = {}
        if "connect_timeout" not in given:
            self._connect_options["connect_timeout"] = DEFAULT_CONNECT_TIMEOUT
        if "application_name" not in given:
            self._connect_options["application_name"] = "rollout"
        self._set_statement_timeout = "statement_timeout" not in str(given.get("options", ""))
        self._wait = float(given.get("connect_timeout") or DEFAULT_CONNECT_TIMEOUT)
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, got {pool_size}")
        self._pool_size = pool_size
        self._pool: psycopg_pool.ConnectionPool[psycopg.Connection[Row]] | None = None
        self._pool_lock = threading.Lock()

    def _configure(self, connection: psycopg.Connection[Row]) -> None:
        if self._set_statement_timeout:
            connection.execute(_SET_STATEMENT_TIMEOUT)

    def _connections(self) -> psycopg_pool.ConnectionPool[psycopg.Connection[Row]]:
        with self._pool_lock:
            if self._closed:
                raise StoreUnavailable(f"the store ({self._description}) is closed")
            if self._pool is None:
                pool: psycopg_pool.ConnectionPool[psycopg.Connection[Row]] = (
                    psycopg_pool.ConnectionPool(
                        self._url,
                        min_size=1,
                        max_size=self._pool_size,
                        kwargs={"autocommit": True, **self._connect_options},
                        configure=self._configure,
                        open=False,
                        name="rollout-store",
                    )
                )
                # Not waiting here: the first connection is awaited by the first call, with
                # the connect timeout, so a database that is down makes calls fail, not start.
                pool.open(wait=False)
                self._pool = pool
            return self._pool

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[Tx]:
        try:
            with self._connections().connection(timeout=self._wait) as connection:
                if write:
                    with connection.transaction(), connection.cursor() as cursor:
                        yield _PostgresTx(cursor)
                else:
                    with connection.cursor() as cursor:
                        yield _PostgresTx(cursor)
        except psycopg_pool.PoolTimeout as exc:
            raise StoreUnavailable(f"{self._description}: no connection: {exc}") from exc
        except psycopg.Error as exc:
            error = translate(exc, self._description)
            if isinstance(error, StoreUnavailable):
                # The broken connection goes back to the pool, which discards it; its idle
                # siblings were likely cut by the same event (a restart, a failover): check
                # them now, so the next call does not fail on another dead socket.
                self._check_idle()
            raise error from exc

    def _check_idle(self) -> None:
        pool = self._pool
        if pool is not None:
            with suppress(psycopg.Error, psycopg_pool.PoolClosed):
                pool.check()

    def _disconnect(self) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close(timeout=self._wait)

    def reclaim(self) -> None:
        # VACUUM cannot run inside a transaction block: the pool's connections are in
        # autocommit, and this statement is the whole of its use of one.
        try:
            with self._connections().connection(timeout=self._wait) as connection:
                connection.execute(_RECLAIM_SQL)
        except psycopg_pool.PoolTimeout as exc:
            raise StoreUnavailable(f"{self._description}: no connection: {exc}") from exc
        except psycopg.Error as exc:
            raise translate(exc, self._description) from exc

    def _lock_migrations(self, tx: Tx) -> None:
        tx.rows(_MIGRATION_LOCK_SQL)

    def _json_param(self, text: str) -> object:
        # Already serialized (and checked) by the shared code; only the number spelling changes.
        return Jsonb(plain_decimals(text), dumps=_identity)

    def _json_value(self, raw: object) -> Any:
        # psycopg parses jsonb columns itself.
        return raw

    def _array_param(self, values: builtins.list[str]) -> object:
        return values
