"""`rollout demo` runs to success, as the README's first command does."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]


def test_demo_promotes_one_rolls_back_the_other_and_shows_the_alert() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "ROLLOUT_"))}
    env["COLUMNS"] = "200"  # one line per progress update, whatever the terminal
    result = subprocess.run(
        [sys.executable, "-m", "rollout.cli", "demo"],
        capture_output=True, text=True, timeout=200, check=False, env=env,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "demo-model-2: succeeded" in output
    assert "demo-model-3: rolled_back" in output
    assert "ALERT demo-endpoint: demo-model-3 rolled back" in output
    assert "/metrics" in output
    assert "demo passed" in output
    # It ends by saying that everything stopped, and prints no URL that is already dead.
    summary = output.split("summary", 1)[1]
    assert "The sandbox and the controller stop now" in summary
    assert "rollout demo --keep" in summary
    assert "http://" not in summary
    assert "Traceback" not in output
