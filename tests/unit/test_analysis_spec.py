"""Policies and checks: parsing units, validation messages, built-in policies, budgets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from rollout.analysis import CheckSpec, Metric, Policy

POLICIES = Path(__file__).resolve().parents[2] / "policies"

DESIGN_EXAMPLE = {
    "name": "default",
    "judge": "sequential",
    "min_requests": 200,
    "false_rollback_rate": 0.01,
    "checks": [
        {"metric": "error_rate", "compare": "baseline", "max_increase": "0.5%"},
        {"metric": "latency_p99_ms", "compare": "baseline", "max_ratio": 1.25},
        {"metric": "error_rate", "max": "2%"},
    ],
    "on_no_data": "hold",
    "deadline": "2h",
}


def test_design_example_policy_parses_with_units() -> None:
    policy = Policy.model_validate(DESIGN_EXAMPLE)
    assert policy.checks[0].max_increase == pytest.approx(0.005)
    assert policy.checks[1].max_ratio == 1.25
    assert policy.checks[2].max_level == pytest.approx(0.02)
    assert policy.deadline == 7200.0
    assert policy.statistical_checks == 4  # the three checks and the 5xx ceiling
    assert policy.alpha_per_check == pytest.approx(0.01 / 4)
    assert [c.describe() for c in policy.checks] == [
        "error_rate vs baseline: max_increase 0.5%",
        "latency_p99_ms vs baseline: max_ratio 1.25",
        "error_rate max 2%",
    ]


@pytest.mark.parametrize(
    ("raw", "field", "expected"),
    [
        ({"metric": "latency_p99_ms", "max": "1.5s"}, "max_level", 1500.0),
        ({"metric": "latency_p99_ms", "max": "250ms"}, "max_level", 250.0),
        ({"metric": "latency_p50_ms", "compare": "baseline", "max_increase": 20},
         "max_increase", 20.0),
        ({"metric": "cpu_usage_percentage", "max": "90%"}, "max_level", 90.0),
        ({"metric": "mem_usage_percentage", "max": 85}, "max_level", 85.0),
        ({"metric": "gpu_usage_percentage", "max": "95%"}, "max_level", 95.0),
        ({"metric": "gpu_memory_usage_percentage", "max": 80}, "max_level", 80.0),
        ({"metric": "inference_latency_p99_ms", "max": "2s"}, "max_level", 2000.0),
        ({"metric": "inference_latency_p50_ms", "compare": "baseline", "max_ratio": 1.2},
         "max_ratio", 1.2),
        ({"metric": "request_count", "min": 1000}, "min_level", 1000.0),
        ({"metric": "client_error_rate", "max": 0.05}, "max_level", 0.05),
    ],
)
def test_levels_are_read_in_the_metrics_unit(raw: dict[str, object], field: str,
                                             expected: float) -> None:
    assert getattr(CheckSpec.model_validate(raw), field) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"metric": "error_rate", "compare": "baseline"}, "needs max_ratio and/or max_increase"),
        ({"metric": "error_rate", "compare": "baseline", "max_ratio": 1.0}, "greater than 1"),
        ({"metric": "error_rate", "max": 2}, "more than 100 %"),
        ({"metric": "error_rate", "min": "1%"}, "not a regression check"),
        ({"metric": "cpu_usage_percentage", "compare": "baseline", "max_ratio": 2},
         "cannot be compared with the baseline"),
        ({"metric": "queue_time_p99_ms", "compare": "baseline", "max_ratio": 2},
         "cannot be compared with the baseline"),
        ({"metric": "gpu_usage_percentage", "compare": "baseline", "max_ratio": 2},
         "cannot be compared with the baseline"),
        ({"metric": "error_rate", "max_ratio": 2}, "need compare: baseline"),
        ({"metric": "error_rate"}, "needs max or min"),
        ({"metric": "error_rate", "compare": "baseline", "max_ratio": 2, "max": "1%"},
         "either relative"),
        ({"metric": "latency_p99_ms", "max": "soon"}, "is not a latency"),
        ({"metric": "request_count", "max": 5}, "request_count takes min"),
        ({"metric": "error_rates", "max": "1%"}, "error_rate"),
        ({"metric": "error_rate", "max": "1%", "extra": 1}, "Extra inputs"),
    ],
)
def test_invalid_checks_say_what_is_wrong(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        CheckSpec.model_validate(raw)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"false_rollback_rate": "60%"}, "between 0 and 50 %"),
        ({"false_rollback_rate": 0}, "between 0 and 50 %"),
        ({"deadline": "soon"}, "not a duration"),
        ({"judge": "kayenta"}, "sequential"),
        ({"checks": []}, "at least 1"),
        ({"checks": [{"metric": "error_rate", "max": "1%"}, {"metric": "error_rate",
                                                              "max": 0.01}]}, "duplicate"),
    ],
)
def test_invalid_policies_say_what_is_wrong(change: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Policy.model_validate(DESIGN_EXAMPLE | change)


def test_gauge_and_count_checks_take_no_budget() -> None:
    policy = Policy.model_validate({
        "false_rollback_rate": "1%",
        "checks": [
            {"metric": "error_rate", "compare": "baseline", "max_ratio": 2},
            {"metric": "cpu_usage_percentage", "max": 90},
            {"metric": "request_count", "min": 100},
        ],
        "error_ceiling": None,
    })
    assert policy.statistical_checks == 1
    assert policy.alpha_per_check == pytest.approx(0.01)


def test_the_error_ceiling_takes_a_share_of_the_budget_unless_switched_off() -> None:
    checks = [{"metric": "error_rate", "compare": "baseline", "max_ratio": 2}]
    with_ceiling = Policy.model_validate({"checks": checks, "error_ceiling": "30%"})
    assert with_ceiling.error_ceiling == pytest.approx(0.3)
    assert with_ceiling.statistical_checks == 2
    without = Policy.model_validate({"checks": checks, "error_ceiling": None})
    assert without.statistical_checks == 1
    threshold = Policy.model_validate({"checks": checks, "judge": "threshold"})
    assert threshold.statistical_checks == 1  # the threshold judge has no ceiling


@pytest.mark.parametrize("bad", ["0%", "100%", "150%", "x"])
def test_an_error_ceiling_outside_0_and_100_percent_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=r"error_ceiling|rate"):
        Policy.model_validate({
            "checks": [{"metric": "error_rate", "max": "2%"}], "error_ceiling": bad,
        })


@pytest.mark.parametrize("path", sorted(POLICIES.glob("*.yaml")), ids=lambda p: p.stem)
def test_built_in_policies_validate_and_are_named_after_their_file(path: Path) -> None:
    policy = Policy.model_validate(yaml.safe_load(path.read_text()))
    assert policy.name == path.stem
    assert policy.description


def test_the_four_built_in_policies_exist() -> None:
    assert {p.stem for p in POLICIES.glob("*.yaml")} >= {
        "default", "strict", "latency-sensitive", "flagger-compatible"
    }
    default = Policy.model_validate(yaml.safe_load((POLICIES / "default.yaml").read_text()))
    assert default.judge == "sequential"
    error = next(c for c in default.checks if c.metric is Metric.ERROR_RATE)
    # A 2x regression on a 0.1 % baseline must be beyond the tolerance (ratio, not a margin).
    assert error.max_ratio is not None
    assert error.max_ratio <= 2.0
    assert error.max_increase is not None
    assert error.max_increase <= 0.001
