"""Alerts over real HTTP: outbox rows in a real SQLite store, delivered by the dispatcher to
receivers listening on loopback ports.

Each receiver is a small ``http.server`` in a thread that records every request (path, headers,
raw body) and answers from a script (status, headers, delay), so the tests see exactly what a
webhook endpoint, Slack or Alertmanager would see, and make them fail on purpose. Alerts are
put in the outbox the way the runner does: a rollout is created, then commits carry events
with their alert rows. Retries run on a ``FakeClock``: the tests advance it between
``run_once`` calls.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from rollout.alerts import DELIVERED, FAILED, RETRY, AlertDispatcher, TargetRefused
from rollout.alerts.alertmanager import ALERTNAMES
from rollout.alerts.payload import NON_TERMINAL_EVENTS
from rollout.alerts.targets import TargetPolicy, guarded_client
from rollout.clock import FakeClock, SystemClock
from rollout.health import WorkspaceWatch
from rollout.plan import AlertChannel
from rollout.settings import AlertSettings
from rollout.store import (
    NewAlert,
    NewEvent,
    OutboxAlert,
    RolloutRecord,
    Store,
    StoreUnavailable,
    open_store,
)

README = Path(__file__).resolve().parents[2] / "rollout" / "alerts" / "README.md"
T0 = 1_800_000_000.0


# --- receivers -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"ok"
    delay: float = 0.0


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: bytes
    answered: int

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def alert_id(self) -> str:
        return self.headers["x-rollout-alert-id"]


class Receiver:
    """An HTTP server on 127.0.0.1 that records each POST and answers with the next scripted
    ``Reply``; once the script is used up, with ``answer(body)`` (default: 200 "ok"), called
    under the receiver's lock."""

    def __init__(self, answer: Callable[[bytes], Reply] | None = None) -> None:
        self.requests: list[Received] = []
        self._script: list[Reply] = []
        self._lock = threading.Lock()
        self._answer = answer if answer is not None else (lambda _body: Reply())
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    reply = receiver._script.pop(0) if receiver._script else receiver._answer(body)
                    receiver.requests.append(
                        Received(
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            reply.status,
                        )
                    )
                if reply.delay:
                    time.sleep(reply.delay)
                try:
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(reply.body)))
                    self.end_headers()
                    self.wfile.write(reply.body)
                except OSError:
                    pass  # the client gave up (a timeout, a cancelled dispatcher)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 -- the base's name
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def script(self, *replies: Reply) -> None:
        with self._lock:
            self._script.extend(replies)

    def delivered(self) -> Counter[str]:
        """How many times each alert id was answered 2xx."""
        with self._lock:
            return Counter(r.alert_id for r in self.requests if 200 <= r.answered < 300)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


# --- the outbox, filled as the runner fills it ----------------------------------------------


class Outbox:
    """Rollouts and commits through the store's public API, with runner-shaped alert rows."""

    def __init__(self, store: Store, clock: FakeClock) -> None:
        self.store = store
        self.clock = clock

    def start(self, rollout_id: str, endpoint: str = "ads-endpoint") -> None:
        now = self.clock.now()
        record = RolloutRecord(
            id=rollout_id,
            endpoint=endpoint,
            phase="pending",
            version=1,
            plan={},
            state={},
            created_at=now,
            updated_at=now,
            due_at=None,
        )
        self.store.create(record, NewEvent("submitted", None, "pending", "submitted", {}, now), [])

    def emit(
        self,
        rollout_id: str,
        event: str,
        severity: str,
        channels: list[AlertChannel],
        *,
        phase: str = "progressing",
        details: dict[str, Any] | None = None,
        payload: dict[str, Any] | None = None,
    ) -> list[str]:
        """Commit one decision with its event and one alert row per channel; the dedup keys."""
        record = self.store.get(rollout_id)
        now = self.clock.now()
        seq = len(self.store.events(rollout_id)) + 1
        rows = []
        for index, channel in enumerate(channels):
            body = payload or {
                "rollout": rollout_id,
                "endpoint": record.endpoint,
                "candidate": "ads-model-4",
                "baseline": "ads-model-3",
                "event": event,
                "severity": severity,
                "summary": f"{record.endpoint}: {event.replace('_', ' ')}",
                "phase": phase,
                "details": details or {},
                "channel": channel.model_dump(mode="json"),
            }
            rows.append(NewAlert(f"{rollout_id}:{event}:{seq}:{index}", channel.type, body))
        self.store.commit(
            rollout_id,
            record.version,
            phase=phase,
            state=record.state,
            due_at=None,
            updated_at=now,
            events=[NewEvent(event, record.phase, phase, event, {}, now)],
            alerts=rows,
            consumed_commands=[],
        )
        return [row.dedup_key for row in rows]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(T0)


