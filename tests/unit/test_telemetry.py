"""The controller's metrics: counters from decisions, gauges from the store at scrape time."""

from __future__ import annotations

import io
import json

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from rollout.clock import FakeClock
from rollout.daemon import state_reader
from rollout.engine.model import Arm, Phase, RolloutState
from rollout.engine.runner import new_rollout
from rollout.metrics.model import EntityWindow, Histogram
from rollout.plan import resolve_policy, validate_plan
from rollout.settings import LogSettings
from rollout.store.base import Store
from rollout.store.model import NewAlert, NewEvent
from rollout.telemetry import (
    ControllerMetrics,
    OwnershipCollector,
    RolloutStateCollector,
    configure_logging,
    expose,
)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def test_decision_counters() -> None:
    registry = CollectorRegistry()
    metrics = ControllerMetrics(registry)
    metrics.on_decision(
        "ep",
        1000.0,
        1600.0,
        [
            ("verdict", "progressing", {"verdict": {"outcome": "fail"}}),
            ("rolling_back", "rolling_back", {}),
        ],
        "analysis",
    )
    metrics.on_decision("ep", 1000.0, 1700.0, [("rolled_back", "rolled_back", {})], "analysis")
    metrics.on_decision("ep2", 0.0, 100.0, [("succeeded", "succeeded", {})], None)
    metrics.on_serving_response("update_config", 409, 0.05)
    metrics.on_serving_response("get_endpoint", None, 1.0)
    metrics.on_alert("webhook", "delivered")
    metrics.on_lag(2.5)
    got = samples(registry)
    assert got[("rollout_verdicts_total", (("endpoint", "ep"), ("outcome", "fail")))] == 1
    assert got[("rollout_rollbacks_total", (("endpoint", "ep"), ("reason", "analysis")))] == 1
    assert got[("rollout_promotions_total", (("endpoint", "ep2"),))] == 1
    assert got[("rollout_duration_seconds_count", (("outcome", "rolled_back"),))] == 1
    assert got[("rollout_duration_seconds_sum", (("outcome", "rolled_back"),))] == 700
    assert (
        got[("rollout_serving_requests_total", (("call", "update_config"), ("code", "409")))] == 1
    )
    assert (
        got[("rollout_serving_requests_total", (("call", "get_endpoint"), ("code", "error")))] == 1
    )
    assert got[("rollout_alerts_total", (("channel", "webhook"), ("outcome", "delivered")))] == 1
    assert got[("rollout_reconcile_lag_seconds", ())] == 2.5
    text = generate_latest(registry).decode()
    for name in ("rollout_verdicts_total", "rollout_rollbacks_total", "rollout_duration_seconds"):
        assert f"# HELP {name.removesuffix('_total')}" in text


