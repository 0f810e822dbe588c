"""Health that tells the truth: can the store be written, and can the workspace be reached.

Where this sits: beside the root tasks, wired by ``rollout.daemon``. Neither check takes part
in a rollout's decisions; they say whether the controller can do its work at all.

- ``StoreWriteCheck`` backs ``/readyz``: a controller whose store refuses writes (a read-only
  SQLite file, a full disk, a PostgreSQL standby) can read rollouts but cannot commit a
  single decision, so it is not ready, whatever ``ping()`` says. The probe is one small write
  (``Store.probe_write``), its answer kept for ``ttl`` seconds so that a scraper polling
  ``/readyz`` does not turn into a stream of writes.
- ``WorkspaceWatch`` (below) follows every answer of the serving client and raises one alert
  when the workspace has not answered for longer than a configured time.
"""

from __future__ import annotations

import asyncio

import structlog

from rollout.clock import Clock
from rollout.store.base import Store
from rollout.store.errors import StoreError

log = structlog.get_logger("rollout.health")

DEFAULT_PROBE_TTL = 2.0


class StoreWriteCheck:
    """``await check()``: ``{}`` when the store took a write lately, else ``{"store_write":
    reason}`` (the form of a readiness problem)."""

    def __init__(self, store: Store, clock: Clock, *, ttl: float = DEFAULT_PROBE_TTL) -> None:
        self.store = store
        self.clock = clock
        self.ttl = ttl
        self._checked_at: float | None = None
        self._problem: str | None = None
        self._lock = asyncio.Lock()

    async def check(self) -> dict[str, str]:
        async with self._lock:  # concurrent /readyz calls share one probe
            now = self.clock.monotonic()
            if self._checked_at is None or now - self._checked_at >= self.ttl:
                self._problem = await self._probe()
                self._checked_at = self.clock.monotonic()
        return {} if self._problem is None else {"store_write": self._problem}

    async def _probe(self) -> str | None:
        try:
            await asyncio.to_thread(self.store.probe_write, self.clock.now())
        except StoreError as exc:
            if self._problem is None:
                log.warning("health.store_not_writable", error=str(exc))
            return f"the store cannot be written: {exc}"
        if self._problem is not None:
            log.info("health.store_writable_again")
        return None
