"""The alert as the notifiers see it: an outbox row read back and checked, plus shared wording.

Where this sits in the path of a rollout: ``decide`` names an alert (event, severity, summary,
details); the runner writes one outbox row per alert and channel, in the same transaction as
the decision's events, with the payload ``{"rollout", "endpoint", "candidate", "baseline",
"event", "severity", "summary", "phase", "details", "channel"}``; the dispatcher claims the row
and turns it into an ``AlertPayload`` here before giving it to the channel's notifier. A row
that cannot be read raises ``MalformedAlert`` (the dispatcher keeps it and reports it).

The helpers below word the numbers behind a verdict, and cut text to a receiver's limits, the
same way for Slack and Alertmanager. Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, cast

from pydantic import ValidationError

from rollout.alerts.errors import MalformedAlert
from rollout.plan import SEVERITY_ORDER, AlertChannel, HookCall, Severity
from rollout.store.model import TERMINAL, OutboxAlert

__all__ = ["SEVERITY_ORDER", "Severity"]  # re-exported: the alert side's names for them

TERMINAL_EVENTS: Final[frozenset[str]] = TERMINAL
"""Events that end a rollout (each one is also the name of the terminal phase it moves to)."""

NON_TERMINAL_EVENTS: Final[tuple[str, ...]] = (
    "started",
    "step_advanced",
    "paused",
    "rolling_back",
    "deadline_passed",
    "analysis_error",
    "metrics_source_unreachable",
)
"""Events that leave the rollout running; a terminal event supersedes them."""

EXPLAINED_EVENTS: Final[frozenset[str]] = frozenset({"rolling_back", "rolled_back", "failed"})
"""Events after which people want to see why: the numbers behind the verdict, the build log."""

EVENT_TITLES: Final[Mapping[str, str]] = {
    "started": "Rollout started",
    "step_advanced": "Rollout advanced",
    "paused": "Rollout paused",
    "succeeded": "Rollout succeeded",
    "rolling_back": "Rolling back",
    "rolled_back": "Rolled back",
    "failed": "Rollout failed, a person must act",
    "aborted": "Rollout aborted",
    "deadline_passed": "Rollout deadline passed",
    "analysis_error": "Analysis error",
    "workspace_unreachable": "Workspace unreachable",
    "workspace_reachable": "Workspace reachable again",
    "metrics_source_unreachable": "Metrics source unreachable",
    "metrics_source_reachable": "Metrics source reachable again",
}

HOOK_CHANNEL: Final = "hook"
"""The outbox channel of a plan's notification hooks (``post_rollout``, ``on_rollback``):
their rows carry the hook (a ``HookCall``) where an alert's carry its channel."""

_REQUIRED_TEXT = ("rollout", "endpoint", "event", "severity", "summary", "phase")


@dataclass(frozen=True)
class AlertPayload:
    """One outbox row, checked: what every notifier renders.

    ``id`` is the row's dedup key, the same on every delivery attempt: receivers deduplicate on
    it, because delivery is at-least-once. ``occurred_at`` is when the decision was committed
    (the row's creation time); ``attempt`` counts deliveries of this row, this one included.
    """

    id: str
    outbox_id: int
    rollout: str
    endpoint: str
    candidate: str | None
    baseline: str | None
    event: str
    severity: Severity
    summary: str
    phase: str
    details: dict[str, Any]
    channel: AlertChannel | HookCall
    occurred_at: float
    attempt: int

    @classmethod
    def from_outbox(cls, alert: OutboxAlert) -> AlertPayload:
        """Read an outbox row; ``MalformedAlert`` names what is missing or wrong."""
        data = alert.payload
        for key in _REQUIRED_TEXT:
            if not isinstance(data.get(key), str) or not data[key]:
                raise MalformedAlert(f"alert {alert.dedup_key!r}: payload has no {key!r} text")
        severity = data["severity"]
        if severity not in SEVERITY_ORDER:
            raise MalformedAlert(f"alert {alert.dedup_key!r}: unknown severity {severity!r}")
        details = data.get("details") or {}
        if not isinstance(details, dict):
            raise MalformedAlert(f"alert {alert.dedup_key!r}: 'details' is not an object")
        channel: AlertChannel | HookCall
        try:
            if alert.channel == HOOK_CHANNEL:
                channel = HookCall.model_validate(data.get("channel"))
            else:
                channel = AlertChannel.model_validate(data.get("channel"))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "channel"
            raise MalformedAlert(
                f"alert {alert.dedup_key!r}: bad channel ({where}: {first['msg']})"
            ) from exc
        if isinstance(channel, AlertChannel) and channel.type != alert.channel:
            raise MalformedAlert(
                f"alert {alert.dedup_key!r}: row is for {alert.channel!r} but its payload "
                f"names a {channel.type!r} channel"
            )
        return cls(
            id=alert.dedup_key,
            outbox_id=alert.id,
            rollout=data["rollout"],
            endpoint=data["endpoint"],
            candidate=_optional_text(data.get("candidate")),
            baseline=_optional_text(data.get("baseline")),
            event=data["event"],
            severity=cast(Severity, severity),
            summary=data["summary"],
            phase=data["phase"],
            details=details,
            channel=channel,
            occurred_at=alert.created_at,
            attempt=alert.attempts,
        )

    @property
    def terminal(self) -> bool:
        """Whether this alert ends the rollout."""
        return self.event in TERMINAL_EVENTS

    @property
    def passes_channel_filter(self) -> bool:
        """Whether the alert's channel takes it (``AlertChannel.takes``): at least as severe
        as the channel's severity, or a rollout's end on a channel that resolves by it; a
        hook takes every notification."""
        if not isinstance(self.channel, AlertChannel):
            return True
        return self.channel.takes(self.severity, self.event)

    @property
    def channel_severity(self) -> Severity:
        """The lowest severity the channel takes (a hook takes every notification)."""
        return self.channel.severity if isinstance(self.channel, AlertChannel) else "info"

    @property
    def title(self) -> str:
        return EVENT_TITLES.get(self.event, self.event.replace("_", " ").capitalize())

    @property
    def reason(self) -> str | None:
        return _optional_text(self.details.get("reason"))

    @property
    def build_logs_tail(self) -> str | None:
        return _optional_text(self.details.get("build_logs_tail"))

    @property
    def resolves(self) -> str | None:
        """The event whose alert this one ends (the controller's ``workspace_reachable``
        ends ``workspace_unreachable``), if any."""
        return _optional_text(self.details.get("resolves"))

    @property
    def verdict(self) -> dict[str, Any] | None:
        verdict = self.details.get("verdict")
        return verdict if isinstance(verdict, dict) else None


