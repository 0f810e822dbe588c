"""Traffic as it really is: what changes from one window to the next, and how windows arrive.

Where this sits in a rollout: the sandbox (the fake Databricks workspace behind the serving
client) simulates every closed metrics window with ``rollout.sandbox.traffic.simulate_window``;
this module supplies what one window does beyond the entities' profiles (``Conditions`` per
entity and a traffic factor) and how export-metrics delivers the window to the controller's
scrapes (late, missing, duplicated, revised, or as counters that reset). The decision
benchmark (``bench/decisions.py``) draws its traces from the same pieces, so the judges are
measured on the traffic the sandbox serves.

Pure: no I/O, no clock, no global random state. Every draw comes from a ``random.Random``
seeded by a string naming what it decides (``substream(key, window, what, entity)``), so one
effect's randomness never shifts another's, a window does not depend on the windows read
before it, and a seed reproduces everything.

The effects, each off by default:

- per-replica hiccups (profile ``replicas``, ``hiccup_*``): an entity at w % of the traffic runs
  ``max(1, ceil(replicas * w / 100))`` replicas; in each window each replica independently
  hiccups with probability ``hiccup_rate`` and then serves ``hiccup_error_rate`` 5xx during
  ``hiccup_fraction`` of the window. The requests hitting a hiccup are a share of
  ``hiccups / replicas * hiccup_fraction``, so the mean 5xx rate does not depend on the replica
  count; its variance does (an entity on one replica sees all or nothing of each hiccup);
- cold start (profile ``cold_start_*``; the windows since the entity started or scaled up are
  the caller's to count): latency x factor and extra 5xx;
- overdispersion: a per-window gamma multiplier with mean 1 and a given CV on the 5xx rate,
  either one entity's own (profile ``error_rate_cv``) or common to every entity of the
  endpoint (``EndpointRealism.common_mode_cv``);
- incidents (``Incidents``): endpoint-wide 5xx x factor for a few windows, both arms;
- diurnal load (``Diurnal``): traffic and 5xx rate following a smooth daily cycle;
- delivery faults (``DeliveryFaults``): a window that reaches the scrapes one scrape late for
  one entity, never, twice, or first partial and then final; counter resets for the counter
  exposition (``CounterExport``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rollout.sandbox.traffic import (
    BUCKET_BOUNDS_MS,
    DEFAULT_PROFILE,
    Conditions,
    EntityGauges,
    TrafficProfile,
    WindowCounts,
    binomial,
)

Delivery = Literal["on_time", "late", "missing", "duplicate", "revised"]


def substream(key: str, *parts: object) -> random.Random:
    """An rng for one decision, seeded by its name: ``key`` (seed and endpoint) and ``parts``."""
    return random.Random(":".join((key, *(str(p) for p in parts))))


# --------------------------------------------------------------------------------------------
# Overdispersion and hiccups.


def gamma_multiplier(cv: float, rng: random.Random) -> float:
    """One draw of a gamma variable with mean 1 and coefficient of variation ``cv`` (0: 1.0).

    Shape 1/cv^2 and scale cv^2: the mean is 1 and the standard deviation cv, so a 5xx rate
    multiplied by it keeps its mean and gains the stated window-to-window spread.
    """
    if cv < 0 or not math.isfinite(cv):
        raise ValueError("cv must be finite and non-negative")
    if cv == 0.0:
        return 1.0
    return rng.gammavariate(1.0 / (cv * cv), cv * cv)


def replica_hiccups(rng: random.Random, replicas: int, rate: float) -> list[bool]:
    """Which of ``replicas`` replicas hiccup in one window, in replica order.

    One uniform per replica in order: the first n replicas' states are the same whatever the
    count asked for, so an entity scaled from 1 to 5 replicas keeps its first replica's fate.
    """
    return [rng.random() < rate for _ in range(replicas)]


def hiccup_share(states: Sequence[bool], fraction: float) -> float:
    """Share of an entity's requests served by a hiccuping replica (requests spread evenly)."""
    if not states:
        return 0.0
    return sum(states) / len(states) * fraction


