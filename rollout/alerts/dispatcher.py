"""The outbox dispatcher: drains alert rows to their channels, at least once, never in the way.

Where this sits in the path of a rollout: every decision that alerts writes its outbox rows in
the same transaction as its events (``Store.commit``), so an alert exists exactly when its
decision does, and the engine never waits on a receiver. ``AlertDispatcher.run`` (one of the
daemon's root tasks) then loops: claim due rows under a lease (``Store.claim_alerts``), send
them concurrently through the notifier of their channel type, and record each outcome
(``mark_delivered``, or ``mark_failed`` with the time of the next attempt).

Guarantees, and where each comes from:

- At least once: a row leaves the outbox only through ``mark_delivered``, after a 2xx. A
  dispatcher killed between the send and the mark loses nothing: the lease runs out and the row
  is sent again, with the same id (``X-Rollout-Alert-Id``, Alertmanager's label set), so
  receivers can deduplicate.
- Deduplicated: the outbox refuses a second row with the same dedup key (a replayed commit), and
  a claim hides a row from every other dispatcher (threads, processes, replicas) for the lease.
  A batch is never larger than the number of concurrent sends, and every send is bounded by
  ``settings.timeout``, which must be shorter than the lease: no claimed row waits in a queue
  while its lease runs out.
- Nothing dropped silently: a failure is retried with exponential backoff and jitter
  (``initial_backoff``, doubling, at most ``max_backoff``; a ``Retry-After`` is honoured as the
  least wait); a non-retryable one (a 400 from a misconfigured receiver, a row that cannot be
  rendered) is retried too, at ``max_backoff``, so a receiver fixed later still gets the alert.
  Every failure is logged with the receiver's answer and kept in the row's ``last_error``.
  The one exception is a ``permanent`` failure (PagerDuty's 400: its API says the event will
  never be accepted, and the row would send the same bytes again): the row stays in the
  outbox undelivered (counted by ``rollout_alerts_pending``), its ``last_error`` starting with
  ``PERMANENT_PREFIX``, never claimed again (``next_attempt_at`` = ``NEVER``), logged as an
  error (``alerts.delivery_refused``).
- Never in the way: one bad row, a notifier bug or a store outage is logged and the loop goes
  on; ``run`` returns only when asked to stop.

``on_delivery(channel_type, outcome)`` reports each attempt for the controller's metrics
(``rollout_alerts_total{channel,outcome}``): ``delivered``; ``retry`` (a retryable failure);
``failed`` (a non-retryable one, retried later all the same unless permanent).
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable, Mapping
from typing import Final

import httpx
import structlog
from pydantic import ValidationError

from rollout.alerts.alertmanager import AlertmanagerNotifier
from rollout.alerts.errors import (
    ChannelConfigError,
    DeliveryError,
    MalformedAlert,
    ReceiverUnreachable,
)
from rollout.alerts.hooks import HookNotifier
from rollout.alerts.notifier import MAX_RETRY_AFTER, Notifier, SendContext, redact_url
from rollout.alerts.pagerduty import PagerDutyNotifier
from rollout.alerts.payload import AlertPayload
from rollout.alerts.slack import SlackNotifier
from rollout.alerts.targets import TargetPolicy
from rollout.alerts.teams import TeamsNotifier
from rollout.alerts.webhook import WebhookNotifier
from rollout.clock import Clock
from rollout.plan import AlertChannel
from rollout.settings import AlertSettings
from rollout.store.base import Store
from rollout.store.model import OutboxAlert

log = structlog.get_logger("rollout.alerts")

OnDelivery = Callable[[str, str], None]
"""``on_delivery(channel_type, outcome)`` with outcome ``delivered``, ``retry`` or ``failed``."""

DELIVERED: Final = "delivered"
RETRY: Final = "retry"
FAILED: Final = "failed"

DEFAULT_CONCURRENCY: Final = 8

NEVER: Final = 253_402_300_799.0
"""``next_attempt_at`` of an alert refused for good (9999-12-31T23:59:59Z): never claimed."""

PERMANENT_PREFIX: Final = "refused for good, not sent again: "
"""How the outbox's ``last_error`` of such an alert starts."""

# Longest error text kept in the outbox row: enough for the receiver's answer, not a whole page.
_MAX_STORED_ERROR = 1000


