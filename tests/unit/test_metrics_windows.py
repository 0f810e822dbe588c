"""Windows across scrapes: dedup, revisions, untimed snapshots, counter deltas, sums, state."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rollout.metrics.model import EntityWindow, Histogram
from rollout.metrics.parse import Scrape, parse_export_metrics
from rollout.metrics.windows import MetricsStateError, WindowTracker, sum_windows

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "export_metrics"
T0 = 1_788_718_020_000
T1 = T0 + 60_000
T2 = T1 + 60_000
INF = math.inf


def scrape_of(name: str) -> Scrape:
    return parse_export_metrics((FIXTURES / name).read_text(encoding="utf-8"))


def keys(windows: list[EntityWindow]) -> list[tuple[str | None, int | None]]:
    return [(w.entity, w.start_ms) for w in windows]


def gauge_text(entity: str, start_ms: int | None, requests: int, errors_5xx: int = 0) -> str:
    stamp = "" if start_ms is None else f" {start_ms}"
    labels = f'served_entity_name="{entity}"'
    return (
        f"request_count_total{{{labels}}} {requests}{stamp}\n"
        f"request_5xx_count_total{{{labels}}} {errors_5xx}{stamp}\n"
    )


# --------------------------------------------------------------------------------------------
# Per-window gauges


def test_overlapping_scrapes_count_each_window_once() -> None:
    tracker = WindowTracker()
    first = tracker.observe(scrape_of("overlap_1.prom"), T0 + 65_000)
    second = tracker.observe(scrape_of("overlap_2.prom"), T0 + 95_000)
    third = tracker.observe(scrape_of("overlap_3.prom"), T0 + 185_000)
    assert keys(first) == [("ads-model-3", T0), ("ads-model-4", T0)]
    assert keys(second) == [("ads-model-3", T1), ("ads-model-4", T1)]
    assert keys(third) == [("ads-model-3", T2), ("ads-model-4", T2)]
    # overlap_3 revised ads-model-3's T1 window from 1100 to 1150 requests.
    assert tracker.revisions == 1
    assert keys(tracker.last_revised) == [("ads-model-3", T1)]
    assert tracker.last_revised[0].requests == 1150.0
    totals = tracker.totals(T0)
    assert totals["ads-model-3"].windows == 3
    assert totals["ads-model-3"].requests == 1200 + 1150 + 1210
    assert totals["ads-model-4"].requests == 64 + 70 + 61
    assert totals["ads-model-4"].errors_5xx == 3 + 1 + 0
    latency = totals["ads-model-3"].latency
    assert latency is not None
    assert latency.total == 1200 + 1150 + 1210


@pytest.mark.parametrize(
    ("since_ms", "requests", "windows"),
    [
        pytest.param(T0, 1200 + 1150 + 1210, 3, id="all"),
        pytest.param(T0 + 1, 1150 + 1210, 2, id="split-applied-mid-window"),
        pytest.param(T1, 1150 + 1210, 2, id="at-window-start"),
        pytest.param(T2 + 1, 0, 0, id="nothing-yet"),
    ],
)
def test_totals_judge_only_windows_begun_after_the_split(
    since_ms: int, requests: int, windows: int
) -> None:
    tracker = WindowTracker()
    for name in ("overlap_1.prom", "overlap_2.prom", "overlap_3.prom"):
        tracker.observe(scrape_of(name), T2 + 65_000)
    baseline = tracker.totals(since_ms).get("ads-model-3")
    assert (0 if baseline is None else baseline.requests) == requests
    assert (0 if baseline is None else baseline.windows) == windows


def test_the_same_scrape_twice_is_nothing_new() -> None:
    tracker = WindowTracker()
    assert len(tracker.observe(scrape_of("entity_name.prom"), T0 + 60_000)) == 2
    assert tracker.observe(scrape_of("entity_name.prom"), T0 + 90_000) == []
    assert tracker.revisions == 0
    assert tracker.totals(T0)["ads-model-3"].requests == 1200.0


def test_a_revision_keeps_fields_the_later_scrape_lacks() -> None:
    tracker = WindowTracker()
    tracker.observe(scrape_of("entity_name.prom"), T0 + 60_000)
    revised = parse_export_metrics(gauge_text("ads-model-3", T0, 1250, 5))
    assert tracker.observe(revised, T0 + 90_000) == []
    (window,) = tracker.last_revised
    assert (window.requests, window.errors_5xx) == (1250.0, 5.0)
    # Latency, 4xx and CPU were not in the revision: the first scrape's values stand.
    assert window.latency is not None
    assert window.latency.total == 1200.0
    assert window.errors_4xx == 3.0
    assert window.cpu_percent == 41.5
    # A CPU endpoint: the GPU families were in neither scrape.
    assert window.missing == frozenset({"gpu_percent", "gpu_mem_percent", "inference_latency"})


def test_endpoint_totals_are_kept_under_none_and_flagged() -> None:
    tracker = WindowTracker()
    tracker.observe(scrape_of("endpoint_totals.prom"), T0 + 60_000)
    assert tracker.has_entity_labels is False
    assert set(tracker.totals(T0)) == {None}
    assert tracker.totals(T0)[None].requests == 1264.0
    tracker.observe(scrape_of("overlap_2.prom"), T1 + 60_000)
    assert tracker.has_entity_labels is True


def test_missing_fields_reach_the_arm_totals() -> None:
    tracker = WindowTracker()
    tracker.observe(scrape_of("free_edition.prom"), T0 + 60_000)
    tracker.observe(scrape_of("overlap_3.prom"), T2 + 60_000)
    candidate = tracker.totals(T0)["ads-model-4"]
    assert candidate.windows == 3
    assert candidate.missing == {
        "latency": 1,
        "queue_time": 1,
        "cpu_percent": 1,
        "mem_percent": 1,
        "provisioned_concurrency": 1,
        "gpu_percent": 3,
        "gpu_mem_percent": 3,
        "inference_latency": 3,
    }
    assert candidate.requests == 64 + 70 + 61
    assert candidate.latency is not None
    assert candidate.latency.total == 70 + 61


def test_a_later_full_window_fills_in_a_sparse_one() -> None:
    tracker = WindowTracker()
    tracker.observe(scrape_of("free_edition.prom"), T0 + 60_000)
    tracker.observe(scrape_of("overlap_2.prom"), T1 + 60_000)
    candidate = tracker.totals(T0)["ads-model-4"]
    assert candidate.windows == 2
    assert candidate.missing == {"gpu_percent": 2, "gpu_mem_percent": 2, "inference_latency": 2}
    assert keys(tracker.last_revised) == [("ads-model-3", T0), ("ads-model-4", T0)]


# --------------------------------------------------------------------------------------------
# Samples without timestamps


@pytest.mark.parametrize(
    ("window_ms", "scrapes", "expected_starts"),
    [
        pytest.param(
            60_000,
            [(0, 10), (30_000, 10), (70_000, 10)],
            [0, 70_000],
            id="identical-within-a-window-is-a-repeat",
        ),
        pytest.param(
            60_000,
            [(0, 10), (30_000, 11), (45_000, 11)],
            [0, 30_000],
            id="changed-values-are-a-new-window",
        ),
        pytest.param(
            None,
            [(0, 10), (30_000, 10), (700_000, 10)],
            [0],
            id="no-window-length-means-identical-is-always-a-repeat",
        ),
        pytest.param(
            60_000,
            [(0, 10), (50_000, 10), (100_000, 10)],
            [0, 100_000],
            id="measured-from-the-first-sighting",
        ),
    ],
)
def test_untimed_snapshots_are_stamped_from_the_scrape_time(
    window_ms: int | None, scrapes: list[tuple[int, int]], expected_starts: list[int]
) -> None:
    tracker = WindowTracker(window_ms=window_ms)
    for offset, requests in scrapes:
        tracker.observe(parse_export_metrics(gauge_text("a", None, requests)), T0 + offset)
    # Stamped with the latest start the last closed window can have: two lengths back.
    shift = 2 * (window_ms or 0)
    assert [w.start_ms for w in tracker.windows()] == [T0 + s - shift for s in expected_starts]


def test_an_untimed_window_scraped_just_after_a_split_change_is_not_the_new_splits() -> None:
    # The split changed at T0; a scrape 5 s later sees "the last closed window", which ran
    # (at least partly) before the change: its stamp must fall before T0.
    tracker = WindowTracker(window_ms=60_000)
    (window,) = tracker.observe(parse_export_metrics(gauge_text("a", None, 10)), T0 + 5_000)
    assert window.start_ms is not None
    assert window.start_ms < T0
    # Two window lengths on, the last closed window began after the change.
    (later,) = tracker.observe(parse_export_metrics(gauge_text("a", None, 11)), T0 + 120_000)
    assert later.start_ms is not None
    assert later.start_ms >= T0


def test_untimed_fixture_yields_one_window_per_entity() -> None:
    tracker = WindowTracker()
    new = tracker.observe(scrape_of("no_timestamps.prom"), T0)
    assert keys(new) == [("ads-model-3", T0 - 120_000), ("ads-model-4", T0 - 120_000)]
    assert tracker.observe(scrape_of("no_timestamps.prom"), T0 + 20_000) == []


# --------------------------------------------------------------------------------------------
# True counters


def test_counters_become_deltas_across_a_replica_reset() -> None:
    tracker = WindowTracker()
    assert tracker.observe(scrape_of("counters_1.prom"), T0 + 5_000) == []  # baseline
    second = {w.entity: w for w in tracker.observe(scrape_of("counters_2.prom"), T1 + 5_000)}
    third = {w.entity: w for w in tracker.observe(scrape_of("counters_3.prom"), T2 + 5_000)}
    assert tracker.kind == "counter"
    # Windows start at the earlier scrape's time: the interval the delta covers.
    assert {w.start_ms for w in second.values()} == {T0}
    assert {w.start_ms for w in third.values()} == {T1}
    assert second["ads-model-3"].requests == 600 + 500
    assert second["ads-model-3"].errors_5xx == 1 + 0
    # r-1 restarted (4500 -> 120): its delta is the 120 since the restart, r-0 adds 600.
    assert third["ads-model-3"].requests == 600 + 120
    assert third["ads-model-3"].errors_5xx == 1 + 2
    assert third["ads-model-4"].latency == Histogram((50.0, 100.0, INF), (30.0, 20.0, 10.0), 4000.0)
    assert "errors_4xx" in third["ads-model-3"].missing
    assert "latency" in third["ads-model-3"].missing
    assert tracker.totals(T0)["ads-model-3"].requests == 1100 + 720


def test_a_changed_created_time_is_a_reset_even_when_the_value_grew() -> None:
    tracker = WindowTracker()
    tracker.observe(scrape_of("openmetrics_counters_1.om"), T0 + 5_000)
    windows = {w.entity: w for w in tracker.observe(scrape_of("openmetrics_counters_2.om"), T1)}
    assert windows["ads-model-3"].requests == 900.0
    # 400 -> 450 looks like +50, but the replica restarted: all 450 are new.
    assert windows["ads-model-4"].requests == 450.0
    assert windows["ads-model-4"].errors_5xx == 6.0


def counter_text(values: dict[str, int], stamp: int) -> str:
    lines = ["# TYPE request_count_total counter"]
    lines += [
        f'request_count_total{{served_entity_name="a",replica_id="{replica}"}} {value} {stamp}'
        for replica, value in values.items()
    ]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("series", "expected"),
    [
        pytest.param([{"r0": 100, "r1": 100}, {"r0": 150, "r1": 130}], [80.0], id="plain"),
        # A replica going away lowers the sum; that is not a reset of the others.
        pytest.param([{"r0": 100, "r1": 100}, {"r0": 150}], [50.0], id="replica-gone"),
        # A new replica's first value is its baseline.
        pytest.param(
            [{"r0": 100}, {"r0": 150, "r1": 900}, {"r0": 160, "r1": 905}],
            [50.0, 15.0],
            id="replica-new",
        ),
        pytest.param([{"r0": 100}, {"r0": 100}], [0.0], id="idle"),
        pytest.param([{"r0": 100}, {"r0": 30}], [30.0], id="reset"),
        # Gone and back: the increase over the gap lands in the window where it is seen.
        pytest.param(
            [{"r0": 100, "r1": 10}, {"r0": 110}, {"r0": 120, "r1": 40}],
            [10.0, 40.0],
            id="replica-back",
        ),
    ],
)
def test_counter_deltas_per_series(series: list[dict[str, int]], expected: list[float]) -> None:
    tracker = WindowTracker()
    got: list[float] = []
    for index, values in enumerate(series):
        stamp = T0 + index * 60_000
        got += [
            w.requests
            for w in tracker.observe(parse_export_metrics(counter_text(values, stamp)), stamp)
        ]
    assert got == expected


def test_the_same_counters_again_are_not_a_window() -> None:
    tracker = WindowTracker()
    tracker.observe(scrape_of("counters_1.prom"), T0)
    tracker.observe(scrape_of("counters_2.prom"), T1)
    assert tracker.observe(scrape_of("counters_2.prom"), T1 + 30_000) == []
    assert tracker.observe(scrape_of("counters_1.prom"), T1 + 40_000) == []  # older: ignored
    assert tracker.totals(T0)["ads-model-3"].windows == 1


def test_untimestamped_counters_use_the_scrape_time() -> None:
    text = "# TYPE request_count_total counter\nrequest_count_total 100\n"
    tracker = WindowTracker()
    tracker.observe(parse_export_metrics(text), T0)
    (window,) = tracker.observe(parse_export_metrics(text.replace("100", "175")), T0 + 15_000)
    assert (window.entity, window.start_ms, window.requests) == (None, T0, 75.0)


def test_switching_between_gauges_and_counters_restarts_the_baselines() -> None:
    tracker = WindowTracker()
    tracker.observe(scrape_of("counters_1.prom"), T0)
    tracker.observe(scrape_of("overlap_3.prom"), T2)
    assert tracker.kind == "window"
    # Back to counters: the first counter scrape is a baseline again, not a delta from T0.
    assert tracker.observe(scrape_of("counters_3.prom"), T2 + 60_000) == []


# --------------------------------------------------------------------------------------------
# Sums, retention


def test_sum_windows_skips_windows_without_a_start() -> None:
    windows = [
        EntityWindow("a", None, requests=1000.0),
        EntityWindow("a", T0, requests=10.0, errors_5xx=1.0),
        EntityWindow("a", T1, requests=20.0, missing=frozenset({"errors_5xx"})),
        EntityWindow("b", T0 - 1, requests=99.0),
        EntityWindow(None, T1, requests=30.0),
    ]
    totals = sum_windows(windows, T0)
    assert set(totals) == {"a", None}
    assert (totals["a"].windows, totals["a"].requests, totals["a"].errors_5xx) == (2, 30.0, 1.0)
    assert totals["a"].missing == {"errors_5xx": 1}


def test_retention_forgets_old_windows_and_ignores_late_ones() -> None:
    tracker = WindowTracker(retention_ms=120_000)
    tracker.observe(parse_export_metrics(gauge_text("a", T0, 1)), T0)
    tracker.observe(parse_export_metrics(gauge_text("a", T0 + 300_000, 2)), T0 + 300_000)
    assert [w.start_ms for w in tracker.windows()] == [T0 + 300_000]
    assert tracker.observe(parse_export_metrics(gauge_text("a", T0, 1)), T0 + 310_000) == []
    assert tracker.too_old == 1
    # Late but within retention: a window not seen before is still new.
    late = tracker.observe(parse_export_metrics(gauge_text("a", T0 + 200_000, 3)), T0 + 320_000)
    assert keys(late) == [("a", T0 + 200_000)]


def test_prune_drops_windows_before_a_time() -> None:
    tracker = WindowTracker()
    for name in ("overlap_1.prom", "overlap_2.prom", "overlap_3.prom"):
        tracker.observe(scrape_of(name), T2 + 60_000)
    tracker.prune(T1)
    assert {w.start_ms for w in tracker.windows()} == {T1, T2}


@pytest.mark.parametrize("kwargs", [{"window_ms": 0}, {"retention_ms": 0}, {"window_ms": -5}])
def test_tracker_rejects_nonsense_settings(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="positive"):
        WindowTracker(**kwargs)


# --------------------------------------------------------------------------------------------
# Persistence


def restored(tracker: WindowTracker) -> WindowTracker:
    text = json.dumps(tracker.to_state().model_dump(mode="json"), allow_nan=False)
    return WindowTracker.from_state(json.loads(text))


@pytest.mark.parametrize(
    ("before", "after"),
    [
        pytest.param(
            ["overlap_1.prom", "overlap_2.prom"], ["overlap_2.prom", "overlap_3.prom"], id="gauges"
        ),
        pytest.param(
            ["counters_1.prom", "counters_2.prom"],
            ["counters_2.prom", "counters_3.prom"],
            id="counters",
        ),
        pytest.param(["openmetrics_counters_1.om"], ["openmetrics_counters_2.om"], id="created"),
        pytest.param(["no_timestamps.prom"], ["no_timestamps.prom"], id="untimed"),
    ],
)
def test_a_restored_tracker_continues_exactly(before: list[str], after: list[str]) -> None:
    original = WindowTracker(window_ms=60_000, retention_ms=3_600_000)
    for index, name in enumerate(before):
        original.observe(scrape_of(name), T0 + 10_000 * index)
    copy = restored(original)
    assert copy.to_state() == original.to_state()
    assert copy.windows() == original.windows()
    for index, name in enumerate(after):
        at = T0 + 20_000 + 10_000 * index
        assert copy.observe(scrape_of(name), at) == original.observe(scrape_of(name), at)
    assert copy.to_state() == original.to_state()
    assert copy.totals(T0) == original.totals(T0)


def test_restored_tracker_does_not_double_count() -> None:
    tracker = WindowTracker()
    tracker.observe(scrape_of("overlap_2.prom"), T1 + 60_000)
    copy = restored(tracker)
    assert keys(copy.observe(scrape_of("overlap_3.prom"), T2 + 60_000)) == [
        ("ads-model-3", T2),
        ("ads-model-4", T2),
    ]
    assert copy.totals(T0)["ads-model-4"].requests == 64 + 70 + 61


@pytest.mark.parametrize(
    ("state", "message"),
    [
        pytest.param({"version": 99}, "version 99", id="future-version"),
        pytest.param({}, "version None", id="empty"),
        pytest.param({"version": 1, "window_ms": 60_000}, "malformed", id="truncated"),
        pytest.param(
            {**WindowTracker().to_state().model_dump(), "kind": "histogram"},
            "(?s)malformed.*kind",
            id="bad-kind",
        ),
        pytest.param(
            {**WindowTracker().to_state().model_dump(), "window_ms": -1}, "malformed",
            id="bad-setting",
        ),
    ],
)
def test_unreadable_state_is_refused(state: dict[str, object], message: str) -> None:
    with pytest.raises(MetricsStateError, match=message):
        WindowTracker.from_state(state)


def test_malformed_window_in_state_is_refused() -> None:
    tracker = WindowTracker()
    tracker.observe(scrape_of("entity_name.prom"), T0)
    state = tracker.to_state()
    state.windows[0]["latency"]["counts"] = "many"
    with pytest.raises(MetricsStateError, match="malformed"):
        WindowTracker.from_state(state)
