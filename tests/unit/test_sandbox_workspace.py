"""The sandbox workspace without HTTP: lazy lifecycle, windows, determinism, thread safety."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rollout.clock import FakeClock, SystemClock
from rollout.sandbox.models import ApiError, ConfigSpec, EntityProfile, parse_config
from rollout.sandbox.workspace import Workspace

BASE = {"name": "m-1", "entity_name": "main.ml.m", "entity_version": "1"}
CAND = {"name": "m-2", "entity_name": "main.ml.m", "entity_version": "2"}


def two(base: int, cand: int) -> dict[str, Any]:
    return {
        "served_entities": [BASE, CAND],
        "traffic_config": {"routes": [
            {"served_entity_name": "m-1", "traffic_percentage": base},
            {"served_entity_name": "m-2", "traffic_percentage": cand},
        ]},
    }


def make(seed: int = 0, qps: float = 100.0) -> tuple[Workspace, FakeClock]:
    clock = FakeClock()
    ws = Workspace(clock, seed=seed, window_seconds=60.0, update_seconds=5.0)
    ws.create_endpoint("ep", parse_config({"served_entities": [BASE]}), ready=True, qps=qps)
    return ws, clock


def test_lifecycle_is_derived_from_the_clock_on_read() -> None:
    ws, clock = make()
    put = ws.update_config("ep", parse_config(two(90, 10)))
    assert put["state"] == {"ready": "READY", "config_update": "IN_PROGRESS"}
    assert put["pending_config"]["config_version"] == 2
    clock.advance(4.999)
    assert ws.get_endpoint("ep", "CAN_MANAGE")["state"]["config_update"] == "IN_PROGRESS"
    # Nobody reads for an hour: the update still settled at t+5 s, not at the read.
    clock.advance(3600.0)
    got = ws.get_endpoint("ep", "CAN_MANAGE")
    assert got["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    assert "pending_config" not in got
    assert got["last_updated_timestamp"] == round((1_800_000_000.0 + 5.0) * 1000)


def test_windows_do_not_depend_on_reading_order_and_repeat_with_the_seed() -> None:
    def run(read_every_window: bool) -> str:
        ws, clock = make(seed=7)
        clock.advance(30.0)
        ws.update_config("ep", parse_config(two(80, 20)))
        texts = []
        for _ in range(5):
            clock.advance(60.0)
            if read_every_window:
                texts.append(ws.export_metrics("ep"))
        return ws.export_metrics("ep") if not read_every_window else texts[-1]

    assert run(True) == run(False)
    ws_a, clock_a = make(seed=1)
    ws_b, clock_b = make(seed=2)
    clock_a.advance(60.0)
    clock_b.advance(60.0)
    assert ws_a.export_metrics("ep") != ws_b.export_metrics("ep")


def test_a_window_straddling_a_split_change_shows_both_splits() -> None:
    ws, clock = make(qps=1000.0)
    clock.advance(25.0)
    ws.update_config("ep", parse_config(two(50, 50)))  # live from t=30 s: half the window
    clock.advance(35.0)
    _, straddling = ws.window("ep")
    clock.advance(60.0)
    _, full = ws.window("ep")
    # Candidate: 50 % of 1000 qps for 30 s in the straddling window, for 60 s in the next.
    assert straddling["m-2"].requests == pytest.approx(15_000, abs=4 * math.sqrt(15_000))
    assert full["m-2"].requests == pytest.approx(30_000, abs=4 * math.sqrt(30_000))
    assert straddling["m-1"].requests == pytest.approx(45_000, abs=4 * math.sqrt(45_000))


def test_profile_changes_do_not_rewrite_closed_windows() -> None:
    ws, clock = make(qps=500.0)
    clock.advance(60.0)
    before = ws.export_metrics("ep")
    ws.set_profile("ep", "m-1", EntityProfile(error_rate=0.5))
    assert ws.export_metrics("ep") == before
    clock.advance(60.0)
    _, counts = ws.window("ep")
    n = counts["m-1"].requests
    assert counts["m-1"].errors_5xx == pytest.approx(n / 2, abs=4 * math.sqrt(n / 4))


def test_cold_start_counts_windows_since_the_entity_appeared() -> None:
    ws, clock = make(qps=200.0)
    ws.set_profile("ep", "m-2", EntityProfile(cold_start_windows=2,
                                               cold_start_latency_factor=20.0))
    clock.advance(60.0)
    ws.update_config("ep", parse_config(two(50, 50)))
    clock.advance(5.0)  # m-2 appears at t=65 s, in window 1
    p50 = []
    for _ in range(4):
        clock.advance(60.0)
        _, counts = ws.window("ep")
        p50.append(counts["m-2"].latency_histogram().quantile(0.5))
    # Windows 1 and 2 are cold (p50 = 40 ms x 20 = 800 ms), windows 3 and 4 are warm.
    cold, warm = p50[:2], p50[2:]
    assert all(v is not None and v > 500.0 for v in cold), p50
    assert all(v is not None and v < 50.0 for v in warm), p50


def test_clock_advance_needs_a_fake_clock() -> None:
    ws = Workspace(SystemClock())
    with pytest.raises(ApiError) as err:
        ws.advance_clock(1.0)
    assert err.value.status == 409


def test_concurrent_invocations_are_all_counted() -> None:
    ws, clock = make(qps=0.0)
    ws.update_config("ep", parse_config(two(50, 50)))
    clock.advance(5.0)

    def hammer() -> None:
        for _ in range(500):
            ws.invoke("ep", None)

    threads = [threading.Thread(target=hammer) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    clock.advance(60.0)
    _, counts = ws.window("ep")
    assert sum(c.requests for c in counts.values()) == 4000
    assert ws.stats.invocations == 4000


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["name", "entity_name", "entity_version", "served_entities",
                         "served_models", "traffic_config", "routes", "traffic_percentage",
                         "served_entity_name", "served_model_name", "workload_size",
                         "model_name", "model_version", "scale_to_zero_enabled",
                         "external_model", "min_provisioned_concurrency"]),
        inner, max_size=5),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(body=st.dictionaries(st.sampled_from(["served_entities", "served_models",
                                             "traffic_config", "auto_capture_config"]),
                            JSON_VALUES, max_size=3))
def test_config_validation_only_ever_raises_a_400(body: dict[str, Any]) -> None:
    """Whatever JSON arrives, validation accepts it or says 400; nothing else escapes."""
    outcome: ConfigSpec | ApiError
    try:
        outcome = parse_config(body)
    except ApiError as err:
        outcome = err
    if isinstance(outcome, ApiError):
        assert outcome.status == 400
        assert outcome.message
    else:
        assert sum(p for _, p in outcome.routes) == 100
        assert {e.name for e in outcome.entities} >= {n for n, _ in outcome.routes}
