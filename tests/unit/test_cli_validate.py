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


SIX_PROBLEMS = """\
strategy: canary
endpoint: "bad name!"
candidate: {entity_name: main.ml.m, entity_version: 1, workload_sizee: Small}
steps: [{weight: 50, bake: 10m}, {weight: 20, bake: 10m}]
duration: 10m
policy: nope
alerts: [{type: webhook, url: "ftp://x"}]
"""

SIX_FIELDS = [
    "duration:", "endpoint:", "candidate.workload_sizee:", "steps[1].weight:",
    "alerts[0].url:", "policy:",
]


def test_six_problems_are_listed_together(tmp_path: Path) -> None:
    plan = tmp_path / "six.yaml"
    plan.write_text(SIX_PROBLEMS)
    result = CliRunner().invoke(app, ["validate", str(plan)])
    assert result.exit_code == 1
    problems = [line.strip() for line in result.output.splitlines() if line.startswith("  ")]
    assert len(problems) == 6, result.output
    for field in SIX_FIELDS:
        assert sum(p.startswith(field) for p in problems) == 1, (field, result.output)


def test_dash_reads_the_plan_from_stdin() -> None:
    result = CliRunner().invoke(app, ["validate", "-"], input=SIX_PROBLEMS)
    assert result.exit_code == 1
    assert result.output.startswith("<stdin>: invalid plan")
    assert "policy: unknown policy 'nope'" in result.output
    valid = CliRunner().invoke(
        app, ["validate", "-"], input=(Path(__file__).parents[2] / "examples/canary.yaml")
        .read_text()
    )
    assert valid.exit_code == 0, valid.output
    assert valid.output.startswith("<stdin>: valid canary plan")


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    plan = tmp_path / "broken.yaml"
    plan.write_text("endpoint: [unclosed\n")
    result = CliRunner().invoke(app, ["validate", str(plan)])
    assert result.exit_code == 2, "not a plan at all"
    assert f'in "{plan}", line 2' in result.output, result.output
    assert "<unicode string>" not in result.output


def test_unreadable_file_exits_2(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2
    assert "cannot read" in result.output


TEAM_POLICY = """\
description: the team's own
checks:
  - {metric: error_rate, compare: baseline, max_ratio: 1.5}
"""


def _plan_with_policy(tmp_path: Path, policy: str) -> Path:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "endpoint: ads\nstrategy: canary\ncandidate: {entity_name: m, entity_version: 1}\n"
        f"steps: [{{weight: 20, bake: 1m}}]\npolicy: {policy}\n"
    )
    return plan


def test_a_policy_directory_adds_named_policies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROLLOUT_ENGINE_POLICY_DIRS", raising=False)
    team = tmp_path / "team-policies"
    team.mkdir()
    (team / "team.yaml").write_text(TEAM_POLICY)
    plan = _plan_with_policy(tmp_path, "team")
    unknown = CliRunner().invoke(app, ["validate", str(plan)])
    assert unknown.exit_code == 1
    assert "unknown policy 'team'" in unknown.output
    assert "default" in unknown.output, "the error lists the policies there are"

    by_flag = CliRunner().invoke(app, ["validate", str(plan), "--policy-dir", str(team)])
    assert by_flag.exit_code == 0, by_flag.output
    assert "policy team" in by_flag.output

    monkeypatch.setenv("ROLLOUT_ENGINE_POLICY_DIRS", str(team))
    by_setting = CliRunner().invoke(app, ["validate", str(plan)])
    assert by_setting.exit_code == 0, by_setting.output


def test_a_later_policy_directory_wins_and_a_missing_one_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ROLLOUT_ENGINE_POLICY_DIRS", raising=False)
    team = tmp_path / "team-policies"
    team.mkdir()
    (team / "default.yaml").write_text(TEAM_POLICY)
    plan = _plan_with_policy(tmp_path, "default")
    result = CliRunner().invoke(app, ["validate", str(plan), "--policy-dir", str(team)])
    assert result.exit_code == 0, result.output
    assert "1 checks" in result.output, "the team's default replaced the built-in one"

    missing = CliRunner().invoke(app, ["validate", str(plan), "--policy-dir",
                                       str(tmp_path / "nowhere")])
    assert missing.exit_code == 2
    assert "policy directory not found" in missing.output


@pytest.mark.parametrize("strategy", ["{}", "[canary]"])
def test_a_non_scalar_strategy_exits_2_with_one_line(tmp_path: Path, strategy: str) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"endpoint: ads\nstrategy: {strategy}\ncandidate: {{entity_name: m, entity_version: 1}}\n"
        "steps: [{weight: 5, bake: 1m}]\n"
    )
    result = CliRunner().invoke(app, ["validate", str(plan)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert "strategy" in lines[0]
    assert "Traceback" not in result.output


def test_an_alias_amplified_plan_exits_2_without_expanding_it(tmp_path: Path) -> None:
    chunk = "x" * 10_000
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        "endpoint: ads\nstrategy: canary\nsteps: [{weight: 5, bake: 1m}]\n"
        f"pad: &s {chunk}\nlist: &l [" + ", ".join(["*s"] * 60) + "]\n"
        "candidate: {entity_name: m, entity_version: 1, environment_vars: {A: *s}}\n"
        "more: [" + ", ".join(["*l"] * 60) + "]\n"
    )
    result = CliRunner().invoke(app, ["validate", str(plan)])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1
    assert "once YAML aliases are expanded" in result.output