@pytest.fixture
def outbox(store: Store, clock: FakeClock) -> Outbox:
    return Outbox(store, clock)


# The receivers listen on loopback, where alerts go only when allowed explicitly.
SETTINGS = AlertSettings(
    timeout=2.0, lease=30.0, initial_backoff=1.0, max_backoff=8.0, poll_interval=0.01,
    allowed_hosts="127.0.0.1",
)


def webhook(receiver: Receiver, **extra: Any) -> AlertChannel:
    return AlertChannel(type="webhook", url=receiver.url + "/hooks/rollouts", **extra)


class Outcomes:
    """An ``on_delivery`` hook that remembers what it was told."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    def __call__(self, channel: str, outcome: str) -> None:
        self.seen.append((channel, outcome))


def readme_verify() -> Any:
    text = README.read_text()
    section = text[text.index("### Verifying the signature") :]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    namespace: dict[str, Any] = {}
    exec(code.group(1), namespace)  # noqa: S102 -- the documented snippet is what is tested
    return namespace["verify"]


async def eventually(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until ``condition()`` holds, at most ``within`` seconds (then the asserts fail)."""
    deadline = time.monotonic() + within
    # The condition lives in a server thread or in the database: there is nothing to await on.
    while not condition() and time.monotonic() < deadline:  # noqa: ASYNC110 -- see above
        await asyncio.sleep(0.01)


# --- each channel over HTTP ------------------------------------------------------------------


async def test_webhook_is_signed_and_verifies_with_the_readme_snippet(
    store: Store, outbox: Outbox, clock: FakeClock, receiver: Receiver, http: httpx.AsyncClient
) -> None:
    outbox.start("r1")
    verdict = {
        "outcome": "fail",
        "checks": [
            {
                "check": "error_rate",
                "outcome": "fail",
                "candidate_value": 0.03,
                "baseline_value": 0.004,
            }
        ],
    }
    [key] = outbox.emit(
        "r1",
        "rolled_back",
        "error",
        [webhook(receiver, secret="s3cr3t")],
        phase="rolled_back",
        details={"reason": "analysis failed", "verdict": verdict},
    )
    clock.advance(5)
    dispatcher = AlertDispatcher(store, http, clock, SETTINGS)

    assert await dispatcher.run_once() == 1

    [request] = receiver.requests
    assert request.path == "/hooks/rollouts"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"].startswith("rollout/")
    assert request.alert_id == key
    assert request.headers["x-rollout-event"] == "rolled_back"
    verify = readme_verify()
    timestamp, signature = (
        request.headers["x-rollout-timestamp"],
        request.headers["x-rollout-signature"],
    )
    assert verify("s3cr3t", request.body, timestamp, signature, now=clock.now())
    assert not verify("wrong", request.body, timestamp, signature, now=clock.now())
    assert not verify("s3cr3t", request.body + b" ", timestamp, signature, now=clock.now())

    body = request.json()
    assert body["schema"] == "rollout.alert/v1"
    assert body["id"] == key
    assert body["event"] == "rolled_back"
    assert body["severity"] == "error"
    assert body["phase"] == "rolled_back"
    assert body["details"] == {"reason": "analysis failed", "verdict": verdict}
    assert body["occurred_at"] == "2027-01-15T08:00:00.000Z"
    assert body["sent_at"] == "2027-01-15T08:00:05.000Z"
    assert body["attempt"] == 1
    assert "channel" not in body
    assert b"s3cr3t" not in request.body
    assert store.pending_alert_count() == 0
    assert await dispatcher.run_once() == 0  # delivered once, never again


