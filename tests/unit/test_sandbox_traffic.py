"""The sandbox's traffic model: samplers, one window, statistical fidelity, the exposition.

Statistical assertions use a fixed seed and state their tolerance: counts within 4 standard
deviations of their expectation (a false alarm rate of about 6e-5 per assertion if the seed
were random), quantiles within the histogram bucket that holds the true value.
"""

from __future__ import annotations

import math
import random
import statistics
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

from rollout.metrics.model import Histogram
from rollout.sandbox.traffic import (
    BUCKET_BOUNDS_MS,
    EntityGauges,
    TrafficProfile,
    WindowCounts,
    binomial,
    bucket_means,
    bucket_probabilities,
    estimate_gauges,
    multinomial,
    poisson,
    render_export_metrics,
    simulate_window,
)

SIGMAS = 4.0


def within(observed: float, expected: float, sd: float, sigmas: float = SIGMAS) -> bool:
    return abs(observed - expected) <= sigmas * sd


@pytest.mark.parametrize(
    ("n", "p"),
    [(1, 0.3), (7, 0.2), (40, 0.1), (1000, 0.3), (60_000, 0.02), (10**7, 0.5), (200, 0.95)],
)
def test_binomial_has_the_right_mean_and_variance(n: int, p: float) -> None:
    rng = random.Random(11)
    draws = [binomial(n, p, rng) for _ in range(20_000)]
    assert all(0 <= x <= n for x in draws)
    mean_sd = math.sqrt(n * p * (1 - p) / len(draws))
    assert within(statistics.fmean(draws), n * p, mean_sd)
    # The sample variance of 20 000 draws is within a few percent of the true one.
    assert statistics.variance(draws) == pytest.approx(n * p * (1 - p), rel=0.08)


@pytest.mark.parametrize("lam", [0.3, 4.0, 9.99, 10.0, 75.0, 60_000.0])
def test_poisson_has_the_right_mean_and_variance(lam: float) -> None:
    rng = random.Random(12)
    draws = [poisson(lam, rng) for _ in range(20_000)]
    assert min(draws) >= 0
    assert within(statistics.fmean(draws), lam, math.sqrt(lam / len(draws)))
    assert statistics.variance(draws) == pytest.approx(lam, rel=0.08)


def test_samplers_handle_degenerate_parameters() -> None:
    rng = random.Random(0)
    assert binomial(0, 0.5, rng) == 0
    assert binomial(50, 0.0, rng) == 0
    assert binomial(50, 1.0, rng) == 50
    assert poisson(0.0, rng) == 0
    with pytest.raises(ValueError, match="non-negative"):
        binomial(-1, 0.5, rng)
    with pytest.raises(ValueError, match="lambda"):
        poisson(math.inf, rng)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(min_value=0, max_value=10**7),
    probs=st.lists(st.floats(min_value=0.0, max_value=1.0), min_size=1, max_size=20).filter(
        lambda ps: sum(ps) > 0
    ),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_multinomial_counts_sum_to_n_and_skip_empty_categories(
    n: int, probs: list[float], seed: int
) -> None:
    counts = multinomial(n, probs, random.Random(seed))
    assert sum(counts) == n
    assert len(counts) == len(probs)
    assert all(c >= 0 for c in counts)
    assert all(c == 0 for c, p in zip(counts, probs, strict=True) if p == 0.0)


def test_bucket_probabilities_sum_to_one_and_match_the_lognormal() -> None:
    profile = TrafficProfile(latency_p50_ms=40.0, latency_p99_ms=400.0)
    mu, sigma = profile.latency_params()
    probs = bucket_probabilities(mu, sigma)
    assert math.fsum(probs) == pytest.approx(1.0, abs=1e-12)
    # The p50 and p99 land where the profile put them: P(X <= 40) = 0.5, P(X <= 400) = 0.99.
    below_50 = sum(p for b, p in zip(BUCKET_BOUNDS_MS, probs, strict=True) if b <= 50.0)
    assert below_50 > 0.5
    assert below_50 - probs[BUCKET_BOUNDS_MS.index(50.0)] < 0.5
    means = bucket_means(mu, sigma)
    lowers = (0.0, *BUCKET_BOUNDS_MS[:-1])
    assert all(lo <= m <= hi for lo, m, hi in zip(lowers, means, BUCKET_BOUNDS_MS, strict=True))


