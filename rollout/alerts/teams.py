"""The Microsoft Teams channel: one Adaptive Card per alert, posted to a Workflows webhook.

Where this sits in the path of a rollout: decision -> outbox row (same transaction) ->
dispatcher -> this notifier -> the channel's ``url``, a Teams "Workflows" webhook (a Power
Automate flow started by "When a Teams webhook request is received", which posts the card to a
channel or chat; the Office 365 connectors' incoming webhooks are retired). The body is the
message envelope those flows read::

    {"type": "message",
     "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive",
                      "contentUrl": null,
                      "content": {"$schema": ..., "type": "AdaptiveCard", "version": "1.4",
                                  "body": [...], "actions": [...]}}]}

The card: a heading with the severity and what happened on which endpoint, the summary, a
FactSet (endpoint, rollout, candidate, baseline, phase, severity, reason), and for a rollback
or a failure the checks' numbers as a second FactSet and the tail of the candidate's build log;
an ``Action.OpenUrl`` to the status page when ``AlertSettings.public_url`` is set; a last line
with the alert id. A flow answers 202 (any 2xx is delivered). Texts are cut so that a card
stays far below Teams' 28 KB message limit. Teams cannot deduplicate: in the rare redelivery
after a crash the card shows twice, with the same alert id.
"""

from __future__ import annotations

from typing import Any, Final

from rollout.alerts.notifier import LinkingNotifier, SendContext, post_json
from rollout.alerts.payload import (
    EXPLAINED_EVENTS,
    AlertPayload,
    check_line,
    failing_checks,
    rfc3339,
    tail,
    truncate,
)

CARD_SCHEMA: Final = "http://adaptivecards.io/schemas/adaptive-card.json"
CARD_VERSION: Final = "1.4"
CARD_CONTENT_TYPE: Final = "application/vnd.microsoft.card.adaptive"

TEXT_LIMIT: Final = 2000
"""Longest text block (summary, reason) on a card."""
LOG_LIMIT: Final = 2000
"""Longest build-log tail on a card (its end, where the error is)."""
MAX_CHECKS: Final = 10
"""Checks shown at most; the rest are counted."""

# Adaptive Card colours by severity, and the label the heading starts with.
_COLOURS: Final = {"info": "Accent", "warn": "Warning", "error": "Attention"}
_LABELS: Final = {"info": "INFO", "warn": "WARNING", "error": "ERROR"}


def _text(text: str, **style: Any) -> dict[str, Any]:
    return {"type": "TextBlock", "text": text, "wrap": True, **style}


def _facts(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    return {"type": "FactSet", "facts": [{"title": t, "value": v} for t, v in pairs]}


def _checks(payload: AlertPayload) -> list[dict[str, Any]]:
    heading, checks = failing_checks(payload.verdict)
    if not checks:
        return []
    pairs = [
        (str(check.get("check") or check.get("metric") or "check"), check_line(check))
        for check in checks[:MAX_CHECKS]
    ]
    if len(checks) > MAX_CHECKS:
        pairs.append(("…", f"and {len(checks) - MAX_CHECKS} more"))
    return [_text(heading, weight="Bolder", spacing="Medium"), _facts(pairs)]


def adaptive_card(payload: AlertPayload, *, public_url: str = "") -> dict[str, Any]:
    """The Adaptive Card (1.4) for ``payload``."""
    facts = [
        ("Endpoint", payload.endpoint),
        ("Rollout", payload.rollout),
        ("Candidate", payload.candidate or "n/a"),
        ("Baseline", payload.baseline or "n/a"),
        ("Phase", payload.phase),
        ("Severity", payload.severity),
    ]
    if payload.reason:
        facts.append(("Reason", truncate(payload.reason, TEXT_LIMIT)))
    verdict = payload.verdict
    if verdict and verdict.get("outcome"):
        facts.append(("Verdict", str(verdict["outcome"])))
    body: list[dict[str, Any]] = [
        _text(
            f"{_LABELS[payload.severity]} · {payload.title}: {payload.endpoint}",
            size="Large",
            weight="Bolder",
            color=_COLOURS[payload.severity],
            style="heading",
        ),
        _text(truncate(payload.summary, TEXT_LIMIT)),
        _facts(facts),
    ]
    if payload.event in EXPLAINED_EVENTS:
        body.extend(_checks(payload))
    if payload.build_logs_tail:
        body.append(_text("Build log (tail)", weight="Bolder", spacing="Medium"))
        body.append(_text(tail(payload.build_logs_tail, LOG_LIMIT), fontType="Monospace"))
    body.append(
        _text(
            f"rollout {payload.rollout} · {payload.event} at {rfc3339(payload.occurred_at)} · "
            f"alert id {payload.id}",
            size="Small",
            isSubtle=True,
            spacing="Medium",
        )
    )
    card: dict[str, Any] = {
        "$schema": CARD_SCHEMA,
        "type": "AdaptiveCard",
        "version": CARD_VERSION,
        "msteams": {"width": "Full"},
        "body": body,
    }
    if public_url:
        card["actions"] = [
            {"type": "Action.OpenUrl", "title": "Open the status page", "url": public_url}
        ]
    return card


def teams_message(payload: AlertPayload, *, public_url: str = "") -> dict[str, Any]:
    """The Workflows webhook body for ``payload``: a message with the card as its attachment."""
    return {
        "type": "message",
        "attachments": [
            {
                "contentType": CARD_CONTENT_TYPE,
                "contentUrl": None,
                "content": adaptive_card(payload, public_url=public_url),
            }
        ],
    }


class TeamsNotifier(LinkingNotifier):
    """POSTs ``teams_message`` to the channel's Workflows webhook URL."""

    channel_type: Final = "teams"
    wants_rollout_state: Final = False

    async def send(self, payload: AlertPayload, context: SendContext) -> None:
        await post_json(
            self.http,
            payload.channel.url,
            teams_message(payload, public_url=self.public_url),
            request_timeout=self.timeout,
            now=context.now,
            what=self.channel_type,
        )
