"""The plan's hooks end to end, in process: the runner against the sandbox over real HTTP on a
fake clock, its gates answered by receivers on 127.0.0.1, its notifications written to the
outbox and delivered by the alert dispatcher to the same kind of receiver.

Each receiver records every request (headers, raw body) and answers from a script, so the
tests see exactly what a gate service sees, check the signature as the README tells receivers
to, and make gates say no, wait, or not answer at all.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest

from rollout.alerts import AlertDispatcher
from rollout.alerts.targets import TargetPolicy, guarded_client
from rollout.api.schemas import rollout_view
from rollout.clock import FakeClock
from rollout.engine.model import Phase, RolloutState
from rollout.engine.runner import Runner
from rollout.plan import AnyPlan, validate_plan
from rollout.policies import PolicyLibrary
from rollout.sandbox.server import SandboxServer
from rollout.serving.client import ServingClient
from rollout.serving.models import traffic_split
from rollout.settings import AlertSettings
from rollout.store.base import Store
from tests.integration.test_alerts_delivery import Received, Receiver, Reply
from tests.integration.test_engine_sandbox import (
    BASELINE,
    CANDIDATE,
    ENDPOINT,
    HEALTHY,
    TIMING,
    drive,
    make_endpoint,
)
from tests.integration.test_engine_sandbox import (
    client as client,  # noqa: PLC0414 - the fixture, re-exported for this module
)

SECRET = "gate-s3cr3t"
LOOPBACK = TargetPolicy.parse("127.0.0.1")
SETTINGS = AlertSettings(
    timeout=2.0, lease=30.0, initial_backoff=1.0, max_backoff=8.0, poll_interval=0.01,
    allowed_hosts="127.0.0.1",
)
NO = json.dumps({"proceed": False, "reason": "change freeze until Monday"}).encode()
WAIT = json.dumps({"wait": True, "reason": "release manager has not signed off"}).encode()
YES = json.dumps({"proceed": True}).encode()


def verify(secret: str, body: bytes, timestamp: str, signature: str) -> bool:
    """The README's verification, as a receiver would write it (no clock check here: the
    sandbox's clock is fake)."""
    expected = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256)
    return hmac.compare_digest("sha256=" + expected.hexdigest(), signature)


@pytest.fixture
def gates() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def notes() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
async def hook_http() -> AsyncIterator[httpx.AsyncClient]:
    async with guarded_client(LOOPBACK, timeout=10.0) as http:
        yield http


def hooked_plan(hooks: dict[str, Any], steps: list[dict[str, Any]] | None = None) -> AnyPlan:
    return validate_plan({
        "endpoint": ENDPOINT,
        "candidate": {"entity_name": "main.ml.ads_model", "entity_version": "4",
                      "workload_size": "Small"},
        "strategy": "canary",
        "steps": steps or [{"weight": 10, "bake": "5m"}, {"weight": 50, "bake": "5m"}],
        "hooks": hooks,
    })


def gate(receiver: Receiver, **extra: Any) -> dict[str, Any]:
    return {"url": receiver.url + "/gate", "secret": SECRET, "timeout": 2, "retries": 1,
            **extra}


def note(receiver: Receiver) -> dict[str, Any]:
    return {"url": receiver.url + "/notify", "secret": SECRET, "timeout": 2}


async def start(
    sandbox: SandboxServer, store: Store, client: ServingClient, http: httpx.AsyncClient,
    plan: AnyPlan,
) -> tuple[Runner, str]:
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    runner = Runner(store, client, clock=clock, timing=TIMING, hook_http=http,
                    hook_targets=LOOPBACK)
    record = await runner.submit(plan, PolicyLibrary().get("default"))
    return runner, record.id


def puts(admin: httpx.Client) -> list[dict[str, Any]]:
    response = admin.get(f"/endpoints/{ENDPOINT}/config-log")
    assert response.status_code == 200, response.text
    return list(response.json()["puts"])


def state_of(store: Store, rollout_id: str) -> RolloutState:
    return RolloutState.model_validate(store.get(rollout_id).state)


def gate_calls(receiver: Receiver, name: str) -> list[Received]:
    return [r for r in receiver.requests if r.headers.get("x-rollout-hook") == name]


