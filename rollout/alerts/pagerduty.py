"""The PagerDuty channel: Events API v2 incidents, opened by a rollout's trouble, closed by its end.

Where this sits in the path of a rollout: decision -> outbox row (same transaction) ->
dispatcher -> this notifier -> ``POST https://events.pagerduty.com/v2/enqueue`` (the channel's
``url`` when it names another, e.g. PagerDuty's EU service), one request per event, each
carrying the channel's ``routing_key``.

Identity. PagerDuty deduplicates on ``dedup_key``, as Alertmanager does on labels, so the key
is what Alertmanager's labels are, minus the severity: ``rollout/<rollout>/<endpoint>/<event>``
(``rollout/3f9c2a1b7d4e/ads-endpoint/paused``). Every delivery of one alert, and every later
alert of the same kind for the same rollout, lands on the same PagerDuty alert while it is
open; a resolve with that key closes it.

Lifecycle, Alertmanager's (``alertmanager.py``) with one difference that PagerDuty forces:

- A non-terminal alert (started, step advanced, paused, rolling back, deadline passed,
  analysis error) sends ``trigger``.
- A terminal alert (succeeded, rolled back, aborted, failed) sends ``resolve`` for every
  non-terminal kind of its rollout (PagerDuty drops resolves of keys it never saw).
- A non-terminal alert delivered after its rollout ended (a retried ``paused``) sends only the
  resolve of its own key: it must not open an incident about a finished rollout.
- The controller's ``workspace_reachable`` sends only the resolve of ``workspace_unreachable``.
- The difference: an Alertmanager alert ends by itself after an hour, a PagerDuty incident
  never does. So a terminal alert triggers its own incident only when it is an ``error`` (rolled
  back, failed: a person must look, and closes it); a rollout that succeeded or that a person
  aborted only resolves. For the same reason the channel takes every terminal alert whatever
  its ``severity`` (``AlertChannel.takes``): below it, the alert is sent as its resolves alone,
  so that a channel set to ``warn`` still sees a paused rollout's incident closed when the
  rollout succeeds (an ``info`` alert).

Severity: ``info``/``warn``/``error`` become ``info``/``warning``/``error``, and a ``failed``
rollout (the baseline could not be restored: the endpoint may be broken) is ``critical``.

Answers (Events API v2): 202 accepted; 400 the event will never be accepted, not sent again
(``EventRefused``: the row stays in the outbox with the error); 429 and 5xx retried with the
dispatcher's backoff, honouring ``Retry-After`` (``notifier.post``).
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any, Final

from rollout.alerts.errors import EventRefused, MalformedAlert, ReceiverRejected
from rollout.alerts.notifier import LinkingNotifier, SendContext, post_json
from rollout.alerts.payload import (
    NON_TERMINAL_EVENTS,
    SEVERITY_ORDER,
    AlertPayload,
    check_line,
    failing_checks,
    rfc3339,
    tail,
    truncate,
)

SEVERITIES: Final[dict[str, str]] = {"info": "info", "warn": "warning", "error": "error"}
"""The Events API's ``payload.severity`` for each of ours (``failed`` is ``critical``)."""

SUMMARY_LIMIT: Final = 1024
"""The Events API's longest ``payload.summary``."""

DEDUP_KEY_LIMIT: Final = 255
"""The Events API's longest ``dedup_key``."""

TRIGGER: Final = "trigger"
RESOLVE: Final = "resolve"

# custom_details are shown on the incident: a few kilobytes of build log is plenty there.
_LOG_LIMIT: Final = 2000
_CLIENT: Final = "rollout"


def dedup_key(payload: AlertPayload, event: str) -> str:
    """The PagerDuty alert that ``payload``'s rollout raises for ``event`` (at most 255
    characters: a longer one, from a long workspace host, keeps its start and a digest)."""
    key = f"rollout/{payload.rollout}/{payload.endpoint}/{event}"
    if len(key) <= DEDUP_KEY_LIMIT:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{key[: DEDUP_KEY_LIMIT - len(digest) - 1]}#{digest}"


def severity(payload: AlertPayload) -> str:
    return "critical" if payload.event == "failed" else SEVERITIES[payload.severity]


def opens_incident(payload: AlertPayload, context: SendContext) -> bool:
    """Whether ``payload`` is sent as a ``trigger`` (see the module's docstring)."""
    if payload.resolves is not None:
        return False
    if SEVERITY_ORDER[payload.severity] < SEVERITY_ORDER[payload.channel.severity]:
        return False  # a terminal alert below the channel's severity: its resolves only
    if payload.terminal:
        return payload.severity == "error"
    return not context.rollout_ended


