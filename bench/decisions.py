"""Decision quality: whole simulated rollouts through ``decide()``, every judge on the same traces.

Where this sits: not shipped (``bench/`` is outside the wheel). ``bench/judge_calibration.py``
exercises the judges alone; this program drives the real engine, ``rollout.engine.decide``,
through complete canary rollouts on a fake clock, playing the endpoint and its export-metrics,
and measures what an operator sees: how often a healthy candidate is rolled back, how often a
regressed one is promoted, how long a decision takes, and how many failed requests the
candidate served first. It does so on independent requests (the ``control`` grid) and on
traffic as it really is (one scenario per effect, drawn with ``rollout.sandbox.realism``, the
model the sandbox serves).

Run: ``python -m bench.decisions`` (every scenario, 2 worker processes; the default judge on
200 seeds per scenario cell and ``--control-seeds`` (30) per control cell, the other judges
on the first ``--other-seeds`` (15) of them: a whole run stays within 20 minutes on 2 cores);
``--quick`` is a smoke run (10 seeds); ``--seeds N``, ``--workers N``, ``--judges a,b``,
``--scenarios a,b`` (a name selects the scenarios it names or prefixes: ``cold`` is ``cold``
and ``cold-mild``); ``--update`` re-runs only those scenarios and merges them into the report
already in ``--out`` (run with the same seeds and judges), noting the re-run in it;
``--profile`` profiles one cell in-process and prints where the time goes.
Output: a table on stdout, ``bench/results/decisions.md``, ``decisions.json``,
``decisions.png`` (the control grid) and ``decisions-scenarios.png``.

The control grid (scenario ``control``): the baseline's 5xx rate {0.1 %, 1 %, 5 %} x endpoint
traffic {1, 10, 100, 1000} requests/s x the candidate's effect {none, 5xx x1.5, x2, x5, p99
latency x1.3, x2}. Both arms have the sandbox's log-normal latency with p50 40 ms and p99 120 ms
(a p99 effect raises the candidate's p99 with its p50 unchanged, as a sandbox profile with a
larger ``latency_p99_ms`` does) and 0.5 % 4xx, so the default policy's 4xx check has work
(queue time, which no policy here checks, is held at 1 ms and not fed to the engine).

The scenarios: base 5xx rate 1 %, 10, 100 and 1000 requests/s, the candidate's effect ``none``
(healthy: its mean behaviour equals the baseline's), ``err x2`` (its 5xx rate doubled) and, at
1000 requests/s, ``err x5``; the bucket scenarios add ``p99 x2``. See ``SCENARIOS``:

1. ``common-cv0.5``, ``common-cv1.0``: a per-window 5xx multiplier (gamma, mean 1) common to
   both arms;
2. ``incidents``: endpoint-wide 5xx x10 for 2-5 windows, starting with probability 0.07 per
   window (two or three per rollout);
3. ``diurnal``: traffic and 5xx rate of both arms ramping smoothly by 3x over the first 30
   minutes (the trough of an hourly cycle at the start);
4. ``own-cv0.3``, ``own-cv0.5``, ``own-cv1.0``: the candidate's own per-window 5xx multiplier
   (CV 1.0 is reported, not a target);
5. ``hiccups``: 20 replicas at 100 % (so 1 for the candidate at 5 %), each hiccuping in 1 of 10
   windows with 30 % 5xx for a quarter of the minute, both arms; here ``err xN`` multiplies the
   candidate's mean 5xx rate, hiccups included (multiplying its base rate alone would make a
   1.6x regression of the mean at 1 %, inside the default's 2x tolerance);
6. ``cold``: the candidate's first 3 windows after every split change at 3x latency and +0.5
   point 5xx (timeouts); ``cold-mild``: 1 window at 1.5x latency;
7. ``same-p99``: baseline p50 40 / p99 300 ms log-normal; candidate p50 120 ms, the same p99,
   p99.9 360 ms instead of the baseline's 580 (a slower median, a tighter tail);
8. ``p99-on-bound``, ``p99-below-bound``, ``p99-above-bound``: both arms' p99 at 100 ms (a
   bucket bound; the next is 250), 95 ms and 105 ms;
9. ``delivery``: the incidents of 2, and export-metrics delivering 15 % of windows one scrape
   late for one arm, 3 % never, 5 % twice, 5 % first half-reported and revised a scrape later.

A rollout: the canary plan in ``PLAN`` (5 %, 25 %, 50 %, 10 min bake each, then 100 %), 60 s
metric windows, ``DEFAULT_TIMING``. The loop calls ``decide`` and plays the endpoint perfectly:
a ``PutConfig`` is live at once (the next call, at the same instant, shows the target's split in
the ``EndpointSnapshot`` with ``UpdateOutcome("applied")``), so every split starts on the
minute grid. Each look is a scrape: the windows that closed since the previous look are drawn
at the live split and handed to export-metrics, which delivers them to this scrape or a later
one (scenario ``delivery``); the runner's ``WindowTracker(window_ms=60_000)`` takes each
scrape's windows as one ``Scrape(kind="window", has_entity_labels=True)``, and ``decide``
receives, as the runner gives it, every window the tracker keeps that began at or after the
split took effect (``state.split_applied_at``), revisions applied, in time order. A rollout ends
when ``decide`` reaches a terminal phase or pauses (a person must act): promoted, rolled back by
a failed analysis, or undecided (paused for lack of a verdict, or the policy's deadline passed,
whatever ``on_deadline`` then does).

Same traces: a judge that advances earlier sends more traffic to the candidate, so no judge can
see another's exact requests. What is shared is the trace of a (scenario, cell, seed): every
window k and every split the plan can produce map to one fixed window of counts per arm,
whichever judge asks, and one fixed delivery (the faults of window k hit the same arm the same
way for every judge). Each arm's traffic is a nested Poisson stream: between consecutive levels
of the arm's weight (candidate 0-5-25-50 %, baseline 0-50-75-95 %) an increment window is drawn
as the sandbox's ``simulate_window`` draws one entity's window (``rollout.sandbox.traffic``:
Poisson requests, binomial 5xx and 4xx, multinomial latency buckets; the same random numbers in
the same order) at ``qps * (level step)``, from a ``random.Random``
seeded with the string (master seed, cell, seed, window index, arm, level step); an arm at a
given weight receives the sum of the increments up to it. Hence (1) two judges on the same split
in window k receive identical windows; (2) on different splits, the judge with the larger
candidate share receives a superset of the other's candidate requests (and a subset of its
baseline requests) in that window: common random numbers throughout; (3) each arm's counts are
distributed exactly as ``simulate_window`` with the live split makes them (a Poisson total
routed multinomially is one independent Poisson stream per arm; ``tests/unit`` checks the
moments). What varies by window is drawn once per window from streams named by what they decide
(``rollout.sandbox.realism.substream``) and applied to every increment alike: the common and the
candidate's own multipliers, incidents, the diurnal factors. Replicas are nested too: the
increment from level lo to hi is served by replicas ceil(R lo/100) .. ceil(R hi/100) - 1 (R
replicas at 100 %), whose hiccups are drawn once per window and replica, so the candidate at 25
% on replicas 0-4 shares replica 0's fate with the candidate at 5 %. Cold windows are a function
of the windows since the candidate's split change, which each judge's own path decides; a cold
window is drawn from the same random numbers as the warm one, with the cold rates.

Judges: ``default`` (sequential), ``flagger-compatible`` (threshold), ``strict`` (sequential,
tighter) through ``decide``; and ``kayenta-like``, a bench-only comparison that follows the same
canary schedule outside ``decide``: at every window it re-runs a one-sided Mann-Whitney U test
(normal approximation, tie-corrected) on per-minute points since the step began (5xx rate, 4xx
rate, p99 latency from the window's histogram; at least 3 points per arm), marks a metric
"high" at p < 0.01 (Kayenta's 98 % two-sided confidence), and rolls back when any metric is high
(score below Kayenta's marginal 75 of 100); a step advances at the end of its bake otherwise.
It reads the windows as delivered: the points are the windows its own ``WindowTracker`` keeps
for the step (a late window joins a look later, a missing one never, a revised one in its final
form), each arm on its own, unpaired, as Kayenta compares two samples of points.

Per judge and cell (all rates over the seeds of the cell):

* false rollback: effect ``none`` and rolled back by a failed analysis;
* missed regression: any other effect and promoted (``err x1.5`` sits inside the default
  policy's tolerance of 2x, so promoting it is by design there; ``p99 x1.3`` is just beyond its
  1.25x, and both p99s, 120 and 156 ms, fall in the sandbox's (100, 250] ms bucket, so what a
  judge sees of it depends on how it interpolates inside that bucket);
* undecided: paused or deadline;
* in time: promoted within the plan's time, i.e. before any pause and the policy's deadline;
* minutes: median simulated minutes from the start to the promotion or rollback (decided runs);
* windows to rollback: whole windows from the split change of the step in which the rollback
  was decided to that decision (``<= 4 w``: the share of seeds rolled back within 4);
* blast radius: 5xx served by the candidate from its first request until its traffic was taken
  away (rollback) or until the rollout ended (promotion, or the stop of an undecided one);
  reported as the mean over seeds; ``exposure`` is the candidate's requests in the same span
  (both count what was served, delivered or not);
* samples to decision: candidate requests, counted over the whole rollout, up to the judge's
  first conclusive verdict (pass or fail), and up to its 5xx check's first pass or fail (the
  quantity the SPRT below measures; a healthy candidate's verdict also waits for the 4xx and
  p99 checks); median over seeds, a never-conclusive seed counting as infinite.

Wald's SPRT as the yardstick for speed, error cells: the one-sample SPRT on the candidate's
requests, H0: 5xx rate p0 = the baseline's rate (known to it) against H1: p1, alpha 0.01, beta
0.05. For a regressed cell p1 is the true regressed rate and the figure is Wald's approximation
E_p1[N] = ((1 - beta) ln((1 - beta) / alpha) + beta ln(beta / (1 - alpha))) / KL(p1 || p0); for
``none``, p1 is the default policy's tolerance, max(2 p0, p0 + 0.05 %), and the figure is E_p0[N]
(the samples to accept H0). It sees every request, knows p0 and tests a single alternative, so it
is a lower bound the two-sample, multi-check, look-per-minute judge cannot reach in general. The
same SPRT run on the trace's candidate windows at 5 % (a look per 60 s window, at most 120,
each window counted once in the last version delivered) shows what the look interval alone
costs: its median is printed beside it. In a scenario it also shows what a one-sample test
with a known p0 makes of that traffic: ``SPRT H1 %`` is how often it accepts H1.

Targets (PASS/MISS), for the default judge: false rollback <= 1 % in every healthy cell (every
control cell; 10, 100 and 1000 req/s in every scenario but the CV 1.0 ones, which are reported,
not targets); missed 2x 5xx regressions <= 5 % at >= 10 req/s in every scenario; healthy
candidates promoted within the plan's time in >= 95 % of runs at >= 100 req/s in every scenario;
a 5x 5xx regression at 1000 req/s rolled back within 4 windows of the split change of the step
that exposes it in >= 95 % of runs, in every scenario. On the control grid also: default mean
blast radius at most half of flagger-compatible's on the same traces in every regression cell (a
miss is annotated when flagger-compatible also rolls back most healthy candidates of that
traffic and baseline, when the default judge holds most rollouts undecided, or when the effect
is inside the default tolerance); default median candidate requests to its 5xx check's decision
within 2x of Wald's E[N] in the ``none``, ``err x2`` and ``err x5`` cells.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import multiprocessing
import os
import pstats
import random
import resource
import statistics
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollout.analysis.spec import Policy
from rollout.analysis.verdict import VerdictRecord
from rollout.engine.decide import DEFAULT_TIMING, Timing, decide
from rollout.engine.model import (
    EndpointSnapshot,
    Observation,
    Phase,
    PutConfig,
    RolloutState,
    UpdateOutcome,
)
from rollout.metrics.model import EntityWindow
from rollout.metrics.parse import Scrape
from rollout.metrics.windows import WindowTracker
from rollout.plan import AnyPlan, CanaryPlan, validate_plan
from rollout.policies import PolicyLibrary
from rollout.sandbox.realism import (
    NO_REALISM,
    Delivery,
    DeliveryFaults,
    Diurnal,
    EndpointRealism,
    Incidents,
    WindowEnvironment,
    gamma_multiplier,
    hiccup_share,
    partial_counts,
    replica_hiccups,
    substream,
    window_environment,
)
from rollout.sandbox.traffic import (
    Conditions,
    TrafficProfile,
    WindowCounts,
    draw_counts,
    is_cold,
    poisson,
)

RESULTS = Path(__file__).resolve().parent / "results"

BASE_RATES: tuple[float, ...] = (0.001, 0.01, 0.05)
TRAFFIC: tuple[float, ...] = (1.0, 10.0, 100.0, 1000.0)
EFFECTS: dict[str, tuple[float, float]] = {  # name: (5xx multiplier, p99 multiplier)
    "none": (1.0, 1.0),
    "err x1.5": (1.5, 1.0),
    "err x2": (2.0, 1.0),
    "err x5": (5.0, 1.0),
    "p99 x1.3": (1.0, 1.3),
    "p99 x2": (1.0, 2.0),
}
P50_MS, P99_MS = 40.0, 120.0
CLIENT_ERROR_RATE = 0.005
WINDOW_S = 60.0
WINDOW_MS = 60_000
T0 = 1_800_000_000.0  # the fake clock's start (epoch seconds, on a minute boundary)
MAX_TICKS = 5000

JUDGES: tuple[str, ...] = ("default", "flagger-compatible", "strict", "kayenta-like")
ENGINE_JUDGES = frozenset({"default", "flagger-compatible", "strict"})

BASE = "model-1"
BASE_ENTITY: dict[str, Any] = {
    "name": BASE,
    "entity_name": "main.bench.model",
    "entity_version": "1",
    "workload_size": "Small",
    "scale_to_zero_enabled": False,
}
PLAN: dict[str, Any] = {
    "name": "bench-canary",
    "endpoint": "bench-endpoint",
    "candidate": {
        "entity_name": "main.bench.model",
        "entity_version": "2",
        "workload_size": "Small",
        "scale_to_zero_enabled": False,
    },
    "strategy": "canary",
    "steps": [
        {"weight": 5, "bake": "10m"},
        {"weight": 25, "bake": "10m"},
        {"weight": 50, "bake": "10m"},
    ],
}

# Wald's SPRT error rates.
SPRT_ALPHA, SPRT_BETA = 0.01, 0.05
SPRT_WINDOWS = 120
# Kayenta-like judge.
MW_P = 0.01
MW_MIN_POINTS = 3

ERROR_EFFECTS = ("none", "err x1.5", "err x2", "err x5")
SPRT_TARGET_EFFECTS = ("none", "err x2", "err x5")
ROLLBACK_WINDOWS = 4  # a 5x regression at 1000 req/s is rolled back within this many windows


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Scenario:
    """One kind of real traffic: what both arms do, what the candidate does, how windows arrive.

    ``both`` and ``candidate`` are ``TrafficProfile`` fields on top of the control's profile
    (the candidate's apply after its effect); ``target`` is False for a scenario reported but
    not held to the targets.
    """

    key: str
    title: str
    cells: tuple[tuple[float, float, str], ...]
    realism: EndpointRealism = NO_REALISM
    both: Mapping[str, Any] = field(default_factory=dict)
    candidate: Mapping[str, Any] = field(default_factory=dict)
    target: bool = True


def _cells(extra: Sequence[str] = ()) -> tuple[tuple[float, float, str], ...]:
    """The scenarios' cells: 1 % base; none and err x2 at 10/100/1000 req/s, err x5 at 1000."""
    cells = [(0.01, q, e) for q in (10.0, 100.0, 1000.0) for e in ("none", "err x2", *extra)]
    cells.append((0.01, 1000.0, "err x5"))
    return tuple(cells)


INCIDENTS = Incidents(rate=0.07, min_windows=2, max_windows=5, error_factor=10.0)
HICCUPS: dict[str, Any] = {"replicas": 20, "hiccup_rate": 0.1, "hiccup_error_rate": 0.3,
                           "hiccup_fraction": 0.25}

SCENARIOS: dict[str, Scenario] = {s.key: s for s in (
    Scenario("control", "independent requests (the control grid)",
             tuple((b, q, e) for b in BASE_RATES for q in TRAFFIC for e in EFFECTS)),
    Scenario("common-cv0.5", "per-window 5xx multiplier common to both arms, CV 0.5",
             _cells(), EndpointRealism(common_mode_cv=0.5)),
    Scenario("common-cv1.0", "per-window 5xx multiplier common to both arms, CV 1.0 "
             "(reported, not a target)", _cells(), EndpointRealism(common_mode_cv=1.0),
             target=False),
    Scenario("incidents", "endpoint-wide 5xx x10 for 2-5 windows, P(start) 0.07 per window",
             _cells(), EndpointRealism(incidents=INCIDENTS)),
    Scenario("diurnal", "traffic and 5xx rate of both arms ramping by 3x over 30 minutes",
             _cells(), EndpointRealism(diurnal=Diurnal(
                 traffic_ratio=3.0, error_ratio=3.0, period_seconds=3600.0,
                 trough_at_seconds=T0))),
    Scenario("own-cv0.3", "the candidate's own per-window 5xx multiplier, CV 0.3", _cells(),
             candidate={"error_rate_cv": 0.3}),
    Scenario("own-cv0.5", "the candidate's own per-window 5xx multiplier, CV 0.5", _cells(),
             candidate={"error_rate_cv": 0.5}),
    Scenario("own-cv1.0", "the candidate's own per-window 5xx multiplier, CV 1.0 (reported, "
             "not a target)", _cells(), candidate={"error_rate_cv": 1.0}, target=False),
    Scenario("hiccups", "replica hiccups (30 % 5xx for 15 s, 1 in 10 replica-minutes), 20 "
             "replicas at 100 %, both arms; 5xx xN multiplies the candidate's mean rate, "
             "hiccups included", _cells(), both=HICCUPS),
    Scenario("cold", "candidate cold for 3 windows after every split change: 3x latency, "
             "+0.5 pt 5xx", _cells(),
             candidate={"cold_start_windows": 3, "cold_start_latency_factor": 3.0,
                        "cold_start_error_rate": 0.005}),
    Scenario("cold-mild", "candidate cold for 1 window after every split change: 1.5x "
             "latency", _cells(),
             candidate={"cold_start_windows": 1, "cold_start_latency_factor": 1.5}),
    Scenario("same-p99", "same true p99 (300 ms); candidate p50 120 ms vs 40, p99.9 360 ms vs "
             "580", _cells(), both={"latency_p50_ms": 40.0, "latency_p99_ms": 300.0},
             candidate={"latency_p50_ms": 120.0, "latency_p999_ms": 360.0}),
    Scenario("p99-on-bound", "both arms' p99 exactly on a bucket bound (100 ms)",
             _cells(("p99 x2",)), both={"latency_p99_ms": 100.0}),
    Scenario("p99-below-bound", "both arms' p99 just below a bucket bound (95 ms)",
             _cells(("p99 x2",)), both={"latency_p99_ms": 95.0}),
    Scenario("p99-above-bound", "both arms' p99 just above a bucket bound (105 ms)",
             _cells(("p99 x2",)), both={"latency_p99_ms": 105.0}),
    Scenario("delivery", "incidents, with 15 % of windows a scrape late for one arm, 3 % "
             "missing, 5 % duplicated, 5 % revised", _cells(),
             EndpointRealism(incidents=INCIDENTS, delivery=DeliveryFaults(
                 late_rate=0.15, missing_rate=0.03, duplicate_rate=0.05, revise_rate=0.05,
                 partial_fraction=0.5))),
)}


def select_scenarios(spec: str | None) -> list[str]:
    """Scenario keys named by ``spec`` (comma-separated; a name also selects ``name-*``)."""
    if not spec:
        return list(SCENARIOS)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    chosen = [key for key in SCENARIOS
              if any(key == w or key.startswith(w + "-") for w in wanted)]
    unknown = [w for w in wanted
               if not any(key == w or key.startswith(w + "-") for key in SCENARIOS)]
    if unknown:
        raise ValueError(f"unknown scenarios: {', '.join(unknown)} "
                         f"(known: {', '.join(SCENARIOS)})")
    return chosen


@dataclass(frozen=True)
class Cell:
    base_rate: float
    qps: float
    effect: str
    scenario: str = "control"

    @property
    def key(self) -> str:
        # The control's keys predate the scenarios: its traces stay what they were.
        grid = f"{self.base_rate:g}/{self.qps:g}/{self.effect}"
        return grid if self.scenario == "control" else f"{self.scenario}/{grid}"

    @property
    def regressed(self) -> bool:
        return self.effect != "none"

    def profiles(self) -> dict[str, TrafficProfile]:
        scenario = SCENARIOS[self.scenario]
        err_mult, p99_mult = EFFECTS[self.effect]
        base = TrafficProfile(**{
            "error_rate": self.base_rate,
            "client_error_rate": CLIENT_ERROR_RATE,
            "latency_p50_ms": P50_MS,
            "latency_p99_ms": P99_MS,
            # No policy here checks queue time: a constant one skips its histogram draw.
            "queue_time_p50_ms": 1.0,
            "queue_time_p99_ms": 1.0,
            **scenario.both,
        })
        fields = base.model_dump()
        fields["error_rate"] = min(1.0, self.base_rate * err_mult)
        if err_mult != 1.0 and base.hiccup_rate > 0.0:
            # "5xx x2" means the candidate's mean 5xx rate, its replicas' hiccups included,
            # is twice the baseline's: hiccups add the same to both arms, so multiplying the
            # base rate alone would make a smaller regression (1.6x at 1 %), inside the 2x
            # tolerance. Requests meet a hiccup with probability f and then fail at e.
            f = base.hiccup_rate * base.hiccup_fraction
            e = base.hiccup_error_rate
            mean = self.base_rate + f * (e - self.base_rate)
            fields["error_rate"] = min(1.0, (err_mult * mean - f * e) / (1.0 - f))
        fields["latency_p99_ms"] = base.latency_p99_ms * p99_mult
        if base.latency_p999_ms is not None:
            fields["latency_p999_ms"] = base.latency_p999_ms * p99_mult
        fields.update(scenario.candidate)
        return {CAND: TrafficProfile(**fields), BASE: base}


def all_cells(scenarios: Iterable[str] | None = None) -> list[Cell]:
    keys = list(SCENARIOS) if scenarios is None else list(scenarios)
    return [Cell(b, q, e, key) for key in keys for b, q, e in SCENARIOS[key].cells]


def canary_plan() -> CanaryPlan:
    plan = validate_plan(PLAN)
    if not isinstance(plan, CanaryPlan):  # pragma: no cover - PLAN is a canary
        raise TypeError("PLAN must be a canary plan")
    return plan


CAND = canary_plan().candidate.served_name
STEPS: tuple[tuple[int, int], ...] = tuple(  # (candidate weight, bake in windows)
    (s.weight, round(s.bake / WINDOW_S)) for s in canary_plan().canary_steps()
)


def _k(t: float) -> int:
    return round((t - T0) / WINDOW_S)


# --------------------------------------------------------------------------- traces


@dataclass(frozen=True)
class Window:
    """One 60 s window of both arms at one split, as it was served (before any delivery)."""

    k: int
    weight: int
    candidate: EntityWindow
    baseline: EntityWindow
    counts: Mapping[str, WindowCounts]


def entity_window(entity: str, start_ms: int, counts: WindowCounts) -> EntityWindow:
    return EntityWindow(
        entity, start_ms, requests=float(counts.requests), errors_4xx=float(counts.errors_4xx),
        errors_5xx=float(counts.errors_5xx), latency=counts.latency_histogram(),
    )


class Trace:
    """The traffic of one (scenario, cell, seed): window x split -> both arms' counts.

    See the module doc. Lazy and cached: only windows some judge reaches are drawn, once, and
    every judge of the (cell, seed) reads the same cache.
    """

    def __init__(self, cell: Cell, seed: int, master_seed: int,
                 weights: Iterable[int] | None = None) -> None:
        self.cell = cell
        self.seed = seed
        self.key = f"{master_seed}:{cell.key}:{seed}"
        self.profiles = cell.profiles()
        self.realism = SCENARIOS[cell.scenario].realism
        weights = sorted({w for w, _ in STEPS} if weights is None else set(weights))
        self.levels: dict[str, tuple[int, ...]] = {
            CAND: tuple(weights),
            BASE: tuple(sorted({100 - w for w in weights})),
        }
        self._increments: dict[tuple[str, int, int, bool], WindowCounts] = {}
        self._arms: dict[tuple[str, int, int, bool], tuple[WindowCounts, EntityWindow]] = {}
        self._windows: dict[tuple[int, int, bool], Window] = {}
        self._env: dict[int, WindowEnvironment] = {}
        self._own: dict[tuple[str, int], float] = {}
        self._hiccups: dict[tuple[str, int], list[bool]] = {}
        self._delivery: dict[int, Mapping[str, Delivery]] = {}
        self.seconds = 0.0  # time spent drawing

    # -- what varies by window ----------------------------------------------------------------

    def environment(self, k: int) -> WindowEnvironment:
        env = self._env.get(k)
        if env is None:
            env = self._env[k] = window_environment(self.realism, self.key, k,
                                                    T0 + k * WINDOW_S)
        return env

    def _own_multiplier(self, arm: str, k: int) -> float:
        cv = self.profiles[arm].error_rate_cv
        if cv <= 0.0:
            return 1.0
        value = self._own.get((arm, k))
        if value is None:
            value = self._own[(arm, k)] = gamma_multiplier(cv, substream(self.key, k, "own",
                                                                         arm))
        return value

    def _replicas(self, arm: str, level: int) -> int:
        return 0 if level == 0 else self.profiles[arm].replicas_at(level)

    def _hiccup_share(self, arm: str, k: int, lo: int, hi: int) -> float:
        """Hiccup share of the increment lo-hi: the replicas that increment added."""
        profile = self.profiles[arm]
        if profile.hiccup_rate <= 0.0 or profile.hiccup_fraction <= 0.0:
            return 0.0
        states = self._hiccups.get((arm, k))
        if states is None:
            states = self._hiccups[(arm, k)] = replica_hiccups(
                substream(self.key, k, "hiccup", arm), profile.replicas, profile.hiccup_rate)
        first, last = self._replicas(arm, lo), self._replicas(arm, hi)
        # An increment too thin to add a replica of its own rides on the last one before it.
        mine = states[first:last] if last > first else states[max(0, last - 1):last]
        return hiccup_share(mine, profile.hiccup_fraction)

    def conditions(self, arm: str, k: int, lo: int, hi: int, cold: bool) -> Conditions:
        return Conditions(
            error_multiplier=self.environment(k).error_multiplier * self._own_multiplier(arm, k),
            hiccup_share=self._hiccup_share(arm, k, lo, hi),
            cold=cold,
        )

    # -- counts -------------------------------------------------------------------------------

    def _increment(self, arm: str, k: int, j: int, cold: bool) -> WindowCounts:
        levels = self.levels[arm]
        lo, hi = (levels[j - 1] if j else 0), levels[j]
        key = (arm, k, j, cold)
        counts = self._increments.get(key)
        if counts is None:
            rng = random.Random(f"{self.key}:{k}:{arm}:{lo}-{hi}")
            qps = self.cell.qps * (hi - lo) / 100.0
            factor = self.environment(k).traffic_factor
            # What simulate_window does for a lone entity at 100 %, minus its bookkeeping:
            # the same random numbers in the same order, so the same window.
            n = poisson((qps if factor == 1.0 else qps * factor) * WINDOW_S, rng)
            counts = draw_counts(n, self.profiles[arm], self.conditions(arm, k, lo, hi, cold),
                                 rng)
            self._increments[key] = counts
        return counts

    def arm_counts(self, arm: str, k: int, weight: int, cold: bool = False) -> WindowCounts:
        levels = self.levels[arm]
        if weight not in levels:
            raise ValueError(f"{arm} weight {weight} is not a level of this trace {levels}")
        total = WindowCounts()
        for j in range(levels.index(weight) + 1):
            total.merge(self._increment(arm, k, j, cold))
        return total

    def arm_window(self, arm: str, k: int, weight: int,
                   cold: bool = False) -> tuple[WindowCounts, EntityWindow]:
        key = (arm, k, weight, cold)
        cached = self._arms.get(key)
        if cached is None:
            started = time.perf_counter()
            counts = self.arm_counts(arm, k, weight, cold)
            cached = (counts, entity_window(arm, int((T0 + k * WINDOW_S) * 1000), counts))
            self._arms[key] = cached
            self.seconds += time.perf_counter() - started
        return cached

    def delivery(self, k: int) -> Mapping[str, Delivery]:
        """How export-metrics delivers window k of each arm (the same for every judge)."""
        if not self.realism.delivery.any_window_fault:
            return {}
        plan = self._delivery.get(k)
        if plan is None:
            plan = self._delivery[k] = self.realism.delivery.plan(self.key, k, (CAND, BASE))
        return plan

    def cold(self, arm: str, age: int | None) -> bool:
        """Whether ``arm`` is cold ``age`` windows after its split change (the bench's baseline
        only ever loses share in a canary, so only the candidate is asked)."""
        return is_cold(self.profiles[arm], age)

    def window(self, k: int, weight: int, candidate_age: int | None = None) -> Window:
        cold = self.cold(CAND, candidate_age)
        cached = self._windows.get((k, weight, cold))
        if cached is not None:
            return cached
        cand_counts, cand = self.arm_window(CAND, k, weight, cold)
        base_counts, base = self.arm_window(BASE, k, 100 - weight)
        window = Window(k, weight, cand, base, {CAND: cand_counts, BASE: base_counts})
        self._windows[(k, weight, cold)] = window
        return window


# --------------------------------------------------------------------------- export-metrics


class Feed:
    """The export side of the simulated endpoint in one rollout: windows close, scrapes deliver.

    ``set_split`` marks a split change (on the minute grid); ``scrape(now)`` closes the windows
    that ended by ``now`` (drawn at the live split, the candidate cold by its age since the
    split change), hands each arm's window to export-metrics as the scenario's delivery faults
    say, and feeds what is due to this scrape to the tracker as one ``Scrape``. A window due one
    scrape later is due a window length later: the first look at or after that time takes it.
    """

    def __init__(self, trace: Trace, arms: tuple[str, ...] = (CAND, BASE), *,
                 track: bool = True) -> None:
        self.trace = trace
        self.arms = arms
        self.track = track
        self.faults = trace.realism.delivery
        self.tracker = WindowTracker(window_ms=WINDOW_MS)
        self.delivered: list[tuple[float, EntityWindow]] = []  # (scrape time, window) if kept
        self.keep_log = False
        self._queue: list[tuple[float, EntityWindow]] = []
        self._next: float | None = None
        self._weight = 0
        self._changed_k = 0

    def set_split(self, now: float, weight: int) -> None:
        self._next, self._weight, self._changed_k = now, weight, _k(now)

    def scrape(self, now: float) -> list[Window]:
        """Deliver what is due at ``now``; return the windows that closed (as served)."""
        closed: list[Window] = []
        while self._next is not None and self._next + WINDOW_S <= now:
            k = _k(self._next)
            if self._weight in self.trace.levels[CAND]:
                closed.extend(self._close(k, self._next + WINDOW_S))
            self._next += WINDOW_S
        if self._queue:
            due = [w for t, w in self._queue if t <= now]
            if due:
                self._queue = [(t, w) for t, w in self._queue if t > now]
                if self.track:
                    self.tracker.observe(
                        Scrape(windows=due, kind="window", has_entity_labels=True),
                        round(now * 1000))
                if self.keep_log:
                    self.delivered.extend((now, w) for w in due)
        return closed

    def _close(self, k: int, closed_at: float) -> list[Window]:
        age = k - self._changed_k
        if len(self.arms) == 2:
            window = self.trace.window(k, self._weight, age)
            served = [(CAND, window.counts[CAND], window.candidate),
                      (BASE, window.counts[BASE], window.baseline)]
            out = [window]
        else:
            arm = self.arms[0]
            weight = self._weight if arm == CAND else 100 - self._weight
            cold = self.trace.cold(arm, age) if arm == CAND else False
            counts, ew = self.trace.arm_window(arm, k, weight, cold)
            served, out = [(arm, counts, ew)], []
        plan = self.trace.delivery(k)
        later = closed_at + WINDOW_S
        for arm, counts, ew in served:
            fate = plan.get(arm, "on_time")
            if fate == "on_time":
                self._queue.append((closed_at, ew))
            elif fate == "late":
                self._queue.append((later, ew))
            elif fate == "duplicate":
                self._queue += [(closed_at, ew), (later, ew)]
            elif fate == "revised":
                part = partial_counts(counts, self.faults.partial_fraction,
                                      substream(self.trace.key, k, "partial", arm))
                self._queue += [(closed_at, entity_window(arm, ew.start_ms or 0, part)),
                                (later, ew)]
            # "missing": export-metrics never shows it.
        return out

    def visible(self, split_applied_at: float | None) -> tuple[EntityWindow, ...]:
        """What the runner passes to ``decide``: every kept window since the split took effect."""
        if split_applied_at is None:
            return ()
        since_ms = split_applied_at * 1000
        return tuple(w for w in self.tracker.windows()
                     if w.start_ms is not None and w.start_ms >= since_ms)


# --------------------------------------------------------------------------- one rollout


@dataclass
class Run:
    """What one rollout did. ``end``: promoted | rolled_back | undecided."""

    end: str = "undecided"
    why: str = ""
    minutes: float = 0.0
    blast: float = 0.0  # 5xx served by the candidate
    exposure: float = 0.0  # requests served by the candidate
    first_conclusive: float | None = None  # candidate requests at the first pass/fail verdict
    first_error_check: float | None = None  # ... at the 5xx check's first pass or fail
    rollback_windows: float | None = None  # windows from the step's split change to rollback
    calls: int = 0
    fed: list[tuple[int, int, float, float, float, float]] = field(default_factory=list)

    def feed(self, window: Window, record: bool) -> None:
        self.blast += window.candidate.errors_5xx
        self.exposure += window.candidate.requests
        if record:
            c, b = window.candidate, window.baseline
            self.fed.append((window.k, window.weight, c.requests, c.errors_5xx, b.requests,
                             b.errors_5xx))


def _note_decision(run: Run, verdict: VerdictRecord) -> None:
    """Candidate requests so far, at the first conclusive verdict and 5xx check."""
    if run.first_conclusive is None and verdict.outcome in ("pass", "fail"):
        run.first_conclusive = run.exposure
    if run.first_error_check is None:
        for check in verdict.checks:
            if check.metric == "error_rate":
                if check.outcome in ("pass", "fail"):
                    run.first_error_check = run.exposure
                break


def run_engine(plan: AnyPlan, policy: Policy, trace: Trace, *, timing: Timing = DEFAULT_TIMING,
               record: bool = False, feed: Feed | None = None) -> Run:
    """Drive ``decide`` through one rollout, playing a perfect endpoint (see module doc)."""
    run = Run()
    feed = Feed(trace) if feed is None else feed
    state = RolloutState(started_at=T0)
    now = T0
    entities: dict[str, dict[str, Any]] = {BASE: dict(BASE_ENTITY)}
    split: dict[str, int] = {BASE: 100}
    version = 1
    applied = False
    for _ in range(MAX_TICKS):
        for window in feed.scrape(now):
            run.feed(window, record)
        windows = feed.visible(state.split_applied_at)
        obs = Observation(
            endpoint=EndpointSnapshot("READY", "NOT_UPDATING", version, entities, split),
            update=UpdateOutcome("applied") if applied else None,
            windows=windows,
        )
        decision = decide(plan, state, obs, now, policy=policy, timing=timing)
        run.calls += 1
        before, state = state, decision.state
        if (state.phase is Phase.ROLLING_BACK and before.phase is not Phase.ROLLING_BACK
                and before.split_applied_at is not None):
            run.rollback_windows = (now - before.split_applied_at) // WINDOW_S
        if windows and state.last_verdict is not None:
            _note_decision(run, state.last_verdict)
        if state.phase.terminal or state.phase is Phase.PAUSED:
            break
        if isinstance(decision.effect, PutConfig):
            target = decision.effect.target
            entities = {str(e["name"]): dict(e) for e in target.entities}
            split = dict(target.split)
            version += 1
            applied = True
            feed.set_split(now, split.get(CAND, 0))
            continue
        applied = False
        now += decision.next_check_in or timing.look_interval
    run.minutes = (now - T0) / 60.0
    if state.phase is Phase.SUCCEEDED:
        run.end = "promoted"
    elif state.phase is Phase.ROLLED_BACK and (state.ending_reason or "").startswith(
        "analysis failed"
    ):
        run.end = "rolled_back"
    elif state.phase in (Phase.PAUSED, Phase.ROLLED_BACK):
        run.end = "undecided"
        run.why = "deadline" if "deadline" in (
            state.pause_reason or state.ending_reason or ""
        ) else "paused"
    else:
        raise RuntimeError(f"rollout ended in {state.phase}: {state.ending_reason}")
    if run.end != "rolled_back":
        run.rollback_windows = None
    return run


# --------------------------------------------------------------------------- kayenta-like


def mann_whitney_greater(x: Sequence[float], y: Sequence[float]) -> float:
    """One-sided p-value of Mann-Whitney U (x stochastically greater than y).

    Normal approximation with the tie correction and a continuity correction, as
    ``scipy.stats.mannwhitneyu(method="asymptotic")`` computes it (a tenth of its cost here).
    """
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        return 1.0
    pooled = sorted([(v, 0) for v in x] + [(v, 1) for v in y])
    n = n1 + n2
    rank_x = 0.0
    ties = 0.0
    i = 0
    while i < n:
        j = i
        while j + 1 < n and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        size = j - i + 1
        mid = (i + j) / 2.0 + 1.0
        rank_x += mid * sum(1 for m in range(i, j + 1) if pooled[m][1] == 0)
        ties += size**3 - size
        i = j + 1
    u = rank_x - n1 * (n1 + 1) / 2.0
    var = n1 * n2 / 12.0 * ((n + 1) - ties / (n * (n - 1))) if n > 1 else 0.0
    if var <= 0.0:
        return 1.0
    z = (u - n1 * n2 / 2.0 - 0.5) / math.sqrt(var)
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _points(window: EntityWindow) -> tuple[float, float, float] | None:
    if window.requests <= 0 or window.latency is None:
        return None
    p99 = window.latency.quantile(0.99) or 0.0
    return (window.errors_5xx / window.requests, window.errors_4xx / window.requests, p99)


def run_kayenta(trace: Trace, *, record: bool = False) -> Run:
    """The canary schedule of ``PLAN`` judged Kayenta-style at every window (see module doc)."""
    run = Run()
    feed = Feed(trace)
    now = T0
    for weight, bake in STEPS:
        feed.set_split(now, weight)
        since_ms = round(now * 1000)
        for look in range(1, bake + 1):
            now += WINDOW_S
            for window in feed.scrape(now):
                run.feed(window, record)
            run.calls += 1
            points: dict[str | None, list[tuple[float, float, float]]] = {CAND: [], BASE: []}
            for w in feed.tracker.windows():
                if w.start_ms is not None and w.start_ms >= since_ms and w.entity in points:
                    p = _points(w)
                    if p is not None:
                        points[w.entity].append(p)
            cand_pts, base_pts = points[CAND], points[BASE]
            if len(cand_pts) < MW_MIN_POINTS or len(base_pts) < MW_MIN_POINTS:
                continue
            high = any(
                mann_whitney_greater([p[m] for p in cand_pts], [p[m] for p in base_pts]) < MW_P
                for m in range(3)
            )
            if high:
                run.end, run.minutes = "rolled_back", (now - T0) / 60.0
                run.rollback_windows = float(look)
                run.first_conclusive = run.exposure
                return run
        if run.first_conclusive is None:
            run.first_conclusive = run.exposure  # the first step's pass
    run.end, run.minutes = "promoted", (now - T0) / 60.0
    return run


# --------------------------------------------------------------------------- Wald's SPRT


def sprt_alternative(cell: Cell) -> float:
    """p1 of the reference SPRT: the regressed rate, or the default tolerance for ``none``."""
    if cell.effect == "none":
        return max(2.0 * cell.base_rate, cell.base_rate + 0.0005)
    return min(1.0, cell.base_rate * EFFECTS[cell.effect][0])


def wald_expected_samples(p0: float, p1: float, true_p: float, alpha: float = SPRT_ALPHA,
                          beta: float = SPRT_BETA) -> float:
    """Wald's approximate E[N] of the one-sample binomial SPRT of p0 against p1, at p0 or p1."""
    upper, lower = math.log((1 - beta) / alpha), math.log(beta / (1 - alpha))
    z1, z0 = math.log(p1 / p0), math.log((1 - p1) / (1 - p0))
    drift = true_p * z1 + (1 - true_p) * z0
    if math.isclose(true_p, p1):
        accept_h1 = 1 - beta
    elif math.isclose(true_p, p0):
        accept_h1 = alpha
    else:
        raise ValueError("Wald's closed form here is for the true rate at p0 or p1")
    return (accept_h1 * upper + (1 - accept_h1) * lower) / drift


@dataclass(frozen=True)
class SprtRun:
    requests: float  # candidate requests at the decision (inf: undecided)
    accepted: str  # "h1" | "h0" | "none"


def sprt_on_trace(trace: Trace, p0: float, p1: float, weight: int) -> SprtRun:
    """The SPRT looking once per window of the trace at a fixed split (see module doc).

    It reads the candidate's windows as delivered, each window start once in the last version
    delivered (a revision replaces what it counted of that window).
    """
    upper, lower = math.log((1 - SPRT_BETA) / SPRT_ALPHA), math.log(SPRT_BETA / (1 - SPRT_ALPHA))
    z1, z0 = math.log(p1 / p0), math.log((1 - p1) / (1 - p0))
    feed = Feed(trace, arms=(CAND,), track=False)
    feed.keep_log = True
    feed.set_split(T0, weight)
    seen: dict[int, tuple[float, float]] = {}
    requests = errors = 0.0
    now = T0
    for _ in range(SPRT_WINDOWS):
        now += WINDOW_S
        feed.scrape(now)
        for _t, w in feed.delivered:
            old = seen.get(w.start_ms or 0, (0.0, 0.0))
            seen[w.start_ms or 0] = (w.requests, w.errors_5xx)
            requests += w.requests - old[0]
            errors += w.errors_5xx - old[1]
        feed.delivered.clear()
        llr = errors * z1 + (requests - errors) * z0
        if llr >= upper:
            return SprtRun(requests, "h1")
        if llr <= lower:
            return SprtRun(requests, "h0")
    return SprtRun(math.inf, "none")


# --------------------------------------------------------------------------- one cell


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    m = statistics.median(values)
    return None if math.isinf(m) else float(m)


def summarize(cell: Cell, runs: Sequence[Run], seconds: float,
              deadline: float | None = None) -> dict[str, Any]:
    n = len(runs)
    ends = [r.end for r in runs]
    decided = [r.minutes for r in runs if r.end != "undecided"]
    rolled, promoted, undecided = (ends.count(e) / n for e in
                                   ("rolled_back", "promoted", "undecided"))
    in_time = sum(r.end == "promoted" and (deadline is None or r.minutes * 60.0 <= deadline)
                  for r in runs) / n
    rb_windows = [r.rollback_windows for r in runs
                  if r.end == "rolled_back" and r.rollback_windows is not None]
    return {
        "runs": n,
        "rolled_back": rolled,
        "promoted": promoted,
        "undecided": undecided,
        "undecided_deadline": sum(r.why == "deadline" for r in runs) / n,
        "false_rollback": None if cell.regressed else rolled,
        "missed": promoted if cell.regressed else None,
        "promoted_in_time": in_time,
        "rollback_windows_median": _median(rb_windows),
        "rollback_windows_max": max(rb_windows) if rb_windows else None,
        "rolled_back_within": sum(w <= ROLLBACK_WINDOWS for w in rb_windows) / n,
        "median_minutes": _median(decided),
        "blast_mean": statistics.fmean(r.blast for r in runs),
        "blast_median": float(statistics.median(r.blast for r in runs)),
        "exposure_mean": statistics.fmean(r.exposure for r in runs),
        "samples_to_decision_median": _median(
            [math.inf if r.first_conclusive is None else r.first_conclusive for r in runs]
        ),
        "samples_to_error_check_median": _median(
            [math.inf if r.first_error_check is None else r.first_error_check for r in runs]
        ),
        "decide_calls": sum(r.calls for r in runs),
        "seconds": seconds,
    }


@dataclass(frozen=True)
class Task:
    cell: Cell
    seeds: int  # the default judge's seeds (and the SPRT's on the control grid)
    master_seed: int
    judges: tuple[str, ...]
    other_seeds: int | None = None  # the other judges' (and the scenarios' SPRT); None: seeds

    def seeds_for(self, judge: str) -> int:
        if judge == "default" or self.other_seeds is None:
            return self.seeds
        return min(self.seeds, self.other_seeds)

    @property
    def sprt_seeds(self) -> int:
        return self.seeds if self.cell.scenario == "control" else self.seeds_for("sprt")


_POLICIES: dict[str, Policy] = {}


def _policy(name: str) -> Policy:
    if name not in _POLICIES:
        _POLICIES[name] = PolicyLibrary().get(name)
    return _POLICIES[name]


def simulate_cell(
    task: Task, *, record: bool = False
) -> tuple[dict[str, Any], dict[str, list[Run]]]:
    """Every judge of ``task`` over the cell's seeds, each seed's trace shared by all judges."""
    plan = canary_plan()
    cell = task.cell
    runs: dict[str, list[Run]] = {j: [] for j in task.judges}
    seconds = dict.fromkeys(task.judges, 0.0)
    sprt_runs: list[SprtRun] = []
    trace_seconds = 0.0
    error_cell = cell.effect in ERROR_EFFECTS
    seeds = max([task.seeds_for(j) for j in task.judges]
                + ([task.sprt_seeds] if error_cell else []))
    for seed in range(seeds):
        trace = Trace(cell, seed, task.master_seed)
        for judge in task.judges:
            if seed >= task.seeds_for(judge):
                continue
            drawn = trace.seconds
            started = time.perf_counter()
            if judge in ENGINE_JUDGES:
                run = run_engine(plan, _policy(judge), trace, record=record)
            elif judge == "kayenta-like":
                run = run_kayenta(trace, record=record)
            else:
                raise ValueError(f"unknown judge {judge!r}")
            seconds[judge] += time.perf_counter() - started - (trace.seconds - drawn)
            runs[judge].append(run)
        if error_cell and seed < task.sprt_seeds:
            drawn = trace.seconds
            started = time.perf_counter()
            sprt_runs.append(sprt_on_trace(trace, cell.base_rate, sprt_alternative(cell),
                                           STEPS[0][0]))
            trace.seconds += time.perf_counter() - started - (trace.seconds - drawn)
        trace_seconds += trace.seconds
    result: dict[str, Any] = {
        "cell": {"scenario": cell.scenario, "base_rate": cell.base_rate, "qps": cell.qps,
                 "effect": cell.effect, "key": cell.key},
        "judges": {
            j: summarize(cell, runs[j], seconds[j],
                         _policy(j).deadline if j in ENGINE_JUDGES else None)
            for j in task.judges
        },
        "trace_seconds": trace_seconds,
    }
    if "default" in runs and "flagger-compatible" in runs:
        # The seeds both judges ran (the default's first ones): the same traces, paired.
        pairs = list(zip(runs["default"], runs["flagger-compatible"], strict=False))
        result["paired"] = {
            "seeds": len(pairs),
            "default_blast_le_flagger": sum(d.blast <= f.blast for d, f in pairs) / len(pairs),
            "default_blast_mean": statistics.fmean(d.blast for d, _ in pairs),
            "flagger_blast_mean": statistics.fmean(f.blast for _, f in pairs),
        }
    if error_cell:
        p1 = sprt_alternative(cell)
        true_p = cell.base_rate if cell.effect == "none" else p1
        result["sprt"] = {
            "p0": cell.base_rate,
            "p1": p1,
            "runs": len(sprt_runs),
            "wald_expected": wald_expected_samples(cell.base_rate, p1, true_p),
            "per_window_median": _median([s.requests for s in sprt_runs]),
            "per_window_requests": cell.qps * WINDOW_S * STEPS[0][0] / 100.0,
            "accepted_h1": sum(s.accepted == "h1" for s in sprt_runs) / max(1, len(sprt_runs)),
        }
    return result, runs


def run_task(task: Task) -> dict[str, Any]:
    return simulate_cell(task)[0]


# --------------------------------------------------------------------------- targets


def _pct(x: float | None) -> str:
    return "   n/a" if x is None else f"{x * 100:5.1f}%"


def _num(x: float | None, width: int = 8) -> str:
    if x is None:
        return f"{'never':>{width}}"
    if x >= 1e5:
        return f"{x:{width}.3g}"
    return f"{x:{width}.1f}" if x < 100 else f"{x:{width}.0f}"


def _blast_context(c: dict[str, Any], healthy: dict[tuple[float, float], Any]) -> list[str]:
    """Why a blast-radius miss happens, from the same run's numbers (the first note is plain)."""
    d, f = c["judges"]["default"], c["judges"]["flagger-compatible"]
    notes = []
    if c["cell"]["effect"] == "err x1.5":
        notes.append("inside the default tolerance (2x)")
    if d["undecided"] >= 0.5:
        notes.append(f"default holds, {d['undecided']:.0%} undecided")
    base = healthy.get((c["cell"]["base_rate"], c["cell"]["qps"]))
    if base is not None:
        f_false = base["judges"]["flagger-compatible"]["false_rollback"]
        if f_false >= 0.5:
            notes.append(f"flagger rolls back {f_false:.0%} of healthy candidates here")
    if not notes:
        notes.append(f"no mitigating reason: default {d['rolled_back']:.0%} rolled back in "
                     f"median {d['median_minutes'] or 0:.0f} min, flagger "
                     f"{f['rolled_back']:.0%} in {f['median_minutes'] or 0:.0f} min")
    return notes


def binomial_upper(k: int, n: int, level: float = 0.95) -> float:
    """One-sided Clopper-Pearson upper bound: the p at which P(X <= k; n, p) = 1 - level."""
    def cdf(p: float) -> float:
        return math.fsum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k + 1))

    if k >= n:
        return 1.0
    lo, hi = k / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) > 1 - level else (lo, mid)
    return hi


