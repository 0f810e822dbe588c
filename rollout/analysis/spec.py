"""What a policy asks the judges to check: metrics, checks (``CheckSpec``) and the ``Policy``.

Where this sits: a plan names a built-in policy (``policies/*.yaml``) or carries one inline;
``rollout.plan`` loads the mapping and validates it into a ``Policy`` here, and the engine hands
that ``Policy`` to ``rollout.analysis.judge`` at every tick. Pure data and validation, no I/O.

A check either compares the candidate with the baseline (``compare: baseline`` with
``max_ratio`` and/or ``max_increase``) or holds the candidate to an absolute level (``max`` or
``min``). Rates are written as fractions or percentages (``0.5%``), latencies in milliseconds,
gauges in percent (0-100).

What a tolerance means to the sequential judge (see ``rollout.analysis.sequential``):

* ``compare: baseline`` tests "no worse than the baseline" against "worse than the tolerance".
  The false-rollback budget protects the first (a candidate as good as the baseline is rolled
  back with probability at most its share of ``false_rollback_rate``); the missed-regression
  budget protects the second (a candidate beyond the tolerance is passed with probability at
  most ``missed_regression_rate``). In between, the evidence decides; in the long run the
  boundary sits near the middle of the two.
* With both ``max_ratio`` and ``max_increase`` the candidate is tolerated up to whichever is
  larger: ``max_ratio: 2, max_increase: 0.05%`` tolerates twice the baseline's error rate or
  0.05 points more. The increase keeps a near-zero baseline from turning three errors into a
  rollback, and lets a check pass when neither arm has any error at all.
* An absolute ``max``/``min`` is one boundary for both budgets: fail when confident the
  candidate is beyond it, pass when confident it is within it.

A check may instead read a team's own metric (``QueryCheck``): a PromQL ``query`` run
against the configured Prometheus, or a ``web`` source (an HTTP endpoint answering JSON), one
number per arm per look. Those are judged by ``rollout.analysis.queries``, not by the
sequential or threshold judge; ``Policy.metric_checks`` and ``Policy.query_checks`` split a
policy's ``checks`` by kind.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal, Protocol

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
    model_validator,
)

from rollout.units import format_duration, parse_duration, parse_fraction


class Metric(StrEnum):
    """The metric names a check may use (the left column of a policy's checks)."""

    ERROR_RATE = "error_rate"
    CLIENT_ERROR_RATE = "client_error_rate"
    LATENCY_P50 = "latency_p50_ms"
    LATENCY_P90 = "latency_p90_ms"
    LATENCY_P99 = "latency_p99_ms"
    QUEUE_TIME_P50 = "queue_time_p50_ms"
    QUEUE_TIME_P90 = "queue_time_p90_ms"
    QUEUE_TIME_P99 = "queue_time_p99_ms"
    REQUEST_COUNT = "request_count"
    CPU_USAGE = "cpu_usage_percentage"
    MEM_USAGE = "mem_usage_percentage"
    GPU_USAGE = "gpu_usage_percentage"
    GPU_MEMORY_USAGE = "gpu_memory_usage_percentage"
    INFERENCE_LATENCY_P50 = "inference_latency_p50_ms"
    INFERENCE_LATENCY_P90 = "inference_latency_p90_ms"
    INFERENCE_LATENCY_P99 = "inference_latency_p99_ms"


MetricKind = Literal["rate", "quantile", "count", "gauge"]


@dataclass(frozen=True)
class MetricInfo:
    """How a metric is read from ``ArmTotals`` and which checks make sense for it.

    ``source`` is the ``ArmTotals`` attribute: the event count for rates (over ``requests``),
    the histogram for quantiles, the gauge list for gauges.
    """

    kind: MetricKind
    source: str
    quantile: float | None = None
    relative: bool = False  # may be compared with the baseline
    unit: str = ""


METRICS: dict[Metric, MetricInfo] = {
    Metric.ERROR_RATE: MetricInfo("rate", "errors_5xx", relative=True),
    Metric.CLIENT_ERROR_RATE: MetricInfo("rate", "errors_4xx", relative=True),
    Metric.LATENCY_P50: MetricInfo("quantile", "latency", 0.50, relative=True, unit="ms"),
    Metric.LATENCY_P90: MetricInfo("quantile", "latency", 0.90, relative=True, unit="ms"),
    Metric.LATENCY_P99: MetricInfo("quantile", "latency", 0.99, relative=True, unit="ms"),
    # Queue time says more about capacity than about the model: absolute levels only.
    Metric.QUEUE_TIME_P50: MetricInfo("quantile", "queue_time", 0.50, unit="ms"),
    Metric.QUEUE_TIME_P90: MetricInfo("quantile", "queue_time", 0.90, unit="ms"),
    Metric.QUEUE_TIME_P99: MetricInfo("quantile", "queue_time", 0.99, unit="ms"),
    Metric.REQUEST_COUNT: MetricInfo("count", "requests"),
    Metric.CPU_USAGE: MetricInfo("gauge", "cpu_percent", unit="%"),
    Metric.MEM_USAGE: MetricInfo("gauge", "mem_percent", unit="%"),
    # GPU levels are judged like CPU and memory: a level the candidate must stay within.
    Metric.GPU_USAGE: MetricInfo("gauge", "gpu_percent", unit="%"),
    Metric.GPU_MEMORY_USAGE: MetricInfo("gauge", "gpu_mem_percent", unit="%"),
    # The model's own time, without queueing or the network: compared with the baseline's
    # like the round-trip latency.
    Metric.INFERENCE_LATENCY_P50: MetricInfo(
        "quantile", "inference_latency", 0.50, relative=True, unit="ms"
    ),
    Metric.INFERENCE_LATENCY_P90: MetricInfo(
        "quantile", "inference_latency", 0.90, relative=True, unit="ms"
    ),
    Metric.INFERENCE_LATENCY_P99: MetricInfo(
        "quantile", "inference_latency", 0.99, relative=True, unit="ms"
    ),
}

_MS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s)?\s*$")


