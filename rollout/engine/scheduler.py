"""The reconcile loop: which rollout is due, and who works on it.

Where this sits: an APScheduler ``AsyncIOScheduler`` calls ``Reconciler.scan`` every
``scan_interval`` seconds; the scan asks the store for rollouts whose ``due_at`` has come (the
runner sets it after every decision) and starts one task per due rollout that is not already
being reconciled. Each rollout runs in its own task, so an endpoint whose config update takes
forty minutes never delays another's judging; one task per rollout, and one active rollout per
endpoint (the store enforces it), means one config update at a time per endpoint.

Time for deciding what is due comes from the injected clock, so tests drive ``scan`` directly
on a fake clock; APScheduler only paces the scans in a live process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from rollout.clock import Clock
from rollout.engine.runner import Runner
from rollout.store.base import Store
from rollout.store.errors import StaleVersion, StoreError

log = structlog.get_logger("rollout.scheduler")


class Reconciler:
    """Scans for due rollouts and reconciles each in its own supervised task."""

    def __init__(
        self,
        runner: Runner,
        store: Store,
        clock: Clock,
        *,
        scan_interval: float = 1.0,
        failure_backoff: float = 30.0,
        batch: int = 100,
        on_lag: Callable[[float], None] | None = None,
    ) -> None:
        self.runner = runner
        self.store = store
        self.clock = clock
        self.scan_interval = scan_interval
        self.failure_backoff = failure_backoff
        self.batch = batch
        self.on_lag = on_lag
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._not_before: dict[str, float] = {}
        self._scheduler: AsyncIOScheduler | None = None
        self._accepting = True

    @property
    def running(self) -> bool:
        return self._scheduler is not None and bool(self._scheduler.running)

    @property
    def in_flight(self) -> list[str]:
        return sorted(self._tasks)

    async def scan(self) -> list[str]:
        """Start a reconcile for every due rollout not already in flight; return their ids."""
        if not self._accepting:
            return []
        now = self.clock.now()
        try:
            due = await asyncio.to_thread(self.store.due, now, self.batch)
        except StoreError as exc:
            log.warning("scheduler.store_unavailable", error=str(exc))
            return []
        started = []
        lag = 0.0
        for record in due:
            if record.id in self._tasks or self._not_before.get(record.id, 0.0) > now:
                continue
            if record.due_at is not None:
                lag = max(lag, now - record.due_at)
            self._start(record.id)
            started.append(record.id)
        # Reported at every scan, 0 when nothing waited: a gauge set only when a rollout was
        # due would keep showing an old delay on an idle controller.
        if self.on_lag is not None:
            self.on_lag(lag)
        return started

    def poke(self, rollout_id: str) -> bool:
        """Reconcile one rollout now, due or not (a new rollout, a queued command).

        Call it from the event loop's thread. Returns False when it is already in flight
        (that reconcile reads the command) or the loop is shutting down.
        """
        if not self._accepting or rollout_id in self._tasks:
            return False
        self._not_before.pop(rollout_id, None)
        self._start(rollout_id)
        return True

    def _start(self, rollout_id: str) -> None:
        task = asyncio.create_task(self._reconcile(rollout_id), name=f"reconcile:{rollout_id}")
        self._tasks[rollout_id] = task
        task.add_done_callback(functools.partial(self._forget, rollout_id))

    def _forget(self, rollout_id: str, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(rollout_id, None)

    async def _reconcile(self, rollout_id: str) -> None:
        try:
            await self.runner.reconcile(rollout_id)
            self._not_before.pop(rollout_id, None)
        except StaleVersion:
            # Another worker moved the rollout on; its next scan picks up from there.
            log.info("scheduler.stale", rollout=rollout_id)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # one broken rollout must not stop the loop
            self._not_before[rollout_id] = self.clock.now() + self.failure_backoff
            log.exception("scheduler.reconcile_failed", rollout=rollout_id, error=str(exc))

    async def drain(self) -> None:
        """Wait for every reconcile in flight (tests and shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)

    def start(self) -> None:
        """Scan every ``scan_interval`` seconds on the running event loop."""
        scheduler = AsyncIOScheduler()
        scheduler.add_job(
            self.scan,
            "interval",
            seconds=self.scan_interval,
            id="reconcile-scan",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        scheduler.start()
        self._scheduler = scheduler
        self._accepting = True

    async def stop(self, grace: float = 60.0) -> None:
        """Stop starting work, then give the reconciles in flight ``grace`` seconds to finish.

        A reconcile cut short is safe (its intent is in the store) but a finished one saves
        the restart a poll, so in-flight config updates get their chance to settle first.
        """
        self._accepting = False
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        self._scheduler = None
        if not self._tasks:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.drain(), timeout=grace)
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