def _where(c: dict[str, Any]) -> str:
    k = c["cell"]
    scenario = k.get("scenario", "control")
    head = "" if scenario == "control" else f"{scenario}: "
    return f"{head}{k['base_rate'] * 100:g}% base, {k['qps']:g} req/s, {k['effect']}"


def _target(name: str, checked: int, misses: list[str]) -> dict[str, Any]:
    """A target's verdict; ``pass`` is None when no cell of this run can tell."""
    return {"target": name, "checked": checked, "pass": not misses if checked else None,
            "misses": misses}


def _scenario_of(c: dict[str, Any]) -> Scenario:
    return SCENARIOS[c["cell"].get("scenario", "control")]


def _targeted(c: dict[str, Any]) -> bool:
    return _scenario_of(c).target


def _false_rollback_target(cells: list[dict[str, Any]]) -> dict[str, Any]:
    misses, checked = [], 0
    worst: tuple[float, int] = (0.0, 0)
    for c in cells:
        d = c["judges"].get("default")
        if d is None or c["cell"]["effect"] != "none" or not _targeted(c):
            continue
        if c["cell"].get("scenario", "control") != "control" and c["cell"]["qps"] < 10:
            continue
        checked += 1
        worst = max(worst, (d["false_rollback"], d["runs"]))
        if d["false_rollback"] > 0.01:
            misses.append(f"{_where(c)}: {_pct(d['false_rollback']).strip()}")
    target = _target("default false rollback <= 1 % in every healthy cell (control: every "
                     "traffic; scenarios: 10-1000 req/s, CV <= 0.5)", checked, misses)
    rate, runs = worst
    if runs:
        # One-sided 95 % Clopper-Pearson upper bound of the worst cell's rate.
        upper = binomial_upper(round(rate * runs), runs)
        target["note"] = (f"worst cell {rate:.1%} of {runs}; its 95 % upper bound "
                          f"{upper:.1%}")
    return target


