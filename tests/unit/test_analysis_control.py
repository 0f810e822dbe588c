"""A blue/green bake judged against the warm-up's control: the control's sampling error is
carried into the levels, so the bake keeps its error budgets however small the warm-up.

The simulations follow ``test_analysis_simulation``: budgets of 10 % so that a few hundred
seeded rollouts can see a breach, tolerance of three binomial standard errors.
"""

from __future__ import annotations

import math
import random

import pytest

from rollout.analysis import Look, Outcome, Policy, judge
from rollout.analysis.control import against_control
from rollout.analysis.evidence import rate_bounds, upper_deviation
from rollout.analysis.judge import JudgeState
from rollout.analysis.spec import CheckSpec, ControlCheck
from rollout.metrics.model import ArmTotals, EntityWindow, Histogram


def _binomial(rng: random.Random, n: int, p: float) -> int:
    return sum(rng.random() < p for _ in range(n))


def _tolerance(budget: float, runs: int) -> float:
    return budget + 3.0 * math.sqrt(budget * (1.0 - budget) / runs)


def _totals(requests: float, errors: float, histogram: Histogram | None = None) -> ArmTotals:
    totals = ArmTotals()
    totals.add(EntityWindow(None, 0, requests=requests, errors_5xx=errors, latency=histogram))
    return totals


def _policy(**overrides: object) -> Policy:
    return Policy.model_validate({
        "name": "bake", "min_requests": 0, "false_rollback_rate": 0.10,
        "missed_regression_rate": 0.10,
        "checks": [{"metric": "error_rate", "compare": "baseline", "max_ratio": 2}],
        # Binomial traffic, one window per look: what the control's levels are about.
        "window_cv": 0, "error_ceiling": None,
        **overrides,
    })


# ---- the bounds ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [10, 100, 5_000])
def test_with_no_events_the_upper_bound_is_the_exact_one(n: int) -> None:
    # kl(0, q) = -log(1 - q), so the Chernoff bound is 1 - delta**(1/n) exactly.
    lower, upper = rate_bounds(0, n, 0.05)
    assert lower == 0.0
    assert upper == pytest.approx(1.0 - 0.05 ** (1.0 / n), rel=1e-9)


def test_the_bounds_miss_the_true_rate_at_most_delta_each_side() -> None:
    rng, p, n, delta, runs = random.Random(3), 0.02, 400, 0.10, 2_000
    below = above = 0
    for _ in range(runs):
        lower, upper = rate_bounds(_binomial(rng, n, p), n, delta)
        below += upper < p
        above += lower > p
    assert below / runs <= _tolerance(delta, runs)
    assert above / runs <= _tolerance(delta, runs)
    # Not vacuous: the interval is informative at this size.
    assert rate_bounds(8, n, delta)[1] < 0.05


def test_the_upper_deviation_solves_the_chernoff_equation() -> None:
    t = upper_deviation(0.01, 1_000, 0.025)
    kl = t * math.log(t / 0.01) + (1 - t) * math.log((1 - t) / 0.99)
    assert 1_000 * kl == pytest.approx(math.log(40), rel=1e-6)
    assert upper_deviation(0.01, 100_000, 0.025) < t, "more draws, tighter"


# ---- the levels ---------------------------------------------------------------------------


def test_a_large_control_gives_levels_near_its_point_estimate() -> None:
    policy = against_control(_policy(), _totals(1_000_000, 10_000))
    (check,) = policy.checks
    assert isinstance(check, ControlCheck)
    assert check.fail_level == pytest.approx(0.01, rel=0.05)
    assert check.max_level == pytest.approx(0.02, rel=0.05)
    assert check.fail_level > 0.01
    assert check.max_level < 0.02


def test_a_small_control_widens_both_levels_apart() -> None:
    (check,) = against_control(_policy(), _totals(1_500, 15)).checks
    assert isinstance(check, ControlCheck)
    assert check.fail_level is not None
    assert check.fail_level > 0.015, "fails only well above the control's 1 %"
    assert check.max_level is not None
    assert check.max_level < 0.013, "passes only well below 2 x 1 %"
    assert "warm-up control" in check.describe()


