"""The CI gate: ``rollout get --watch`` (a process) follows a rollout while ``rollout serve``
is stopped with SIGTERM and started again on the same port, and exits by the rollout's
outcome. The sandbox is a process too; the plan is a short two-step canary."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_daemon import Daemon, create_endpoint, plan

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

EXIT_CODES = {"succeeded": 0, "rolled_back": 3, "failed": 4, "aborted": 5}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def phase_of(url: str, rollout_id: str) -> dict[str, Any]:
    response = httpx.get(f"{url}/api/v1/rollouts/{rollout_id}", timeout=10)
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_watch_rides_out_a_controller_restart(
    sandbox_process: str, sandbox_token: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    with httpx.Client(base_url=f"{sandbox_process}/_sandbox/v1", timeout=10) as admin:
        create_endpoint(admin, "gate-ep", 0.002)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "ROLLOUT_"))}
    env.update({
        "DATABRICKS_HOST": sandbox_process,
        "DATABRICKS_TOKEN": sandbox_token,
        "ROLLOUT_STORE_URL": f"sqlite:///{tmp_path / 'rollout.db'}",
        "ROLLOUT_API_PORT": str(port),
        "ROLLOUT_ENGINE_LOOK_INTERVAL": "0.5",
        "ROLLOUT_ENGINE_UPDATE_POLL": "0.25",
        "ROLLOUT_ENGINE_SCAN_INTERVAL": "0.2",
        "ROLLOUT_ENGINE_STEP_DEADLINE_FACTOR": "20",
        "ROLLOUT_SERVING_UPDATE_POLL_INTERVAL": "0.25",
        "ROLLOUT_LOG_FORMAT": "json",
    })
    daemon = Daemon(env, tmp_path / "daemon.log")
    request.addfinalizer(daemon.close)
    url = daemon.start()
    assert url == f"http://127.0.0.1:{port}"
    response = httpx.post(f"{url}/api/v1/rollouts", json=plan("gate-ep"), timeout=30)
    assert response.status_code == 201, response.text
    rollout_id = response.json()["id"]

    watch_out, watch_err = tmp_path / "watch.out", tmp_path / "watch.err"
    with watch_out.open("w") as out, watch_err.open("w") as err:
        watcher = subprocess.Popen(
            [sys.executable, "-m", "rollout.cli", "get", rollout_id[:8], "--watch",
             "--interval", "0.2", "--timeout", "3m", "--server", url],
            env=env, stdout=out, stderr=err, text=True,
        )
    request.addfinalizer(lambda: watcher.poll() is None and watcher.kill())

    deadline = time.monotonic() + 60
    while phase_of(url, rollout_id)["phase"] != "progressing":
        assert time.monotonic() < deadline, "the rollout did not start"
        time.sleep(0.2)
    assert daemon.terminate() == 0
    # The watcher keeps trying while nothing listens; it must not give up.
    time.sleep(2.0)
    assert watcher.poll() is None, watch_err.read_text()
    daemon.start()

    code = watcher.wait(timeout=180)
    final = phase_of(url, rollout_id)
    assert final["phase"] in EXIT_CODES, final
    assert code == EXIT_CODES[final["phase"]], (code, final["phase"], watch_err.read_text())
    assert final["phase"] == "succeeded", final.get("ending_reason")
    errors = watch_err.read_text()
    assert "retrying" in errors
    assert "the API answers again" in errors
    lines = watch_out.read_text().strip().splitlines()
    assert lines[-1].split(" | ")[1] == "succeeded", lines
    # Stopped cleanly: the stored state says so too.
    events = httpx.get(f"{url}/api/v1/rollouts/{rollout_id}/events", timeout=10).json()
    assert [e["to_phase"] for e in events["events"]][-1] == "succeeded"