def _missed_target(cells: list[dict[str, Any]]) -> dict[str, Any]:
    misses, checked = [], 0
    for c in cells:
        d = c["judges"].get("default")
        if (d is None or c["cell"]["effect"] != "err x2" or c["cell"]["qps"] < 10
                or not _targeted(c)):
            continue
        checked += 1
        if d["missed"] > 0.05:
            misses.append(f"{_where(c)}: {_pct(d['missed']).strip()} promoted")
    return _target("default missed 2x 5xx regressions <= 5 % at >= 10 req/s in every scenario",
                   checked, misses)


def _in_time_target(cells: list[dict[str, Any]]) -> dict[str, Any]:
    misses, checked = [], 0
    for c in cells:
        d = c["judges"].get("default")
        if (d is None or c["cell"]["effect"] != "none" or c["cell"]["qps"] < 100
                or not _targeted(c)):
            continue
        checked += 1
        if d["promoted_in_time"] < 0.95:
            misses.append(f"{_where(c)}: {_pct(d['promoted_in_time']).strip()} promoted in "
                          f"time ({_pct(d['rolled_back']).strip()} rolled back, "
                          f"{_pct(d['undecided']).strip()} undecided)")
    return _target("default promotes healthy candidates within the plan's time in >= 95 % of "
                   "runs at >= 100 req/s in every scenario", checked, misses)


