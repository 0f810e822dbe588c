"""A policy whose only check is a PromQL query, end to end with every part a process: the
sandbox (2 s windows), a real Prometheus scraping its export-metrics (bearer token, 1 s
scrapes), and ``rollout serve`` asking that Prometheus once per arm per look.

A healthy candidate is promoted and a regressed one (10 % 5xx against 0.2 %) rolled back on
the query alone, the resolved query in its verdict. Then Prometheus is stopped under a third
rollout: its verdict turns inconclusive with its own reason, it is not rolled back, and
exactly one alert says so at the plan's webhook.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from tests.e2e.test_daemon import create_endpoint
from tests.e2e.test_daemon import plan as daemon_plan
from tests.e2e.test_replicas import Receiver, receiver  # noqa: F401 -- the webhook fixture
from tests.prometheus import running_prometheus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

T = TypeVar("T")

RATIO = (
    "sum(request_5xx_count_total{endpoint_name={{ endpoint }}, "
    "served_entity_name={{ candidate }}}) / "
    "sum(request_count_total{endpoint_name={{ endpoint }}, served_entity_name={{ candidate }}})"
)
POLICY = {
    "name": "own-5xx",
    "min_requests": 20,
    "warmup_windows": 0,
    "failure_threshold": 3,
    "checks": [{"name": "5xx ratio", "query": RATIO, "compare": "baseline",
                "max_increase": 0.03}],
}
TERMINAL = {"succeeded", "rolled_back", "aborted", "failed"}


def wait_for(what: str, check: Callable[[], T | None], timeout: float, log: Path) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}\n{log.read_text()[-3000:]}")


def plan(endpoint: str, bake: str = "3s", **extra: Any) -> dict[str, Any]:
    """test_daemon's canary (20 %, 50 %) with short bakes, judged by the PromQL check."""
    steps = [{"weight": 20, "bake": bake}, {"weight": 50, "bake": bake}]
    return {**daemon_plan(endpoint), "steps": steps, "policy": POLICY, **extra}


def test_a_promql_check_promotes_rolls_back_and_survives_an_outage(
    sandbox_process: str,
    sandbox_token: str,
    receiver: Receiver,  # noqa: F811 -- the fixture imported above
    tmp_path: Path,
) -> None:
    endpoints = {"good-ep": 0.002, "bad-ep": 0.10, "down-ep": 0.002}
    with httpx.Client(base_url=f"{sandbox_process}/_sandbox/v1", timeout=10) as admin:
        for name, rate in endpoints.items():
            create_endpoint(admin, name, rate)
    host = sandbox_process.removeprefix("http://")
    jobs = [
        {"job_name": name, "honor_timestamps": True,
         "metrics_path": f"/api/2.0/serving-endpoints/{name}/metrics",
         "authorization": {"type": "Bearer", "credentials": sandbox_token},
         "static_configs": [{"targets": [host]}]}
        for name in endpoints
    ]
    log = tmp_path / "controller.log"
    with contextlib.ExitStack() as stack:
        # Prometheus is stopped by hand below; the stack stops it otherwise.
        served = running_prometheus(tmp_path, jobs)
        prometheus = served.__enter__()
        prometheus_up = [True]

        def stop_prometheus() -> None:
            if prometheus_up[0]:
                prometheus_up[0] = False
                served.__exit__(None, None, None)

        stack.callback(stop_prometheus)
        url = start_controller(stack, env_for(sandbox_process, sandbox_token, prometheus,
                                              tmp_path), log)
        # The baselines' first windows are in before anything is submitted (a submission
        # asks Prometheus for the baseline's series).
        wait_for("every baseline's series", lambda: len(httpx.get(
            f"{prometheus}/api/v1/query",
            params={"query": 'request_count_total{served_entity_name="model-1"}'}, timeout=5,
        ).json()["data"]["result"]) == len(endpoints), 20, tmp_path / "prometheus.log")

        ids = {}
        for name in endpoints:
            body = plan(name) if name != "down-ep" else plan(
                name, bake="5m",
                alerts=[{"type": "webhook", "url": receiver.url, "severity": "warn"}],
            )
            response = httpx.post(f"{url}/api/v1/rollouts", json=body, timeout=30)
            assert response.status_code == 201, response.text
            ids[name] = response.json()["id"]

        def rollout(name: str) -> dict[str, Any]:
            found: dict[str, Any] = httpx.get(
                f"{url}/api/v1/rollouts/{ids[name]}", timeout=10).json()
            return found

        def ended() -> dict[str, str] | None:
            phases = {name: rollout(name)["phase"] for name in ("good-ep", "bad-ep")}
            return phases if set(phases.values()) <= TERMINAL else None

        assert wait_for("both rollouts to end", ended, 60, log) == {
            "good-ep": "succeeded", "bad-ep": "rolled_back"}

        # The rollback says why, with the numbers and the query as Prometheus ran it.
        bad = rollout("bad-ep")
        check = own_check(bad)
        assert check["outcome"] == "fail"
        assert check["detail"]["query"] == (
            'sum(request_5xx_count_total{endpoint_name="bad-ep", '
            'served_entity_name="model-2"}) / sum(request_count_total{endpoint_name="bad-ep", '
            'served_entity_name="model-2"})'
        )
        assert check["detail"]["baseline_query"].count('served_entity_name="model-1"') == 2
        assert check["candidate_value"] > 0.05
        assert check["baseline_value"] < 0.03
        events = httpx.get(f"{url}/api/v1/rollouts/{ids['bad-ep']}/events",
                           timeout=10).json()["events"]
        assert any("5xx ratio" in e["reason"] and "3 failing looks in a row" in e["reason"]
                   for e in events if e["kind"] == "rolling_back"), events
        assert own_check(rollout("good-ep"))["outcome"] == "pass"

        # The third rollout is judged on Prometheus' numbers; then Prometheus goes away.
        wait_for("the third rollout's first number from Prometheus",
                 lambda: own_check(rollout("down-ep")).get("candidate_value") is not None,
                 30, log)
        stop_prometheus()

        def unreachable() -> dict[str, Any] | None:
            verdict = rollout("down-ep").get("last_verdict") or {}
            return verdict if "prometheus unreachable" in verdict.get("reason", "") else None

        verdict = wait_for("an inconclusive verdict naming the outage", unreachable, 20, log)
        assert verdict["outcome"] == "inconclusive"
        assert own_check({"last_verdict": verdict})["detail"]["outage"].startswith(
            "prometheus unreachable: ")

        def alerted() -> list[dict[str, Any]]:
            with receiver.lock:
                bodies = list(receiver.bodies.values())
            return [b for b in bodies if b["event"] == "metrics_source_unreachable"]

        (alert,) = wait_for("the outage alert at the webhook", alerted, 20, log)
        assert alert["rollout"] == ids["down-ep"]
        assert "prometheus unreachable" in alert["summary"]
        # More looks with Prometheus still down: no second alert, and no rollback.
        wait_for("more looks", lambda: (rollout("down-ep").get("last_verdict") or {}).get(
            "at", 0) > verdict["at"] + 1.5, 20, log)
        with receiver.lock:
            assert [b["event"] for b in receiver.bodies.values()] == [
                "metrics_source_unreachable"], receiver.bodies
            assert list(receiver.deliveries.values()) == [1]
        down = rollout("down-ep")
        assert down["phase"] == "progressing", down


