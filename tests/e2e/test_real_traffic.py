"""``rollout serve`` against ``rollout sandbox`` (two processes) on traffic as it really comes:
a healthy canary whose p99 sits exactly on a bucket bound is promoted, a healthy canary whose
replicas are cold for two windows after every split change is promoted, and a regressed one
is rolled back, its alert delivered."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_daemon import Daemon

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

POLICY = {
    "name": "e2e-real",
    "min_requests": 50,
    # A tenth of the default budget: the suite must not fail once in a hundred runs.
    "false_rollback_rate": "0.1%",
    "checks": [
        {"metric": "error_rate", "compare": "baseline", "max_ratio": 2, "max_increase": "1%"},
        {"metric": "latency_p99_ms", "compare": "baseline", "max_ratio": 1.25},
    ],
}
BASELINE = {"error_rate": 0.002, "latency_p50_ms": 40.0, "latency_p99_ms": 100.0}


@pytest.fixture
def hook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                received.append(json.loads(body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002, ARG002
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


def create(admin: httpx.Client, name: str, candidate: dict[str, Any]) -> None:
    response = admin.post("/endpoints", json={
        "name": name,
        "served_entities": [{"name": "model-1", "entity_name": "main.ml.model",
                             "entity_version": "1", "workload_size": "Small",
                             "scale_to_zero_enabled": False}],
        "profiles": {"model-1": BASELINE, "model-2": {**BASELINE, **candidate}},
        "qps": 400,
    })
    assert response.status_code == 201, response.text


def plan(endpoint: str) -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "candidate": {"name": "model-2", "entity_name": "main.ml.model", "entity_version": "2",
                      "workload_size": "Small", "scale_to_zero_enabled": False},
        "strategy": "canary",
        # 2 s windows: the default warm-up is three of them (6 s) after every split change.
        "steps": [{"weight": 20, "bake": "12s"}, {"weight": 50, "bake": "12s"}],
        "policy": POLICY,
    }


def test_real_traffic_end_to_end(
    sandbox_process: str, sandbox_token: str, hook: tuple[str, list[dict[str, Any]]],
    tmp_path: Path, request: pytest.FixtureRequest,
) -> None:
    hook_url, received = hook
    with httpx.Client(base_url=f"{sandbox_process}/_sandbox/v1", timeout=10) as admin:
        create(admin, "bound-ep", {})  # both p99s exactly on the 100 ms bound
        create(admin, "cold-ep", {"cold_start_windows": 2, "cold_start_latency_factor": 3.0,
                                  "cold_start_error_rate": 0.005})
        create(admin, "bad-ep", {"error_rate": 0.3})
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "ROLLOUT_"))}
    env.update({
        "DATABRICKS_HOST": sandbox_process,
        "DATABRICKS_TOKEN": sandbox_token,
        "ROLLOUT_STORE_URL": f"sqlite:///{tmp_path / 'rollout.db'}",
        "ROLLOUT_API_PORT": "0",
        "ROLLOUT_ENGINE_LOOK_INTERVAL": "0.5",
        "ROLLOUT_ENGINE_UPDATE_POLL": "0.25",
        "ROLLOUT_ENGINE_SCAN_INTERVAL": "0.2",
        "ROLLOUT_ENGINE_STEP_DEADLINE_FACTOR": "20",
        "ROLLOUT_SERVING_UPDATE_POLL_INTERVAL": "0.25",
        "ROLLOUT_SERVING_METRICS_WINDOW": "2",
        "ROLLOUT_ALERTS_CHANNELS": json.dumps([{"type": "webhook", "url": hook_url}]),
        "ROLLOUT_ALERTS_POLL_INTERVAL": "0.2",
        # The receiver listens on loopback: alerts go there only when allowed.
        "ROLLOUT_ALERTS_ALLOWED_HOSTS": "127.0.0.1",
        "ROLLOUT_LOG_FORMAT": "json",
    })
    daemon = Daemon(env, tmp_path / "daemon.log")
    request.addfinalizer(daemon.close)
    url = daemon.start()
    ids = {}
    for endpoint in ("bound-ep", "cold-ep", "bad-ep"):
        response = httpx.post(f"{url}/api/v1/rollouts", json=plan(endpoint), timeout=30)
        assert response.status_code == 201, response.text
        ids[endpoint] = response.json()["id"]

    deadline = time.monotonic() + 240
    rollouts: dict[str, dict[str, Any]] = {}
    while time.monotonic() < deadline:
        rollouts = {e: httpx.get(f"{url}/api/v1/rollouts/{i}", timeout=10).json()
                    for e, i in ids.items()}
        if all(r["phase"] in ("succeeded", "rolled_back", "aborted", "failed", "paused")
               for r in rollouts.values()):
            break
        time.sleep(0.5)
    phases = {e: r["phase"] for e, r in rollouts.items()}
    assert phases == {"bound-ep": "succeeded", "cold-ep": "succeeded", "bad-ep": "rolled_back"}, (
        {e: r.get("pause_reason") or r.get("ending_reason") for e, r in rollouts.items()}
    )

    # The healthy verdicts were judged at bucket resolution and after a warm-up.
    events = httpx.get(f"{url}/api/v1/rollouts/{ids['bound-ep']}/events", timeout=10).json()
    verdicts = [e["data"]["verdict"] for e in events["events"] if e["kind"] == "verdict"]
    levels = {c["detail"]["level"] for v in verdicts for c in v["checks"]
              if c["metric"] == "latency_p99_ms" and c.get("detail")
              and c["detail"].get("level") is not None}
    assert levels == {250.0}, levels  # the first bound beyond 1.25 x ~100 ms
    warmups = {round(v["warmup"]["seconds"], 1) for v in verdicts if v.get("warmup")}
    # Three windows: 6 s once the windows show their 2 s length.
    assert 6.0 in warmups, warmups

    # The regressed candidate's rollback was alerted, with the verdict that decided it.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        rolled = [b for b in received if b["rollout"] == ids["bad-ep"]
                  and b["event"] == "rolled_back"]
        if rolled:
            break
        time.sleep(0.3)
    assert rolled, [b["event"] for b in received]
    assert "analysis failed" in rolled[0]["summary"] or "ceiling" in rolled[0]["summary"]
    assert daemon.terminate() == 0
