"""Telemetry: structured logs and the controller's own Prometheus metrics.

Where this sits: every command calls ``configure_logging`` once at start with
``settings.log``; every module logs through ``structlog.get_logger(...)`` with key-value
pairs, one line per decision with its numbers. JSON lines when the output is not a terminal
(what log shippers want), a readable console otherwise. The daemon builds one
``CollectorRegistry`` with ``ControllerMetrics`` (counters fed by the runner, the serving
client, the alert dispatcher and the scheduler), ``RolloutStateCollector`` (per-rollout
gauges read from the store when Prometheus scrapes ``/metrics``) and ``OwnershipCollector``
(which rollouts this replica drives, from its ``Owner``).
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from rollout.clock import Clock
from rollout.metrics.model import Histogram as HistogramData
from rollout.settings import LogSettings

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def configure_logging(settings: LogSettings, *, stream: Any = None) -> None:
    """Set up structlog for this process: level, format, and where lines go."""
    out = stream if stream is not None else sys.stderr
    as_json = settings.format == "json" or (
        settings.format == "auto" and not (hasattr(out, "isatty") and out.isatty())
    )
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer()
        if as_json
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[settings.level]),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


# ---- the controller's own metrics (GET /metrics) --------------------------------------------

# Rollouts that ended longer ago than this no longer appear in the per-rollout gauges.
FINISHED_VISIBLE_SECONDS = 24 * 3600.0
# Of the finished rollouts, at most this many (the newest created) appear in the gauges.
FINISHED_SHOWN = 200
# Active rollouts are read a page at a time; there is one per endpoint at most, so this bound
# only protects a scrape from a runaway store.
ACTIVE_PAGE = 500
MAX_ACTIVE_SERIES = 20_000
DURATION_BUCKETS = (60, 300, 600, 1200, 1800, 3600, 7200, 14400, 28800, 86400)


class ControllerMetrics:
    """Counters and histograms the running controller updates as things happen.

    Passed explicitly to the pieces that report (runner, serving client, alert dispatcher,
    reconciler), all registering into one ``CollectorRegistry`` that ``/metrics`` exposes.
    Per-rollout gauges are not kept here: ``RolloutStateCollector`` computes them from the
    store at scrape time, so they are right after a restart and identical on every replica.
    """

    def __init__(self, registry: CollectorRegistry) -> None:
        self.verdicts = Counter(
            "rollout_verdicts",
            "Verdicts of the analysis, by endpoint and outcome.",
            ["endpoint", "outcome"],
            registry=registry,
        )
        self.rollbacks = Counter(
            "rollout_rollbacks",
            "Rollouts rolled back, by endpoint and cause.",
            ["endpoint", "reason"],
            registry=registry,
        )
        self.promotions = Counter(
            "rollout_promotions",
            "Rollouts whose candidate was promoted to 100 %.",
            ["endpoint"],
            registry=registry,
        )
        self.duration = Histogram(
            "rollout_duration_seconds",
            "Time from submission to the end of a rollout.",
            ["outcome"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.serving_requests = Counter(
            "rollout_serving_requests",
            "HTTP requests to the Databricks serving API, by call and status code "
            "('error' when no answer came).",
            ["call", "code"],
            registry=registry,
        )
        self.serving_seconds = Histogram(
            "rollout_serving_request_seconds",
            "Latency of requests to the serving API.",
            ["call"],
            registry=registry,
        )
        self.alerts = Counter(
            "rollout_alerts",
            "Alert deliveries, by channel type and outcome.",
            ["channel", "outcome"],
            registry=registry,
        )
        self.reconcile_lag = Gauge(
            "rollout_reconcile_lag_seconds",
            "At the last scan, how long the most overdue rollout had waited for its reconcile "
            "(0 when none was waiting).",
            registry=registry,
        )

    def on_serving_response(self, call: str, status: int | None, seconds: float) -> None:
        self.serving_requests.labels(call, "error" if status is None else str(status)).inc()
        self.serving_seconds.labels(call).observe(seconds)

    def on_alert(self, channel: str, outcome: str) -> None:
        self.alerts.labels(channel, outcome).inc()

    def on_lag(self, seconds: float) -> None:
        self.reconcile_lag.set(seconds)

    def on_decision(
        self,
        endpoint: str,
        created_at: float,
        now: float,
        events: Sequence[tuple[str, str | None, dict[str, Any]]],
        cause: str | None,
    ) -> None:
        """Count what one committed decision did: ``events`` as (kind, to_phase, data)."""
        for kind, to_phase, data in events:
            if kind == "verdict":
                outcome = str(data.get("verdict", {}).get("outcome", "inconclusive"))
                self.verdicts.labels(endpoint, outcome).inc()
            if to_phase in ("succeeded", "rolled_back", "aborted", "failed"):
                self.duration.labels(to_phase).observe(max(0.0, now - created_at))
            if to_phase == "succeeded":
                self.promotions.labels(endpoint).inc()
            elif to_phase == "rolled_back":
                self.rollbacks.labels(endpoint, cause or "unknown").inc()


class ArmRow(Protocol):
    """One arm's sums over the current split (``rollout.store.model.ArmSummary`` is one)."""

    @property
    def requests(self) -> float: ...
    @property
    def errors_5xx(self) -> float: ...
    @property
    def latency(self) -> dict[str, Any] | None: ...


