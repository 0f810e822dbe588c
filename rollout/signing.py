"""How the controller signs what it POSTs to people's receivers: alerts and rollout hooks.

Where this sits in the path of a rollout: the alert webhook (``rollout.alerts.webhook``) and the
plan's hooks (``rollout.alerts.hooks``: gates the runner calls, notifications the outbox
delivers) send a JSON body that a receiver must be able to trust. Both encode it and sign it
here, the one way, so that one verification snippet (``rollout/alerts/README.md``, the main
README's "Gates and hooks") checks either. Pure: no I/O, no imports of the project.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any, Final

SIGNATURE_HEADER: Final = "X-Rollout-Signature"
TIMESTAMP_HEADER: Final = "X-Rollout-Timestamp"


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


def signature_headers(secret: str | None, now: float, body: bytes) -> dict[str, str]:
    """The timestamp and signature headers for ``body`` sent at ``now`` (none without a
    secret)."""
    if not secret:
        return {}
    timestamp = str(int(now))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(secret, timestamp, body)}
