"""`rollout validate`: the shipped examples are valid; errors name fields and exit non-zero."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from rollout.cli import app

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_are_valid(path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "valid" in result.output


def test_examples_exist() -> None:
    assert {p.name for p in EXAMPLES} >= {"canary.yaml", "ab.yaml", "blue-green.yaml"}


def test_invalid_plan_exits_1_naming_the_field(tmp_path: Path) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "endpoint: ads\nstrategy: canary\ncandidate: {entity_name: m, entity_version: 1}\n"
        "steps: [{weight: 50, bake: 1m}, {weight: 20, bake: 1m}]\n"
    )
    result = CliRunner().invoke(app, ["validate", str(plan)])
    assert result.exit_code == 1
    assert "steps[1].weight" in result.output
    assert "Traceback" not in result.output


def test_unreadable_file_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2
    assert "cannot read" in result.output
