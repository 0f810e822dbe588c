"""Decision quality: whole simulated rollouts through ``decide()``, every judge on the same traces.

Where this sits: not shipped (``bench/`` is outside the wheel). ``bench/judge_calibration.py``
exercises the judges alone; this program drives the real engine, ``rollout.engine.decide``,
through complete canary rollouts on a fake clock, playing a perfect endpoint, and measures what
an operator sees: how often a healthy candidate is rolled back, how often a regressed one is
promoted, how long a decision takes, and how many failed requests the candidate served first.

Run: ``python -m bench.decisions`` (the full run, 200 seeds per cell, 2 worker processes);
``--quick`` is a smoke run (10 seeds); ``--seeds N``, ``--workers N``, ``--judges a,b``;
``--profile`` profiles one cell in-process and prints where the time goes. Output: a table on
stdout, ``bench/results/decisions.md``, ``decisions.json`` and ``decisions.png``.

Scenarios (a cell): the baseline's 5xx rate {0.1 %, 1 %, 5 %} x endpoint traffic {1, 10, 100,
1000} requests/s x the candidate's effect {none, 5xx x1.5, x2, x5, p99 latency x1.3, x2}. Both
arms have the sandbox's log-normal latency with p50 40 ms and p99 120 ms (a p99 effect raises
the candidate's p99 with its p50 unchanged, as a sandbox profile with a larger
``latency_p99_ms`` does) and 0.5 % 4xx, so the default policy's 4xx check has work (queue
time, which no policy here checks, is held at 1 ms and not fed to the engine).

A rollout: the canary plan in ``PLAN`` (5 %, 25 %, 50 %, 10 min bake each, then 100 %), 60 s
metric windows, ``DEFAULT_TIMING``. The loop calls ``decide`` and plays the endpoint perfectly:
a ``PutConfig`` is live at once (the next call, at the same instant, shows the target's split in
the ``EndpointSnapshot`` with ``UpdateOutcome("applied")``), so every split starts on the
minute grid and each look receives the 60 s windows that closed since the previous one, both
arms, drawn at the live split. A rollout ends when ``decide`` reaches a terminal phase or pauses
(a person must act): promoted, rolled back by a failed analysis, or undecided (paused for lack
of a verdict, or the policy's deadline passed, whatever ``on_deadline`` then does).

Same traces: a judge that advances earlier sends more traffic to the candidate, so no judge can
see another's exact requests. What is shared is the trace of a (cell, seed): every window k and
every split the plan can produce map to one fixed window of counts per arm, whichever judge asks.
Each arm's traffic is a nested Poisson stream: between consecutive levels of the arm's weight
(candidate 0-5-25-50 %, baseline 0-50-75-95 %) an increment window is drawn by the sandbox's
``simulate_window`` (``rollout.sandbox.traffic``: Poisson requests, binomial 5xx and 4xx,
multinomial log-normal latency buckets) at ``qps * (level step)``, from a ``random.Random``
seeded with the string (master seed, cell, seed, window index, arm, level step); an arm at a
given weight receives the sum of the increments up to it. Hence (1) two judges on the same split
in window k receive identical windows; (2) on different splits, the judge with the larger
candidate share receives a superset of the other's candidate requests (and a subset of its
baseline requests) in that window: common random numbers throughout; (3) each arm's counts are
distributed exactly as ``simulate_window`` with the live split makes them (a Poisson total
routed multinomially is one independent Poisson stream per arm; ``tests/unit`` checks the
moments).

Judges: ``default`` (sequential), ``flagger-compatible`` (threshold), ``strict`` (sequential,
tighter) through ``decide``; and ``kayenta-like``, a bench-only comparison that follows the same
canary schedule outside ``decide``: at every window it re-runs a one-sided Mann-Whitney U test
(normal approximation, tie-corrected) on per-minute points since the step began (5xx rate, 4xx
rate, p99 latency from the window's histogram; at least 3 points per arm), marks a metric
"high" at p < 0.01 (Kayenta's 98 % two-sided confidence), and rolls back when any metric is high
(score below Kayenta's marginal 75 of 100); a step advances at the end of its bake otherwise.

Per judge and cell (all rates over the seeds of the cell):

* false rollback: effect ``none`` and rolled back by a failed analysis;
* missed regression: any other effect and promoted (``err x1.5`` sits inside the default
  policy's tolerance of 2x, so promoting it is by design there; ``p99 x1.3`` is just beyond its
  1.25x, and both p99s, 120 and 156 ms, fall in the sandbox's (100, 250] ms bucket, so what a
  judge sees of it depends on how it interpolates inside that bucket);
* undecided: paused or deadline;
* minutes: median simulated minutes from the start to the promotion or rollback (decided runs);
* blast radius: 5xx served by the candidate from its first request until its traffic was taken
  away (rollback) or until the rollout ended (promotion, or the stop of an undecided one);
  reported as the mean over seeds; ``exposure`` is the candidate's requests in the same span;
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
same SPRT run on the trace's candidate windows at 5 % (a look per 60 s window, at most 120)
shows what the look interval alone costs: its median is printed beside it.

Targets (PASS/MISS): default false rollback <= 1 % in every cell; default missed 2x 5xx
regressions <= 5 % at >= 10 req/s; default mean blast radius at most half of
flagger-compatible's on the same traces in every regression cell (a miss is annotated when
flagger-compatible also rolls back most healthy candidates of that traffic and baseline, when
the default judge holds most rollouts undecided, or when the effect is inside the default
tolerance); default median candidate requests to its 5xx check's decision within 2x of Wald's
E[N] in the ``none``, ``err x2`` and ``err x5`` cells.
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
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rollout.analysis.spec import Policy
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
from rollout.plan import AnyPlan, CanaryPlan, validate_plan
from rollout.policies import PolicyLibrary
from rollout.sandbox.traffic import TrafficProfile, WindowCounts, simulate_window

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


# --------------------------------------------------------------------------- scenarios


@dataclass(frozen=True)
class Cell:
    base_rate: float
    qps: float
    effect: str

    @property
    def key(self) -> str:
        return f"{self.base_rate:g}/{self.qps:g}/{self.effect}"

    @property
    def regressed(self) -> bool:
        return self.effect != "none"

    def profiles(self) -> dict[str, TrafficProfile]:
        err_mult, p99_mult = EFFECTS[self.effect]
        base = TrafficProfile(
            error_rate=self.base_rate,
            client_error_rate=CLIENT_ERROR_RATE,
            latency_p50_ms=P50_MS,
            latency_p99_ms=P99_MS,
            # No policy here checks queue time: a constant one skips its histogram draw.
            queue_time_p50_ms=1.0,
            queue_time_p99_ms=1.0,
        )
        cand = base.model_copy(
            update={
                "error_rate": min(1.0, self.base_rate * err_mult),
                "latency_p99_ms": P99_MS * p99_mult,
            }
        )
        return {CAND: cand, BASE: base}


def all_cells() -> list[Cell]:
    return [Cell(b, q, e) for b in BASE_RATES for q in TRAFFIC for e in EFFECTS]


def canary_plan() -> CanaryPlan:
    plan = validate_plan(PLAN)
    if not isinstance(plan, CanaryPlan):  # pragma: no cover - PLAN is a canary
        raise TypeError("PLAN must be a canary plan")
    return plan


CAND = canary_plan().candidate.served_name
STEPS: tuple[tuple[int, int], ...] = tuple(  # (candidate weight, bake in windows)
    (s.weight, round(s.bake / WINDOW_S)) for s in canary_plan().canary_steps()
)


# --------------------------------------------------------------------------- traces


@dataclass(frozen=True)
class Window:
    """One 60 s window of both arms at one split, as the engine receives it."""

    k: int
    weight: int
    candidate: EntityWindow
    baseline: EntityWindow


class Trace:
    """The traffic of one (cell, seed): window index x split -> both arms' counts (see module doc).

    Lazy and cached: only windows some judge reaches are drawn, once, and every judge of the
    (cell, seed) reads the same cache.
    """

    def __init__(self, cell: Cell, seed: int, master_seed: int,
                 weights: Iterable[int] | None = None) -> None:
        self.cell = cell
        self.seed = seed
        self.key = f"{master_seed}:{cell.key}:{seed}"
        self.profiles = cell.profiles()
        weights = sorted({w for w, _ in STEPS} if weights is None else set(weights))
        self.levels: dict[str, tuple[int, ...]] = {
            CAND: tuple(weights),
            BASE: tuple(sorted({100 - w for w in weights})),
        }
        self._increments: dict[tuple[str, int, int], WindowCounts] = {}
        self._windows: dict[tuple[int, int], Window] = {}
        self.seconds = 0.0  # time spent drawing

    def _increment(self, arm: str, k: int, j: int) -> WindowCounts:
        levels = self.levels[arm]
        lo, hi = (levels[j - 1] if j else 0), levels[j]
        key = (arm, k, j)
        counts = self._increments.get(key)
        if counts is None:
            rng = random.Random(f"{self.key}:{k}:{arm}:{lo}-{hi}")
            counts = simulate_window(
                {arm: self.profiles[arm]}, {arm: 100}, self.cell.qps * (hi - lo) / 100.0,
                WINDOW_S, rng,
            )[arm]
            self._increments[key] = counts
        return counts

    def arm_counts(self, arm: str, k: int, weight: int) -> WindowCounts:
        levels = self.levels[arm]
        if weight not in levels:
            raise ValueError(f"{arm} weight {weight} is not a level of this trace {levels}")
        total = WindowCounts()
        for j in range(levels.index(weight) + 1):
            total.merge(self._increment(arm, k, j))
        return total

    def window(self, k: int, weight: int) -> Window:
        cached = self._windows.get((k, weight))
        if cached is not None:
            return cached
        started = time.perf_counter()
        start_ms = int((T0 + k * WINDOW_S) * 1000)
        arms = []
        for arm, w in ((CAND, weight), (BASE, 100 - weight)):
            c = self.arm_counts(arm, k, w)
            arms.append(EntityWindow(
                arm, start_ms, requests=float(c.requests), errors_4xx=float(c.errors_4xx),
                errors_5xx=float(c.errors_5xx), latency=c.latency_histogram(),
            ))
        window = Window(k, weight, arms[0], arms[1])
        self._windows[(k, weight)] = window
        self.seconds += time.perf_counter() - started
        return window


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
    calls: int = 0
    fed: list[tuple[int, int, float, float, float, float]] = field(default_factory=list)

    def feed(self, window: Window, record: bool) -> None:
        self.blast += window.candidate.errors_5xx
        self.exposure += window.candidate.requests
        if record:
            c, b = window.candidate, window.baseline
            self.fed.append((window.k, window.weight, c.requests, c.errors_5xx, b.requests,
                             b.errors_5xx))


def _note_decision(run: Run, verdict: dict[str, Any]) -> None:
    """Candidate requests so far, at the first conclusive verdict and 5xx check."""
    if run.first_conclusive is None and verdict.get("outcome") in ("pass", "fail"):
        run.first_conclusive = run.exposure
    if run.first_error_check is None:
        for check in verdict.get("checks") or ():
            if check.get("metric") == "error_rate":
                if check.get("outcome") in ("pass", "fail"):
                    run.first_error_check = run.exposure
                break


def run_engine(plan: AnyPlan, policy: Policy, trace: Trace, *, timing: Timing = DEFAULT_TIMING,
               record: bool = False) -> Run:
    """Drive ``decide`` through one rollout, playing a perfect endpoint (see module doc)."""
    run = Run()
    state = RolloutState(started_at=T0)
    now = T0
    entities: dict[str, dict[str, Any]] = {BASE: dict(BASE_ENTITY)}
    split: dict[str, int] = {BASE: 100}
    version = 1
    applied = False
    next_window: float | None = None  # start of the first window not yet fed
    windows: tuple[EntityWindow, ...] = ()
    for _ in range(MAX_TICKS):
        obs = Observation(
            endpoint=EndpointSnapshot("READY", "NOT_UPDATING", version, entities, split),
            update=UpdateOutcome("applied") if applied else None,
            windows=windows,
        )
        decision = decide(plan, state, obs, now, policy=policy, timing=timing)
        run.calls += 1
        state = decision.state
        if windows and state.last_verdict is not None:
            _note_decision(run, state.last_verdict)
        if state.phase.terminal or state.phase is Phase.PAUSED:
            break
        if isinstance(decision.effect, PutConfig):
            target = decision.effect.target
            entities = {str(e["name"]): dict(e) for e in target.entities}
            split = dict(target.split)
            version += 1
            applied, windows, next_window = True, (), now
            continue
        applied = False
        later = now + (decision.next_check_in or timing.look_interval)
        fresh: list[EntityWindow] = []
        weight = split.get(CAND, 0)
        while next_window is not None and next_window + WINDOW_S <= later:
            k = round((next_window - T0) / WINDOW_S)
            if weight in trace.levels[CAND]:
                window = trace.window(k, weight)
                run.feed(window, record)
                fresh += (window.candidate, window.baseline)
            next_window += WINDOW_S
        windows = tuple(fresh)
        now = later
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
    k = 0
    for weight, bake in STEPS:
        cand_pts: list[tuple[float, float, float]] = []
        base_pts: list[tuple[float, float, float]] = []
        for _ in range(bake):
            window = trace.window(k, weight)
            k += 1
            run.feed(window, record)
            run.calls += 1
            pc, pb = _points(window.candidate), _points(window.baseline)
            if pc is not None:
                cand_pts.append(pc)
            if pb is not None:
                base_pts.append(pb)
            if len(cand_pts) < MW_MIN_POINTS or len(base_pts) < MW_MIN_POINTS:
                continue
            high = any(
                mann_whitney_greater([p[m] for p in cand_pts], [p[m] for p in base_pts]) < MW_P
                for m in range(3)
            )
            if high:
                run.end, run.minutes = "rolled_back", float(k)
                run.first_conclusive = run.exposure
                return run
        if run.first_conclusive is None:
            run.first_conclusive = run.exposure  # the first step's pass
    run.end, run.minutes = "promoted", float(k)
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


def sprt_on_trace(trace: Trace, p0: float, p1: float, weight: int) -> float:
    """Candidate requests the SPRT needs looking once per window of the trace (inf: undecided)."""
    upper, lower = math.log((1 - SPRT_BETA) / SPRT_ALPHA), math.log(SPRT_BETA / (1 - SPRT_ALPHA))
    z1, z0 = math.log(p1 / p0), math.log((1 - p1) / (1 - p0))
    llr = requests = 0.0
    for k in range(SPRT_WINDOWS):
        c = trace.arm_counts(CAND, k, weight)
        llr += c.errors_5xx * z1 + (c.requests - c.errors_5xx) * z0
        requests += c.requests
        if llr >= upper or llr <= lower:
            return requests
    return math.inf


# --------------------------------------------------------------------------- one cell


def _median(values: Sequence[float]) -> float | None:
    if not values:
        return None
    m = statistics.median(values)
    return None if math.isinf(m) else float(m)


def summarize(cell: Cell, runs: Sequence[Run], seconds: float) -> dict[str, Any]:
    n = len(runs)
    ends = [r.end for r in runs]
    decided = [r.minutes for r in runs if r.end != "undecided"]
    rolled, promoted, undecided = (ends.count(e) / n for e in
                                   ("rolled_back", "promoted", "undecided"))
    return {
        "runs": n,
        "rolled_back": rolled,
        "promoted": promoted,
        "undecided": undecided,
        "undecided_deadline": sum(r.why == "deadline" for r in runs) / n,
        "false_rollback": None if cell.regressed else rolled,
        "missed": promoted if cell.regressed else None,
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
    seeds: int
    master_seed: int
    judges: tuple[str, ...]


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
    sprt_runs: list[float] = []
    trace_seconds = 0.0
    error_cell = cell.effect in ERROR_EFFECTS
    for seed in range(task.seeds):
        trace = Trace(cell, seed, task.master_seed)
        for judge in task.judges:
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
        if error_cell:
            drawn = trace.seconds
            started = time.perf_counter()
            sprt_runs.append(sprt_on_trace(trace, cell.base_rate, sprt_alternative(cell),
                                           STEPS[0][0]))
            trace.seconds += time.perf_counter() - started - (trace.seconds - drawn)
        trace_seconds += trace.seconds
    result: dict[str, Any] = {
        "cell": {"base_rate": cell.base_rate, "qps": cell.qps, "effect": cell.effect,
                 "key": cell.key},
        "judges": {j: summarize(cell, runs[j], seconds[j]) for j in task.judges},
        "trace_seconds": trace_seconds,
    }
    if "default" in runs and "flagger-compatible" in runs:
        pairs = list(zip(runs["default"], runs["flagger-compatible"], strict=True))
        result["paired"] = {
            "default_blast_le_flagger": sum(d.blast <= f.blast for d, f in pairs) / len(pairs),
        }
    if error_cell:
        p1 = sprt_alternative(cell)
        true_p = cell.base_rate if cell.effect == "none" else p1
        result["sprt"] = {
            "p0": cell.base_rate,
            "p1": p1,
            "wald_expected": wald_expected_samples(cell.base_rate, p1, true_p),
            "per_window_median": _median(sprt_runs),
            "per_window_requests": cell.qps * WINDOW_S * STEPS[0][0] / 100.0,
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
    return f"{k['base_rate'] * 100:g}% base, {k['qps']:g} req/s, {k['effect']}"


def _target(name: str, checked: int, misses: list[str]) -> dict[str, Any]:
    return {"target": name, "checked": checked, "pass": not misses and checked > 0,
            "misses": misses}


def _false_rollback_target(cells: list[dict[str, Any]]) -> dict[str, Any]:
    misses, checked = [], 0
    worst: tuple[float, int] = (0.0, 0)
    for c in cells:
        d = c["judges"].get("default")
        if d is None or c["cell"]["effect"] != "none":
            continue
        checked += 1
        worst = max(worst, (d["false_rollback"], d["runs"]))
        if d["false_rollback"] > 0.01:
            misses.append(f"{_where(c)}: {_pct(d['false_rollback']).strip()}")
    target = _target("default false rollback <= 1 % in every cell", checked, misses)
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
        if d is None or c["cell"]["effect"] != "err x2" or c["cell"]["qps"] < 10:
            continue
        checked += 1
        if d["missed"] > 0.05:
            misses.append(f"{_where(c)}: {_pct(d['missed']).strip()} promoted")
    return _target("default missed 2x 5xx regressions <= 5 % at >= 10 req/s", checked, misses)


def _blast_target(cells: list[dict[str, Any]]) -> dict[str, Any]:
    misses, checked, plain = [], 0, 0
    healthy = {(c["cell"]["base_rate"], c["cell"]["qps"]): c for c in cells
               if c["cell"]["effect"] == "none"}
    for c in cells:
        d, f = c["judges"].get("default"), c["judges"].get("flagger-compatible")
        if d is None or f is None or c["cell"]["effect"] == "none":
            continue
        checked += 1
        if d["blast_mean"] > 0.5 * f["blast_mean"] and d["blast_mean"] > 0.0:
            notes = _blast_context(c, healthy)
            plain += notes[0].startswith("no mitigating")
            misses.append(f"{_where(c)}: {d['blast_mean']:.1f} vs {f['blast_mean']:.1f} 5xx"
                          f" [{'; '.join(notes)}]")
    target = _target("default mean blast radius <= 1/2 of flagger-compatible's (regression "
                     "cells)", checked, misses)
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
    return _target("default median samples to its 5xx check's decision within 2x of Wald's "
                   "SPRT E[N] (none, err x2, err x5)", checked, misses)


def evaluate_targets(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The four targets, each PASS or MISS with the cells that miss and why."""
    return [_false_rollback_target(cells), _missed_target(cells), _blast_target(cells),
            _sprt_target(cells)]


