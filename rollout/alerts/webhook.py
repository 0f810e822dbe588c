"""The generic webhook channel: one signed JSON document per alert, schema ``rollout.alert/v1``.

Where this sits in the path of a rollout: decision -> outbox row (same transaction) ->
dispatcher -> this notifier -> the user's HTTP receiver. The body is documented, field by field,
in ``rollout/alerts/README.md``, with the way to verify the signature. Receivers deduplicate on
``X-Rollout-Alert-Id`` (equal to the body's ``id``): delivery is at-least-once.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Final

import httpx

from rollout.alerts.notifier import SendContext, header_value, post
from rollout.alerts.payload import AlertPayload, rfc3339

SCHEMA: Final = "rollout.alert/v1"
"""The body's ``schema``; a change that could break a receiver gets a new version."""

ID_HEADER: Final = "X-Rollout-Alert-Id"
SIGNATURE_HEADER: Final = "X-Rollout-Signature"
TIMESTAMP_HEADER: Final = "X-Rollout-Timestamp"
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


def encode_body(body: dict[str, Any]) -> bytes:
    """The exact bytes sent and signed: compact UTF-8 JSON."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """``sha256=<hex HMAC-SHA256 of "<timestamp>.<body>" keyed with the secret>``.

    The timestamp is inside the signed text so that a captured request cannot be replayed
    later with a fresh timestamp; receivers also refuse old timestamps (README).
    """
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


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
        secret = payload.channel.secret
        if secret:
            timestamp = str(int(context.now))
            headers[TIMESTAMP_HEADER] = timestamp
            headers[SIGNATURE_HEADER] = sign(secret, timestamp, body)
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