class RolloutRow(Protocol):
    """A rollout as the gauges read it (``rollout.store.model.RolloutSummary`` is one): a few
    fields, never the plan or the state, so a scrape's cost does not grow with history."""

    @property
    def id(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def endpoint(self) -> str: ...
    @property
    def phase(self) -> str: ...
    @property
    def strategy(self) -> str: ...
    @property
    def candidate(self) -> str: ...
    @property
    def baseline(self) -> str | None: ...
    @property
    def step(self) -> int: ...
    @property
    def candidate_weight(self) -> int: ...
    @property
    def started_at(self) -> float: ...
    @property
    def deadline_seconds(self) -> float | None: ...
    @property
    def candidate_arm(self) -> ArmRow: ...
    @property
    def control_arm(self) -> ArmRow: ...


@dataclass(frozen=True)
class StateReading:
    """What one scrape reads from the store: the rollouts shown (every active one and the
    recently finished) and the outbox backlog."""

    rollouts: Sequence[RolloutRow]
    pending_alerts: int


# Reads the store at scrape time; None when it cannot be read (the gauges are then absent).
# The daemon builds it over its store, so that telemetry depends on no store module.
StateReader = Callable[[], StateReading | None]


class TextFamilies(Protocol):
    """Gauge families that render their own exposition text (``expose`` appends it): per
    rollout there can be thousands of samples, and building prometheus_client objects for
    each, then formatting them, took most of a scrape."""

    def render_text(self, openmetrics: bool = False) -> str: ...


def expose(
    registry: CollectorRegistry, rendered: Sequence[TextFamilies], accept: str
) -> tuple[bytes, str]:
    """What ``/metrics`` answers: the registry's metrics in the format ``accept`` asks for
    (Prometheus text, or OpenMetrics), then the families that render themselves; the
    content type."""
    encoder, content_type = choose_encoder(accept)
    head = encoder(registry)
    openmetrics = content_type.startswith("application/openmetrics-text")
    body = "".join(families.render_text(openmetrics) for families in rendered).encode()
    if openmetrics:
        return head.removesuffix(b"# EOF\n") + body + b"# EOF\n", content_type
    return head + body, content_type


@dataclass(frozen=True)
class _Family:
    name: str
    help: str
    labels: tuple[str, ...]

    def metric(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(self.name, self.help, labels=list(self.labels))

    def header(self, openmetrics: bool) -> str:
        text = self.help.replace("\\", "\\\\").replace("\n", "\\n")
        if openmetrics:
            text = text.replace('"', '\\"')
        return f"# HELP {self.name} {text}\n# TYPE {self.name} gauge\n"


def _label(value: str) -> str:
    # Label values escape backslash, newline and double quote (both text formats).
    if "\\" in value or "\n" in value or '"' in value:
        value = value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def _render(
    families: Sequence[_Family], samples: Sequence[Sequence[str]], openmetrics: bool
) -> str:
    """Families with their sample lines (``samples[i]`` belongs to ``families[i]``)."""
    parts: list[str] = []
    for family, lines in zip(families, samples, strict=True):
        parts.append(family.header(openmetrics))
        parts.extend(lines)
    return "".join(parts)


def _go_float(value: float) -> str:
    """A sample value as prometheus_client writes it (Go's float formatting)."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    text = repr(float(value))
    dot = text.find(".")
    # Go switches to exponents sooner than Python (only positive values need it here).
    if value > 0 and dot > 6:
        mantissa = f"{text[0]}.{text[1:dot]}{text[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _sample(name: str, labels: str, value: float) -> str:
    return f"{name}{{{labels}}} {_go_float(value)}\n"


_OWNED = _Family(
    "rollout_owned", "1 for each rollout this replica drives (holds the lease of).", ("rollout",)
)
_OWNED_COUNT = _Family("rollout_owned_rollouts", "How many rollouts this replica drives.", ())
_REPLICAS = _Family(
    "rollout_replicas",
    "Live controller replicas on this store, as this replica last counted them.",
    (),
)


class OwnershipCollector(Collector):
    """Which rollouts this replica drives, read from its ``Owner`` at scrape time.

    Unlike the per-rollout gauges, these differ between replicas: each shows its own share.
    A ``Collector`` for a registry, and ``TextFamilies`` for ``expose``: the same samples.
    """

    def __init__(self, owned: Callable[[], list[str]], replicas: Callable[[], int]) -> None:
        self.owned = owned
        self.replicas = replicas

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        owned = self.owned()
        per_rollout = _OWNED.metric()
        for rollout_id in owned:
            per_rollout.add_metric([rollout_id], 1.0)
        yield per_rollout
        yield GaugeMetricFamily(_OWNED_COUNT.name, _OWNED_COUNT.help, value=len(owned))
        yield GaugeMetricFamily(_REPLICAS.name, _REPLICAS.help, value=self.replicas())

    def render_text(self, openmetrics: bool = False) -> str:
        owned = self.owned()
        return _render(
            (_OWNED, _OWNED_COUNT, _REPLICAS),
            (
                [f'rollout_owned{{rollout="{_label(r)}"}} 1.0\n' for r in owned],
                [f"rollout_owned_rollouts {_go_float(len(owned))}\n"],
                [f"rollout_replicas {_go_float(self.replicas())}\n"],
            ),
            openmetrics,
        )


_INFO = _Family(
    "rollout_info",
    "One per rollout: its endpoint, candidate, baseline, strategy and phase.",
    ("rollout", "endpoint", "candidate", "baseline", "strategy", "phase"),
)
_WEIGHT = _Family(
    "rollout_candidate_weight_percent",
    "Traffic percentage the candidate serves.",
    ("rollout", "endpoint"),
)
_STEP = _Family(
    "rollout_step",
    "The rollout's current step, counted from 1 (as get, events and the page number it).",
    ("rollout", "endpoint"),
)
_ERROR_RATE = _Family(
    "rollout_observed_error_rate",
    "5xx / requests of each arm over the windows of the current split.",
    ("rollout", "endpoint", "arm"),
)
_LATENCY = _Family(
    "rollout_observed_latency_p99_ms",
    "p99 latency of each arm over the windows of the current split, from histograms.",
    ("rollout", "endpoint", "arm"),
)
_STARTED = _Family(
    "rollout_started_timestamp_seconds",
    "When the rollout was submitted, in seconds since the Unix epoch.",
    ("rollout", "endpoint"),
)
_DEADLINE = _Family(
    "rollout_deadline_timestamp_seconds",
    "When the rollout's policy deadline passes (only for policies with a deadline).",
    ("rollout", "endpoint"),
)
_PENDING = _Family("rollout_alerts_pending", "Alerts in the outbox not yet delivered.", ())
# The per-rollout families in exposition order (the pending count comes last).
_PER_ROLLOUT = (_INFO, _WEIGHT, _STEP, _ERROR_RATE, _LATENCY, _STARTED, _DEADLINE)


def _rollout_samples(summary: RolloutRow) -> tuple[list[tuple[list[str], float]], ...]:
    """One rollout's samples per family of ``_PER_ROLLOUT``: (label values, value)."""
    labels = [summary.id, summary.endpoint]
    info = [*labels, summary.candidate, summary.baseline or "", summary.strategy, summary.phase]
    error_rate: list[tuple[list[str], float]] = []
    latency: list[tuple[list[str], float]] = []
    for arm, totals in (("candidate", summary.candidate_arm), ("baseline", summary.control_arm)):
        if totals.requests > 0:
            error_rate.append(([*labels, arm], totals.errors_5xx / totals.requests))
        p99 = _p99(totals.latency)
        if p99 is not None:
            latency.append(([*labels, arm], p99))
    deadline = (
        [(labels, summary.started_at + summary.deadline_seconds)]
        if summary.deadline_seconds is not None
        else []
    )
    return (
        [(info, 1.0)],
        [(labels, float(summary.candidate_weight))],
        [(labels, float(summary.step) + 1.0)],
        error_rate,
        latency,
        [(labels, summary.started_at)],
        deadline,
    )


class RolloutStateCollector(Collector):
    """Per-rollout gauges read from the store at scrape time, from summaries only.

    The reader (``rollout.daemon.state_reader``) hands every active rollout, however many
    there are (a page of ``ACTIVE_PAGE`` at a time, up to ``MAX_ACTIVE_SERIES``), plus the
    newest ``FINISHED_SHOWN`` finished rollouts that ended within ``FINISHED_VISIBLE_SECONDS``,
    as summaries: a scrape never decodes a rollout's plan or state, so its cost grows with
    the number of rollouts shown, not with their history.

    A ``Collector`` for a registry, and ``TextFamilies`` for ``expose`` (the daemon's
    ``/metrics``): the same samples, the text rendered directly, and each rollout's lines
    kept from one scrape to the next while its version (and so its summary) is unchanged.
    """

    def __init__(self, read: StateReader, clock: Clock) -> None:
        self.read = read
        self.clock = clock
        # rollout id -> (version, its sample lines per family); replaced whole at every
        # scrape, so concurrent scrapes never see it half built. A commit bumps the version.
        self._lines: dict[str, tuple[int, tuple[list[str], ...]]] = {}

    def describe(self) -> Iterable[Metric]:
        # Describing without collecting keeps registration free of store reads.
        return []

    def collect(self) -> Iterable[Metric]:
        reading = self.read()
        if reading is None:
            # A scrape must not fail because the store blinked; the gauges are just absent.
            return
        metrics = [family.metric() for family in _PER_ROLLOUT]
        for summary in reading.rollouts:
            for metric, samples in zip(metrics, _rollout_samples(summary), strict=True):
                for labels, value in samples:
                    metric.add_metric(labels, value)
        pending = _PENDING.metric()
        pending.add_metric([], float(reading.pending_alerts))
        yield from (*metrics, pending)

    def render_text(self, openmetrics: bool = False) -> str:
        reading = self.read()
        if reading is None:
            return ""
        previous = self._lines
        kept: dict[str, tuple[int, tuple[list[str], ...]]] = {}
        per_family: list[list[str]] = [[] for _ in _PER_ROLLOUT]
        for summary in reading.rollouts:
            cached = previous.get(summary.id)
            if cached is not None and cached[0] == summary.version:
                lines = cached[1]
            else:
                lines = tuple(
                    [
                        _sample(family.name, _labels(family, labels), value)
                        for labels, value in samples
                    ]
                    for family, samples in zip(
                        _PER_ROLLOUT, _rollout_samples(summary), strict=True
                    )
                )
            kept[summary.id] = (summary.version, lines)
            for into, rows in zip(per_family, lines, strict=True):
                into.extend(rows)
        self._lines = kept
        return _render(
            (*_PER_ROLLOUT, _PENDING),
            (*per_family, [f"rollout_alerts_pending {_go_float(reading.pending_alerts)}\n"]),
            openmetrics,
        )


def _labels(family: _Family, values: Sequence[str]) -> str:
    return ",".join(
        f'{name}="{_label(value)}"' for name, value in zip(family.labels, values, strict=True)
    )


def _p99(histogram: dict[str, Any] | None) -> float | None:
    if not histogram:
        return None
    try:
        return HistogramData.from_dict(histogram).quantile(0.99)
    except (KeyError, TypeError, ValueError):
        # A histogram of a shape this code does not read: the gauge is absent, not the scrape.
        return None
