"""A verdict in one sentence a person reads first, with units (%, ms) and no statistics.

Where this sits: after the judge has answered, ``rollout.engine.decide`` stores
``verdict_sentence(verdict)`` as the verdict's ``summary`` and leads its event, alert and
rollback reasons with it; the judge's own ``reason`` (and the e-values, in each check's
``detail``) follow for whoever wants the arithmetic. Pure, and it decides nothing: the outcome
is the judge's.

    "candidate 5xx rate 11.5 % vs baseline 0.55 % (limit 2x baseline) -> rolling back"
"""

from __future__ import annotations

import math

from rollout.analysis.verdict import CheckRecord, Outcome, VerdictRecord

# Metric names as people say them.
_NAMES = {
    "error_rate": "5xx rate",
    "client_error_rate": "4xx rate",
    "latency_p50_ms": "p50 latency",
    "latency_p90_ms": "p90 latency",
    "latency_p99_ms": "p99 latency",
    "queue_time_p50_ms": "p50 queue time",
    "queue_time_p90_ms": "p90 queue time",
    "queue_time_p99_ms": "p99 queue time",
    "request_count": "requests",
    "cpu_usage_percentage": "CPU",
    "mem_usage_percentage": "memory",
    "error_ceiling": "5xx rate",
}

_ACTION = {
    Outcome.FAIL: "rolling back",
    Outcome.PASS: "may move on",
    Outcome.INCONCLUSIVE: "hold for more data",
}


def metric_name(metric: str) -> str:
    return _NAMES.get(metric, metric.replace("_", " "))


def _significant(x: float) -> str:
    text = f"{x:.3g}"
    return text if "e" not in text else f"{x:.2g}"


def metric_value(metric: str, value: object) -> str:
    """A metric's value with its unit: rates in %, latencies in ms, gauges in %."""
    if value in ("+Inf", "-Inf"):
        return "infinite"
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "n/a"
    if "rate" in metric or metric == "error_ceiling":
        return f"{_significant(value * 100)} %"
    if metric.endswith("_ms"):
        return f"{_significant(value)} ms"
    if metric.endswith("_percentage"):
        return f"{_significant(value)} %"
    return f"{value:,.0f}" if metric == "request_count" else _significant(value)


def _limit(check: CheckRecord) -> str:
    limit = check.limit
    if "regression beyond " in limit:
        return limit.split("regression beyond ", 1)[1]
    if "passes confidently below " in limit:  # a blue/green check against the control
        level = limit.split("passes confidently below ", 1)[1].split(", fails", 1)[0]
        return f"below {level}, from the baseline's warm-up"
    return limit.removeprefix("candidate ")


def check_sentence(check: CheckRecord) -> str:
    """'candidate 5xx rate 11.5 % vs baseline 0.55 % (limit 2x baseline)'."""
    metric = check.metric or check.check or "?"
    text = f"candidate {metric_name(metric)} {metric_value(metric, check.candidate_value)}"
    if check.baseline_value is not None:
        text += f" vs baseline {metric_value(metric, check.baseline_value)}"
    limit = _limit(check)
    return f"{text} (limit {limit})" if limit else text


def verdict_sentence(verdict: VerdictRecord) -> str:
    """The verdict in one sentence: the checks that decide it, then what it means."""
    outcome = verdict.outcome
    checks = verdict.checks
    action = _ACTION[outcome]
    if outcome == Outcome.PASS:
        shown = "; ".join(check_sentence(c) for c in checks[:2])
        return f"all {len(checks)} checks within tolerance" + (f": {shown}" if shown else "") \
            + f" -> {action}"
    deciding = [c for c in checks if c.outcome == outcome] or [
        c for c in checks if c.outcome != Outcome.PASS
    ]
    if outcome == Outcome.INCONCLUSIVE and "below min_requests" in verdict.reason:
        reason = verdict.reason
        short = reason.split("(", 1)[1].split(")", 1)[0] if "(" in reason else "too few requests"
        return f"not enough traffic yet ({short}) -> {action}"
    if not deciding:
        return f"{outcome} -> {action}"
    shown = "; ".join(check_sentence(c) for c in deciding[:2])
    more = f" (and {len(deciding) - 2} more)" if len(deciding) > 2 else ""
    if outcome == Outcome.INCONCLUSIVE:
        passed = sum(1 for c in checks if c.outcome == Outcome.PASS)
        return (f"not decided yet, {passed} of {len(checks)} checks passed; waiting on "
                f"{shown}{more} -> {action}")
    return f"{shown}{more} -> {action}"
