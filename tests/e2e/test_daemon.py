"""``rollout serve`` as a process, with the sandbox as another: plans submitted over HTTP and
with the CLI, a healthy canary promoted and a bad one rolled back, alerts delivered to a
webhook that refuses the first attempts, and the daemon killed with SIGKILL mid-rollout and
restarted without losing a rollout or an alert."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

POLICY = {
    "name": "e2e",
    "min_requests": 50,
    # The suite must not fail one run in a hundred because a healthy candidate drew badly:
    # a tenth of the default budget, still far more than the regressed arms need.
    "false_rollback_rate": "0.1%",
    "checks": [{"metric": "error_rate", "compare": "baseline", "max_ratio": 2,
                "max_increase": "1%"}],
}


@dataclass
class Receiver:
    """A webhook that answers 500 then 429 to the first two attempts of every alert."""

    url: str = ""
    attempts: Counter[str] = field(default_factory=Counter)
    accepted: Counter[str] = field(default_factory=Counter)
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            alert_id = self.headers.get("X-Rollout-Alert-Id", "")
            with state.lock:
                state.attempts[alert_id] += 1
                attempt = state.attempts[alert_id]
                if attempt > 2:
                    state.accepted[alert_id] += 1
                    state.bodies[alert_id] = json.loads(body)
            if attempt == 1:
                self.send_response(500)
            elif attempt == 2:
                self.send_response(429)
                self.send_header("Retry-After", "1")
            else:
                self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ARG002
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    yield state
    server.shutdown()
    server.server_close()


class Daemon:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env = env
        self.log = log
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self) -> str:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rollout.cli", "serve"],
            env=self.env, stdout=subprocess.PIPE, stderr=self.log.open("a"), text=True,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            match = re.search(r"(http://127\.0\.0\.1:\d+)", line)
            if match:
                self.url = match.group(1)
                return self.url
            if self.process.poll() is not None:
                break
        raise AssertionError(f"the daemon did not start: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def close(self) -> None:
        """Whatever the test's outcome, no daemon outlives it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)


def create_endpoint(admin: httpx.Client, name: str, candidate_error_rate: float) -> None:
    response = admin.post("/endpoints", json={
        "name": name,
        "served_entities": [{"name": "model-1", "entity_name": "main.ml.model",
                             "entity_version": "1", "workload_size": "Small",
                             "scale_to_zero_enabled": False}],
        "profiles": {"model-1": {"error_rate": 0.002},
                     "model-2": {"error_rate": candidate_error_rate}},
        "qps": 400,
    })
    assert response.status_code == 201, response.text


def plan(endpoint: str) -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "candidate": {"name": "model-2", "entity_name": "main.ml.model", "entity_version": "2",
                      "workload_size": "Small"},
        "strategy": "canary",
        "steps": [{"weight": 20, "bake": "6s"}, {"weight": 50, "bake": "6s"}],
        "policy": POLICY,
    }


def metric(url: str, name: str, **labels: str) -> float | None:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return None