def test_max_increase_lets_an_error_free_control_set_a_pass_level() -> None:
    policy = _policy(checks=[{"metric": "error_rate", "compare": "baseline", "max_ratio": 2,
                              "max_increase": "0.5%"}])
    (check,) = against_control(policy, _totals(5_000, 0)).checks
    assert isinstance(check, ControlCheck)
    assert check.max_level == pytest.approx(0.005)
    # Without an absolute tolerance an error-free control fixes nothing: the check stays
    # relative, and visibly inconclusive, instead of passing or failing on no information.
    (kept,) = against_control(_policy(), _totals(5_000, 0)).checks
    assert kept.compare == "baseline"


def test_the_threshold_judge_gets_the_plain_tolerance() -> None:
    (check,) = against_control(_policy(judge="threshold"), _totals(1_500, 15)).checks
    assert type(check) is CheckSpec
    assert check.max_level == pytest.approx(0.02)


def test_a_latency_level_needs_ten_control_observations_beyond_the_quantile() -> None:
    bounds = (50.0, 100.0, 200.0, 400.0, math.inf)
    policy = _policy(checks=[{"metric": "latency_p99_ms", "compare": "baseline",
                              "max_ratio": 1.25}])
    few = Histogram(bounds, (400.0, 90.0, 8.0, 2.0, 0.0))  # 500 requests: 5 beyond a p99
    (kept,) = against_control(policy, _totals(500, 0, few)).checks
    assert kept.compare == "baseline"
    many = Histogram(bounds, (80_000.0, 18_000.0, 1_600.0, 400.0, 0.0))
    (check,) = against_control(policy, _totals(100_000, 0, many)).checks
    assert isinstance(check, ControlCheck)
    p99 = many.quantile(0.99)
    assert p99 is not None
    assert check.max_level is not None
    assert check.max_level <= 1.25 * p99, "the tolerance on a lower bound of the control's p99"


# ---- the budgets, simulated ---------------------------------------------------------------


def _bake(policy: Policy, control: ArmTotals, rng: random.Random, rate: float) -> Outcome:
    """Up to 40 one-minute windows of 300 candidate requests at ``rate``; the first decision."""
    candidate = ArmTotals()
    state: JudgeState | None = None
    for minute in range(1, 41):
        candidate.add(EntityWindow(None, minute * 60_000, requests=300.0,
                                   errors_5xx=float(_binomial(rng, 300, rate))))
        verdict, state = judge(policy, Look(candidate, control), state)
        if verdict.outcome is not Outcome.INCONCLUSIVE:
            return verdict.outcome
    return Outcome.INCONCLUSIVE


def test_a_regression_at_the_tolerance_rarely_passes_after_a_small_warm_up() -> None:
    # The control's true rate is 1 %; the warm-up saw 1,500 requests. A candidate at 2 % is
    # at the tolerance (max_ratio 2): it must pass at most 10 % of the time.
    rng, runs, policy = random.Random(17), 250, _policy()
    bounded = plugin = 0
    for _ in range(runs):
        control = _totals(1_500, _binomial(rng, 1_500, 0.01))
        bounded += _bake(against_control(policy, control), control, rng, 0.02) is Outcome.PASS
        # What a level read off the control's point estimate would do on the same warm-up.
        point = 2.0 * control.errors_5xx / control.requests
        naive = policy.model_copy(update={"checks": (
            CheckSpec.model_validate({"metric": "error_rate", "max": point}),)})
        plugin += _bake(naive, control, rng, 0.02) is Outcome.PASS
    assert bounded / runs <= _tolerance(0.10, runs)
    assert plugin / runs > _tolerance(0.10, runs), "the point estimate breaks the budget"


def test_a_candidate_no_worse_than_the_control_rarely_fails_after_a_small_warm_up() -> None:
    rng, runs, policy = random.Random(23), 250, _policy()
    failed = 0
    for _ in range(runs):
        control = _totals(1_500, _binomial(rng, 1_500, 0.01))
        failed += _bake(against_control(policy, control), control, rng, 0.01) is Outcome.FAIL
    assert failed / runs <= _tolerance(0.10, runs)
