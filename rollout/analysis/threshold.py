"""The threshold judge: Flagger/Argo-style per-interval checks with a failure counter.

Where this sits: an alternative to the sequential judge, chosen by a policy's
``judge: threshold`` (the built-in ``flagger-compatible`` policy), and the baseline the decision
benchmark measures the sequential judge against. The engine calls it at every tick like the
sequential judge (``rollout.analysis.judge``); its verdict goes into the event log. Pure.

How it judges, as Flagger's canary analysis does: each interval (the windows that arrived since
the last look) every check compares that interval's value with its threshold
(``request-success-rate`` min 99 % is ``error_rate max 1%``; ``request-duration`` max 500 ms is
``latency_p99_ms max 500``; a ``compare: baseline`` check compares the interval's candidate
value with the baseline's). An interval where any check is beyond its threshold is a failed
check; ``failure_threshold`` of them over the rollout (Flagger's ``threshold``; the counter is
not reset by passing intervals) roll the candidate back. An interval where every check is
within passes, and a bake may end on it.

The one deliberate difference: Flagger counts an interval with no data ("no values found") as a
failed check, which rolls back low-traffic canaries for lack of traffic. Here an interval with
no data for a check (no requests, a missing series) is inconclusive: it neither counts as a
failure nor lets the step advance. The interval is the unit: nothing here accounts for having
looked many times, which is why this judge's false-rollback rate grows with the number of
intervals (``bench/judge_calibration.py`` measures it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rollout.analysis import observe
from rollout.analysis.observe import Seen
from rollout.analysis.spec import CheckSpec, Policy
from rollout.analysis.verdict import CheckResult, Outcome, Verdict
from rollout.metrics.model import GAUGE_FIELDS, HISTOGRAM_FIELDS, ArmTotals, Histogram

STATE_VERSION = 1


@dataclass
class ThresholdState:
    """The failure counter and the current split's cumulative totals at the last look."""

    split: str | None = None
    looks: int = 0
    failures: int = 0
    last_interval: str = "none"  # passed | failed | no_data | none
    seen_c: Seen = field(default_factory=Seen)
    seen_b: Seen = field(default_factory=Seen)
    hists: dict[str, Histogram | None] = field(default_factory=dict)  # "latency_c", ...
    gauge_lengths: dict[str, int] = field(default_factory=dict)  # "cpu_percent_c", ...
    last_results: list[dict[str, Any]] = field(default_factory=list)
    failed: bool = False
    fail_reason: str = ""
    kind: str = "threshold"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "version": STATE_VERSION,
            "split": self.split,
            "looks": self.looks,
            "failures": self.failures,
            "last_interval": self.last_interval,
            "seen_c": self.seen_c.to_dict(),
            "seen_b": self.seen_b.to_dict(),
            "hists": {k: observe.hist_to_dict(v) for k, v in self.hists.items()},
            "gauge_lengths": dict(self.gauge_lengths),
            "last_results": [dict(r) for r in self.last_results],
            "failed": self.failed,
            "fail_reason": self.fail_reason,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ThresholdState:
        if data.get("kind") != "threshold":
            raise ValueError(f"not a threshold judge state: kind {data.get('kind')!r}")
        if int(data.get("version", 0)) != STATE_VERSION:
            raise ValueError(f"unknown threshold judge state version {data.get('version')!r}")
        split = data.get("split")
        return cls(
            split=None if split is None else str(split),
            looks=int(data.get("looks", 0)),
            failures=int(data.get("failures", 0)),
            last_interval=str(data.get("last_interval", "none")),
            seen_c=Seen.from_dict(data.get("seen_c") or {}),
            seen_b=Seen.from_dict(data.get("seen_b") or {}),
            hists={k: observe.hist_from_dict(v) for k, v in (data.get("hists") or {}).items()},
            gauge_lengths={k: int(v) for k, v in (data.get("gauge_lengths") or {}).items()},
            last_results=[dict(r) for r in data.get("last_results", [])],
            failed=bool(data.get("failed", False)),
            fail_reason=str(data.get("fail_reason", "")),
        )


