"""The threshold (Flagger-style) judge: intervals, the failure counter, no data, state."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import pytest

from rollout.analysis import Look, Outcome, Policy, ThresholdState, Verdict, judge
from rollout.analysis.judge import JudgeState, state_from_dict
from rollout.metrics.model import ArmTotals, EntityWindow, Histogram

BOUNDS = (100.0, 250.0, 500.0, 1000.0, math.inf)
FAST = (0.5, 0.4, 0.095, 0.005, 0.0)  # p99 in (250, 500]
SLOW = (0.1, 0.3, 0.3, 0.2, 0.1)  # p99 beyond 1000

FLAGGER = {
    "name": "flagger-like",
    "judge": "threshold",
    "min_requests": 0,
    "failure_threshold": 3,
    "checks": [{"metric": "error_rate", "max": "1%"}, {"metric": "latency_p99_ms", "max": 500}],
}


def policy(**change: Any) -> Policy:
    return Policy.model_validate(FLAGGER | change)


@dataclass
class Run:
    policy: Policy
    state: JudgeState | None = None
    split: str = "0"
    minute: int = 0
    candidate: ArmTotals = field(default_factory=ArmTotals)
    baseline: ArmTotals = field(default_factory=ArmTotals)

    def look(self, requests: float, error_rate: float = 0.0, latency: tuple[float, ...] = FAST,
             *, base_requests: float = 1_000.0, base_error_rate: float = 0.0) -> Verdict:
        self.minute += 1
        for arm, n, rate in ((self.candidate, requests, error_rate),
                             (self.baseline, base_requests, base_error_rate)):
            hist = Histogram(BOUNDS, tuple(n * p for p in latency)) if n > 0 else None
            arm.add(EntityWindow(None, self.minute * 60_000, requests=n, errors_5xx=n * rate,
                                 latency=hist))
        verdict, self.state = judge(self.policy, Look(self.candidate, self.baseline, self.split),
                                    self.state)
        return verdict


@pytest.mark.parametrize(
    ("intervals", "outcomes", "failures"),
    [
        # (candidate requests, error rate, latency) per interval
        ([(100, 0.0, FAST)], ["pass"], 0),
        ([(100, 0.05, FAST)], ["inconclusive"], 1),
        ([(100, 0.05, FAST)] * 3, ["inconclusive", "inconclusive", "fail"], 3),
        ([(100, 0.0, SLOW)] * 3, ["inconclusive", "inconclusive", "fail"], 3),
        # Passing intervals do not reset the counter (as in Flagger).
        ([(100, 0.05, FAST), (100, 0.0, FAST), (100, 0.05, FAST), (100, 0.0, FAST),
          (100, 0.05, FAST)], ["inconclusive", "pass", "inconclusive", "pass", "fail"], 3),
        # No traffic: Flagger would count three failed checks and roll back; we hold.
        ([(0, 0.0, FAST)] * 3, ["inconclusive"] * 3, 0),
    ],
)
def test_intervals_and_the_failure_counter(
    intervals: list[tuple[float, float, tuple[float, ...]]], outcomes: list[str], failures: int
) -> None:
    run = Run(policy())
    seen = [str(run.look(n, rate, lat).outcome) for n, rate, lat in intervals]
    assert seen == outcomes
    assert isinstance(run.state, ThresholdState)
    assert run.state.failures == failures


def test_no_data_is_explained_and_does_not_advance() -> None:
    verdict = Run(policy()).look(0)
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert not verdict.may_advance
    assert "not counted as a failure" in verdict.reason
    assert set(verdict.missing) == {"error_rate max 1%", "latency_p99_ms max 500ms"}


def test_each_interval_is_judged_alone() -> None:
    run = Run(policy())
    run.look(10_000, 0.0)
    # 100 failing requests after 10 000 good ones: cumulatively 0.98 %, in the interval 100 %.
    verdict = run.look(100, 1.0)
    error = verdict.check("error_rate max 1%")
    assert error.outcome is Outcome.FAIL
    assert error.candidate_value == pytest.approx(1.0)
    assert error.candidate_n == 100


def test_interval_latency_comes_from_the_difference_of_histograms() -> None:
    run = Run(policy())
    run.look(10_000, latency=FAST)
    verdict = run.look(100, latency=SLOW)
    latency = verdict.check("latency_p99_ms max 500ms")
    assert latency.outcome is Outcome.FAIL
    assert latency.candidate_value is not None
    assert latency.candidate_value >= 1000.0  # beyond the last finite bucket
    assert latency.candidate_n == pytest.approx(100)


def test_relative_checks_compare_the_intervals_values() -> None:
    pol = policy(checks=[{"metric": "error_rate", "compare": "baseline", "max_ratio": 2,
                          "max_increase": "0.5%"}])
    ok = Run(pol).look(1_000, 0.02, base_error_rate=0.012)  # within 2x
    assert ok.outcome is Outcome.PASS
    bad = Run(pol).look(1_000, 0.05, base_error_rate=0.012)  # beyond 2x and + 0.5 points
    assert bad.outcome is Outcome.INCONCLUSIVE
    assert bad.checks[0].outcome is Outcome.FAIL
    assert bad.checks[0].boundary["threshold"] == pytest.approx(0.024)


def test_min_requests_gates_the_intervals() -> None:
    run = Run(policy(min_requests=150))
    first = run.look(100, 0.5)
    assert first.outcome is Outcome.INCONCLUSIVE
    assert "below min_requests" in first.reason
    assert isinstance(run.state, ThresholdState)
    assert run.state.failures == 0
    run.look(100, 0.5)
    assert run.state.failures == 1


def test_looking_without_a_new_window_repeats_the_last_verdict() -> None:
    run = Run(policy())
    first = run.look(100, 0.05)
    again, state = judge(run.policy, Look(run.candidate, run.baseline, run.split), run.state)
    assert isinstance(state, ThresholdState)
    assert state.failures == 1
    assert again.checks == first.checks
    assert again.outcome is first.outcome


def test_state_round_trip_and_split_change() -> None:
    run = Run(policy())
    run.look(100, 0.05)
    run.look(100, 0.05)
    assert run.state is not None
    restored = state_from_dict(json.loads(json.dumps(run.state.to_dict(), allow_nan=False)))
    assert isinstance(restored, ThresholdState)
    assert restored.to_dict() == run.state.to_dict()
    run.state = restored
    run.split, run.candidate, run.baseline = "1", ArmTotals(), ArmTotals()
    verdict = run.look(100, 0.05)
    assert verdict.outcome is Outcome.FAIL  # the counter carried over the split change
    assert verdict.reason.startswith("fail: 3/3 failed intervals")
    json.dumps(verdict.to_dict(), allow_nan=False)