# --------------------------------------------------------------------------------------------
# Endpoint-wide: incidents and the daily cycle.


class Incidents(BaseModel):
    """Endpoint-wide 5xx bursts: both arms' rates x ``error_factor`` for a few windows.

    In each window an incident starts with probability ``rate`` and lasts a uniform number of
    windows in [``min_windows``, ``max_windows``]. Whether window k is in an incident depends
    only on the draws of windows k - max_windows + 1 .. k, so any window can be asked alone.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    rate: float = Field(default=0.0, ge=0.0, le=1.0, description="P(an incident starts) per window")
    min_windows: int = Field(default=2, ge=1, le=1000)
    max_windows: int = Field(default=5, ge=1, le=1000)
    error_factor: float = Field(default=10.0, ge=0.0, le=1_000_000.0)

    @model_validator(mode="after")
    def _ordered(self) -> Incidents:
        if self.max_windows < self.min_windows:
            raise ValueError("max_windows must be >= min_windows")
        return self

    def active(self, key: str, k: int) -> bool:
        if self.rate <= 0.0:
            return False
        return any(
            start + _incident_length(key, start, self.rate, self.min_windows,
                                     self.max_windows) > k
            for start in range(k - self.max_windows + 1, k + 1)
        )

    def factor(self, key: str, k: int) -> float:
        return self.error_factor if self.active(key, k) else 1.0


@lru_cache(maxsize=65_536)
def _incident_length(key: str, start: int, rate: float, shortest: int, longest: int) -> int:
    """How many windows the incident starting in window ``start`` lasts (0: none starts).

    Cached: every window asks about the starts of the few windows before it.
    """
    rng = substream(key, start, "incident")
    if rng.random() >= rate:
        return 0
    return rng.randint(shortest, longest)


class Diurnal(BaseModel):
    """Traffic and 5xx rate following a smooth cycle: x1 at the trough, x ratio at the peak.

    factor(t) = ratio ** ((1 - cos(2 pi (t - trough_at) / period)) / 2): a cosine in log
    space, so the load ramps smoothly and never jumps.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    traffic_ratio: float = Field(default=1.0, gt=0.0, le=1000.0)
    error_ratio: float = Field(default=1.0, gt=0.0, le=1000.0)
    period_seconds: float = Field(default=86_400.0, gt=0.0, le=10.0**9)
    trough_at_seconds: float = Field(
        default=0.0, description="An epoch time at which both factors are 1 (the trough)."
    )

    def _factor(self, ratio: float, t: float) -> float:
        if ratio == 1.0:
            return 1.0
        phase = 2.0 * math.pi * (t - self.trough_at_seconds) / self.period_seconds
        return float(ratio ** ((1.0 - math.cos(phase)) / 2.0))

    def traffic_factor(self, t: float) -> float:
        return self._factor(self.traffic_ratio, t)

    def error_factor(self, t: float) -> float:
        return self._factor(self.error_ratio, t)


# --------------------------------------------------------------------------------------------
# Delivery.


