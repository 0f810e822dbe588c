"""Teams and PagerDuty without sockets: plan validation of the channels, the incident lifecycle
PagerDuty sees for a rollout, the Teams card, and what the API's plan view shows of them.

The same bodies go over real HTTP, to receivers that check them as the real services do, in
``tests/integration/test_alerts_oncall.py``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout.alerts import SendContext, pagerduty_events, teams_message
from rollout.alerts.pagerduty import DEDUP_KEY_LIMIT, SUMMARY_LIMIT, dedup_key
from rollout.alerts.payload import NON_TERMINAL_EVENTS
from rollout.plan import PAGERDUTY_EVENTS_URL, AlertChannel, PlanError, validate_plan
from rollout.redaction import REDACTED, redacted_plan
from tests.unit.test_alerts import NOW, VERDICT, payload_of
from tests.unit.test_plan import with_

ROUTING_KEY = "R0UT1NGKEY0123456789abcdefABCDEF"
PAGER: dict[str, Any] = {"type": "pagerduty", "routing_key": ROUTING_KEY}
TEAMS_URL = "https://prod-01.westeurope.logic.azure.com/workflows/abc/triggers/manual/paths/invoke?sig=TeamsSig0042"
TEAMS: dict[str, Any] = {"type": "teams", "url": TEAMS_URL}
STATUS_PAGE = "https://rollout.example.com/"


def pager(severity: str = "warn") -> dict[str, Any]:
    return AlertChannel.model_validate({**PAGER, "severity": severity}).model_dump(mode="json")


def events_for(
    event: str, severity: str, *, channel_severity: str = "warn", ended: bool = False,
    **kwargs: Any,
) -> list[dict[str, Any]]:
    payload = payload_of(event, severity, channel=pager(channel_severity), **kwargs)
    return pagerduty_events(
        payload, SendContext(now=NOW, rollout_ended=ended), public_url=STATUS_PAGE
    )


def actions(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["event_action"], e["dedup_key"]) for e in events]


def key(event: str) -> str:
    return f"rollout/r1/ads-endpoint/{event}"


# --- plan validation -------------------------------------------------------------------------


def test_a_pagerduty_channel_needs_only_its_routing_key() -> None:
    channel = AlertChannel.model_validate(PAGER)
    assert channel.url == PAGERDUTY_EVENTS_URL
    assert channel.severity == "warn"  # a pager does not page on every step by default
    assert ROUTING_KEY not in repr(channel)
    eu = AlertChannel.model_validate(
        {**PAGER, "url": "https://events.eu.pagerduty.com/v2/enqueue", "severity": "info"}
    )
    assert (eu.url, eu.severity) == ("https://events.eu.pagerduty.com/v2/enqueue", "info")
    teams = AlertChannel.model_validate(TEAMS)
    assert (teams.severity, teams.routing_key) == ("info", None)


BAD_CHANNELS = [
    ("no routing key", {"type": "pagerduty"}, "alerts[0].routing_key", "needs routing_key"),
    ("short routing key", {**PAGER, "routing_key": "abc"}, "alerts[0].routing_key", "32"),
    (
        "routing key with a dash",
        {**PAGER, "routing_key": "-" + ROUTING_KEY[1:]},
        "alerts[0].routing_key",
        "letters and digits",
    ),
    ("secret on pagerduty", {**PAGER, "secret": "x"}, "alerts[0].secret", "routing_key"),
    (
        "routing key on teams",
        {**TEAMS, "routing_key": ROUTING_KEY},
        "alerts[0].routing_key",
        "only a pagerduty",
    ),
    ("teams without url", {"type": "teams"}, "alerts[0].url", "required"),
    ("pagerduty over ftp", {**PAGER, "url": "ftp://x"}, "alerts[0].url", "pattern"),
]


@pytest.mark.parametrize(
    ("name", "channel", "field", "words"), BAD_CHANNELS, ids=[b[0] for b in BAD_CHANNELS]
)
def test_bad_oncall_channels_name_the_field(
    name: str, channel: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(PlanError) as caught:
        validate_plan(with_(alerts=[channel]))
    issues = {issue.field: issue.message for issue in caught.value.issues}
    assert field in issues, (name, issues)
    assert words in issues[field]
    assert ROUTING_KEY[1:] not in str(caught.value)


def test_the_plan_view_never_shows_a_routing_key_or_a_workflow_signature() -> None:
    plan = validate_plan(with_(alerts=[PAGER, TEAMS])).model_dump(mode="json")
    shown = redacted_plan(plan)
    text = json.dumps(shown)
    assert ROUTING_KEY not in text
    assert "TeamsSig0042" not in text
    assert "workflows/abc" not in text
    pd, teams = shown["alerts"]
    assert pd["routing_key"] == REDACTED
    assert pd["url"] == "https://events.pagerduty.com/…"
    assert teams["url"] == "https://prod-01.westeurope.logic.azure.com/…"


def test_a_pager_takes_every_rollout_end_whatever_its_severity() -> None:
    pd = AlertChannel.model_validate({**PAGER, "severity": "error"})
    hook = AlertChannel(type="webhook", url="https://h.test/x", severity="error")
    for event, severity in (("succeeded", "info"), ("aborted", "warn")):
        assert pd.takes(severity, event)
        assert not hook.takes(severity, event)
    assert not pd.takes("warn", "paused")
    assert pd.takes("error", "rolled_back")
    assert hook.takes("error", "rolled_back")


# --- the PagerDuty lifecycle -----------------------------------------------------------------


def test_a_pause_opens_an_incident_with_the_documented_fields() -> None:
    [event] = events_for(
        "paused", "warn", phase="paused",
        details={"reason": "drift: someone changed the split", "step": 2, "weight": 25},
    )
    assert event["routing_key"] == ROUTING_KEY
    assert event["event_action"] == "trigger"
    assert event["dedup_key"] == key("paused")
    body = event["payload"]
    assert body["summary"] == "ads-endpoint: paused"
    assert body["source"] == "ads-endpoint"
    assert body["severity"] == "warning"
    assert body["timestamp"] == "2027-01-15T08:00:00.000Z"
    assert (body["component"], body["group"], body["class"]) == ("ads-model-4", "r1", "paused")
    details = body["custom_details"]
    assert details["reason"] == "drift: someone changed the split"
    assert (details["step"], details["weight"], details["phase"]) == (2, 25, "paused")
    assert details["alert_id"].startswith("r1:paused:")
    assert event["links"] == [{"href": STATUS_PAGE, "text": "Rollout status page"}]
    assert event["client_url"] == STATUS_PAGE


def test_a_rollback_opens_its_own_incident_and_resolves_the_rest() -> None:
    events = events_for(
        "rolled_back", "error", details={"reason": "analysis failed", "verdict": VERDICT,
                                         "build_logs_tail": "x" * 5000 + "\nOOM"},
    )
    assert actions(events) == [("trigger", key("rolled_back"))] + [
        ("resolve", key(event)) for event in NON_TERMINAL_EVENTS
    ]
    trigger = events[0]
    assert trigger["payload"]["severity"] == "error"
    details = trigger["payload"]["custom_details"]
    assert details["verdict"] == "fail"
    assert details["checks"] == [
        ("error_rate vs baseline (max_increase 0.5%): candidate 0.0312 (n=1,250) vs baseline "
        "0.0041 (n=23,750); limit at most +0.5 % (candidate errors 4x the baseline's)")
    ]
    assert details["build_logs_tail"].endswith("OOM")
    assert len(details["build_logs_tail"]) <= 2000
    assert all(set(e) == {"routing_key", "event_action", "dedup_key"} for e in events[1:])


def test_a_failed_rollout_is_critical() -> None:
    assert events_for("failed", "error")[0]["payload"]["severity"] == "critical"


@pytest.mark.parametrize(("event", "severity"), [("succeeded", "info"), ("aborted", "warn")])
@pytest.mark.parametrize("channel_severity", ["info", "warn", "error"])
def test_an_end_without_fault_only_resolves(
    event: str, severity: str, channel_severity: str
) -> None:
    events = events_for(event, severity, channel_severity=channel_severity)
    assert actions(events) == [("resolve", key(e)) for e in NON_TERMINAL_EVENTS]


def test_an_alert_retried_after_its_rollout_ended_only_resolves_itself() -> None:
    assert actions(events_for("paused", "warn", ended=True)) == [("resolve", key("paused"))]


def test_the_workspace_alert_is_resolved_by_the_same_key() -> None:
    down = payload_of(
        "workspace_unreachable", "error", channel=pager(), rollout="controller",
        endpoint="adb-1.azuredatabricks.net",
    )
    up = payload_of(
        "workspace_reachable", "error", channel=pager(), rollout="controller",
        endpoint="adb-1.azuredatabricks.net", details={"resolves": "workspace_unreachable"},
    )
    [opened] = pagerduty_events(down, SendContext(now=NOW))
    [closed] = pagerduty_events(up, SendContext(now=NOW))
    assert opened["event_action"] == "trigger"
    assert closed["event_action"] == "resolve"
    assert opened["dedup_key"] == closed["dedup_key"] == (
        "rollout/controller/adb-1.azuredatabricks.net/workspace_unreachable"
    )


def test_limits_of_the_events_api_hold() -> None:
    [event] = events_for("paused", "warn", summary="s" * 5000)
    assert len(event["payload"]["summary"]) == SUMMARY_LIMIT
    long_host = payload_of("workspace_unreachable", "error", channel=pager(),
                           rollout="controller", endpoint="h" * 300)
    keys = {dedup_key(long_host, "workspace_unreachable"), dedup_key(long_host, "other")}
    assert len(keys) == 2
    assert all(len(k) <= DEDUP_KEY_LIMIT for k in keys)


# --- the Teams card --------------------------------------------------------------------------


def test_a_teams_rollback_card_shows_the_reason_and_the_numbers() -> None:
    payload = payload_of(
        "rolled_back", "error", channel=TEAMS,
        details={"reason": "analysis failed: error_rate fails", "verdict": VERDICT,
                 "build_logs_tail": "step 1\nImportError: no module named ads"},
    )
    message = teams_message(payload, public_url=STATUS_PAGE)
    assert message["type"] == "message"
    [attachment] = message["attachments"]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive"
    assert attachment["contentUrl"] is None
    card = attachment["content"]
    assert (card["type"], card["version"]) == ("AdaptiveCard", "1.4")
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    title = card["body"][0]
    assert title["text"] == "ERROR · Rolled back: ads-endpoint"
    assert title["color"] == "Attention"
    facts = {
        fact["title"]: fact["value"]
        for block in card["body"] if block["type"] == "FactSet" for fact in block["facts"]
    }
    assert facts["Endpoint"] == "ads-endpoint"
    assert facts["Rollout"] == "r1"
    assert facts["Candidate"] == "ads-model-4"
    assert facts["Phase"] == "rolled_back"
    assert facts["Reason"] == "analysis failed: error_rate fails"
    assert facts["Verdict"] == "fail"
    assert "candidate 0.0312 (n=1,250) vs baseline 0.0041 (n=23,750)" in (
        facts["error_rate vs baseline (max_increase 0.5%)"]
    )
    texts = [block.get("text", "") for block in card["body"]]
    assert any("ImportError" in text for text in texts)
    assert card["actions"] == [
        {"type": "Action.OpenUrl", "title": "Open the status page", "url": STATUS_PAGE}
    ]
    assert "TeamsSig0042" not in json.dumps(message)


def test_a_teams_card_without_a_public_url_has_no_action_and_stays_small() -> None:
    checks = [dict(VERDICT["checks"][0], check=f"check {i}") for i in range(40)]
    payload = payload_of(
        "rolled_back", "error", channel=TEAMS,
        details={"reason": "r" * 10_000, "verdict": {"outcome": "fail", "checks": checks},
                 "build_logs_tail": "log line\n" * 5000},
    )
    message = teams_message(payload)
    assert "actions" not in message["attachments"][0]["content"]
    assert len(json.dumps(message).encode()) < 28 * 1024  # Teams' message limit
    assert "and 30 more" in json.dumps(message)


# --- the documented plan ---------------------------------------------------------------------


def test_the_readmes_oncall_plan_is_valid() -> None:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text[text.index("### Alerts where on-call lives") :]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL)
    assert block is not None
    plan = validate_plan(yaml.safe_load(block.group(1)))
    teams, pd = plan.alerts
    assert (teams.type, teams.severity) == ("teams", "info")
    assert (pd.type, pd.severity, pd.url) == ("pagerduty", "warn", PAGERDUTY_EVENTS_URL)
