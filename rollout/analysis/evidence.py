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
