"""The A/B report: each metric for both arms with a confidence interval, and the winner.

Where this sits: when an ``ab`` plan's split has run for its ``duration`` the engine calls
``ab_report`` once with the per-arm sums over the whole split and the guards' last verdict.
The split length is fixed in advance and the report is computed once, so plain fixed-horizon
95 % intervals are valid here (no peeking); the guards watched during the split are the
sequential judge's business. Pure.

The candidate wins only if it is better on the objective with the whole interval on the
better side, and no guard failed or leaned towards a regression.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Any, Literal

from rollout.analysis.spec import Metric
from rollout.analysis.verdict import Outcome, VerdictRecord
from rollout.analysis.wording import metric_name, metric_value
from rollout.metrics.model import ArmTotals, Histogram

Z95 = NormalDist().inv_cdf(0.975)

_RATES = {
    Metric.ERROR_RATE.value: "errors_5xx",
    Metric.CLIENT_ERROR_RATE.value: "errors_4xx",
}
_QUANTILES = {
    Metric.LATENCY_P50.value: 0.50,
    Metric.LATENCY_P90.value: 0.90,
    Metric.LATENCY_P99.value: 0.99,
}
# What an A/B report can compare with an interval: a plan's objective must be one of these.
OBJECTIVES = (*_RATES, *_QUANTILES)


def _rate_row(name: str, candidate: ArmTotals, baseline: ArmTotals) -> dict[str, Any]:
    source = _RATES[name]
    n_c, n_b = candidate.requests, baseline.requests
    e_c, e_b = float(getattr(candidate, source)), float(getattr(baseline, source))
    if n_c <= 0 or n_b <= 0:
        return {
            "metric": name,
            "candidate": None,
            "baseline": None,
            "difference": None,
            "ci95": None,
            "candidate_n": n_c,
            "baseline_n": n_b,
        }
    p_c, p_b = e_c / n_c, e_b / n_b
    # Agresti-Caffo: add one success and one failure per arm; keeps the interval honest when
    # one arm has no errors at all.
    a_c, a_b = (e_c + 1) / (n_c + 2), (e_b + 1) / (n_b + 2)
    se = math.sqrt(a_c * (1 - a_c) / (n_c + 2) + a_b * (1 - a_b) / (n_b + 2))
    diff = a_c - a_b
    return {
        "metric": name,
        "candidate": p_c,
        "baseline": p_b,
        "difference": p_c - p_b,
        "ci95": [diff - Z95 * se, diff + Z95 * se],
        "candidate_n": n_c,
        "baseline_n": n_b,
    }


def _quantile_interval(hist: Histogram, q: float) -> tuple[float, float, float] | None:
    """The q-quantile and a 95 % interval from the ranks a binomial allows around n*q."""
    n = hist.total
    if n <= 0:
        return None
    spread = Z95 * math.sqrt(n * q * (1 - q))
    low_q = max(0.0, (n * q - spread) / n)
    high_q = min(1.0, (n * q + spread + 1) / n)
    value, low, high = hist.quantile(q), hist.quantile(low_q), hist.quantile(high_q)
    if value is None or low is None or high is None:
        return None
    return value, low, high


def _quantile_row(name: str, candidate: ArmTotals, baseline: ArmTotals) -> dict[str, Any]:
    q = _QUANTILES[name]
    c = _quantile_interval(candidate.latency, q) if candidate.latency else None
    b = _quantile_interval(baseline.latency, q) if baseline.latency else None
    row: dict[str, Any] = {
        "metric": name,
        "candidate": None if c is None else c[0],
        "baseline": None if b is None else b[0],
        "candidate_n": 0.0 if candidate.latency is None else candidate.latency.total,
        "baseline_n": 0.0 if baseline.latency is None else baseline.latency.total,
        "ratio": None,
        "ci95": None,
    }
    if c is None or b is None or b[0] <= 0 or b[1] <= 0:
        return row
    # Conservative: the ratio's interval from the ends of the two intervals.
    row["ratio"] = c[0] / b[0]
    row["ci95"] = [c[1] / b[2] if b[2] > 0 else 0.0, c[2] / b[1]]
    return row


def metric_row(name: str, candidate: ArmTotals, baseline: ArmTotals) -> dict[str, Any] | None:
    if name in _RATES:
        return _rate_row(name, candidate, baseline)
    if name in _QUANTILES:
        return _quantile_row(name, candidate, baseline)
    return None


def ab_report(
    objective: str,
    direction: Literal["lower", "higher"],
    candidate: ArmTotals,
    baseline: ArmTotals,
    guards: VerdictRecord | None,
) -> dict[str, Any]:
    """The report and the winner (``candidate`` or ``baseline``), with a one-line summary."""
    names = [objective, *(m for m in (*_RATES, *_QUANTILES) if m != objective)]
    rows = [row for name in names if (row := metric_row(name, candidate, baseline)) is not None]
    objective_row = rows[0] if rows and rows[0]["metric"] == objective else None

    better = False
    if objective_row is not None and objective_row["ci95"] is not None:
        low, high = objective_row["ci95"]
        neutral = 1.0 if objective in _QUANTILES else 0.0
        better = high < neutral if direction == "lower" else low > neutral

    guard_problems = []
    if guards is None:
        guard_problems.append("the guards never ran")
    else:
        if guards.outcome == Outcome.FAIL:
            guard_problems.append("a guard failed")
        guard_problems.extend(
            f"guard {check.check} leans towards a regression"
            for check in guards.checks
            if check.outcome == Outcome.FAIL or check.leans_bad
        )
    winner = "candidate" if better and not guard_problems else "baseline"
    name = metric_name(objective)
    if objective_row is None:
        summary = f"objective {objective} cannot be computed from export-metrics"
    elif objective_row["ci95"] is None:
        summary = f"not enough data on the {name} ({objective}) to compare the arms"
    else:
        # Plain words first: both arms with units, then the interval that decides.
        low, high = objective_row["ci95"]
        if objective in _QUANTILES:
            measure = f"candidate/baseline {low:.3g}x to {high:.3g}x (95 % interval)"
        else:
            measure = (f"difference {low * 100:+.3g} to {high * 100:+.3g} points "
                       "(95 % interval)")
        verdict = "candidate wins" if winner == "candidate" else "no clear win for the candidate"
        summary = (
            f"{name}: candidate {metric_value(objective, objective_row['candidate'])} vs "
            f"baseline {metric_value(objective, objective_row['baseline'])}, {measure}, "
            f"{direction} is better -> {verdict}"
        )
    if guard_problems and better:
        summary += " (" + "; ".join(guard_problems) + ")"
    return {
        "objective": objective,
        "direction": direction,
        "winner": winner,
        "summary": summary,
        "metrics": rows,
        "guard_problems": guard_problems,
    }