async def test_slack_gets_blocks(
    store: Store, outbox: Outbox, clock: FakeClock, receiver: Receiver, http: httpx.AsyncClient
) -> None:
    outbox.start("r1")
    slack = AlertChannel(type="slack", url=receiver.url + "/services/T0/B0/XYZ")
    details = {"reason": "config update failed", "build_logs_tail": "ERROR: no module named x"}
    outbox.emit("r1", "rolled_back", "error", [slack], phase="rolled_back", details=details)

    assert await AlertDispatcher(store, http, clock, SETTINGS).run_once() == 1

    [request] = receiver.requests
    assert request.path == "/services/T0/B0/XYZ"
    message = request.json()
    assert message["text"] == "Rolled back: ads-endpoint: rolled back"
    assert [b["type"] for b in message["blocks"]] == [
        "header",
        "section",
        "section",
        "section",
        "context",
    ]
    assert message["blocks"][0]["text"]["text"] == "Rolled back: ads-endpoint"
    assert "```ERROR: no module named x```" in message["blocks"][3]["text"]["text"]
    assert store.pending_alert_count() == 0


async def test_alertmanager_fires_then_resolves_when_the_rollout_ends(
    store: Store, outbox: Outbox, clock: FakeClock, receiver: Receiver, http: httpx.AsyncClient
) -> None:
    outbox.start("r1")
    am = AlertChannel(type="alertmanager", url=receiver.url + "/am/")
    outbox.emit("r1", "paused", "warn", [am], phase="paused")
    dispatcher = AlertDispatcher(store, http, clock, SETTINGS)
    assert await dispatcher.run_once() == 1

    clock.advance(600)
    outbox.emit(
        "r1",
        "rolled_back",
        "error",
        [am],
        phase="rolled_back",
        details={"reason": "aborted by hand"},
    )
    assert await dispatcher.run_once() == 1

    paused, ended = receiver.requests
    assert paused.path == ended.path == "/am/api/v2/alerts"
    [fired] = paused.json()
    assert fired["labels"] == {
        "alertname": "RolloutPaused",
        "endpoint": "ads-endpoint",
        "rollout": "r1",
        "severity": "warning",
    }
    assert fired["startsAt"] == "2027-01-15T08:00:00.000Z"
    assert fired["endsAt"] == "2027-01-15T09:00:00.000Z"

    terminal, *resolves = ended.json()
    assert terminal["labels"]["alertname"] == "RolloutRolledBack"
    assert terminal["labels"]["severity"] == "critical"
    assert terminal["annotations"]["description"].endswith("Reason: aborted by hand")
    assert terminal["endsAt"] == "2027-01-15T09:10:00.000Z"  # held an hour after the send
    assert len(resolves) == 3 * len(NON_TERMINAL_EVENTS)
    # The paused alert, with exactly the labels it fired with, ends now.
    [resolve] = [r for r in resolves if r["labels"] == fired["labels"]]
    assert resolve["endsAt"] == "2027-01-15T08:10:00.000Z"
    assert {r["labels"]["alertname"] for r in resolves} == {
        ALERTNAMES[e] for e in NON_TERMINAL_EVENTS
    }


async def test_the_controllers_workspace_alert_is_delivered_then_resolved(
    store: Store, clock: FakeClock, receiver: Receiver, http: httpx.AsyncClient
) -> None:
    am = AlertChannel(type="alertmanager", url=receiver.url + "/am/")
    watch = WorkspaceWatch(
        store, clock, workspace="ws.example", outage_after=60, channels=[am, webhook(receiver)]
    )
    dispatcher = AlertDispatcher(store, http, clock, SETTINGS)
    watch.on_response("get_endpoint", 503, 0.1)
    clock.advance(60)
    watch.on_response("get_endpoint", None, 30.0)
    await watch.drain()
    assert await dispatcher.run_once() == 2
    clock.advance(600)
    watch.on_response("get_endpoint", 200, 0.1)
    await watch.drain()
    assert await dispatcher.run_once() == 2

    by_path: dict[str, list[Any]] = {}
    for request in receiver.requests:
        by_path.setdefault(request.path, []).append(request.json())
    fired, resolved = by_path["/am/api/v2/alerts"]
    assert len(fired) == 1, "the alert alone: a controller alert resolves nothing else"
    assert len(resolved) == 3, "the resolve alone, at each severity"
    assert fired[0]["labels"] == {
        "alertname": "RolloutWorkspaceUnreachable",
        "endpoint": "ws.example",
        "rollout": "controller",
        "severity": "critical",
    }
    assert fired[0]["endsAt"] > "2027-01-15T08:10:00.000Z"
    assert fired[0]["labels"] in [r["labels"] for r in resolved]
    assert {r["endsAt"] for r in resolved} == {"2027-01-15T08:11:00.000Z"}
    unreachable, reachable = by_path["/hooks/rollouts"]
    assert (unreachable["event"], reachable["event"]) == (
        "workspace_unreachable", "workspace_reachable")
    assert unreachable["details"]["last_error"] == "no answer (connection error or timeout)"
    assert reachable["details"]["outage_seconds"] == 660
    assert store.pending_alert_count() == 0