def judge_threshold(
    policy: Policy,
    candidate: ArmTotals,
    baseline: ArmTotals,
    state: ThresholdState | None,
    *,
    split: str,
    final: bool,
) -> tuple[Verdict, ThresholdState]:
    previous = state if state is not None else ThresholdState()
    new = ThresholdState.from_dict(previous.to_dict())  # never mutate the caller's state
    if new.split != split:
        new.seen_c, new.seen_b = Seen(), Seen()
        new.hists, new.gauge_lengths = {}, {}
    now = _Now(candidate, baseline, Seen.of(candidate), Seen.of(baseline))
    went_back = new.seen_c.went_back(now.seen_c) or new.seen_b.went_back(now.seen_b)
    arrived = now.seen_c.windows > new.seen_c.windows or now.seen_b.windows > new.seen_b.windows
    needs_baseline = any(spec.compare == "baseline" for spec in policy.metric_checks)
    short = candidate.requests < policy.min_requests or (
        needs_baseline and baseline.requests < policy.min_requests
    )
    if arrived and not went_back and not short:
        _judge_interval(policy, new, now)
    elif arrived:
        new.last_interval, new.last_results = "none", []
    _anchor(new, now)
    new.split = split

    results = [_result_from_dict(r) for r in new.last_results]
    outcome, reason = _outcome(policy, new, results, short=short, now=now)
    if went_back:
        reason += " [the split's totals went backwards (revised windows): re-anchored]"
    verdict = Verdict(
        outcome=outcome,
        may_advance=outcome is Outcome.PASS,
        reason=reason,
        judge="threshold",
        policy=policy.name,
        split=split,
        look=new.looks,
        final=final,
        candidate_requests=candidate.requests,
        baseline_requests=baseline.requests,
        checks=tuple(results),
        missing=tuple(r.check for r in results if r.missing),
    )
    return verdict, new


@dataclass(frozen=True)
class _Now:
    """The totals the engine passed at this look, and their counts."""

    candidate: ArmTotals
    baseline: ArmTotals
    seen_c: Seen
    seen_b: Seen


def _judge_interval(policy: Policy, state: ThresholdState, now: _Now) -> None:
    """Judge the interval since the last look and count it."""
    results = [_interval_check(spec, policy, state, now) for spec in policy.metric_checks]
    state.looks += 1
    if any(r.outcome is Outcome.FAIL for r in results):
        state.last_interval = "failed"
        state.failures += 1
    elif all(
        r.outcome is Outcome.PASS or (r.missing and spec.on_missing == "skip")
        for spec, r in zip(policy.metric_checks, results, strict=True)
    ):
        state.last_interval = "passed"
    else:
        state.last_interval = "no_data"
    state.last_results = [_result_to_dict(r) for r in results]
    if state.failures >= policy.failure_threshold and not state.failed:
        state.failed = True
        state.fail_reason = "; ".join(r.reason for r in results if r.outcome is Outcome.FAIL)


def _outcome(policy: Policy, state: ThresholdState, results: list[CheckResult], *,
             short: bool, now: _Now) -> tuple[Outcome, str]:
    counter = f"{state.failures}/{policy.failure_threshold} failed intervals"
    if state.failed:
        return Outcome.FAIL, f"fail: {counter}; last: {state.fail_reason}"
    if short:
        return Outcome.INCONCLUSIVE, (
            f"inconclusive: below min_requests in this split (candidate "
            f"{now.candidate.requests:g}, baseline {now.baseline.requests:g}, "
            f"need {policy.min_requests})"
        )
    if state.last_interval == "passed":
        return Outcome.PASS, f"pass: the last interval passed every check ({counter})"
    if state.last_interval == "failed":
        failed = "; ".join(r.reason for r in results if r.outcome is Outcome.FAIL)
        return Outcome.INCONCLUSIVE, f"inconclusive: the last interval failed ({counter}): {failed}"
    if state.last_interval == "no_data":
        lacking = "; ".join(r.reason for r in results if r.missing)
        return Outcome.INCONCLUSIVE, (
            f"inconclusive: no data in the last interval, not counted as a failure as Flagger "
            f"would ({counter}): {lacking}"
        )
    return Outcome.INCONCLUSIVE, f"inconclusive: no interval judged yet ({counter})"


def _anchor(state: ThresholdState, now: _Now) -> None:
    state.seen_c, state.seen_b = now.seen_c, now.seen_b
    for source in HISTOGRAM_FIELDS:
        state.hists[f"{source}_c"] = observe.histogram(now.candidate, source)
        state.hists[f"{source}_b"] = observe.histogram(now.baseline, source)
    for source in GAUGE_FIELDS:
        state.gauge_lengths[f"{source}_c"] = observe.gauge_count(now.candidate, source)


