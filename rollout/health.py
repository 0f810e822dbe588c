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
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import structlog
from pydantic import ValidationError

from rollout.clock import Clock
from rollout.plan import AlertChannel, Severity
from rollout.store.base import Store
from rollout.store.errors import StoreError
from rollout.store.model import ACTIVE, NewAlert
from rollout.units import format_duration

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


# ---- the workspace ------------------------------------------------------------------------

Transition = Literal["raise", "resolve"]

UNREACHABLE = "workspace_unreachable"
REACHABLE = "workspace_reachable"


@dataclass
class Reachability:
    """Whether the workspace answers, from the outcome of every call made to it. Pure.

    An answer is any HTTP response below 500 (a 4xx is the workspace answering, about the
    request); no response (connection refused or reset, timeout) and a 5xx are failures.
    Failures without an answer in between for ``outage_after`` seconds make an outage:
    ``observe`` returns ``"raise"`` once, then ``"resolve"`` at the next answer.
    """

    outage_after: float
    down_since: float | None = None
    failures: int = 0
    last_error: str | None = None
    alerted: bool = False

    def observe(self, status: int | None, now: float) -> Transition | None:
        if status is not None and status < 500:
            was_alerted = self.alerted
            self.down_since, self.failures, self.alerted = None, 0, False
            return "resolve" if was_alerted else None
        if self.down_since is None:
            self.down_since = now
        self.failures += 1
        self.last_error = (
            "no answer (connection error or timeout)" if status is None else f"HTTP {status}"
        )
        if not self.alerted and now - self.down_since >= self.outage_after:
            self.alerted = True
            return "raise"
        return None


ResponseHook = Callable[[str, int | None, float], None]
"""``(call, status or None, seconds)``: what a ``ServingClient`` reports of every response."""


class ResponseRelay:
    """A serving client's response hook that passes every response on to hooks added later.

    The client is built first (a controller that cannot sign in creates no store), the
    ``WorkspaceWatch`` once the store it writes to is open: the relay lets the watch hear
    every call the client makes from then on.
    """

    def __init__(self, *hooks: ResponseHook) -> None:
        self._hooks = list(hooks)

    def add(self, hook: ResponseHook) -> None:
        self._hooks.append(hook)

    def __call__(self, call: str, status: int | None, seconds: float) -> None:
        for hook in self._hooks:
            hook(call, status, seconds)


