"""Judging against a fixed control: the blue/green bake.

Where this sits: after a blue/green switch the baseline serves nothing, so there is no
concurrent control. The engine keeps the baseline's windows from the warm-up at 0 % and, for
the bake, turns each ``compare: baseline`` check into levels computed from them; the judge
then runs its one-arm sequential test against those levels. Pure.

The control is a sample, not the truth, so its sampling error is carried into the levels
rather than ignored (a warm-up of a few hundred requests would otherwise set a level that is
off by half, and the bake's error budgets would be fiction):

* ``error_rate``-like rates: with the control's rate p known only to lie in the Chernoff
  interval [lo, hi] (``evidence.rate_bounds``), the candidate *fails* when it is confidently
  above ``hi`` (so a candidate no worse than the control fails only if the interval missed
  p upwards or the one-arm test erred: at most alpha_k / 2 + alpha_k / 2), and *passes* when
  it is confidently below ``max(lo x max_ratio, lo + max_increase)`` (so a candidate beyond
  the tolerance passes only if the interval missed p downwards or the test erred: at most
  beta / 2 + beta / 2). Half of each budget pays for the interval (``ControlCheck.control_share``).
* Latency quantiles: one level, the tolerance applied to the control's histogram read at a
  lower confidence bound of the quantile's position (the tail share bounded as a rate), as the
  canary's relative latency check does; a control with fewer than ten observations beyond the
  quantile sets no level.

A check the control cannot fix a level for (no requests, no errors and no ``max_increase``,
no histogram) stays relative and so stays visibly inconclusive rather than being dropped. The
threshold judge has no error budgets to share, so under it the levels are the plain tolerance
applied to the control's point estimate, as Flagger's thresholds would be.
"""

from __future__ import annotations

import math

from rollout.analysis.evidence import rate_bounds, upper_deviation
from rollout.analysis.spec import CheckSpec, ControlCheck, Policy
from rollout.metrics.model import ArmTotals

CONTROL_SHARE = 0.5
# A quantile level needs this many control observations beyond the quantile (as the canary's
# relative latency check does before it sets its level).
TAIL_OBSERVATIONS = 10.0


def _rate_check(check: CheckSpec, control: ArmTotals, policy: Policy) -> CheckSpec | None:
    requests = control.requests
    if requests <= 0:
        return None
    events = float(getattr(control, check.info.source))
    if policy.judge == "threshold":
        level = min(check.tolerated(events / requests), 0.999)
        return None if level <= 0.0 else _absolute(check, level)
    _, hi = rate_bounds(events, requests, policy.alpha_per_check * CONTROL_SHARE)
    lo, _ = rate_bounds(events, requests, policy.missed_regression_rate * CONTROL_SHARE)
    pass_level = min(check.tolerated(lo), 0.999)
    if pass_level <= 0.0:
        return None
    return ControlCheck.model_validate(
        {
            "metric": check.metric,
            "max": pass_level,
            "fail_level": min(hi, 0.999),
            "control_share": CONTROL_SHARE,
            "on_missing": check.on_missing,
        }
    )


def _quantile_check(check: CheckSpec, control: ArmTotals, policy: Policy) -> CheckSpec | None:
    info = check.info
    histogram = getattr(control, info.source)
    quantile = info.quantile
    if histogram is None or quantile is None or histogram.total <= 0:
        return None
    if policy.judge == "threshold":
        value = histogram.quantile(quantile)
        return None if value is None or value <= 0 else _absolute(check, check.tolerated(value))
    tail = 1.0 - quantile
    if histogram.total * tail < TAIL_OBSERVATIONS:
        return None
    # The q-th quantile sits at or above the control's value at q_low unless the control's
    # share beyond the true quantile was drawn above 1 - q_low.
    tail_high = upper_deviation(
        tail, histogram.total, policy.missed_regression_rate * CONTROL_SHARE
    )
    value = histogram.quantile(max(quantile / 2.0, 1.0 - tail_high))
    if value is None or value <= 0 or not math.isfinite(value):
        return None
    return ControlCheck.model_validate(
        {
            "metric": check.metric,
            "max": check.tolerated(value),
            "control_share": CONTROL_SHARE,
            "on_missing": check.on_missing,
        }
    )


def _absolute(check: CheckSpec, level: float) -> CheckSpec:
    return CheckSpec.model_validate(
        {"metric": check.metric, "max": level, "on_missing": check.on_missing}
    )


def against_control(policy: Policy, control: ArmTotals) -> Policy:
    """The policy with every relative check fixed to levels derived from ``control``."""
    checks: list[CheckSpec] = []
    for check in policy.metric_checks:
        fixed: CheckSpec | None = None
        if check.compare == "baseline":
            if check.info.kind == "rate":
                fixed = _rate_check(check, control, policy)
            elif check.info.kind == "quantile":
                fixed = _quantile_check(check, control, policy)
        checks.append(check if fixed is None else fixed)
    unique = list({c.describe(): c for c in checks}.values())
    return policy.model_copy(
        update={
            "checks": (*unique, *policy.query_checks),
            "name": f"{policy.name} (against the warm-up control)",
        }
    )