def _interval_values(
    spec: CheckSpec, state: ThresholdState, now: _Now
) -> tuple[float | None, float | None, float, float]:
    """The check's metric over the interval: (candidate, baseline, their sample sizes)."""
    info = spec.info
    if info.kind == "rate":
        values: list[float | None] = []
        sizes: list[float] = []
        for before, current in ((state.seen_c, now.seen_c), (state.seen_b, now.seen_b)):
            n = current.requests - before.requests
            gap = any(before.missing_grew(current, f) for f in (info.source, "requests"))
            events = current.get(info.source) - before.get(info.source)
            values.append(None if n <= 0 or gap else events / n)
            sizes.append(n)
        return values[0], values[1], sizes[0], sizes[1]
    if info.kind == "quantile":
        hists = [
            observe.subtract(observe.histogram(totals, info.source),
                             state.hists.get(f"{info.source}_{arm}"))
            for arm, totals in (("c", now.candidate), ("b", now.baseline))
        ]
        q = info.quantile or 0.0
        return (
            None if hists[0] is None else hists[0].quantile(q),
            None if hists[1] is None else hists[1].quantile(q),
            0.0 if hists[0] is None else hists[0].total,
            0.0 if hists[1] is None else hists[1].total,
        )
    if info.kind == "gauge":
        fresh = observe.gauges_after(
            now.candidate, info.source, state.gauge_lengths.get(f"{info.source}_c", 0)
        )
        return (sum(fresh) / len(fresh) if fresh else None), None, float(len(fresh)), 0.0
    n_c = now.seen_c.requests - state.seen_c.requests
    return n_c, None, n_c, 0.0


def _limit(spec: CheckSpec, value_b: float | None) -> float:
    if spec.compare == "baseline" and value_b is not None:
        return spec.tolerated(value_b)
    if spec.max_level is not None:
        return spec.max_level
    return spec.min_level or 0.0


def _interval_check(spec: CheckSpec, policy: Policy, state: ThresholdState,
                    now: _Now) -> CheckResult:
    """One check on the interval since the last look."""
    value_c, value_b, n_c, n_b = _interval_values(spec, state, now)
    lacking = ""
    limit: float | None = None
    failed = False
    if value_c is None:
        lacking = f"no candidate {spec.metric} in the interval"
    elif spec.compare == "baseline" and value_b is None:
        lacking = f"no baseline {spec.metric} in the interval"
    else:
        limit = _limit(spec, value_b)
        failed = value_c < limit if spec.min_level is not None else value_c > limit
        if spec.info.kind == "count" and failed:
            # Too few requests in an interval is missing data, never a failed check.
            lacking, failed = f"only {value_c:g} candidate requests in the interval", False
    outcome = Outcome.INCONCLUSIVE if lacking else Outcome.FAIL if failed else Outcome.PASS
    shown = _fmt(spec, value_c) + (
        f" vs baseline {_fmt(spec, value_b)}" if spec.compare == "baseline" else ""
    )
    verb = "beyond" if failed else "within"
    reason = (f"{spec.describe()}: {lacking}" if lacking
              else f"{spec.describe()}: interval {shown} {verb} {_fmt(spec, limit)}")
    return CheckResult(
        check=spec.describe(),
        metric=str(spec.metric),
        outcome=outcome,
        reason=reason,
        candidate_value=value_c,
        baseline_value=value_b,
        candidate_n=n_c,
        baseline_n=n_b,
        limit=f"interval value within {_fmt(spec, limit)}" if limit is not None else "",
        statistic={"failed_intervals": float(state.failures)}
        | ({} if value_c is None else {"value": value_c}),
        boundary={"failed_intervals": float(policy.failure_threshold)}
        | ({} if limit is None else {"threshold": limit}),
        missing=bool(lacking),
        leans_bad=outcome is Outcome.FAIL,
    )


def _fmt(spec: CheckSpec, x: float | None) -> str:
    if x is None:
        return "n/a"
    if spec.info.kind == "rate":
        return f"{x * 100:.3g}%"
    return f"{x:.4g}{spec.info.unit}"


def _result_to_dict(result: CheckResult) -> dict[str, Any]:
    return {
        "check": result.check,
        "metric": result.metric,
        "outcome": str(result.outcome),
        "reason": result.reason,
        "candidate_value": result.candidate_value,
        "baseline_value": result.baseline_value,
        "candidate_n": result.candidate_n,
        "baseline_n": result.baseline_n,
        "limit": result.limit,
        "statistic": dict(result.statistic),
        "boundary": dict(result.boundary),
        "missing": result.missing,
        "leans_bad": result.leans_bad,
    }


def _result_from_dict(data: dict[str, Any]) -> CheckResult:
    return CheckResult(
        check=str(data["check"]),
        metric=str(data["metric"]),
        outcome=Outcome(data["outcome"]),
        reason=str(data["reason"]),
        candidate_value=data.get("candidate_value"),
        baseline_value=data.get("baseline_value"),
        candidate_n=float(data.get("candidate_n", 0.0)),
        baseline_n=float(data.get("baseline_n", 0.0)),
        limit=str(data.get("limit", "")),
        statistic={k: float(v) for k, v in (data.get("statistic") or {}).items()},
        boundary={k: float(v) for k, v in (data.get("boundary") or {}).items()},
        missing=bool(data.get("missing", False)),
        leans_bad=bool(data.get("leans_bad", False)),
    )