def signed(request: Received) -> bool:
    return verify(SECRET, request.body, request.headers["x-rollout-timestamp"],
                  request.headers["x-rollout-signature"])


async def deliver(store: Store, clock: FakeClock) -> int:
    async with guarded_client(LOOPBACK, timeout=5.0) as http:
        dispatcher = AlertDispatcher(store, http, clock, SETTINGS, targets=LOOPBACK)
        return await dispatcher.run_once()


async def test_pre_rollout_no_pauses_before_any_put_and_a_resume_asks_again(
    *, sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store,
    client: ServingClient,
    hook_http: httpx.AsyncClient, gates: Receiver,
) -> None:
    make_endpoint(sandbox_admin, HEALTHY)
    gates.script(Reply(body=NO))
    runner, rollout_id = await start(sandbox, store, client, hook_http,
                                     hooked_plan({"pre_rollout": gate(gates)}))
    for _ in range(3):  # a paused rollout is looked at again: the gate is not asked again
        assert (await runner.reconcile(rollout_id)).phase is Phase.PAUSED
        sandbox.clock.advance(60)  # type: ignore[attr-defined]

    record = store.get(rollout_id)
    state = state_of(store, rollout_id)
    assert state.pause_reason == "pre_rollout hook: change freeze until Monday"
    assert record.phase == "paused"
    assert puts(sandbox_admin) == [], "no PUT config reached the endpoint"
    calls = gate_calls(gates, "pre_rollout")
    assert len(calls) == 1
    body = calls[0].json()
    assert body["schema"] == "rollout.hook/v1"
    assert (body["hook"], body["rollout"], body["endpoint"]) == ("pre_rollout", rollout_id,
                                                                 ENDPOINT)
    assert body["candidate"] == CANDIDATE
    assert body["baseline"] == BASELINE
    assert body["id"] == calls[0].headers["x-rollout-hook-id"] == f"{rollout_id}:pre_rollout:1"
    assert signed(calls[0]), "the receiver can verify the signature"
    assert not verify("another secret", calls[0].body, calls[0].headers["x-rollout-timestamp"],
                      calls[0].headers["x-rollout-signature"])
    answered = [e for e in store.events(rollout_id) if e.kind == "gate_answered"]
    assert len(answered) == 1
    # What a person reading the rollout sees: the gate, its answer, the hook redacted.
    shown = rollout_view(store.get(rollout_id))
    assert shown.gate is not None
    assert (shown.gate.name, shown.gate.last_answer, shown.gate.held) == (
        "pre_rollout", "refused", True)
    assert shown.plan["hooks"]["pre_rollout"]["secret"] == "(redacted)"
    assert SECRET not in shown.model_dump_json()
    assert answered[0].data["answer"] == "refused"
    assert answered[0].data["status"] == 200

    # A person resumes: the gate is asked again, says yes now, and the rollout runs.
    store.add_command(rollout_id, "resume", {}, sandbox.clock.now())
    phase = await drive(runner, store, sandbox.clock, rollout_id)  # type: ignore[arg-type]
    assert phase is Phase.SUCCEEDED
    assert len(gate_calls(gates, "pre_rollout")) == 2
    assert state_of(store, rollout_id).gates_passed == ["pre_rollout"]
    first_put = puts(sandbox_admin)[0]
    assert first_put["split"] == {BASELINE: 100, CANDIDATE: 0}


async def test_pre_rollout_that_does_not_answer_pauses_saying_it_timed_out(
    *, sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store,
    client: ServingClient,
    hook_http: httpx.AsyncClient, gates: Receiver,
) -> None:
    make_endpoint(sandbox_admin, HEALTHY)
    gates.script(Reply(body=YES, delay=1.0), Reply(body=YES, delay=1.0))
    plan = hooked_plan({"pre_rollout": gate(gates, timeout="200ms", retries=1)})
    runner, rollout_id = await start(sandbox, store, client, hook_http, plan)
    assert (await runner.reconcile(rollout_id)).phase is Phase.PAUSED

    reason = state_of(store, rollout_id).pause_reason or ""
    assert "timed out" in reason, reason
    assert "2 attempts" in reason, reason
    calls = gate_calls(gates, "pre_rollout")
    assert [c.json()["attempt"] for c in calls] == [1, 2], "one retry, the same call"
    assert {c.headers["x-rollout-hook-id"] for c in calls} == {f"{rollout_id}:pre_rollout:1"}
    assert puts(sandbox_admin) == []
    answered = next(e for e in store.events(rollout_id) if e.kind == "gate_answered")
    assert answered.data["answer"] == "timeout"
    assert answered.data["attempts"] == 2


