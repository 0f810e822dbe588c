"""The code base stays clean: ruff over everything, mypy --strict over the package, and the
layering of the design (imports point downward) as import-linter contracts."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.timeout(600)


def run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, timeout=540, check=False
    )


def test_ruff_is_clean() -> None:
    ruff = shutil.which("ruff")
    assert ruff is not None, "ruff is part of the test extra: pip install -e '.[test]'"
    result = run(ruff, "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_is_clean() -> None:
    result = run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success" in result.stdout


def test_imports_point_downward() -> None:
    lint_imports = shutil.which("lint-imports")
    assert lint_imports is not None, (
        "import-linter is part of the test extra: pip install -e '.[test]'"
    )
    result = run(lint_imports, "--config", str(ROOT / "pyproject.toml"))
    assert result.returncode == 0, result.stdout + result.stderr
    # Every contract of pyproject.toml was checked, and kept.
    assert "Contracts: 3 kept, 0 broken." in result.stdout, result.stdout