# --------------------------------------------------------------------------- reporting


def _sorted_cells(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    order = {e: i for i, e in enumerate(EFFECTS)}
    return sorted(cells, key=lambda c: (c["cell"]["base_rate"], c["cell"]["qps"],
                                        order[c["cell"]["effect"]]))


def text_table(cells: list[dict[str, Any]], judges: Sequence[str]) -> str:
    head = f"{'base':>5} {'req/s':>5} {'effect':<8}"
    sub = " " * len(head)
    for j in judges:
        head += f" | {j:<34}"
        sub += f" | {'rb%':>5} {'pr%':>5} {'un%':>5} {'min':>4} {'blast':>10}"
    lines = [head, sub, "-" * len(sub)]
    for c in _sorted_cells(cells):
        k = c["cell"]
        row = f"{k['base_rate'] * 100:4.1f}% {k['qps']:5.0f} {k['effect']:<8}"
        for j in judges:
            s = c["judges"][j]
            minutes = "  - " if s["median_minutes"] is None else f"{s['median_minutes']:4.0f}"
            row += (f" | {s['rolled_back'] * 100:5.1f} {s['promoted'] * 100:5.1f} "
                    f"{s['undecided'] * 100:5.1f} {minutes} {s['blast_mean']:10.1f}")
        lines.append(row)
    return "\n".join(lines)


def sprt_rows(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The default judge's samples to decision beside the SPRT's, one row per 5xx cell."""
    rows = []
    for c in _sorted_cells(cells):
        s = c.get("sprt")
        d = c["judges"].get("default")
        if s is None or d is None:
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
        lines.append(f"[{'PASS' if t['pass'] else 'MISS'}] {t['target']} "
                     f"({t['checked']} cells, {len(t['misses'])} missing"
                     + ("" if plain is None else f", {plain} without a mitigating reason")
                     + ")")
        if t.get("note"):
            lines.append(f"       ({t['note']})")
        lines.extend(f"       - {m}" for m in t["misses"])
    return "\n".join(lines)


def describe_setup(args: argparse.Namespace, judges: Sequence[str]) -> str:
    steps = ", ".join(f"{w} % for {b} min" for w, b in STEPS)
    return (
        f"canary {steps}, then 100 %; 60 s windows; perfect endpoint (a PUT is live at once); "
        f"{args.seeds} seeds per cell, master seed {args.master_seed}; judges: "
        f"{', '.join(judges)}; baseline latency p50 {P50_MS:g} ms / p99 {P99_MS:g} ms "
        f"(log-normal), 4xx {CLIENT_ERROR_RATE:.1%} both arms"
    )


MD_TRACES = (
    "Same traces: for a (cell, seed), window k at a given split holds the same counts for every "
    "judge; between splits the counts are nested Poisson streams (a larger candidate share sees "
    "a superset of the candidate's requests), drawn with the sandbox's `simulate_window` (see "
    "the module docstring of `bench/decisions.py`)."
)
MD_COLUMNS = (
    "Columns per judge: rb = rolled back by a failed analysis (for `none`: false rollback), "
    "pr = promoted (for a regression: missed), un = undecided (paused or deadline), min = "
    "median minutes to promotion or rollback, blast = mean 5xx served by the candidate before "
    "its traffic was taken away (or during the whole rollout)."
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


def markdown(cells: list[dict[str, Any]], judges: Sequence[str], *,
             targets: list[dict[str, Any]], setup: str, wall: float,
             timing: dict[str, Any]) -> str:
    out = ["# Decision quality: simulated canary rollouts through decide()", "",
           f"Setup: {setup}.", "", MD_TRACES, "", MD_COLUMNS, ""]
    head = "| base | req/s | effect |" + "".join(
        f" {j} rb % | pr % | un % | min | blast |" for j in judges)
    out += [head, "|" + "---|" * (3 + 5 * len(judges))]
    for c in _sorted_cells(cells):
        k = c["cell"]
        row = f"| {k['base_rate'] * 100:g} % | {k['qps']:g} | {k['effect']} |"
        for j in judges:
            s = c["judges"][j]
            minutes = "-" if s["median_minutes"] is None else f"{s['median_minutes']:.0f}"
            row += (f" {s['rolled_back'] * 100:.1f} | {s['promoted'] * 100:.1f} | "
                    f"{s['undecided'] * 100:.1f} | {minutes} | {s['blast_mean']:.1f} |")
        out.append(row)
    out += ["", "## Samples to decision against Wald's SPRT (5xx cells)", "", MD_SPRT, "",
            MD_SPRT_HEAD,
            "|---|---|---|---|---|---|---|---|---|---|---|---|"]
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
    out += ["", "## Targets", "", "```", targets_text(targets), "```", "",
            f"Wall time {wall:.0f} s on {timing['workers']} worker processes "
            f"({timing['cpu_seconds']:.0f} s CPU); per look: "
            + ", ".join(f"{j} {v['ms_per_call']:.2f} ms" for j, v in timing["judges"].items())
            + f"; trace drawing {timing['trace_seconds']:.0f} s in all.", ""]
    return "\n".join(out)


def plot(cells: list[dict[str, Any]], judges: Sequence[str], path: Path) -> None:
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
    index = {(c["cell"]["base_rate"], c["cell"]["qps"], c["cell"]["effect"]): c for c in cells}
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


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.decisions",
        description="Decision quality of the judges on simulated canary rollouts.",
    )
    parser.add_argument("--seeds", type=int, default=200, help="seeds (rollouts) per cell")
    parser.add_argument("--quick", action="store_true", help="smoke run: 10 seeds per cell")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--master-seed", type=int, default=20240601)
    parser.add_argument("--judges", default=",".join(JUDGES))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-plot", action="store_true")
    parser.add_argument("--profile", action="store_true",
                        help="profile one cell in-process (1 %% base, 100 req/s, none) and exit")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds = 10
    return args


def profile_one(args: argparse.Namespace, judges: tuple[str, ...]) -> None:
    task = Task(Cell(0.01, 100.0, "none"), min(args.seeds, 30), args.master_seed, judges)
    profiler = cProfile.Profile()
    profiler.enable()
    simulate_cell(task)
    profiler.disable()
    buffer = io.StringIO()
    pstats.Stats(profiler, stream=buffer).sort_stats("cumulative").print_stats(35)
    print(buffer.getvalue())


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    judges = tuple(j.strip() for j in args.judges.split(",") if j.strip())
    unknown = [j for j in judges if j not in JUDGES]
    if unknown:
        print(f"unknown judges: {', '.join(unknown)} (known: {', '.join(JUDGES)})",
              file=sys.stderr)
        return 2
    if args.profile:
        profile_one(args, judges)
        return 0
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    # Slow cells first (low traffic runs longest), so the two workers finish together.
    tasks = sorted((Task(c, args.seeds, args.master_seed, judges) for c in all_cells()),
                   key=lambda t: (t.cell.qps, t.cell.effect != "none"))
    cells: list[dict[str, Any]] = []
    if args.workers <= 1:
        cells = [run_task(t) for t in tasks]
    else:
        with multiprocessing.get_context("fork").Pool(args.workers) as pool:
            for done, result in enumerate(pool.imap_unordered(run_task, tasks), 1):
                cells.append(result)
                if done % 12 == 0:
                    print(f"  {done}/{len(tasks)} cells, {time.monotonic() - started:.0f} s",
                          file=sys.stderr)
    wall = time.monotonic() - started
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
    targets = evaluate_targets(cells)
    setup = describe_setup(args, judges)

    print(f"# decision quality: {setup}\n")
    print("rb = rolled back by the analysis (effect none: false rollback), pr = promoted "
          "(regression: missed), un = undecided\n(paused/deadline), min = median minutes to "
          "promotion or rollback, blast = mean 5xx served by the candidate\n")
    print(text_table(cells, judges))
    if "default" in judges:
        print("\n# samples to decision: default judge against Wald's one-sample SPRT "
              f"(alpha {SPRT_ALPHA:g}, beta {SPRT_BETA:g}), candidate requests\n")
        print(sprt_table(cells))
    print("\n# targets\n")
    print(targets_text(targets))
    print(f"\n# time: {wall:.0f} s wall on {args.workers} workers, {timing['cpu_seconds']:.0f} s "
          f"CPU (1-min load average {load_before:.1f} at the start, {os.getloadavg()[0]:.1f} "
          "at the end); per look (decide() + judge, or the bench judge): "
          + ", ".join(f"{j} {v['ms_per_call']:.2f} ms x {v['calls']}"
                      for j, v in timing["judges"].items())
          + f"; drawing traces {timing['trace_seconds']:.0f} s")

    args.out.mkdir(parents=True, exist_ok=True)
    report = {
        "setup": setup,
        "plan": PLAN,
        "seeds": args.seeds,
        "master_seed": args.master_seed,
        "judges": list(judges),
        "cells": _sorted_cells(cells),
        "targets": targets,
        "timing": timing,
        "command": " ".join(["python -m bench.decisions",
                             *(sys.argv[1:] if argv is None else argv)]),
    }
    (args.out / "decisions.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "decisions.md").write_text(markdown(
        cells, judges, targets=targets, setup=setup, wall=wall, timing=timing))
    plotted = False
    if not args.no_plot:
        try:
            plot(cells, judges, args.out / "decisions.png")
            plotted = True
        except ImportError:
            # The tables are the result; the picture needs the bench extra.
            print("no plot: matplotlib is missing (python -m pip install -e '.[bench]')")
    print(f"wrote {args.out / 'decisions.md'}, decisions.json"
          + (", decisions.png" if plotted else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
