"""Real traffic in the sandbox over HTTP: realism settings through the admin API, and what
export-metrics then serves (hiccups, cold start after a split change, incidents, the daily
cycle, late, missing, duplicated and revised windows, counters that reset).

Statistical tolerances: counts within 4 standard deviations of their expectation (fixed seed).
"""

from __future__ import annotations

import math
import ssl
from typing import Any

import httpx

from rollout.clock import FakeClock
from rollout.metrics.model import EntityWindow
from rollout.metrics.parse import Scrape, parse_export_metrics
from rollout.metrics.windows import WindowTracker
from rollout.sandbox.server import SandboxServer

API = "/api/2.0/serving-endpoints"
TLS = ssl.create_default_context()
BASELINE = {"name": "ads-3", "entity_name": "main.ml.ads", "entity_version": "3"}
CANDIDATE = {"name": "ads-4", "entity_name": "main.ml.ads", "entity_version": "4"}
T0 = 1_800_000_000.0
W = 60.0
ROW = {"dataframe_records": [{"x": 1.0}]}


def split(base: int, cand: int) -> dict[str, Any]:
    return {"routes": [{"served_entity_name": "ads-3", "traffic_percentage": base},
                       {"served_entity_name": "ads-4", "traffic_percentage": cand}]}


def create(admin: httpx.Client, base: int = 50, cand: int = 50, **extra: Any) -> None:
    body = {"name": "ads", "served_entities": [BASELINE, CANDIDATE],
            "traffic_config": split(base, cand), **extra}
    response = admin.post("/endpoints", json=body)
    assert response.status_code == 201, response.text


def advance(admin: httpx.Client, seconds: float) -> None:
    assert admin.post("/clock/advance", json={"seconds": seconds}).status_code == 200


def window(admin: httpx.Client, k: int) -> dict[str, Any]:
    response = admin.get(f"/endpoints/ads/windows/{k}")
    assert response.status_code == 200, response.text
    entities: dict[str, Any] = response.json()["entities"]
    return entities


def windows_of(api: httpx.Client) -> dict[tuple[str | None, int], EntityWindow]:
    response = api.get(f"{API}/ads/metrics")
    assert response.status_code == 200, response.text
    scrape = parse_export_metrics(response.text)
    assert not scrape.warnings, scrape.warnings
    return {(w.entity, w.start_ms or 0): w for w in scrape.windows}


def k_of(t: float) -> int:
    return math.floor(t / W)


def test_realism_is_set_at_creation_and_read_patched_and_replaced(
    sandbox_admin: httpx.Client,
) -> None:
    create(sandbox_admin, realism={"common_mode_cv": 0.5, "incidents": {"rate": 0.1}},
           profiles={"ads-4": {"replicas": 20, "hiccup_rate": 0.1, "error_rate_cv": 0.3,
                               "latency_p999_ms": 900.0}})
    got = sandbox_admin.get("/endpoints/ads/realism").json()
    assert got["common_mode_cv"] == 0.5
    assert got["incidents"] == {"rate": 0.1, "min_windows": 2, "max_windows": 5,
                                "error_factor": 10.0}
    assert got["exposition"] == "window"
    assert sandbox_admin.get("/endpoints/ads").json()["realism"] == got
    profile = sandbox_admin.get("/endpoints/ads/profiles/ads-4").json()
    assert (profile["replicas"], profile["hiccup_rate"], profile["error_rate_cv"]) == (
        20, 0.1, 0.3)
    patched = sandbox_admin.patch("/endpoints/ads/realism",
                                  json={"incidents": {"error_factor": 5.0},
                                        "delivery": {"late_rate": 0.15}}).json()
    assert patched["incidents"]["rate"] == 0.1
    assert patched["incidents"]["error_factor"] == 5.0
    assert patched["delivery"]["late_rate"] == 0.15
    assert patched["common_mode_cv"] == 0.5
    replaced = sandbox_admin.put("/endpoints/ads/realism", json={"diurnal": {
        "traffic_ratio": 3.0}}).json()
    assert replaced["common_mode_cv"] == 0.0
    assert replaced["diurnal"]["traffic_ratio"] == 3.0


