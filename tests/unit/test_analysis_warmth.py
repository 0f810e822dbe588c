"""When does one window's latency say the candidate is warm (``rollout.analysis.warmth``)?

Table-driven on windows drawn as the sandbox draws them (``simulate_window``, fixed seeds):
each case gives both arms' profiles and how often the test must call the candidate warm.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import pytest

from rollout.analysis.warmth import WARM_MIN_REQUESTS, looks_warm, median_bound
from rollout.metrics.model import Histogram
from rollout.sandbox.traffic import TrafficProfile, simulate_window

BASELINE = TrafficProfile(latency_p50_ms=40.0, latency_p99_ms=120.0)


@dataclass(frozen=True)
class Case:
    name: str
    candidate: TrafficProfile
    cold: bool
    qps: float
    low: float  # bounds on the share of 200 windows called warm
    high: float
    baseline: TrafficProfile = BASELINE


def shifted(profile: TrafficProfile, factor: float) -> TrafficProfile:
    return profile.model_copy(update={"latency_p50_ms": profile.latency_p50_ms * factor,
                                      "latency_p99_ms": profile.latency_p99_ms * factor})


ON_BOUND = TrafficProfile(latency_p50_ms=50.0, latency_p99_ms=100.0)  # median on a bound
CASES = [
    Case("the same latency: warm", BASELINE, False, 1000.0, 0.99, 1.0),
    Case("the same latency, median on a bucket bound: warm", ON_BOUND, False, 1000.0, 0.99,
         1.0, baseline=ON_BOUND),
    Case("the same latency at 100 req/s: warm", BASELINE, False, 100.0, 0.97, 1.0),
    Case("a cold start, 3x latency: never warm",
         BASELINE.model_copy(update={"cold_start_windows": 3,
                                     "cold_start_latency_factor": 3.0}), True, 1000.0, 0.0, 0.0),
    Case("a mild cold start, 1.5x latency: never warm",
         BASELINE.model_copy(update={"cold_start_windows": 1,
                                     "cold_start_latency_factor": 1.5}), True, 1000.0, 0.0, 0.0),
    Case("a slower median for good: never warm", shifted(BASELINE, 3.0), False, 1000.0, 0.0,
         0.0),
    Case("too few requests (10 req/s at 5 %): never warm", BASELINE, False, 10.0, 0.0, 0.0),
]


def warm_share(case: Case) -> float:
    rng = random.Random(f"warmth/{case.name}")
    warm = 0
    for _ in range(200):
        counts = simulate_window(
            {"cand": case.candidate, "base": case.baseline}, {"cand": 5, "base": 95},
            case.qps, 60.0, rng, window_index_since_start={"cand": 0} if case.cold else None,
        )
        warm += looks_warm(counts["cand"].latency_histogram(),
                           counts["base"].latency_histogram())
    return warm / 200


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_how_often_a_window_looks_warm(case: Case) -> None:
    assert case.low <= warm_share(case) <= case.high


def hist(*counts: float) -> Histogram:
    return Histogram((25.0, 50.0, 100.0, 250.0, float("inf")), counts)


@pytest.mark.parametrize(
    ("candidate", "baseline", "warm"),
    [
        (hist(0, 300, 100, 0, 0), hist(0, 3000, 1000, 0, 0), True),
        (hist(0, 100, 300, 0, 0), hist(0, 3000, 1000, 0, 0), False),  # most beyond the median
        (None, hist(0, 3000, 1000, 0, 0), False),  # no latency reported
        (hist(0, 300, 100, 0, 0), None, False),
        (hist(0, 100, 50, 0, 0), hist(0, 3000, 1000, 0, 0), False),  # below the minimum
        (hist(0, 300, 100, 0, 0), hist(0, 0, 0, 0, 4000), False),  # median beyond every bound
        # A different bucket layout: no exact count at the baseline's level.
        (Histogram((30.0, float("inf")), (400.0, 0.0)), hist(0, 3000, 1000, 0, 0), False),
    ],
)
def test_looks_warm_on_hand_made_windows(
    candidate: Histogram | None, baseline: Histogram | None, warm: bool
) -> None:
    assert looks_warm(candidate, baseline) is warm


def test_the_level_is_the_bucket_bound_at_or_above_the_median() -> None:
    assert median_bound(hist(0, 3000, 1000, 0, 0)) == 50.0
    assert median_bound(hist(2000, 2000, 0, 0, 0)) == 25.0  # exactly half at or below
    assert median_bound(hist(0, 0, 0, 0, 10)) is None
    assert median_bound(hist(0, 0, 0, 0, 0)) is None
    assert WARM_MIN_REQUESTS >= 100
