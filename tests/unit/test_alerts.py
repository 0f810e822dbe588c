"""Alerts without sockets: what each notifier renders, the retry schedule, the channels setting.

The same payloads go over real HTTP in ``tests/integration/test_alerts_delivery.py``; here the
rendering is checked field by field, including Slack's size limits and Alertmanager's resolves.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest

from rollout.alerts import (
    SCHEMA,
    AlertPayload,
    ChannelConfigError,
    MalformedAlert,
    SendContext,
    WebhookNotifier,
    alertmanager_alerts,
    parse_channels,
    retry_delay,
    slack_message,
    webhook_body,
)
from rollout.alerts.alertmanager import ALERTNAMES, alertname, alerts_url
from rollout.alerts.notifier import header_value, parse_retry_after, redact_url
from rollout.alerts.payload import NON_TERMINAL_EVENTS, TERMINAL_EVENTS, tail
from rollout.alerts.slack import FIELD_LIMIT, HEADER_LIMIT, SECTION_LIMIT
from rollout.store.model import OutboxAlert

README = Path(__file__).resolve().parents[2] / "rollout" / "alerts" / "README.md"
T0 = 1_800_000_000.0
NOW = T0 + 42.5

VERDICT = {
    "outcome": "fail",
    "reason": "error_rate fails",
    "checks": [
        {
            "check": "error_rate vs baseline (max_increase 0.5%)",
            "metric": "error_rate",
            "outcome": "fail",
            "reason": "candidate errors 4x the baseline's",
            "candidate_value": 0.0312,
            "baseline_value": 0.0041,
            "candidate_n": 1250.0,
            "baseline_n": 23750.0,
            "limit": "at most +0.5 %",
        },
        {
            "check": "latency_p99_ms vs baseline (max_ratio 1.25)",
            "metric": "latency_p99_ms",
            "outcome": "pass",
            "reason": "within tolerance",
            "candidate_value": 120.0,
            "baseline_value": 118.0,
            "candidate_n": 1250.0,
            "baseline_n": 23750.0,
            "limit": "at most x1.25",
        },
    ],
}


def outbox_row(
    event: str = "rolled_back",
    severity: str = "error",
    *,
    channel: dict[str, Any] | None = None,
    details: dict[str, Any] | None = None,
    phase: str | None = None,
    **overrides: Any,
) -> OutboxAlert:
    channel = channel or {"type": "webhook", "url": "http://hooks.test/r", "severity": "info"}
    payload = {
        "rollout": "r1",
        "endpoint": "ads-endpoint",
        "candidate": "ads-model-4",
        "baseline": "ads-model-3",
        "event": event,
        "severity": severity,
        "summary": f"ads-endpoint: {event}",
        "phase": phase or event,
        "details": details if details is not None else {},
        "channel": {"secret": None, **channel},
    }
    payload.update(overrides)
    return OutboxAlert(
        id=7,
        rollout_id="r1",
        event_seq=3,
        channel=channel["type"],
        dedup_key=f"r1:{event}:2:9:1800000000:0",
        payload=payload,
        created_at=T0,
        attempts=2,
        next_attempt_at=T0,
        delivered_at=None,
        last_error=None,
    )


def payload_of(*args: Any, **kwargs: Any) -> AlertPayload:
    return AlertPayload.from_outbox(outbox_row(*args, **kwargs))


def readme_verify() -> Any:
    """The ``verify`` function of the README's signature snippet, executed as written."""
    text = README.read_text()
    section = text[text.index("### Verifying the signature") :]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None, "the README lost its verification snippet"
    namespace: dict[str, Any] = {}
    exec(code.group(1), namespace)  # noqa: S102 -- the documented snippet is what is tested
    return namespace["verify"]


# --- webhook ---------------------------------------------------------------------------------


