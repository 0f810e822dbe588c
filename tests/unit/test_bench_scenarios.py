"""The decision benchmark's real-traffic scenarios (bench/decisions.py): their traces, their
delivery through a ``WindowTracker``, and what ``decide`` is given."""

from __future__ import annotations

import json
import math
import random
import statistics
from collections import Counter
from typing import Any

import pytest

from bench import decisions
from bench.decisions import (
    BASE,
    CAND,
    SCENARIOS,
    T0,
    WINDOW_S,
    Cell,
    Feed,
    Task,
    Trace,
    canary_plan,
    run_engine,
    select_scenarios,
    simulate_cell,
)
from rollout.engine.model import Observation, RolloutState
from rollout.sandbox.realism import (
    WindowEnvironment,
    entity_conditions,
    substream,
)
from rollout.sandbox.traffic import TrafficProfile, latency_quantile, simulate_window


def _mean_rate(profile: TrafficProfile) -> float:
    """The mean 5xx rate of a warm profile: a share f of requests meets a hiccup."""
    f = profile.hiccup_rate * profile.hiccup_fraction
    return profile.error_rate * (1 - f) + profile.hiccup_error_rate * f


def test_every_scenario_has_cells_and_a_healthy_candidate_with_the_baselines_means() -> None:
    assert next(iter(SCENARIOS)) == "control"
    for key, scenario in SCENARIOS.items():
        assert scenario.cells, key
        effects = {e for _, _, e in scenario.cells}
        assert {"none", "err x2", "err x5"} <= effects, key
        profiles = Cell(0.01, 100.0, "none", key).profiles()
        cand, base = profiles[CAND], profiles[BASE]
        assert cand.error_rate == base.error_rate, key
        assert latency_quantile(cand, 0.99) == pytest.approx(latency_quantile(base, 0.99)), key
        # "err x2" doubles the candidate's mean 5xx rate, its replicas' hiccups included.
        regressed = Cell(0.01, 100.0, "err x2", key).profiles()
        assert _mean_rate(regressed[CAND]) == pytest.approx(2 * _mean_rate(base)), key
    same = Cell(0.01, 100.0, "none", "same-p99").profiles()
    assert latency_quantile(same[CAND], 0.5) == pytest.approx(3 * latency_quantile(
        same[BASE], 0.5))
    assert latency_quantile(same[CAND], 0.999) < latency_quantile(same[BASE], 0.999)
    slow = Cell(0.01, 100.0, "p99 x2", "p99-on-bound").profiles()
    assert slow[CAND].latency_p99_ms == 200.0
    assert slow[BASE].latency_p99_ms == 100.0


def test_scenarios_are_selected_by_name_or_prefix() -> None:
    assert select_scenarios("") == list(SCENARIOS)
    assert select_scenarios("cold") == ["cold", "cold-mild"]
    assert select_scenarios("control,own") == ["control", "own-cv0.3", "own-cv0.5", "own-cv1.0"]
    with pytest.raises(ValueError, match="unknown scenarios: nope"):
        select_scenarios("nope")


def _windows(trace: Trace) -> list[Any]:
    return [trace.window(k, w, age) for k, w, age in
            ((0, 5, 0), (1, 5, 1), (2, 5, 2), (3, 25, 0), (4, 25, 1), (9, 50, 5))]


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s != "control"])
def test_a_scenario_trace_repeats_for_a_seed(scenario: str) -> None:
    cell = Cell(0.01, 100.0, "err x2", scenario)
    one, two, other = Trace(cell, 3, 11), Trace(cell, 3, 11), Trace(cell, 4, 11)
    assert _windows(one) == _windows(two)
    assert _windows(one) != _windows(other)


def test_the_control_trace_is_what_it_was_before_the_scenarios() -> None:
    """The control grid draws without conditions: exactly the plain nested streams."""
    cell = Cell(0.01, 100.0, "none")
    trace = Trace(cell, 2, 5)
    for k in range(3):
        rng = random.Random(f"{trace.key}:{k}:{CAND}:0-5")
        direct = simulate_window({CAND: trace.profiles[CAND]}, {CAND: 100}, 100.0 * 5 / 100.0,
                                 WINDOW_S, rng)[CAND]
        assert trace.arm_counts(CAND, k, 5) == direct
    assert cell.key == "0.01/100/none"


def test_judges_share_the_trace_of_a_scenario_cell() -> None:
    task = Task(Cell(0.01, 100.0, "none", "delivery"), 3, 7, ("default", "flagger-compatible"))
    _summary, runs = simulate_cell(task, record=True)
    for seed in range(3):
        a, b = runs["default"][seed].fed, runs["flagger-compatible"][seed].fed
        assert a
        assert b
        assert a[0] == b[0]
        seen = {(k, w): counts for k, w, *counts in a}
        shared = [((k, w), counts) for k, w, *counts in b if (k, w) in seen]
        for key, counts in shared:
            assert seen[key] == counts


