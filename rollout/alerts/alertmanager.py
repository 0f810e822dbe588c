"""The Alertmanager channel: alerts posted to Alertmanager's API v2, resolved when a rollout ends.

Where this sits in the path of a rollout: decision -> outbox row (same transaction) ->
dispatcher -> this notifier -> ``POST {url}/api/v2/alerts`` on the channel's Alertmanager, whose
routes, silences and inhibitions then apply as to any other alert.

Each alert is identified, as Alertmanager identifies alerts, by its labels: ``alertname`` (one
per event: ``RolloutRolledBack``, ``RolloutPaused``...), ``endpoint``, ``rollout`` and
``severity`` (``info``/``warning``/``critical`` from the rollout's ``info``/``warn``/``error``).
Annotations carry the words: ``summary``, ``description`` (reason, the checks' numbers, the
build-log tail), and the candidate, baseline, phase and alert id.

Lifetimes. The controller sends each alert once rather than re-sending it every minute as
Prometheus does, so every firing alert carries an explicit ``endsAt`` (now + ``hold``, one hour
by default): without it Alertmanager would resolve it after its ``resolve_timeout`` (five
minutes by default), too soon for a paused rollout waiting for a person. When the rollout ends
(succeeded, rolled_back, aborted, failed), the same POST that fires the terminal alert (itself
held for ``hold`` so that people see it) resolves the rollout's other alertnames with
``endsAt`` = now. Their severity is part of their identity and an event's severity may vary
(a rollback started by an operator is a warning), so each is resolved at every severity;
Alertmanager ignores resolves of alerts it never saw (no notification is sent for them). A
non-terminal alert delivered late, after its rollout ended (a retried ``paused``), is sent
already resolved so that it cannot fire for an hour about a finished rollout.

The controller's own alerts (``rollout.health``: a workspace that does not answer) carry
``rollout="controller"`` and the workspace host as ``endpoint``; the alert that says the
workspace answers again (``details.resolves``) is sent as the resolve of the first one only.
"""

from __future__ import annotations

from typing import Any, Final

import httpx

from rollout.alerts.notifier import SendContext, post_json
from rollout.alerts.payload import NON_TERMINAL_EVENTS, AlertPayload, description, rfc3339

ALERTNAMES: Final[dict[str, str]] = {
    "started": "RolloutStarted",
    "step_advanced": "RolloutStepAdvanced",
    "paused": "RolloutPaused",
    "succeeded": "RolloutSucceeded",
    "rolling_back": "RolloutRollingBack",
    "rolled_back": "RolloutRolledBack",
    "failed": "RolloutFailed",
    "aborted": "RolloutAborted",
    "deadline_passed": "RolloutDeadlinePassed",
    "analysis_error": "RolloutAnalysisError",
    "workspace_unreachable": "RolloutWorkspaceUnreachable",
    "metrics_source_unreachable": "RolloutMetricsSourceUnreachable",
}

SEVERITY_LABELS: Final[dict[str, str]] = {"info": "info", "warn": "warning", "error": "critical"}

DEFAULT_HOLD: Final = 3600.0
"""Seconds a fired alert stays active in Alertmanager unless the rollout's end resolves it."""

API_PATH: Final = "/api/v2/alerts"

# Annotations are shown in e-mails and chat messages: a few kilobytes of log is plenty there.
_DESCRIPTION_LOG_LIMIT: Final = 2000


def alertname(event: str) -> str:
    """``RolloutRolledBack`` for ``rolled_back``; unknown events get the same CamelCase form."""
    known = ALERTNAMES.get(event)
    if known is not None:
        return known
    return "Rollout" + "".join(part.capitalize() for part in event.split("_"))


def alerts_url(url: str) -> str:
    """The POST target for a channel URL: the base URL (``http://alertmanager:9093``, maybe
    with a path prefix) plus ``/api/v2/alerts``, unless the URL already ends with it."""
    base = url.rstrip("/")
    return base if base.endswith(API_PATH) else base + API_PATH


def alertmanager_alerts(
    payload: AlertPayload,
    context: SendContext,
    *,
    hold: float = DEFAULT_HOLD,
    generator_url: str | None = None,
) -> list[dict[str, Any]]:
    """The ``postableAlerts`` list for ``payload``: the alert itself, then any resolves."""
    now = context.now
    if payload.resolves is not None:
        # An alert that ends another (the workspace answers again): only the resolve, at
        # every severity as for a rollout's end; a firing "all is well" alert would be noise.
        return [
            {
                "labels": _labels(payload, payload.resolves, severity),
                "annotations": {"summary": payload.summary},
                "startsAt": rfc3339(now),
                "endsAt": rfc3339(now),
            }
            for severity in SEVERITY_LABELS.values()
        ]
    resolved_late = context.rollout_ended and not payload.terminal
    annotations = {
        "summary": payload.summary,
        "description": description(payload, log_limit=_DESCRIPTION_LOG_LIMIT),
        "candidate": payload.candidate or "",
        "baseline": payload.baseline or "",
        "phase": payload.phase,
        "alert_id": payload.id,
    }
    fired: dict[str, Any] = {
        "labels": _labels(payload, payload.event, SEVERITY_LABELS[payload.severity]),
        "annotations": {key: value for key, value in annotations.items() if value},
        # The decision's time, not the send time: a retried alert still says when it happened.
        "startsAt": rfc3339(min(payload.occurred_at, now)),
        "endsAt": rfc3339(now if resolved_late else now + hold),
    }
    if generator_url:
        fired["generatorURL"] = generator_url.replace("{rollout}", payload.rollout)
    alerts = [fired]
    if payload.terminal:
        ended = f"{payload.endpoint}: rollout {payload.rollout} ended ({payload.event})"
        alerts.extend(
            {
                "labels": _labels(payload, event, severity),
                "annotations": {"summary": ended},
                "startsAt": rfc3339(now),
                "endsAt": rfc3339(now),
            }
            for event in NON_TERMINAL_EVENTS
            for severity in SEVERITY_LABELS.values()
        )
    return alerts


def _labels(payload: AlertPayload, event: str, severity: str) -> dict[str, str]:
    return {
        "alertname": alertname(event),
        "endpoint": payload.endpoint,
        "rollout": payload.rollout,
        "severity": severity,
    }


class AlertmanagerNotifier:
    """POSTs ``alertmanager_alerts`` to ``{url}/api/v2/alerts``.

    ``hold``: seconds a fired alert stays active (see the module's docstring).
    ``generator_url``: a link back to the rollout (``{rollout}`` is replaced by its id), e.g.
    the controller's status page; Alertmanager shows it as the alert's source.
    """

    channel_type: Final = "alertmanager"
    wants_rollout_state: Final = True

    def __init__(
        self,
        http: httpx.AsyncClient,
        *,
        timeout: float = 10.0,
        hold: float = DEFAULT_HOLD,
        generator_url: str | None = None,
    ) -> None:
        if hold <= 0:
            raise ValueError(f"hold must be positive, got {hold!r}")
        self.http = http
        self.timeout = timeout
        self.hold = hold
        self.generator_url = generator_url

    async def send(self, payload: AlertPayload, context: SendContext) -> None:
        alerts = alertmanager_alerts(
            payload, context, hold=self.hold, generator_url=self.generator_url
        )
        await post_json(
            self.http,
            alerts_url(payload.channel.url),
            alerts,
            request_timeout=self.timeout,
            now=context.now,
            what=self.channel_type,
        )
