"""The generic webhook channel: one signed JSON document per alert, schema ``rollout.alert/v1``.

Where this sits in the path of a rollout: decision -> outbox row (same transaction) ->
dispatcher -> this notifier -> the user's HTTP receiver. The body is documented, field by field,
in ``rollout/alerts/README.md``, with the way to verify the signature. Receivers deduplicate on
``X-Rollout-Alert-Id`` (equal to the body's ``id``): delivery is at-least-once.
"""

from __future__ import annotations

from typing import Any, Final

import httpx

from rollout.alerts.notifier import SendContext, header_value, post
from rollout.alerts.payload import AlertPayload, rfc3339
from rollout.signing import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    encode_body,
    sign,
    signature_headers,
)

__all__ = [
    "EVENT_HEADER",
    "ID_HEADER",
    "SCHEMA",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "WebhookNotifier",
    "encode_body",
    "sign",
    "webhook_body",
]

SCHEMA: Final = "rollout.alert/v1"
"""The body's ``schema``; a change that could break a receiver gets a new version."""

ID_HEADER: Final = "X-Rollout-Alert-Id"
EVENT_HEADER: Final = "X-Rollout-Event"


def webhook_body(payload: AlertPayload, now: float) -> dict[str, Any]:
    """The JSON document sent for ``payload`` (the channel itself, with its secret, stays out)."""
    return {
        "schema": SCHEMA,
        "id": payload.id,
        "rollout": payload.rollout,
        "endpoint": payload.endpoint,
        "candidate": payload.candidate,
        "baseline": payload.baseline,
        "event": payload.event,
        "severity": payload.severity,
        "summary": payload.summary,
        "phase": payload.phase,
        "details": payload.details,
        "occurred_at": rfc3339(payload.occurred_at),
        "sent_at": rfc3339(now),
        "attempt": payload.attempt,
    }


class WebhookNotifier:
    """POSTs ``webhook_body`` as JSON, signed when the channel has a ``secret``."""

    channel_type: Final = "webhook"
    wants_rollout_state: Final = False

    def __init__(self, http: httpx.AsyncClient, *, timeout: float = 10.0) -> None:
        self.http = http
        self.timeout = timeout

    def request_parts(
        self, payload: AlertPayload, context: SendContext
    ) -> tuple[bytes, dict[str, str]]:
        """The body bytes and the headers of the request for ``payload``."""
        body = encode_body(webhook_body(payload, context.now))
        headers = {ID_HEADER: header_value(payload.id), EVENT_HEADER: payload.event}
        headers.update(signature_headers(payload.channel.secret, context.now, body))
        return body, headers

    async def send(self, payload: AlertPayload, context: SendContext) -> None:
        body, headers = self.request_parts(payload, context)
        await post(
            self.http,
            payload.channel.url,
            content=body,
            headers=headers,
            request_timeout=self.timeout,
            now=context.now,
            what=self.channel_type,
        )