def own_check(rollout: dict[str, Any]) -> dict[str, Any]:
    checks = (rollout.get("last_verdict") or {}).get("checks", [])
    return next((c for c in checks if c["metric"] == "5xx ratio"), {})


def env_for(sandbox: str, token: str, prometheus: str, tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "ROLLOUT_"))}
    env.update({
        "DATABRICKS_HOST": sandbox,
        "DATABRICKS_TOKEN": token,
        "ROLLOUT_PROMETHEUS_URL": prometheus,
        "ROLLOUT_PROMETHEUS_TIMEOUT": "2",
        "ROLLOUT_STORE_URL": f"sqlite:///{tmp_path / 'rollout.db'}",
        "ROLLOUT_API_PORT": "0",
        "ROLLOUT_ENGINE_LOOK_INTERVAL": "0.5",
        "ROLLOUT_ENGINE_UPDATE_POLL": "0.25",
        "ROLLOUT_ENGINE_SCAN_INTERVAL": "0.2",
        "ROLLOUT_ENGINE_STEP_DEADLINE_FACTOR": "10",
        "ROLLOUT_SERVING_UPDATE_POLL_INTERVAL": "0.25",
        "ROLLOUT_SERVING_METRICS_WINDOW": "2",
        "ROLLOUT_ALERTS_POLL_INTERVAL": "0.2",
        # The receiver listens on loopback: alerts go there only when allowed.
        "ROLLOUT_ALERTS_ALLOWED_HOSTS": "127.0.0.1",
        "ROLLOUT_LOG_FORMAT": "json",
    })
    return env


def start_controller(stack: contextlib.ExitStack, env: dict[str, str], log: Path) -> str:
    """``rollout serve`` as a process, killed when ``stack`` closes; returns its URL."""
    controller = subprocess.Popen(
        [sys.executable, "-m", "rollout.cli", "serve"],
        env=env, stdout=subprocess.PIPE, stderr=log.open("wb"), text=True,
    )

    def stop() -> None:
        if controller.poll() is None:
            controller.kill()
            controller.wait(timeout=10)

    stack.callback(stop)
    assert controller.stdout is not None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and controller.poll() is None:
        match = re.search(r"(http://127\.0\.0\.1:\d+)", controller.stdout.readline())
        if match:
            return match.group(1)
    raise AssertionError(log.read_text()[-3000:])