async def test_confirm_promotion_waits_and_a_regression_meanwhile_rolls_back(
    *, sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store,
    client: ServingClient,
    hook_http: httpx.AsyncClient, gates: Receiver, notes: Receiver,
) -> None:
    make_endpoint(sandbox_admin, HEALTHY)
    gates.script(*[Reply(body=WAIT)] * 50)
    plan = hooked_plan(
        {"confirm_promotion": gate(gates, interval="1m", limit="2h"),
         "on_rollback": note(notes), "post_rollout": note(notes)},
        steps=[{"weight": 20, "bake": "5m"}],
    )
    runner, rollout_id = await start(sandbox, store, client, hook_http, plan)
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    # Until the gate has said "wait" twice: the rollout waits at 20 %, still judged.
    while len(gate_calls(gates, "confirm_promotion")) < 2:
        result = await runner.reconcile(rollout_id)
        assert result.phase is Phase.PROGRESSING, [
            (e.kind, e.reason) for e in store.events(rollout_id)][-4:]
        due = store.get(rollout_id).due_at
        assert due is not None
        clock.advance(max(0.0, due - clock.now()))
        assert clock.now() < 1_800_000_000.0 + 3 * 3600, "never asked"
    assert traffic_split(await client.get_endpoint(ENDPOINT)) == {BASELINE: 80, CANDIDATE: 20}
    assert state_of(store, rollout_id).gate is not None

    # The candidate regresses while the gate keeps it waiting: the checks roll it back.
    response = sandbox_admin.patch(f"/endpoints/{ENDPOINT}/profiles/{CANDIDATE}",
                                   json={"error_rate": 0.2})
    assert response.status_code == 200, response.text
    phase = await drive(runner, store, clock, rollout_id)
    events = store.events(rollout_id)
    assert phase is Phase.ROLLED_BACK, [(e.kind, e.reason) for e in events][-6:]
    rolling = next(e for e in events if e.kind == "rolling_back")
    assert rolling.reason.startswith("analysis failed"), rolling.reason
    polled = len(gate_calls(gates, "confirm_promotion"))
    assert polled == len([e for e in events if e.kind == "gate_answered"])
    assert traffic_split(await client.get_endpoint(ENDPOINT)) == {BASELINE: 100}
    assert not any(p["split"].get(CANDIDATE) == 100 for p in puts(sandbox_admin))

    # The notifications were written with the decision and go out through the outbox.
    while await deliver(store, clock):
        pass
    told = {r.json()["hook"]: r for r in notes.requests}
    assert set(told) == {"on_rollback", "post_rollout"}
    assert told["on_rollback"].json()["details"]["outcome"] == "rolled_back"
    assert told["on_rollback"].json()["details"]["cause"] == "analysis"
    assert told["post_rollout"].json()["phase"] == "rolled_back"
    assert all(signed(r) for r in told.values())

    # Rolled back: the gate is never asked again, however often the rollout is looked at.
    clock.advance(600)
    await runner.reconcile(rollout_id)
    assert len(gate_calls(gates, "confirm_promotion")) == polled