def custom_details(payload: AlertPayload) -> dict[str, Any]:
    """What the incident shows besides its summary: the rollout, the reason, the numbers."""
    heading, checks = failing_checks(payload.verdict)
    verdict = payload.verdict or {}
    details: dict[str, Any] = {
        "rollout": payload.rollout,
        "endpoint": payload.endpoint,
        "candidate": payload.candidate,
        "baseline": payload.baseline,
        "event": payload.event,
        "phase": payload.phase,
        "reason": payload.reason,
        "verdict": verdict.get("outcome"),
        "checks": [check_line(check) for check in checks] or None,
        "checks_shown": heading or None,
        "step": payload.details.get("step"),
        "weight": payload.details.get("weight"),
        "build_logs_tail": (
            tail(payload.build_logs_tail, _LOG_LIMIT) if payload.build_logs_tail else None
        ),
        "alert_id": payload.id,
        "occurred_at": rfc3339(payload.occurred_at),
    }
    return {key: value for key, value in details.items() if value is not None}


def pagerduty_events(
    payload: AlertPayload, context: SendContext, *, public_url: str = ""
) -> list[dict[str, Any]]:
    """The Events API v2 bodies for ``payload``, in the order they are sent: its trigger (if
    it opens an incident), then the resolves it carries."""
    routing_key = payload.channel.routing_key
    if not routing_key:
        raise MalformedAlert(f"alert {payload.id!r}: pagerduty channel without routing_key")

    def resolve(event: str) -> dict[str, Any]:
        return {
            "routing_key": routing_key,
            "event_action": RESOLVE,
            "dedup_key": dedup_key(payload, event),
        }

    if payload.resolves is not None:
        return [resolve(payload.resolves)]
    events: list[dict[str, Any]] = []
    if opens_incident(payload, context):
        trigger: dict[str, Any] = {
            "routing_key": routing_key,
            "event_action": TRIGGER,
            "dedup_key": dedup_key(payload, payload.event),
            "payload": {
                "summary": truncate(payload.summary, SUMMARY_LIMIT),
                "source": payload.endpoint,
                "severity": severity(payload),
                "timestamp": rfc3339(payload.occurred_at),
                "component": payload.candidate or payload.endpoint,
                "group": payload.rollout,
                "class": payload.event,
                "custom_details": custom_details(payload),
            },
            "client": _CLIENT,
        }
        if public_url:
            trigger["client_url"] = public_url
            trigger["links"] = [{"href": public_url, "text": "Rollout status page"}]
        events.append(trigger)
    elif not payload.terminal:
        events.append(resolve(payload.event))  # delivered after its rollout ended
    if payload.terminal:
        events.extend(resolve(event) for event in NON_TERMINAL_EVENTS)
    return events


class PagerDutyNotifier(LinkingNotifier):
    """POSTs ``pagerduty_events`` to the channel's Events API URL: the trigger first, then the
    resolves together (independent keys; one slow answer must not make seven).

    ``public_url``: the controller's status page as people reach it, linked from incidents.
    A failed request fails the attempt (a permanent refusal first among several failures); the
    retry sends every event again, which PagerDuty deduplicates (a trigger on an open alert only
    adds to its log; a resolve is idempotent).
    """

    channel_type: Final = "pagerduty"
    wants_rollout_state: Final = True

    async def send(self, payload: AlertPayload, context: SendContext) -> None:
        events = pagerduty_events(payload, context, public_url=self.public_url)
        triggers = [e for e in events if e["event_action"] == TRIGGER]
        resolves = [e for e in events if e["event_action"] != TRIGGER]
        for event in triggers:
            await self._post(payload, event, context)
        results = await asyncio.gather(
            *(self._post(payload, event, context) for event in resolves), return_exceptions=True
        )
        failures = [result for result in results if isinstance(result, BaseException)]
        if failures:
            raise min(failures, key=lambda f: not getattr(f, "permanent", False))

    async def _post(
        self, payload: AlertPayload, event: dict[str, Any], context: SendContext
    ) -> None:
        try:
            await post_json(
                self.http,
                payload.channel.url,
                event,
                request_timeout=self.timeout,
                now=context.now,
                what=self.channel_type,
            )
        except ReceiverRejected as exc:
            if exc.status == 400:
                raise EventRefused(
                    f"{exc} (PagerDuty will never accept this event: not sent again)",
                    status=400,
                ) from exc
            raise
