"""Start-up that explains itself: ``rollout serve`` and ``rollout engine`` as processes with
no credentials name what to set and create nothing; a bad setting is named by its variable."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from rollout.settings import variable_of

ROOT = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, *args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "ROLLOUT_"))}
    env.update(HOME=str(tmp_path), PYTHONPATH=str(ROOT), **variables)
    return subprocess.run(
        [sys.executable, "-m", "rollout.cli", *args], cwd=tmp_path, env=env,
        capture_output=True, text=True, timeout=60, check=False,
    )


@pytest.mark.parametrize("command", ["serve", "engine"])
def test_no_credentials_names_what_to_set_and_creates_nothing(
    tmp_path: Path, command: str
) -> None:
    result = run(tmp_path, command, ROLLOUT_API_PORT="0")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    for name in ("DATABRICKS_HOST", "DATABRICKS_TOKEN", "DATABRICKS_CLIENT_ID",
                 "DATABRICKS_CLIENT_SECRET", "DATABRICKS_CONFIG_PROFILE", "rollout demo"):
        assert name in result.stderr, name
    assert list(tmp_path.iterdir()) == [], "nothing is created before the sign-in is known"


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("ROLLOUT_ENGINE_LOOK_INTERVAL", "often", "valid number"),
        ("ROLLOUT_API_PORT", "-5", "greater than or equal to 0"),
        ("DATABRICKS_AUTH_TYPE", "magic", "'databricks-cli'"),
    ],
)
def test_a_bad_setting_is_named_by_its_variable(
    tmp_path: Path, variable: str, value: str, words: str
) -> None:
    result = run(tmp_path, "serve", **{variable: value})
    assert result.returncode == 2
    line = result.stderr.strip().splitlines()[0]
    assert line.startswith(f"error: {variable}={value}: "), line
    assert words in line
    assert list(tmp_path.iterdir()) == []


def test_variable_of_nested_and_grouped_locations() -> None:
    assert variable_of("EngineSettings", ("look_interval",)) == "ROLLOUT_ENGINE_LOOK_INTERVAL"
    assert variable_of("Settings", ("serving", "metrics_window")) == (
        "ROLLOUT_SERVING_METRICS_WINDOW"
    )
    assert variable_of("DatabricksSettings", ("host",)) == "DATABRICKS_HOST"
