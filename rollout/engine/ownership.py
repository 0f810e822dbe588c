"""Which rollouts this replica drives: per-rollout leases with fencing tokens.

Where this sits: between the reconcile loop and the runner. Any number of controllers
(``rollout serve`` or ``rollout engine``) may share one store; each rollout is driven by one of
them at a time. Before reconciling a due rollout the loop asks ``Owner.hold``: the replica
claims the rollout's lease in the store (``Store.claim_rollout``) if the rollout is free and
the replica is under its fair share, or renews it if it holds it already and it has less than
half a TTL left (the heartbeat renews all of a replica's leases in one statement). The runner then
presents the lease's fencing token twice per config change: ``check`` right before every PUT
(a renewal that fails with ``LeaseLost`` if another replica took the rollout) and with every
commit (the store refuses a commit under a stale token).

Why a PUT cannot outlive the lease that allowed it: ``check`` extends the lease to a full TTL
and the serving client ends every PUT, retries included, within ``put_deadline`` < TTL. A
replica that takes a rollout over (the old lease expired: the holder died, hung, or lost the
store) gets ``act_after`` = the old lease's expiry + ``put_deadline``: until then a PUT of the
old holder may still land, so the loop leaves the rollout alone; afterwards the runner reads the
endpoint back before deciding, and ``decide`` recognises the old holder's intent on the
endpoint (live, pending or not there) instead of calling it drift. A replica that stops cleanly
releases its leases ``quiet`` (nothing on the wire) and its successor acts at once.

Fair share: every replica renews a heartbeat lease ``replica:<holder>``; the number of live
heartbeats is the number of replicas, and a replica holds at most
``ceil(active rollouts / replicas) + slack`` rollouts, releasing the rest (never one it is
reconciling) at its next heartbeat. A replica that dies stops renewing, and its rollouts are
claimed by the others within one TTL of its last renewal.

On SQLite (one database file on one host) at most one driving process may run: ``take_driver``
takes a process-level lease named ``driver`` (renewed by the heartbeat) and
``DriverAlreadyRunning`` names the live holder. A holder that was killed is taken over once its
lease expires, or at once when its pid on this host no longer exists (its connections died
with it). That one process is the fence on SQLite, so per-rollout leases are not taken there:
``hold`` grants every rollout (token 0, nothing to present to the store), and a restart does
not wait for the dead process's rollout leases to run out.

Errors::

    LeaseLost (rollout.store.errors, a StaleVersion)  this replica does not hold the rollout
    DriverAlreadyRunning (ConfigurationProblem)        another process drives this SQLite store
    DriverLeaseLostError (RuntimeError)                another process took the SQLite store
                                                       over from this one (after a stall): the
                                                       heartbeat raises it, the loop ends
"""

from __future__ import annotations

import asyncio
import math
import os
import socket
import uuid
from collections.abc import Collection
from datetime import UTC, datetime

import structlog

from rollout.clock import Clock
from rollout.errors import ConfigurationProblem
from rollout.store.base import Store
from rollout.store.errors import LeaseLost, StoreError
from rollout.store.model import Fence, Ownership

log = structlog.get_logger("rollout.ownership")

REPLICA_PREFIX = "replica:"
DRIVER_LEASE = "driver"


