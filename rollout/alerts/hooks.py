"""The plan's hooks on the wire: one signed JSON body, schema ``rollout.hook/v1``, for all four.

Where this sits in the path of a rollout:

- Gates (``pre_rollout``, ``confirm_promotion``): ``decide`` asks for a call (the ``CallGate``
  effect, committed with the gate's state first); the runner calls ``call_gate`` here and feeds
  the ``GateReply`` back into ``decide`` as the gate's outcome. A gate call is a question the
  rollout waits on, so it is made by the runner, bounded by the hook's ``timeout`` and
  ``retries``, and never queued.
- Notifications (``post_rollout``, ``on_rollback``): ``decide`` names them in its decision; the
  runner writes one alert-outbox row per notification (channel ``hook``) in the decision's own
  transaction, and the dispatcher delivers it with ``HookNotifier``. The outbox is what already
  gives alerts their guarantees, and a notification needs exactly those: it exists exactly when
  the decision that ended the rollout (or applied its rollback) does, a controller killed
  before the receiver's 2xx sends it again with the same id after the claim's lease (at least
  once), a replayed decision writes no second row, and the engine never waits on a receiver. A
  table of its own would have had to repeat all of that (claims, leases, backoff) over both
  store backends.

Both kinds go through ``rollout.alerts.notifier.post`` (the one place ``httpx`` is read), are
signed by ``rollout.signing`` as webhook alerts are, and are checked against the alert
``TargetPolicy`` before every request (the HTTP client connects only to checked addresses).

What a gate call can come to (``GateReply.answer``)::

    POST <url> (attempt 1 .. 1 + retries)
    ├── URL refused (TargetRefused) ........................ "unreachable", not retried
    ├── 2xx
    │   ├── no body, not a JSON object, {"proceed": true} .. "proceed"
    │   ├── {"wait": true, "reason": ...} .................. "wait" (asked again after interval)
    │   └── {"proceed": false, "reason": ...} .............. "refused"
    ├── other 4xx .......................................... "refused", not retried
    └── 408, 429, 5xx, timeout, connection failure ......... retried; once retries are spent:
        408/429/5xx "refused", timeout "timeout", connection failure "unreachable"
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, replace
from typing import Any, Final

import httpx

from rollout.alerts.errors import (
    DeliveryError,
    ReceiverRejected,
    ReceiverTimeout,
    ReceiverUnreachable,
    TargetRefused,
)
from rollout.alerts.notifier import SendContext, header_value, post
from rollout.alerts.payload import HOOK_CHANNEL, AlertPayload, rfc3339
from rollout.alerts.targets import TargetPolicy
from rollout.clock import Clock
from rollout.plan import GateHook, HookCall
from rollout.redaction import excerpt
from rollout.signing import encode_body, signature_headers
from rollout.vocabulary import GateAnswer

SCHEMA: Final = "rollout.hook/v1"
"""The body's ``schema``; a change that could break a receiver gets a new version."""

ID_HEADER: Final = "X-Rollout-Hook-Id"
HOOK_HEADER: Final = "X-Rollout-Hook"

MAX_RETRY_PAUSE: Final = 8.0
"""Longest pause between two attempts of one gate call (1 s, doubling)."""

_MAX_REASON_CHARS = 500


@dataclass(frozen=True)
class HookMessage:
    """What one hook request says. ``id`` is the same on every attempt of one call (a gate)
    or one notification (its outbox row): receivers deduplicate on it."""

    id: str
    hook: str
    rollout: str
    endpoint: str
    candidate: str | None
    baseline: str | None
    phase: str
    summary: str
    details: dict[str, Any]
    occurred_at: float
    attempt: int = 1

    @classmethod
    def of(cls, payload: AlertPayload) -> HookMessage:
        """A notification's outbox row as a hook message (its ``event`` is the hook's name)."""
        return cls(
            id=payload.id,
            hook=payload.event,
            rollout=payload.rollout,
            endpoint=payload.endpoint,
            candidate=payload.candidate,
            baseline=payload.baseline,
            phase=payload.phase,
            summary=payload.summary,
            details=payload.details,
            occurred_at=payload.occurred_at,
            attempt=payload.attempt,
        )


def hook_body(message: HookMessage, now: float) -> dict[str, Any]:
    """The JSON document a hook receives (README, "Gates and hooks")."""
    return {
        "schema": SCHEMA,
        "id": message.id,
        "hook": message.hook,
        "rollout": message.rollout,
        "endpoint": message.endpoint,
        "candidate": message.candidate,
        "baseline": message.baseline,
        "phase": message.phase,
        "summary": message.summary,
        "details": message.details,
        "occurred_at": rfc3339(message.occurred_at),
        "sent_at": rfc3339(now),
        "attempt": message.attempt,
    }


def request_parts(
    message: HookMessage, secret: str | None, now: float
) -> tuple[bytes, dict[str, str]]:
    """The body bytes and headers of one request, signed when the hook has a ``secret``."""
    body = encode_body(hook_body(message, now))
    headers = {ID_HEADER: header_value(message.id), HOOK_HEADER: message.hook}
    headers.update(signature_headers(secret, now, body))
    return body, headers


