"""The running PostgreSQL, for tests: a fresh schema per use, dropped afterwards.

PostgreSQL is required, not optional: when it is unreachable the tests that need it fail with
the command that starts it (``.ci/run`` runs that command itself).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from psycopg import sql

POSTGRES_URL = os.environ.get(
    "ROLLOUT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"
)


@contextmanager
def fresh_schema(prefix: str) -> Iterator[str]:
    """A store URL whose tables live in a new schema named ``<prefix>_<random>``."""
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable at {POSTGRES_URL}: {exc}\n"
            "Start it with\n"
            "    pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start\n"
            "or point ROLLOUT_TEST_POSTGRES_URL at another server.",
            pytrace=False,
        )
    schema = f"{prefix}_{uuid.uuid4().hex[:16]}"
    separator = "&" if "?" in POSTGRES_URL else "?"
    with admin:
        admin.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
        try:
            yield f"{POSTGRES_URL}{separator}options=-csearch_path%3D{schema}"
        finally:
            admin.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(schema)))
