"""Real traffic in the sandbox's model: hiccups, cold start, overdispersion, incidents, daily
load, latency shapes and the ways export-metrics delivers a window.

Statistical assertions use fixed seeds and state their tolerance (4 standard errors unless
said otherwise), as in ``test_sandbox_traffic.py``.
"""

from __future__ import annotations

import itertools
import math
import random
import statistics

import pytest
from pydantic import ValidationError

from rollout.metrics.parse import parse_export_metrics
from rollout.metrics.windows import WindowTracker
from rollout.sandbox.realism import (
    CounterExport,
    DeliveryFaults,
    Diurnal,
    EndpointRealism,
    Incidents,
    WindowEnvironment,
    entity_conditions,
    gamma_multiplier,
    partial_counts,
    replica_hiccups,
    substream,
    window_conditions,
    window_environment,
)
from rollout.sandbox.traffic import (
    BUCKET_BOUNDS_MS,
    Conditions,
    TrafficProfile,
    WindowCounts,
    bucket_means,
    bucket_probabilities,
    draw_counts,
    latency_quantile,
    sample_latency_ms,
    simulate_window,
)

HICCUPY = TrafficProfile(error_rate=0.01, replicas=20, hiccup_rate=0.1, hiccup_error_rate=0.3,
                         hiccup_fraction=0.25)


def _cdf_at(profile: TrafficProfile, bound: float, factor: float = 1.0) -> float:
    """P(latency <= bound) from the bucket masses (``bound`` must be a bucket bound)."""
    probs = bucket_probabilities(*profile.latency_shape(factor))
    return math.fsum(p for b, p in zip(BUCKET_BOUNDS_MS, probs, strict=True) if b <= bound)


# -- hiccups ----------------------------------------------------------------------------------


def test_hiccups_keep_the_mean_rate_and_add_variance_on_fewer_replicas() -> None:
    """1 replica (5 %) and 19 replicas (95 %) see the same mean 5xx rate, 0.01 * (1 - 0.025) +
    0.3 * 0.025 = 1.725 %; the lone replica's per-window rate is far more variable."""
    env = WindowEnvironment()
    rates: dict[float, list[float]] = {5.0: [], 95.0: []}
    for k in range(20_000):
        for weight, values in rates.items():
            cond = entity_conditions(HICCUPY, "hiccups", k, entity=f"e{weight}", weight=weight,
                                     environment=env)
            values.append(cond.error_rate(HICCUPY))
    expected = 0.01 * (1 - 0.1 * 0.25) + 0.3 * 0.1 * 0.25
    for weight, values in rates.items():
        # Per window: share = hiccups / replicas * 0.25, hiccups ~ Binomial(replicas, 0.1).
        replicas = HICCUPY.replicas_at(weight)
        sd_share = math.sqrt(0.1 * 0.9 / replicas) * 0.25
        sd_rate = sd_share * (0.3 - 0.01)
        assert statistics.fmean(values) == pytest.approx(expected, abs=4 * sd_rate / math.sqrt(
            len(values)))
        assert statistics.stdev(values) == pytest.approx(sd_rate, rel=0.05)
    assert statistics.stdev(rates[5.0]) > 4 * statistics.stdev(rates[95.0])
    assert HICCUPY.replicas_at(5) == 1
    assert HICCUPY.replicas_at(25) == 5
    assert HICCUPY.replicas_at(95) == 19
    assert TrafficProfile(replicas=3).replicas_at(1) == 1


def test_replica_states_are_nested_in_replica_order() -> None:
    few = replica_hiccups(substream("k", 3, "hiccup", "a"), 2, 0.5)
    many = replica_hiccups(substream("k", 3, "hiccup", "a"), 10, 0.5)
    assert many[:2] == few


def test_a_hiccup_window_mixes_the_two_rates_in_one_binomial() -> None:
    profile = TrafficProfile(error_rate=0.01, hiccup_error_rate=0.3)
    cond = Conditions(hiccup_share=0.25)
    assert cond.error_rate(profile) == pytest.approx(0.01 * 0.75 + 0.3 * 0.25)
    rng = random.Random(1)
    n = errors = 0
    for _ in range(400):
        counts = draw_counts(3000, profile, cond, rng)
        n += counts.requests
        errors += counts.errors_5xx
    p = cond.error_rate(profile)
    assert abs(errors - n * p) <= 4 * math.sqrt(n * p * (1 - p))


# -- overdispersion ---------------------------------------------------------------------------