def test_webhook_body_follows_the_documented_schema() -> None:
    payload = payload_of(details={"reason": "analysis failed", "verdict": VERDICT})
    body = webhook_body(payload, NOW)
    assert list(body) == [
        "schema",
        "id",
        "rollout",
        "endpoint",
        "candidate",
        "baseline",
        "event",
        "severity",
        "summary",
        "phase",
        "details",
        "occurred_at",
        "sent_at",
        "attempt",
    ]
    assert body["schema"] == SCHEMA == "rollout.alert/v1"
    assert body["id"] == "r1:rolled_back:2:9:1800000000:0"
    assert body["occurred_at"] == "2027-01-15T08:00:00.000Z"
    assert body["sent_at"] == "2027-01-15T08:00:42.500Z"
    assert body["attempt"] == 2
    assert body["details"]["verdict"]["checks"][0]["candidate_value"] == 0.0312
    # Every field the README's table documents is in the body, and nothing else.
    readme = README.read_text()
    table = readme[readme.index("| field | type | meaning |") : readme.index("Headers:")]
    assert set(re.findall(r"^\| `(\w+)` \|", table, re.MULTILINE)) == set(body)


def test_webhook_signature_verifies_with_the_readme_snippet() -> None:
    verify = readme_verify()
    channel = {"type": "webhook", "url": "http://hooks.test/r", "secret": "s3cr3t"}
    payload = payload_of(channel=channel)
    notifier = WebhookNotifier(http=None)  # type: ignore[arg-type]  # request_parts never sends
    body, headers = notifier.request_parts(payload, SendContext(now=NOW))
    timestamp, signature = headers["X-Rollout-Timestamp"], headers["X-Rollout-Signature"]
    assert timestamp == str(int(NOW))
    assert re.fullmatch(r"sha256=[0-9a-f]{64}", signature)
    assert headers["X-Rollout-Alert-Id"] == payload.id
    assert b"s3cr3t" not in body
    assert b"channel" not in body

    assert verify("s3cr3t", body, timestamp, signature, now=NOW)
    assert not verify(
        "s3cr3t", body.replace(b"rolled_back", b"succeeded"), timestamp, signature, now=NOW
    )
    assert not verify("other", body, timestamp, signature, now=NOW)
    assert not verify("s3cr3t", body, str(int(NOW) + 1), signature, now=NOW)
    assert not verify("s3cr3t", body, timestamp, signature, now=NOW + 301)
    assert not verify("s3cr3t", body, "not-a-number", signature, now=NOW)


def test_webhook_without_secret_is_not_signed() -> None:
    notifier = WebhookNotifier(http=None)  # type: ignore[arg-type]  # request_parts never sends
    _, headers = notifier.request_parts(payload_of(), SendContext(now=NOW))
    assert "X-Rollout-Signature" not in headers
    assert "X-Rollout-Timestamp" not in headers
    assert headers["X-Rollout-Event"] == "rolled_back"


def test_header_value_keeps_ascii_ids_and_encodes_others() -> None:
    assert header_value("r1:rolled_back:2:9:1800000000:0") == "r1:rolled_back:2:9:1800000000:0"
    encoded = header_value("déploiement:paused:0")
    assert encoded.isascii()
    assert "%C3%A9" in encoded


# --- Slack -----------------------------------------------------------------------------------


def test_slack_rollback_message_shows_checks_and_build_log_tail() -> None:
    log = "\n".join(f"line {i}: pip install <pkg> & more" for i in range(5000))
    details = {"reason": "config update failed", "verdict": VERDICT, "build_logs_tail": log}
    message = slack_message(payload_of(details=details))

    assert message["text"].startswith("Rolled back: ads-endpoint: rolled_back")
    types = [block["type"] for block in message["blocks"]]
    assert types == ["header", "section", "section", "section", "section", "context"]
    header, summary, reason, checks, logs, context = message["blocks"]
    assert header["text"] == {
        "type": "plain_text",
        "text": "Rolled back: ads-endpoint",
        "emoji": True,
    }
    names = [field["text"].split("\n")[0] for field in summary["fields"]]
    assert names == [
        "*Endpoint*",
        "*Rollout*",
        "*Phase*",
        "*Candidate*",
        "*Baseline*",
        "*Severity*",
    ]
    assert summary["fields"][0]["text"] == "*Endpoint*\nads-endpoint"
    assert "config update failed" in reason["text"]["text"]

    # Only the failing check, with both arms' numbers and samples.
    check_text = checks["text"]["text"]
    assert check_text.startswith("*Failing checks*")
    assert "candidate 0.0312 (n=1,250) vs baseline 0.0041 (n=23,750)" in check_text
    assert "latency_p99_ms" not in check_text

    # The log's end is kept, escaped for mrkdwn, inside one code block within 3000 characters.
    log_text = logs["text"]["text"]
    assert len(log_text) <= SECTION_LIMIT
    assert log_text.startswith("*Build log (tail)*\n```")
    assert log_text.endswith("```")
    assert log_text.count("```") == 2
    assert "line 4999: pip install &lt;pkg&gt; &amp; more" in log_text
    assert "line 0:" not in log_text
    assert "r1:rolled_back:2:9:1800000000:0" in context["elements"][0]["text"]


