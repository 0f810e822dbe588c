"""Crash test: ``rollout engine`` SIGKILLed at random moments and restarted on the same store,
SQLite's file or PostgreSQL.

The sandbox runs as its own process on the real clock with 2 s metric windows; two rollouts
(a healthy candidate on one endpoint, a regressed one on another) run at once while the engine
is killed again and again, including while config updates are in flight. Every rollout must
end in the right terminal state, with each step applied exactly once.
"""

from __future__ import annotations

import http.server
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from rollout.engine.runner import new_rollout
from rollout.plan import resolve_policy, validate_plan
from rollout.store.base import Store
from rollout.store.factory import open_store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

POLICY = {
    "name": "crash-test",
    "min_requests": 50,
    # The suite must not fail one run in a hundred because a healthy candidate drew badly:
    # a tenth of the default budget, still far more than the regressed arms need.
    "false_rollback_rate": "0.1%",
    "checks": [{"metric": "error_rate", "compare": "baseline", "max_ratio": 2,
                "max_increase": "1%"}],
    "on_no_data": "hold",
}


def create_endpoint(admin: httpx.Client, name: str, candidate_error_rate: float) -> None:
    response = admin.post("/endpoints", json={
        "name": name,
        "served_entities": [{"name": "model-1", "entity_name": "main.ml.model",
                             "entity_version": "1", "workload_size": "Small",
                             "scale_to_zero_enabled": False}],
        "profiles": {
            "model-1": {"error_rate": 0.001},
            "model-2": {"error_rate": candidate_error_rate},
        },
        "qps": 400,
    })
    assert response.status_code == 201, response.text


def submit(store: Store, endpoint: str, rollout_id: str) -> None:
    plan = validate_plan({
        "endpoint": endpoint,
        "candidate": {"name": "model-2", "entity_name": "main.ml.model", "entity_version": "2",
                      "workload_size": "Small"},
        "strategy": "canary",
        "steps": [{"weight": 20, "bake": "6s"}, {"weight": 50, "bake": "6s"}],
        "policy": POLICY,
    })
    record, event = new_rollout(plan, resolve_policy(plan), time.time(), rollout_id)
    store.create(record, event, [])


def engine_env(url: str, store_url: str, token: str) -> dict[str, Any]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "ROLLOUT_"))}
    env.update({
        "DATABRICKS_HOST": url,
        "DATABRICKS_TOKEN": token,
        "ROLLOUT_STORE_URL": store_url,
        "ROLLOUT_ENGINE_LOOK_INTERVAL": "0.5",
        "ROLLOUT_ENGINE_UPDATE_POLL": "0.25",
        "ROLLOUT_ENGINE_SCAN_INTERVAL": "0.2",
        "ROLLOUT_ENGINE_UPDATE_DEADLINE": "60",
        # The healthy candidate matches its baseline: proving its pass takes as long as the
        # draw and a loaded machine make it, so wait for evidence rather than pause at bake x 3.
        "ROLLOUT_ENGINE_STEP_DEADLINE_FACTOR": "20",
        "ROLLOUT_SERVING_UPDATE_POLL_INTERVAL": "0.25",
        "ROLLOUT_SERVING_RETRY_INITIAL_BACKOFF": "0.1",
        "ROLLOUT_LOG_FORMAT": "json",
        # Nothing listens there: `rollout engine` only writes alerts to the outbox.
        "ROLLOUT_ALERTS_CHANNELS": '[{"type": "webhook", "url": "http://127.0.0.1:9/hook"}]',
    })
    return env


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)]
)
def test_engine_killed_at_random_points_finishes_every_rollout_once(
    sandbox_process: str, sandbox_token: str, tmp_path: Path, backend: str,
    request: pytest.FixtureRequest,
) -> None:
    store_url = (f"sqlite:///{tmp_path / 'crash.db'}" if backend == "sqlite"
                 else request.getfixturevalue("postgres_url"))
    store = open_store(store_url)
    store.migrate()
    with httpx.Client(base_url=f"{sandbox_process}/_sandbox/v1", timeout=10) as admin:
        create_endpoint(admin, "healthy-ep", 0.001)
        create_endpoint(admin, "regressed-ep", 0.30)
    submit(store, "healthy-ep", "healthy")
    submit(store, "regressed-ep", "regressed")

    rng = random.Random(20261121)
    env = engine_env(sandbox_process, store_url, sandbox_token)
    log_path = tmp_path / "engine.log"
    kills = 0
    deadline = time.monotonic() + 180
    engine: subprocess.Popen[bytes] | None = None
    with log_path.open("w") as log:
        try:
            while time.monotonic() < deadline:
                engine = subprocess.Popen(
                    [sys.executable, "-m", "rollout.cli", "engine", "--until-idle"],
                    env=env, stdout=log, stderr=subprocess.STDOUT,
                )
                if kills < 6:
                    # Kill somewhere in the next few seconds: during a PUT, a wait, a commit...
                    try:
                        engine.wait(timeout=rng.uniform(0.7, 3.5))
                    except subprocess.TimeoutExpired:
                        engine.send_signal(signal.SIGKILL)
                        engine.wait(timeout=10)
                        kills += 1
                        continue
                else:
                    engine.wait(timeout=max(1.0, deadline - time.monotonic()))
                if engine.returncode == 0:
                    break
        finally:
            # Whatever happens above, no engine outlives the test.
            if engine is not None and engine.poll() is None:
                engine.kill()
                engine.wait(timeout=10)
    assert kills >= 3, "the engine was killed several times mid-rollout"
    assert engine is not None
    assert engine.returncode == 0, log_path.read_text()[-3000:]

    healthy, regressed = store.get("healthy"), store.get("regressed")
    assert healthy.phase == "succeeded", [e.reason for e in store.events("healthy")][-5:]
    assert regressed.phase == "rolled_back", [e.reason for e in store.events("regressed")][-5:]

    for rollout_id, expected in (("healthy", [20, 50]), ("regressed", [20])):
        events = store.events(rollout_id)
        assert [e.seq for e in events] == list(range(1, len(events) + 1)), "gapless log"
        applied = [e.data["weight"] for e in events if e.kind == "step_applied"]
        assert applied == expected, f"{rollout_id}: each step applied exactly once"
        steps_judged = {e.data["step"] for e in events if e.kind == "verdict"}
        assert steps_judged == set(range(len(expected))), "no step skipped its judgement"

    # The engine queued its alerts for the default channel, for a `rollout serve` to deliver.
    queued = store.claim_alerts(now=time.time() + 3600, limit=100, lease_seconds=60)
    assert ("regressed", "rolled_back", "webhook") in {
        (a.rollout_id, a.payload["event"], a.payload["channel"]["type"]) for a in queued
    }, [(a.rollout_id, a.payload.get("event")) for a in queued]

    with httpx.Client(base_url=sandbox_process, timeout=10,
                      headers={"Authorization": f"Bearer {sandbox_token}"}) as api:
        for name, survivor in (("healthy-ep", "model-2"), ("regressed-ep", "model-1")):
            config = api.get(f"/api/2.0/serving-endpoints/{name}").json()["config"]
            assert [e["name"] for e in config["served_entities"]] == [survivor]
            routes = config["traffic_config"]["routes"]
            assert [(r["served_entity_name"], r["traffic_percentage"]) for r in routes] == [
                (survivor, 100)
            ]
    store.close()