def test_daemon_end_to_end(sandbox_process: str, sandbox_token: str, receiver: Receiver,
                           tmp_path: Path, request: pytest.FixtureRequest) -> None:
    with httpx.Client(base_url=f"{sandbox_process}/_sandbox/v1", timeout=10) as admin:
        create_endpoint(admin, "good-ep", 0.002)
        create_endpoint(admin, "bad-ep", 0.25)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "ROLLOUT_"))}
    # The regressed plan names its policy; the daemon finds it in a policy directory.
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "e2e-named.yaml").write_text(json.dumps({**POLICY, "name": "e2e-named"}))
    env.update({
        "ROLLOUT_ENGINE_POLICY_DIRS": str(policies),
        "DATABRICKS_HOST": sandbox_process,
        "DATABRICKS_TOKEN": sandbox_token,
        "ROLLOUT_STORE_URL": f"sqlite:///{tmp_path / 'rollout.db'}",
        "ROLLOUT_API_PORT": "0",
        "ROLLOUT_ENGINE_LOOK_INTERVAL": "0.5",
        "ROLLOUT_ENGINE_UPDATE_POLL": "0.25",
        "ROLLOUT_ENGINE_SCAN_INTERVAL": "0.2",
        # The healthy candidate's error rate equals its baseline's, so how soon its pass is
        # proven depends on the draw and on how many windows a loaded machine closes per
        # second; give the evidence time to arrive instead of pausing at bake x 3.
        "ROLLOUT_ENGINE_STEP_DEADLINE_FACTOR": "20",
        "ROLLOUT_SERVING_UPDATE_POLL_INTERVAL": "0.25",
        "ROLLOUT_ALERTS_CHANNELS": json.dumps([{"type": "webhook", "url": receiver.url}]),
        "ROLLOUT_ALERTS_POLL_INTERVAL": "0.2",
        # The receiver listens on loopback: alerts go there only when allowed.
        "ROLLOUT_ALERTS_ALLOWED_HOSTS": "127.0.0.1",
        "ROLLOUT_ALERTS_INITIAL_BACKOFF": "0.2",
        "ROLLOUT_ALERTS_MAX_BACKOFF": "1",
        # An alert claimed by the killed daemon stays hidden until its lease runs out; keep
        # that short so its redelivery after the restart happens within the test.
        "ROLLOUT_ALERTS_TIMEOUT": "2",
        "ROLLOUT_ALERTS_LEASE": "5",
        "ROLLOUT_LOG_FORMAT": "json",
    })
    daemon = Daemon(env, tmp_path / "daemon.log")
    request.addfinalizer(daemon.close)
    url = daemon.start()

    # Submit one plan over HTTP and one with the CLI.
    response = httpx.post(f"{url}/api/v1/rollouts", json=plan("good-ep"), timeout=30)
    assert response.status_code == 201, response.text
    good = response.json()["id"]
    plan_file = tmp_path / "bad.yaml"
    plan_file.write_text(json.dumps({**plan("bad-ep"), "policy": "e2e-named"}))
    cli = subprocess.run(
        [sys.executable, "-m", "rollout.cli", "submit", str(plan_file), "--server", url],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )
    assert cli.returncode == 0, cli.stdout + cli.stderr
    bad = cli.stdout.strip().splitlines()[-1].strip()
    assert re.fullmatch(r"[0-9a-f]{6,}", bad), cli.stdout
    stored = httpx.get(f"{url}/api/v1/rollouts/{bad}", timeout=10).json()
    assert stored["policy"] == "e2e-named", stored.get("policy")
    assert stored["plan"]["policy"]["checks"], "resolved from the directory and stored inline"

    # Watch the good one move, then kill the daemon mid-rollout.
    weights = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        rollout = httpx.get(f"{url}/api/v1/rollouts/{good}", timeout=10).json()
        gauge = metric(url, "rollout_candidate_weight_percent", rollout=good)
        if gauge is not None:
            weights.append(gauge)
        if rollout["phase"] == "progressing" and rollout["candidate_weight"] > 0:
            break
        time.sleep(0.3)
    assert rollout["phase"] == "progressing", rollout
    daemon.kill()
    url = daemon.start()

    # Both rollouts end as they should after the restart.
    deadline = time.monotonic() + 150
    phases: dict[str, str] = {}
    while time.monotonic() < deadline:
        phases = {rid: httpx.get(f"{url}/api/v1/rollouts/{rid}", timeout=10).json()["phase"]
                  for rid in (good, bad)}
        gauge = metric(url, "rollout_candidate_weight_percent", rollout=good)
        if gauge is not None:
            weights.append(gauge)
        if all(p in ("succeeded", "rolled_back", "aborted", "failed") for p in phases.values()):
            break
        time.sleep(0.5)
    assert phases == {good: "succeeded", bad: "rolled_back"}, daemon.log.read_text()[-3000:]
    assert max(weights) > 0, "the candidate weight gauge moved with the rollout"
    assert metric(url, "rollout_rollbacks_total", endpoint="bad-ep") == 1
    assert metric(url, "rollout_candidate_weight_percent", rollout=good) == 100

    # Every alert arrives, past the failing first attempts, and is accepted once per id.
    expected = {(good, "started"), (good, "succeeded"), (bad, "started"), (bad, "rolled_back")}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with receiver.lock:
            got = {(b["rollout"], b["event"]) for b in receiver.bodies.values()}
        if expected <= got and metric(url, "rollout_alerts_pending") == 0:
            break
        time.sleep(0.5)
    assert expected <= got, got
    assert metric(url, "rollout_alerts_pending") == 0
    with receiver.lock:
        assert all(count == 1 for count in receiver.accepted.values()), receiver.accepted
        assert all(receiver.attempts[i] >= 3 for i in receiver.accepted), "retried past failures"
    rolled = next(b for b in receiver.bodies.values()
                  if b["rollout"] == bad and b["event"] == "rolled_back")
    assert rolled["details"]["verdict"]["checks"], "the alert carries the verdict's numbers"

    # The CLI watches a finished rollout and exits with its outcome.
    watch = subprocess.run(
        [sys.executable, "-m", "rollout.cli", "get", bad, "--watch", "--server", url],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )
    assert watch.returncode == 3, watch.stdout + watch.stderr
    assert daemon.terminate() == 0, "SIGTERM shuts down cleanly"
    log = daemon.log.read_text()
    assert sandbox_token not in log, "no secret is ever logged"
    decisions = [json.loads(line) for line in log.splitlines()
                 if line.startswith("{") and '"rollout.decision"' in line]
    verdicts = [d for d in decisions if d.get("kind") == "verdict"]
    assert verdicts, "one JSON line per decision"
    assert all(d.get("verdict") for d in verdicts), "decision lines carry the verdict's numbers"