async def test_alertmanager_alert_retried_after_the_rollout_ended_goes_out_resolved(
    store: Store, outbox: Outbox, clock: FakeClock, receiver: Receiver, http: httpx.AsyncClient
) -> None:
    outbox.start("r1")
    am = AlertChannel(type="alertmanager", url=receiver.url)
    outbox.emit("r1", "paused", "warn", [am], phase="paused")
    receiver.script(Reply(503))
    dispatcher = AlertDispatcher(store, http, clock, SETTINGS)
    assert await dispatcher.run_once() == 1  # the paused alert fails
    outbox.emit("r1", "rolled_back", "error", [am], phase="rolled_back")
    clock.advance(SETTINGS.max_backoff)

    assert await dispatcher.run_once() == 2
    by_name = {r.json()[0]["labels"]["alertname"]: r.json()[0] for r in receiver.requests[1:]}
    assert by_name["RolloutPaused"]["endsAt"] == "2027-01-15T08:00:08.000Z"  # resolved: now
    assert by_name["RolloutRolledBack"]["endsAt"] == "2027-01-15T09:00:08.000Z"
    assert store.pending_alert_count() == 0


# --- retries, dedup, at-least-once -----------------------------------------------------------


async def test_failing_receiver_gets_each_alert_exactly_once_after_retries(
    store: Store, outbox: Outbox, clock: FakeClock, receiver: Receiver, http: httpx.AsyncClient
) -> None:
    outbox.start("r1")
    channel = webhook(receiver)
    keys = [
        key
        for event in ("started", "step_advanced", "paused")
        for key in outbox.emit("r1", event, "warn", [channel])
    ]
    receiver.script(*[Reply(500)] * 3, *[Reply(429, {"Retry-After": "30"})] * 3)
    outcomes = Outcomes()
    dispatcher = AlertDispatcher(store, http, clock, SETTINGS, on_delivery=outcomes)

    assert await dispatcher.run_once() == 3  # three 500s
    assert await dispatcher.run_once() == 0  # backing off
    clock.advance(SETTINGS.initial_backoff)  # the first backoff is at most initial_backoff
    assert await dispatcher.run_once() == 3  # three 429s, asking for 30 s
    clock.advance(SETTINGS.max_backoff)
    assert await dispatcher.run_once() == 0  # Retry-After wins over the 8 s cap
    clock.advance(30 - SETTINGS.max_backoff)
    assert await dispatcher.run_once() == 3  # delivered
    clock.advance(3600)
    assert await dispatcher.run_once() == 0

    assert receiver.delivered() == Counter(dict.fromkeys(keys, 1))
    assert [r.answered for r in receiver.requests] == [500] * 3 + [429] * 3 + [200] * 3
    # Every attempt carried the same id; the body counts attempts.
    for key in keys:
        attempts = [r.json()["attempt"] for r in receiver.requests if r.alert_id == key]
        assert attempts == [1, 2, 3]
    assert Counter(outcome for _, outcome in outcomes.seen) == {RETRY: 6, DELIVERED: 3}
    assert store.pending_alert_count() == 0