class WorkspaceWatch:
    """Raises ONE alert when the workspace stops answering for longer than ``outage_after``
    seconds, and resolves it when the workspace answers again.

    ``on_response`` is a ``ServingClient`` response hook: every call the controller makes
    (reconciles, API reads) reports to it, so an outage is noticed through the calls made,
    not by polling; with no call to make, there is nothing to notice. The alerts go through
    the outbox (``Store.add_controller_alerts``) to the default channels
    (``ROLLOUT_ALERTS_CHANNELS``) and those of every active rollout, under each channel's
    severity filter; the resolve carries the alert's severity so that every channel that got
    one gets the other (Alertmanager: the same labels with ``endsAt`` now). Writes run as
    tasks beside the call that reported, one at a time and in order; ``drain()`` waits for
    them. Logs: warning when the outage is declared, info when it ends.
    """

    def __init__(
        self,
        store: Store,
        clock: Clock,
        *,
        workspace: str,
        outage_after: float,
        channels: Sequence[AlertChannel] = (),
    ) -> None:
        self.store = store
        self.clock = clock
        self.workspace = workspace
        self.channels = list(channels)
        self.state = Reachability(outage_after)
        self._write_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    def on_response(self, call: str, status: int | None, seconds: float) -> None:  # noqa: ARG002 -- a ResponseHook
        state = self.state
        before = state.down_since  # the outage's start, which an answer makes the state forget
        transition = state.observe(status, self.clock.now())
        if before is None and state.down_since is not None:
            log.debug(
                "workspace.call_failed", workspace=self.workspace, call=call,
                error=state.last_error,
            )
        if transition is None:
            return
        # The outage's start names both its alert and the resolve (dedup keys unique per
        # outage, across restarts too).
        since = (state.down_since if transition == "raise" else before) or self.clock.now()
        alert = self._alert(transition, since)
        if transition == "raise":
            log.warning(
                "workspace.unreachable",
                workspace=self.workspace,
                since=since,
                failures=state.failures,
                error=state.last_error,
            )
        else:
            log.info(
                "workspace.reachable",
                workspace=self.workspace,
                outage_seconds=round(self.clock.now() - since, 3),
            )
        task = asyncio.get_running_loop().create_task(self._write(transition, since, alert))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Wait until every alert already decided is in the outbox (or failed to get there)."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _alert(self, transition: Transition, since: float) -> dict[str, Any]:
        now, state = self.clock.now(), self.state
        if transition == "raise":
            lasted = format_duration(now - since)
            return {
                "event": UNREACHABLE,
                "summary": (
                    f"workspace {self.workspace} unreachable for {lasted} "
                    f"({state.failures} failed calls, last: {state.last_error}); "
                    "rollouts cannot move until it answers"
                ),
                "details": {
                    "reason": f"no answer from the workspace for {lasted}",
                    "workspace": self.workspace,
                    "since": since,
                    "failures": state.failures,
                    "last_error": state.last_error,
                },
            }
        return {
            "event": REACHABLE,
            "summary": (
                f"workspace {self.workspace} answers again after "
                f"{format_duration(now - since)} unreachable"
            ),
            "details": {
                "reason": "the workspace answers again",
                "workspace": self.workspace,
                "since": since,
                "outage_seconds": now - since,
                "resolves": UNREACHABLE,
            },
        }

    async def _write(self, transition: Transition, since: float, alert: dict[str, Any]) -> None:
        async with self._write_lock:
            try:
                rows = await asyncio.to_thread(self._rows, alert, since)
                await asyncio.to_thread(self.store.add_controller_alerts, rows, self.clock.now())
            except (StoreError, ValueError) as exc:
                log.exception("workspace.alert_not_stored", event=alert["event"], error=str(exc))
                self._undo(transition, since)

    def _undo(self, transition: Transition, since: float) -> None:
        """The alert did not reach the outbox: let the next call's outcome decide again."""
        if transition == "raise":
            self.state.alerted = False
        elif self.state.down_since is None:
            self.state.alerted, self.state.down_since = True, since

    def _rows(self, alert: dict[str, Any], since: float) -> list[NewAlert]:
        rows = []
        severity: Severity = "error"  # the resolve too: every channel that took the alert takes it
        for channel in self._all_channels():
            if not channel.takes(severity, alert["event"]):
                continue
            spec = channel.model_dump(mode="json")
            digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]
            rows.append(
                NewAlert(
                    dedup_key=f"controller:{alert['event']}:{self.workspace}:"
                    f"{round(since * 1000)}:{digest}",
                    channel=channel.type,
                    payload={
                        "rollout": "controller",
                        "endpoint": self.workspace,
                        "candidate": None,
                        "baseline": None,
                        "event": alert["event"],
                        "severity": severity,
                        "summary": alert["summary"],
                        "phase": "controller",
                        "details": alert["details"],
                        "channel": spec,
                    },
                )
            )
        return rows

    def _all_channels(self) -> list[AlertChannel]:
        """The default channels, then every active rollout's, each once."""
        channels = {_channel_key(c): c for c in self.channels}
        for record in self.store.list(phases=ACTIVE, limit=1000):
            for raw in record.plan.get("alerts") or []:
                try:
                    channel = AlertChannel.model_validate(raw)
                except ValidationError:
                    continue  # validated when submitted; an odd one is skipped, never fatal
                channels.setdefault(_channel_key(channel), channel)
        return list(channels.values())


def _channel_key(channel: AlertChannel) -> str:
    return json.dumps(channel.model_dump(mode="json"), sort_keys=True)
