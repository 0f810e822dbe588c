"""The e-value factors are supermartingale increments under the hypotheses they test.

For Bernoulli requests the expectations have closed forms, so the property "E[factor] <= 1
under the null" is checked exactly (not by simulation) over a wide range of inputs.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.analysis.evidence import (
    log_binomial_factor,
    log_mean_exp,
    log_ratio_factor,
    odds_scaled,
    rate_upper,
)

rates = st.floats(min_value=1e-5, max_value=0.5)
counts = st.integers(min_value=1, max_value=200_000)
ratios = st.floats(min_value=1.01, max_value=50.0)


def _expected_ratio_factor(n_c: int, n_b: int, p_c: float, p_b: float, *, rho: float,
                           inverse: bool = False) -> float:
    """E[f(rho)] (or E[1/f]) for independent Binomial(n_c, p_c), Binomial(n_b, p_b) events."""
    share = n_c / (n_c + n_b)
    c = 1.0 / (1.0 + (rho - 1.0) * share)  # f = rho**s_c * c**(s_c + s_b)
    a_c, a_b = (rho * c, c) if not inverse else (1.0 / (rho * c), 1.0 / c)
    return math.exp(n_c * math.log1p(p_c * (a_c - 1.0)) + n_b * math.log1p(p_b * (a_b - 1.0)))


@settings(max_examples=300, deadline=None)
@given(n_c=counts, n_b=counts, p=rates, rho=ratios, better=st.floats(0.0, 1.0))
def test_ratio_factor_is_an_e_value_when_the_candidate_is_no_worse(
    n_c: int, n_b: int, p: float, rho: float, better: float
) -> None:
    assert _expected_ratio_factor(n_c, n_b, p * better, p, rho=rho) <= 1.0 + 1e-9


@settings(max_examples=300, deadline=None)
@given(n_c=counts, n_b=counts, p=st.floats(1e-5, 0.02), rho=ratios, worse=st.floats(1.0, 3.0))
def test_inverse_ratio_factor_is_an_e_value_when_the_candidate_is_worse_by_rho(
    n_c: int, n_b: int, p: float, rho: float, worse: float
) -> None:
    p_c = min(0.999, p * rho * worse)
    assert _expected_ratio_factor(n_c, n_b, p_c, p, rho=rho, inverse=True) <= 1.0 + 1e-9


@settings(max_examples=300, deadline=None)
@given(n=counts, p0=st.floats(1e-4, 0.5), factor=st.floats(1.05, 20.0), at=st.floats(0.0, 1.0))
def test_binomial_factor_is_an_e_value_on_either_side_of_the_level(
    n: int, p0: float, factor: float, at: float
) -> None:
    for p, mean in ((odds_scaled(p0, factor), p0 * at),  # fail side: true rate <= level
                    (odds_scaled(p0, 1 / factor), p0 + (1 - p0) * at)):  # pass side: >= level
        per_request = (1 - mean) * (1 - p) / (1 - p0) + mean * p / p0
        assert n * math.log(per_request) <= 1e-9


def test_ratio_factor_matches_the_conditional_binomial_likelihood_ratio() -> None:
    s_c, n_c, s_b, n_b, rho = 7.0, 1_000.0, 40.0, 9_000.0, 2.0
    pi0 = n_c / (n_c + n_b)
    pi1 = rho * n_c / (rho * n_c + n_b)
    direct = s_c * math.log(pi1 / pi0) + s_b * math.log((1 - pi1) / (1 - pi0))
    assert log_ratio_factor(s_c, n_c, s_b, n_b, rho) == pytest.approx(direct)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((0.0, 100.0, 0.0, 900.0, 3.0), 0.0),  # no events: no evidence either way
        ((5.0, 0.0, 5.0, 0.0, 3.0), 0.0),  # no requests
        ((3.0, 100.0, 0.0, 0.0, 3.0), 0.0),  # baseline silent: nothing to compare with
        ((3.0, 100.0, 30.0, 900.0, 1.0), 0.0),  # rho = 1 is the null itself
    ],
)
def test_ratio_factor_without_information_is_zero(args: tuple[float, ...],
                                                  expected: float) -> None:
    assert log_ratio_factor(*args) == pytest.approx(expected, abs=1e-12)


def test_binomial_factor_clamps_interpolated_counts() -> None:
    assert log_binomial_factor(12.0, 10.0, 0.2, 0.1) == log_binomial_factor(10.0, 10.0, 0.2, 0.1)
    assert log_binomial_factor(1.0, 0.0, 0.2, 0.1) == 0.0


def test_log_mean_exp_is_stable() -> None:
    assert log_mean_exp([1000.0, 1000.0], [0.5, 0.5]) == pytest.approx(1000.0)
    assert log_mean_exp([-1000.0, 0.0], [0.5, 0.5]) == pytest.approx(math.log(0.5))
    assert log_mean_exp([-math.inf, -math.inf], [0.5, 0.5]) == -math.inf


def test_rate_upper_is_generous_and_finite_only_with_requests() -> None:
    assert rate_upper(0.0, 0.0) == math.inf
    assert rate_upper(10.0, 1000.0) > 0.01
    assert rate_upper(1e6, 1e6) == 1.0
    assert rate_upper(100.0, 100_000.0) == pytest.approx((101 + 2 * math.sqrt(101)) / 1e5)