def test_profile_validation_names_the_problem() -> None:
    with pytest.raises(ValidationError, match="latency_p99_ms must be >= latency_p50_ms"):
        TrafficProfile(latency_p50_ms=100.0, latency_p99_ms=50.0)
    with pytest.raises(ValidationError, match="error_rate"):
        TrafficProfile(error_rate=1.5)
    with pytest.raises(ValidationError, match="latency_p50_ms"):
        TrafficProfile(latency_p50_ms=math.inf)


def test_a_window_matches_its_profile_within_sampling_error() -> None:
    """The statistical contract: counts and latency quantiles follow the profiles.

    200 windows of 60 s at 1000 qps (about 12 million requests), split 90/10. Tolerances:
    every count within 4 sd of its expectation given what it is drawn from; p50 and p99 of the
    summed histogram inside the bucket that holds the true quantile.
    """
    profiles = {
        "baseline": TrafficProfile(error_rate=0.02, client_error_rate=0.01,
                                   latency_p50_ms=40.0, latency_p99_ms=400.0),
        "candidate": TrafficProfile(error_rate=0.05, latency_p50_ms=120.0,
                                    latency_p99_ms=2000.0),
    }
    rng = random.Random(2024)
    totals = {e: WindowCounts() for e in profiles}
    windows = 200
    for _ in range(windows):
        for entity, counts in simulate_window(
            profiles, {"baseline": 90, "candidate": 10}, 1000.0, 60.0, rng
        ).items():
            totals[entity].merge(counts)

    expected_total = 1000.0 * 60.0 * windows
    n_all = sum(c.requests for c in totals.values())
    assert within(n_all, expected_total, math.sqrt(expected_total))
    n_cand = totals["candidate"].requests
    assert within(n_cand, 0.1 * n_all, math.sqrt(n_all * 0.1 * 0.9))

    for entity, profile in profiles.items():
        t = totals[entity]
        n = t.requests
        p = profile.error_rate
        assert within(t.errors_5xx, n * p, math.sqrt(n * p * (1 - p)))
        m = n - t.errors_5xx
        q = profile.client_error_rate
        assert within(t.errors_4xx, m * q, math.sqrt(max(m * q * (1 - q), 1e-9)))
        assert sum(t.latency_counts) == n

        # Each bucket count is Binomial(n, P(bucket)).
        mu, sigma = profile.latency_params()
        for count, prob in zip(t.latency_counts, bucket_probabilities(mu, sigma), strict=True):
            assert within(count, n * prob, math.sqrt(n * prob * (1 - prob)) + 1.0)

        # Quantiles of the summed histogram fall in the bucket of the true quantile.
        hist = t.latency_histogram()
        for q_level, true_value in ((0.5, profile.latency_p50_ms), (0.99, profile.latency_p99_ms)):
            estimate = hist.quantile(q_level)
            assert estimate is not None
            upper = next(b for b in BUCKET_BOUNDS_MS if true_value <= b)
            lower = max((b for b in BUCKET_BOUNDS_MS if b < upper), default=0.0)
            assert lower <= estimate <= upper, (entity, q_level, estimate)

        # The latency sum gives the lognormal mean (within 1 %; its sd is far smaller).
        assert t.latency_sum_ms / n == pytest.approx(math.exp(mu + sigma**2 / 2), rel=0.01)


def test_small_windows_use_exact_sampling() -> None:
    """At 5 qps a window has ~300 requests: the small-n paths must be right too."""
    profile = TrafficProfile(error_rate=0.1)
    rng = random.Random(5)
    n = errors = 0
    for _ in range(300):
        counts = simulate_window({"a": profile}, {"a": 100}, 5.0, 60.0, rng)["a"]
        n += counts.requests
        errors += counts.errors_5xx
    assert within(n, 300 * 300.0, math.sqrt(300 * 300.0))
    assert within(errors, n * 0.1, math.sqrt(n * 0.1 * 0.9))


