"""The window model's arithmetic: histograms (quantiles, merges, tails) and arm totals."""

from __future__ import annotations

import json
import math

import pytest

from rollout.metrics.model import ArmTotals, EntityWindow, Histogram

INF = math.inf


@pytest.mark.parametrize(
    ("cumulative", "bounds", "counts"),
    [
        pytest.param({5: 2, 10: 8, INF: 10}, (5.0, 10.0, INF), (2.0, 6.0, 2.0), id="plain"),
        pytest.param({INF: 10, 10: 8, 5: 2}, (5.0, 10.0, INF), (2.0, 6.0, 2.0), id="unordered"),
        pytest.param({5: 0, 10: 0, INF: 0}, (5.0, 10.0, INF), (0.0, 0.0, 0.0), id="all-zero"),
        # A rounding dip never produces a negative bucket, and the next bucket is not inflated.
        pytest.param(
            {5: 3.0000001, 10: 3, INF: 4},
            (5.0, 10.0, INF),
            (3.0000001, 0.0, 0.9999999),
            id="rounding-dip",
        ),
    ],
)
def test_from_cumulative(
    cumulative: dict[float, float], bounds: tuple[float, ...], counts: tuple[float, ...]
) -> None:
    hist = Histogram.from_cumulative(cumulative, total_sum=12.5)
    assert hist.bounds == bounds
    assert hist.counts == pytest.approx(counts)
    assert hist.sum == 12.5


@pytest.mark.parametrize(
    ("bounds", "counts", "q", "expected"),
    [
        # Linear interpolation inside the bucket holding the rank, the first bucket from 0.
        pytest.param((10.0, 20.0, INF), (10.0, 10.0, 0.0), 0.5, 10.0, id="edge-of-first"),
        pytest.param((10.0, 20.0, INF), (10.0, 10.0, 0.0), 0.25, 5.0, id="inside-first"),
        pytest.param((10.0, 20.0, INF), (10.0, 10.0, 0.0), 0.75, 15.0, id="inside-second"),
        pytest.param((10.0, 20.0, INF), (10.0, 10.0, 0.0), 1.0, 20.0, id="q1"),
        # q=0 is the lower edge of the first non-empty bucket.
        pytest.param((10.0, 20.0, INF), (0.0, 4.0, 0.0), 0.0, 10.0, id="q0-skips-empty"),
        # In the +Inf bucket the histogram cannot say more than its highest finite bound.
        pytest.param((10.0, 20.0, INF), (5.0, 0.0, 5.0), 0.99, 20.0, id="in-inf-bucket"),
        pytest.param((INF,), (7.0,), 0.5, 0.0, id="only-inf"),
        # Empty buckets between do not move the lower edge of the next non-empty one wrongly.
        pytest.param((10.0, 20.0, 40.0, INF), (2.0, 0.0, 2.0, 0.0), 0.75, 30.0, id="gap"),
    ],
)
def test_quantile(
    bounds: tuple[float, ...], counts: tuple[float, ...], q: float, expected: float
) -> None:
    assert Histogram(bounds, counts).quantile(q) == pytest.approx(expected)


def test_quantile_of_empty_histogram_is_none() -> None:
    assert Histogram((10.0, INF), (0.0, 0.0)).quantile(0.99) is None


@pytest.mark.parametrize("q", [-0.01, 1.01, math.nan])
def test_quantile_outside_unit_interval_is_refused(q: float) -> None:
    with pytest.raises(ValueError, match="quantile"):
        Histogram((10.0, INF), (1.0, 0.0)).quantile(q)


@pytest.mark.parametrize(
    ("threshold", "expected"),
    [
        pytest.param(0.0, 20.0, id="everything"),
        pytest.param(5.0, 15.0, id="half-of-first"),
        pytest.param(10.0, 10.0, id="at-a-bound"),
        pytest.param(15.0, 7.5, id="half-of-second"),
        pytest.param(20.0, 5.0, id="only-inf"),
        pytest.param(1e9, 5.0, id="beyond-finite-bounds"),
    ],
)
def test_count_above(threshold: float, expected: float) -> None:
    hist = Histogram((10.0, 20.0, INF), (10.0, 5.0, 5.0))
    assert hist.count_above(threshold) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("left", "right", "bounds", "counts", "total_sum"),
    [
        pytest.param(
            Histogram((10.0, INF), (1.0, 2.0), 30.0),
            Histogram((10.0, INF), (3.0, 4.0), 50.0),
            (10.0, INF),
            (4.0, 6.0),
            80.0,
            id="same-layout",
        ),
        pytest.param(
            Histogram((10.0, INF), (1.0, 2.0), 30.0),
            Histogram((5.0, 20.0, INF), (3.0, 4.0, 0.0), None),
            (5.0, 10.0, 20.0, INF),
            (3.0, 1.0, 4.0, 2.0),
            None,
            id="differing-layouts-keep-every-request",
        ),
    ],
)
def test_merge(
    left: Histogram,
    right: Histogram,
    bounds: tuple[float, ...],
    counts: tuple[float, ...],
    total_sum: float | None,
) -> None:
    merged = left.merge(right)
    assert merged.bounds == bounds
    assert merged.counts == counts
    assert merged.sum == total_sum
    assert merged.total == left.total + right.total
    assert right.merge(left) == merged


@pytest.mark.parametrize(
    ("bounds", "counts"),
    [
        pytest.param((10.0, INF), (1.0,), id="count-per-bound"),
        pytest.param((10.0, 10.0, INF), (1.0, 1.0, 1.0), id="strictly-increasing"),
        pytest.param((20.0, 10.0), (1.0, 1.0), id="descending"),
    ],
)
def test_histogram_rejects_bad_shapes(bounds: tuple[float, ...], counts: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="histogram"):
        Histogram(bounds, counts)


def test_window_round_trips_through_strict_json() -> None:
    window = EntityWindow(
        entity="ads-model-4",
        start_ms=1_788_718_020_000,
        requests=64.0,
        errors_4xx=1.0,
        errors_5xx=3.0,
        latency=Histogram((50.0, INF), (60.0, 4.0), 4409.0),
        queue_time=Histogram((5.0, INF), (64.0, 0.0), None),
        cpu_percent=12.0,
        missing=frozenset({"mem_percent", "provisioned_concurrency"}),
    )
    text = json.dumps(window.to_dict(), allow_nan=False)
    assert EntityWindow.from_dict(json.loads(text)) == window


def test_arm_totals_count_windows_missing_a_field() -> None:
    totals = ArmTotals()
    totals.add(EntityWindow("a", 0, requests=10.0, errors_5xx=1.0))
    totals.add(EntityWindow("a", 60_000, requests=5.0, missing=frozenset({"errors_5xx"})))
    totals.add(
        EntityWindow("a", 120_000, requests=7.0, missing=frozenset({"errors_5xx", "latency"}))
    )
    assert totals.windows == 3
    assert totals.requests == 22.0
    assert totals.errors_5xx == 1.0
    assert totals.missing == {"errors_5xx": 2, "latency": 1}