@pytest.mark.parametrize("cv", [0.3, 0.5, 1.0])
def test_the_gamma_multiplier_has_mean_one_and_the_given_cv(cv: float) -> None:
    rng = random.Random(7)
    draws = [gamma_multiplier(cv, rng) for _ in range(40_000)]
    assert min(draws) > 0
    # The mean's standard error is cv / 200; the sd's is about cv * sqrt((kurtosis - 1) / 4n).
    assert statistics.fmean(draws) == pytest.approx(1.0, abs=4 * cv / 200)
    assert statistics.stdev(draws) / statistics.fmean(draws) == pytest.approx(cv, rel=0.05)
    assert gamma_multiplier(0.0, rng) == 1.0
    with pytest.raises(ValueError, match="cv"):
        gamma_multiplier(-1.0, rng)


def test_common_mode_noise_is_one_multiplier_for_every_entity_of_a_window() -> None:
    realism = EndpointRealism(common_mode_cv=0.5)
    profiles = {"a": TrafficProfile(error_rate=0.01), "b": TrafficProfile(error_rate=0.01)}
    multipliers = []
    for k in range(2000):
        _, cond = window_conditions(realism, profiles, {"a": 5, "b": 95}, key="ep", k=k,
                                    start_seconds=60.0 * k)
        assert cond["a"].error_multiplier == cond["b"].error_multiplier
        multipliers.append(cond["a"].error_multiplier)
    assert statistics.fmean(multipliers) == pytest.approx(1.0, abs=4 * 0.5 / math.sqrt(2000))
    assert statistics.stdev(multipliers) == pytest.approx(0.5, rel=0.1)


def test_an_entitys_own_multiplier_is_its_own() -> None:
    profiles = {"cand": TrafficProfile(error_rate=0.01, error_rate_cv=0.5),
                "base": TrafficProfile(error_rate=0.01)}
    own = []
    for k in range(2000):
        _, cond = window_conditions(NO_NOISE, profiles, {"cand": 5, "base": 95}, key="ep", k=k,
                                    start_seconds=60.0 * k)
        assert cond["base"].error_multiplier == 1.0
        own.append(cond["cand"].error_multiplier)
    assert statistics.fmean(own) == pytest.approx(1.0, abs=4 * 0.5 / math.sqrt(2000))
    assert statistics.stdev(own) == pytest.approx(0.5, rel=0.1)


NO_NOISE = EndpointRealism()


def test_conditions_repeat_with_the_key_and_differ_without_it() -> None:
    realism = EndpointRealism(common_mode_cv=1.0, incidents=Incidents(rate=0.3))
    profiles = {"a": HICCUPY.model_copy(update={"error_rate_cv": 0.5})}
    one = [window_conditions(realism, profiles, {"a": 100}, key="s:ep", k=k, start_seconds=0.0)
           for k in range(50)]
    two = [window_conditions(realism, profiles, {"a": 100}, key="s:ep", k=k, start_seconds=0.0)
           for k in range(50)]
    other = [window_conditions(realism, profiles, {"a": 100}, key="t:ep", k=k,
                               start_seconds=0.0) for k in range(50)]
    assert one == two
    assert one != other


# -- cold start -------------------------------------------------------------------------------


def test_cold_windows_are_slower_and_fail_more_then_match_the_warm_profile() -> None:
    profile = TrafficProfile(error_rate=0.01, latency_p50_ms=40.0, latency_p99_ms=120.0,
                             cold_start_windows=3, cold_start_latency_factor=3.0,
                             cold_start_error_rate=0.005)
    rng = random.Random(11)
    by_age: dict[int, WindowCounts] = {age: WindowCounts() for age in range(5)}
    for _ in range(200):
        for age in range(5):
            counts = simulate_window({"c": profile}, {"c": 100}, 100.0, 60.0, rng,
                                     window_index_since_start={"c": age})["c"]
            by_age[age].merge(counts)
    for age, total in by_age.items():
        p = 0.015 if age < 3 else 0.01
        n = total.requests
        assert abs(total.errors_5xx - n * p) <= 4 * math.sqrt(n * p * (1 - p)), age
        p50 = total.latency_histogram().quantile(0.5)
        assert p50 is not None
        # Cold: true p50 120 ms (bucket 100..250); warm: 40 ms (25..50).
        assert (100.0 <= p50 <= 250.0) if age < 3 else (25.0 <= p50 <= 50.0), (age, p50)
    # A cold condition given by the caller works without ages too.
    assert Conditions(cold=True).error_rate(profile) == pytest.approx(0.015)
    assert Conditions(cold=True).latency_factor(profile) == 3.0


# -- incidents and the daily cycle ------------------------------------------------------------