def test_bad_realism_settings_are_refused_naming_the_field(sandbox_admin: httpx.Client) -> None:
    create(sandbox_admin)
    for body, field in (
        ({"common_mode_cv": -1}, "common_mode_cv"),
        ({"incidents": {"min_windows": 4, "max_windows": 2}}, "max_windows"),
        ({"delivery": {"late_rate": 0.7, "missing_rate": 0.7}}, "sum to at most 1"),
        ({"exposition": "histogram"}, "exposition"),
        ({"noise": 1}, "noise"),
    ):
        response = sandbox_admin.put("/endpoints/ads/realism", json=body)
        assert response.status_code == 400, body
        assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert field in response.json()["message"], (body, response.json())
    bad_profile = sandbox_admin.put("/endpoints/ads/profiles/ads-4", json={"replicas": 0})
    assert bad_profile.status_code == 400
    assert "replicas" in bad_profile.json()["message"]
    assert sandbox_admin.get("/endpoints/nope/realism").status_code == 404


def test_the_same_seed_serves_the_same_real_traffic(sandbox: SandboxServer,
                                                    sandbox_admin: httpx.Client,
                                                    sandbox_api: httpx.Client) -> None:
    def run() -> list[str]:
        create(sandbox_admin, 90, 10, qps=200.0,
               realism={"common_mode_cv": 0.5, "incidents": {"rate": 0.3},
                        "delivery": {"late_rate": 0.2, "revise_rate": 0.2}},
               profiles={"ads-4": {"error_rate": 0.02, "replicas": 20, "hiccup_rate": 0.2,
                                   "error_rate_cv": 0.5}})
        texts = []
        for _ in range(6):
            advance(sandbox_admin, W)
            texts.append(sandbox_api.get(f"{API}/ads/metrics").text)
        return texts

    first = run()
    sandbox.workspace.reset(clock=FakeClock())
    assert run() == first


def test_a_split_change_that_raises_the_candidates_share_starts_it_cold(
    sandbox_admin: httpx.Client, sandbox_api: httpx.Client,
) -> None:
    create(sandbox_admin, 95, 5, qps=500.0,
           profiles={"ads-4": {"latency_p50_ms": 40.0, "latency_p99_ms": 120.0,
                               "cold_start_windows": 2, "cold_start_latency_factor": 10.0,
                               "cold_start_error_rate": 0.2}})
    advance(sandbox_admin, 3 * W)  # windows 0-2: cold, cold, warm

    def cold(k: int) -> bool:
        counts = window(sandbox_admin, k)["ads-4"]
        return counts["errors_5xx"] > 0.1 * counts["requests"]

    k0 = k_of(T0)
    assert [cold(k0), cold(k0 + 1), cold(k0 + 2)] == [True, True, False]
    # 5 % -> 25 %: new replicas, cold again for two windows from the window it took effect in.
    response = sandbox_api.put(f"{API}/ads/config", json={
        "served_entities": [BASELINE, CANDIDATE], "traffic_config": split(75, 25)})
    assert response.status_code == 200, response.text
    advance(sandbox_admin, 3 * W)
    assert [cold(k0 + 3), cold(k0 + 4), cold(k0 + 5)] == [True, True, False]
    # 25 % -> 10 %: fewer replicas, none new: warm.
    sandbox_api.put(f"{API}/ads/config", json={
        "served_entities": [BASELINE, CANDIDATE], "traffic_config": split(90, 10)})
    advance(sandbox_admin, 2 * W)
    assert [cold(k0 + 6), cold(k0 + 7)] == [False, False]
    # Real invocations in a cold window meet the cold replicas too (20 % extra 5xx).
    sandbox_api.put(f"{API}/ads/config", json={
        "served_entities": [BASELINE, CANDIDATE], "traffic_config": split(50, 50)})
    advance(sandbox_admin, 10.0)
    statuses = [sandbox_api.post("/serving-endpoints/ads/served-models/ads-4/invocations",
                                 json=ROW).status_code for _ in range(100)]
    assert abs(sum(s >= 500 for s in statuses) - 20) <= 4 * math.sqrt(100 * 0.2 * 0.8)


