"""What secrets look like when shown: alert channel URLs and secrets, receivers' answers.

Where this sits in the path of a rollout: a plan's alert channels carry secrets (a webhook's
HMAC key; a PagerDuty routing key; a Slack or Teams webhook URL, whose path and query are the
credential). They are stored with the plan and used by the alert dispatcher, and nowhere
else: everything that shows a plan or talks about a channel (the API and so the CLI and the
status page, events, logs, the outbox's ``last_error``) goes through these functions first.
Pure.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import urlsplit

REDACTED: Final = "(redacted)"
"""What replaces a secret that is set."""

SECRET_FIELDS: Final = ("secret", "routing_key")
"""A channel's fields that are credentials: a webhook's HMAC key, a PagerDuty integration key."""

EXCERPT_CHARS: Final = 120
"""Longest excerpt of a receiver's answer kept in logs and errors."""

# Token-like runs: keys, signatures, session ids. A receiver's page may echo anything.
_TOKENISH = re.compile(r"[A-Za-z0-9+/=_\-]{24,}")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s\"'<>]+")


def redact_url(url: str) -> str:
    """``scheme://host[:port]/…``: the path of a Slack webhook URL IS its secret."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or "?"
        port = parts.port
    except ValueError:
        return "(unreadable URL)"
    if ":" in host:
        host = f"[{host}]"
    if port is not None:
        host = f"{host}:{port}"
    suffix = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{suffix}"


def redacted_channel(channel: Mapping[str, Any]) -> dict[str, Any]:
    """An alert channel as shown: URL reduced to scheme and host, secrets replaced."""
    shown = dict(channel)
    url = shown.get("url")
    if isinstance(url, str):
        shown["url"] = redact_url(url)
    for key in SECRET_FIELDS:
        if shown.get(key):
            shown[key] = REDACTED
    return shown


def redacted_plan(plan: Mapping[str, Any]) -> dict[str, Any]:
    """A stored plan as shown: every alert channel and hook redacted, the rest as it is."""
    shown = dict(plan)
    alerts = shown.get("alerts")
    if isinstance(alerts, list):
        shown["alerts"] = [
            redacted_channel(item) if isinstance(item, Mapping) else item for item in alerts
        ]
    hooks = shown.get("hooks")
    if isinstance(hooks, Mapping):
        shown["hooks"] = {
            name: redacted_channel(hook) if isinstance(hook, Mapping) else hook
            for name, hook in hooks.items()
        }
    return shown


def excerpt(text: str, limit: int = EXCERPT_CHARS) -> str:
    """A short, redacted excerpt of a receiver's answer: one line, URLs reduced to their
    host, token-like runs replaced, cut at ``limit`` characters."""
    line = " ".join(text.split())
    line = _URL.sub(lambda match: redact_url(match.group(0)), line)
    line = _TOKENISH.sub("…", line)
    return line if len(line) <= limit else line[: limit - 1] + "…"
