"""The Slack channel: one incoming-webhook message per alert, in Block Kit with a text fallback.

Where this sits in the path of a rollout: decision -> outbox row (same transaction) ->
dispatcher -> this notifier -> a Slack incoming webhook (the channel's ``url``). The message has
a header (what happened, on which endpoint), the summary with the endpoint, rollout, phase,
candidate, baseline and severity as fields, and for a rollback or a failure the checks' numbers
and the tail of the candidate's build log in a code block. Every text is cut to Slack's limits
(header 150 characters, section text 3000, field 2000), keeping the END of a build log, where
the error is.
"""

from __future__ import annotations

from typing import Any, Final

import httpx

from rollout.alerts.notifier import SendContext, post_json
from rollout.alerts.payload import (
    EXPLAINED_EVENTS,
    AlertPayload,
    check_line,
    failing_checks,
    rfc3339,
    tail,
    truncate,
)

HEADER_LIMIT: Final = 150
SECTION_LIMIT: Final = 3000
FIELD_LIMIT: Final = 2000
MAX_FIELDS: Final = 10

_EMOJI: Final = {"info": ":large_blue_circle:", "warn": ":warning:", "error": ":rotating_light:"}


def escape(text: str) -> str:
    """Slack's mrkdwn escaping: only ``&``, ``<`` and ``>`` are control characters."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _mrkdwn(text: str, limit: int = SECTION_LIMIT) -> dict[str, str]:
    return {"type": "mrkdwn", "text": truncate(text, limit)}


def _section(text: str) -> dict[str, Any]:
    return {"type": "section", "text": _mrkdwn(text)}


def _checks_section(payload: AlertPayload) -> dict[str, Any] | None:
    heading, checks = failing_checks(payload.verdict)
    if not checks:
        return None
    text = f"*{heading}*"
    for shown, check in enumerate(checks):
        line = "\n• " + escape(check_line(check))
        rest = len(checks) - shown
        # Leave room for the "and N more" line rather than cutting a check in the middle.
        if len(text) + len(line) > SECTION_LIMIT - 40 and rest > 1:
            text += f"\n…and {rest} more"
            break
        text += line
    return _section(text)


def _log_section(logs: str) -> dict[str, Any]:
    head, fence = "*Build log (tail)*\n```", "```"
    budget = SECTION_LIMIT - len(head) - len(fence)
    # Three backquotes inside the log would close the code block early.
    logs = tail(logs.replace("```", "'''"), budget)
    shown = escape(logs)
    while len(shown) > budget:
        # Escaping lengthens the text: cut the raw log by the excess and escape it again.
        logs = tail(logs, len(logs) - (len(shown) - budget))
        shown = escape(logs)
    return _section(head + shown + fence)


def slack_message(payload: AlertPayload) -> dict[str, Any]:
    """The incoming-webhook body for ``payload``: ``text`` (notifications, old clients) and
    ``blocks``."""
    emoji = _EMOJI[payload.severity]
    fields = [
        ("Endpoint", payload.endpoint),
        ("Rollout", payload.rollout),
        ("Phase", payload.phase),
        ("Candidate", payload.candidate or "n/a"),
        ("Baseline", payload.baseline or "n/a"),
        ("Severity", payload.severity),
    ][:MAX_FIELDS]
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": {
                "type": "plain_text",
                "text": truncate(f"{payload.title}: {payload.endpoint}", HEADER_LIMIT),
                "emoji": True,
            },
        },
        {
            "type": "section",
            "text": _mrkdwn(f"{emoji} {escape(payload.summary)}"),
            "fields": [
                _mrkdwn(f"*{name}*\n{escape(value)}", FIELD_LIMIT) for name, value in fields
            ],
        },
    ]
    if payload.reason and payload.reason not in payload.summary:
        blocks.append(_section(f"*Reason*\n{escape(payload.reason)}"))
    if payload.event in EXPLAINED_EVENTS:
        checks = _checks_section(payload)
        if checks is not None:
            blocks.append(checks)
    if payload.build_logs_tail:
        blocks.append(_log_section(payload.build_logs_tail))
    blocks.append(
        {
            "type": "context",
            "elements": [
                _mrkdwn(
                    f"rollout `{escape(payload.rollout)}` · {escape(payload.event)} at "
                    f"{rfc3339(payload.occurred_at)} · alert id `{escape(payload.id)}`",
                    FIELD_LIMIT,
                )
            ],
        }
    )
    text = truncate(f"{payload.title}: {escape(payload.summary)}", SECTION_LIMIT)
    return {"text": text, "blocks": blocks}


class SlackNotifier:
    """POSTs ``slack_message`` to the channel's incoming-webhook URL."""

    channel_type: Final = "slack"
    wants_rollout_state: Final = False

    def __init__(self, http: httpx.AsyncClient, *, timeout: float = 10.0) -> None:
        self.http = http
        self.timeout = timeout

    async def send(self, payload: AlertPayload, context: SendContext) -> None:
        await post_json(
            self.http,
            payload.channel.url,
            slack_message(payload),
            request_timeout=self.timeout,
            now=context.now,
            what=self.channel_type,
        )