def test_cold_start_slows_the_first_windows_only() -> None:
    profile = TrafficProfile(latency_p50_ms=40.0, latency_p99_ms=200.0, cold_start_windows=2,
                             cold_start_latency_factor=10.0)
    rng = random.Random(9)
    p50s = []
    for age in range(4):
        counts = simulate_window({"c": profile}, {"c": 100}, 200.0, 60.0, rng,
                                 window_index_since_start={"c": age})["c"]
        p50s.append(counts.latency_histogram().quantile(0.5))
    # Cold: true p50 is 400 ms (bucket 250..500); warm: 40 ms (bucket 25..50).
    assert all(v is not None and 250.0 <= v <= 500.0 for v in p50s[:2]), p50s
    assert all(v is not None and 25.0 <= v <= 50.0 for v in p50s[2:]), p50s


def test_same_seed_same_window_and_different_seed_differs() -> None:
    profiles = {"a": TrafficProfile(error_rate=0.01), "b": TrafficProfile()}
    split = {"a": 50, "b": 50}
    one = simulate_window(profiles, split, 100.0, 60.0, random.Random(1))
    two = simulate_window(profiles, split, 100.0, 60.0, random.Random(1))
    other = simulate_window(profiles, split, 100.0, 60.0, random.Random(2))
    assert one == two
    assert one != other


def test_zero_traffic_entities_and_zero_load_report_zeros() -> None:
    rng = random.Random(3)
    counts = simulate_window({}, {"a": 100, "b": 0}, 50.0, 60.0, rng)
    assert set(counts) == {"a", "b"}
    assert counts["b"] == WindowCounts()
    assert counts["a"].requests > 0
    idle = simulate_window({}, {"a": 100}, 0.0, 60.0, rng)
    assert idle["a"] == WindowCounts()
    with pytest.raises(ValueError, match="qps"):
        simulate_window({}, {"a": 100}, -1.0, 60.0, rng)


def test_a_window_at_1000_qps_costs_microseconds() -> None:
    profiles = {"a": TrafficProfile(error_rate=0.01), "b": TrafficProfile(error_rate=0.02)}
    rng = random.Random(0)
    started = time.perf_counter()
    for _ in range(1000):
        simulate_window(profiles, {"a": 95, "b": 5}, 1000.0, 60.0, rng)
    # 60 000 requests per window; sampling each would take ~30 ms per window.
    assert time.perf_counter() - started < 1.5


def test_record_adds_one_real_request() -> None:
    counts = WindowCounts()
    counts.record(latency_ms=30.0, queue_ms=2.0, status=200)
    counts.record(latency_ms=7000.0, queue_ms=2.0, status=503)
    counts.record(latency_ms=5.0, queue_ms=0.5, status=404)
    assert (counts.requests, counts.errors_5xx, counts.errors_4xx) == (3, 1, 1)
    assert counts.latency_counts[BUCKET_BOUNDS_MS.index(50.0)] == 1
    assert counts.latency_counts[BUCKET_BOUNDS_MS.index(10000.0)] == 1
    assert counts.latency_counts[BUCKET_BOUNDS_MS.index(5.0)] == 1  # le is inclusive
    assert counts.latency_sum_ms == 7035.0


def test_gauges_rise_with_load() -> None:
    light = WindowCounts(latency_sum_ms=1_000.0)
    heavy = WindowCounts(latency_sum_ms=200_000.0)
    g_light = estimate_gauges(light, 60.0, 4.0)
    g_heavy = estimate_gauges(heavy, 60.0, 4.0)
    assert g_light.cpu_percent < g_heavy.cpu_percent <= 100.0
    assert g_heavy.provisioned_concurrency == 4.0
    # GPU gauges only for a GPU workload, rising with load like CPU.
    assert (g_light.gpu_percent, g_light.gpu_mem_percent) == (None, None)
    gpu_light = estimate_gauges(light, 60.0, 4.0, gpu=True)
    gpu_heavy = estimate_gauges(heavy, 60.0, 4.0, gpu=True)
    assert gpu_light.gpu_percent is not None
    assert gpu_heavy.gpu_percent is not None
    assert gpu_light.gpu_percent < gpu_heavy.gpu_percent <= 100.0
    assert gpu_heavy.gpu_mem_percent is not None
    assert gpu_heavy.gpu_mem_percent <= 100.0