async def test_a_400_is_not_retryable_but_the_alert_is_kept_and_retried_at_max_backoff(
    store: Store, outbox: Outbox, clock: FakeClock, receiver: Receiver, http: httpx.AsyncClient
) -> None:
    outbox.start("r1")
    [key] = outbox.emit("r1", "failed", "error", [webhook(receiver)], phase="failed")
    receiver.script(Reply(500), Reply(400, body=b'{"error": "unknown field severity"}'))
    outcomes = Outcomes()
    dispatcher = AlertDispatcher(store, http, clock, SETTINGS, on_delivery=outcomes)

    assert await dispatcher.run_once() == 1
    clock.advance(SETTINGS.initial_backoff)
    assert await dispatcher.run_once() == 1
    assert store.pending_alert_count() == 1  # a 400 never drops the alert
    clock.advance(SETTINGS.max_backoff - 0.5)
    assert await dispatcher.run_once() == 0  # a non-retryable failure waits the longest backoff
    clock.advance(0.5)
    assert await dispatcher.run_once() == 1  # the receiver was fixed meanwhile

    assert outcomes.seen == [("webhook", RETRY), ("webhook", FAILED), ("webhook", DELIVERED)]
    assert receiver.delivered() == Counter({key: 1})
    assert store.pending_alert_count() == 0


async def test_a_batch_is_sent_concurrently(
    store: Store, outbox: Outbox, clock: FakeClock, receiver: Receiver, http: httpx.AsyncClient
) -> None:
    outbox.start("r1")
    for step in range(4):
        outbox.emit("r1", "step_advanced", "info", [webhook(receiver)], details={"step": step})
    receiver.script(*[Reply(delay=0.3)] * 4)
    dispatcher = AlertDispatcher(store, http, clock, SETTINGS, concurrency=4)
    started = time.monotonic()
    assert await dispatcher.run_once() == 4
    assert time.monotonic() - started < 0.9  # one at a time would take 1.2 s
    assert len(receiver.delivered()) == 4


async def test_unreachable_and_slow_receivers_are_retried(
    store: Store, outbox: Outbox, clock: FakeClock, receiver: Receiver, http: httpx.AsyncClient
) -> None:
    outbox.start("r1")
    closed = Receiver()
    closed.close()  # nothing listens on its port any more
    dead = AlertChannel(type="webhook", url=closed.url)
    outbox.emit("r1", "started", "info", [dead, webhook(receiver)])
    receiver.script(Reply(delay=1.0))
    outcomes = Outcomes()
    settings = SETTINGS.model_copy(update={"timeout": 0.3})
    dispatcher = AlertDispatcher(store, http, clock, settings, on_delivery=outcomes)

    started = time.monotonic()
    assert await dispatcher.run_once() == 2
    assert time.monotonic() - started < 0.9  # the slow receiver was cut off at the timeout
    assert outcomes.seen == [("webhook", RETRY), ("webhook", RETRY)]
    assert store.pending_alert_count() == 2
    clock.advance(SETTINGS.initial_backoff)
    assert await dispatcher.run_once() == 2
    assert len(receiver.delivered()) == 1  # the live one got through on its second attempt
    assert store.pending_alert_count() == 1  # the dead one waits for its receiver


async def test_two_dispatchers_sharing_a_store_deliver_each_alert_once(
    tmp_path: Path, receiver: Receiver, http: httpx.AsyncClient
) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first, second = open_store(url), open_store(url)  # two processes' worth of connections
    first.migrate()
    try:
        outbox = Outbox(first, FakeClock(time.time()))
        outbox.start("r1")
        keys = [
            key
            for step in range(20)
            for key in outbox.emit(
                "r1", "step_advanced", "info", [webhook(receiver)], details={"step": step}
            )
        ]
        receiver.script(*[Reply(delay=0.01)] * len(keys))
        counts = [Outcomes(), Outcomes()]
        dispatchers = [
            AlertDispatcher(store, http, SystemClock(), SETTINGS, on_delivery=hook, concurrency=3)
            for store, hook in zip((first, second), counts, strict=True)
        ]
        stop = asyncio.Event()
        runs = [asyncio.create_task(d.run(stop)) for d in dispatchers]
        await eventually(lambda: first.pending_alert_count() == 0, within=10)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*runs), timeout=5)
    finally:
        first.close()
        second.close()

    assert receiver.delivered() == Counter(dict.fromkeys(keys, 1))
    assert len(receiver.requests) == len(keys)
    delivered = [len(hook.seen) for hook in counts]
    assert sum(delivered) == len(keys)
    assert all(n > 0 for n in delivered), delivered  # both really worked the outbox