def test_incidents_last_between_their_bounds_and_start_at_their_rate() -> None:
    incidents = Incidents(rate=0.07, min_windows=2, max_windows=5, error_factor=10.0)
    active = [incidents.active("ep", k) for k in range(20_000)]
    runs: list[int] = []
    length = 0
    for on in active:
        if on:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    assert min(runs) >= 2
    # Overlapping incidents merge into longer runs; a lone one lasts 2..5 windows.
    assert statistics.median(runs) <= 5
    # P(window active) = 1 - prod over the last 5 starts of P(not covering it): each start j
    # windows back covers with 0.07 * P(duration > j) (durations uniform on 2..5).
    cover = [1.0, 1.0, 0.75, 0.5, 0.25]
    expected = 1 - math.prod(1 - 0.07 * c for c in cover)
    share = sum(active) / len(active)
    assert share == pytest.approx(expected, abs=0.02)
    assert incidents.factor("ep", next(k for k, on in enumerate(active) if on)) == 10.0
    assert Incidents().factor("ep", 3) == 1.0
    with pytest.raises(ValidationError, match="max_windows"):
        Incidents(min_windows=4, max_windows=2)


def test_the_daily_cycle_is_smooth_from_trough_to_peak() -> None:
    diurnal = Diurnal(traffic_ratio=3.0, error_ratio=2.0, period_seconds=3600.0,
                      trough_at_seconds=1000.0)
    assert diurnal.traffic_factor(1000.0) == pytest.approx(1.0)
    assert diurnal.traffic_factor(1000.0 + 1800.0) == pytest.approx(3.0)
    assert diurnal.error_factor(1000.0 + 1800.0) == pytest.approx(2.0)
    assert diurnal.traffic_factor(1000.0 + 3600.0) == pytest.approx(1.0)
    ramp = [diurnal.traffic_factor(1000.0 + 60.0 * m) for m in range(31)]
    assert all(b > a for a, b in itertools.pairwise(ramp))
    assert max(b / a for a, b in itertools.pairwise(ramp)) < 1.1
    env = window_environment(EndpointRealism(diurnal=diurnal), "ep", 0, 1000.0 + 1800.0)
    assert env.traffic_factor == pytest.approx(3.0)
    assert env.error_multiplier == pytest.approx(2.0)


# -- latency shapes ---------------------------------------------------------------------------


def test_a_shaped_tail_keeps_p50_and_p99_and_moves_p999() -> None:
    base = TrafficProfile(latency_p50_ms=40.0, latency_p99_ms=300.0)
    tight = TrafficProfile(latency_p50_ms=120.0, latency_p99_ms=300.0, latency_p999_ms=360.0)
    for profile in (base, tight):
        assert latency_quantile(profile, 0.5) == pytest.approx(profile.latency_p50_ms)
        assert latency_quantile(profile, 0.99) == pytest.approx(300.0)
    assert latency_quantile(tight, 0.999) == pytest.approx(360.0)
    assert latency_quantile(base, 0.999) == pytest.approx(580.0, rel=0.01)
    assert latency_quantile(base, 0.5, factor=3.0) == pytest.approx(120.0)
    # Masses: the tighter tail puts less beyond 500 ms and more in (100, 250].
    probs_base = bucket_probabilities(*base.latency_shape())
    probs_tight = bucket_probabilities(*tight.latency_shape())
    for probs in (probs_base, probs_tight):
        assert math.fsum(probs) == pytest.approx(1.0, abs=1e-12)
    i500 = BUCKET_BOUNDS_MS.index(500.0)
    assert math.fsum(probs_tight[i500 + 1:]) < 1e-5
    assert math.fsum(probs_base[i500 + 1:]) > 1e-3
    with pytest.raises(ValidationError, match="latency_p999_ms"):
        TrafficProfile(latency_p50_ms=40.0, latency_p99_ms=300.0, latency_p999_ms=300.0)


@pytest.mark.parametrize(("p99", "relation"), [(100.0, "on"), (95.0, "below"), (105.0, "above")])
def test_p99_sits_on_just_below_or_just_above_a_bucket_bound(p99: float, relation: str) -> None:
    profile = TrafficProfile(latency_p50_ms=40.0, latency_p99_ms=p99)
    below_100 = _cdf_at(profile, 100.0)
    if relation == "on":
        assert below_100 == pytest.approx(0.99, abs=1e-9)
    elif relation == "below":
        assert 0.99 < below_100 < 0.995
    else:
        assert 0.985 < below_100 < 0.99
    # With a shaped tail the p99 stays put too.
    shaped = TrafficProfile(latency_p50_ms=40.0, latency_p99_ms=100.0, latency_p999_ms=180.0)
    assert _cdf_at(shaped, 100.0) == pytest.approx(0.99, abs=1e-9)
    assert 0.9995 < _cdf_at(shaped, 250.0) < 1.0


