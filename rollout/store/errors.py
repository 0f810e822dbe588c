"""The store's exception tree: every database error leaves the store as one of these.

In the path of a rollout the store is the runner's and the API's only way to persistence, so
these are what they handle: the API maps ``RolloutNotFound`` to 404 and ``ActiveRolloutExists``
to 409; the runner reloads and decides again on ``StaleVersion`` and retries later on
``StoreUnavailable``. sqlite3 and psycopg errors are translated once, in the backends
(``raise ... from exc``), so no caller imports a driver.

``StoreError``
  ``RolloutNotFound``       no rollout with that id
  ``AlertNotFound``         no outbox alert with that id
  ``DuplicateRollout``      a rollout with that id already exists
  ``ActiveRolloutExists``   another non-terminal rollout holds the endpoint
  ``AliasMoveTaken``        an alias watch already recorded this version (a rollout for it
                            was started, or it needed none)
  ``StaleVersion``          the rollout changed since it was read (optimistic concurrency)
    ``LeaseLost``           the caller no longer owns the rollout under the token it presented
  ``SchemaError``           the database schema is missing or newer than this code
  ``StoreUnavailable``      the database cannot be reached or is busy: retry later

``retryable`` says whether the very same call may succeed if repeated later.
"""

# The names are the store's public API and read as facts (RolloutNotFound, StaleVersion);
# an "Error" suffix on each would add nothing.
# ruff: noqa: N818

from __future__ import annotations

from typing import ClassVar


class StoreError(Exception):
    """Base of every error the store raises."""

    retryable: ClassVar[bool] = False


class RolloutNotFound(StoreError):
    """No rollout has this id."""

    def __init__(self, rollout_id: str) -> None:
        super().__init__(f"no rollout with id {rollout_id!r}")
        self.rollout_id = rollout_id


class AlertNotFound(StoreError):
    """No outbox alert has this id."""

    def __init__(self, alert_id: int) -> None:
        super().__init__(f"no outbox alert with id {alert_id}")
        self.alert_id = alert_id


class DuplicateRollout(StoreError):
    """A rollout with this id already exists (whatever its endpoint or phase)."""

    def __init__(self, rollout_id: str) -> None:
        super().__init__(f"a rollout with id {rollout_id!r} already exists")
        self.rollout_id = rollout_id


class ActiveRolloutExists(StoreError):
    """Another non-terminal rollout holds the endpoint; it must finish first.

    ``active_id`` names it when it could be read after the conflict (it may have finished in
    between, then it is ``None``).
    """

    def __init__(self, endpoint: str, active_id: str | None) -> None:
        held_by = f" by rollout {active_id!r}" if active_id is not None else ""
        super().__init__(f"endpoint {endpoint!r} is held{held_by}: one active rollout at a time")
        self.endpoint = endpoint
        self.active_id = active_id


class AliasMoveTaken(StoreError):
    """An alias watch already recorded this version: whoever recorded it first started the
    rollout for it (or found none was needed); nothing was written."""

    def __init__(self, watch: str, version: str) -> None:
        super().__init__(f"{watch}: version {version} was already taken up")
        self.watch = watch
        self.version = version


class StaleVersion(StoreError):
    """The rollout's version is not the one the commit was decided from; nothing was written.

    Another writer committed first. Repeating the same commit will fail again: reload the
    rollout, decide again from its current state, and commit that.
    """

    def __init__(self, rollout_id: str, expected: int, actual: int | None) -> None:
        found = f"it is at version {actual}" if actual is not None else "its commands moved on"
        super().__init__(f"rollout {rollout_id!r}: expected version {expected}, but {found}")
        self.rollout_id = rollout_id
        self.expected = expected
        self.actual = actual


class LeaseLost(StaleVersion):
    """The caller does not hold the rollout under this fencing token (any more); nothing written.

    Another replica took it over, or the lease expired. A ``StaleVersion`` because what to
    do is the same: stop acting on the rollout; its owner carries on from the store.
    """

    def __init__(self, rollout_id: str, holder: str, token: int) -> None:
        StoreError.__init__(
            self, f"rollout {rollout_id!r}: {holder} no longer holds it under token {token}"
        )
        self.rollout_id = rollout_id
        self.expected = 0
        self.actual = None
        self.holder = holder
        self.token = token


class SchemaError(StoreError):
    """The schema is missing (``migrate()`` was not run) or newer than this code knows."""


class StoreUnavailable(StoreError):
    """The database cannot be reached, the connection broke, or it stayed busy too long.

    A transaction that did not reach its commit is rolled back by the database. If the
    connection broke during the commit itself the outcome is unknown; retrying is still safe:
    a commit that did go through makes the retried one fail with ``StaleVersion`` (the version
    moved on), and its alerts are deduplicated by key. The store reconnects by itself.
    """

    retryable: ClassVar[bool] = True
