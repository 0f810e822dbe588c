"""The embedded store: one SQLite file, the default for a single controller.

In the path of a rollout this is where the state lands when the daemon runs alone (and in the
sandbox demo and most tests): ``open_store("sqlite:///rollout.db")``. The shared logic is in
``rollout.store._sql``; this module supplies the connection, the transactions and the
translation of ``sqlite3`` errors.

Choices, and why:

- WAL journal: readers (the API, the status page) never block the runner's commits, and a
  process killed mid-commit leaves the previous state intact (the WAL is replayed or
  discarded on the next open). ``synchronous=FULL``: a commit that returned survives a power
  cut too; commits are a few per tick, so the fsync is affordable.
- Writes start with ``BEGIN IMMEDIATE``: the write lock is taken up front, so two writers
  (threads with their own store, or processes) queue on the busy timeout instead of both
  reading and then failing to upgrade to a write lock, which SQLite reports as "locked" at
  once without waiting. It is also what makes ``claim_alerts`` exclusive.
- Reads run outside explicit transactions (autocommit): each statement sees a consistent
  snapshot and no read ever holds a lock between calls.
- One writer connection, shared by threads under the store's lock (``check_same_thread=False``
  is safe because of that lock), and one read connection per reading thread, outside that
  lock: WAL lets readers run beside the writer, so the API, the status page and ``/metrics``
  never queue behind the runner's commits. A multi-statement read (``events`` checking the
  rollout exists) runs in a read transaction, one snapshot. ``:memory:`` databases are
  private to a connection, so there reads share the writer connection and its lock.
"""

from __future__ import annotations

import builtins
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, Final

from rollout.store._sql import (
    ACTIVE_PER_ENDPOINT,
    ALIAS_TRIGGER_PKEY,
    ROLLOUT_PKEY,
    Params,
    Row,
    SqlStore,
    UniqueViolationError,
    summary_sql,
)
from rollout.store.errors import SchemaError, StoreError, StoreUnavailable
from rollout.store.migrations import SQLITE

DEFAULT_BUSY_TIMEOUT: Final = 10.0
"""Seconds a statement waits for another writer's lock before ``StoreUnavailable``."""

_SQLITE_BUSY: Final = 5
_SQLITE_LOCKED: Final = 6

# Primary result codes (the low byte of sqlite_errorcode) for which trying again later can
# help: contention, resources, I/O. Anything else (syntax, constraint, corruption) cannot.
_RETRYABLE_CODES: Final = frozenset(
    {
        _SQLITE_BUSY,
        _SQLITE_LOCKED,
        7,  # SQLITE_NOMEM
        8,  # SQLITE_READONLY (e.g. a read-only mount, or the WAL's shm not yet writable)
        10,  # SQLITE_IOERR
        13,  # SQLITE_FULL
        14,  # SQLITE_CANTOPEN
        15,  # SQLITE_PROTOCOL
    }
)

# SQLite names the columns of a violated unique index, not the index.
_UNIQUE_FAILED = re.compile(r"UNIQUE constraint failed: (?P<columns>[\w., ]+)")
_CONSTRAINT_BY_COLUMNS: Final = {
    "rollouts.endpoint": ACTIVE_PER_ENDPOINT,
    "rollouts.id": ROLLOUT_PKEY,
    "alias_triggers.watch, alias_triggers.version": ALIAS_TRIGGER_PKEY,
}

_LIST_WHERE: Final = """
FROM rollouts
WHERE (:endpoint IS NULL OR endpoint = :endpoint)
  AND (:phases IS NULL OR phase IN (SELECT value FROM json_each(:phases)))
ORDER BY created_at DESC, id DESC
LIMIT :limit
"""
_LIST_SQL: Final = (
    "SELECT id, endpoint, phase, version, plan, state, created_at, updated_at, due_at"
    + _LIST_WHERE
)

# Runs inside BEGIN IMMEDIATE, which already excludes every other writer, so selecting and
# extending the lease in one statement is enough for two dispatchers never to share an alert.
_CLAIM_SQL: Final = """
UPDATE outbox
SET attempts = attempts + 1, next_attempt_at = :lease_until
WHERE id IN (
    SELECT id FROM outbox
    WHERE delivered_at IS NULL AND next_attempt_at <= :now
    ORDER BY next_attempt_at, id
    LIMIT :limit
)
RETURNING id, rollout_id, event_seq, channel, dedup_key, payload, created_at, attempts,
          next_attempt_at, delivered_at, last_error
"""


def translate(exc: sqlite3.Error, description: str) -> StoreError:
    """Map a sqlite3 error onto the store's tree (the caller raises it ``from exc``)."""
    message = str(exc)
    if isinstance(exc, sqlite3.IntegrityError):
        match = _UNIQUE_FAILED.search(message)
        if match is not None:
            return UniqueViolationError(_CONSTRAINT_BY_COLUMNS.get(match["columns"]), message)
        return StoreError(f"integrity error in {description}: {message}")
    if "no such table" in message:
        return SchemaError(f"{description} has no rollout schema ({message}): call migrate()")
    if isinstance(exc, sqlite3.ProgrammingError) and "closed" in message:
        return StoreUnavailable(f"{description}: {message}")
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(exc, sqlite3.OperationalError) and (
        code is None or (code & 0xFF) in _RETRYABLE_CODES
    ):
        return StoreUnavailable(f"{description}: {message}")
    return StoreError(f"{description}: {message}")