def test_hiccups_and_incidents_raise_the_rate_served(sandbox_admin: httpx.Client,
                                                     sandbox_api: httpx.Client) -> None:
    create(sandbox_admin, 50, 50, qps=100.0,
           realism={"incidents": {"rate": 1.0, "min_windows": 2, "max_windows": 2,
                                  "error_factor": 10.0}},
           profiles={"ads-3": {"error_rate": 0.01},
                     "ads-4": {"error_rate": 0.01, "replicas": 2, "hiccup_rate": 1.0,
                               "hiccup_error_rate": 0.5, "hiccup_fraction": 0.5}})
    advance(sandbox_admin, 20 * W)
    k0 = k_of(T0)
    totals = {"ads-3": [0, 0], "ads-4": [0, 0]}
    for k in range(k0, k0 + 20):
        for entity, counts in window(sandbox_admin, k).items():
            totals[entity][0] += counts["requests"]
            totals[entity][1] += counts["errors_5xx"]
    # Baseline: 1 % x 10 in every window. Candidate: half its requests hit a hiccup at 50 %,
    # the other half fail at the incident's 10 %.
    for entity, rate in (("ads-3", 0.1), ("ads-4", 0.5 * 0.5 + 0.5 * 0.1)):
        n, errors = totals[entity]
        assert abs(errors - n * rate) <= 4 * math.sqrt(n * rate * (1 - rate)), entity
    # Real invocations meet the same incident.
    statuses = [sandbox_api.post("/serving-endpoints/ads/served-models/ads-3/invocations",
                                 json=ROW).status_code for _ in range(300)]
    failed = sum(s >= 500 for s in statuses)
    assert abs(failed - 30) <= 4 * math.sqrt(300 * 0.1 * 0.9)


def test_the_daily_cycle_scales_the_load(sandbox_admin: httpx.Client) -> None:
    create(sandbox_admin, 50, 50, qps=100.0,
           realism={"diurnal": {"traffic_ratio": 3.0, "period_seconds": 20 * W,
                                "trough_at_seconds": T0}})
    advance(sandbox_admin, 11 * W)
    k0 = k_of(T0)
    trough = sum(c["requests"] for c in window(sandbox_admin, k0).values())
    peak = sum(c["requests"] for c in window(sandbox_admin, k0 + 10).values())
    assert abs(trough - 6000) <= 4 * math.sqrt(6000)
    assert abs(peak - 18000) <= 4 * math.sqrt(18000)


def _scrape_every_window(admin: httpx.Client, api: httpx.Client, windows: int
                         ) -> list[dict[tuple[str | None, int], EntityWindow]]:
    scrapes = []
    for _ in range(windows):
        advance(admin, W)
        scrapes.append(windows_of(api))
    return scrapes


def test_a_late_window_comes_with_the_next_scrape(sandbox_admin: httpx.Client,
                                                  sandbox_api: httpx.Client) -> None:
    create(sandbox_admin, qps=50.0, realism={"delivery": {"late_rate": 1.0}})
    scrapes = _scrape_every_window(sandbox_admin, sandbox_api, 6)
    k0 = k_of(T0)
    for i, shown in enumerate(scrapes):
        start = int((k0 + i) * W * 1000)
        present = {e for e, s in shown if s == start}
        # Every window one entity is late: the scrape that should show it shows the other.
        assert len(present) == 1, (i, sorted(shown))
        if i:
            late = {e for e, s in shown if s == start - 60_000}
            assert len(late) == 1
            # The late window is the one the previous scrape lacked, with its final numbers.
            (entity,) = late
            assert (entity, start - 60_000) not in scrapes[i - 1]
            final = window(sandbox_admin, k0 + i - 1)[entity]
            assert shown[(entity, start - 60_000)].requests == final["requests"]


