"""The reconcile loop: which rollout is due, and who works on it.

Where this sits: ``Reconciler.run`` is a root task of the daemon (and of ``rollout engine``):
every ``scan_interval`` seconds it calls ``Reconciler.scan`` and records when that scan
completed (``last_scan_at``; ``stalled`` turns a loop that stopped scanning into a readiness
problem). The scan reads from the store the ids and due times (``Store.due_soon``: two
columns, no plan or state) of the rollouts due before the next scan: those already due start
at once, the others are kept in a heap of due times, and the loop sleeps until the earliest of
them or the next scan, whichever comes first, and starts each at its due time. So a look
starts when it is due, not up to a scan interval later, and the scan only has to find
rollouts that are new or were changed elsewhere (the runner sets ``due_at`` after every
decision). One task per due rollout that is not already being reconciled. The loop ends only
when told to stop; an unexpected error ends the task, and the
daemon, which supervises it like its other root tasks, exits non-zero. Each rollout runs
in its own task, so an endpoint whose config update takes
forty minutes never delays another's judging; one task per rollout, and one active rollout per
endpoint (the store enforces it), means one config update at a time per endpoint.

With replicas (an ``Owner`` given, see ``rollout.engine.ownership``) the scan leaves out the
rollouts under another replica's live lease; a due rollout is
reconciled only under this replica's lease on it, and not before the lease's ``act_after``
(what a previous holder sent may still land until then); a rollout that ends is released at
once; the loop renews the replica's heartbeat and leases every third of the lease TTL, and
``stop`` releases them all so other replicas take over without waiting for expiry.

Every ``reclaim_every`` seconds the loop also has the store make the row versions looks
replaced reusable (``Store.reclaim``: a VACUUM on PostgreSQL, nothing on SQLite), in the
background; with replicas one of them does it per period, under the ``reclaim`` lease.

Time for deciding what is due comes from the injected clock, so tests drive ``scan`` directly
on a fake clock; the loop's pauses (until the next due look or scan) are the only real-time
waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
from collections.abc import Callable

import structlog

from rollout.clock import Clock
from rollout.engine.ownership import Owner
from rollout.engine.runner import Runner
from rollout.store.base import Store
from rollout.store.errors import StaleVersion, StoreError

RECLAIM_LEASE = "reclaim"
"""The lease one replica takes to run ``Store.reclaim`` for all of them."""

STALL_INTERVALS = 3
"""Scans that may be missed before the loop counts as stalled (``/readyz`` fails)."""

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
        ownership: Owner | None = None,
        reclaim_every: float = 10.0,
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
        # Looks due before the next scan: rollout id -> due time, and a heap of (due, id)
        # whose entries count only while they match the dict (a start or a newer scan
        # replaces them).
        self._upcoming: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self.ownership = ownership
        self.reclaim_every = reclaim_every
        self._reclaiming: asyncio.Task[None] | None = None
        self._accepting = True
        self._running = False
        self._started_at: float | None = None
        self.last_scan_at: float | None = None
        """Clock time of the last completed scan, one that read the store (``None`` before)."""

    @property
    def running(self) -> bool:
        return self._running

    def stalled(self, now: float) -> str | None:
        """Why the loop is not doing its work, or ``None`` while scans keep completing."""
        if not self._running:
            return "the reconcile loop is not running"
        limit = STALL_INTERVALS * self.scan_interval
        since = self.last_scan_at if self.last_scan_at is not None else self._started_at
        if since is not None and now - since > limit:
            what = "the last completed scan" if self.last_scan_at is not None else "start"
            return (
                f"no scan completed for {now - since:.1f} s since {what} "
                f"(more than {STALL_INTERVALS} scan intervals of {self.scan_interval:g} s)"
            )
        return None

    @property
    def in_flight(self) -> list[str]:
        return sorted(self._tasks)

    async def scan(self) -> list[str]:
        """Start a reconcile for every due rollout not already in flight; return their ids.

        Rollouts due before the next scan are remembered and started at their due time by
        ``start_upcoming`` (the loop calls it when the earliest of them comes).
        """
        if not self._accepting:
            return []
        now = self.clock.now()
        holder = None if self.ownership is None else self.ownership.holder
        try:
            due = await asyncio.to_thread(
                functools.partial(
                    self.store.due_soon,
                    now + self.scan_interval,
                    self.batch,
                    holder=holder,
                    now=now,
                )
            )
        except StoreError as exc:
            log.warning("scheduler.store_unavailable", error=str(exc))
            return []
        now = self.clock.now()
        started = []
        lag = 0.0
        for entry in due:
            if entry.id in self._tasks or self._not_before.get(entry.id, 0.0) > now:
                continue
            if entry.due_at > now:
                self._remember(entry.id, entry.due_at)
                continue
            lag = max(lag, now - entry.due_at)
            self._start(entry.id)
            started.append(entry.id)
        # Reported at every scan, 0 when nothing waited: a gauge set only when a rollout was
        # due would keep showing an old delay on an idle controller.
        if self.on_lag is not None:
            self.on_lag(lag)
        # Only a scan that read the store completed: one that could not is no sign of life.
        self.last_scan_at = self.clock.now()
        return started

    def _remember(self, rollout_id: str, due_at: float) -> None:
        if self._upcoming.get(rollout_id) != due_at:
            self._upcoming[rollout_id] = due_at
            heapq.heappush(self._heap, (due_at, rollout_id))

    def next_due(self) -> float | None:
        """The earliest remembered due time (clock seconds), or ``None``."""
        while self._heap:
            due_at, rollout_id = self._heap[0]
            if self._upcoming.get(rollout_id) == due_at:
                return due_at
            heapq.heappop(self._heap)
        return None

    def start_upcoming(self) -> list[str]:
        """Start the remembered rollouts whose due time has come; return their ids."""
        started: list[str] = []
        if not self._accepting:
            return started
        now = self.clock.now()
        while (due_at := self.next_due()) is not None and due_at <= now:
            _, rollout_id = heapq.heappop(self._heap)
            del self._upcoming[rollout_id]
            if rollout_id in self._tasks or self._not_before.get(rollout_id, 0.0) > now:
                continue
            self._start(rollout_id)
            started.append(rollout_id)
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
        # Whatever was remembered for it is superseded: its reconcile sets the next due time.
        self._upcoming.pop(rollout_id, None)
        task = asyncio.create_task(self._reconcile(rollout_id), name=f"reconcile:{rollout_id}")
        self._tasks[rollout_id] = task
        task.add_done_callback(functools.partial(self._forget, rollout_id))

    def _forget(self, rollout_id: str, _task: asyncio.Task[None]) -> None:
        self._tasks.pop(rollout_id, None)

    async def _reconcile(self, rollout_id: str) -> None:
        try:
            if self.ownership is not None:
                lease = await self.ownership.hold(rollout_id)
                if lease is None:
                    # Another replica's (come back when its lease would run out), or this
                    # one holds its share already (come back at the next scan).
                    free_at = await self.ownership.free_at(rollout_id)
                    if free_at is not None:
                        self._not_before[rollout_id] = free_at
                    return
                if lease.act_after > self.clock.now():
                    # Taken over: what the previous holder sent may still land. Keep the
                    # lease (renewed by the heartbeat) and come back once it cannot.
                    self._not_before[rollout_id] = lease.act_after
                    return
            result = await self.runner.reconcile(rollout_id)
            self._not_before.pop(rollout_id, None)
            if self.ownership is not None and result.phase.terminal:
                await self.ownership.release(rollout_id, quiet=True)
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

    async def heartbeat(self) -> None:
        """Renew this replica's heartbeat and leases (no-op without ownership)."""
        if self.ownership is None:
            return
        try:
            await self.ownership.heartbeat(busy=self._tasks.keys())
        except StoreError as exc:
            # Leases not renewed run out by themselves; the runner's checks then refuse.
            log.warning("scheduler.heartbeat_failed", error=str(exc))

    async def reclaim(self) -> None:
        """Have the store make replaced row versions reusable (``Store.reclaim``); with
        replicas, one of them per ``reclaim_every`` (a lease decides which). Store errors are
        logged: the database's own clean-up still comes, later."""
        try:
            if self.ownership is not None and not self.ownership.single_driver:
                taken = await asyncio.to_thread(
                    self.store.try_lease,
                    RECLAIM_LEASE,
                    self.ownership.holder,
                    self.reclaim_every * 0.9,
                    self.clock.now(),
                )
                if not taken:
                    return
            await asyncio.to_thread(self.store.reclaim)
        except StoreError as exc:
            log.warning("scheduler.reclaim_failed", error=str(exc))

    async def run(self, stopping: asyncio.Event) -> None:
        """Scan every ``scan_interval`` seconds until ``stopping`` is set or ``stop`` is called,
        and between scans start each remembered look at its due time.

        Errors of the store are ridden out (a scan that cannot read finds nothing due); any
        other exception ends the loop and propagates to the supervisor.
        """
        loop = asyncio.get_running_loop()
        self._running = True
        self._accepting = True
        self._started_at = self.clock.now()
        next_heartbeat = self.clock.now()
        next_reclaim = loop.time() + self.reclaim_every
        try:
            while self._accepting and not stopping.is_set():
                if self.ownership is not None and self.clock.now() >= next_heartbeat:
                    await self.heartbeat()
                    next_heartbeat = self.clock.now() + self.ownership.renew_every
                if loop.time() >= next_reclaim and (
                    self._reclaiming is None or self._reclaiming.done()
                ):
                    # In the background: a VACUUM must not hold up the looks.
                    self._reclaiming = asyncio.create_task(self.reclaim(), name="reclaim")
                    next_reclaim = loop.time() + self.reclaim_every
                await self.scan()
                # The pause between scans is real time; due times are the clock's.
                next_scan = loop.time() + self.scan_interval
                while self._accepting and not stopping.is_set():
                    self.start_upcoming()
                    pause = next_scan - loop.time()
                    if pause <= 0:
                        break
                    due_at = self.next_due()
                    if due_at is not None:
                        pause = min(pause, max(0.0, due_at - self.clock.now()))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stopping.wait(), timeout=pause)
        finally:
            self._running = False

    async def stop(self, grace: float = 60.0) -> None:
        """Stop starting work, then give the reconciles in flight ``grace`` seconds to finish.

        A reconcile cut short is safe (its intent is in the store) but a finished one saves
        the restart a poll, so in-flight config updates get their chance to settle first.
        """
        self._accepting = False
        if self._reclaiming is not None:
            # Not cancelled: the statement runs in a thread and ends by itself.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reclaiming), timeout=grace)
        cut_short: list[str] = []
        if self._tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.drain(), timeout=grace)
            cut_short = list(self._tasks)
            for task in list(self._tasks.values()):
                task.cancel()
            await asyncio.gather(*list(self._tasks.values()), return_exceptions=True)
        if self.ownership is not None:
            # A reconcile cut short may have left a PUT on the wire: its rollout's next
            # owner waits that out; every other rollout is free for the taking at once.
            await self.ownership.release_all(busy=cut_short)