def _optional_text(value: object) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text or None


# --- wording ---------------------------------------------------------------------------------


def rfc3339(timestamp: float) -> str:
    """``2027-01-15T08:00:00.000Z``: UTC in RFC 3339, the form Alertmanager and JSON tools read."""
    moment = datetime.fromtimestamp(timestamp, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def number(value: object) -> str:
    """A verdict value for people: four significant digits; ``n/a`` when there is none."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if value.is_integer() and abs(value) < 1e15:
            return f"{int(value):,}"
        return f"{value:.4g}"
    return str(value)


def failing_checks(verdict: Mapping[str, Any] | None) -> tuple[str, list[dict[str, Any]]]:
    """The checks worth showing, with a heading: the failing ones, or all when none failed.

    A rollback from a failed verdict shows what failed; a rollback for another reason (a
    deadline, a failed update) still shows where each check stood, so nobody has to dig.
    """
    if not verdict:
        return "", []
    checks = [c for c in verdict.get("checks") or [] if isinstance(c, dict)]
    failed = [c for c in checks if c.get("outcome") == "fail"]
    if failed:
        return "Failing checks", failed
    outcome = verdict.get("outcome", "unknown")
    return f"Checks (verdict: {outcome})", checks


def check_line(check: Mapping[str, Any]) -> str:
    """One check in one line: both arms' values and samples, the limit, and the judge's words."""
    name = check.get("check") or check.get("metric") or "check"
    line = (
        f"{name}: candidate {number(check.get('candidate_value'))} "
        f"(n={number(check.get('candidate_n'))}) vs baseline "
        f"{number(check.get('baseline_value'))} (n={number(check.get('baseline_n'))})"
    )
    if check.get("limit"):
        line += f"; limit {check['limit']}"
    if check.get("reason"):
        line += f" ({check['reason']})"
    return line


def truncate(text: str, limit: int, marker: str = "…") -> str:
    """``text`` cut to ``limit`` characters, the cut marked, keeping the beginning."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(marker))] + marker


def tail(text: str, limit: int, marker: str = "…\n") -> str:
    """``text`` cut to ``limit`` characters keeping the END: a build log fails at its end."""
    if len(text) <= limit:
        return text
    kept = text[len(text) - max(0, limit - len(marker)) :]
    # Start on a line boundary when one is near, so the first line shown is a whole line.
    newline = kept.find("\n")
    if 0 <= newline < 200:
        kept = kept[newline + 1 :]
    return marker + kept


def description(payload: AlertPayload, *, log_limit: int) -> str:
    """The alert in plain text (Alertmanager's description): reason, checks, build-log tail."""
    parts = [payload.summary]
    if payload.reason and payload.reason not in payload.summary:
        parts.append(f"Reason: {payload.reason}")
    heading, checks = failing_checks(payload.verdict)
    if checks:
        parts.append(heading + ":\n" + "\n".join(f"- {check_line(c)}" for c in checks))
    logs = payload.build_logs_tail
    if logs and log_limit > 0:
        parts.append("Build log (tail):\n" + tail(logs, log_limit))
    return "\n\n".join(parts)