def _milliseconds(value: object) -> float:
    """Milliseconds from ``250``, ``"250ms"`` or ``"1.5s"``."""
    if isinstance(value, bool):
        raise ValueError("a latency is a number of milliseconds or a string like '250ms'")
    if isinstance(value, int | float):
        result = float(value)
    elif isinstance(value, str) and (match := _MS.match(value)):
        result = float(match.group(1)) * (1000.0 if match.group(2) == "s" else 1.0)
    else:
        raise ValueError(f"{value!r} is not a latency: write milliseconds (250) or '1.5s'")
    if not math.isfinite(result) or result < 0:
        raise ValueError(f"a latency must be a non-negative number, got {value!r}")
    return result


def _percent_level(value: object) -> float:
    """A gauge level in percent: ``90`` and ``"90%"`` both mean 90 %."""
    if isinstance(value, str) and value.strip().endswith("%"):
        value = value.strip()[:-1]
    if isinstance(value, bool):
        raise ValueError("a gauge level is a number of percent like 90 or '90%'")
    try:
        result = float(value)  # type: ignore[arg-type]  # str or number; errors become ours
    except (TypeError, ValueError):
        raise ValueError(
            f"{value!r} is not a gauge level: write percent like 90 or '90%'"
        ) from None
    if not math.isfinite(result) or result < 0:
        raise ValueError(f"a gauge level must be a non-negative number, got {value!r}")
    return result


def _rate(value: object) -> float:
    result = parse_fraction(value)
    if result > 1.0:
        raise ValueError(
            f"{value!r} is more than 100 %: write a rate as a fraction (0.02) or a "
            "percentage ('2%')"
        )
    return result