def new_holder_id(clock: Clock) -> str:
    """This process's name in leases: host, pid and start time (readable), plus a nonce.

    The nonce makes two processes that reuse a pid (a restart in a container) different
    holders, so a restarted replica never mistakes its predecessor's lease for its own.
    """
    since = datetime.fromtimestamp(clock.now(), tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{socket.gethostname()} pid {os.getpid()} since {since} #{uuid.uuid4().hex[:6]}"


def _dead_here(holder: str) -> bool:
    """Whether a holder id names a process of this host that no longer exists."""
    parts = holder.split(" ")
    if len(parts) < 3 or parts[0] != socket.gethostname() or parts[1] != "pid":
        return False
    try:
        pid = int(parts[2])
    except ValueError:
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, under another user
    return False


class DriverAlreadyRunning(ConfigurationProblem):
    """Another live process drives this SQLite store; its lease names it."""


class DriverLeaseLostError(RuntimeError):
    """This process no longer holds the SQLite driver lease: another one took it over."""


class Owner:
    """This replica's leases on rollouts, its heartbeat, and its share of the work."""

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        holder: str,
        lease_ttl: float,
        wire_seconds: float,
        slack: int = 1,
        single_driver: bool = False,
    ) -> None:
        if wire_seconds >= lease_ttl:
            raise ValueError(
                f"a PUT's life ({wire_seconds:g} s) must be shorter than the lease "
                f"({lease_ttl:g} s)"
            )
        self.store = store
        self.clock = clock
        self.holder = holder
        self.lease_ttl = lease_ttl
        self.wire_seconds = wire_seconds
        self.slack = slack
        self.single_driver = single_driver
        self._held: dict[str, Ownership] = {}
        self._replicas = 1
        self._active = 0
        self._counted_at = -math.inf
        self.last_heartbeat: float | None = None

    @property
    def renew_every(self) -> float:
        """Seconds between heartbeats: a third of the TTL, so two can fail before expiry."""
        return self.lease_ttl / 3

    @property
    def owned(self) -> list[str]:
        """The rollouts this replica holds, by id (what ``/readyz`` and ``/metrics`` show)."""
        return sorted(self._held)

    @property
    def replicas(self) -> int:
        return self._replicas

    @property
    def share(self) -> int:
        """How many rollouts this replica may hold now."""
        return max(1, math.ceil(self._active / max(1, self._replicas)) + self.slack)

    def fence(self, rollout_id: str) -> Fence | None:
        """What a commit presents; ``None`` on a single-driver store (nothing to fence)."""
        held = self._held.get(rollout_id)
        if self.single_driver or held is None:
            return None
        return Fence(self.holder, held.token)

    def lease(self, rollout_id: str) -> Ownership | None:
        return self._held.get(rollout_id)

    # ---- process level ------------------------------------------------------------------

    def take_driver(self) -> None:
        """On a single-driver store (SQLite), at start: take the process lease or refuse.

        Synchronous: it runs once, before the event loop has work. Raises
        ``DriverAlreadyRunning`` naming the live holder.
        """
        if not self.single_driver:
            return
        now = self.clock.now()
        if self.store.try_lease(DRIVER_LEASE, self.holder, self.lease_ttl, now):
            return
        live = self.store.live_leases(DRIVER_LEASE, now)
        holder = next((lease for lease in live if lease.name == DRIVER_LEASE), None)
        if holder is not None and _dead_here(holder.holder):
            # Killed without releasing: nothing of it runs any more on this host.
            self.store.release_lease(DRIVER_LEASE, holder.holder)
            if self.store.try_lease(DRIVER_LEASE, self.holder, self.lease_ttl, now):
                log.info("ownership.driver_taken_over", previous=holder.holder)
                return
        who = (
            f"{holder.holder} (its lease runs until "
            f"{datetime.fromtimestamp(holder.expires_at, tz=UTC):%H:%M:%SZ} unless renewed)"
            if holder is not None
            else "another process"
        )
        raise DriverAlreadyRunning(
            f"another controller already drives this SQLite store: {who}. One process "
            "drives a SQLite store at a time; stop it first, or use PostgreSQL "
            "(ROLLOUT_STORE_URL=postgresql://...) to run replicas. A killed holder's lease "
            f"runs out after ROLLOUT_ENGINE_LEASE_TTL ({self.lease_ttl:g} s)."
        )

    # ---- the heartbeat ------------------------------------------------------------------

    async def heartbeat(self, busy: Collection[str] = ()) -> None:
        """Renew this replica's heartbeat and its leases; release what exceeds its share.

        ``busy``: rollouts being reconciled now; they are kept even beyond the share (the
        reconcile would only lose its next commit). Raises ``StoreError`` if the store fails;
        leases not renewed then run out on their own, which is what must happen.
        """
        now = self.clock.now()
        await asyncio.to_thread(
            self.store.try_lease, REPLICA_PREFIX + self.holder, self.holder, self.lease_ttl, now
        )
        if self.single_driver and not await asyncio.to_thread(
            self.store.try_lease, DRIVER_LEASE, self.holder, self.lease_ttl, now
        ):
            # This process stalled past its lease and another one drives the store now:
            # driving on would be two drivers. End the loop; the supervisor exits non-zero.
            raise DriverLeaseLostError(
                f"{self.holder} lost the SQLite driver lease to another process; stopping"
            )
        await self._count(now)
        if not self.single_driver and self._held:
            # Every lease in one statement, however many this replica holds.
            before = dict(self._held)
            renewed = {
                lease.rollout_id: lease
                for lease in await asyncio.to_thread(
                    self.store.renew_held, self.holder, self.lease_ttl, now
                )
            }
            for rollout_id, held in before.items():
                if self._held.get(rollout_id) is not held:
                    continue  # claimed again or released meanwhile: that is newer
                fresh = renewed.get(rollout_id)
                if fresh is not None and fresh.token == held.token:
                    self._held[rollout_id] = fresh
                else:
                    self._held.pop(rollout_id, None)
                    log.warning("ownership.lost", rollout=rollout_id, token=held.token)
        excess = 0 if self.single_driver else len(self._held) - self.share
        for rollout_id in sorted(self._held, reverse=True):
            if excess <= 0:
                break
            if rollout_id in busy:
                continue
            await self.release(rollout_id, quiet=True)
            log.info("ownership.shed", rollout=rollout_id, share=self.share)
            excess -= 1
        self.last_heartbeat = now

    async def _count(self, now: float) -> None:
        live = await asyncio.to_thread(self.store.live_leases, REPLICA_PREFIX, now)
        self._replicas = max(1, len(live))
        self._active = await asyncio.to_thread(self.store.count_active)
        self._counted_at = now

    # ---- per rollout --------------------------------------------------------------------

    async def hold(self, rollout_id: str) -> Ownership | None:
        """Claim or renew the rollout's lease; ``None`` if another replica holds it or this
        replica is at its share. The caller must not act on the endpoint before the
        returned lease's ``act_after``."""
        now = self.clock.now()
        if self.single_driver:
            # This process is the only driver (its driver lease says so): no per-rollout lease.
            granted = Ownership(rollout_id, self.holder, 0, now, math.inf, now)
            self._held.setdefault(rollout_id, granted)
            return self._held[rollout_id]
        held = self._held.get(rollout_id)
        if held is not None and held.expires_at - now > self.lease_ttl / 2:
            # Held, and live for over half a TTL (the heartbeat renews it): no write per
            # look. The commit's fence and the check before a PUT still go to the store.
            return held
        if held is None and len(self._held) >= self.share and now - self._counted_at >= 1.0:
            # Rollouts submitted since the last heartbeat raise the share: count again (at
            # most once a second) rather than leave them waiting for the next heartbeat.
            await self._count(now)
        if held is None and len(self._held) >= self.share:
            return None
        claimed = await asyncio.to_thread(
            self.store.claim_rollout,
            rollout_id,
            self.holder,
            self.lease_ttl,
            now,
            self.wire_seconds,
        )
        if claimed is None:
            if held is not None:
                log.warning("ownership.lost", rollout=rollout_id, token=held.token)
            self._held.pop(rollout_id, None)
            return None
        if held is None or held.token != claimed.token:
            log.info(
                "ownership.acquired",
                rollout=rollout_id,
                token=claimed.token,
                wait=round(max(0.0, claimed.act_after - now), 3),
            )
        self._held[rollout_id] = claimed
        return claimed

    async def free_at(self, rollout_id: str) -> float | None:
        """When another replica's lease on the rollout runs out unless renewed (a read).

        The loop tries again only then, instead of one write per scan that must fail.
        """
        current = await asyncio.to_thread(self.store.owner_of, rollout_id)
        if current is None or current.holder == self.holder:
            return None
        return current.expires_at

    async def check(self, rollout_id: str) -> Ownership:
        """Right before an endpoint call: still the holder? Extends the lease a full TTL.

        Raises ``LeaseLost`` (and forgets the rollout) if not.
        """
        held = self._held.get(rollout_id)
        if self.single_driver and held is not None:
            return held
        if held is None:
            raise LeaseLost(rollout_id, self.holder, 0)
        try:
            renewed = await asyncio.to_thread(
                self.store.renew_rollout,
                rollout_id,
                self.holder,
                held.token,
                self.lease_ttl,
                self.clock.now(),
            )
        except LeaseLost:
            self._held.pop(rollout_id, None)
            raise
        self._held[rollout_id] = renewed
        return renewed

    async def release(self, rollout_id: str, *, quiet: bool) -> None:
        """Give the rollout up (ended, beyond the share, or shutting down); best effort."""
        held = self._held.pop(rollout_id, None)
        if held is None or self.single_driver:
            return
        try:
            await asyncio.to_thread(
                self.store.release_rollout,
                rollout_id,
                self.holder,
                held.token,
                self.clock.now(),
                quiet=quiet,
            )
        except StoreError as exc:
            # Not released: it runs out after the TTL instead.
            log.warning("ownership.release_failed", rollout=rollout_id, error=str(exc))

    async def release_all(self, busy: Collection[str] = ()) -> None:
        """At shutdown: free every lease (quiet unless a reconcile was cut short) and stop
        being a replica, so the others take over at once."""
        for rollout_id in list(self._held):
            await self.release(rollout_id, quiet=rollout_id not in busy)
        for name in (REPLICA_PREFIX + self.holder, DRIVER_LEASE):
            try:
                await asyncio.to_thread(self.store.release_lease, name, self.holder)
            except StoreError as exc:
                log.warning("ownership.release_failed", lease=name, error=str(exc))
