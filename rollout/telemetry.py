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
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
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


class OwnershipCollector(Collector):
    """Which rollouts this replica drives, read from its ``Owner`` at scrape time.

    Unlike the per-rollout gauges, these differ between replicas: each shows its own share.
    """

    def __init__(self, owned: Callable[[], list[str]], replicas: Callable[[], int]) -> None:
        self.owned = owned
        self.replicas = replicas

    def describe(self) -> Iterable[Metric]:
        return []

    def collect(self) -> Iterable[Metric]:
        owned = self.owned()
        per_rollout = GaugeMetricFamily(
            "rollout_owned",
            "1 for each rollout this replica drives (holds the lease of).",
            labels=["rollout"],
        )
        for rollout_id in owned:
            per_rollout.add_metric([rollout_id], 1.0)
        yield per_rollout
        yield GaugeMetricFamily(
            "rollout_owned_rollouts", "How many rollouts this replica drives.", value=len(owned)
        )
        yield GaugeMetricFamily(
            "rollout_replicas",
            "Live controller replicas on this store, as this replica last counted them.",
            value=self.replicas(),
        )


class RolloutStateCollector(Collector):
    """Per-rollout gauges read from the store at scrape time, from summaries only.

    The reader (``rollout.daemon.state_reader``) hands every active rollout, however many
    there are (a page of ``ACTIVE_PAGE`` at a time, up to ``MAX_ACTIVE_SERIES``), plus the
    newest ``FINISHED_SHOWN`` finished rollouts that ended within ``FINISHED_VISIBLE_SECONDS``,
    as summaries: a scrape never decodes a rollout's plan or state, so its cost grows with
    the number of rollouts shown, not with their history.
    """

    def __init__(self, read: StateReader, clock: Clock) -> None:
        self.read = read
        self.clock = clock

    def describe(self) -> Iterable[Metric]:
        # Describing without collecting keeps registration free of store reads.
        return []

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "rollout_info",
            "One per rollout: its endpoint, candidate, baseline, strategy and phase.",
            labels=["rollout", "endpoint", "candidate", "baseline", "strategy", "phase"],
        )
        weight = GaugeMetricFamily(
            "rollout_candidate_weight_percent",
            "Traffic percentage the candidate serves.",
            labels=["rollout", "endpoint"],
        )
        step = GaugeMetricFamily(
            "rollout_step",
            "The rollout's current step, counted from 1 (as get, events and the page number it).",
            labels=["rollout", "endpoint"],
        )
        error_rate = GaugeMetricFamily(
            "rollout_observed_error_rate",
            "5xx / requests of each arm over the windows of the current split.",
            labels=["rollout", "endpoint", "arm"],
        )
        latency = GaugeMetricFamily(
            "rollout_observed_latency_p99_ms",
            "p99 latency of each arm over the windows of the current split, from histograms.",
            labels=["rollout", "endpoint", "arm"],
        )
        started = GaugeMetricFamily(
            "rollout_started_timestamp_seconds",
            "When the rollout was submitted, in seconds since the Unix epoch.",
            labels=["rollout", "endpoint"],
        )
        deadline = GaugeMetricFamily(
            "rollout_deadline_timestamp_seconds",
            "When the rollout's policy deadline passes (only for policies with a deadline).",
            labels=["rollout", "endpoint"],
        )
        pending = GaugeMetricFamily(
            "rollout_alerts_pending", "Alerts in the outbox not yet delivered."
        )
        reading = self.read()
        if reading is None:
            # A scrape must not fail because the store blinked; the gauges are just absent.
            return
        pending.add_metric([], float(reading.pending_alerts))
        for summary in reading.rollouts:
            labels = [summary.id, summary.endpoint]
            info.add_metric(
                [
                    *labels,
                    summary.candidate,
                    summary.baseline or "",
                    summary.strategy,
                    summary.phase,
                ],
                1.0,
            )
            weight.add_metric(labels, float(summary.candidate_weight))
            started.add_metric(labels, summary.started_at)
            if summary.deadline_seconds is not None:
                deadline.add_metric(labels, summary.started_at + summary.deadline_seconds)
            step.add_metric(labels, float(summary.step) + 1.0)
            for arm, totals in (
                ("candidate", summary.candidate_arm),
                ("baseline", summary.control_arm),
            ):
                if totals.requests > 0:
                    error_rate.add_metric([*labels, arm], totals.errors_5xx / totals.requests)
                p99 = _p99(totals.latency)
                if p99 is not None:
                    latency.add_metric([*labels, arm], p99)
        yield from (info, weight, step, error_rate, latency, started, deadline, pending)


def _p99(histogram: dict[str, Any] | None) -> float | None:
    if not histogram:
        return None
    try:
        return HistogramData.from_dict(histogram).quantile(0.99)
    except (KeyError, TypeError, ValueError):
        # A histogram of a shape this code does not read: the gauge is absent, not the scrape.
        return None