def test_state_gauges_come_from_the_store(store: Store) -> None:
    clock = FakeClock()
    plan = validate_plan(
        {
            "endpoint": "ads",
            "candidate": {"entity_name": "main.ml.m", "entity_version": "4"},
            "strategy": "canary",
            "steps": [{"weight": 10, "bake": "1m"}, {"weight": 50, "bake": "1m"}],
        }
    )
    record, event = new_rollout(plan, resolve_policy(plan), clock.now(), "r1")
    store.create(record, event, [])
    hist = Histogram((50.0, 100.0, float("inf")), (90.0, 9.0, 1.0))
    window = EntityWindow("m-4", 0, requests=100, errors_5xx=4, latency=hist)
    state = RolloutState(
        phase=Phase.PROGRESSING,
        started_at=clock.now(),
        step=1,
        candidate_weight=50,
        baseline="m-3",
        candidate=Arm().plus([window]),
        control=Arm().plus([EntityWindow("m-3", 0, requests=100, errors_5xx=1, latency=hist)]),
    )
    store.commit(
        "r1",
        1,
        phase="progressing",
        state=json.loads(state.model_dump_json()),
        due_at=clock.now(),
        updated_at=clock.now(),
        events=[NewEvent("step_applied", "progressing", "progressing", "x", {}, 1.0)],
        alerts=[NewAlert("k1", "webhook", {"event": "step_advanced"})],
        consumed_commands=[],
    )
    registry = CollectorRegistry()
    registry.register(RolloutStateCollector(state_reader(store, clock), clock))
    got = samples(registry)
    info = [k for k in got if k[0] == "rollout_info"]
    assert len(info) == 1
    labels = dict(info[0][1])
    assert labels == {
        "rollout": "r1",
        "endpoint": "ads",
        "candidate": "m-4",
        "baseline": "m-3",
        "strategy": "canary",
        "phase": "progressing",
    }
    key = (("endpoint", "ads"), ("rollout", "r1"))
    assert got[("rollout_candidate_weight_percent", key)] == 50
    assert got[("rollout_step", key)] == 2  # step index 1, counted from 1
    assert got[("rollout_observed_error_rate", (("arm", "candidate"), *key))] == 0.04
    assert got[("rollout_observed_error_rate", (("arm", "baseline"), *key))] == 0.01
    assert got[("rollout_observed_latency_p99_ms", (("arm", "candidate"), *key))] == 100.0
    assert got[("rollout_alerts_pending", ())] == 1
    assert got[("rollout_started_timestamp_seconds", key)] == clock.now()
    deadline = resolve_policy(plan).deadline
    assert deadline is not None
    assert got[("rollout_deadline_timestamp_seconds", key)] == clock.now() + deadline
    # A finished rollout drops out of the per-rollout gauges after a day.
    clock.advance(2 * 86400)
    store.commit(
        "r1",
        2,
        phase="succeeded",
        state=json.loads(state.model_dump_json()),
        due_at=None,
        updated_at=clock.now() - 86401,
        events=[NewEvent("succeeded", "progressing", "succeeded", "x", {}, 1.0)],
        alerts=[],
        consumed_commands=[],
    )
    assert not [k for k in samples(registry) if k[0] == "rollout_info"]


def test_logs_are_json_lines_off_a_terminal() -> None:
    import structlog  # noqa: PLC0415

    stream = io.StringIO()
    configure_logging(LogSettings(level="info", format="auto"), stream=stream)
    try:
        structlog.get_logger("t").info("rollout.decision", rollout="r1", weight=10)
        structlog.get_logger("t").debug("hidden")
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 1
    assert lines[0]["event"] == "rollout.decision"
    assert lines[0]["weight"] == 10
    assert lines[0]["level"] == "info"


def test_every_active_rollout_has_its_series_beyond_one_page(store: Store) -> None:
    clock = FakeClock()
    plan = validate_plan(
        {
            "endpoint": "e",
            "candidate": {"entity_name": "main.ml.m", "entity_version": "4"},
            "strategy": "canary",
            "steps": [{"weight": 10, "bake": "1m"}],
        }
    )
    policy = resolve_policy(plan)
    count = 620  # more than one page of ACTIVE_PAGE (500)
    for index in range(count):
        endpoint_plan = plan.model_copy(update={"endpoint": f"e{index}"})
        record, event = new_rollout(endpoint_plan, policy, clock.now() + index, f"r{index}")
        store.create(record, event, [])
    # A finished rollout of the last day is shown too; the history of none is read.
    finished, event = new_rollout(plan.model_copy(update={"endpoint": "done"}), policy, 0.5, "f")
    store.create(finished, event, [])
    store.commit(
        "f",
        1,
        phase="succeeded",
        state={**finished.state, "candidate_weight": 100},
        due_at=None,
        updated_at=clock.now(),
        events=[NewEvent("succeeded", "pending", "succeeded", "x", {}, 1.0)],
        alerts=[],
        consumed_commands=[],
    )
    registry = CollectorRegistry()
    registry.register(RolloutStateCollector(state_reader(store, clock), clock))
    got = samples(registry)
    info = {dict(k[1])["rollout"] for k in got if k[0] == "rollout_info"}
    assert info == {f"r{index}" for index in range(count)} | {"f"}
    weights = {dict(k[1])["rollout"]: v for k, v in got.items() if k[0].endswith("weight_percent")}
    assert len(weights) == count + 1
    assert weights["f"] == 100
    assert weights["r619"] == 0
    started = [k for k in got if k[0] == "rollout_started_timestamp_seconds"]
    assert len(started) == count + 1


