"""``rollout sandbox`` as a real process: it listens, serves, and exits cleanly on a signal."""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx
import pytest

pytestmark = pytest.mark.slow

API = "/api/2.0/serving-endpoints"
# The sandbox speaks plain HTTP; handing httpx a context skips loading the CA bundle per client.
TLS = ssl.create_default_context()
TOKEN = "dapi-e2e-token"


@dataclass
class Process:
    proc: subprocess.Popen[str]
    lines: queue.Queue[str] = field(default_factory=queue.Queue)
    output: list[str] = field(default_factory=list)

    def wait_for(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                assert self.proc.poll() is None, "".join(self.output)
                continue
            match = re.search(pattern, line)
            if match:
                return match
        raise AssertionError(f"no {pattern!r} within {timeout} s: {''.join(self.output)}")


@contextmanager
def sandbox_process(*args: str) -> Iterator[Process]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "rollout.cli", "sandbox", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    handle = Process(proc)

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            handle.output.append(line)
            handle.lines.put(line)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        yield handle
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        reader.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()


def stop(handle: Process, sig: signal.Signals) -> None:
    handle.proc.send_signal(sig)
    assert handle.proc.wait(timeout=15) == 0, "".join(handle.output)


def poll(check: object, timeout: float) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.1)


def test_sandbox_process_serves_the_demo_and_stops_on_sigterm() -> None:
    with sandbox_process("--port", "0", "--demo", "--window-seconds", "1",
                         "--update-seconds", "0.5", "--token", TOKEN, "--seed", "3") as handle:
        url = handle.wait_for(r"listening on (http://127\.0\.0\.1:\d+)", timeout=30).group(1)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=url, headers=headers, timeout=5.0, verify=TLS) as client:
            demo = client.get(f"{API}/demo-endpoint").json()
            assert demo["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
            # Simulated load shows up once a 1 s window has closed.
            poll(lambda: "request_count_total{" in client.get(f"{API}/demo-endpoint/metrics")
                 .text, timeout=10)
            body = {
                "served_entities": [
                    {"name": "demo-model-1", "entity_name": "main.default.demo_model",
                     "entity_version": "1", "workload_size": "Small",
                     "scale_to_zero_enabled": False},
                    {"name": "demo-model-2", "entity_name": "main.default.demo_model",
                     "entity_version": "2", "workload_size": "Small",
                     "scale_to_zero_enabled": False},
                ],
                "traffic_config": {"routes": [
                    {"served_entity_name": "demo-model-1", "traffic_percentage": 50},
                    {"served_entity_name": "demo-model-2", "traffic_percentage": 50},
                ]},
            }
            put = client.put(f"{API}/demo-endpoint/config", json=body)
            assert put.json()["state"]["config_update"] == "IN_PROGRESS"
            # The system clock moves the update along: 0.5 s.
            poll(lambda: client.get(f"{API}/demo-endpoint").json()["state"]["config_update"]
                 == "NOT_UPDATING", timeout=10)
            inv = client.post("/serving-endpoints/demo-endpoint/invocations",
                              json={"dataframe_records": [{"x": 1}]})
            assert inv.status_code == 200
            assert inv.headers["served-model-name"] in {"demo-model-1", "demo-model-2"}
            # On the system clock the clock cannot be moved by hand.
            assert client.post("/_sandbox/v1/clock/advance",
                               json={"seconds": 1}).status_code == 409
        stop(handle, signal.SIGTERM)
    text = "".join(handle.output)
    assert "curl" in text
    assert "Sandbox stopped." in text
    assert "Traceback" not in text


def test_sandbox_process_stops_on_ctrl_c() -> None:
    with sandbox_process("--port", "0") as handle:
        url = handle.wait_for(r"listening on (http://127\.0\.0\.1:\d+)", timeout=30).group(1)
        with httpx.Client(base_url=url, timeout=5.0, verify=TLS) as client:
            assert client.get(f"{API}").status_code == 401
        stop(handle, signal.SIGINT)
    assert "Traceback" not in "".join(handle.output)


def test_sandbox_process_reports_a_busy_port() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with sandbox_process("--port", str(port)) as handle:
            assert handle.proc.wait(timeout=30) == 1
        text = "".join(handle.output)
    assert f"cannot serve on 127.0.0.1:{port}" in text
    assert "Traceback" not in text
