"""The sequential judge, table-driven: every outcome, the data edge cases, state continuation.

The data are deterministic: each look adds one window whose counts are exactly the expected
ones (errors = requests x rate, histogram buckets = requests x bucket probability), so each
case's outcome follows from the design, not from a random draw.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any

import pytest

from rollout.analysis import (
    Look,
    Outcome,
    Policy,
    SequentialState,
    ThresholdState,
    Verdict,
    judge,
    state_from_dict,
)
from rollout.analysis.judge import JudgeState
from rollout.analysis.wording import metric_value, verdict_sentence
from rollout.metrics.model import ArmTotals, EntityWindow, Histogram

# Buckets 1.25x apart (from 10 ms), fine enough to resolve a 25 % change of p99.
BOUNDS = (*(10.0 * 1.25**k for k in range(30)), math.inf)


def lognormal(median: float, sigma: float = 0.5) -> tuple[float, ...]:
    """Bucket probabilities of a log-normal latency."""
    cdf = [NormalDist(math.log(median), sigma).cdf(math.log(b)) if math.isfinite(b) else 1.0
           for b in BOUNDS]
    return tuple(b - a for a, b in zip([0.0, *cdf[:-1]], cdf, strict=True))


FAST = lognormal(100.0)  # p99 ~ 320 ms
SLOW = lognormal(200.0)  # everything twice as slow

ERRORS = {"metric": "error_rate", "compare": "baseline", "max_ratio": 2,
          "max_increase": "0.05%"}
LATENCY = {"metric": "latency_p99_ms", "compare": "baseline", "max_ratio": 1.25}


def policy(*checks: dict[str, Any], **options: Any) -> Policy:
    return Policy.model_validate({"name": "test", "min_requests": 100,
                                  "checks": list(checks)} | options)


@dataclass
class Arm:
    """One arm's traffic per window."""

    requests: float
    error_rate: float = 0.01
    latency: Sequence[float] | None = FAST
    client_error_rate: float = 0.0
    cpu: float | None = None
    gpu: float | None = None
    inference: Sequence[float] | None = None
    missing: frozenset[str] = frozenset()

    def window(self, i: int) -> EntityWindow:
        hist = None
        if self.latency is not None and self.requests > 0:
            hist = Histogram(BOUNDS, tuple(self.requests * p for p in self.latency))
        return EntityWindow(
            entity=None, start_ms=i * 60_000, requests=self.requests,
            errors_5xx=self.requests * self.error_rate,
            errors_4xx=self.requests * self.client_error_rate,
            latency=hist, cpu_percent=self.cpu, missing=self.missing,
            gpu_percent=self.gpu,
            inference_latency=None if self.inference is None
            else Histogram(BOUNDS, tuple(self.requests * p for p in self.inference)),
        )


@dataclass
class Run:
    """Feeds windows to the judge the way the engine does (cumulative per split)."""

    policy: Policy
    state: JudgeState | None = None
    split: str = "0"
    windows: int = 0
    candidate: ArmTotals = field(default_factory=ArmTotals)
    baseline: ArmTotals = field(default_factory=ArmTotals)
    verdicts: list[Verdict] = field(default_factory=list)

    def look(self, cand: Arm, base: Arm, count: int = 1, *, final: bool = False) -> Verdict:
        for _ in range(count):
            self.windows += 1
            self.candidate.add(cand.window(self.windows))
            self.baseline.add(base.window(self.windows))
            verdict, self.state = judge(
                self.policy, Look(self.candidate, self.baseline, self.split, final), self.state
            )
            self.verdicts.append(verdict)
        return self.verdicts[-1]

    def next_split(self, split: str) -> None:
        self.split = split
        self.candidate, self.baseline = ArmTotals(), ArmTotals()


HEALTHY = (Arm(1_000), Arm(9_000))


@dataclass(frozen=True)
class Case:
    name: str
    checks: list[dict[str, Any]]
    cand: Arm
    base: Arm
    looks: int
    final: bool
    outcome: Outcome
    may_advance: bool