Parsed = tuple[
    dict[str, tuple[str, str]], dict[tuple[str, tuple[tuple[str, str], ...]], float]
]


def _parsed(text: str) -> Parsed:
    families: dict[str, tuple[str, str]] = {}
    values = {}
    for family in text_string_to_metric_families(text):
        families[family.name] = (family.type, family.documentation)
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return families, values


def test_scrape_text_rendered_directly_says_what_the_collectors_say(store: Store) -> None:
    clock = FakeClock()
    # Ids that need escaping in the exposition text.
    for index, rollout_id in enumerate(["r0", "r1", 'r"2\\']):
        plan = validate_plan(
            {
                "endpoint": f"ep-{index}",
                "candidate": {"entity_name": "main.ml.m", "entity_version": "4"},
                "strategy": "canary",
                "steps": [{"weight": 10, "bake": "1m"}],
            }
        )
        record, event = new_rollout(plan, resolve_policy(plan), clock.now(), rollout_id)
        store.create(record, event, [])
    hist = Histogram((50.0, 100.0, float("inf")), (90.0, 9.0, 1.0))
    state = RolloutState(
        phase=Phase.PROGRESSING,
        started_at=1_765_000_000.25,
        candidate_weight=10,
        baseline="m-3",
        candidate=Arm().plus([EntityWindow("m-4", 0, requests=300, errors_5xx=7, latency=hist)]),
        control=Arm().plus([EntityWindow("m-3", 0, requests=100, errors_5xx=1, latency=hist)]),
    )
    store.commit(
        "r1", 1, phase="progressing", state=json.loads(state.model_dump_json()),
        due_at=clock.now(), updated_at=clock.now(), events=[], alerts=[], consumed_commands=[],
    )  # fmt: skip
    collector = RolloutStateCollector(state_reader(store, clock), clock)
    owned = OwnershipCollector(lambda: ["r1", 'r"2\\'], lambda: 3)
    registry = CollectorRegistry()
    registry.register(collector)
    registry.register(owned)
    expected = _parsed(generate_latest(registry).decode())
    assert len([k for k in expected[1] if k[0] == "rollout_info"]) == 3
    bare = CollectorRegistry()
    for _ in range(2):  # the second scrape reuses the lines of unchanged rollouts
        text, content_type = expose(bare, [collector, owned], "")
        assert content_type.startswith("text/plain")
        assert _parsed(text.decode()) == expected
    store.commit(
        "r1", 2, phase="paused", state=json.loads(state.model_dump_json()),
        due_at=None, updated_at=clock.now(), events=[], alerts=[], consumed_commands=[],
    )  # fmt: skip
    text, _ = expose(bare, [collector, owned], "")
    info = {
        dict(labels)["rollout"]: dict(labels)["phase"]
        for name, labels in _parsed(text.decode())[1]
        if name == "rollout_info"
    }
    assert info == {"r0": "pending", "r1": "paused", 'r"2\\': "pending"}, "a new version anew"
    open_text, open_type = expose(bare, [collector, owned], "application/openmetrics-text")
    assert open_type.startswith("application/openmetrics-text")
    assert open_text.endswith(b"# EOF\n")
    assert open_text.count(b"# EOF") == 1
    open_families = list(openmetrics_families(open_text.decode()))
    assert {f.name for f in open_families} >= {"rollout_info", "rollout_owned"}
