"""The arithmetic of evidence: likelihood-ratio factors that stay valid under any stopping rule.

Where this sits: ``rollout.analysis.sequential`` turns each look's new requests into these
factors and multiplies them into e-processes (non-negative supermartingales under the
hypothesis they test); Ville's inequality, P(sup_t M_t >= 1/a) <= a, then holds however often
the engine looks, whenever it stops, and across every step of a rollout. Pure math, stdlib only.

Two factors cover every statistical check.

* ``log_ratio_factor`` compares the arms on the same requests-in-time. Given a look's request
  counts ``n_c``, ``n_b`` and event counts ``s_c``, ``s_b`` (errors, or requests slower than a
  level), the factor for "the candidate's per-request event rate is ``rho`` times the
  baseline's" against "equal" is

      f(rho) = rho**s_c * (1 + (rho - 1) * share)**-(s_c + s_b),  share = n_c / (n_c + n_b)

  which is the conditional-binomial likelihood ratio: given the look's total events, the
  candidate's share of them is Binomial(total, rho*share / (rho*share + 1 - share)). The
  baseline's own rate is a nuisance that cancels, so a baseline that drifts over the day, or an
  upstream outage that hits both arms, leaves the test valid. Validity does not lean on a
  Poisson model: for independent requests whose event indicator X lies in [0, 1] (a histogram
  count interpolated inside a bucket is such a fraction) with means m_c, m_b,
  E[e^(theta X)] <= 1 + m (e^theta - 1) <= exp(m (e^theta - 1)) for every theta, so

      E f(rho) <= exp((rho - 1) / (1 + (rho - 1) share) * n_c n_b / (n_c + n_b) * (m_c - m_b))

  which is <= 1 whenever m_c <= m_b: a supermartingale under "no worse than the baseline", for
  any predictable rho > 1. The same bound with the exponent negated gives
  E[1 / f(rho)] <= 1 whenever m_c >= rho m_b: 1/f is an e-process against "worse by rho".

* ``log_binomial_factor`` holds one arm to a fixed level ``p0``: the factor for rate ``p``
  against ``p0``. By the same convexity step, E <= 1 per request when the true mean is <= p0
  (for p > p0) or >= p0 (for p < p0), so it is an e-process against the level from either side.

Mixtures of e-processes with fixed weights are e-processes; ``log_mean_exp`` forms them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def log_ratio_factor(s_c: float, n_c: float, s_b: float, n_b: float, rho: float) -> float:
    """log f(rho) for one look: candidate events/requests against the baseline's (see above)."""
    total = n_c + n_b
    if total <= 0.0 or rho == 1.0:
        return 0.0
    share = n_c / total
    events = max(0.0, s_c) + max(0.0, s_b)
    return max(0.0, s_c) * math.log(rho) - events * math.log1p((rho - 1.0) * share)


def log_binomial_factor(events: float, n: float, p: float, p0: float) -> float:
    """log of the likelihood ratio of rate ``p`` against ``p0`` for ``events`` out of ``n``."""
    if n <= 0.0 or p == p0:
        return 0.0
    events = min(max(0.0, events), n)
    return events * (math.log(p) - math.log(p0)) + (n - events) * (
        math.log1p(-p) - math.log1p(-p0)
    )


def odds_scaled(p: float, factor: float) -> float:
    """The rate whose odds are ``factor`` times those of ``p``: always strictly inside (0, 1)."""
    odds = p / (1.0 - p) * factor
    return odds / (1.0 + odds)


def log_mean_exp(logs: Sequence[float], weights: Sequence[float]) -> float:
    """log(sum_i w_i exp(l_i)) without overflow; the weights sum to 1."""
    top = max(logs)
    if math.isinf(top):
        return top
    return top + math.log(sum(w * math.exp(x - top) for x, w in zip(logs, weights, strict=True)))


def rate_upper(events: float, n: float) -> float:
    """A generous upper estimate of a rate from counts: (s + 1 + 2 sqrt(s + 1)) / n.

    The pass side plugs the baseline's rate into the alternative it guards; over-estimating
    the rate makes that alternative milder (closer to the null), which keeps the
    missed-regression bound on the safe side while the baseline has few events.
    """
    if n <= 0.0:
        return math.inf
    events = max(0.0, events)
    return min(1.0, (events + 1.0 + 2.0 * math.sqrt(events + 1.0)) / n)


def _kl(p: float, q: float) -> float:
    """Kullback-Leibler divergence of Bernoulli(p) from Bernoulli(q), for q strictly in (0, 1)."""
    total = 0.0
    if p > 0.0:
        total += p * math.log(p / q)
    if p < 1.0:
        total += (1.0 - p) * math.log((1.0 - p) / (1.0 - q))
    return total