def test_shaped_latency_draws_match_the_bucket_masses_and_means() -> None:
    profile = TrafficProfile(latency_p50_ms=120.0, latency_p99_ms=300.0, latency_p999_ms=360.0)
    rng = random.Random(3)
    draws = [sample_latency_ms(profile, rng) for _ in range(100_000)]
    draws.sort()
    assert draws[99_000] == pytest.approx(300.0, rel=0.02)
    assert draws[50_000] == pytest.approx(120.0, rel=0.02)
    shape = profile.latency_shape()
    probs, means = bucket_probabilities(*shape), bucket_means(*shape)
    lowers = (0.0, *BUCKET_BOUNDS_MS[:-1])
    for lo, hi, p, m in zip(lowers, BUCKET_BOUNDS_MS, probs, means, strict=True):
        inside = [x for x in draws if lo < x <= hi]
        n = len(draws)
        assert abs(len(inside) - n * p) <= 4 * math.sqrt(n * p * (1 - p)) + 1
        if len(inside) > 1000:
            assert statistics.fmean(inside) == pytest.approx(m, rel=0.01)


# -- delivery ---------------------------------------------------------------------------------


def test_delivery_faults_hit_one_entity_at_their_rates() -> None:
    faults = DeliveryFaults(late_rate=0.15, missing_rate=0.03, duplicate_rate=0.05,
                            revise_rate=0.05)
    seen = {"late": 0, "missing": 0, "duplicate": 0, "revised": 0}
    hit = {"a": 0, "b": 0}
    windows = 20_000
    for k in range(windows):
        plan = faults.plan("ep", k, ["b", "a"])
        faulty = [e for e, fate in plan.items() if fate != "on_time"]
        assert len(faulty) <= 1
        for e in faulty:
            seen[plan[e]] += 1
            hit[e] += 1
        # Following one entity gives it the same fate.
        assert faults.plan("ep", k, ["a", "b"]) == plan
    for kind, rate in (("late", 0.15), ("missing", 0.03), ("duplicate", 0.05),
                       ("revised", 0.05)):
        sd = math.sqrt(windows * rate * (1 - rate))
        assert abs(seen[kind] - windows * rate) <= 4 * sd, kind
    assert abs(hit["a"] - hit["b"]) <= 4 * math.sqrt(sum(hit.values()))
    assert DeliveryFaults().plan("ep", 1, ["a"]) == {"a": "on_time"}
    with pytest.raises(ValidationError, match="sum to at most 1"):
        DeliveryFaults(late_rate=0.6, missing_rate=0.6)


def test_a_partial_window_is_a_share_of_the_final_one() -> None:
    rng = random.Random(5)
    final = draw_counts(6000, TrafficProfile(error_rate=0.05, client_error_rate=0.02),
                        Conditions(), rng)
    shares = []
    for seed in range(200):
        part = partial_counts(final, 0.5, random.Random(seed))
        assert part.requests == sum(part.latency_counts) == sum(part.queue_counts)
        assert part.requests <= final.requests
        assert part.errors_5xx <= final.errors_5xx
        assert part.errors_4xx <= final.errors_4xx
        assert part.errors_5xx + part.errors_4xx <= part.requests
        assert all(p <= f for p, f in zip(part.latency_counts, final.latency_counts,
                                          strict=True))
        shares.append(part.requests / final.requests)
    assert statistics.fmean(shares) == pytest.approx(0.5, abs=0.01)
    assert partial_counts(WindowCounts(), 0.5, rng) == WindowCounts()


def test_counter_exposition_with_resets_sums_to_the_windows_through_the_tracker() -> None:
    """Cumulative counters, read through the parser and the tracker, give back each window's
    counts, also across a reset (the counter restarts with the window it restarted in)."""
    profiles = {"a": TrafficProfile(error_rate=0.02), "b": TrafficProfile(error_rate=0.01)}
    rng = random.Random(8)
    export = CounterExport()
    tracker = WindowTracker(window_ms=60_000)
    served: dict[str, WindowCounts] = {"a": WindowCounts(), "b": WindowCounts()}
    resets_seen = 0
    for k in range(30):
        counts = simulate_window(profiles, {"a": 50, "b": 50}, 20.0, 60.0, rng)
        resets = {e: substream("ep", k, "reset", e).random() < 0.2 for e in counts}
        export.add(k, 60.0 * k, 60.0 * (k + 1), counts, resets)
        scrape = parse_export_metrics(export.render("ep", {}))
        assert scrape.kind == "counter"
        assert not scrape.warnings
        tracker.observe(scrape, 60_000 * (k + 1))
        if k > 0:  # the first scrape is every counter's baseline
            for e, c in counts.items():
                served[e].merge(c)
            resets_seen += sum(resets.values())
    assert resets_seen > 0
    totals = tracker.totals(0)
    for e, c in served.items():
        assert totals[e].requests == c.requests
        assert totals[e].errors_5xx == c.errors_5xx
        assert totals[e].latency is not None
        assert totals[e].latency.total == c.requests
    assert CounterExport().render("ep", {}) == ""