class DeliveryFaults(BaseModel):
    """How export-metrics delivers each window to the scrapes.

    Per window, at most one fault, hitting one served entity chosen uniformly: ``late_rate``
    the window reaches the scrapes one scrape (one window) later than the others;
    ``missing_rate`` never; ``duplicate_rate`` on time and again one scrape later;
    ``revise_rate`` on time as a partial window (``partial_fraction`` of its requests, drawn
    at random) and one scrape later in its final numbers. ``counter_reset_rate``: in the
    counter exposition, the chance per entity and window that its counters restart from zero.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    late_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    missing_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    duplicate_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    revise_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    partial_fraction: float = Field(default=0.5, ge=0.0, le=1.0)
    counter_reset_rate: float = Field(default=0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _at_most_one(self) -> DeliveryFaults:
        if self.late_rate + self.missing_rate + self.duplicate_rate + self.revise_rate > 1.0:
            raise ValueError("late, missing, duplicate and revise rates must sum to at most 1")
        return self

    @property
    def any_window_fault(self) -> bool:
        return self.late_rate + self.missing_rate + self.duplicate_rate + self.revise_rate > 0

    def plan(self, key: str, k: int, entities: Sequence[str]) -> dict[str, Delivery]:
        """How window ``k`` of each entity is delivered (entities not named: on time).

        The draw depends on the sorted entity names only, so a caller that follows one
        entity gets the same fate for it as one that follows all of them.
        """
        names = sorted(entities)
        plan: dict[str, Delivery] = dict.fromkeys(names, "on_time")
        if not names or not self.any_window_fault:
            return plan
        rng = substream(key, k, "delivery")
        u, pick = rng.random(), rng.random()
        fault: Delivery = "on_time"
        rates: tuple[tuple[Delivery, float], ...] = (
            ("late", self.late_rate), ("missing", self.missing_rate),
            ("duplicate", self.duplicate_rate), ("revised", self.revise_rate),
        )
        for kind, rate in rates:
            if u < rate:
                fault = kind
                break
            u -= rate
        if fault != "on_time":
            plan[names[min(len(names) - 1, math.floor(pick * len(names)))]] = fault
        return plan


def partial_counts(counts: WindowCounts, fraction: float, rng: random.Random) -> WindowCounts:
    """What an exporter has of a window when it first exports it: about ``fraction`` of it.

    Each latency bucket keeps a binomial share of its requests (the histogram's total is the
    request count); the 5xx and 4xx of the kept requests are drawn in proportion (capped by
    what was kept), sums scale with the kept share. Never more than the final window in any
    field, so the final version is a revision upwards.
    """
    out = WindowCounts()
    if counts.requests <= 0:
        return out
    out.latency_counts = [binomial(c, fraction, rng) for c in counts.latency_counts]
    out.requests = sum(out.latency_counts)
    kept = out.requests / counts.requests
    out.errors_5xx = min(out.requests, binomial(counts.errors_5xx, kept, rng))
    out.errors_4xx = min(out.requests - out.errors_5xx, binomial(counts.errors_4xx, kept, rng))
    out.latency_sum_ms = counts.latency_sum_ms * kept
    # Queue time follows the same requests: the same share of each of its buckets.
    out.queue_counts = _rescale(counts.queue_counts, out.requests)
    out.queue_sum_ms = counts.queue_sum_ms * kept
    return out


def _rescale(buckets: Sequence[int], total: int) -> list[int]:
    """Integer bucket counts proportional to ``buckets`` summing to ``total`` (largest rest)."""
    whole = sum(buckets)
    if whole <= 0 or total <= 0:
        return [0] * len(buckets)
    raw = [b * total / whole for b in buckets]
    out = [math.floor(x) for x in raw]
    rest = sorted(range(len(raw)), key=lambda i: raw[i] - out[i], reverse=True)
    for i in rest[: total - sum(out)]:
        out[i] += 1
    return out


# --------------------------------------------------------------------------------------------
# One window's conditions, endpoint-wide.


class EndpointRealism(BaseModel):
    """An endpoint's traffic beyond its entities' profiles, and how its metrics arrive."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    common_mode_cv: float = Field(
        default=0.0, ge=0.0, le=10.0,
        description="CV of a per-window 5xx multiplier shared by every entity of the endpoint.",
    )
    incidents: Incidents = Field(default_factory=Incidents)
    diurnal: Diurnal = Field(default_factory=Diurnal)
    delivery: DeliveryFaults = Field(default_factory=DeliveryFaults)
    exposition: Literal["window", "counter"] = Field(
        default="window",
        description="window: per-window gauges (Databricks); counter: cumulative counters.",
    )
    entity_label: str = Field(
        default="served_entity_name", pattern=r"^[a-zA-Z_][a-zA-Z0-9_]*$",
        description="The label naming each series' served entity in export-metrics.",
    )
    sparse_json: bool = Field(
        default=False,
        description="Answers leave out default values as proto3 JSON does: a route's "
        "traffic_percentage of 0, config_update NOT_UPDATING, false booleans.",
    )


