"""Judging against a fixed control: the blue/green bake.

Where this sits: after a blue/green switch the baseline serves nothing, so there is no
concurrent control. The engine keeps the baseline's windows from the warm-up at 0 % and, for
the bake, turns each ``compare: baseline`` check into an absolute level computed from them
(``error_rate`` at most ``max(control x max_ratio, control + max_increase)``, likewise for
latency quantiles); the judge then runs its one-arm sequential test against that level. The
control's own sampling error is not carried into the level, which is why the warm-up should
see a few thousand requests; a check the control has no data for stays relative, and so stays
inconclusive rather than being dropped silently. Pure.
"""

from __future__ import annotations

from rollout.analysis.spec import CheckSpec, Policy
from rollout.metrics.model import ArmTotals


def _control_value(check: CheckSpec, control: ArmTotals) -> float | None:
    info = check.info
    if info.kind == "rate":
        if control.requests <= 0:
            return None
        return float(getattr(control, info.source)) / control.requests
    if info.kind == "quantile" and info.quantile is not None:
        histogram = getattr(control, info.source)
        return None if histogram is None else histogram.quantile(info.quantile)
    return None


def against_control(policy: Policy, control: ArmTotals) -> Policy:
    """The policy with every relative check fixed to a level derived from ``control``."""
    checks: list[CheckSpec] = []
    for check in policy.checks:
        value = _control_value(check, control) if check.compare == "baseline" else None
        if value is None:
            checks.append(check)
            continue
        candidates = []
        if check.max_ratio is not None:
            candidates.append(value * check.max_ratio)
        if check.max_increase is not None:
            candidates.append(value + check.max_increase)
        level = max(candidates)
        if check.info.kind == "rate":
            level = min(level, 0.999)
        if level <= 0:
            checks.append(check)
            continue
        checks.append(
            CheckSpec.model_validate(
                {"metric": check.metric, "max": level, "on_missing": check.on_missing}
            )
        )
    unique = list({c.describe(): c for c in checks}.values())
    return policy.model_copy(
        update={"checks": tuple(unique), "name": f"{policy.name} (against the warm-up control)"}
    )
