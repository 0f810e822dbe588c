"""The sequential judge on traffic that is not a stream of independent requests.

Seeded simulations (standard library only, a few seconds) and hand-made evidence: candidate-
only per-window variation is tempered, latency is judged at bucket resolution, conflicting
evidence holds, and a pass needs the pooled numbers. Budgets are larger than the built-in
policies' so that a few hundred rollouts can see a breach; the full grid is
``python -m bench.decisions``.
"""

from __future__ import annotations

import math
import random

import pytest

from rollout.analysis import Look, Outcome, Policy, judge
from rollout.analysis.evidence import conditional_information, log_ratio_factor
from rollout.analysis.judge import JudgeState
from rollout.analysis.sequential import (
    FAIL_EXPONENTS,
    LOOK_CAP_SHARE,
    CheckEvidence,
    SequentialState,
    bucket_level,
    judge_sequential,
)
from rollout.metrics.model import ArmTotals, EntityWindow, Histogram

# Databricks' exported latency bounds (ms), the part serving latencies live in.
BOUNDS = (5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, math.inf)
ERRORS = {"metric": "error_rate", "compare": "baseline", "max_ratio": 2}
P99 = {"metric": "latency_p99_ms", "compare": "baseline", "max_ratio": 1.25}


def _policy(*checks: dict[str, object], **options: object) -> Policy:
    return Policy.model_validate({"name": "sim", "min_requests": 50,
                                  "false_rollback_rate": 0.10, "missed_regression_rate": 0.10,
                                  "error_ceiling": None, "checks": list(checks)} | options)


def _tolerance(budget: float, runs: int) -> float:
    return budget + 3.0 * math.sqrt(budget * (1.0 - budget) / runs)


def _poisson(rng: random.Random, mean: float) -> int:
    if mean > 50:
        return max(0, round(rng.gauss(mean, math.sqrt(mean))))
    limit, k, product = math.exp(-mean), 0, rng.random()
    while product > limit:
        k += 1
        product *= rng.random()
    return k


def _noisy_rollout(policy: Policy, rng: random.Random, cv: float) -> tuple[bool, bool, float]:
    """A healthy candidate whose per-window 5xx rate alone varies (gamma, mean 1, CV ``cv``)
    at 1000 req/s on a 5/25/50 % canary of 10 windows each. Returns (the judge rolled back,
    plain binomial likelihood-ratio evidence would have, the judge's kappa at the end)."""
    state: JudgeState | None = None
    shape = 1.0 / cv**2
    plain, plain_failed = 0.0, False
    for split, weight in enumerate((0.05, 0.25, 0.50)):
        cand, base = ArmTotals(), ArmTotals()
        for minute in range(10):
            n_c, n_b = 60_000 * weight, 60_000 * (1 - weight)
            multiplier = rng.gammavariate(shape, 1.0 / shape)
            s_c, s_b = _poisson(rng, n_c * 0.01 * multiplier), _poisson(rng, n_b * 0.01)
            start = (split * 10 + minute) * 60_000
            cand.add(EntityWindow(None, start, requests=n_c, errors_5xx=s_c))
            base.add(EntityWindow(None, start, requests=n_b, errors_5xx=s_b))
            plain += log_ratio_factor(s_c, n_c, s_b, n_b, 2.0)
            plain_failed = plain_failed or plain >= math.log(1.0 / policy.alpha_per_check)
            verdict, state = judge(policy, Look(cand, base, str(split)), state)
            if verdict.outcome is Outcome.FAIL:
                return True, plain_failed, 0.0
    assert isinstance(state, SequentialState)
    return False, plain_failed, state.checks[0].kappa or 0.0