def test_non_default_judges_run_on_the_first_seeds_of_the_default() -> None:
    task = Task(Cell(0.01, 1000.0, "err x5", "incidents"), 4, 7, ("default", "kayenta-like"),
                other_seeds=2)
    summary, runs = simulate_cell(task)
    assert len(runs["default"]) == 4
    assert len(runs["kayenta-like"]) == 2
    assert summary["judges"]["kayenta-like"]["runs"] == 2
    assert summary["sprt"]["runs"] == 2


def test_each_delivery_fault_reaches_the_tracker_as_planned() -> None:
    cell = Cell(0.01, 100.0, "none", "delivery")
    trace = Trace(cell, 1, 3)
    faults = trace.realism.delivery
    feed = Feed(trace)
    feed.keep_log = True
    feed.set_split(T0, 25)
    windows = 300
    closed = {}
    for minute in range(1, windows + 3):
        for window in feed.scrape(T0 + minute * WINDOW_S):
            closed[window.k] = window
    by_window: dict[tuple[str | None, int], list[tuple[float, Any]]] = {}
    for at, w in feed.delivered:
        by_window.setdefault((w.entity, w.start_ms or 0), []).append((at, w))
    kept = {(w.entity, w.start_ms): w for w in feed.tracker.windows()}
    fates: Counter[str] = Counter()
    revised = 0
    for k in range(windows):
        start_ms = int((T0 + k * WINDOW_S) * 1000)
        close = T0 + (k + 1) * WINDOW_S
        plan = faults.plan(trace.key, k, (CAND, BASE))
        for arm, final in ((CAND, closed[k].candidate), (BASE, closed[k].baseline)):
            fate = plan[arm]
            fates[fate] += 1
            got = by_window.get((arm, start_ms), [])
            if fate == "on_time":
                assert got == [(close, final)]
            elif fate == "late":
                assert got == [(close + WINDOW_S, final)]
            elif fate == "missing":
                assert got == []
                assert (arm, start_ms) not in kept
                continue
            elif fate == "duplicate":
                assert got == [(close, final), (close + WINDOW_S, final)]
            else:
                (t1, partial), (t2, last) = got
                assert (t1, t2, last) == (close, close + WINDOW_S, final)
                assert partial.requests <= final.requests
                assert partial.errors_5xx <= final.errors_5xx
                revised += partial != final
            # Whatever the route, the tracker keeps the final numbers, once.
            assert kept[(arm, start_ms)] == final
    assert feed.tracker.revisions == revised > 0
    n = 2 * windows
    # Per window one arm at most: late 15 %, missing 3 %, duplicate 5 %, revised 5 % of windows.
    for fate, rate in (("late", 0.15), ("missing", 0.03), ("duplicate", 0.05),
                       ("revised", 0.05)):
        assert abs(fates[fate] - windows * rate) <= 4 * math.sqrt(windows * rate), fate
    assert sum(fates.values()) == n


