"""The decision benchmark's machinery (bench/decisions.py) on a tiny configuration."""

from __future__ import annotations

import math
import random
import statistics
from typing import Any

import pytest

from bench.decisions import (
    BASE,
    CAND,
    Cell,
    Run,
    Task,
    Trace,
    binomial_upper,
    evaluate_targets,
    mann_whitney_greater,
    simulate_cell,
    wald_expected_samples,
)
from rollout.sandbox.traffic import simulate_window

SEEDS = 5
JUDGES = ("default", "flagger-compatible")
CellRuns = tuple[dict[str, Any], dict[str, list[Run]]]


@pytest.fixture(scope="module")
def regressed() -> CellRuns:
    return simulate_cell(Task(Cell(0.01, 100.0, "err x5"), SEEDS, 7, JUDGES), record=True)


@pytest.fixture(scope="module")
def healthy() -> CellRuns:
    return simulate_cell(Task(Cell(0.01, 100.0, "none"), SEEDS, 7, JUDGES), record=True)


def test_a_5x_regression_at_100_rps_is_rolled_back_by_both_judges(regressed: CellRuns) -> None:
    summary, runs = regressed
    for judge in JUDGES:
        rolled = [r for r in runs[judge] if r.end == "rolled_back"]
        assert len(rolled) >= SEEDS - 1, (judge, [r.end for r in runs[judge]])
        assert summary["judges"][judge]["missed"] == 0.0
        # Both stop it in the first step (10 windows), and the windows to the rollback are
        # counted from that step's split change.
        assert all(r.rollback_windows is not None and 1 <= r.rollback_windows <= 10
                   for r in rolled)
        assert summary["judges"][judge]["rolled_back_within"] <= len(rolled) / SEEDS


def test_a_healthy_candidate_is_promoted_by_the_default_judge(healthy: CellRuns) -> None:
    summary, runs = healthy
    ends = [r.end for r in runs["default"]]
    assert ends.count("promoted") >= SEEDS - 1, ends
    promoted = [r for r in runs["default"] if r.end == "promoted"]
    # 5 %, 25 %, 50 % for 10 minutes each: never before the bakes are over.
    assert all(r.minutes >= 30 for r in promoted)
    assert summary["judges"]["default"]["false_rollback"] == 0.0


def test_same_seed_same_windows_for_every_judge(regressed: CellRuns, healthy: CellRuns) -> None:
    for _summary, runs in (regressed, healthy):
        for seed in range(SEEDS):
            a, b = runs["default"][seed].fed, runs["flagger-compatible"][seed].fed
            assert a
            assert b
            # Both start at 5 % in window 0: the first window is the same for both judges.
            assert a[0] == b[0]
            seen = {(k, w): counts for k, w, *counts in a}
            shared = [((k, w), counts) for k, w, *counts in b if (k, w) in seen]
            assert shared, "the judges share at least their first window"
            for key, counts in shared:
                assert seen[key] == counts


def test_traces_are_reproducible_and_nested() -> None:
    cell = Cell(0.05, 10.0, "err x2")
    one, two = Trace(cell, 3, 11), Trace(cell, 3, 11)
    other = Trace(cell, 4, 11)
    for k in range(5):
        assert one.window(k, 25) == two.window(k, 25)
    assert [other.window(k, 25) for k in range(5)] != [one.window(k, 25) for k in range(5)]
    for k in range(20):
        small, large = one.arm_counts(CAND, k, 5), one.arm_counts(CAND, k, 50)
        assert small.requests <= large.requests
        assert small.errors_5xx <= large.errors_5xx
        assert all(s <= t for s, t in zip(small.latency_counts, large.latency_counts,
                                            strict=True))
        # The baseline is nested the other way: at 50 % it sees a subset of its 95 %.
        assert one.arm_counts(BASE, k, 50).requests <= one.arm_counts(BASE, k, 95).requests


def test_trace_counts_match_simulate_window_with_the_live_split() -> None:
    """Nested per-arm streams have the moments of one simulate_window call at the split."""
    cell = Cell(0.05, 10.0, "none")
    profiles = cell.profiles()
    trace = Trace(cell, 0, 5)
    windows = 400
    nested = [trace.window(k, 25) for k in range(windows)]
    rng = random.Random(99)
    direct = [simulate_window(profiles, {CAND: 25, BASE: 75}, 10.0, 60.0, rng)
              for _ in range(windows)]
    for name, mean, var in (
        ("candidate requests", 150.0, 150.0),
        ("baseline requests", 450.0, 450.0),
    ):
        ours = [w.candidate.requests if "candidate" in name else w.baseline.requests
                for w in nested]
        theirs = [float(d[CAND if "candidate" in name else BASE].requests) for d in direct]
        se = math.sqrt(var / windows)
        assert abs(statistics.fmean(ours) - mean) < 4 * se, name
        assert abs(statistics.fmean(theirs) - mean) < 4 * se, name
        assert 0.7 < statistics.variance(ours) / var < 1.3, name
    rate = sum(w.candidate.errors_5xx for w in nested) / sum(w.candidate.requests
                                                             for w in nested)
    assert abs(rate - 0.05) < 0.01


def test_wald_expected_sample_size() -> None:
    # p0 1 %, p1 2 %: (0.95 ln 95 + 0.05 ln(0.05/0.99)) / KL(0.02 || 0.01) = 1067 requests.
    assert wald_expected_samples(0.01, 0.02, 0.02) == pytest.approx(1067.3, abs=0.5)
    assert wald_expected_samples(0.01, 0.05, 0.05) < wald_expected_samples(0.01, 0.02, 0.02)
    assert wald_expected_samples(0.01, 0.02, 0.01) > 0


def test_mann_whitney_matches_the_textbook_normal_approximation() -> None:
    assert mann_whitney_greater([5.0, 6.0, 7.0, 8.0], [1.0, 2.0, 3.0, 4.0]) < 0.02
    assert mann_whitney_greater([1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0]) > 0.98
    assert mann_whitney_greater([0.0, 0.0, 0.0], [0.0, 0.0, 0.0]) == 1.0


def test_targets_read_the_cells(regressed: CellRuns, healthy: CellRuns) -> None:
    targets = evaluate_targets([regressed[0], healthy[0]])
    by_name = {" ".join(t["target"].split(" ")[:4]): t for t in targets}
    assert by_name["default false rollback <="]["checked"] == 1
    assert by_name["default false rollback <="]["pass"]
    assert by_name["control: default mean blast"]["checked"] == 1
    # No err x2 cell here: that target cannot tell.
    assert by_name["default missed 2x 5xx"]["checked"] == 0
    assert by_name["default missed 2x 5xx"]["pass"] is None


def test_binomial_upper_bound() -> None:
    assert binomial_upper(0, 200) == pytest.approx(1 - 0.05 ** (1 / 200), rel=1e-6)
    assert binomial_upper(2, 200) > binomial_upper(0, 200)
