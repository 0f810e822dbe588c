"""Reading checks' inputs out of ``ArmTotals``: values, sample sizes, and what is missing.

Where this sits: both judges in ``rollout.analysis`` receive one ``ArmTotals`` per arm (the
sums of the windows since the current split took effect, built by ``rollout.metrics``) and use
these helpers to read a metric's value and sample size and to tell "no data" from "zero".
Pure.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from rollout.analysis.spec import CheckSpec, MetricInfo
from rollout.metrics.model import ArmTotals, Histogram


def histogram(totals: ArmTotals, source: str) -> Histogram | None:
    hist: Histogram | None = getattr(totals, source)
    if hist is None or hist.total <= 0.0:
        return None
    return hist


def gauges(totals: ArmTotals, source: str) -> list[float]:
    values: list[float] = getattr(totals, source)
    return values


def gauges_after(totals: ArmTotals, source: str, seen: int) -> list[float]:
    """The gauge values after the first ``seen`` ever added (some may have been dropped)."""
    values = gauges(totals, source)
    return values[max(0, seen - totals.gauges_dropped.get(source, 0)):]


def gauge_count(totals: ArmTotals, source: str) -> int:
    """How many gauge values were ever added, the dropped ones included."""
    return totals.gauges_dropped.get(source, 0) + len(gauges(totals, source))


def field_missing(totals: ArmTotals, name: str) -> bool:
    """True when every window summed in ``totals`` lacked ``name`` (no data, not zero)."""
    return totals.windows > 0 and totals.missing.get(name, 0) >= totals.windows


def rate_missing(totals: ArmTotals, info: MetricInfo) -> bool:
    return field_missing(totals, info.source) or field_missing(totals, "requests")


def value(totals: ArmTotals, spec: CheckSpec) -> tuple[float | None, float]:
    """The metric's value over ``totals`` and the sample size behind it."""
    info = spec.info
    if info.kind == "rate":
        if totals.requests <= 0.0 or rate_missing(totals, info):
            return None, totals.requests
        return float(getattr(totals, info.source)) / totals.requests, totals.requests
    if info.kind == "quantile":
        hist = histogram(totals, info.source)
        if hist is None or info.quantile is None:
            return None, 0.0
        return hist.quantile(info.quantile), hist.total
    if info.kind == "gauge":
        values = gauges(totals, info.source)
        if not values:
            return None, 0.0
        return sum(values) / len(values), float(len(values))
    return totals.requests, totals.requests


@dataclass
class Seen:
    """One arm's cumulative counts within the current split, as of the judge's last look.

    Kept in judge state: the difference between the totals the engine passes now and these is
    what arrived since the last look.
    """

    windows: int = 0
    requests: float = 0.0
    errors_4xx: float = 0.0
    errors_5xx: float = 0.0
    latency_n: float = 0.0
    queue_time_n: float = 0.0
    inference_latency_n: float = 0.0
    missing: dict[str, int] | None = None

    @classmethod
    def of(cls, totals: ArmTotals) -> Seen:
        latency = histogram(totals, "latency")
        queue = histogram(totals, "queue_time")
        inference = histogram(totals, "inference_latency")
        return cls(
            windows=totals.windows,
            requests=totals.requests,
            errors_4xx=totals.errors_4xx,
            errors_5xx=totals.errors_5xx,
            latency_n=0.0 if latency is None else latency.total,
            queue_time_n=0.0 if queue is None else queue.total,
            inference_latency_n=0.0 if inference is None else inference.total,
            missing=dict(totals.missing),
        )

    def clone(self) -> Seen:
        return replace(self, missing=dict(self.missing or {}))

    def went_back(self, now: Seen) -> bool:
        """True when a count shrank: the totals were rebuilt, so differences mean nothing."""
        return (
            now.windows < self.windows
            or now.requests < self.requests - 1e-9
            or now.errors_4xx < self.errors_4xx - 1e-9
            or now.errors_5xx < self.errors_5xx - 1e-9
            or now.latency_n < self.latency_n - 1e-9
            or now.queue_time_n < self.queue_time_n - 1e-9
            or now.inference_latency_n < self.inference_latency_n - 1e-9
        )

    def missing_grew(self, now: Seen, name: str) -> bool:
        """Whether a window that lacked ``name`` arrived since this look."""
        return (now.missing or {}).get(name, 0) > (self.missing or {}).get(name, 0)

    def get(self, name: str) -> float:
        return float(getattr(self, name))

    def to_dict(self) -> dict[str, Any]:
        return {
            "windows": self.windows,
            "requests": self.requests,
            "errors_4xx": self.errors_4xx,
            "errors_5xx": self.errors_5xx,
            "latency_n": self.latency_n,
            "queue_time_n": self.queue_time_n,
            "inference_latency_n": self.inference_latency_n,
            "missing": dict(self.missing or {}),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Seen:
        return cls(
            windows=int(data.get("windows", 0)),
            requests=float(data.get("requests", 0.0)),
            errors_4xx=float(data.get("errors_4xx", 0.0)),
            errors_5xx=float(data.get("errors_5xx", 0.0)),
            latency_n=float(data.get("latency_n", 0.0)),
            queue_time_n=float(data.get("queue_time_n", 0.0)),
            inference_latency_n=float(data.get("inference_latency_n", 0.0)),
            missing={str(k): int(v) for k, v in dict(data.get("missing") or {}).items()},
        )


def hist_to_dict(hist: Histogram | None) -> dict[str, Any] | None:
    return None if hist is None else hist.to_dict()


def hist_from_dict(data: dict[str, Any] | None) -> Histogram | None:
    return None if data is None else Histogram.from_dict(data)


def merge(a: Histogram | None, b: Histogram | None) -> Histogram | None:
    if a is None:
        return b
    if b is None:
        return a
    return a.merge(b)


def subtract(now: Histogram | None, before: Histogram | None) -> Histogram | None:
    """``now - before`` bucket by bucket (an interval's histogram from two cumulative ones).

    Differing layouts are aligned on the union of bounds; a bucket that shrank (totals were
    revised) counts as zero, never negative.
    """
    if now is None:
        return None
    if before is None:
        return now
    if now.bounds == before.bounds:
        counts = tuple(max(0.0, a - b) for a, b in zip(now.counts, before.counts, strict=True))
        return Histogram(now.bounds, counts)
    earlier = dict(zip(before.bounds, before.counts, strict=True))
    counts = tuple(
        max(0.0, count - earlier.get(bound, 0.0))
        for bound, count in zip(now.bounds, now.counts, strict=True)
    )
    return Histogram(now.bounds, counts)