async def test_a_dispatcher_killed_after_sending_redelivers_with_the_same_id(
    tmp_path: Path, clock: FakeClock, receiver: Receiver, http: httpx.AsyncClient
) -> None:
    url = f"sqlite:///{tmp_path / 'crash.db'}"
    store = open_store(url)
    store.migrate()
    outbox = Outbox(store, clock)
    outbox.start("r1")
    [key] = outbox.emit("r1", "rolled_back", "error", [webhook(receiver)], phase="rolled_back")
    # The receiver stores the alert on arrival and answers slowly: the dispatcher is killed
    # after the alert reached the receiver, before it could record the delivery.
    receiver.script(Reply(delay=0.5))
    doomed = asyncio.create_task(AlertDispatcher(store, http, clock, SETTINGS).run_once())
    await eventually(lambda: bool(receiver.requests))
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    store.close()

    restarted = open_store(url)  # a new process on the same database
    try:
        dispatcher = AlertDispatcher(restarted, http, clock, SETTINGS)
        assert restarted.pending_alert_count() == 1
        assert await dispatcher.run_once() == 0  # the dead dispatcher's lease still holds
        clock.advance(SETTINGS.lease)
        assert await dispatcher.run_once() == 1
        assert restarted.pending_alert_count() == 0
    finally:
        restarted.close()

    first, second = receiver.requests
    assert first.alert_id == second.alert_id == key
    assert first.json()["id"] == second.json()["id"] == key
    assert [first.json()["attempt"], second.json()["attempt"]] == [1, 2]