def _fast_rollback_target(cells: list[dict[str, Any]]) -> dict[str, Any]:
    misses, checked = [], 0
    for c in cells:
        d = c["judges"].get("default")
        if (d is None or c["cell"]["effect"] != "err x5" or c["cell"]["qps"] < 1000
                or not _targeted(c)):
            continue
        checked += 1
        if d["rolled_back_within"] < 0.95:
            worst = d["rollback_windows_max"]
            misses.append(f"{_where(c)}: {_pct(d['rolled_back_within']).strip()} within "
                          f"{ROLLBACK_WINDOWS} windows (rolled back "
                          f"{_pct(d['rolled_back']).strip()}, median "
                          f"{_num(d['rollback_windows_median'], 1).strip()} windows, worst "
                          f"{_num(worst, 1).strip()})")
    return _target(f"default rolls a 5x 5xx regression at 1000 req/s back within "
                   f"{ROLLBACK_WINDOWS} windows of the split change that exposes it in >= 95 % "
                   "of runs, every scenario", checked, misses)


def _blast_target(cells: list[dict[str, Any]]) -> dict[str, Any]:
    misses, checked, plain = [], 0, 0
    control = [c for c in cells if c["cell"].get("scenario", "control") == "control"]
    healthy = {(c["cell"]["base_rate"], c["cell"]["qps"]): c for c in control
               if c["cell"]["effect"] == "none"}
    for c in control:
        d, f = c["judges"].get("default"), c["judges"].get("flagger-compatible")
        if d is None or f is None or c["cell"]["effect"] == "none":
            continue
        checked += 1
        # On the seeds both ran (the same traces) when the judges ran different numbers.
        paired = c.get("paired") or {}
        mine = paired.get("default_blast_mean", d["blast_mean"])
        theirs = paired.get("flagger_blast_mean", f["blast_mean"])
        if mine > 0.5 * theirs and mine > 0.0:
            notes = _blast_context(c, healthy)
            plain += notes[0].startswith("no mitigating")
            misses.append(f"{_where(c)}: {mine:.1f} vs {theirs:.1f} 5xx"
                          f" [{'; '.join(notes)}]")
    target = _target("control: default mean blast radius <= 1/2 of flagger-compatible's on "
                     "the seeds both ran (regression cells)", checked, misses)
    target["misses_without_mitigating_reason"] = plain
    return target