def test_slack_texts_stay_within_limits() -> None:
    checks = [{**VERDICT["checks"][0], "check": f"check {i} " + "x" * 60} for i in range(200)]
    details = {
        "reason": "r" * 5000,
        "verdict": {"outcome": "fail", "checks": checks},
        "build_logs_tail": "```" + "<" * 10_000 + "```",
    }
    long_name = "e" * 300
    message = slack_message(payload_of(details=details, endpoint=long_name, summary="s" * 9000))
    header = message["blocks"][0]["text"]["text"]
    assert len(header) <= HEADER_LIMIT
    assert header.endswith("…")
    assert len(message["text"]) <= SECTION_LIMIT
    for block in message["blocks"]:
        if "text" in block and block["type"] == "section":
            assert len(block["text"]["text"]) <= SECTION_LIMIT
        for field in block.get("fields", []):
            assert len(field["text"]) <= FIELD_LIMIT
    checks_text = message["blocks"][3]["text"]["text"]
    assert re.search(r"…and \d+ more$", checks_text)
    log_text = message["blocks"][4]["text"]["text"]
    assert log_text.count("```") == 2  # the log's own fences cannot close the block


def test_slack_informational_alert_has_no_checks() -> None:
    details = {"verdict": VERDICT, "step": 1, "weight": 25}
    message = slack_message(payload_of("step_advanced", "info", details=details))
    assert [block["type"] for block in message["blocks"]] == ["header", "section", "context"]
    assert message["blocks"][0]["text"]["text"] == "Rollout advanced: ads-endpoint"


def test_slack_rollback_without_failing_check_shows_every_check() -> None:
    verdict = {
        **VERDICT,
        "outcome": "inconclusive",
        "checks": [{**c, "outcome": "inconclusive"} for c in VERDICT["checks"]],
    }
    message = slack_message(payload_of(details={"reason": "deadline", "verdict": verdict}))
    text = message["blocks"][3]["text"]["text"]
    assert text.startswith("*Checks (verdict: inconclusive)*")
    assert "error_rate" in text
    assert "latency_p99_ms" in text


def test_tail_keeps_the_end_on_a_line_boundary() -> None:
    text = "\n".join(f"{i:04d}" for i in range(1000))
    cut = tail(text, 100)
    assert len(cut) <= 100
    assert cut.startswith("…\n")
    assert cut.endswith("0999")
    assert cut.split("\n")[1].isdigit()
    assert len(cut.split("\n")[1]) == 4
    assert tail("short", 100) == "short"


# --- Alertmanager ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("severity", "label"), [("info", "info"), ("warn", "warning"), ("error", "critical")]
)
def test_alertmanager_alert_shape(severity: str, label: str) -> None:
    channel = {"type": "alertmanager", "url": "http://am:9093"}
    payload = payload_of(
        "paused", severity, channel=channel, phase="paused", details={"live_split": {"a": 50}}
    )
    alerts = alertmanager_alerts(
        payload, SendContext(now=NOW), hold=600, generator_url="http://ctl/rollouts/{rollout}"
    )
    assert alerts == [
        {
            "labels": {
                "alertname": "RolloutPaused",
                "endpoint": "ads-endpoint",
                "rollout": "r1",
                "severity": label,
            },
            "annotations": {
                "summary": "ads-endpoint: paused",
                "description": "ads-endpoint: paused",
                "candidate": "ads-model-4",
                "baseline": "ads-model-3",
                "phase": "paused",
                "alert_id": "r1:paused:2:9:1800000000:0",
            },
            "startsAt": "2027-01-15T08:00:00.000Z",
            "endsAt": "2027-01-15T08:10:42.500Z",
            "generatorURL": "http://ctl/rollouts/r1",
        }
    ]