class FlakyStore:
    """The real store, except that the first claim and the first ``mark_delivered`` fail as a
    database that is briefly unreachable would."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.claim_failures = 1
        self.mark_failures = 1

    def claim_alerts(self, now: float, limit: int, lease_seconds: float) -> list[OutboxAlert]:
        if self.claim_failures:
            self.claim_failures -= 1
            raise StoreUnavailable("database is locked")
        return self.inner.claim_alerts(now, limit, lease_seconds)

    def mark_delivered(self, alert_id: int, at: float) -> None:
        if self.mark_failures:
            self.mark_failures -= 1
            raise StoreUnavailable("database is locked")
        self.inner.mark_delivered(alert_id, at)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


async def test_run_goes_on_through_a_store_hiccup_and_a_malformed_alert(
    store: Store, outbox: Outbox, clock: FakeClock, receiver: Receiver, http: httpx.AsyncClient
) -> None:
    outbox.start("r1")
    channel = webhook(receiver)
    [bad] = outbox.emit(
        "r1",
        "paused",
        "warn",
        [channel],
        payload={"rollout": "r1", "event": "paused", "channel": {}},
    )
    [good] = outbox.emit("r1", "step_advanced", "info", [channel])
    outcomes = Outcomes()
    flaky = FlakyStore(store)
    # Long polls on the FakeClock: each idle wait moves time 5 s, so the lease runs out fast.
    settings = SETTINGS.model_copy(update={"poll_interval": 5.0})
    dispatcher = AlertDispatcher(flaky, http, clock, settings, on_delivery=outcomes)  # type: ignore[arg-type]  # duck-typed Store
    stop = asyncio.Event()
    run = asyncio.create_task(dispatcher.run(stop))
    # The first claim fails; the next one sends the good alert, whose mark fails, so the lease
    # has to run out (FakeClock sleeps advance time) before it is sent and recorded again.
    await eventually(lambda: receiver.delivered()[good] == 2)
    await eventually(lambda: store.pending_alert_count() == 1)
    stop.set()
    await asyncio.wait_for(run, timeout=5)

    assert not run.cancelled()
    assert run.exception() is None
    assert flaky.claim_failures == flaky.mark_failures == 0
    assert receiver.delivered() == Counter({good: 2})  # at least once: twice here
    assert bad not in {r.alert_id for r in receiver.requests}
    assert store.pending_alert_count() == 1  # the malformed row is kept, not dropped
    assert ("webhook", FAILED) in outcomes.seen
    assert outcomes.seen.count(("webhook", DELIVERED)) == 2


async def test_a_row_below_its_channel_severity_is_settled_without_sending(
    store: Store, outbox: Outbox, clock: FakeClock, receiver: Receiver, http: httpx.AsyncClient
) -> None:
    outbox.start("r1")
    outbox.emit("r1", "started", "info", [webhook(receiver, severity="error")])
    outcomes = Outcomes()
    dispatcher = AlertDispatcher(store, http, clock, SETTINGS, on_delivery=outcomes)
    assert await dispatcher.run_once() == 1
    assert receiver.requests == []
    assert outcomes.seen == []
    assert store.pending_alert_count() == 0


async def test_flush_delivers_everything_due(
    store: Store, outbox: Outbox, clock: FakeClock, receiver: Receiver, http: httpx.AsyncClient
) -> None:
    outbox.start("r1")
    for step in range(7):
        outbox.emit("r1", "step_advanced", "info", [webhook(receiver)], details={"step": step})
    dispatcher = AlertDispatcher(store, http, clock, SETTINGS, concurrency=2)
    assert await dispatcher.flush(timeout=5) == 7  # four batches: 2 + 2 + 2 + 1
    assert len(receiver.delivered()) == 7
    assert await dispatcher.flush(timeout=5) == 0


async def test_run_drains_a_backlog_without_waiting_and_stops_at_once(
    store: Store, receiver: Receiver, http: httpx.AsyncClient
) -> None:
    outbox = Outbox(store, FakeClock(time.time()))  # rows due now on the system clock
    outbox.start("r1")
    for step in range(7):
        outbox.emit("r1", "step_advanced", "info", [webhook(receiver)], details={"step": step})
    slow = SETTINGS.model_copy(update={"poll_interval": 60.0})
    dispatcher = AlertDispatcher(store, http, SystemClock(), slow, concurrency=2)
    stop = asyncio.Event()
    run = asyncio.create_task(dispatcher.run(stop))
    await eventually(lambda: store.pending_alert_count() == 0, within=3)
    # Full batches follow each other at once; only an idle outbox waits the poll interval.
    assert store.pending_alert_count() == 0
    assert len(receiver.delivered()) == 7
    stopping = time.monotonic()
    stop.set()
    await asyncio.wait_for(run, timeout=2)
    assert time.monotonic() - stopping < 1  # it did not wait out the 60 s poll interval


async def test_flush_gives_up_at_its_timeout(
    store: Store, outbox: Outbox, clock: FakeClock, receiver: Receiver, http: httpx.AsyncClient
) -> None:
    outbox.start("r1")
    outbox.emit("r1", "rolled_back", "error", [webhook(receiver)], phase="rolled_back")
    receiver.script(Reply(delay=1.5))
    dispatcher = AlertDispatcher(store, http, clock, SETTINGS)
    started = time.monotonic()
    assert await dispatcher.flush(timeout=0.2) == 0
    assert time.monotonic() - started < 1
    assert store.pending_alert_count() == 1  # still in the outbox for the next start


async def test_the_lease_must_outlast_a_delivery(store: Store, http: httpx.AsyncClient) -> None:
    settings = AlertSettings(timeout=30, lease=30)
    with pytest.raises(ValueError, match=r"lease .* must be longer than the delivery timeout"):
        AlertDispatcher(store, http, SystemClock(), settings)


# --- where alerts may go ----------------------------------------------------------------------


def rebinding(*answers: str) -> Any:
    """A resolver whose answers for a name change over time (DNS rebinding): the first call
    gets the first answer, every later call the last."""
    calls: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return [answers[min(len(calls), len(answers)) - 1]]

    resolve.calls = calls  # type: ignore[attr-defined]
    return resolve


async def test_loopback_receivers_get_nothing_by_default(
    store: Store, outbox: Outbox, clock: FakeClock, receiver: Receiver, http: httpx.AsyncClient
) -> None:
    outbox.start("r1")
    outbox.emit("r1", "rolled_back", "error", [webhook(receiver)], phase="rolled_back")
    closed = SETTINGS.model_copy(update={"allowed_hosts": ""})
    outcomes = Outcomes()
    dispatcher = AlertDispatcher(store, http, clock, closed, on_delivery=outcomes)
    assert await dispatcher.run_once() == 1
    assert receiver.requests == []
    assert store.pending_alert_count() == 1  # kept, for an operator who opens the target
    [row] = store.claim_alerts(clock.now() + 10_000, 10, 30)
    assert row.last_error is not None
    assert "loopback" in row.last_error
    assert "ROLLOUT_ALERTS_ALLOWED_HOSTS" in row.last_error


async def test_delivery_checks_the_target_again_after_resolution(
    store: Store, outbox: Outbox, clock: FakeClock, receiver: Receiver
) -> None:
    # The name resolved to a public address when the plan was submitted, and to the
    # loopback receiver at delivery: refused, and the client never connects to it.
    resolve = rebinding("93.184.216.34", "127.0.0.1")
    targets = TargetPolicy.parse("", resolve=resolve)
    hook = f"http://hooks.example.com:{receiver.url.rsplit(':', 1)[1]}/hook"
    assert await targets.refusal(hook) is None  # at submission
    outbox.start("r1")
    outbox.emit("r1", "rolled_back", "error", [AlertChannel(type="webhook", url=hook)],
                phase="rolled_back")
    async with guarded_client(targets, timeout=2) as http:
        dispatcher = AlertDispatcher(store, http, clock, SETTINGS, targets=targets)
        assert await dispatcher.run_once() == 1
    assert receiver.requests == []
    [row] = store.claim_alerts(clock.now() + 10_000, 10, 30)
    assert row.last_error is not None
    assert "hooks.example.com resolves to 127.0.0.1" in row.last_error


async def test_the_guarded_client_connects_only_to_the_addresses_it_checked(
    receiver: Receiver,
) -> None:
    # The check passes (the name is allowed as 127.0.0.1), then the name would resolve
    # elsewhere: the client connects to the address that was checked, not a new answer.
    port = int(receiver.url.rsplit(":", 1)[1])
    resolve = rebinding("127.0.0.1", "10.9.9.9")
    targets = TargetPolicy.parse("127.0.0.1", resolve=resolve)
    async with guarded_client(targets, timeout=2) as http:
        response = await http.post(f"http://receiver.test:{port}/hook", content=b"{}")
    assert response.status_code == 200
    assert resolve.calls == ["receiver.test"]  # resolved once, by the check
    assert len(receiver.requests) == 1
    # And a name refused at connection time never reaches the network.
    closed = TargetPolicy.parse("", resolve=rebinding("127.0.0.1"))
    async with guarded_client(closed, timeout=2) as http:
        with pytest.raises(TargetRefused):
            await http.post(f"http://receiver.test:{port}/hook", content=b"{}")
    assert len(receiver.requests) == 1


async def test_a_receivers_answer_is_logged_as_a_short_redacted_excerpt(
    store: Store, outbox: Outbox, clock: FakeClock, receiver: Receiver, http: httpx.AsyncClient
) -> None:
    page = (
        "<html>internal admin console token=AKIAIOSFODNN7EXAMPLEKEYVALUE123 see "
        "http://10.0.0.7/admin/secret-path " + "filler " * 200 + "</html>"
    ).encode()
    receiver.script(Reply(status=400, body=page))
    outbox.start("r1")
    channel = AlertChannel(type="webhook", url=receiver.url + "/hooks/PathSecret77",
                           secret="whsec-Logged-Nowhere-77")
    outbox.emit("r1", "rolled_back", "error", [channel], phase="rolled_back")
    with capture_logs() as logs:
        await AlertDispatcher(store, http, clock, SETTINGS).run_once()
    [failure] = [entry for entry in logs if entry["event"] == "alerts.delivery_failed"]
    for secret in ("AKIAIOSFODNN7EXAMPLEKEYVALUE123", "secret-path", "PathSecret77",
                   "whsec-Logged-Nowhere-77"):
        assert secret not in repr(logs), secret
    [row] = store.claim_alerts(clock.now() + 10_000, 10, 30)
    assert "PathSecret77" not in (row.last_error or "")
    assert "internal admin console" in failure["error"]
    assert len(failure["error"]) < 250