def test_decide_receives_every_kept_window_since_the_split(monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    seen: list[tuple[RolloutState, Observation]] = []
    real = decisions.decide

    def recording(plan: Any, state: RolloutState, obs: Observation, now: float,
                  **kwargs: Any) -> Any:
        seen.append((state, obs))
        return real(plan, state, obs, now, **kwargs)

    monkeypatch.setattr(decisions, "decide", recording)
    trace = Trace(Cell(0.01, 100.0, "none", "delivery"), 0, 3)
    feed = Feed(trace)
    run_engine(canary_plan(), decisions._policy("default"), trace, feed=feed)
    assert len(seen) > 20
    grew = 0
    previous: tuple[Any, ...] = ()
    for state, obs in seen:
        if state.split_applied_at is None:
            assert obs.windows == ()
            continue
        since = state.split_applied_at * 1000
        assert all(w.start_ms is not None and w.start_ms >= since for w in obs.windows)
        starts = [w.start_ms or 0 for w in obs.windows]
        assert starts == sorted(starts)
        # Windows of the split stay in the observation (in their latest version) once kept.
        old = {(w.entity, w.start_ms) for w in previous if (w.start_ms or 0) >= since}
        assert old <= {(w.entity, w.start_ms) for w in obs.windows}
        grew += len(obs.windows) > len(previous)
        previous = obs.windows
    assert grew > 10


def test_hiccups_on_nested_replicas_keep_the_rate_distribution() -> None:
    """At 25 % the nested increments (replicas 0 and 1-4) are distributed as one entity on 5
    replicas: the same mean 5xx rate and the same window-to-window variance."""
    cell = Cell(0.01, 100.0, "none", "hiccups")
    profile = cell.profiles()[CAND]
    windows = 1500
    nested = []
    trace = Trace(cell, 0, 9)
    for k in range(windows):
        counts = trace.arm_counts(CAND, k, 25)
        nested.append((counts.requests, counts.errors_5xx))
    direct = []
    env = WindowEnvironment()
    for k in range(windows):
        cond = entity_conditions(profile, "direct", k, entity=CAND, weight=25.0, environment=env)
        rng = substream("direct", k, "draw")
        counts = simulate_window({CAND: profile}, {CAND: 100}, 25.0, WINDOW_S, rng,
                                 conditions={CAND: cond})[CAND]
        direct.append((counts.requests, counts.errors_5xx))
    mean_rate = 0.01 * (1 - 0.025) + 0.3 * 0.025
    for sample in (nested, direct):
        n = sum(r for r, _ in sample)
        errors = sum(e for _, e in sample)
        assert n == pytest.approx(windows * 1500, rel=4 / math.sqrt(windows * 1500))
        assert errors / n == pytest.approx(mean_rate, rel=0.05)
    var_nested = statistics.variance([e for _, e in nested])
    var_direct = statistics.variance([e for _, e in direct])
    assert var_nested / var_direct == pytest.approx(1.0, abs=0.15)
    # Far beyond binomial: 1500 requests at 1.7 % would vary by about 25.
    assert var_nested > 5 * 1500 * mean_rate


def test_common_mode_noise_moves_both_arms_together() -> None:
    trace = Trace(Cell(0.05, 1000.0, "none", "common-cv1.0"), 0, 9)
    cand, base = [], []
    for k in range(300):
        window = trace.window(k, 25, 10)
        cand.append(window.candidate.errors_5xx / window.candidate.requests)
        base.append(window.baseline.errors_5xx / window.baseline.requests)
    assert statistics.correlation(cand, base) > 0.95
    assert statistics.fmean(base) == pytest.approx(0.05, rel=4 * 1.0 / math.sqrt(300))


def test_the_diurnal_ramp_scales_both_arms_traffic_and_errors() -> None:
    trace = Trace(Cell(0.01, 1000.0, "none", "diurnal"), 0, 9)
    start, peak = trace.window(0, 50, 10), trace.window(30, 50, 10)
    for a, b in ((start.candidate, peak.candidate), (start.baseline, peak.baseline)):
        assert b.requests / a.requests == pytest.approx(3.0, rel=0.05)
        assert (b.errors_5xx / b.requests) / (a.errors_5xx / a.requests) == pytest.approx(
            3.0, rel=0.3)


def test_cold_windows_follow_the_candidates_own_age() -> None:
    trace = Trace(Cell(0.01, 1000.0, "none", "cold"), 0, 9)
    for k in range(5):
        cold, warm = trace.window(k, 25, 0), trace.window(k, 25, 3)
        # The same random numbers: the same requests, slower and failing more when cold.
        assert cold.candidate.requests == warm.candidate.requests
        assert cold.baseline == warm.baseline
        assert cold.candidate.latency is not None
        assert warm.candidate.latency is not None
        assert (cold.candidate.latency.quantile(0.5) or 0) > 2 * (
            warm.candidate.latency.quantile(0.5) or 0)
    assert [trace.cold(CAND, age) for age in range(5)] == [True, True, True, False, False]
    mild = Trace(Cell(0.01, 1000.0, "none", "cold-mild"), 0, 9)
    assert [mild.cold(CAND, age) for age in range(3)] == [True, False, False]


def test_update_reruns_the_named_scenarios_and_keeps_the_rest(tmp_path: Any) -> None:
    base = ["--seeds", "2", "--judges", "default", "--workers", "1", "--no-plot",
            "--out", str(tmp_path)]
    assert decisions.main([*base, "--scenarios", "cold-mild,p99-on-bound"]) == 0
    first = json.loads((tmp_path / "decisions.json").read_text())
    assert decisions.main([*base, "--scenarios", "cold-mild", "--update"]) == 0
    second = json.loads((tmp_path / "decisions.json").read_text())
    assert list(second["scenarios"]) == ["cold-mild", "p99-on-bound"]
    assert second["command"] == first["command"]
    assert second["timing"] == first["timing"]
    (update,) = second["updates"]
    assert update["scenarios"] == ["cold-mild"]
    kept = [c for c in second["cells"] if c["cell"]["scenario"] == "p99-on-bound"]
    assert kept == [c for c in first["cells"] if c["cell"]["scenario"] == "p99-on-bound"]
    # The same seeds: the re-run reproduces the cells it replaced.
    for old, new in zip(first["cells"], second["cells"], strict=True):
        assert old["judges"]["default"]["rolled_back"] == new["judges"]["default"]["rolled_back"]
    assert "Re-run since and merged (`--update`): cold-mild" in (
        tmp_path / "decisions.md").read_text()
    # Other settings than the report's are refused.
    assert decisions.main([*base[:1], "3", *base[2:], "--scenarios", "cold-mild",
                           "--update"]) == 2
