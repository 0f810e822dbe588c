"""The two demo canaries of ``deploy/demo/`` do what the README's "Run the stack" says, on a
sandbox started exactly as ``docker-compose.yml`` starts it (its command line parsed by the
CLI itself) and a controller with the compose service's engine settings: the healthy one is
promoted in about three minutes and the regressed one rolled back in about two, under the
built-in ``default`` policy. On a fake clock, so the minutes take a second."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import typer.main

from rollout.cli import app
from rollout.clock import FakeClock
from rollout.engine.model import Phase
from rollout.engine.runner import Runner
from rollout.engine.service import timing_from
from rollout.plan import load_plan
from rollout.sandbox.server import DEMO_ENDPOINT, SandboxServer, create_demo_endpoint
from rollout.serving.auth import PatAuth
from rollout.serving.client import ServingClient
from rollout.settings import EngineSettings
from rollout.store.base import Store
from tests.deploy_files import COMPOSE, ROOT, load_yaml


def _compose_service(name: str) -> dict[str, Any]:
    service: dict[str, Any] = load_yaml(COMPOSE)["services"][name]
    return service


@pytest.fixture
def compose_sandbox() -> Iterator[SandboxServer]:
    """The compose sandbox's workspace (seed, windows, update time, demo load), on a fake
    clock."""
    command = [str(arg) for arg in _compose_service("sandbox")["command"]]
    assert command[0] == "sandbox"
    params = typer.main.get_command(app).commands["sandbox"].make_context(
        "sandbox", command[1:]).params
    assert params["demo"], "compose starts the sandbox with --demo"
    with SandboxServer(clock=FakeClock(), seed=params["seed"],
                       window_seconds=params["window_seconds"],
                       update_seconds=params["update_seconds"], token=params["token"]) as server:
        create_demo_endpoint(server.workspace, qps=params["demo_qps"])
        yield server


def _engine_settings(monkeypatch: pytest.MonkeyPatch) -> EngineSettings:
    environment = _compose_service("controller").get("environment") or {}
    assert isinstance(environment, dict)
    for key in [k for k in os.environ if k.startswith("ROLLOUT_ENGINE_")]:
        monkeypatch.delenv(key)
    for key, value in environment.items():
        if key.startswith("ROLLOUT_ENGINE_"):
            monkeypatch.setenv(key, str(value))
    return EngineSettings()


def _demo_plan(name: str) -> str:
    return (ROOT / "deploy" / "demo" / name).read_text(encoding="utf-8")


async def _run(sandbox: SandboxServer, store: Store, settings: EngineSettings, plan_text: str,
               ) -> tuple[Phase, float, list[str]]:
    clock = sandbox.clock
    assert isinstance(clock, FakeClock)
    plan, policy = load_plan(plan_text)
    assert policy.name == "default", "the demo uses the built-in policy"
    async with ServingClient(sandbox.url, PatAuth(sandbox.token), clock=clock,
                             poll_interval=5) as client:
        runner = Runner(store, client, clock=clock, timing=timing_from(settings))
        record = await runner.submit(plan, policy)
        start = clock.now()
        phase = Phase(record.phase)
        while clock.now() - start < 3600 and not phase.terminal:
            phase = (await runner.reconcile(record.id)).phase
            due = store.get(record.id).due_at
            if not phase.terminal and due is not None:
                clock.advance(max(0.0, due - clock.now()))
        return phase, clock.now() - start, [e.reason for e in store.events(record.id)]


async def test_the_healthy_demo_canary_is_promoted_in_about_three_minutes(
    compose_sandbox: SandboxServer, store: Store, monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox = compose_sandbox
    phase, seconds, reasons = await _run(sandbox, store, _engine_settings(monkeypatch),
                                         _demo_plan("healthy-canary.yaml"))
    assert phase is Phase.SUCCEEDED, reasons[-4:]
    assert 60 <= seconds <= 5 * 60, seconds


async def test_the_regressed_demo_canary_is_rolled_back_in_about_two_minutes(
    compose_sandbox: SandboxServer, store: Store, monkeypatch: pytest.MonkeyPatch,
) -> None:
    sandbox = compose_sandbox
    # The README's curl, verbatim in substance: demo-model-3 answers 20 % with a 5xx.
    async with httpx.AsyncClient(timeout=10) as admin:
        response = await admin.put(
            f"{sandbox.admin_url}/endpoints/{DEMO_ENDPOINT}/profiles/demo-model-3",
            json={"error_rate": 0.2},
        )
    assert response.status_code < 300, response.text
    phase, seconds, reasons = await _run(sandbox, store, _engine_settings(monkeypatch),
                                         _demo_plan("regressed-canary.yaml"))
    assert phase is Phase.ROLLED_BACK, reasons[-4:]
    assert seconds <= 2 * 60, seconds
    assert any("analysis failed" in reason for reason in reasons)


def test_the_sandbox_demo_without_flags_is_the_compose_sandbox() -> None:
    """The README's quickstart without Docker runs ``rollout sandbox --demo`` with no other
    flag and the controller with the compose service's timings: the same minutes."""
    command = typer.main.get_command(app).commands["sandbox"]
    quick = command.make_context("sandbox", ["--demo"]).params
    compose = command.make_context(
        "sandbox", [str(a) for a in _compose_service("sandbox")["command"]][1:]).params
    assert quick["demo_qps"] == compose["demo_qps"] == 1000
    assert compose["window_seconds"] == 10
    assert quick["window_seconds"] is None  # 10 s with --demo (rollout.cli.sandbox)
    assert quick["update_seconds"] == compose["update_seconds"]
    environment = _compose_service("controller")["environment"]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for key in ("ROLLOUT_ENGINE_LOOK_INTERVAL", "ROLLOUT_SERVING_METRICS_WINDOW"):
        assert f"{key}={environment[key]}" in readme, key