def _count(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("a request count is a number")
    try:
        result = float(value)
    except ValueError:
        raise ValueError(f"{value!r} is not a request count") from None
    if not math.isfinite(result) or result < 0:
        raise ValueError(f"a request count must be a non-negative number, got {value!r}")
    return result


_LEVEL_PARSERS = {
    "rate": _rate, "quantile": _milliseconds, "count": _count, "gauge": _percent_level
}


class _Tolerances(Protocol):
    @property
    def compare(self) -> Literal["baseline"] | None: ...
    @property
    def max_ratio(self) -> float | None: ...
    @property
    def max_increase(self) -> float | None: ...
    @property
    def max_level(self) -> float | None: ...
    @property
    def min_level(self) -> float | None: ...


def _tolerance_shape(check: _Tolerances, name: str) -> None:
    """A check is relative (``compare: baseline`` with ``max_ratio`` and/or
    ``max_increase``) or absolute (one of ``max``, ``min``): ``ValueError`` otherwise."""
    relative = check.max_ratio is not None or check.max_increase is not None
    absolute = check.max_level is not None or check.min_level is not None
    if check.compare == "baseline":
        if not relative:
            raise ValueError("compare: baseline needs max_ratio and/or max_increase")
        if absolute:
            raise ValueError(
                "a check is either relative (compare: baseline) or absolute (max/min): "
                "write two checks"
            )
        return
    if relative:
        raise ValueError("max_ratio and max_increase need compare: baseline")
    if not absolute:
        raise ValueError(f"{name} needs max or min (or compare: baseline)")
    if check.max_level is not None and check.min_level is not None:
        raise ValueError("give max or min, not both: write two checks")


class CheckSpec(BaseModel):
    """One check of a policy, e.g. ``{metric: error_rate, compare: baseline, max_ratio: 2}``.

    ``max``/``min`` are absolute levels in the metric's unit (rates as fractions). For
    ``compare: baseline``, ``max_ratio`` (> 1) and ``max_increase`` (> 0, in the metric's unit)
    are the tolerances. ``on_missing: skip`` lets a check whose series the workspace does not
    export at all stop blocking a pass (Free Edition has no latency histograms); the default,
    ``hold``, keeps the rollout waiting for the data.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    metric: Metric
    compare: Literal["baseline"] | None = None
    max_ratio: float | None = Field(default=None, gt=1.0)
    max_increase: float | None = Field(default=None, gt=0.0)
    max_level: float | None = Field(default=None, alias="max")
    min_level: float | None = Field(default=None, alias="min")
    on_missing: Literal["hold", "skip"] = "hold"

    @model_validator(mode="before")
    @classmethod
    def _units(cls, data: Any) -> Any:
        """Read levels in the metric's own unit ("0.5%" for a rate, "250ms" for a latency)."""
        if not isinstance(data, dict):
            return data
        try:
            info = METRICS[Metric(str(data.get("metric")))]
        except ValueError:
            return data  # the field validator reports the unknown metric with the known ones
        parse = _LEVEL_PARSERS[info.kind]
        converted = dict(data)
        for key in ("max", "min", "max_level", "min_level", "max_increase"):
            if converted.get(key) is not None:
                converted[key] = parse(converted[key])
        return converted

    @model_validator(mode="after")
    def _shape(self) -> CheckSpec:
        info = METRICS[self.metric]
        if self.compare == "baseline" and not info.relative:
            raise ValueError(
                f"{self.metric} cannot be compared with the baseline: give it an absolute "
                "max or min"
            )
        _tolerance_shape(self, f"the {self.metric} check")
        if self.compare != "baseline":
            if self.min_level is not None and info.kind in ("rate", "quantile"):
                raise ValueError(
                    f"min on {self.metric} is not a regression check: use max, or a "
                    "request_count min"
                )
            if self.max_level is not None and info.kind == "count":
                raise ValueError("request_count takes min (requests the candidate must serve)")
            if self.max_level is not None and info.kind == "rate" and self.max_level >= 1.0:
                raise ValueError(f"max on {self.metric} must be below 100 %")
        return self

    @property
    def info(self) -> MetricInfo:
        return METRICS[self.metric]

    def tolerated(self, value: float) -> float:
        """The largest candidate value a relative check tolerates when the baseline's is
        ``value``: ``max(value x max_ratio, value + max_increase)``."""
        limits = []
        if self.max_ratio is not None:
            limits.append(value * self.max_ratio)
        if self.max_increase is not None:
            limits.append(value + self.max_increase)
        return max(limits, default=value)

    @property
    def statistical(self) -> bool:
        """Whether the check runs a test that can fail, and so takes a share of the budget."""
        return self.info.kind in ("rate", "quantile")

    def describe(self) -> str:
        """A canonical one-line form, also the check's key in persisted judge state."""
        return _describe(self)

    def _describe_uncached(self) -> str:
        unit = self.info.unit

        def level(value: float) -> str:
            if self.info.kind == "rate":
                return f"{value * 100:g}%"
            return f"{value:g}{unit}"

        if self.compare == "baseline":
            parts = []
            if self.max_ratio is not None:
                parts.append(f"max_ratio {self.max_ratio:g}")
            if self.max_increase is not None:
                parts.append(f"max_increase {level(self.max_increase)}")
            return f"{self.metric} vs baseline: {', '.join(parts)}"
        if self.max_level is not None:
            return f"{self.metric} max {level(self.max_level)}"
        return f"{self.metric} min {level(self.min_level or 0.0)}"


class ControlCheck(CheckSpec):
    """A ``compare: baseline`` check turned into levels from a fixed control sample.

    Built by ``rollout.analysis.control`` for a blue/green bake, never read from a plan. The
    control's rate is known only up to its sampling error, so the two sides of the test get
    different levels: the candidate fails when it is confidently above ``fail_level`` (an
    upper confidence bound of the control's rate: worse than the control), and passes when it
    is confidently below ``max`` (the tolerance applied to a lower confidence bound: within
    the tolerance of any control rate the warm-up allows). ``control_share`` of each error
    budget pays for those bounds; the sequential test spends the rest.
    """

    fail_level: float | None = None
    control_share: float = Field(default=0.5, ge=0.0, lt=1.0)
    source: str = "warm-up control"

    def _describe_uncached(self) -> str:
        def level(value: float) -> str:
            if self.info.kind == "rate":
                return f"{value * 100:.4g}%"
            return f"{value:.4g}{self.info.unit}"

        text = f"{self.metric} vs {self.source}: pass below {level(self.max_level or 0.0)}"
        if self.fail_level is not None:
            text += f", fail above {level(self.fail_level)}"
        return text


class CeilingCheck(CheckSpec):
    """The policy's ``error_ceiling`` as a check: an absolute 5xx level judged on every window
    the candidate served in a split, its warm-up included. Built by the sequential judge."""

    @classmethod
    def at(cls, level: float) -> CeilingCheck:
        return cls(metric=Metric.ERROR_RATE, max_level=level)

    def _describe_uncached(self) -> str:
        return f"error_rate ceiling {(self.max_level or 0.0) * 100:g}% (warm-up included)"


@functools.lru_cache(maxsize=1024)
def _describe(spec: CheckSpec) -> str:
    # Cached: the judges key their state by it at every look (specs are frozen, so hashable).
    return spec._describe_uncached()


PLACEHOLDERS = ("endpoint", "candidate", "baseline", "window")
"""The names a query or a web URL may hold as ``{{ name }}`` (``rollout.analysis.queries``)."""

PLACEHOLDER_PATTERN = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
"""``{{ name }}`` in a query or URL; group 1 is the name."""
_SELECTOR = re.compile(r"^\$((\.[A-Za-z_][A-Za-z0-9_-]*)|(\[\d+\]))+$")


def placeholders_in(text: str) -> list[str]:
    """The ``{{ name }}`` placeholders ``text`` holds, in order."""
    return [match.group(1) for match in PLACEHOLDER_PATTERN.finditer(text)]


def _known_placeholders(text: str, what: str) -> str:
    unknown = sorted({name for name in placeholders_in(text) if name not in PLACEHOLDERS})
    if unknown:
        raise ValueError(
            f"unknown placeholder(s) in the {what}: {', '.join(unknown)}; known: "
            + ", ".join(f"{{{{ {name} }}}}" for name in PLACEHOLDERS)
        )
    return text


class WebSource(BaseModel):
    """Where a ``web`` check reads its number: ``GET url`` (placeholders rendered per arm)
    answering JSON, ``selector`` picking the number (``$.data.value``, ``$.items[0].score``:
    object keys after dots, list indexes in brackets, nothing else)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(min_length=1)
    headers: dict[str, str] = Field(default_factory=dict)
    selector: str

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("a web check's url starts with http:// or https://")
        return _known_placeholders(value, "url")

    @field_validator("selector")
    @classmethod
    def _selector(cls, value: str) -> str:
        if not _SELECTOR.match(value):
            raise ValueError(
                f"{value!r} is not a selector: write $ followed by .key and [index] parts, "
                "e.g. $.data.value or $.items[0].score"
            )
        return value


class QueryCheck(BaseModel):
    """A check on a team's own metric: one number per arm per look.

    ``query`` (PromQL, run against ``ROLLOUT_PROMETHEUS_URL``) or ``web`` (an HTTP endpoint
    answering JSON) says where the number comes from; both may hold ``{{ endpoint }}``,
    ``{{ candidate }}``, ``{{ baseline }}`` and ``{{ window }}``. The query is run once per
    arm, ``{{ candidate }}`` and ``{{ baseline }}`` both standing for that arm's served
    entity (write ``{{ candidate }}`` for "this arm"; ``{{ baseline }}`` always names the
    baseline). ``compare: baseline`` with ``max_ratio`` (> 1) and/or ``max_increase`` (> 0)
    holds the candidate's value to the baseline's; ``max``/``min`` to an absolute level.
    ``direction: higher`` says higher values are better (a success rate, a score): the
    tolerances then apply downwards. ``name`` labels the check in verdicts.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str | None = Field(default=None, min_length=1, max_length=100)
    query: str | None = Field(default=None, min_length=1)
    web: WebSource | None = None
    compare: Literal["baseline"] | None = None
    max_ratio: float | None = Field(default=None, gt=1.0)
    max_increase: float | None = Field(default=None, gt=0.0)
    max_level: float | None = Field(default=None, alias="max")
    min_level: float | None = Field(default=None, alias="min")
    direction: Literal["lower", "higher"] = "lower"
    on_missing: Literal["hold", "skip"] = "hold"

    @field_validator("query")
    @classmethod
    def _query(cls, value: str | None) -> str | None:
        return None if value is None else _known_placeholders(value, "query")

    @model_validator(mode="after")
    def _shape(self) -> QueryCheck:
        if (self.query is None) == (self.web is None):
            raise ValueError("a check on your own metric takes query (PromQL) or web, not both")
        _tolerance_shape(self, "the check")
        return self

    @property
    def source(self) -> Literal["prometheus", "web"]:
        return "prometheus" if self.query is not None else "web"

    @property
    def template(self) -> str:
        """The query, or the web URL, before its placeholders are filled in."""
        return self.query if self.query is not None else (self.web.url if self.web else "")

    @property
    def higher_is_better(self) -> bool:
        return self.direction == "higher"

    def tolerated(self, baseline: float) -> float:
        """The worst candidate value a relative check tolerates against ``baseline``: the
        more tolerant of ``max_ratio`` and ``max_increase``, upwards (downwards when higher
        is better)."""
        if self.higher_is_better:
            lows = []
            if self.max_ratio is not None:
                lows.append(baseline / self.max_ratio)
            if self.max_increase is not None:
                lows.append(baseline - self.max_increase)
            return min(lows, default=baseline)
        highs = []
        if self.max_ratio is not None:
            highs.append(baseline * self.max_ratio)
        if self.max_increase is not None:
            highs.append(baseline + self.max_increase)
        return max(highs, default=baseline)

    def describe(self) -> str:
        """A canonical one-line form, the check's key in the judge's state and verdicts."""
        label = self.name or (
            f"query {self.query}" if self.query is not None else f"web {self.template}"
        )
        if self.compare == "baseline":
            parts = []
            if self.max_ratio is not None:
                parts.append(f"max_ratio {self.max_ratio:g}")
            if self.max_increase is not None:
                parts.append(f"max_increase {self.max_increase:g}")
            higher = ", higher is better" if self.higher_is_better else ""
            return f"{label} vs baseline: {', '.join(parts)}{higher}"
        if self.max_level is not None:
            return f"{label} max {self.max_level:g}"
        return f"{label} min {self.min_level or 0.0:g}"


METRIC_CHECK_TAG = "metric check"
QUERY_CHECK_TAG = "own metric check"
"""The union's tags; ``rollout.policies.policy_errors`` leaves them out of field paths."""


def _check_kind(value: Any) -> str:
    if isinstance(value, QueryCheck) or (
        isinstance(value, dict) and ("query" in value or "web" in value)
    ):
        return QUERY_CHECK_TAG
    return METRIC_CHECK_TAG


AnyCheck = Annotated[
    Annotated[CheckSpec, Tag(METRIC_CHECK_TAG)] | Annotated[QueryCheck, Tag(QUERY_CHECK_TAG)],
    Discriminator(_check_kind),
]


class Policy(BaseModel):
    """An analysis policy: which judge, which checks, and the error budgets.

    ``false_rollback_rate`` is the sequential judge's budget for rolling back a candidate that
    is no worse than its baseline (and within its absolute levels), over the whole rollout: all
    looks, all steps, all checks. ``missed_regression_rate`` bounds the chance that a candidate
    worse than a check's tolerance passes that check. ``advance`` says when an intermediate step
    may move on at the end of its bake: ``lean`` when no check leans towards a regression,
    ``pass`` only on a pass; the step whose advance promotes the candidate always needs a pass.
    ``failure_threshold`` is the threshold judge's number of failed intervals before rollback
    (Flagger's ``threshold``). ``on_no_data``, ``deadline`` and ``on_deadline`` are read by the
    engine, not the judges.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "inline"
    description: str | None = None
    judge: Literal["sequential", "threshold"] = "sequential"
    min_requests: int = Field(default=200, ge=0)
    false_rollback_rate: float = 0.01
    missed_regression_rate: float = 0.05
    advance: Literal["lean", "pass"] = "lean"
    failure_threshold: int = Field(default=5, ge=1)
    checks: tuple[AnyCheck, ...] = Field(min_length=1)
    on_no_data: Literal["hold", "rollback"] = "hold"
    deadline: float | None = None  # seconds
    on_deadline: Literal["rollback", "hold"] = "rollback"
    # Real traffic (see ``rollout.analysis.sequential``, "Real traffic"):
    warmup_windows: int = Field(
        default=3,
        ge=0,
        le=60,
        description="Metric windows after every split change that are served but not scored "
        "(cold replicas); it ends early at the first window whose latency matches the "
        "baseline's. A plan step's warmup overrides it and runs its length.",
    )
    error_ceiling: float | None = Field(
        default=0.2,
        description="A 5xx rate that rolls the candidate back in any window of a split, "
        "warm-up included: a gross failure is not waited out.",
    )
    window_cv: float = Field(
        default=0.5,
        ge=0.0,
        le=10.0,
        description="Variation of the candidate's per-window rates beyond binomial noise "
        "(coefficient of variation) that the sequential judge always allows for; more is "
        "estimated from the data.",
    )

    @field_validator("error_ceiling", mode="before")
    @classmethod
    def _ceiling(cls, value: object) -> float | None:
        if value is None:
            return None
        result = parse_fraction(value)
        if not 0.0 < result < 1.0:
            raise ValueError(f"error_ceiling must be between 0 and 100 %, got {value!r}")
        return result

    @field_validator("window_cv", mode="before")
    @classmethod
    def _window_cv(cls, value: object) -> float:
        return parse_fraction(value)

    @field_validator("false_rollback_rate", "missed_regression_rate", mode="before")
    @classmethod
    def _budget(cls, value: object) -> float:
        result = parse_fraction(value)
        if not 0.0 < result < 0.5:
            raise ValueError(f"an error budget must be between 0 and 50 %, got {value!r}")
        return result

    @field_validator("deadline", mode="before")
    @classmethod
    def _deadline(cls, value: object) -> float | None:
        return None if value is None else parse_duration(value)

    @model_validator(mode="after")
    def _distinct_checks(self) -> Policy:
        keys = [check.describe() for check in self.checks]  # both kinds
        duplicates = sorted({key for key in keys if keys.count(key) > 1})
        if duplicates:
            raise ValueError(f"duplicate checks: {', '.join(duplicates)}")
        return self

    @property
    def metric_checks(self) -> tuple[CheckSpec, ...]:
        """The checks on the endpoint's exported metrics (the sequential/threshold judge's)."""
        return tuple(c for c in self.checks if isinstance(c, CheckSpec))

    @property
    def query_checks(self) -> tuple[QueryCheck, ...]:
        """The checks on a team's own metrics (``rollout.analysis.queries``)."""
        return tuple(c for c in self.checks if isinstance(c, QueryCheck))

    @property
    def statistical_checks(self) -> int:
        """Tests that can fail and so share the false-rollback budget (the ceiling is one)."""
        ceiling = 1 if self.error_ceiling is not None and self.judge == "sequential" else 0
        return sum(1 for check in self.metric_checks if check.statistical) + ceiling

    @property
    def alpha_per_check(self) -> float:
        """Bonferroni: each statistical check may spend an equal share of the budget.

        Each check's test is always valid over the whole rollout, so no share is set aside
        for looks or steps: the union over checks is the only split needed.
        """
        return self.false_rollback_rate / max(1, self.statistical_checks)

    def describe(self) -> str:
        deadline = "none" if self.deadline is None else format_duration(self.deadline)
        return (
            f"{self.name} ({self.judge} judge, false_rollback_rate "
            f"{self.false_rollback_rate * 100:g}%, min_requests {self.min_requests}, "
            f"deadline {deadline}, {len(self.checks)} checks)"
        )
