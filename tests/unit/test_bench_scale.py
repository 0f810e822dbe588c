"""The scale benchmark's pure parts (bench/scale.py): parsing what it reads and summarizing."""

from __future__ import annotations

from typing import Any

import pytest

from bench.scale import (
    QUICK,
    Cell,
    Config,
    cells,
    cpu_ticks,
    lateness,
    markdown,
    metric_series,
    metric_sum,
    percentile,
    rss_bytes,
    spread,
    summarize,
)

SCRAPE = """\
# HELP rollout_serving_requests_total HTTP requests to the Databricks serving API.
# TYPE rollout_serving_requests_total counter
rollout_serving_requests_total{call="export_metrics",code="200"} 41.0
rollout_serving_requests_total{call="export_metrics",code="503"} 2.0
rollout_serving_requests_total{call="get_endpoint",code="200"} 43.0
rollout_serving_requests_created{call="export_metrics",code="200"} 1.7e9
rollout_info{rollout="a",endpoint="e \\"quoted\\"",candidate="c",baseline="",strategy="canary",phase="progressing"} 1.0
rollout_info{rollout="b",endpoint="f",candidate="c",baseline="",strategy="canary",phase="paused"} 1.0
rollout_reconcile_lag_seconds 2.5
"""  # noqa: E501


def test_metric_sum_adds_the_matching_series_only() -> None:
    assert metric_sum(SCRAPE, "rollout_serving_requests_total", call="export_metrics") == 43.0
    assert metric_sum(SCRAPE, "rollout_serving_requests_total") == 86.0
    assert metric_sum(SCRAPE, "rollout_serving_requests_total", code="503") == 2.0
    assert metric_sum(SCRAPE, "rollout_reconcile_lag_seconds") == 2.5
    assert metric_sum(SCRAPE, "rollout_info", endpoint='e \\"quoted\\"') == 1.0
    assert metric_sum(SCRAPE, "absent") == 0.0
    assert metric_series(SCRAPE, "rollout_info") == 2
    assert metric_series(SCRAPE, "rollout_serving_requests_total") == 3


def test_proc_files_are_read_past_odd_command_names() -> None:
    # The command name may hold spaces and parentheses; utime and stime are fields 14 and 15.
    stat = "4242 (python (x) y) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0 20 0 3 0 99 1000 200"
    assert cpu_ticks(stat) == 175
    assert rss_bytes("Name:\tpython\nVmRSS:\t  12345 kB\nThreads:\t3\n") == 12345 * 1024
    assert rss_bytes("Name:\tzombie\n") == 0


def test_percentiles_interpolate_and_say_none_when_empty() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == pytest.approx(50.5)
    assert percentile(values, 0.99) == pytest.approx(99.01)
    assert percentile([3.0], 0.99) == 3.0
    assert percentile([], 0.5) is None
    assert spread([]) == {"p50": None, "p99": None, "max": None, "count": 0.0}
    assert spread([1.0, 5.0])["max"] == 5.0


def test_lateness_counts_each_look_once_against_its_due_time() -> None:
    snapshots = [
        {"a": (3, 100.0, 130.0), "b": (7, 100.0, None), "c": (1, 90.0, 120.0)},
        # a looked at 131.5 (1.5 s late); b has no due time; c not looked at yet.
        {"a": (4, 131.5, 161.5), "b": (8, 101.0, None), "c": (1, 90.0, 120.0)},
        # c looked at 119 (poked early: not late); a unchanged; d is new.
        {"a": (4, 131.5, 161.5), "c": (2, 119.0, 149.0), "d": (1, 118.0, 118.0)},
        # a looked twice between samples: one look is seen, against the first due time.
        {"a": (6, 200.0, 230.0), "c": (2, 119.0, 149.0), "d": (2, 121.0, 151.0)},
    ]
    assert sorted(lateness(snapshots)) == [0.0, 1.5, 3.0, 38.5]
    assert lateness(snapshots[:1]) == []


def raw_cell(**changes: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "cell": {"backend": "sqlite", "size": 100, "age": "aged", "replicas": 1},
        "looks": 200.0,
        "cpu_ms": 3000.0,
        "cpu_window_seconds": 60.0,
        "lateness": [0.5, 1.0, 4.0],
        "controller_lag_max": 2.0,
        "metrics_ms": [10.0, 12.0],
        "list_ms": [20.0],
        "detail_ms": [],
        "metrics_rollouts": 100,
        "list_rollouts": 100,
        "store_bytes_start": 100 * 500_000,
        "store_bytes_end": 100 * 500_000 + 100 * 2048,
        "state_bytes": 480_000,
        "events_per_rollout": 360,
        "rss_max": 200 * 2**20,
    }
    return {**raw, **changes}


def test_summarize_divides_by_looks_rollouts_and_hours() -> None:
    row = summarize(raw_cell())
    assert row["cpu_ms_per_look"] == 15.0
    assert row["looks_per_second"] == pytest.approx(200 / 60)
    assert row["cpu_cores"] == pytest.approx(0.05)
    assert row["lateness_s"]["p50"] == 1.0
    assert row["lateness_s"]["max"] == 4.0
    assert row["store_bytes_per_rollout"] == 500_000
    # 2 KB per rollout over one minute: 120 KB per rollout-hour.
    assert row["store_bytes_per_rollout_hour"] == pytest.approx(2048 * 60)
    assert row["rss_mb"] == 200
    assert row["detail_ms"]["p50"] is None
    assert summarize(raw_cell(looks=0.0))["cpu_ms_per_look"] is None


def test_markdown_has_a_row_per_cell_with_its_numbers() -> None:
    report = {
        "config": {**Config().__dict__},
        "started": "2026-01-01 00:00 UTC",
        "machine": "2 CPUs",
        "cells": [summarize(raw_cell()), summarize(raw_cell(detail_ms=[3.0, 5.0]))],
        "notes": ["A note."],
    }
    text = markdown(report)
    rows = [line for line in text.splitlines() if line.startswith("| sqlite")]
    assert len(rows) == 2
    assert "| 15 |" in rows[0]
    assert "1.0 / 3.9 / 4.0" in rows[0]  # p50 / p99 (interpolated) / max
    assert "| - / - |" in rows[0]  # no detail requests
    assert "A note." in text


def test_cells_run_three_replicas_on_postgresql_only_smallest_first() -> None:
    grid = cells(Config())
    assert len(grid) == 3 * (2 + 4)
    assert all(cell.backend == "postgresql" for cell in grid if cell.replicas == 3)
    assert [cell.size for cell in grid] == sorted(cell.size for cell in grid)
    assert Cell("sqlite", 10, "fresh", 1) in grid
    assert {cell.size for cell in cells(QUICK)} == {10, 100}
    assert QUICK.look_seconds < Config().look_seconds