@pytest.mark.parametrize("cv", [0.5, 1.0])
def test_candidate_only_variation_is_tempered_where_binomial_evidence_breaks(cv: float) -> None:
    runs = 120
    rng = random.Random(11)
    outcomes = [_noisy_rollout(_policy(ERRORS), rng, cv) for _ in range(runs)]
    assert sum(judged for judged, _, _ in outcomes) / runs <= _tolerance(0.10, runs)
    assert sum(plain for _, plain, _ in outcomes) / runs > 0.2, (
        "evidence that takes windows as binomial breaks the budget twice over"
    )
    # The dispersion the judge ends with is the variation it was given (kappa = CV^2), or
    # the policy's floor (0.5^2) when that is larger.
    kappas = sorted(kappa for judged, _, kappa in outcomes if not judged)
    assert kappas[len(kappas) // 2] == pytest.approx(max(0.25, cv**2), rel=0.5)


def _lognormal_hist(n: float, p50: float, p99: float) -> Histogram:
    sigma = math.log(p99 / p50) / 2.3263478740408408
    cdf = [0.5 * math.erfc(-(math.log(b) - math.log(p50)) / (sigma * math.sqrt(2)))
           if math.isfinite(b) else 1.0 for b in BOUNDS]
    counts = [n * (c - p) for c, p in zip(cdf, [0.0, *cdf[:-1]], strict=True)]
    return Histogram(BOUNDS, tuple(counts))


def _latency_rollout(cand: tuple[float, float], base: tuple[float, float],
                     windows: int = 30) -> Outcome:
    policy, state = _policy(P99), None
    arm_c, arm_b = ArmTotals(), ArmTotals()
    verdict = None
    for minute in range(windows):
        arm_c.add(EntityWindow(None, minute * 60_000, requests=3000.0,
                               latency=_lognormal_hist(3000.0, *cand)))
        arm_b.add(EntityWindow(None, minute * 60_000, requests=3000.0,
                               latency=_lognormal_hist(3000.0, *base)))
        verdict, state = judge(policy, Look(arm_c, arm_b, "0", final=True), state)
        if verdict.outcome is not Outcome.INCONCLUSIVE:
            break
    assert verdict is not None
    return verdict.outcome


@pytest.mark.parametrize(
    ("name", "candidate", "baseline", "outcome"),
    [
        ("p99 exactly on a bound", (40.0, 100.0), (40.0, 100.0), Outcome.PASS),
        ("p99 just below a bound", (40.0, 95.0), (40.0, 95.0), Outcome.PASS),
        ("p99 just above a bound", (40.0, 105.0), (40.0, 105.0), Outcome.PASS),
        ("same p99, slower median, tighter tail", (150.0, 300.0), (100.0, 300.0),
         Outcome.PASS),
        ("p99 twice the baseline's", (40.0, 240.0), (40.0, 120.0), Outcome.FAIL),
    ],
)
def test_latency_is_judged_at_the_resolution_of_the_buckets(
    name: str, candidate: tuple[float, float], baseline: tuple[float, float], outcome: Outcome
) -> None:
    assert _latency_rollout(candidate, baseline) is outcome, name


def test_the_level_is_a_bucket_bound_at_or_beyond_the_target() -> None:
    hist = Histogram(BOUNDS, (0.0,) * len(BOUNDS))
    assert bucket_level(hist, 125.0) == 250.0
    assert bucket_level(hist, 250.0) == 250.0
    assert bucket_level(hist, 3000.0) is None  # beyond the last finite bound


def _crossed_state(policy: Policy, fail: float, pass_ratio: float) -> SequentialState:
    check = CheckEvidence.fresh(policy.checks[0])
    check.fail = [fail] * len(check.fail)
    check.pass_ratio = pass_ratio
    check.pass_level = [pass_ratio] * len(check.pass_level)
    check.rho = 2.0
    return SequentialState(split="0", looks=5, checks=[check])


def test_a_look_where_both_boundaries_are_crossed_holds_and_says_so() -> None:
    policy = _policy({"metric": "error_rate", "compare": "baseline", "max_ratio": 2,
                      "max_increase": "1%"})
    totals = ArmTotals(windows=5, requests=5000.0, errors_5xx=5.0)
    state = _crossed_state(policy, fail=10.0, pass_ratio=10.0)
    state.seen_c = state.seen_b = type(state.seen_c).of(totals)
    verdict, after = judge_sequential(policy, totals, totals, state, split="0", final=True)
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert "both the fail and the pass boundary are crossed" in verdict.reason
    assert not after.failed


def test_a_pass_needs_the_pooled_ratio_confidently_within_the_tolerance() -> None:
    # Window by window the evidence says "within tolerance", but the pooled ratio is 1.9x:
    # the pass is held and the verdict says why.
    policy = _policy(ERRORS)
    state = _crossed_state(policy, fail=-5.0, pass_ratio=10.0)
    check = state.checks[0]
    check.events_c, check.n_c = 190.0, 10_000.0
    check.events_b, check.n_b = 900.0, 90_000.0
    # Pooled within windows: sum s_c n_b / N against sum s_b n_c / N, and the information.
    check.mh_num, check.mh_den = 190.0 * 0.9, 900.0 * 0.1
    check.disp_info = 1090.0 * 0.1 * 0.9
    totals = ArmTotals(windows=5, requests=10_000.0, errors_5xx=190.0)
    base = ArmTotals(windows=5, requests=90_000.0, errors_5xx=900.0)
    state.seen_c, state.seen_b = type(state.seen_c).of(totals), type(state.seen_b).of(base)
    verdict, _ = judge_sequential(policy, totals, base, state, split="0", final=True)
    assert verdict.outcome is Outcome.INCONCLUSIVE
    assert "pass held: the pooled rate ratio 1.9" in verdict.reason
    # The same evidence with a pooled ratio of 1 passes.
    check.events_c, check.mh_num = 100.0, 100.0 * 0.9
    state.seen_c = type(state.seen_c).of(ArmTotals(windows=5, requests=10_000.0,
                                                     errors_5xx=100.0))
    calm = ArmTotals(windows=5, requests=10_000.0, errors_5xx=100.0)
    passed, _ = judge_sequential(policy, calm, base, state, split="0", final=True)
    assert passed.outcome is Outcome.PASS, passed.reason


@pytest.mark.parametrize("errors", [60.0, 66.0], ids=["2x", "2.2x"])
def test_the_fail_side_is_tempered_with_the_dispersion_its_null_gives(errors: float) -> None:
    # A regression at 1000 req/s on a 5 % canary, below the per-window cap. The fail side
    # tests "no worse than the baseline": under that null the candidate's share of the
    # events is its share of the requests, and that share sets the look's dispersion.
    # Tempering with the share the fitted ratio gives (the candidate's 2x or 2.2x) would
    # divide the evidence by a dispersion the null never has, and a noisy regression would
    # wait windows for it.
    policy = _policy(ERRORS, false_rollback_rate=0.01)
    look = (errors, 3000.0, 570.0, 57000.0)
    state: JudgeState | None = None
    fails = []
    for minute in (1, 2):  # the second minute is tempered with the ratio the first fitted
        cand = ArmTotals(windows=minute, requests=minute * look[1], errors_5xx=minute * look[0])
        base = ArmTotals(windows=minute, requests=minute * look[3], errors_5xx=minute * look[2])
        _, state = judge(policy, Look(cand, base, "0"), state)
        assert isinstance(state, SequentialState)
        fails.append(list(state.checks[0].fail))
    kappa = policy.window_cv**2
    assert state.checks[0].kappa == pytest.approx(kappa)
    cap = LOOK_CAP_SHARE * math.log(1.0 / policy.alpha_per_check)
    at_null = 1.0 + kappa * conditional_information(*look, 1.0)
    fitted = ((errors + 0.5) / 3000.0) / (570.5 / 57000.0)
    at_fit = 1.0 + kappa * conditional_information(*look, fitted)
    expected = [min(cap, log_ratio_factor(*look, 2.0**g) / at_null) for g in FAIL_EXPONENTS]
    second = [after - before for before, after in zip(*fails, strict=True)]
    assert second == pytest.approx(expected)
    uncapped = [i for i, value in enumerate(expected) if 0.0 < value < cap]
    assert uncapped, "at least one alternative is judged below the cap"
    for i in uncapped:
        assert expected[i] > 1.5 * log_ratio_factor(*look, 2.0 ** FAIL_EXPONENTS[i]) / at_fit


def test_the_cap_loosens_where_dispersion_dominates_yet_three_windows_still_decide() -> None:
    # A 5x regression on a 25 % canary at 1000 req/s: each minute's events are so many that
    # the dispersion (kappa x m = 56) decides what the minute is worth, and the cap loosens
    # from 40 % of the way to the boundary towards 50 %. Two minutes never reach it.
    policy = _policy(ERRORS, false_rollback_rate=0.01)
    boundary = math.log(1.0 / policy.alpha_per_check)
    state: JudgeState | None = None
    outcomes, steps = [], []
    for minute in (1, 2, 3):
        cand = ArmTotals(windows=minute, requests=minute * 15000.0, errors_5xx=minute * 750.0)
        base = ArmTotals(windows=minute, requests=minute * 45000.0, errors_5xx=minute * 450.0)
        before = max(state.checks[0].fail) if isinstance(state, SequentialState) else 0.0
        verdict, state = judge(policy, Look(cand, base, "0"), state)
        assert isinstance(state, SequentialState)
        outcomes.append(verdict.outcome)
        steps.append(max(state.checks[0].fail) - before)
    assert outcomes == [Outcome.INCONCLUSIVE, Outcome.INCONCLUSIVE, Outcome.FAIL]
    assert LOOK_CAP_SHARE * boundary < steps[0] < 0.5 * boundary
    # Few events (one replica's bad minute at low traffic): the cap stays where it was.
    few = ArmTotals(windows=1, requests=300.0, errors_5xx=30.0)
    _, low = judge(policy, Look(few, ArmTotals(windows=1, requests=5700.0, errors_5xx=57.0),
                                "0"), None)
    assert isinstance(low, SequentialState)
    assert max(low.checks[0].fail) == pytest.approx(LOOK_CAP_SHARE * boundary)
