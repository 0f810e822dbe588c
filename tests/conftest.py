"""Shared fixtures.

``sandbox`` is a local Databricks serving workspace over real HTTP (``rollout.sandbox``), on a
fake clock so that tests decide when time passes; ``sandbox_admin`` talks to its admin API
(``rollout/sandbox/README.md`` documents both); ``sandbox_api`` is an authenticated client on
the workspace itself. ``postgres_url`` is a store URL on the running PostgreSQL, in a schema
of its own that is dropped afterwards. Every test starts and ends with the same logging
configuration.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import structlog

from rollout.clock import FakeClock
from rollout.sandbox.server import SandboxServer
from rollout.store.base import Store
from rollout.store.factory import open_store
from tests.postgres import fresh_schema


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    # A command run in-process (typer's CliRunner) configures logging onto the stream it
    # captures and closes afterwards; later tests would log into a closed file.
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@functools.cache
def _tls_context() -> ssl.SSLContext:
    # Building an httpx.Client loads the CA bundle (~70 ms) unless handed a context; the
    # sandbox speaks plain HTTP, so one shared context only saves time.
    return ssl.create_default_context()


@pytest.fixture(scope="session")
def _sandbox_server() -> Iterator[SandboxServer]:
    # One server for the session: starting and stopping uvicorn costs ~0.2 s, and the
    # per-test reset below gives every test the same state a fresh server would have.
    with SandboxServer(clock=FakeClock(), seed=0, window_seconds=60.0,
                       update_seconds=5.0) as server:
        yield server


@pytest.fixture
def sandbox(_sandbox_server: SandboxServer) -> SandboxServer:
    """A sandbox workspace on a loopback port, empty, on a fresh FakeClock (at 1.8e9 s, a
    window boundary): 60 s windows, 5 s updates, seed 0, token ``dapi-sandbox-token``."""
    _sandbox_server.workspace.reset(clock=FakeClock())
    return _sandbox_server


@pytest.fixture
def sandbox_admin(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    """An httpx client on the sandbox's admin API (base URL ``<sandbox>/_sandbox/v1``)."""
    with httpx.Client(base_url=sandbox.admin_url, timeout=10.0, verify=_tls_context()) as client:
        yield client


@pytest.fixture
def sandbox_api(sandbox: SandboxServer) -> Iterator[httpx.Client]:
    """An httpx client on the sandbox workspace, authenticated with its CAN_MANAGE token."""
    with httpx.Client(
        base_url=sandbox.url,
        headers={"Authorization": f"Bearer {sandbox.token}"},
        timeout=10.0,
        verify=_tls_context(),
    ) as client:
        yield client


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    """A migrated SQLite store in the test's own folder."""
    store = open_store(f"sqlite:///{tmp_path / 'rollout.db'}")
    store.migrate()
    yield store
    store.close()



@pytest.fixture
def postgres_url() -> Iterator[str]:
    """A store URL on the running PostgreSQL whose tables live in a fresh schema."""
    with fresh_schema("test") as url:
        yield url