def test_exposition_parses_and_carries_the_window() -> None:
    counts = simulate_window(
        {"ads-3": TrafficProfile(error_rate=0.05, client_error_rate=0.02)},
        {"ads-3": 80, 'odd"name': 20},
        100.0,
        60.0,
        random.Random(4),
    )
    gauges = {e: estimate_gauges(c, 60.0, 4.0) for e, c in counts.items()}
    start_ms = 1_800_000_000_000
    text = render_export_metrics("ads-endpoint", start_ms, counts, gauges)

    assert "# TYPE request_count_total gauge" in text
    assert "# TYPE request_latency_ms histogram" in text
    assert "# HELP request_5xx_count_total" in text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert set(families) == {
        "request_count_total", "request_4xx_count_total", "request_5xx_count_total",
        "cpu_usage_percentage", "mem_usage_percentage", "provisioned_concurrent_requests_total",
        "request_latency_ms", "model_queue_time_ms",
    }
    for family in families.values():
        for sample in family.samples:
            assert sample.timestamp == start_ms / 1000
            assert sample.labels["endpoint_name"] == "ads-endpoint"
            assert sample.labels["served_entity_name"] in counts

    def value(name: str, entity: str, **extra: str) -> float:
        family = families[name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count")
                          if name.startswith("request_latency_ms") else name]
        return next(
            s.value for s in family.samples
            if s.name == name and s.labels["served_entity_name"] == entity
            and all(s.labels.get(k) == v for k, v in extra.items())
        )

    c = counts["ads-3"]
    assert value("request_count_total", "ads-3") == c.requests
    assert value("request_5xx_count_total", "ads-3") == c.errors_5xx
    assert value("request_4xx_count_total", "ads-3") == c.errors_4xx
    assert value("request_count_total", 'odd"name') == counts['odd"name'].requests
    assert value("request_latency_ms_count", "ads-3") == c.requests
    assert value("request_latency_ms_bucket", "ads-3", le="+Inf") == c.requests
    assert value("request_latency_ms_bucket", "ads-3", le="50.0") == sum(c.latency_counts[:4])
    assert value("request_latency_ms_sum", "ads-3") == pytest.approx(c.latency_sum_ms)
    assert value("cpu_usage_percentage", "ads-3") == gauges["ads-3"].cpu_percent

    # Buckets are cumulative and rebuild the same histogram.
    buckets = {
        (math.inf if s.labels["le"] == "+Inf" else float(s.labels["le"])): s.value
        for s in families["request_latency_ms"].samples
        if s.name == "request_latency_ms_bucket" and s.labels["served_entity_name"] == "ads-3"
    }
    rebuilt = Histogram.from_cumulative(buckets)
    assert rebuilt.counts == tuple(float(x) for x in c.latency_counts)


def test_exposition_of_nothing_is_empty_and_gauges_are_optional() -> None:
    assert render_export_metrics("ep", 0, {}, {}) == ""
    text = render_export_metrics("ep", 60_000, {"a": WindowCounts()}, {})
    assert "request_count_total{" in text
    assert "cpu_usage_percentage" not in text
    inf_bucket = 'request_latency_ms_bucket{served_entity_name="a",endpoint_name="ep",le="+Inf"}'
    assert f"{inf_bucket} 0.0 60000" in text
    gauges = {"a": EntityGauges(cpu_percent=5.0, mem_percent=27.0, provisioned_concurrency=4.0)}
    assert "cpu_usage_percentage{" in render_export_metrics("ep", 0, {"a": WindowCounts()},
                                                            gauges)