def test_alertmanager_terminal_alert_is_held_and_resolves_the_others() -> None:
    channel = {"type": "alertmanager", "url": "http://am:9093"}
    details = {"reason": "analysis failed", "verdict": VERDICT, "build_logs_tail": "x" * 9000}
    payload = payload_of(channel=channel, details=details)
    fired, *resolves = alertmanager_alerts(payload, SendContext(now=NOW))
    assert fired["labels"]["alertname"] == "RolloutRolledBack"
    assert fired["labels"]["severity"] == "critical"
    assert fired["endsAt"] == "2027-01-15T09:00:42.500Z"  # default hold: one hour
    description = fired["annotations"]["description"]
    assert "Reason: analysis failed" in description
    assert "candidate 0.0312 (n=1,250) vs baseline 0.0041 (n=23,750)" in description
    assert len(description) < 3000

    expected = {
        (ALERTNAMES[e], s) for e in NON_TERMINAL_EVENTS for s in ("info", "warning", "critical")
    }
    assert {(a["labels"]["alertname"], a["labels"]["severity"]) for a in resolves} == expected
    assert len(resolves) == len(expected)
    for alert in resolves:
        assert alert["endsAt"] == alert["startsAt"] == "2027-01-15T08:00:42.500Z"
        assert alert["labels"]["endpoint"] == "ads-endpoint"
        assert alert["labels"]["rollout"] == "r1"
        assert alert["labels"]["alertname"] not in {ALERTNAMES[e] for e in TERMINAL_EVENTS}


def test_alertmanager_late_alert_of_an_ended_rollout_is_sent_resolved() -> None:
    channel = {"type": "alertmanager", "url": "http://am:9093"}
    payload = payload_of("paused", "warn", channel=channel)
    alerts = alertmanager_alerts(payload, SendContext(now=NOW, rollout_ended=True))
    assert len(alerts) == 1
    assert alerts[0]["endsAt"] == "2027-01-15T08:00:42.500Z"
    assert alerts[0]["startsAt"] == "2027-01-15T08:00:00.000Z"


def test_one_alertname_per_event() -> None:
    events = [*NON_TERMINAL_EVENTS, *TERMINAL_EVENTS]
    names = [alertname(event) for event in events]
    assert len(set(names)) == len(events)
    assert all(re.fullmatch(r"Rollout[A-Z][A-Za-z]+", name) for name in names)
    assert alertname("canary_stuck") == "RolloutCanaryStuck"


def test_alerts_url() -> None:
    assert alerts_url("http://am:9093") == "http://am:9093/api/v2/alerts"
    assert alerts_url("http://am:9093/prefix/") == "http://am:9093/prefix/api/v2/alerts"
    assert alerts_url("http://am:9093/api/v2/alerts") == "http://am:9093/api/v2/alerts"


# --- payload ---------------------------------------------------------------------------------


def test_malformed_rows_are_named() -> None:
    with pytest.raises(MalformedAlert, match="no 'endpoint' text"):
        payload_of(endpoint=None)
    with pytest.raises(MalformedAlert, match="unknown severity 'fatal'"):
        payload_of(severity="fatal")
    with pytest.raises(MalformedAlert, match="'details' is not an object"):
        payload_of(details=["x"])
    row = outbox_row()
    mismatched = OutboxAlert(**{**row.__dict__, "channel": "slack"})
    with pytest.raises(
        MalformedAlert, match="row is for 'slack' but its payload names a 'webhook'"
    ):
        AlertPayload.from_outbox(mismatched)
    with pytest.raises(MalformedAlert, match="bad channel"):
        payload_of(channel={"type": "webhook", "url": "ftp://x"})


def test_channel_filter() -> None:
    channel = {"type": "slack", "url": "http://slack.test/x", "severity": "warn"}
    assert not payload_of("started", "info", channel=channel).passes_channel_filter
    assert payload_of("paused", "warn", channel=channel).passes_channel_filter
    assert payload_of("failed", "error", channel=channel).passes_channel_filter


# --- retry schedule --------------------------------------------------------------------------


