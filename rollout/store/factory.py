"""Choosing a backend from a URL: the one place a store is opened.

In the path of a rollout this runs once, at the daemon's start (and in tests and benchmarks):
``open_store(settings.store.url)`` returns the ``Store`` the runner, the API and the outbox
dispatcher share. It does not connect; the first call (normally ``migrate()``) does, so a
daemon can start and report itself not ready while the database is down.
"""

from __future__ import annotations

from rollout.store.base import Store
from rollout.store.postgres import PostgresStore
from rollout.store.sqlite import SqliteStore

_SQLITE_PREFIX = "sqlite:///"
_POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def open_store(url: str) -> Store:
    """Open the store a URL names.

    - ``sqlite:///relative/path.db`` (relative to the current directory, resolved now),
      ``sqlite:////absolute/path.db``, ``sqlite:///:memory:`` (private to the returned store);
    - ``postgresql://user:password@host:port/dbname?...`` or ``postgres://...``: a libpq URI,
      query parameters included (``sslmode``, ``options=-csearch_path%3Dschema``...).

    Raises ``ValueError`` for any other URL, naming what is accepted.
    """
    lowered = url.lower()
    if lowered.startswith(_SQLITE_PREFIX):
        path = url[len(_SQLITE_PREFIX) :]
        if not path:
            raise ValueError(f"store URL {url!r} names no SQLite file: sqlite:///<path>")
        if "?" in path:
            raise ValueError(f"store URL {url!r}: SQLite URLs take no query parameters")
        return SqliteStore(path)
    if lowered.startswith("sqlite:"):
        raise ValueError(
            f"store URL {url!r}: SQLite URLs have three slashes before a relative path "
            "(sqlite:///rollout.db) and four before an absolute one (sqlite:////var/rollout.db)"
        )
    if lowered.startswith(_POSTGRES_SCHEMES):
        return PostgresStore(url)
    scheme = url.split(":", 1)[0] if ":" in url else url
    raise ValueError(
        f"unsupported store URL scheme {scheme!r} in {_redact(url)!r}: expected "
        "sqlite:///<path>, sqlite:///:memory: or postgresql://user@host:port/dbname"
    )


def _redact(url: str) -> str:
    # Never echo a password from a mistyped URL into logs.
    head, at, tail = url.rpartition("@")
    if not at:
        return url
    scheme, sep, credentials = head.partition("://")
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{tail}" if ":" in credentials else url
