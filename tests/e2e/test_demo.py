"""``rollout demo`` runs to success, as the README's first command does; with ``--keep`` the
sandbox and the controller then stay up, the status page it prints answers, the plan it offers
can be submitted, and Ctrl-C (SIGINT) stops everything cleanly. One run covers both: without
``--keep`` the tour is the same and only its last words differ (``rollout.demo.FAREWELL``)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from rollout.demo import FAREWELL

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_demo_promotes_one_rolls_back_the_other_then_keeps_running_until_sigint(
    request: pytest.FixtureRequest,
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "ROLLOUT_"))}
    env["COLUMNS"] = "200"
    process = subprocess.Popen(
        [sys.executable, "-m", "rollout.cli", "demo", "--keep"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
    )
    request.addfinalizer(lambda: process.poll() is None and process.kill())
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        lines.extend(iter(process.stdout.readline, ""))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    deadline = time.monotonic() + 200
    while not any("Press Ctrl-C" in line for line in lines):
        assert process.poll() is None, "".join(lines)[-4000:]
        assert time.monotonic() < deadline, "".join(lines)[-4000:]
        time.sleep(0.2)
    output = "".join(lines)
    assert "demo-model-2: succeeded" in output
    assert "demo-model-3: rolled_back" in output
    assert "ALERT demo-endpoint: demo-model-3 rolled back" in output
    assert "demo passed" in output
    assert FAREWELL not in output
    page = re.search(r"status page\s+(http://127\.0\.0\.1:\d+)/", output)
    plan = re.search(r"rollout submit (\S+try-canary\.yaml)", output)
    assert page, output
    assert plan, output
    url = page.group(1)

    html = httpx.get(f"{url}/", timeout=10)
    assert html.status_code == 200
    assert "text/html" in html.headers["content-type"]
    listed = httpx.get(f"{url}/api/v1/rollouts", timeout=10).json()["rollouts"]
    assert sorted(r["phase"] for r in listed) == ["rolled_back", "succeeded"]
    # The plan it offers is accepted by the controller it leaves running.
    submitted = subprocess.run(
        [sys.executable, "-m", "rollout.cli", "submit", plan.group(1), "--server", url],
        capture_output=True, text=True, timeout=60, check=False, env=env,
    )
    assert submitted.returncode == 0, submitted.stderr
    shown = httpx.get(f"{url}/api/v1/rollouts/demo-endpoint/try-it", timeout=10)
    assert shown.status_code == 200, shown.text
    assert shown.json()["id"] == submitted.stdout.strip().splitlines()[-1]

    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=60) == 0, "".join(lines)[-3000:]
    reader.join(10)
    assert "stopped: the controller and the sandbox are gone" in "".join(lines)
    assert "Traceback" not in "".join(lines)
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{url}/healthz", timeout=5)
    assert not Path(plan.group(1)).exists(), "the demo's files are removed"


def test_without_keep_the_last_words_name_no_url() -> None:
    assert "rollout demo --keep" in FAREWELL
    assert "http" not in FAREWELL