def test_retry_delay_doubles_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    for attempt, base in [(1, 2.0), (2, 4.0), (3, 8.0), (6, 64.0), (9, 100.0), (500, 100.0)]:
        delays = [retry_delay(attempt, initial=2, maximum=100, rng=rng) for _ in range(200)]
        assert all(base / 2 <= d <= base for d in delays), attempt
        assert max(delays) - min(delays) > base / 4  # jittered, not constant


def test_retry_delay_non_retryable_and_retry_after() -> None:
    rng = random.Random(1)
    assert retry_delay(1, initial=2, maximum=100, rng=rng, retryable=False) == 100
    # Retry-After is the least wait, even above the cap, but never more than a day.
    assert retry_delay(1, initial=2, maximum=100, rng=rng, retry_after=250) == 250
    assert retry_delay(1, initial=2, maximum=100, rng=rng, retry_after=1e9) == 86_400
    assert 1 <= retry_delay(1, initial=2, maximum=100, rng=rng, retry_after=0.5) <= 2


def test_parse_retry_after() -> None:
    assert parse_retry_after("30", T0) == 30
    assert parse_retry_after(" 1.5 ", T0) == 1.5
    assert parse_retry_after("-4", T0) == 0
    assert parse_retry_after("Fri, 15 Jan 2027 08:01:00 GMT", T0) == 60
    assert parse_retry_after("soon", T0) is None
    assert parse_retry_after(None, T0) is None


# --- the channels setting --------------------------------------------------------------------


def test_parse_channels_reads_a_json_list() -> None:
    channels = parse_channels(
        '[{"type": "webhook", "url": "https://h.test/x", "secret": "k"},'
        ' {"type": "alertmanager", "url": "http://am:9093", "severity": "warn"}]'
    )
    assert [(c.type, c.url, c.severity, c.secret) for c in channels] == [
        ("webhook", "https://h.test/x", "info", "k"),
        ("alertmanager", "http://am:9093", "warn", None),
    ]
    assert parse_channels("[]") == []
    assert parse_channels("  ") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[{", r"not JSON \(.* at line 1, column 3\)"),
        ('{"type": "slack"}', "expected a JSON list of channel objects, got a JSON object"),
        ('["http://x"]', r"channel 0 \(a JSON string, not an object\)"),
        (
            '[{"type": "email", "url": "http://x.test"}]',
            r"channel 0 \(email http://x\.test\): type: Input should be 'webhook'",
        ),
        (
            '[{"type": "webhook", "url": "https://ok.test"}, {"type": "slack"}]',
            r"channel 1 \(slack\): url: Field required",
        ),
        (
            '[{"type": "webhook", "url": "http://a.test", "colour": "red"}]',
            r"channel 0 \(webhook http://a\.test\): colour: Extra inputs are not permitted",
        ),
        (
            '[{"type": "slack", "url": "http://a.test/1"}, {"type": "slack", "url": "http://a.test/1"}]',
            r"channel 1 \(slack http://a\.test/…\): same type and url as channel 0",
        ),
    ],
)
def test_parse_channels_names_the_bad_item(text: str, expected: str) -> None:
    with pytest.raises(ChannelConfigError, match=expected) as caught:
        parse_channels(text)
    assert isinstance(caught.value, ValueError)


def test_parse_channels_reports_every_problem_without_leaking_urls() -> None:
    secret_path = "T000/B000/XXXXSECRET"
    text = (
        f'[{{"type": "slack", "url": "https://hooks.slack.com/services/{secret_path}",'
        ' "severity": "loud"}, {"type": "webhook", "url": "file:///etc"}]'
    )
    with pytest.raises(ChannelConfigError) as caught:
        parse_channels(text)
    problems = caught.value.problems
    assert len(problems) == 2
    assert problems[0].startswith("channel 0 (slack https://hooks.slack.com/…): severity:")
    assert problems[1].startswith("channel 1 (webhook file://")
    assert secret_path not in str(caught.value)


def test_redact_url_hides_the_path() -> None:
    assert redact_url("https://hooks.slack.com/services/T/B/X") == "https://hooks.slack.com/…"
    assert redact_url("http://127.0.0.1:9093") == "http://127.0.0.1:9093"