async def test_confirm_promotion_yes_promotes_and_post_rollout_is_told(
    *, sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store,
    client: ServingClient,
    hook_http: httpx.AsyncClient, gates: Receiver, notes: Receiver,
) -> None:
    make_endpoint(sandbox_admin, HEALTHY)
    gates.script(Reply(status=204, body=b""), Reply(body=WAIT), Reply(status=503))
    plan = hooked_plan(
        {"pre_rollout": gate(gates), "confirm_promotion": gate(gates, interval="1m"),
         "post_rollout": note(notes), "on_rollback": note(notes)},
        steps=[{"weight": 20, "bake": "5m"}],
    )
    runner, rollout_id = await start(sandbox, store, client, hook_http, plan)
    await runner.reconcile(rollout_id)
    assert state_of(store, rollout_id).gates_passed == ["pre_rollout"]
    # A controller restarted from the store goes on from there: pre_rollout is never asked
    # again, and it waits at confirm_promotion as the first would have.
    restarted = Runner(store, client, clock=sandbox.clock, timing=TIMING, hook_http=hook_http,
                       hook_targets=LOOPBACK)
    phase = await drive(restarted, store, sandbox.clock, rollout_id)  # type: ignore[arg-type]
    events = store.events(rollout_id)
    assert phase is Phase.SUCCEEDED, [(e.kind, e.reason) for e in events][-6:]
    assert len(gate_calls(gates, "pre_rollout")) == 1
    # pre_rollout: 204 is a yes. confirm_promotion: wait, then a 503 retried into a yes (a
    # 200 whose body is not a JSON object).
    answers = [(e.data["gate"], e.data["answer"]) for e in events if e.kind == "gate_answered"]
    assert answers == [("pre_rollout", "proceed"), ("confirm_promotion", "wait"),
                       ("confirm_promotion", "proceed")]
    assert state_of(store, rollout_id).gates_passed == ["pre_rollout", "confirm_promotion"]
    last = [e for e in events if e.kind == "gate_answered"][-1]
    assert (last.data["attempts"], last.data["status"]) == (2, 200), "the 503 was retried"
    confirm = gate_calls(gates, "confirm_promotion")
    assert confirm[-1].json()["details"]["verdict"]["outcome"] == "pass"
    kinds = [e.kind for e in events]
    assert kinds.index("gate_answered") < kinds.index("started"), "asked before deploying"

    assert await deliver(store, sandbox.clock) >= 1  # type: ignore[arg-type]
    told = [r for r in notes.requests if 200 <= r.answered < 300]
    assert [r.json()["hook"] for r in told] == ["post_rollout"], "no rollback, no on_rollback"
    body = told[0].json()
    assert body["details"]["outcome"] == "succeeded"
    assert body["id"] == told[0].headers["x-rollout-hook-id"] == f"{rollout_id}:post_rollout"
    assert signed(told[0])


async def test_a_notification_refused_by_its_receiver_is_sent_again(
    *, sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store,
    client: ServingClient,
    hook_http: httpx.AsyncClient, notes: Receiver,
) -> None:
    make_endpoint(sandbox_admin, {**HEALTHY, "fail_build": True})
    notes.script(Reply(status=500), Reply(status=500))
    plan = hooked_plan({"on_rollback": note(notes)})
    runner, rollout_id = await start(sandbox, store, client, hook_http, plan)
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    assert await drive(runner, store, clock, rollout_id) is Phase.ROLLED_BACK
    for _ in range(4):
        await deliver(store, clock)
        clock.advance(30)
    answered = [r.answered for r in notes.requests]
    assert answered == [500, 500, 200], "retried until delivered, once delivered"
    assert len({r.headers["x-rollout-hook-id"] for r in notes.requests}) == 1


async def test_a_gate_where_hooks_may_not_go_is_never_called_and_pauses(
    *, sandbox: SandboxServer, sandbox_admin: httpx.Client, store: Store,
    client: ServingClient, gates: Receiver,
) -> None:
    """Checked again at call time (a plan stored before the policy changed, a name
    re-pointed): refused before any connection, the rollout paused saying why."""
    make_endpoint(sandbox_admin, HEALTHY)
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    runner = Runner(store, client, clock=clock, timing=TIMING)  # default: public only
    record = await runner.submit(hooked_plan({"pre_rollout": gate(gates)}),
                                 PolicyLibrary().get("default"))
    try:
        assert (await runner.reconcile(record.id)).phase is Phase.PAUSED
    finally:
        await runner.aclose()
    reason = state_of(store, record.id).pause_reason or ""
    assert "loopback" in reason, reason
    assert "ROLLOUT_ALERTS_ALLOWED_HOSTS" in reason, reason
    assert gates.requests == [], "no request left the controller"
    assert puts(sandbox_admin) == []
