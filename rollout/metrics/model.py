"""The numbers a rollout is judged on: one window of one served entity, and sums of windows.

Export-metrics text is parsed (``rollout.metrics.parse``) into ``EntityWindow`` values, one per
served entity and window; ``rollout.metrics.windows`` deduplicates them across scrapes; the
engine sums the windows that began after the current split took effect into one ``ArmTotals``
per arm (candidate, baseline), and the judges in ``rollout.analysis`` read only those sums.
Pure data, no I/O.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field, replace
from typing import Any

# The measurement fields of an ``EntityWindow``, by name; ``EntityWindow.missing`` names a subset.
WINDOW_FIELDS: tuple[str, ...] = (
    "requests",
    "errors_4xx",
    "errors_5xx",
    "latency",
    "queue_time",
    "cpu_percent",
    "mem_percent",
    "provisioned_concurrency",
    "gpu_percent",
    "gpu_mem_percent",
    "inference_latency",
)
# Histogram fields (per-bucket counts; summed across replicas and windows).
HISTOGRAM_FIELDS: tuple[str, ...] = ("latency", "queue_time", "inference_latency")
# Level fields (gauges averaged over replicas and GPUs; judged as levels, never summed).
GAUGE_FIELDS: tuple[str, ...] = ("cpu_percent", "mem_percent", "gpu_percent", "gpu_mem_percent")


# Upper bounds (ms) of the latency buckets Databricks' export-metrics histograms use, below
# +Inf: 5 ms to 600 000 ms, the usual 1-2.5-5 ladder up to 10 s.
EXPORTED_LATENCY_BOUNDS_MS: tuple[float, ...] = (
    5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 120000.0, 300000.0, 600000.0,
)


@dataclass(frozen=True)
class UnattributableScrape:
    """A scrape with windows but no series naming a served entity: endpoint totals only.

    With several entities served, such numbers are every arm summed, and judging them would
    compare the endpoint with itself; the engine pauses instead. ``labels`` are the label names
    the series did carry (``le`` aside), ``known`` the entity labels the parser looks for.
    """

    labels: tuple[str, ...]
    known: tuple[str, ...]

    def describe(self) -> str:
        found = ", ".join(self.labels) if self.labels else "none"
        return (
            f"export-metrics series name no served entity (looked for {', '.join(self.known)}; "
            f"labels found: {found}): candidate and baseline cannot be told apart"
        )


EXPORTED_BOUNDS: tuple[float, ...] = (*EXPORTED_LATENCY_BOUNDS_MS, math.inf)
"""The exported bucket bounds with +Inf: the layout a stored histogram may leave unsaid."""


@dataclass(frozen=True, slots=True)
class Histogram:
    """A latency (or queue-time) histogram with per-bucket, non-cumulative counts.

    ``bounds`` are the buckets' upper bounds in ascending order (the last is usually ``inf``);
    ``counts[i]`` is the number of observations in ``(bounds[i-1], bounds[i]]``.
    """

    bounds: tuple[float, ...]
    counts: tuple[float, ...]
    sum: float | None = None

    def __post_init__(self) -> None:
        if len(self.bounds) != len(self.counts):
            raise ValueError("a histogram needs one count per bucket bound")
        if any(b2 <= b1 for b1, b2 in zip(self.bounds, self.bounds[1:], strict=False)):
            raise ValueError("histogram bounds must be strictly increasing")

    @classmethod
    def from_cumulative(
        cls, buckets: dict[float, float], total_sum: float | None = None
    ) -> Histogram:
        """Build from Prometheus ``_bucket{le=...}`` values (cumulative counts)."""
        bounds = tuple(sorted(float(b) for b in buckets))
        if bounds == EXPORTED_BOUNDS:
            # One shared tuple for the usual layout: a controller keeps thousands of windows.
            bounds = EXPORTED_BOUNDS
        by_bound = {float(b): float(v) for b, v in buckets.items()}
        counts: list[float] = []
        previous = 0.0
        for bound in bounds:
            cumulative = by_bound[bound]
            # Rounding in exporters can make a cumulative series dip by a hair; never negative.
            counts.append(float(max(0.0, cumulative - previous)))
            previous = max(previous, cumulative)
        return cls(bounds=bounds, counts=tuple(counts), sum=total_sum)

    @property
    def total(self) -> float:
        return float(sum(self.counts))

    def merge(self, other: Histogram) -> Histogram:
        """Sum two histograms; differing bucket layouts are merged on the union of bounds.

        A bucket missing on one side counts as zero there: observations are kept in the bucket
        their exporter put them in, so the merged histogram never loses a request.
        """
        if self.bounds == other.bounds:
            if len(self.counts) != len(other.counts):  # pragma: no cover - same bounds
                raise ValueError("a histogram needs one count per bucket bound")
            counts = tuple(map(operator.add, self.counts, other.counts))
        else:
            merged: dict[float, float] = {}
            for hist in (self, other):
                for bound, count in zip(hist.bounds, hist.counts, strict=True):
                    merged[bound] = merged.get(bound, 0.0) + count
            bounds = tuple(sorted(merged))
            total_sum = _add_opt(self.sum, other.sum)
            return Histogram(bounds, tuple(merged[b] for b in bounds), total_sum)
        return self._same_layout(counts, _add_opt(self.sum, other.sum))

    def _same_layout(self, counts: tuple[float, ...], total_sum: float | None) -> Histogram:
        """A histogram on this one's (already checked) bounds, ``counts`` one per bound: built
        without checking the bounds again. Summing a split's windows merges hundreds of
        histograms per look, and checking each result's bounds was most of that."""
        merged = object.__new__(Histogram)
        object.__setattr__(merged, "bounds", self.bounds)
        object.__setattr__(merged, "counts", counts)
        object.__setattr__(merged, "sum", total_sum)
        return merged

    def quantile(self, q: float) -> float | None:
        """Estimate the q-quantile by linear interpolation inside its bucket.

        This is what Prometheus' ``histogram_quantile`` does: the lower edge of the first bucket
        is 0, and a quantile falling in the ``+Inf`` bucket is reported as the highest finite
        bound (the histogram cannot say more). ``None`` when the histogram is empty.
        """
        if not 0.0 <= q <= 1.0:
            raise ValueError("quantile must be within [0, 1]")
        total = self.total
        if total <= 0:
            return None
        rank = q * total
        cumulative = 0.0
        lower = 0.0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            if count > 0 and cumulative + count >= rank:
                if math.isinf(bound):
                    return lower
                fraction = (rank - cumulative) / count
                return lower + (bound - lower) * fraction
            cumulative += count
            if not math.isinf(bound):
                lower = bound
        return lower

    def count_above(self, threshold: float) -> float:
        """Observations above ``threshold``, interpolating linearly inside the straddling bucket."""
        above = 0.0
        lower = 0.0
        for bound, count in zip(self.bounds, self.counts, strict=True):
            if lower >= threshold:
                above += count
            elif bound > threshold:
                if math.isinf(bound):
                    above += count
                else:
                    above += count * (bound - threshold) / (bound - lower)
            if not math.isinf(bound):
                lower = bound
        return above

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe form: an infinite bound is written as ``"+Inf"`` (strict JSON has none).

        Compact, because windows and sums are stored by the thousand: the bounds are left out
        when they are Databricks' exported ones (``EXPORTED_BOUNDS``), and trailing empty
        buckets are left out of the counts. ``from_dict`` reads both forms.
        """
        counts = list(self.counts)
        while counts and counts[-1] == 0.0:
            counts.pop()
        data: dict[str, Any] = {"counts": counts, "sum": self.sum}
        if self.bounds != EXPORTED_BOUNDS:
            data["bounds"] = [_float_to_json(b) for b in self.bounds]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Histogram:
        total_sum = data.get("sum")
        raw_bounds = data.get("bounds")
        bounds = (
            EXPORTED_BOUNDS
            if raw_bounds is None
            else tuple(_float_from_json(b) for b in raw_bounds)
        )
        counts = [float(c) for c in data["counts"]]
        if len(counts) > len(bounds):
            raise ValueError("a histogram needs one count per bucket bound")
        counts.extend([0.0] * (len(bounds) - len(counts)))
        return cls(
            bounds=bounds,
            counts=tuple(counts),
            sum=None if total_sum is None else float(total_sum),
        )


def _float_to_json(value: float) -> float | str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return value


def _float_from_json(value: float | str) -> float:
    return float(value)


def _add_opt(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return a + b


@dataclass(frozen=True, slots=True)
class EntityWindow:
    """What export-metrics says about one served entity during one window.

    ``entity`` is ``None`` for endpoint totals (series with no entity label). ``start_ms`` is the
    window's start in epoch milliseconds, or ``None`` when the samples carried no timestamp.
    Counts are per window (already converted from cumulative counters when needed).

    ``missing`` names the fields (see ``WINDOW_FIELDS``) the export did not report, or reported
    as unusable (NaN, negative, a broken histogram), for this window. A missing count reads as
    ``0.0``, so a judge must consult ``missing`` before taking "no errors" at face value; the
    default (nothing missing) keeps hand-built windows meaning what their numbers say.
    """

    entity: str | None
    start_ms: int | None
    requests: float = 0.0
    errors_4xx: float = 0.0
    errors_5xx: float = 0.0
    latency: Histogram | None = None
    queue_time: Histogram | None = None
    cpu_percent: float | None = None
    mem_percent: float | None = None
    provisioned_concurrency: float | None = None
    # GPU endpoints only: DCGM utilisation and memory in percent, and the model's own time
    # (model inference latency, feature lookups included) as a histogram.
    gpu_percent: float | None = None
    gpu_mem_percent: float | None = None
    inference_latency: Histogram | None = None
    missing: frozenset[str] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe form, for persisting windows (see ``WindowTracker.to_state``)."""
        return {
            "entity": self.entity,
            "start_ms": self.start_ms,
            "requests": self.requests,
            "errors_4xx": self.errors_4xx,
            "errors_5xx": self.errors_5xx,
            "latency": None if self.latency is None else self.latency.to_dict(),
            "queue_time": None if self.queue_time is None else self.queue_time.to_dict(),
            "cpu_percent": self.cpu_percent,
            "mem_percent": self.mem_percent,
            "provisioned_concurrency": self.provisioned_concurrency,
            "gpu_percent": self.gpu_percent,
            "gpu_mem_percent": self.gpu_mem_percent,
            "inference_latency": None
            if self.inference_latency is None
            else self.inference_latency.to_dict(),
            "missing": sorted(self.missing),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EntityWindow:
        latency = data.get("latency")
        queue_time = data.get("queue_time")
        inference = data.get("inference_latency")
        start_ms = data.get("start_ms")
        return cls(
            entity=data.get("entity"),
            start_ms=None if start_ms is None else int(start_ms),
            requests=float(data.get("requests", 0.0)),
            errors_4xx=float(data.get("errors_4xx", 0.0)),
            errors_5xx=float(data.get("errors_5xx", 0.0)),
            latency=None if latency is None else Histogram.from_dict(latency),
            queue_time=None if queue_time is None else Histogram.from_dict(queue_time),
            cpu_percent=_opt_float(data.get("cpu_percent")),
            mem_percent=_opt_float(data.get("mem_percent")),
            provisioned_concurrency=_opt_float(data.get("provisioned_concurrency")),
            gpu_percent=_opt_float(data.get("gpu_percent")),
            gpu_mem_percent=_opt_float(data.get("gpu_mem_percent")),
            inference_latency=None if inference is None else Histogram.from_dict(inference),
            # Windows persisted before the GPU fields existed did not report them either.
            missing=frozenset(data.get("missing", ()))
            | frozenset(
                name
                for name in ("gpu_percent", "gpu_mem_percent", "inference_latency")
                if name not in data
            ),
        )


def _opt_float(value: float | None) -> float | None:
    return None if value is None else float(value)


@dataclass
class ArmTotals:
    """The sum of the windows one arm (candidate or baseline) served in the judged interval."""

    windows: int = 0
    requests: float = 0.0
    errors_4xx: float = 0.0
    errors_5xx: float = 0.0
    latency: Histogram | None = None
    queue_time: Histogram | None = None
    # Gauges are averaged over the windows that reported them (they are levels, not counts).
    cpu_percent: list[float] = field(default_factory=list)
    mem_percent: list[float] = field(default_factory=list)
    gpu_percent: list[float] = field(default_factory=list)
    gpu_mem_percent: list[float] = field(default_factory=list)
    inference_latency: Histogram | None = None
    # How many of the summed windows lacked each field (``EntityWindow.missing``): a judge that
    # sees ``missing["errors_5xx"] == windows`` knows it has no error data, not zero errors.
    missing: dict[str, int] = field(default_factory=dict)
    # Gauge values dropped from the front of the lists above when they were kept short; a
    # judge that counts values it has seen counts these too.
    gauges_dropped: dict[str, int] = field(default_factory=dict)

    def copy(self) -> ArmTotals:
        """An independent copy (histograms are immutable and shared)."""
        return replace(
            self,
            cpu_percent=list(self.cpu_percent),
            mem_percent=list(self.mem_percent),
            gpu_percent=list(self.gpu_percent),
            gpu_mem_percent=list(self.gpu_mem_percent),
            missing=dict(self.missing),
            gauges_dropped=dict(self.gauges_dropped),
        )

    def add(self, window: EntityWindow) -> None:
        self.windows += 1
        for name in window.missing:
            self.missing[name] = self.missing.get(name, 0) + 1
        self.requests += window.requests
        self.errors_4xx += window.errors_4xx
        self.errors_5xx += window.errors_5xx
        if window.latency is not None:
            self.latency = (
                window.latency if self.latency is None else self.latency.merge(window.latency)
            )
        if window.queue_time is not None:
            self.queue_time = (
                window.queue_time
                if self.queue_time is None
                else self.queue_time.merge(window.queue_time)
            )
        if window.inference_latency is not None:
            self.inference_latency = (
                window.inference_latency
                if self.inference_latency is None
                else self.inference_latency.merge(window.inference_latency)
            )
        for name in GAUGE_FIELDS:
            value = getattr(window, name)
            if value is not None:
                getattr(self, name).append(value)