NO_REALISM = EndpointRealism()


@dataclass(frozen=True)
class WindowEnvironment:
    """What window k does to the whole endpoint: shared by every entity."""

    traffic_factor: float = 1.0
    error_multiplier: float = 1.0  # common-mode x incident x diurnal


def window_environment(realism: EndpointRealism, key: str, k: int,
                       start_seconds: float) -> WindowEnvironment:
    common = gamma_multiplier(realism.common_mode_cv, substream(key, k, "common")) if (
        realism.common_mode_cv > 0.0
    ) else 1.0
    return WindowEnvironment(
        traffic_factor=realism.diurnal.traffic_factor(start_seconds),
        error_multiplier=common
        * realism.incidents.factor(key, k)
        * realism.diurnal.error_factor(start_seconds),
    )


def entity_conditions(
    profile: TrafficProfile,
    key: str,
    k: int,
    *,
    entity: str,
    weight: float,
    environment: WindowEnvironment,
    cold: bool = False,
) -> Conditions:
    """Window k's conditions for one entity at ``weight`` % of the traffic."""
    own = gamma_multiplier(profile.error_rate_cv, substream(key, k, "own", entity)) if (
        profile.error_rate_cv > 0.0
    ) else 1.0
    share = 0.0
    if profile.hiccup_rate > 0.0 and profile.hiccup_fraction > 0.0:
        states = replica_hiccups(substream(key, k, "hiccup", entity),
                                 profile.replicas_at(weight), profile.hiccup_rate)
        share = hiccup_share(states, profile.hiccup_fraction)
    return Conditions(error_multiplier=environment.error_multiplier * own,
                      hiccup_share=share, cold=cold)


def window_conditions(
    realism: EndpointRealism,
    profiles: Mapping[str, TrafficProfile],
    split: Mapping[str, int],
    *,
    key: str,
    k: int,
    start_seconds: float,
) -> tuple[float, dict[str, Conditions]]:
    """Window k of an endpoint: its traffic factor and each entity's ``Conditions``.

    ``key`` names the endpoint's streams (the sandbox uses ``"<seed>:<endpoint>"``). Cold
    start is not decided here: ``simulate_window`` derives it from the windows since each
    entity started or scaled up.
    """
    env = window_environment(realism, key, k, start_seconds)
    conditions = {
        entity: entity_conditions(profiles.get(entity, DEFAULT_PROFILE), key, k,
                                  entity=entity, weight=float(weight), environment=env)
        for entity, weight in split.items()
    }
    return env.traffic_factor, conditions


# --------------------------------------------------------------------------------------------
# The counter exposition.


@dataclass
class _Counter:
    totals: WindowCounts
    created_seconds: float