class _DownWorkspace(http.server.BaseHTTPRequestHandler):
    """A workspace whose every API call fails with 503 (sign-in discovery gets a quick 404)."""

    def do_GET(self) -> None:
        self.send_response(404 if self.path.startswith("/.well-known/") else 503)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 -- the base's name
        pass


def test_engine_alone_raises_the_workspace_outage_alert(tmp_path: Path) -> None:
    """``rollout engine`` without a ``serve`` beside it still notices a workspace that stopped
    answering: one alert in the outbox (a ``serve`` on the same store delivers it), logged at
    warning."""
    store_url = f"sqlite:///{tmp_path / 'outage.db'}"
    store = open_store(store_url)
    store.migrate()
    submit(store, "ads", "stuck")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DownWorkspace)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = engine_env(f"http://127.0.0.1:{server.server_address[1]}", store_url, "token")
    env.update({"ROLLOUT_ALERTS_WORKSPACE_OUTAGE_AFTER": "1",
                "ROLLOUT_ENGINE_FAILURE_BACKOFF": "0.2"})
    log_path = tmp_path / "engine.log"
    try:
        with log_path.open("w") as log:
            engine = subprocess.Popen([sys.executable, "-m", "rollout.cli", "engine"],
                                      env=env, stdout=log, stderr=subprocess.STDOUT)
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and store.pending_alert_count() == 0:
                    time.sleep(0.2)
                time.sleep(2)  # more failed calls: still one alert per channel
            finally:
                engine.send_signal(signal.SIGTERM)
                engine.wait(timeout=30)
    finally:
        server.shutdown()
        server.server_close()
    alerts = store.claim_alerts(now=time.time() + 3600, limit=100, lease_seconds=60)
    store.close()
    text = log_path.read_text()
    assert [(a.channel, a.payload["event"]) for a in alerts] == [
        ("webhook", "workspace_unreachable")], text[-2000:]
    assert alerts[0].rollout_id is None
    assert "HTTP 503" in alerts[0].payload["summary"]
    assert any(json.loads(line).get("event") == "workspace.unreachable"
               and json.loads(line).get("level") == "warning"
               for line in text.splitlines() if line.startswith("{"))