def rate_bounds(events: float, n: float, delta: float) -> tuple[float, float]:
    """Chernoff confidence bounds on a rate from ``events`` out of ``n``: (lower, upper).

    Each side misses the true rate with probability at most ``delta``, at any ``n`` (the
    Chernoff-Hoeffding bound P(n kl(p_hat, p) >= log(1/delta), p_hat on one side) <= delta,
    so no normal approximation is involved; it holds for fractional counts of [0, 1] events
    too). With no requests the bounds are (0, 1).
    """
    if n <= 0.0:
        return 0.0, 1.0
    p_hat = min(max(events / n, 0.0), 1.0)
    budget = math.log(1.0 / delta) / n

    def kl_at(q: float) -> float:
        return math.inf if q <= 0.0 or q >= 1.0 else _kl(p_hat, q)

    # kl(p_hat, q) falls from the left end to 0 at p_hat and rises again to the right end;
    # each bound is where it crosses the budget. 100 halvings reach float precision.
    low, high = 0.0, p_hat
    for _ in range(100):
        middle = (low + high) / 2.0
        low, high = (middle, high) if kl_at(middle) > budget else (low, middle)
    lower = 0.0 if p_hat <= 0.0 else high
    low, high = p_hat, 1.0
    for _ in range(100):
        middle = (low + high) / 2.0
        low, high = (low, middle) if kl_at(middle) > budget else (middle, high)
    upper = 1.0 if p_hat >= 1.0 else low
    return lower, upper


def upper_deviation(p: float, n: float, delta: float) -> float:
    """The share t >= p that n draws at rate ``p`` exceed with probability at most ``delta``.

    Chernoff: P(p_hat >= t) <= exp(-n kl(t, p)); t solves n kl(t, p) = log(1/delta).
    """
    if n <= 0.0 or p >= 1.0:
        return 1.0
    budget = math.log(1.0 / delta) / n
    if p <= 0.0:
        return 0.0
    low, high = p, 1.0
    for _ in range(100):
        middle = (low + high) / 2.0
        low, high = (low, middle) if _kl(middle, p) > budget else (middle, high)
    return high


# ---------------------------------------------------------------- extra-binomial variation
#
# Real serving traffic is not a stream of independent requests: a replica's hiccup, a cold
# cache or a burst of one client's bad inputs moves a whole window's rate. Each look's log
# likelihood ratio is divided by the look's dispersion phi = 1 + kappa x m, where m is the
# look's binomial information about the log rate ratio (s x pi x (1 - pi) for the conditional
# test, n x p / (1 - p) for a one-sample one) and kappa the squared coefficient of variation
# of the rate from window to window (a multiplier with mean 1 and CV c gives kappa = c**2).
# For a Gaussian log-ratio statistic that is the quasi-likelihood correction: the tempered
# ratio has the expectation the plain one has under binomial noise. At low counts m is small
# and phi is close to 1 (binomial noise dominates, nothing is lost); at high counts the
# multiplier dominates and every look is worth what one noisy window is worth.

# Pearson residuals beyond this many times the dispersion the look was tempered with are cut
# when estimating kappa: one replica's hiccup must not make every later look worthless (its
# own look is bounded by the per-look cap instead), while steady heavy noise counts in full.
RESIDUAL_CAP = 25.0
# Prior weight (in units of m) that keeps kappa's estimate at the policy's floor until the
# data carry real information.
KAPPA_PRIOR_WEIGHT = 50.0


def share_under(n_c: float, n_b: float, theta: float) -> float:
    """The candidate's expected share of the look's events when its rate is ``theta`` times
    the baseline's."""
    weighted = n_c * theta
    total = weighted + n_b
    return weighted / total if total > 0.0 else 0.0


def conditional_information(s_c: float, n_c: float, s_b: float, n_b: float,
                            theta: float) -> float:
    """m = s x pi x (1 - pi): the conditional test's information about the log rate ratio."""
    pi = share_under(n_c, n_b, theta)
    return (max(0.0, s_c) + max(0.0, s_b)) * pi * (1.0 - pi)


def pearson_residual(
    s_c: float, n_c: float, s_b: float, n_b: float, theta: float, *, phi: float = 1.0
) -> float:
    """The squared Pearson residual of the candidate's share of the look's events, winsorized
    at ``RESIDUAL_CAP`` times ``phi`` (0 when the look has no information)."""
    pi = share_under(n_c, n_b, theta)
    events = max(0.0, s_c) + max(0.0, s_b)
    variance = events * pi * (1.0 - pi)
    if variance <= 0.0:
        return 0.0
    return min(RESIDUAL_CAP * max(1.0, phi), (max(0.0, s_c) - events * pi) ** 2 / variance)


def kappa_estimate(floor: float, excess: float, information: float) -> float:
    """kappa from the looks so far: sum(r^2 - 1) / (sum(m) + prior), never below ``floor``."""
    return max(floor, excess / (information + KAPPA_PRIOR_WEIGHT))


def temper(
    log_factor: float, phi: float, cap: float | None = None, floor: float | None = None
) -> float:
    """A look's log likelihood ratio divided by its dispersion, capped from above, floored.

    Tempering and the cap keep a ratio's expectation at most 1 under the null it was built
    for (Jensen for the power 1/phi <= 1, min(f, e^cap) <= f for the cap), so the product over
    looks stays an e-process; the cap makes sure no single look, however extreme, decides a
    rollback. The floor is for the pass side: one replica's bad minute must not wipe out an
    hour of good ones. It lifts only looks far from what a regression at the tolerance
    produces (their ratios are bounded by the floor), so its cost is measured, not proven:
    ``bench/decisions.py`` reports missed regressions per scenario.
    """
    tempered = log_factor / max(1.0, phi)
    if cap is not None:
        tempered = min(tempered, cap)
    if floor is not None:
        tempered = max(tempered, floor)
    return tempered