def parse_channels(text: str) -> list[AlertChannel]:
    """The default channels from ``AlertSettings.channels``: a JSON list of channel objects.

    An empty setting means no default channel. Every bad item is reported at once, by index,
    type and redacted URL (a Slack URL is a secret), in one ``ChannelConfigError``; a channel
    listed twice (same type, URL and routing key) is refused too, since every rollout would
    alert there twice.
    """
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ChannelConfigError(
            [f"not JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})"]
        ) from exc
    if not isinstance(data, list):
        raise ChannelConfigError(
            [f"expected a JSON list of channel objects, got a JSON {_json_kind(data)}"]
        )
    channels: list[AlertChannel] = []
    problems: list[str] = []
    seen: dict[tuple[str, str, str | None], int] = {}
    for index, item in enumerate(data):
        name = f"channel {index} ({_describe(item)})"
        try:
            channel = AlertChannel.model_validate(item)
        except ValidationError as exc:
            for error in exc.errors():
                where = ".".join(str(part) for part in error["loc"]) or "item"
                problems.append(f"{name}: {where}: {error['msg']}")
            continue
        key = (channel.type, channel.url, channel.routing_key)
        if key in seen:
            same = "type, url and routing_key" if channel.routing_key else "type and url"
            problems.append(f"{name}: same {same} as channel {seen[key]}")
            continue
        seen[key] = index
        channels.append(channel)
    if problems:
        raise ChannelConfigError(problems)
    return channels