# ---- notifications: from the outbox ----------------------------------------------------------


class HookNotifier:
    """Delivers ``post_rollout`` and ``on_rollback`` rows of the outbox (channel ``hook``).

    One request per attempt, bounded by the hook's ``timeout`` (and the dispatcher's own). The
    dispatcher retries a failure at its backoff until the receiver answers 2xx; after the
    hook's ``retries`` further attempts, failures are reported as not retryable, so the row is
    retried at the dispatcher's longest backoff: never dropped.
    """

    channel_type: Final = HOOK_CHANNEL
    wants_rollout_state: Final = False

    def __init__(self, http: httpx.AsyncClient, *, timeout: float = 10.0) -> None:
        self.http = http
        self.timeout = timeout

    async def send(self, payload: AlertPayload, context: SendContext) -> None:
        hook = payload.channel
        if not isinstance(hook, HookCall):  # pragma: no cover - the dispatcher routes by type
            raise TypeError(f"not a hook row: {payload.id}")
        body, headers = request_parts(HookMessage.of(payload), hook.secret, context.now)
        try:
            await post(
                self.http,
                hook.url,
                content=body,
                headers=headers,
                request_timeout=min(hook.timeout, self.timeout),
                now=context.now,
                what=f"{payload.event} hook",
            )
        except DeliveryError as exc:
            if exc.retryable and payload.attempt > hook.retries:
                exc.retryable = False  # the quick retries are spent: the longest backoff now
            raise


# ---- gates: called by the runner ------------------------------------------------------------


@dataclass(frozen=True)
class GateReply:
    """What one gate call came to: the answer, why (the receiver's reason, or what failed),
    the last HTTP status if one answered, and the requests it took."""

    answer: GateAnswer
    reason: str
    status: int | None = None
    attempts: int = 1


async def call_gate(
    http: httpx.AsyncClient,
    targets: TargetPolicy,
    hook: GateHook,
    message: HookMessage,
    *,
    clock: Clock,
) -> GateReply:
    """Ask gate ``message.hook`` at ``hook.url``: up to ``1 + hook.retries`` attempts, each
    bounded by ``hook.timeout``, with a short pause between them (on ``clock``). Never
    raises a delivery error: every failure is an answer (see the module's tree)."""
    name = message.hook
    last: DeliveryError | None = None
    attempts = 0
    for attempt in range(1, hook.retries + 2):
        attempts = attempt
        if attempt > 1:
            await clock.sleep(min(MAX_RETRY_PAUSE, 2.0 ** (attempt - 2)))
        now = clock.now()
        body, headers = request_parts(replace(message, attempt=attempt), hook.secret, now)
        try:
            await targets.addresses(hook.url)
            try:
                async with asyncio.timeout(hook.timeout):
                    response = await post(
                        http,
                        hook.url,
                        content=body,
                        headers=headers,
                        request_timeout=hook.timeout,
                        now=now,
                        what=f"{name} hook",
                    )
            except TimeoutError as exc:
                raise ReceiverTimeout(
                    f"{name} hook: no answer within {hook.timeout:g} s"
                ) from exc
        except TargetRefused as exc:
            return GateReply("unreachable", str(exc), None, attempt)
        except DeliveryError as exc:
            last = exc
            if exc.retryable:
                continue
            return _failure(name, exc, attempt, hook)
        return replace(_read_answer(name, response), attempts=attempt)
    assert last is not None  # noqa: S101 -- the loop ran at least once
    return _failure(name, last, attempts, hook)


def _failure(name: str, exc: DeliveryError, attempts: int, hook: GateHook) -> GateReply:
    tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
    if isinstance(exc, ReceiverRejected):
        return GateReply("refused", f"{exc} ({tries})", exc.status, attempts)
    if isinstance(exc, ReceiverTimeout):
        return GateReply(
            "timeout",
            f"{name} hook timed out: no answer within {hook.timeout:g} s, {tries}",
            None,
            attempts,
        )
    if isinstance(exc, ReceiverUnreachable):
        return GateReply("unreachable", f"{exc} ({tries})", None, attempts)
    return GateReply("unreachable", f"{name} hook: {exc} ({tries})", exc.status, attempts)


def _read_answer(name: str, response: httpx.Response) -> GateReply:
    """A 2xx answer's word: the JSON object's ``proceed`` / ``wait`` and ``reason``."""
    status = response.status_code
    try:
        data = json.loads(response.content) if response.content.strip() else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        return GateReply("proceed", f"{name} hook answered {status}", status)
    reason = data.get("reason")
    said = "" if reason is None else excerpt(str(reason), _MAX_REASON_CHARS)
    if data.get("wait") is True:
        return GateReply("wait", said or f"{name} hook asked to wait", status)
    if data.get("proceed") is False:
        return GateReply("refused", said or f"{name} hook said no", status)
    return GateReply("proceed", said or f"{name} hook answered {status}", status)
