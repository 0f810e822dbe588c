"""Teams and PagerDuty over real HTTP, to receivers that check requests as the real services do.

``PagerDutyApi`` is an Events API v2 on 127.0.0.1: it refuses, with 400 and PagerDuty's error
body, what the real API refuses (a body that is not JSON, a routing key that is not 32
characters, an unknown ``event_action``, a trigger without ``summary``, ``source`` or a known
``severity``, a summary over 1024 characters, a dedup key over 255), answers 202 with the
dedup key otherwise, and keeps PagerDuty's alert state per dedup key (a trigger opens or adds
to an alert, a resolve closes it, a resolve of an unknown key is dropped), so a test reads the
incidents a rollout left behind. ``TeamsWorkflow`` is a Workflows webhook: it answers 202 to a
message whose attachment is an Adaptive Card (1.4 or later), 400 to anything else. Both can be
told to answer something else next (429 with ``Retry-After``, 400). Alerts reach the outbox the
way the runner writes them (``Outbox`` of ``test_alerts_delivery``), and retries run on a
``FakeClock``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from rollout.alerts import DELIVERED, FAILED, RETRY, AlertDispatcher
from rollout.alerts.dispatcher import NEVER, PERMANENT_PREFIX
from rollout.alerts.payload import NON_TERMINAL_EVENTS
from rollout.clock import FakeClock
from rollout.plan import AlertChannel
from rollout.sandbox.server import SandboxServer
from rollout.serving.auth import PatAuth
from rollout.serving.client import ServingClient
from rollout.store import Store, open_store
from tests.integration import test_alerts_delivery as delivery
from tests.integration.test_alerts_delivery import (
    SETTINGS,
    Outbox,
    Outcomes,
    Received,
    Receiver,
    Reply,
)
from tests.integration.test_engine_sandbox import HEALTHY, make_endpoint, plan, run_plan
from tests.postgres import fresh_schema

ROUTING_KEY = "0123456789abcdef0123456789ABCDEF"
STATUS_PAGE = "https://rollout.example.com/"
SEVERITIES = {"critical", "error", "warning", "info"}
ACTIONS = {"trigger", "acknowledge", "resolve"}


def pagerduty_problems(body: Any) -> list[str]:
    """What the Events API v2 refuses in ``body`` (its documented rules), as its errors list."""
    if not isinstance(body, dict):
        return ["Event object is invalid"]
    problems = []
    key = body.get("routing_key")
    if not isinstance(key, str) or len(key) != 32:
        problems.append("Length of 'routing_key' is incorrect (should be 32 characters)")
    action = body.get("event_action")
    if action not in ACTIONS:
        problems.append("'event_action' is invalid (must be one of trigger, acknowledge, resolve)")
    dedup = body.get("dedup_key")
    if dedup is not None and (not isinstance(dedup, str) or len(dedup) > 255):
        problems.append("'dedup_key' must be a string of at most 255 characters")
    if action != "trigger":
        if not isinstance(dedup, str) or not dedup:
            problems.append("'dedup_key' is required for acknowledge and resolve")
        return problems
    payload = body.get("payload")
    if not isinstance(payload, dict):
        return [*problems, "'payload' is missing or not an object"]
    summary = payload.get("summary")
    if not isinstance(summary, str) or not summary:
        problems.append("'payload.summary' is missing or blank")
    elif len(summary) > 1024:
        problems.append("'payload.summary' is longer than 1024 characters")
    if not isinstance(payload.get("source"), str) or not payload["source"]:
        problems.append("'payload.source' is missing or blank")
    if payload.get("severity") not in SEVERITIES:
        problems.append("'payload.severity' is invalid (must be critical, error, warning, info)")
    details = payload.get("custom_details")
    if details is not None and not isinstance(details, dict):
        problems.append("'payload.custom_details' must be an object")
    links = body.get("links") or []
    if not all(isinstance(link, dict) and isinstance(link.get("href"), str) for link in links):
        problems.append("'links' items need an href")
    return problems


def teams_problems(body: Any) -> list[str]:
    """What a Workflows webhook ("post card") cannot post: anything but an Adaptive Card."""
    if not isinstance(body, dict) or body.get("type") != "message":
        return ["type must be message"]
    attachments = body.get("attachments")
    if not isinstance(attachments, list) or not attachments:
        return ["attachments is of type Null"]
    problems = []
    for item in attachments:
        if item.get("contentType") != "application/vnd.microsoft.card.adaptive":
            problems.append("attachment is not an Adaptive Card")
        if "contentUrl" in item and item["contentUrl"] is not None:
            problems.append("contentUrl must be null")
        card = item.get("content")
        if not isinstance(card, dict) or card.get("type") != "AdaptiveCard":
            problems.append("content is not an AdaptiveCard")
            continue
        version = tuple(int(p) for p in str(card.get("version", "0")).split("."))
        if version < (1, 4):
            problems.append(f"card version {card.get('version')} is older than 1.4")
        if not isinstance(card.get("body"), list) or not card["body"]:
            problems.append("card has no body")
        actions = card.get("actions") or []
        if not all(a.get("type") == "Action.OpenUrl" and a.get("url") for a in actions):
            problems.append("only Action.OpenUrl with a url is expected")
    return problems


def json_reply(status: int, body: dict[str, Any], **headers: str) -> Reply:
    return Reply(status, {"Content-Type": "application/json", **headers}, json.dumps(body).encode())


class Service:
    """A loopback ``Receiver`` whose answers come from ``answer`` (the service's own rules),
    unless ``force`` scripted the next one."""

    def __init__(self) -> None:
        self.receiver = Receiver(answer=self.answer)

    def answer(self, body: bytes) -> Reply:
        raise NotImplementedError

    @property
    def base(self) -> str:
        return self.receiver.url

    @property
    def requests(self) -> list[Received]:
        return self.receiver.requests

    def statuses(self) -> list[int]:
        return [request.answered for request in self.requests]

    def bodies(self) -> list[Any]:
        return [request.json() for request in self.requests]

    def force(self, status: int, body: dict[str, Any], **headers: str) -> None:
        """Answer the next request with ``status`` and ``body``, whatever it holds."""
        self.receiver.script(json_reply(status, body, **headers))

    def close(self) -> None:
        self.receiver.close()


def parsed(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None


class PagerDutyApi(Service):
    """The Events API v2 as documented, with the alerts it holds (dedup key -> state)."""

    def __init__(self) -> None:
        self.alerts: dict[str, str] = {}  # "triggered" / "resolved"
        self.triggers: dict[str, int] = {}
        self.throttled_resolves = 0  # how many resolves to come are answered 429
        super().__init__()

    @property
    def url(self) -> str:
        return self.base + "/v2/enqueue"

    def answer(self, body: bytes) -> Reply:
        event = parsed(body)
        problems = pagerduty_problems(event)
        if problems:
            return json_reply(
                400,
                {"status": "invalid event", "message": "Event object is invalid",
                 "errors": problems},
            )
        key = event["dedup_key"]
        if event["event_action"] == "resolve" and self.throttled_resolves > 0:
            self.throttled_resolves -= 1
            return json_reply(429, {"status": "throttled", "message": "Too many requests"})
        if event["event_action"] == "trigger":
            self.alerts[key] = "triggered"
            self.triggers[key] = self.triggers.get(key, 0) + 1
        elif self.alerts.get(key) == "triggered":
            self.alerts[key] = "resolved"
        # A resolve of an alert that is not open is accepted and dropped.
        return json_reply(
            202, {"status": "success", "message": "Event processed", "dedup_key": key}
        )


class TeamsWorkflow(Service):
    def answer(self, body: bytes) -> Reply:
        problems = teams_problems(parsed(body))
        if problems:
            return json_reply(
                400, {"error": {"code": "InvalidRequestContent", "message": problems[0]}}
            )
        return Reply(202, body=b"")


@pytest.fixture
def pagerduty() -> Iterator[PagerDutyApi]:
    service = PagerDutyApi()
    yield service
    service.close()


@pytest.fixture
def teams() -> Iterator[TeamsWorkflow]:
    service = TeamsWorkflow()
    yield service
    service.close()


# The delivery tests' fixtures: a plain client, a fake clock at T0, the runner-shaped outbox.
http = delivery.http
clock = delivery.clock
outbox = delivery.outbox


ONCALL = SETTINGS.model_copy(update={"public_url": STATUS_PAGE})


def pager(service: PagerDutyApi, severity: str = "warn") -> AlertChannel:
    return AlertChannel(
        type="pagerduty", url=service.url, routing_key=ROUTING_KEY, severity=severity
    )


def key(rollout: str, event: str) -> str:
    return f"rollout/{rollout}/ads-endpoint/{event}"


# --- PagerDuty -------------------------------------------------------------------------------


async def test_one_rollouts_incidents_open_and_close_by_the_same_dedup_keys(
    store: Store, outbox: Outbox, clock: FakeClock, pagerduty: PagerDutyApi,
    http: httpx.AsyncClient,
) -> None:
    channel = pager(pagerduty)
    dispatcher = AlertDispatcher(store, http, clock, ONCALL)
    outbox.start("r1")
    outbox.emit("r1", "paused", "warn", [channel], phase="paused",
                details={"reason": "drift: the split was changed by hand"})
    outbox.emit("r1", "deadline_passed", "warn", [channel], phase="paused")
    assert await dispatcher.run_once() == 2
    assert pagerduty.alerts == {
        key("r1", "paused"): "triggered", key("r1", "deadline_passed"): "triggered"
    }
    trigger = next(b for b in pagerduty.bodies() if b["dedup_key"] == key("r1", "paused"))
    assert trigger["payload"]["custom_details"]["reason"] == "drift: the split was changed by hand"
    assert trigger["links"] == [{"href": STATUS_PAGE, "text": "Rollout status page"}]

    # The rollout ends well: an info alert, below the channel's warn, still closes them all.
    clock.advance(60)
    outbox.emit("r1", "succeeded", "info", [channel], phase="succeeded")
    assert await dispatcher.run_once() == 1
    assert pagerduty.alerts == {
        key("r1", "paused"): "resolved", key("r1", "deadline_passed"): "resolved"
    }
    resolves = [b for b in pagerduty.bodies() if b["event_action"] == "resolve"]
    assert {b["dedup_key"] for b in resolves} == {key("r1", e) for e in NON_TERMINAL_EVENTS}
    assert set(pagerduty.statuses()) == {202}
    assert store.pending_alert_count() == 0

    # Another rollout rolls back: its pause is closed and the rollback stays open for people.
    outbox.start("r2")
    outbox.emit("r2", "paused", "warn", [channel], phase="paused")
    await dispatcher.run_once()
    assert pagerduty.alerts[key("r2", "paused")] == "triggered"
    outbox.emit("r2", "rolled_back", "error", [channel], phase="rolled_back",
                details={"reason": "analysis failed"})
    await dispatcher.run_once()
    assert pagerduty.alerts[key("r2", "paused")] == "resolved"
    assert pagerduty.alerts[key("r2", "rolled_back")] == "triggered"
    assert pagerduty.alerts[key("r1", "paused")] == "resolved"  # r1's alerts are r1's

    # A pause retried after its rollout ended opens nothing: it goes out as its resolve.
    outbox.start("r3")
    outbox.emit("r3", "paused", "warn", [channel], phase="paused")
    outbox.emit("r3", "aborted", "warn", [channel], phase="aborted")
    await dispatcher.run_once()
    assert not any(k.startswith("rollout/r3/") for k in pagerduty.alerts)
    assert set(pagerduty.statuses()) == {202}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        opened = open_store(f"sqlite:///{tmp_path / 'rollout.db'}")
        opened.migrate()
        yield opened
        opened.close()
        return
    with fresh_schema("test") as url:
        opened = open_store(url)
        opened.migrate()
        yield opened
        opened.close()


async def test_a_400_is_a_permanent_failure_never_sent_again(
    any_store: Store, clock: FakeClock, pagerduty: PagerDutyApi, http: httpx.AsyncClient
) -> None:
    outbox = Outbox(any_store, clock)
    outbox.start("r1")
    outbox.emit("r1", "rolled_back", "error", [pager(pagerduty)], phase="rolled_back")
    pagerduty.force(400, {"status": "invalid event", "message": "Event object is invalid",
                          "errors": ["Invalid routing key"]})
    outcomes = Outcomes()
    dispatcher = AlertDispatcher(any_store, http, clock, ONCALL, on_delivery=outcomes)

    assert await dispatcher.run_once() == 1
    assert outcomes.seen == [("pagerduty", FAILED)]
    assert any_store.pending_alert_count() == 1  # kept, undelivered

    # Not sent again, however long the dispatcher runs.
    clock.advance(30 * 86_400)
    assert await dispatcher.run_once() == 0
    assert len(pagerduty.requests) == 1
    [row] = any_store.claim_alerts(NEVER, 10, 1.0)  # due only at the end of time
    assert row.delivered_at is None
    assert row.last_error is not None
    assert row.last_error.startswith(PERMANENT_PREFIX)
    assert "answered 400" in row.last_error
    assert ROUTING_KEY not in row.last_error


async def test_a_429_is_retried_after_its_retry_after_and_lands_once(
    store: Store, outbox: Outbox, clock: FakeClock, pagerduty: PagerDutyApi,
    http: httpx.AsyncClient,
) -> None:
    outbox.start("r1")
    outbox.emit("r1", "paused", "warn", [pager(pagerduty)], phase="paused")
    pagerduty.force(429, {"status": "throttled", "message": "Too many requests"},
                    **{"Retry-After": "5"})
    outcomes = Outcomes()
    dispatcher = AlertDispatcher(store, http, clock, ONCALL, on_delivery=outcomes)

    assert await dispatcher.run_once() == 1
    clock.advance(2)  # the backoff alone (1 s at most) would be due: Retry-After wins
    assert await dispatcher.run_once() == 0
    clock.advance(4)
    assert await dispatcher.run_once() == 1
    assert outcomes.seen == [("pagerduty", RETRY), ("pagerduty", DELIVERED)]
    assert pagerduty.statuses() == [429, 202]
    first, second = pagerduty.bodies()
    assert first == second  # the same event, the same dedup key
    assert pagerduty.triggers == {key("r1", "paused"): 1}
    assert store.pending_alert_count() == 0


async def test_a_throttled_resolve_retries_the_whole_alert_and_pagerduty_dedupes_it(
    store: Store, outbox: Outbox, clock: FakeClock, pagerduty: PagerDutyApi,
    http: httpx.AsyncClient,
) -> None:
    channel = pager(pagerduty)
    outcomes = Outcomes()
    dispatcher = AlertDispatcher(store, http, clock, ONCALL, on_delivery=outcomes)
    outbox.start("r1")
    outbox.emit("r1", "paused", "warn", [channel], phase="paused")
    await dispatcher.run_once()
    outbox.emit("r1", "rolled_back", "error", [channel], phase="rolled_back")
    pagerduty.throttled_resolves = 1

    assert await dispatcher.run_once() == 1
    clock.advance(ONCALL.initial_backoff)
    assert await dispatcher.run_once() == 1
    assert outcomes.seen == [
        ("pagerduty", DELIVERED), ("pagerduty", RETRY), ("pagerduty", DELIVERED)
    ]
    assert pagerduty.statuses().count(429) == 1
    assert pagerduty.triggers[key("r1", "rolled_back")] == 2  # sent twice, one PagerDuty alert
    assert pagerduty.alerts == {
        key("r1", "paused"): "resolved", key("r1", "rolled_back"): "triggered"
    }
    assert store.pending_alert_count() == 0


async def test_a_pagerduty_url_on_loopback_is_refused_at_delivery(
    store: Store, outbox: Outbox, clock: FakeClock, pagerduty: PagerDutyApi,
    http: httpx.AsyncClient,
) -> None:
    outbox.start("r1")
    outbox.emit("r1", "paused", "warn", [pager(pagerduty)], phase="paused")
    closed = ONCALL.model_copy(update={"allowed_hosts": ""})
    outcomes = Outcomes()
    dispatcher = AlertDispatcher(store, http, clock, closed, on_delivery=outcomes)
    assert await dispatcher.run_once() == 1
    assert outcomes.seen == [("pagerduty", FAILED)]
    assert pagerduty.requests == []


async def test_a_pager_set_to_error_hears_of_a_successful_rollout_only_as_resolves(
    sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store, pagerduty: PagerDutyApi,
    http: httpx.AsyncClient,
) -> None:
    """The runner writes the rollout's end to a pager whatever the pager's severity, and only
    to a pager: a webhook set to ``error`` hears nothing of a rollout that went well."""
    make_endpoint(sandbox_admin, HEALTHY)
    channels = [
        {"type": "pagerduty", "url": pagerduty.url, "routing_key": ROUTING_KEY,
         "severity": "error"},
        {"type": "webhook", "url": "http://127.0.0.1:9/hook", "severity": "error"},
    ]
    async with ServingClient(sandbox.url, PatAuth(sandbox.token), clock=sandbox.clock) as client:
        rollout_id, phase = await run_plan(sandbox, store, client, plan(alerts=channels))
    assert phase.value == "succeeded"
    assert isinstance(sandbox.clock, FakeClock)
    dispatcher = AlertDispatcher(store, http, sandbox.clock, ONCALL)
    assert await dispatcher.run_once() == 1  # the succeeded alert, to the pager only
    assert store.pending_alert_count() == 0
    assert sorted(actions_of(pagerduty)) == sorted(  # sent together: in any order
        ("resolve", f"rollout/{rollout_id}/ads/{event}") for event in NON_TERMINAL_EVENTS
    )


def actions_of(service: PagerDutyApi) -> list[tuple[str, str]]:
    return [(body["event_action"], body["dedup_key"]) for body in service.bodies()]


# --- Teams -----------------------------------------------------------------------------------


async def test_a_teams_workflow_gets_an_adaptive_card_with_the_reason_and_numbers(
    store: Store, outbox: Outbox, clock: FakeClock, teams: TeamsWorkflow,
    http: httpx.AsyncClient,
) -> None:
    verdict = {
        "outcome": "fail",
        "checks": [
            {"check": "error_rate", "outcome": "fail", "candidate_value": 0.031,
             "baseline_value": 0.004, "candidate_n": 1250, "baseline_n": 23750,
             "limit": "at most +0.5 %"},
            {"check": "latency_p99_ms", "outcome": "pass", "candidate_value": 120.0,
             "baseline_value": 118.0, "candidate_n": 1250, "baseline_n": 23750},
        ],
    }
    url = teams.base + "/workflows/abc/triggers/manual/paths/invoke?sig=WorkflowSig0042"
    channel = AlertChannel(type="teams", url=url)
    outbox.start("r1")
    outbox.emit("r1", "rolled_back", "error", [channel], phase="rolled_back",
                details={"reason": "analysis failed: error_rate fails", "verdict": verdict})
    outcomes = Outcomes()
    dispatcher = AlertDispatcher(store, http, clock, ONCALL, on_delivery=outcomes)

    assert await dispatcher.run_once() == 1
    assert outcomes.seen == [("teams", DELIVERED)]
    [request] = teams.requests
    assert request.answered == 202
    body = request.json()
    assert request.path == "/workflows/abc/triggers/manual/paths/invoke?sig=WorkflowSig0042"
    card = body["attachments"][0]["content"]
    text = json.dumps(card)
    assert "Rolled back: ads-endpoint" in card["body"][0]["text"]
    assert "analysis failed: error_rate fails" in text
    assert "candidate 0.031 (n=1,250) vs baseline 0.004 (n=23,750); limit at most +0.5 %" in text
    assert "latency_p99_ms" not in text  # a failed verdict shows what failed
    assert card["actions"][0]["url"] == STATUS_PAGE
    assert store.pending_alert_count() == 0


async def test_a_workflow_refusing_the_card_is_retried_not_dropped(
    store: Store, outbox: Outbox, clock: FakeClock, teams: TeamsWorkflow,
    http: httpx.AsyncClient,
) -> None:
    outbox.start("r1")
    outbox.emit("r1", "paused", "warn", [AlertChannel(type="teams", url=teams.base + "/w")])
    teams.force(400, {"error": {"code": "WorkflowTriggerIsNotEnabled"}})
    outcomes = Outcomes()
    dispatcher = AlertDispatcher(store, http, clock, ONCALL, on_delivery=outcomes)
    assert await dispatcher.run_once() == 1
    clock.advance(ONCALL.max_backoff)
    assert await dispatcher.run_once() == 1
    assert outcomes.seen == [("teams", FAILED), ("teams", DELIVERED)]
    assert teams.statuses() == [400, 202]