class _SqliteTx:
    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    def rows(self, sql: str, params: Params | None = None) -> builtins.list[Row]:
        cursor = self._connection.execute(sql, params or {})
        try:
            return cursor.fetchall()
        finally:
            cursor.close()

    def run(self, sql: str, params: Params | None = None) -> int:
        cursor = self._connection.execute(sql, params or {})
        try:
            return cursor.rowcount
        finally:
            cursor.close()


class SqliteStore(SqlStore):
    """A store in one SQLite database file (or ``:memory:``, private to this store)."""

    dialect = SQLITE
    LIST_SQL = _LIST_SQL
    CLAIM_SQL = _CLAIM_SQL
    SUMMARY_SQL = summary_sql("sqlite")

    def __init__(
        self, path: str, *, busy_timeout: float = DEFAULT_BUSY_TIMEOUT, read_only: bool = False
    ) -> None:
        """``read_only``: open an existing database without write access (SQLite's
        ``mode=ro``), to inspect a live controller's store; every write then raises
        ``StoreUnavailable``, as on a read-only file or mount."""
        if path != ":memory:":
            # Resolved now, so a later change of working directory cannot move the database.
            path = str(Path(path).expanduser().absolute())
        super().__init__(f"sqlite:///{path}")
        self._path = path
        self._busy_timeout = busy_timeout
        self._read_only = read_only
        self._connection: sqlite3.Connection | None = None
        self.concurrent_reads = path != ":memory:"
        self._readers = threading.local()
        # Every read connection opened, so close() can close them from any thread.
        self._reader_connections: builtins.list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()

    @property
    def path(self) -> str:
        """The database file (absolute), or ``:memory:``."""
        return self._path

    def _connect(self) -> sqlite3.Connection:
        if self._connection is not None:
            return self._connection
        connection = self._open()
        self._connection = connection
        return connection

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection (opened on first use)."""
        connection: sqlite3.Connection | None = getattr(self._readers, "connection", None)
        if connection is not None:
            return connection
        if self._connection is None:
            # The writer switches the file to WAL (and creates it) before anyone reads.
            with self._lock:
                self._connect()
        connection = sqlite3.connect(
            self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False
        )
        try:
            connection.execute("PRAGMA query_only = ON").close()
        except BaseException:
            connection.close()
            raise
        with self._readers_lock:
            self._reader_connections.append(connection)
        self._readers.connection = connection
        return connection

    def _open(self) -> sqlite3.Connection:
        target, uri = self._path, False
        if self._read_only and self._path != ":memory:":
            target, uri = f"{Path(self._path).as_uri()}?mode=ro", True
        connection = sqlite3.connect(
            target,
            uri=uri,
            timeout=self._busy_timeout,
            # None: no implicit BEGIN; transactions are exactly the ones opened below.
            isolation_level=None,
            check_same_thread=False,
        )
        try:
            self._enable_wal(connection)
            connection.execute("PRAGMA synchronous = FULL").close()
            connection.execute("PRAGMA foreign_keys = ON").close()
        except BaseException:
            connection.close()
            raise
        return connection

    def _enable_wal(self, connection: sqlite3.Connection) -> None:
        # Switching a new file to WAL while another connection does the same fails with
        # "database is locked" at once: SQLite does not call the busy handler for it. Retry
        # within the busy timeout, like any other lock wait.
        deadline = time.monotonic() + self._busy_timeout
        pause = 0.005
        while True:
            try:
                connection.execute("PRAGMA journal_mode = WAL").close()
            except sqlite3.OperationalError as exc:
                busy = (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in {
                    _SQLITE_BUSY,
                    _SQLITE_LOCKED,
                }
                if not busy or time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.1)
            else:
                return

    @contextmanager
    def _transaction(self, *, write: bool) -> Iterator[_SqliteTx]:
        try:
            if not write and self.concurrent_reads:
                reader = self._reader()
                # One snapshot for every statement of the read.
                reader.execute("BEGIN").close()
                try:
                    yield _SqliteTx(reader)
                finally:
                    if reader.in_transaction:
                        reader.execute("COMMIT").close()
                return
            connection = self._connect()
            if not write:
                yield _SqliteTx(connection)
                return
            connection.execute("BEGIN IMMEDIATE").close()
            try:
                yield _SqliteTx(connection)
                connection.execute("COMMIT").close()
            except BaseException:
                # SQLite may already have rolled back by itself (e.g. on SQLITE_FULL); a failed
                # ROLLBACK must not hide the error that caused it.
                if connection.in_transaction:
                    with suppress(sqlite3.Error):
                        connection.execute("ROLLBACK").close()
                raise
        except sqlite3.Error as exc:
            raise translate(exc, self._description) from exc

    def _disconnect(self) -> None:
        with self._readers_lock:
            readers, self._reader_connections = self._reader_connections, []
        for reader in readers:
            # A reader another thread is using right now fails its read (closed store).
            with suppress(sqlite3.Error):
                reader.close()
        if self._connection is not None:
            connection, self._connection = self._connection, None
            connection.close()

    def _json_param(self, text: str) -> object:
        return text

    def _json_value(self, raw: object) -> Any:
        if not isinstance(raw, str):
            raise StoreError(f"stored JSON is not text: {type(raw).__name__}")
        return json.loads(raw)

    def _array_param(self, values: builtins.list[str]) -> object:
        # Read back by json_each() in LIST_SQL: one parameter whatever the number of values.
        return json.dumps(values)