@dataclass
class CounterExport:
    """Cumulative counters per entity, as a Prometheus client library would export them.

    ``add(k, start_seconds, end_seconds, counts, reset)`` folds window k in; an entity whose
    counters reset in window k starts again from that window's counts with a new ``_created``
    time (its process restarted at the window's start, so nothing is lost between scrapes).
    """

    counters: dict[str, _Counter] = field(default_factory=dict)
    last_k: int | None = None
    read_at_seconds: float | None = None

    def add(self, k: int, start_seconds: float, end_seconds: float,
            counts: Mapping[str, WindowCounts], resets: Mapping[str, bool]) -> None:
        for entity, window in counts.items():
            counter = self.counters.get(entity)
            if counter is None or resets.get(entity, False):
                self.counters[entity] = _Counter(window.copy(), start_seconds)
            else:
                counter.totals.merge(window)
        self.last_k = k
        self.read_at_seconds = end_seconds

    def render(self, endpoint_name: str, gauges: Mapping[str, EntityGauges]) -> str:
        """The exposition as of the last window added, stamped at its end."""
        if self.read_at_seconds is None:
            return ""
        return render_counter_metrics(
            endpoint_name,
            round(self.read_at_seconds * 1000),
            {e: c.totals for e, c in self.counters.items()},
            {e: c.created_seconds for e, c in self.counters.items()},
            gauges,
        )


def render_counter_metrics(
    endpoint_name: str,
    at_ms: int,
    totals: Mapping[str, WindowCounts],
    created_seconds: Mapping[str, float],
    gauges: Mapping[str, EntityGauges],
) -> str:
    """Prometheus text of cumulative counters (``# TYPE ... counter``) and histograms.

    Every sample is stamped ``at_ms``; ``*_created`` samples carry each entity's counter
    creation time in seconds, so a restart is visible even when a counter did not go down.
    """
    entities = sorted(totals)
    if not entities:
        return ""
    ep = _escape(endpoint_name)
    labels = {e: f'served_entity_name="{_escape(e)}",endpoint_name="{ep}"' for e in entities}
    stamp = str(int(at_ms))
    lines: list[str] = []
    for name, attr in (("request_count_total", "requests"),
                       ("request_4xx_count_total", "errors_4xx"),
                       ("request_5xx_count_total", "errors_5xx")):
        base = name.removesuffix("_total")
        lines += [f"# HELP {name} Requests since the counter was created.",
                  f"# TYPE {name} counter"]
        for e in entities:
            lines.append(f"{name}{{{labels[e]}}} {float(getattr(totals[e], attr))!r} {stamp}")
            lines.append(f"{base}_created{{{labels[e]}}} {float(created_seconds[e])!r} {stamp}")
    for name, help_text, attr in (
        ("cpu_usage_percentage", "Average CPU usage across replicas.", "cpu_percent"),
        ("mem_usage_percentage", "Average memory usage across replicas.", "mem_percent"),
        ("gpu_usage_percentage", "Average GPU usage across replicas.", "gpu_percent"),
        ("gpu_memory_usage_percentage", "Average GPU memory usage across replicas.",
         "gpu_mem_percent"),
    ):
        present = [e for e in entities if getattr(gauges.get(e), attr, None) is not None]
        if not present:
            continue
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} gauge"]
        lines += [f"{name}{{{labels[e]}}} {float(getattr(gauges[e], attr))!r} {stamp}"
                  for e in present]
    for name, counts_attr, sum_attr in (
        ("request_latency_ms", "latency_counts", "latency_sum_ms"),
        ("model_queue_time_ms", "queue_counts", "queue_sum_ms"),
    ):
        lines += [f"# HELP {name} Cumulative histogram since the counter was created.",
                  f"# TYPE {name} histogram"]
        for e in entities:
            cumulative = 0
            for bound, count in zip(BUCKET_BOUNDS_MS, getattr(totals[e], counts_attr),
                                    strict=True):
                cumulative += count
                le = "+Inf" if math.isinf(bound) else repr(float(bound))
                lines.append(f'{name}_bucket{{{labels[e]},le="{le}"}} {float(cumulative)!r} '
                             f"{stamp}")
            lines.append(f"{name}_sum{{{labels[e]}}} {float(getattr(totals[e], sum_attr))!r} "
                         f"{stamp}")
            lines.append(f"{name}_count{{{labels[e]}}} {float(cumulative)!r} {stamp}")
            lines.append(f"{name}_created{{{labels[e]}}} {float(created_seconds[e])!r} {stamp}")
    return "\n".join(lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