def _sprt_target(cells: list[dict[str, Any]]) -> dict[str, Any]:
    misses, checked = [], 0
    for row in sprt_rows(cells):
        if not row["targeted"]:
            continue
        checked += 1
        if row["pass"]:
            continue
        got, s = row["check"], row["sprt"]
        shown = "never (median)" if got is None else f"{got:.0f}"
        notes = []
        if s["per_window_median"] is None:
            notes.append("the SPRT looking once per 60 s window cannot decide within 2 h at "
                         "5 % either")
        elif s["per_window_requests"] > 2.0 * s["wald_expected"]:
            notes.append("one 60 s window at 5 % already holds more than 2x E[N]")
        if got is not None and s["per_window_median"]:
            notes.append(f"{got / s['per_window_median']:.2f}x the SPRT looking per window")
        misses.append(f"{row['where']}: {shown} vs SPRT {s['wald_expected']:.0f}"
                      + (f" [{'; '.join(notes)}]" if notes else ""))
    return _target("control: default median samples to its 5xx check's decision within 2x of "
                   "Wald's SPRT E[N] (none, err x2, err x5)", checked, misses)


def evaluate_targets(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The targets, each PASS or MISS with the cells that miss and why."""
    return [_false_rollback_target(cells), _missed_target(cells), _in_time_target(cells),
            _fast_rollback_target(cells), _blast_target(cells), _sprt_target(cells)]


def scenario_summary(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """One scenario's worst numbers for the default judge, each against its target."""
    def worst(effect: str, metric: str, min_qps: float, pick: Any) -> float | None:
        values = [c["judges"]["default"][metric] for c in cells
                  if "default" in c["judges"] and c["cell"]["effect"] == effect
                  and c["cell"]["qps"] >= min_qps]
        return pick(values) if values else None

    control = cells and cells[0]["cell"].get("scenario", "control") == "control"
    out = {
        "false_rollback_max": worst("none", "false_rollback", 1.0 if control else 10.0, max),
        "missed_2x_max": worst("err x2", "missed", 10.0, max),
        "in_time_min": worst("none", "promoted_in_time", 100.0, min),
        "within_min": worst("err x5", "rolled_back_within", 1000.0, min),
    }
    checks = {
        "false_rollback_max": lambda v: v <= 0.01,
        "missed_2x_max": lambda v: v <= 0.05,
        "in_time_min": lambda v: v >= 0.95,
        "within_min": lambda v: v >= 0.95,
    }
    out["pass"] = {k: None if out[k] is None else bool(checks[k](out[k])) for k in checks}
    return out


# --------------------------------------------------------------------------- reporting


def _sorted_cells(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    order = {e: i for i, e in enumerate(EFFECTS)}
    scenarios = {s: i for i, s in enumerate(SCENARIOS)}
    return sorted(cells, key=lambda c: (scenarios[c["cell"].get("scenario", "control")],
                                        c["cell"]["base_rate"], c["cell"]["qps"],
                                        order[c["cell"]["effect"]]))


def _by_scenario(cells: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for c in _sorted_cells(cells):
        out.setdefault(c["cell"].get("scenario", "control"), []).append(c)
    return out


def text_table(cells: list[dict[str, Any]], judges: Sequence[str]) -> str:
    head = f"{'base':>5} {'req/s':>5} {'effect':<8}"
    sub = " " * len(head)
    for j in judges:
        head += f" | {j:<40}"
        sub += f" | {'rb%':>5} {'pr%':>5} {'un%':>5} {'time%':>5} {'min':>4} {'blast':>10}"
    lines = []
    for scenario, group in _by_scenario(cells).items():
        lines += ["", f"## {scenario}: {SCENARIOS[scenario].title}", head, sub, "-" * len(sub)]
        for c in group:
            k = c["cell"]
            row = f"{k['base_rate'] * 100:4.1f}% {k['qps']:5.0f} {k['effect']:<8}"
            for j in judges:
                s = c["judges"][j]
                minutes = "  - " if s["median_minutes"] is None else f"{s['median_minutes']:4.0f}"
                row += (f" | {s['rolled_back'] * 100:5.1f} {s['promoted'] * 100:5.1f} "
                        f"{s['undecided'] * 100:5.1f} {s['promoted_in_time'] * 100:5.1f} "
                        f"{minutes} {s['blast_mean']:10.1f}")
            lines.append(row)
    return "\n".join(lines[1:])


def sprt_rows(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The default judge's samples to decision beside the SPRT's, one row per control 5xx cell."""
    rows = []
    for c in _sorted_cells(cells):
        s = c.get("sprt")
        d = c["judges"].get("default")
        if s is None or d is None or c["cell"].get("scenario", "control") != "control":
            continue
        k = c["cell"]
        check = d["samples_to_error_check_median"]
        windowed = s["per_window_median"]
        targeted = k["effect"] in SPRT_TARGET_EFFECTS
        rows.append({
            "cell": k,
            "where": f"{k['base_rate'] * 100:g}% base, {k['qps']:g} req/s, {k['effect']}",
            "sprt": s,
            "check": check,
            "verdict": d["samples_to_decision_median"],
            "vs_wald": None if check is None else check / s["wald_expected"],
            "vs_windowed": None if check is None or windowed is None else check / windowed,
            "targeted": targeted,
            "pass": targeted and check is not None and check <= 2.0 * s["wald_expected"],
        })
    return rows


def _ratio(x: float | None, width: int) -> str:
    return f"{'never' if x is None else f'{x:.2f}':>{width}}"


def sprt_table(cells: list[dict[str, Any]]) -> str:
    head = (f"{'base':>5} {'req/s':>5} {'effect':<8} {'p1':>7} {'Wald E[N]':>10} "
            f"{'SPRT/60s':>9} {'req/win':>8} {'5xx check':>10} {'/Wald':>6} {'/60s':>6} "
            f"{'verdict':>9}  target")
    lines = [head, "-" * len(head)]
    for row in sprt_rows(cells):
        k, s = row["cell"], row["sprt"]
        vs60 = "     -" if row["check"] is not None and row["vs_windowed"] is None else (
            _ratio(row["vs_windowed"], 6))
        lines.append(
            f"{k['base_rate'] * 100:4.1f}% {k['qps']:5.0f} {k['effect']:<8} "
            f"{s['p1'] * 100:6.2f}% {_num(s['wald_expected'], 10)} "
            f"{_num(s['per_window_median'], 9)} {_num(s['per_window_requests'], 8)} "
            f"{_num(row['check'], 10)} {_ratio(row['vs_wald'], 6)} {vs60} "
            f"{_num(row['verdict'], 9)}  "
            + ("-" if not row["targeted"] else "PASS" if row["pass"] else "MISS")
        )
    return "\n".join(lines)


def targets_text(targets: list[dict[str, Any]]) -> str:
    lines = []
    for t in targets:
        plain = t.get("misses_without_mitigating_reason")
        verdict = "n/a " if t["pass"] is None else "PASS" if t["pass"] else "MISS"
        lines.append(f"[{verdict}] {t['target']} "
                     f"({t['checked']} cells, {len(t['misses'])} missing"
                     + ("" if plain is None else f", {plain} without a mitigating reason")
                     + ")")
        if t.get("note"):
            lines.append(f"       ({t['note']})")
        lines.extend(f"       - {m}" for m in t["misses"])
    return "\n".join(lines)


def describe_setup(args: argparse.Namespace, judges: Sequence[str],
                   scenarios: Sequence[str]) -> str:
    steps = ", ".join(f"{w} % for {b} min" for w, b in STEPS)
    others = [j for j in judges if j != "default"]
    seeds = f"{args.seeds} seeds per cell"
    if args.control_seeds < args.seeds and "control" in scenarios:
        seeds += f" ({args.control_seeds} on the control grid)"
    if others and args.other_seeds < args.seeds:
        seeds += (f" for the default judge; {args.other_seeds} for {', '.join(others)} (the "
                  f"default's first {args.other_seeds}: the same traces) and for the SPRT "
                  "outside the control grid")
    return (
        f"canary {steps}, then 100 %; 60 s windows; perfect endpoint (a PUT is live at once); "
        f"{seeds}, master seed {args.master_seed}; judges: {', '.join(judges)}; scenarios: "
        f"{', '.join(scenarios)}; control latency p50 {P50_MS:g} ms / p99 {P99_MS:g} ms "
        f"(log-normal), 4xx {CLIENT_ERROR_RATE:.1%} both arms"
    )


MD_TRACES = (
    "Same traces: for a (scenario, cell, seed), window k at a given split holds the same counts "
    "and the same delivery for every judge; between splits the counts are nested Poisson "
    "streams (a larger candidate share sees a superset of the candidate's requests), drawn "
    "with the sandbox's `simulate_window` under `rollout.sandbox.realism` conditions (see the "
    "module docstring of `bench/decisions.py`). Each look is a scrape into a `WindowTracker`; "
    "`decide` receives every kept window since the split took effect."
)
MD_COLUMNS = (
    "Columns per judge: rb = rolled back by a failed analysis (for `none`: false rollback), "
    "pr = promoted (for a regression: missed), un = undecided (paused or deadline), in time = "
    "promoted before any pause or deadline, min = median minutes to promotion or rollback, "
    "blast = mean 5xx served by the candidate before its traffic was taken away (or during "
    "the whole rollout)."
)
MD_SCENARIO_COLUMNS = (
    "One row per scenario (its worst cells against the default judge's targets: false "
    "rollback at 10-1000 req/s, missed `err x2` at >= 10 req/s, promoted in time at >= 100 "
    "req/s, `err x5` at 1000 req/s rolled back within 4 windows), then its cells. Per cell, "
    "default: rb / pr / un / in time %, `<= 4 w` = rolled back within 4 windows of the split "
    "change (median windows), min, blast; the other judges: rb / pr / un %; SPRT H1 % = how "
    "often the one-sample SPRT with the baseline's nominal rate as p0, at 5 %, accepts H1."
)
MD_SPRT = (
    "One-sample SPRT of p0 = baseline rate against p1 (the regressed rate; for `none` the "
    "default tolerance 2x), alpha 1 %, beta 5 %, on the candidate's requests: Wald's E[N]. "
    "`SPRT/60s`: the same SPRT looking once per window of the same traces at 5 % (median, at "
    "most 120 windows; `never`: undecided in most seeds). `default 5xx check`: median candidate "
    "requests until the default judge's 5xx check first passes or fails (what the SPRT "
    "measures; the target is read on it); `default verdict`: until its first pass or fail "
    "verdict, which for a healthy candidate also waits for the 4xx and p99 checks. Medians count "
    "an undecided rollout as infinite (`never`: undecided in half the seeds or more)."
)

MD_SPRT_HEAD = (
    "| base | req/s | effect | p1 | Wald E[N] | SPRT/60s | cand. req/window at 5 % | default "
    "5xx check | / Wald | / SPRT/60s | default verdict | target |"
)


def _mark(ok: bool | None) -> str:
    return "" if ok is None else " PASS" if ok else " MISS"


def _scenario_row(key: str, group: list[dict[str, Any]], width: int) -> str:
    s = scenario_summary(group)
    ok = s["pass"]
    parts = []
    if s["false_rollback_max"] is not None:
        parts.append(f"false rb max {s['false_rollback_max'] * 100:.1f} %"
                     + _mark(ok["false_rollback_max"] if SCENARIOS[key].target else None))
    if s["missed_2x_max"] is not None:
        parts.append(f"missed 2x max {s['missed_2x_max'] * 100:.1f} %"
                     + _mark(ok["missed_2x_max"] if SCENARIOS[key].target else None))
    if s["in_time_min"] is not None:
        parts.append(f"in time min {s['in_time_min'] * 100:.1f} %"
                     + _mark(ok["in_time_min"] if SCENARIOS[key].target else None))
    if s["within_min"] is not None:
        parts.append(f"5x rb <= 4 w min {s['within_min'] * 100:.1f} %"
                     + _mark(ok["within_min"] if SCENARIOS[key].target else None))
    return (f"| **{key}** | {SCENARIOS[key].title}: " + "; ".join(parts) + " |"
            + " |" * (width - 2))


def scenario_markdown(cells: list[dict[str, Any]], judges: Sequence[str]) -> list[str]:
    others = [j for j in judges if j != "default"]
    head = ("| scenario / req/s | effect | default rb / pr / un / in time % | <= 4 w (median) "
            "| min | blast |" + "".join(f" {j} rb / pr / un % |" for j in others)
            + " SPRT H1 % |")
    width = 6 + len(others) + 1
    out = [head, "|" + "---|" * width]
    for key, group in _by_scenario(cells).items():
        if key == "control":
            continue
        out.append(_scenario_row(key, group, width))
        for c in group:
            k = c["cell"]
            row = f"| {k['qps']:g} | {k['effect']} |"
            if "default" in c["judges"]:
                d = c["judges"]["default"]
                minutes = "-" if d["median_minutes"] is None else f"{d['median_minutes']:.0f}"
                within = "-" if k["effect"] == "none" else (
                    f"{d['rolled_back_within'] * 100:.0f} % "
                    f"({_num(d['rollback_windows_median'], 1).strip()})")
                row += (f" {d['rolled_back'] * 100:.1f} / {d['promoted'] * 100:.1f} / "
                        f"{d['undecided'] * 100:.1f} / {d['promoted_in_time'] * 100:.1f} | "
                        f"{within} | {minutes} | {d['blast_mean']:.1f} |")
            else:
                row += " - | - | - | - |"
            for j in others:
                s = c["judges"][j]
                row += (f" {s['rolled_back'] * 100:.0f} / {s['promoted'] * 100:.0f} / "
                        f"{s['undecided'] * 100:.0f} |")
            sprt = c.get("sprt")
            row += f" {sprt['accepted_h1'] * 100:.0f} |" if sprt else " - |"
            out.append(row)
    return out


def markdown(cells: list[dict[str, Any]], judges: Sequence[str], *,
             targets: list[dict[str, Any]], setup: str, wall: float,
             timing: dict[str, Any], command: str,
             updates: Sequence[dict[str, Any]] = ()) -> str:
    out = ["# Decision quality: simulated canary rollouts through decide()", "",
           f"Setup: {setup}.", "", f"Command: `{command}`", "", MD_TRACES, "", MD_COLUMNS, "",
           "## Targets", "", "```", targets_text(targets), "```", ""]
    groups = _by_scenario(cells)
    if any(key != "control" for key in groups):
        out += ["## Scenarios (real traffic)", "", MD_SCENARIO_COLUMNS, "",
                *scenario_markdown(cells, judges), ""]
    control = groups.get("control", [])
    if control:
        out += ["## Control grid (independent requests)", ""]
        head = "| base | req/s | effect |" + "".join(
            f" {j} rb % | pr % | un % | min | blast |" for j in judges)
        out += [head, "|" + "---|" * (3 + 5 * len(judges))]
        for c in control:
            k = c["cell"]
            row = f"| {k['base_rate'] * 100:g} % | {k['qps']:g} | {k['effect']} |"
            for j in judges:
                s = c["judges"][j]
                minutes = "-" if s["median_minutes"] is None else f"{s['median_minutes']:.0f}"
                row += (f" {s['rolled_back'] * 100:.1f} | {s['promoted'] * 100:.1f} | "
                        f"{s['undecided'] * 100:.1f} | {minutes} | {s['blast_mean']:.1f} |")
            out.append(row)
        out += ["", "## Samples to decision against Wald's SPRT (control 5xx cells)", "",
                MD_SPRT, "", MD_SPRT_HEAD, "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in sprt_rows(cells):
            k, s = r["cell"], r["sprt"]
            vs60 = "-" if r["check"] is not None and r["vs_windowed"] is None else (
                _ratio(r["vs_windowed"], 1).strip())
            target = "-" if not r["targeted"] else "PASS" if r["pass"] else "MISS"
            out.append(
                f"| {k['base_rate'] * 100:g} % | {k['qps']:g} | {k['effect']} | "
                f"{s['p1'] * 100:.3g} % | {s['wald_expected']:.0f} | "
                f"{_num(s['per_window_median'], 1).strip()} | {s['per_window_requests']:g} | "
                f"{_num(r['check'], 1).strip()} | {_ratio(r['vs_wald'], 1).strip()} | {vs60} | "
                f"{_num(r['verdict'], 1).strip()} | {target} |")
        out.append("")
    out += [f"Wall time {wall:.0f} s on {timing['workers']} worker processes "
            f"({timing['cpu_seconds']:.0f} s CPU); per look: "
            + ", ".join(f"{j} {v['ms_per_call']:.2f} ms" for j, v in timing["judges"].items())
            + f"; trace drawing {timing['trace_seconds']:.0f} s in all.", ""]
    out += [f"Re-run since and merged (`--update`): {', '.join(u['scenarios'])} at {u['at']}, "
            f"{u['wall_seconds']:.0f} s wall, `{u['command']}`." for u in updates]
    return "\n".join(out) + ("\n" if updates else "")


def plot(cells: list[dict[str, Any]], judges: Sequence[str], path: Path) -> bool:
    """The control grid by traffic; False when there is no control cell to draw."""
    import matplotlib  # noqa: PLC0415 - only the full report needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    rows: list[tuple[str, str, str]] = [
        ("none", "rolled_back", "false rollback %"),
        ("none", "undecided", "undecided (healthy) %"),
        ("err x2", "promoted", "missed (promoted) err x2 %"),
        ("err x5", "promoted", "missed (promoted) err x5 %"),
        ("p99 x2", "promoted", "missed (promoted) p99 x2 %"),
        ("err x2", "blast_mean", "blast radius err x2 (5xx)"),
        ("err x5", "blast_mean", "blast radius err x5 (5xx)"),
    ]
    index = {(c["cell"]["base_rate"], c["cell"]["qps"], c["cell"]["effect"]): c for c in cells
             if c["cell"].get("scenario", "control") == "control"}
    if not index:
        return False
    fig, axes = plt.subplots(len(rows), len(BASE_RATES), figsize=(4.2 * len(BASE_RATES),
                                                                   2.4 * len(rows)),
                             sharex=True, squeeze=False)
    for r, (effect, metric, label) in enumerate(rows):
        for col, base in enumerate(BASE_RATES):
            ax = axes[r][col]
            for n, judge in enumerate(judges):
                xs, ys = [], []
                for qps in TRAFFIC:
                    c = index.get((base, qps, effect))
                    if c is None:
                        continue
                    value = c["judges"][judge][metric]
                    xs.append(qps)
                    ys.append(value * 100 if metric != "blast_mean" else max(value, 0.1))
                ax.plot(xs, ys, marker="osD^v"[n % 5], linestyle=("-", "--", ":", "-.")[n % 4],
                        alpha=0.8, label=judge)
            ax.set_xscale("log")
            if metric == "blast_mean":
                ax.set_yscale("log")
            else:
                ax.set_ylim(-4, 104)
            if r == 0:
                ax.set_title(f"baseline 5xx {base * 100:g} %")
            if col == 0:
                ax.set_ylabel(label, fontsize=8)
            if r == len(rows) - 1:
                ax.set_xlabel("endpoint req/s")
            ax.grid(visible=True, alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Canary 5/25/50 % x 10 min through decide(), same traces for every judge")
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_scenarios(cells: list[dict[str, Any]], judges: Sequence[str], path: Path) -> bool:
    """Per scenario and traffic: false rollback, missed err x2, promoted in time, per judge."""
    import matplotlib  # noqa: PLC0415 - only the full report needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    groups = {k: v for k, v in _by_scenario(cells).items() if k != "control"}
    if not groups:
        return False
    panels = [("none", "rolled_back", "false rollback %"),
              ("err x2", "promoted", "missed err x2 %"),
              ("none", "promoted_in_time", "healthy promoted in time %")]
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(8.0, 0.75 * len(groups) * 3), 9.0),
                             squeeze=False)
    labels = [f"{key}\n{q:g}/s" for key in groups for q in (10.0, 100.0, 1000.0)]
    width = 0.8 / max(1, len(judges))
    for p, (effect, metric, title) in enumerate(panels):
        ax = axes[p][0]
        for n, judge in enumerate(judges):
            ys = []
            for group in groups.values():
                for q in (10.0, 100.0, 1000.0):
                    c = next((c for c in group if c["cell"]["qps"] == q
                              and c["cell"]["effect"] == effect), None)
                    ys.append(100 * c["judges"][judge][metric] if c is not None
                              and judge in c["judges"] else 0.0)
            xs = [i + n * width for i in range(len(labels))]
            ax.bar(xs, ys, width=width, label=judge)
        ax.set_xticks([i + 0.4 - width / 2 for i in range(len(labels))])
        ax.set_xticklabels(labels, fontsize=5, rotation=90)
        ax.set_ylim(0, 104)
        ax.set_ylabel(title, fontsize=8)
        ax.grid(visible=True, axis="y", alpha=0.3)
    axes[0][0].legend(fontsize=7, ncol=len(judges))
    fig.suptitle("Real-traffic scenarios through decide(), same traces for every judge")
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.decisions",
        description="Decision quality of the judges on simulated canary rollouts.",
    )
    parser.add_argument("--seeds", type=int, default=200,
                        help="seeds (rollouts) per cell for the default judge")
    parser.add_argument("--other-seeds", type=int, default=15,
                        help="seeds per cell for the other judges and the scenarios' SPRT "
                        "(at most the default judge's)")
    parser.add_argument("--control-seeds", type=int, default=30,
                        help="the default judge's seeds per cell on the control grid (at most "
                        "--seeds)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 seeds per cell")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--master-seed", type=int, default=20240601)
    parser.add_argument("--judges", default=",".join(JUDGES))
    parser.add_argument("--scenarios", default="",
                        help="comma-separated scenarios (a name also selects name-*); "
                        f"default all: {', '.join(SCENARIOS)}")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--update", action="store_true",
                        help="re-run only --scenarios and merge them into the report in --out "
                        "(which must have run with the same seeds and judges)")
    parser.add_argument("--profile", action="store_true",
                        help="profile one cell in-process (1 %% base, 100 req/s, none) and exit")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = 10
    args.control_seeds = min(args.seeds, args.control_seeds)
    args.other_seeds = min(args.seeds, args.control_seeds, args.other_seeds)
    return args


def profile_one(args: argparse.Namespace, judges: tuple[str, ...], scenario: str) -> None:
    task = Task(Cell(0.01, 100.0, "none", scenario), min(args.seeds, 30), args.master_seed,
                judges)
    profiler = cProfile.Profile()
    profiler.enable()
    simulate_cell(task)
    profiler.disable()
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats("cumulative").print_stats(35)
    print(buffer.getvalue())


def _cost(task: Task) -> tuple[float, bool]:
    # Slow cells first (low traffic runs longest), so the two workers finish together.
    return (task.cell.qps, task.cell.effect != "none")


def _run_tasks(args: argparse.Namespace, judges: tuple[str, ...], scenarios: Sequence[str],
               started: float) -> list[dict[str, Any]]:
    tasks = sorted((Task(c, args.control_seeds if c.scenario == "control" else args.seeds,
                         args.master_seed, judges, args.other_seeds)
                    for c in all_cells(scenarios)), key=_cost)
    if args.workers <= 1:
        return [run_task(t) for t in tasks]
    cells: list[dict[str, Any]] = []
    with multiprocessing.get_context("fork").Pool(args.workers) as pool:
        for done, result in enumerate(pool.imap_unordered(run_task, tasks), 1):
            cells.append(result)
            if done % 12 == 0:
                print(f"  {done}/{len(tasks)} cells, {time.monotonic() - started:.0f} s",
                      file=sys.stderr)
    return cells


_SETTINGS = ("seeds", "control_seeds", "other_seeds", "master_seed")


def _previous(args: argparse.Namespace, judges: tuple[str, ...]) -> dict[str, Any]:
    """The report ``--update`` merges into; refused unless it ran with the same settings."""
    path = args.out / "decisions.json"
    try:
        previous: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"--update needs a previous report at {path}: {exc}") from exc
    differ = [f"{name} {previous.get(name)} (now {getattr(args, name)})" for name in _SETTINGS
              if previous.get(name) != getattr(args, name)]
    if previous.get("judges") != list(judges):
        differ.append(f"judges {previous.get('judges')}")
    if differ:
        raise ValueError("--update: the previous report ran with other settings: "
                         + ", ".join(differ))
    return previous


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    judges = tuple(j.strip() for j in args.judges.split(",") if j.strip())
    unknown = [j for j in judges if j not in JUDGES]
    if unknown:
        print(f"unknown judges: {', '.join(unknown)} (known: {', '.join(JUDGES)})",
              file=sys.stderr)
        return 2
    try:
        scenarios = select_scenarios(args.scenarios)
        previous = _previous(args, judges) if args.update else None
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.profile:
        profile_one(args, judges, scenarios[0])
        return 0
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    cells = _run_tasks(args, judges, scenarios, started)
    wall = time.monotonic() - started
    timing = _timing(args, cells, judges, wall, load_before)
    command = " ".join(["python -m bench.decisions", *(sys.argv[1:] if argv is None else argv)])
    updates: list[dict[str, Any]] = []
    if previous is not None:
        # The rest of the report stays as the full run left it; the re-run is recorded.
        cells += [c for c in previous["cells"] if c["cell"]["scenario"] not in scenarios]
        scenarios = [k for k in SCENARIOS if k in scenarios or k in previous["scenarios"]]
        updates = [*previous.get("updates", []),
                   {"scenarios": select_scenarios(args.scenarios), "command": command,
                    "wall_seconds": wall, "cpu_seconds": timing["cpu_seconds"],
                    "at": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}]
        timing = previous["timing"]
        command = previous["command"]
    targets = evaluate_targets(cells)
    setup = describe_setup(args, judges, scenarios)
    _print_report(cells, judges, scenarios, targets=targets, setup=setup, timing=timing)
    report = {
        "setup": setup,
        "plan": PLAN,
        "seeds": args.seeds,
        "control_seeds": args.control_seeds,
        "other_seeds": args.other_seeds,
        "master_seed": args.master_seed,
        "judges": list(judges),
        "scenarios": {k: {"title": SCENARIOS[k].title, "target": SCENARIOS[k].target,
                          "realism": SCENARIOS[k].realism.model_dump(),
                          "both": dict(SCENARIOS[k].both),
                          "candidate": dict(SCENARIOS[k].candidate),
                          "summary": scenario_summary(_by_scenario(cells).get(k, []))}
                      for k in scenarios},
        "cells": _sorted_cells(cells),
        "targets": targets,
        "timing": timing,
        "command": command,
        "updates": updates,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decisions.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "decisions.md").write_text(markdown(
        cells, judges, targets=targets, setup=setup, wall=timing["wall_seconds"],
        timing=timing, command=command, updates=updates))
    written = ["decisions.md", "decisions.json"]
    if not args.no_plot:
        written += _plots(cells, judges, args.out)
    print(f"wrote {', '.join(str(args.out / w) for w in written)}")
    return 0


def _timing(args: argparse.Namespace, cells: list[dict[str, Any]], judges: Sequence[str],
            wall: float, load_before: float) -> dict[str, Any]:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN if args.workers > 1 else
                               resource.RUSAGE_SELF)
    timing: dict[str, Any] = {"workers": args.workers, "wall_seconds": wall,
                              "cpu_seconds": usage.ru_utime + usage.ru_stime,
                              "load_average": [load_before, os.getloadavg()[0]],
                              "trace_seconds": sum(c["trace_seconds"] for c in cells),
                              "judges": {}}
    for j in judges:
        calls = sum(c["judges"][j]["decide_calls"] for c in cells)
        secs = sum(c["judges"][j]["seconds"] for c in cells)
        timing["judges"][j] = {"calls": calls, "seconds": secs,
                               "ms_per_call": 1000.0 * secs / max(calls, 1)}
    return timing


def _print_report(cells: list[dict[str, Any]], judges: Sequence[str], scenarios: Sequence[str],
                  *, targets: list[dict[str, Any]], setup: str, timing: dict[str, Any]) -> None:
    print(f"# decision quality: {setup}\n")
    print("rb = rolled back by the analysis (effect none: false rollback), pr = promoted "
          "(regression: missed), un = undecided\n(paused/deadline), time = promoted within the "
          "plan's time, min = median minutes to promotion or rollback,\nblast = mean 5xx served "
          "by the candidate\n")
    print(text_table(cells, judges))
    if "default" in judges and "control" in scenarios:
        print("\n# samples to decision: default judge against Wald's one-sample SPRT "
              f"(alpha {SPRT_ALPHA:g}, beta {SPRT_BETA:g}), candidate requests\n")
        print(sprt_table(cells))
    print("\n# targets\n")
    print(targets_text(targets))
    load = timing["load_average"]
    print(f"\n# time: {timing['wall_seconds']:.0f} s wall on {timing['workers']} workers, "
          f"{timing['cpu_seconds']:.0f} s CPU (1-min load average {load[0]:.1f} at the start, "
          f"{load[1]:.1f} at the end); per look (decide() + judge, or the bench judge): "
          + ", ".join(f"{j} {v['ms_per_call']:.2f} ms x {v['calls']}"
                      for j, v in timing["judges"].items())
          + f"; drawing traces {timing['trace_seconds']:.0f} s")


def _plots(cells: list[dict[str, Any]], judges: Sequence[str], out: Path) -> list[str]:
    written = []
    try:
        if plot(cells, judges, out / "decisions.png"):
            written.append("decisions.png")
        if plot_scenarios(cells, judges, out / "decisions-scenarios.png"):
            written.append("decisions-scenarios.png")
    except ImportError:
        # The tables are the result; the picture needs the bench extra.
        print("no plot: matplotlib is missing (python -m pip install -e '.[bench]')")
    return written


if __name__ == "__main__":
    raise SystemExit(main())