def _json_kind(value: object) -> str:
    kinds = {dict: "object", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _describe(item: object) -> str:
    if not isinstance(item, dict):
        return f"a JSON {_json_kind(item)}, not an object"
    kind = item.get("type", "no type")
    url = item.get("url")
    return f"{kind} {redact_url(url)}" if isinstance(url, str) else str(kind)


def retry_delay(
    attempt: int,
    *,
    initial: float,
    maximum: float,
    rng: random.Random,
    retryable: bool = True,
    retry_after: float | None = None,
) -> float:
    """Seconds until the next attempt after failed attempt number ``attempt`` (1 = the first).

    Retryable: ``initial * 2 ** (attempt - 1)``, at most ``maximum``, with "equal jitter" (a
    uniform draw in the upper half): jitter spreads alerts that failed together, and the lower
    half stays a real pause for a receiver that is down, where full jitter could retry at once.
    Not retryable: ``maximum``. A ``retry_after`` (the receiver's ``Retry-After``) is honoured as
    the least wait, even above ``maximum``, up to a day.
    """
    maximum = max(maximum, initial)
    if retryable:
        exponent = min(max(attempt - 1, 0), 60)  # beyond 2**60 the cap applies anyway
        base = min(maximum, initial * 2.0**exponent)
        delay = rng.uniform(base / 2, base)
    else:
        delay = maximum
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def target_policy(settings: AlertSettings) -> TargetPolicy:
    """The alert targets ``settings`` allow (``ValueError`` names a bad ``allowed_hosts``)."""
    return TargetPolicy.parse(settings.allowed_hosts, allow_private=settings.allow_private)


def default_notifiers(http: httpx.AsyncClient, settings: AlertSettings) -> dict[str, Notifier]:
    """One notifier per channel type, sharing the injected HTTP client."""
    notifiers: list[Notifier] = [
        WebhookNotifier(http, timeout=settings.timeout),
        SlackNotifier(http, timeout=settings.timeout),
        AlertmanagerNotifier(http, timeout=settings.timeout),
        HookNotifier(http, timeout=settings.timeout),
        TeamsNotifier(http, timeout=settings.timeout, public_url=settings.public_url),
        PagerDutyNotifier(http, timeout=settings.timeout, public_url=settings.public_url),
    ]
    return {notifier.channel_type: notifier for notifier in notifiers}


class AlertDispatcher:
    """Claims due outbox rows, delivers them through their channel's notifier, records outcomes.

    ``store`` is synchronous and called through ``asyncio.to_thread``; ``http`` is shared by the
    notifiers (its own timeout is overridden per request by ``settings.timeout``); ``clock``
    stamps claims and retry times, so tests drive retries on a ``FakeClock``. ``notifiers``
    replaces the default notifier per channel type (for example an ``AlertmanagerNotifier``
    with a ``generator_url``); ``concurrency`` bounds both the batch claimed at once and the
    sends in flight; ``rng`` makes the jitter reproducible; ``targets`` says where alerts may
    go (default: from ``settings.allowed_hosts`` and ``settings.allow_private``), checked
    before every send.
    """

    def __init__(
        self,
        store: Store,
        http: httpx.AsyncClient,
        clock: Clock,
        settings: AlertSettings,
        *,
        on_delivery: OnDelivery | None = None,
        notifiers: Mapping[str, Notifier] | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
        rng: random.Random | None = None,
        targets: TargetPolicy | None = None,
    ) -> None:
        if settings.lease <= settings.timeout:
            # Otherwise a slow delivery could be claimed by a second dispatcher and sent twice.
            raise ValueError(
                f"the alert lease ({settings.lease:g} s) must be longer than the delivery "
                f"timeout ({settings.timeout:g} s)"
            )
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.store = store
        self.clock = clock
        self.settings = settings
        self.concurrency = concurrency
        self.targets = targets if targets is not None else target_policy(settings)
        self._on_delivery = on_delivery
        self._notifiers = dict(default_notifiers(http, settings))
        if notifiers is not None:
            self._notifiers.update(notifiers)
        self._rng = rng if rng is not None else random.Random()
        self._delivered = 0
        self._store_failing = False

    # ---- the loop -------------------------------------------------------------------------

    async def run_once(self) -> int:
        """Claim up to ``concurrency`` due rows, send them concurrently, record each outcome.

        Returns how many rows were claimed (0: nothing was due). Delivery failures never raise;
        a failure of the claim itself (the store) does, for the caller to log and retry.
        """
        claimed = await asyncio.to_thread(
            self.store.claim_alerts, self.clock.now(), self.concurrency, self.settings.lease
        )
        if claimed:
            # Started oldest first (claims come back in outbox order), so that a receiver
            # usually sees a rollout's alerts in the order they happened.
            await asyncio.gather(*(self._deliver(alert) for alert in claimed))
        return len(claimed)

    async def run(self, stop: asyncio.Event) -> None:
        """Deliver until ``stop`` is set: a full batch is followed at once by the next one (a
        backlog drains), otherwise the loop waits ``poll_interval``. Never raises but on
        cancellation."""
        log.info("alerts.dispatcher_started", concurrency=self.concurrency)
        while not stop.is_set():
            claimed = 0
            try:
                claimed = await self.run_once()
            except Exception as exc:  # noqa: BLE001 -- a store outage must not end the loop
                self._claim_failed(exc)
            else:
                if self._store_failing:
                    self._store_failing = False
                    log.info("alerts.store_recovered")
            if claimed >= self.concurrency:
                continue
            await self._pause(stop)
        log.info("alerts.dispatcher_stopped")

    async def flush(self, timeout: float) -> int:  # noqa: ASYNC109 -- a shutdown budget, not a per-call wait
        """Deliver what is due now, for at most ``timeout`` seconds (at shutdown, after ``run``
        stopped); return how many alerts were delivered.

        A send cut short by the timeout stays claimed until its lease runs out and is then
        delivered by whichever dispatcher runs next: nothing is lost, it may arrive twice.
        """
        before = self._delivered
        if timeout <= 0:
            return 0
        try:
            async with asyncio.timeout(timeout):
                while await self.run_once() >= self.concurrency:
                    pass
        except TimeoutError:
            log.warning("alerts.flush_timeout", timeout=timeout)
        except Exception as exc:  # noqa: BLE001 -- shutdown goes on whatever the store says
            self._claim_failed(exc)
        return self._delivered - before

    async def _pause(self, stop: asyncio.Event) -> None:
        # Sleep on the injected clock (a FakeClock advances instead of waiting) but wake up as
        # soon as stop is set, so shutdown never waits out a poll interval.
        sleeper = asyncio.ensure_future(self.clock.sleep(self.settings.poll_interval))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            stopper.cancel()

    def _claim_failed(self, exc: Exception) -> None:
        # Log the first failure of a streak with its traceback, then quietly until recovery:
        # a database down for an hour must not write thousands of tracebacks.
        if not self._store_failing:
            self._store_failing = True
            log.error("alerts.claim_failed", error=str(exc), exc_info=exc)
        else:
            log.debug("alerts.claim_failed", error=str(exc))

    # ---- one alert ------------------------------------------------------------------------

    async def _deliver(self, alert: OutboxAlert) -> None:
        try:
            payload = AlertPayload.from_outbox(alert)
            if not payload.passes_channel_filter:
                # The runner writes only rows that pass their channel's filter; a row that does
                # not is settled without sending, loudly, rather than sent against the filter.
                log.warning(
                    "alerts.filtered",
                    alert=alert.dedup_key,
                    channel=alert.channel,
                    severity=payload.severity,
                    channel_severity=payload.channel_severity,
                )
                await self._mark_delivered(alert)
                return
            await self._send(alert, payload)
        except DeliveryError as exc:
            await self._failed(alert, exc)
            return
        except Exception as exc:  # a bug with one alert must not stop the others
            log.exception("alerts.notifier_crashed", alert=alert.dedup_key)
            error = DeliveryError(f"unexpected {type(exc).__name__}: {exc}", retryable=False)
            await self._failed(alert, error)
            return
        if await self._mark_delivered(alert):
            log.info(
                "alerts.delivered",
                alert=alert.dedup_key,
                channel=alert.channel,
                rollout=alert.rollout_id,
                attempt=alert.attempts,
            )
        self._delivered += 1
        self._report(alert.channel, DELIVERED)

    async def _send(self, alert: OutboxAlert, payload: AlertPayload) -> None:
        notifier = self._notifiers.get(alert.channel)
        if notifier is None:
            raise MalformedAlert(f"no notifier for channel type {alert.channel!r}")
        ended = False
        # The controller's own alerts (no rollout) have no rollout to end.
        if notifier.wants_rollout_state and not payload.terminal and alert.rollout_id:
            ended = await self._rollout_ended(alert.rollout_id)
        # Checked again at every delivery, after resolution: the plan was checked when it was
        # submitted, but a name may point elsewhere since (the daemon's client also connects
        # only to the addresses it checked, see targets.PinnedBackend).
        await self.targets.addresses(payload.channel.url)
        context = SendContext(now=self.clock.now(), rollout_ended=ended)
        timeout = self.settings.timeout
        try:
            async with asyncio.timeout(timeout):
                await notifier.send(payload, context)
        except TimeoutError as exc:
            raise ReceiverUnreachable(
                f"{alert.channel} delivery took longer than {timeout:g} s"
            ) from exc

    async def _rollout_ended(self, rollout_id: str) -> bool:
        try:
            record = await asyncio.to_thread(self.store.get, rollout_id)
        except Exception as exc:  # noqa: BLE001 -- unknown: send the alert as it is
            log.debug("alerts.rollout_lookup_failed", rollout=rollout_id, error=str(exc))
            return False
        return record.terminal

    async def _failed(self, alert: OutboxAlert, exc: DeliveryError) -> None:
        facts = {
            "alert": alert.dedup_key,
            "channel": alert.channel,
            "rollout": alert.rollout_id,
            "attempt": alert.attempts,
            "status": exc.status,
            "error": str(exc),
        }
        if exc.permanent:
            # The receiver's API says this request will never be accepted: kept, not resent.
            log.error(
                "alerts.delivery_refused",
                **facts,
                consequence="not sent again; the alert stays undelivered in the outbox",
            )
            next_attempt = NEVER
            error = PERMANENT_PREFIX + str(exc)
        else:
            delay = retry_delay(
                alert.attempts,
                initial=self.settings.initial_backoff,
                maximum=self.settings.max_backoff,
                rng=self._rng,
                retryable=exc.retryable,
                retry_after=exc.retry_after,
            )
            log.warning(
                "alerts.delivery_failed",
                **facts,
                retryable=exc.retryable,
                retry_in=round(delay, 3),
            )
            next_attempt = self.clock.now() + delay
            error = str(exc)
        try:
            await asyncio.to_thread(
                self.store.mark_failed, alert.id, error[:_MAX_STORED_ERROR], next_attempt
            )
        except Exception as store_exc:  # the lease runs out and the alert is retried anyway
            log.exception("alerts.mark_failed_failed", alert=alert.dedup_key, error=str(store_exc))
        self._report(alert.channel, RETRY if exc.retryable else FAILED)

    async def _mark_delivered(self, alert: OutboxAlert) -> bool:
        try:
            await asyncio.to_thread(self.store.mark_delivered, alert.id, self.clock.now())
        except Exception as exc:  # it will be sent again: at-least-once
            log.exception(
                "alerts.mark_delivered_failed",
                alert=alert.dedup_key,
                error=str(exc),
                consequence="delivered again after the lease; receivers dedupe on the id",
            )
            return False
        return True

    def _report(self, channel: str, outcome: str) -> None:
        if self._on_delivery is None:
            return
        try:
            self._on_delivery(channel, outcome)
        except Exception:  # a metrics hook must not break delivery
            log.exception("alerts.on_delivery_failed", channel=channel, outcome=outcome)
