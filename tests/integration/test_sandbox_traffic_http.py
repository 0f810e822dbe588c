"""Invocations and export-metrics over HTTP: routing by split, profiles, windows.

Statistical tolerances: counts within 4 standard deviations of their expectation (fixed seed).
"""

from __future__ import annotations

import math
import ssl
from collections import Counter
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rollout.sandbox.server import SandboxServer

API = "/api/2.0/serving-endpoints"
# The sandbox speaks plain HTTP; handing httpx a context skips loading the CA bundle per client.
TLS = ssl.create_default_context()
BASELINE = {"name": "ads-3", "entity_name": "main.ml.ads", "entity_version": "3"}
CANDIDATE = {"name": "ads-4", "entity_name": "main.ml.ads", "entity_version": "4"}
START_MS = 1_800_000_000_000
ROW = {"dataframe_records": [{"x": 1.0}]}


def split(base: int, cand: int) -> dict[str, Any]:
    return {"routes": [{"served_entity_name": "ads-3", "traffic_percentage": base},
                       {"served_entity_name": "ads-4", "traffic_percentage": cand}]}


def create_canary(admin: httpx.Client, base: int, cand: int, **extra: Any) -> None:
    body = {"name": "ads", "served_entities": [BASELINE, CANDIDATE],
            "traffic_config": split(base, cand), **extra}
    response = admin.post("/endpoints", json=body)
    assert response.status_code == 201, response.text


def advance(admin: httpx.Client, seconds: float) -> None:
    assert admin.post("/clock/advance", json={"seconds": seconds}).status_code == 200