CASES = [
    Case("healthy, plenty of data", [ERRORS, LATENCY], Arm(1_000), Arm(9_000), 12, True,
        Outcome.PASS, True),
    # No single look decides, and each is tempered for per-window variation: five looks.
    Case("5x errors", [ERRORS, LATENCY], Arm(1_000, 0.05), Arm(9_000), 5, False,
        Outcome.FAIL, False),
    Case("2x slower", [ERRORS, LATENCY], Arm(1_000, latency=SLOW), Arm(9_000), 4, False,
        Outcome.FAIL, False),
    Case("little data, intermediate step", [ERRORS], Arm(120, 0.001), Arm(1_000, 0.001), 1,
        False, Outcome.INCONCLUSIVE, True),
    Case("little data, final step", [ERRORS], Arm(120, 0.001), Arm(1_000, 0.001), 1, True,
        Outcome.INCONCLUSIVE, False),
    Case("leaning bad, intermediate step", [ERRORS], Arm(200, 0.03), Arm(2_000), 1, False,
        Outcome.INCONCLUSIVE, False),
    Case("no errors anywhere, floor passes", [ERRORS], Arm(2_000, 0.0), Arm(2_000, 0.0), 5,
        True, Outcome.PASS, True),
    Case("no errors anywhere, a ratio alone cannot pass",
        [{"metric": "error_rate", "compare": "baseline", "max_ratio": 2}],
        Arm(2_000, 0.0), Arm(2_000, 0.0), 20, True, Outcome.INCONCLUSIVE, False),
    # Absolute checks: no single look decides, so three looks.
    Case("absolute SLO exceeded", [{"metric": "error_rate", "max": "2%"}], Arm(500, 0.10),
        Arm(0), 3, False, Outcome.FAIL, False),
    Case("absolute SLO met", [{"metric": "error_rate", "max": "2%"}], Arm(500, 0.001), Arm(0),
        2, True, Outcome.PASS, True),
    Case("absolute latency SLO exceeded", [{"metric": "latency_p99_ms", "max": 400}],
        Arm(1_000, latency=SLOW), Arm(0), 3, False, Outcome.FAIL, False),
    Case("absolute latency SLO met", [{"metric": "latency_p99_ms", "max": 500}],
        Arm(1_000), Arm(0), 3, True, Outcome.PASS, True),
    Case("zero requests", [ERRORS, LATENCY], Arm(0), Arm(0), 3, False,
        Outcome.INCONCLUSIVE, False),
    Case("below min_requests despite 50 % errors", [ERRORS], Arm(40, 0.5), Arm(400), 2,
        False, Outcome.INCONCLUSIVE, False),
    Case("4xx regression", [{"metric": "client_error_rate", "compare": "baseline",
                            "max_ratio": 2, "max_increase": "1%"}],
        Arm(1_000, client_error_rate=0.2), Arm(9_000, client_error_rate=0.02), 3, False,
        Outcome.FAIL, False),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_verdicts(case: Case) -> None:
    verdict = Run(policy(*case.checks)).look(case.cand, case.base, case.looks, final=case.final)
    assert (verdict.outcome, verdict.may_advance) == (case.outcome, case.may_advance), (
        verdict.reason
    )
    json.dumps(verdict.to_dict(), allow_nan=False)


def test_a_fail_explains_itself() -> None:
    verdict = Run(policy(ERRORS, LATENCY)).look(Arm(1_000, 0.05), Arm(9_000), 5)
    result = verdict.check("error_rate vs baseline: max_ratio 2, max_increase 0.05%")
    assert result.outcome is Outcome.FAIL
    assert result.candidate_value == pytest.approx(0.05)
    assert result.baseline_value == pytest.approx(0.01)
    assert (result.candidate_n, result.baseline_n) == (5_000, 45_000)
    assert result.statistic["fail"] >= result.boundary["fail"]
    # Two checks and the 5xx ceiling share the budget.
    assert result.boundary["fail"] == pytest.approx(math.log(3 / 0.01))
    assert result.boundary["pass"] == pytest.approx(math.log(1 / 0.05))
    assert result.detail["events_candidate"] == pytest.approx(250)
    assert result.detail["alternative_ratio"] == pytest.approx(2.0)
    assert "max(2x baseline, baseline + 0.05%)" in result.limit
    assert verdict.reason.startswith("fail: error_rate vs baseline")
    assert "candidate 5%" in verdict.reason
    assert "baseline 1%" in verdict.reason
    # The healthy latency check reports its own numbers alongside.
    latency = verdict.check("latency_p99_ms vs baseline: max_ratio 1.25")
    assert latency.outcome is not Outcome.FAIL
    assert latency.candidate_value == pytest.approx(latency.baseline_value or 0.0)


def test_below_min_requests_the_judge_waits_then_fails() -> None:
    run = Run(policy(ERRORS))
    early = run.look(Arm(40, 0.5), Arm(400), 2)
    assert early.outcome is Outcome.INCONCLUSIVE
    assert "below min_requests" in early.reason
    assert run.look(Arm(40, 0.5), Arm(400)).outcome is Outcome.FAIL  # 120 >= 100 requests


def test_a_fail_is_final() -> None:
    run = Run(policy(ERRORS))
    assert run.look(Arm(1_000, 0.05), Arm(9_000), 5).outcome is Outcome.FAIL
    after = run.look(Arm(1_000, 0.0), Arm(9_000), 30)
    assert after.outcome is Outcome.FAIL
    assert not after.may_advance


def test_missing_latency_holds_unless_skipped() -> None:
    no_hist = (Arm(1_000, latency=None), Arm(9_000, latency=None))
    held = Run(policy(ERRORS, LATENCY)).look(*no_hist, 12, final=True)
    assert held.outcome is Outcome.INCONCLUSIVE
    assert held.missing == ("latency_p99_ms vs baseline: max_ratio 1.25",)
    assert "no data" in held.reason
    assert not held.may_advance
    skipping = policy(ERRORS, LATENCY | {"on_missing": "skip"})
    passed = Run(skipping).look(*no_hist, 12, final=True)
    assert passed.outcome is Outcome.PASS, passed.reason
    assert passed.missing == ("latency_p99_ms vs baseline: max_ratio 1.25",)


def test_missing_error_series_is_not_zero_errors() -> None:
    lacking = frozenset({"errors_5xx"})
    run = Run(policy(ERRORS))
    verdict = run.look(Arm(1_000, 0.05, missing=lacking), Arm(9_000, missing=lacking), 5)
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert verdict.missing == (ERRORS_KEY,)
    assert verdict.check(ERRORS_KEY).detail["n_candidate"] == 0.0  # nothing scored


def test_a_window_without_errors_on_one_arm_is_not_scored() -> None:
    run = Run(policy(ERRORS))
    run.look(*HEALTHY)
    before = run.verdicts[-1].check(ERRORS_KEY).detail["n_candidate"]
    run.look(Arm(1_000), Arm(9_000, missing=frozenset({"errors_5xx"})))
    assert run.verdicts[-1].check(ERRORS_KEY).detail["n_candidate"] == before
    run.look(*HEALTHY)
    assert run.verdicts[-1].check(ERRORS_KEY).detail["n_candidate"] == float(before or 0) + 1_000


ERRORS_KEY = "error_rate vs baseline: max_ratio 2, max_increase 0.05%"


def test_evidence_carries_across_splits() -> None:
    run = Run(policy(ERRORS))
    run.look(Arm(300), Arm(5_700), 4)
    first = run.verdicts[-1].check(ERRORS_KEY).statistic["pass"]
    run.next_split("1")
    run.look(Arm(1_500), Arm(4_500))
    second = run.verdicts[-1].check(ERRORS_KEY)
    assert second.statistic["pass"] > first
    assert second.detail["n_candidate"] == pytest.approx(4 * 300 + 1_500)
    assert second.candidate_n == 1_500  # the value shown is the current split's


def test_looking_again_without_new_data_changes_nothing() -> None:
    run = Run(policy(ERRORS, LATENCY))
    first = run.look(*HEALTHY, 3)
    again, state = judge(run.policy, Look(run.candidate, run.baseline, run.split), run.state)
    assert again.checks == first.checks
    assert again.look == first.look
    assert isinstance(state, SequentialState)
    assert state.to_dict() == run.state.to_dict()  # type: ignore[union-attr]


def test_totals_going_backwards_are_re_anchored_not_scored() -> None:
    run = Run(policy(ERRORS))
    run.look(*HEALTHY, 3)
    shrunk_c, shrunk_b = ArmTotals(), ArmTotals()
    shrunk_c.add(Arm(1_000, 0.5).window(1))
    shrunk_b.add(Arm(9_000).window(1))
    verdict, _ = judge(run.policy, Look(shrunk_c, shrunk_b, run.split), run.state)
    assert "went backwards" in verdict.reason
    assert verdict.outcome is not Outcome.FAIL


def test_state_round_trip_continues_the_same_test() -> None:
    pol = policy(ERRORS, LATENCY)
    straight, restored = Run(pol), Run(pol)
    for run in (straight, restored):
        run.look(Arm(1_000, 0.012), Arm(9_000), 2)
    assert restored.state is not None
    text = json.dumps(restored.state.to_dict(), allow_nan=False)
    restored.state = state_from_dict(json.loads(text))
    for run in (straight, restored):
        run.next_split("1")
        run.look(Arm(3_000, 0.012, latency=SLOW), Arm(7_000), 2)
    assert straight.verdicts[-1] == restored.verdicts[-1]
    assert straight.state is not None
    assert restored.state is not None
    assert straight.state.to_dict() == restored.state.to_dict()


def test_the_callers_state_is_not_mutated() -> None:
    run = Run(policy(ERRORS, LATENCY))
    run.look(*HEALTHY, 2)
    assert run.state is not None
    snapshot = run.state.to_dict()
    more_c, more_b = ArmTotals(), ArmTotals()
    for i in range(4):
        more_c.add(Arm(1_000, 0.05).window(i))
        more_b.add(Arm(9_000).window(i))
    judge(run.policy, Look(more_c, more_b, run.split), run.state)
    assert run.state.to_dict() == snapshot


@pytest.mark.parametrize(
    ("values", "outcome"),
    [([95.0, 96.0, 97.0], Outcome.FAIL), ([50.0, 60.0, 55.0], Outcome.PASS),
     ([95.0], Outcome.INCONCLUSIVE), ([95.0, 50.0, 96.0], Outcome.INCONCLUSIVE)],
)
def test_gauge_checks_need_consecutive_windows(values: list[float], outcome: Outcome) -> None:
    run = Run(policy({"metric": "cpu_usage_percentage", "max": 90}))
    for cpu in values:
        verdict = run.look(Arm(1_000, cpu=cpu), Arm(9_000))
    assert verdict.outcome is outcome, verdict.reason


@pytest.mark.parametrize(
    ("values", "outcome"),
    [([95.0, 96.0, 97.0], Outcome.FAIL), ([50.0, 60.0, 55.0], Outcome.PASS)],
)
def test_gpu_usage_is_judged_as_a_level(values: list[float], outcome: Outcome) -> None:
    run = Run(policy({"metric": "gpu_usage_percentage", "max": "90%"}))
    for gpu in values:
        verdict = run.look(Arm(1_000, gpu=gpu), Arm(9_000, gpu=40.0))
    assert verdict.outcome is outcome, verdict.reason


def test_inference_latency_is_compared_with_the_baseline() -> None:
    check = {"metric": "inference_latency_p99_ms", "compare": "baseline", "max_ratio": 1.25}
    slow = Run(policy(check)).look(Arm(1_000, inference=SLOW), Arm(9_000, inference=FAST), 10)
    assert slow.outcome is Outcome.FAIL, slow.reason
    same = Run(policy(check)).look(Arm(1_000, inference=FAST), Arm(9_000, inference=FAST), 10)
    assert same.outcome is not Outcome.FAIL, same.reason
    absent = Run(policy(check)).look(*HEALTHY, 3)
    assert absent.outcome is Outcome.INCONCLUSIVE


def test_missing_gauge_is_inconclusive() -> None:
    verdict = Run(policy({"metric": "mem_usage_percentage", "max": 90})).look(*HEALTHY, 3)
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert verdict.missing == ("mem_usage_percentage max 90%",)


def test_request_count_is_a_gate_that_never_fails() -> None:
    run = Run(policy({"metric": "request_count", "min": 2_500}))
    assert run.look(*HEALTHY, 2).outcome is Outcome.INCONCLUSIVE
    assert run.look(*HEALTHY).outcome is Outcome.PASS


def test_advance_pass_policy_never_advances_on_inconclusive() -> None:
    lean = Run(policy(ERRORS)).look(Arm(120, 0.001), Arm(1_000, 0.001))
    strict = Run(policy(ERRORS, advance="pass")).look(Arm(120, 0.001), Arm(1_000, 0.001))
    assert lean.outcome is strict.outcome is Outcome.INCONCLUSIVE
    assert (lean.may_advance, strict.may_advance) == (True, False)


def test_a_check_added_mid_rollout_starts_fresh_and_says_so() -> None:
    run = Run(policy(ERRORS))
    run.look(*HEALTHY, 2)
    run.policy = policy(ERRORS, LATENCY)
    verdict = run.look(*HEALTHY)
    assert "new check 'latency_p99_ms vs baseline: max_ratio 1.25'" in verdict.reason


def test_a_state_of_the_other_judge_is_ignored_with_a_note() -> None:
    verdict, state = judge(policy(ERRORS), Look(ArmTotals(), ArmTotals()), ThresholdState())
    assert isinstance(state, SequentialState)
    assert "state of the threshold judge ignored" in verdict.reason


def test_latency_level_waits_for_enough_baseline_tail() -> None:
    run = Run(policy(LATENCY, min_requests=0))
    verdict = run.look(Arm(50, latency=SLOW), Arm(500))  # 500 baseline requests < 1000
    result = verdict.check("latency_p99_ms vs baseline: max_ratio 1.25")
    assert result.detail["level"] is None
    assert result.outcome is Outcome.INCONCLUSIVE
    run.look(Arm(50, latency=SLOW), Arm(500))  # 1000: the level is set for the next look
    later = run.look(Arm(50, latency=SLOW), Arm(500), 2)
    level = later.check("latency_p99_ms vs baseline: max_ratio 1.25").detail["level"]
    assert isinstance(level, float)
    # The bucket bound at or above 1.25 x a lower bound of the baseline's p99 (~320 ms):
    # counted exactly, never guessed inside a bucket.
    assert level in BOUNDS
    assert level >= 1.25 * 300.0
    assert level == min(b for b in BOUNDS if b >= 1.25 * 300.0)


def test_no_traffic_never_advances_even_without_min_requests() -> None:
    verdict = Run(policy(ERRORS, min_requests=0)).look(Arm(0), Arm(0), 3)
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert not verdict.may_advance


def test_a_verdict_reads_as_one_plain_sentence_first() -> None:
    verdict = Run(policy(ERRORS, LATENCY)).look(Arm(1_000, 0.05), Arm(9_000), 5).record()
    sentence = verdict_sentence(verdict)
    assert sentence == (
        "candidate 5xx rate 5 % vs baseline 1 % (limit max(2x baseline, baseline + 0.05%)) "
        "-> rolling back"
    ), sentence
    assert "e^" not in sentence
    assert "e^" not in verdict.reason  # the e-values moved to each check's detail
    errors = verdict.checks[0]
    assert str(errors.detail["e_values"]).startswith("e-values: fail e^")
    fail, fail_at = errors.statistic["fail"], errors.boundary["fail"]
    assert isinstance(fail, float)
    assert isinstance(fail_at, float)
    assert fail >= fail_at
    waiting = Run(policy(ERRORS, LATENCY)).look(Arm(1_000), Arm(9_000), 1).record()
    said = verdict_sentence(waiting)
    assert said.endswith("-> hold for more data"), said
    assert "inconclusive" not in said


@pytest.mark.parametrize(("metric", "value", "text"), [
    ("error_rate", 0.0055, "0.55 %"), ("error_rate", 0.0, "0 %"),
    ("latency_p99_ms", 227.5, "228 ms"), ("cpu_usage_percentage", 41.0, "41 %"),
    ("request_count", 81234.0, "81,234"), ("latency_p99_ms", None, "n/a"),
])
def test_values_carry_their_units(metric: str, value: float | None, text: str) -> None:
    assert metric_value(metric, value) == text