def test_missing_duplicated_and_revised_windows(sandbox_admin: httpx.Client,
                                                sandbox_api: httpx.Client) -> None:
    create(sandbox_admin, qps=50.0, realism={"delivery": {"missing_rate": 1.0}})
    k0 = k_of(T0)
    for i, shown in enumerate(_scrape_every_window(sandbox_admin, sandbox_api, 3)):
        start = int((k0 + i) * W * 1000)
        assert len(shown) == 1
        assert all(s == start for _, s in shown)
    sandbox_admin.post("/reset")
    create(sandbox_admin, qps=50.0, realism={"delivery": {"duplicate_rate": 1.0}})
    k0 = k_of(sandbox_admin.get("/clock").json()["now"])
    tracker = WindowTracker(window_ms=60_000)
    for i, shown in enumerate(_scrape_every_window(sandbox_admin, sandbox_api, 4)):
        start = int((k0 + i) * W * 1000)
        assert {s for _, s in shown} == ({start} if i == 0 else {start, start - 60_000})
        assert len(shown) == (2 if i == 0 else 3)
        tracker.observe(_scrape(shown), start + 60_000)
    assert tracker.revisions == 0
    assert len(tracker.windows()) == 8
    sandbox_admin.post("/reset")
    create(sandbox_admin, qps=200.0, realism={"delivery": {"revise_rate": 1.0,
                                                           "partial_fraction": 0.5}})
    k0 = k_of(sandbox_admin.get("/clock").json()["now"])
    tracker = WindowTracker(window_ms=60_000)
    for i, shown in enumerate(_scrape_every_window(sandbox_admin, sandbox_api, 4)):
        start = int((k0 + i) * W * 1000)
        tracker.observe(_scrape(shown), start + 60_000)
        finals = window(sandbox_admin, k0 + i)
        partial = [e for e, s in shown if s == start and shown[(e, s)].requests
                   < finals[e or ""]["requests"]]
        assert len(partial) == 1
        (entity,) = partial
        assert 0.3 < shown[(entity, start)].requests / finals[entity]["requests"] < 0.7
    assert tracker.revisions == 3
    for w in tracker.windows():
        if w.start_ms is not None and w.start_ms < int((k0 + 3) * W * 1000):
            assert w.requests == window(sandbox_admin, k_of(w.start_ms / 1000))[
                w.entity or ""]["requests"]


def _scrape(shown: dict[tuple[str | None, int], EntityWindow]) -> Scrape:
    return Scrape(windows=list(shown.values()), kind="window", has_entity_labels=True)


def test_counters_that_reset_still_add_up_through_the_tracker(
    sandbox_admin: httpx.Client, sandbox_api: httpx.Client,
) -> None:
    create(sandbox_admin, qps=50.0, realism={"exposition": "counter",
                                             "delivery": {"counter_reset_rate": 0.3}})
    tracker = WindowTracker(window_ms=60_000)
    k0 = k_of(T0)
    expected = {"ads-3": 0, "ads-4": 0}
    resets_seen = False
    for i in range(12):
        advance(sandbox_admin, W)
        response = sandbox_api.get(f"{API}/ads/metrics")
        scrape = parse_export_metrics(response.text)
        assert scrape.kind == "counter"
        assert "request_count_created" in response.text
        tracker.observe(scrape, int((T0 + (i + 1) * W) * 1000))
        if i:
            for entity, counts in window(sandbox_admin, k0 + i).items():
                expected[entity] += counts["requests"]
        created = {s.created for s in scrape.cumulative if s.field == "requests"}
        resets_seen = resets_seen or any(c != T0 for c in created if c is not None)
    assert resets_seen
    totals = tracker.totals(0)
    assert {e: totals[e].requests for e in expected} == expected