def scrape(api: httpx.Client) -> dict[tuple[str, str, str], float]:
    """export-metrics as {(sample name, entity, le): value}, checking every timestamp."""
    response = api.get(f"{API}/ads/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    out: dict[tuple[str, str, str], float] = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            assert s.labels["endpoint_name"] == "ads"
            out[(s.name, s.labels["served_entity_name"], s.labels.get("le", ""))] = s.value
            out[("timestamp", "", "")] = float(s.timestamp or 0.0)
    return out


def test_invocations_follow_the_split(sandbox_admin: httpx.Client,
                                      sandbox_api: httpx.Client) -> None:
    create_canary(sandbox_admin, 80, 20)
    n = 400
    seen: Counter[str] = Counter()
    for _ in range(n):
        response = sandbox_api.post("/serving-endpoints/ads/invocations", json=ROW)
        assert response.status_code == 200
        seen[response.headers["served-model-name"]] += 1
        assert len(response.json()["predictions"]) == 1
    assert set(seen) == {"ads-3", "ads-4"}
    sd = math.sqrt(n * 0.2 * 0.8)
    assert abs(seen["ads-4"] - 0.2 * n) <= 4 * sd, seen
    assert sandbox_admin.get("/stats").json()["invocations"] == n
    assert sandbox_admin.get("/endpoints/ads").json()["invocations"] == dict(seen)


def test_direct_invocation_reaches_an_entity_at_zero_percent(sandbox_admin: httpx.Client,
                                                             sandbox_api: httpx.Client) -> None:
    create_canary(sandbox_admin, 100, 0)
    body = {"dataframe_split": {"columns": ["x"], "data": [[1], [2], [3]]}}
    response = sandbox_api.post("/serving-endpoints/ads/served-models/ads-4/invocations",
                                json=body)
    assert response.status_code == 200
    assert response.headers["served-model-name"] == "ads-4"
    predictions = response.json()["predictions"]
    assert len(predictions) == 3
    # Same input, same entity, same answer; another entity answers differently.
    again = sandbox_api.post("/serving-endpoints/ads/served-models/ads-4/invocations",
                             json=body)
    assert again.json()["predictions"] == predictions
    other = sandbox_api.post("/serving-endpoints/ads/served-models/ads-3/invocations",
                             json=body)
    assert other.json()["predictions"] != predictions


def test_entity_profile_decides_errors(sandbox_admin: httpx.Client,
                                       sandbox_api: httpx.Client) -> None:
    create_canary(sandbox_admin, 50, 50, profiles={"ads-4": {"error_rate": 1.0},
                                                   "ads-3": {"client_error_rate": 1.0}})
    failing = sandbox_api.post("/serving-endpoints/ads/served-models/ads-4/invocations",
                               json=ROW)
    assert failing.status_code == 500
    assert failing.json()["error_code"] == "INTERNAL_ERROR"
    assert failing.headers["served-model-name"] == "ads-4"
    rejecting = sandbox_api.post("/serving-endpoints/ads/served-models/ads-3/invocations",
                                 json=ROW)
    assert rejecting.status_code == 400
    assert rejecting.json()["error_code"] == "BAD_REQUEST"


@pytest.mark.parametrize(
    "body",
    [{}, {"dataframe_records": "x"}, {"dataframe_records": []}, {"dataframe_split": [1]},
     {"instances": [1], "inputs": [1]}, {"messages": []}],
    ids=["nothing", "records-not-list", "no-rows", "split-not-object", "two-inputs",
         "no-messages"],
)
def test_unusable_invocation_input_is_400(sandbox_admin: httpx.Client,
                                          sandbox_api: httpx.Client, body: Any) -> None:
    create_canary(sandbox_admin, 50, 50)
    response = sandbox_api.post("/serving-endpoints/ads/invocations", json=body)
    assert response.status_code == 400
    assert response.json()["error_code"] == "BAD_REQUEST"
    assert "Invalid input" in response.json()["message"]


def test_real_invocations_land_in_their_window(sandbox_admin: httpx.Client,
                                               sandbox_api: httpx.Client) -> None:
    create_canary(sandbox_admin, 100, 0, profiles={"ads-4": {"error_rate": 1.0}})
    for _ in range(30):
        sandbox_api.post("/serving-endpoints/ads/invocations", json=ROW)
    for _ in range(5):
        sandbox_api.post("/serving-endpoints/ads/served-models/ads-4/invocations", json=ROW)
    # Still inside the window: export-metrics shows the previous (empty) window.
    assert "request_count_total{" not in sandbox_api.get(f"{API}/ads/metrics").text
    advance(sandbox_admin, 60.0)
    metrics = scrape(sandbox_api)
    assert metrics[("timestamp", "", "")] == START_MS / 1000
    assert metrics[("request_count_total", "ads-3", "")] == 30
    assert metrics[("request_5xx_count_total", "ads-3", "")] == 0
    assert metrics[("request_count_total", "ads-4", "")] == 5
    assert metrics[("request_5xx_count_total", "ads-4", "")] == 5
    assert metrics[("request_latency_ms_count", "ads-3", "")] == 30
    assert metrics[("request_latency_ms_bucket", "ads-3", "+Inf")] == 30
    # The next window is empty again (qps 0): windows are per-window gauges, not counters.
    advance(sandbox_admin, 60.0)
    metrics = scrape(sandbox_api)
    assert metrics[("timestamp", "", "")] == (START_MS + 60_000) / 1000
    assert metrics[("request_count_total", "ads-3", "")] == 0


def test_simulated_load_matches_the_profiles(sandbox_admin: httpx.Client,
                                             sandbox_api: httpx.Client) -> None:
    """One 60 s window at 500 qps, 70/30, candidate failing 10 %: within 4 sd."""
    body = {
        "name": "ads",
        "served_entities": [BASELINE | {"workload_size": "Large"},
                            CANDIDATE | {"workload_size": "Large"}],
        "traffic_config": split(70, 30),
        "qps": 500.0,
        "profiles": {"ads-4": {"error_rate": 0.1, "latency_p50_ms": 300.0,
                               "latency_p99_ms": 900.0}},
    }
    assert sandbox_admin.post("/endpoints", json=body).status_code == 201
    advance(sandbox_admin, 60.0)
    m = scrape(sandbox_api)
    total = m[("request_count_total", "ads-3", "")] + m[("request_count_total", "ads-4", "")]
    assert abs(total - 30_000) <= 4 * math.sqrt(30_000)
    n4 = m[("request_count_total", "ads-4", "")]
    assert abs(n4 - 0.3 * total) <= 4 * math.sqrt(total * 0.21)
    assert abs(m[("request_5xx_count_total", "ads-4", "")] - 0.1 * n4) <= 4 * math.sqrt(
        n4 * 0.09)
    assert m[("request_5xx_count_total", "ads-3", "")] == 0
    # p50 300 ms lies in (250, 500]: more than half of the candidate is at most 500 ms, less
    # than half at most 250 ms.
    assert m[("request_latency_ms_bucket", "ads-4", "500.0")] > n4 / 2
    assert m[("request_latency_ms_bucket", "ads-4", "250.0")] < n4 / 2
    # The slower candidate keeps more of its replicas busy (Large: 64 concurrent requests).
    assert m[("cpu_usage_percentage", "ads-4", "")] > m[("cpu_usage_percentage", "ads-3", "")]
    assert m[("provisioned_concurrent_requests_total", "ads-3", "")] == 64.0
    # Reading the same window again gives the same numbers.
    assert scrape(sandbox_api) == m


def test_regression_injected_at_runtime_shows_in_later_windows(
    sandbox_admin: httpx.Client, sandbox_api: httpx.Client
) -> None:
    create_canary(sandbox_admin, 50, 50, qps=200.0)
    advance(sandbox_admin, 60.0)
    healthy = scrape(sandbox_api)
    assert healthy[("request_5xx_count_total", "ads-4", "")] == 0
    r = sandbox_admin.patch("/endpoints/ads/profiles/ads-4", json={"error_rate": 0.5})
    assert r.status_code == 200
    assert r.json()["latency_p50_ms"] == 40.0  # PATCH keeps the other fields
    r = sandbox_admin.put("/endpoints/ads/load", json={"qps": 400.0})
    assert r.json() == {"qps": 400.0}
    advance(sandbox_admin, 60.0)
    sick = scrape(sandbox_api)
    n = sick[("request_count_total", "ads-4", "")]
    assert abs(n - 12_000) <= 4 * math.sqrt(12_000)
    assert abs(sick[("request_5xx_count_total", "ads-4", "")] - n / 2) <= 4 * math.sqrt(n / 4)
    window = sandbox_admin.get("/endpoints/ads/windows/last").json()
    assert window["start_ms"] == START_MS + 60_000
    assert window["entities"]["ads-4"]["requests"] == n
    assert sandbox_admin.get(f"/endpoints/ads/windows/{30_000_002}").status_code == 400


def test_metrics_of_a_fresh_endpoint_are_empty_not_an_error(sandbox_admin: httpx.Client,
                                                            sandbox_api: httpx.Client) -> None:
    create_canary(sandbox_admin, 50, 50, qps=100.0)
    response = sandbox_api.get(f"{API}/ads/metrics")
    assert response.status_code == 200
    assert response.text == ""


def test_concurrent_clients_are_all_counted(sandbox: SandboxServer,
                                            sandbox_admin: httpx.Client) -> None:
    import concurrent.futures  # noqa: PLC0415 -- only this test needs threads

    create_canary(sandbox_admin, 50, 50)

    def hammer(_: int) -> int:
        with httpx.Client(base_url=sandbox.url, timeout=10.0, verify=TLS,
                          headers={"Authorization": f"Bearer {sandbox.token}"}) as client:
            return sum(
                client.post("/serving-endpoints/ads/invocations", json=ROW).status_code == 200
                for _ in range(40)
            )

    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        ok = sum(pool.map(hammer, range(6)))
    assert ok == 240
    advance(sandbox_admin, 60.0)
    window = sandbox_admin.get("/endpoints/ads/windows/last").json()
    assert sum(e["requests"] for e in window["entities"].values()) == 240
