"""Low traffic, said at submission: the endpoint's recent requests per second from one
export-metrics scrape, and whether the first step can reach min_requests in time. Pure,
table-driven, no sockets."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rollout.analysis.spec import CheckSpec, Policy
from rollout.engine.decide import DEFAULT_TIMING, Timing
from rollout.engine.traffic import RecentTraffic, low_traffic_warning, recent_traffic
from rollout.metrics.model import EntityWindow
from rollout.metrics.parse import Scrape, parse_export_metrics
from rollout.plan import AnyPlan, validate_plan
from rollout.policies import PolicyLibrary

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "export_metrics"
T0_MS = 1_788_718_020_000


# ---- requests per second from a scrape -----------------------------------------------------


@pytest.mark.parametrize(
    ("fixture", "requests", "seconds"),
    [
        ("entity_name.prom", 1264.0, 60.0),  # two entities in one window
        ("endpoint_totals.prom", 1264.0, 60.0),  # no entity label: the endpoint's totals
        ("replicas.prom", 1264.0, 60.0),  # one entity's replicas summed
        ("model_name.prom", 1264.0, 60.0),
        ("openmetrics_gauges.om", 1000.0, 60.0),
        ("zero_requests.prom", 0.0, 60.0),  # no traffic at all is an answer
        ("no_timestamps.prom", 1264.0, 60.0),  # untimed samples: the last window
    ],
)
def test_one_databricks_scrape_is_one_minute(
    fixture: str, requests: float, seconds: float
) -> None:
    traffic = recent_traffic(parse_export_metrics((FIXTURES / fixture).read_text()))
    assert traffic == RecentTraffic(requests, seconds)


@pytest.mark.parametrize(
    "fixture",
    [
        "counters_1.prom",  # cumulative counters: one scrape holds totals, not a rate
        "nan_values.prom",  # an entity's count is unusable: the sum would understate
    ],
)
def test_a_scrape_that_cannot_tell_the_rate_gives_none(fixture: str) -> None:
    assert recent_traffic(parse_export_metrics((FIXTURES / fixture).read_text())) is None


def window(minutes_ago: float, requests: float, entity: str | None = "m-1",
           **fields: Any) -> EntityWindow:
    return EntityWindow(entity, int(T0_MS - minutes_ago * 60_000), requests=requests, **fields)


@dataclass
class Windows:
    name: str
    scrape: Scrape
    expected: RecentTraffic | None
    window_seconds: float = 60.0


SCRAPES = [
    Windows("empty scrape", Scrape(), None),
    Windows(
        "several windows: their spacing is the window length",
        Scrape([window(0, 30), window(0.5, 30), window(1, 30)], has_entity_labels=True),
        RecentTraffic(90.0, 90.0),
    ),
    Windows(
        "windows older than ten minutes before the newest are left out",
        Scrape([window(0, 60), window(1, 60), window(30, 6000)], has_entity_labels=True),
        RecentTraffic(120.0, 120.0),
    ),
    Windows(
        "a missing window is not counted as time served",
        Scrape([window(0, 60), window(2, 60)], has_entity_labels=True),
        RecentTraffic(120.0, 240.0),
    ),
    Windows(
        "entity windows beside endpoint totals: the totals are not counted twice",
        Scrape([window(0, 40, "a"), window(0, 20, "b"), window(0, 60, None)],
               has_entity_labels=True),
        RecentTraffic(60.0, 60.0),
    ),
    Windows(
        "one window of a shorter configured length",
        Scrape([window(0, 10)], has_entity_labels=True),
        RecentTraffic(10.0, 5.0),
        window_seconds=5.0,
    ),
    Windows(
        "a window without its request count cannot tell",
        Scrape([window(0, 0, missing=frozenset({"requests"}))], has_entity_labels=True),
        None,
    ),
    Windows(
        "cumulative counters cannot tell",
        Scrape([window(0, 5000)], kind="counter", has_entity_labels=True),
        None,
    ),
]


@pytest.mark.parametrize("case", SCRAPES, ids=[c.name for c in SCRAPES])
def test_recent_traffic(case: Windows) -> None:
    assert recent_traffic(case.scrape, window_seconds=case.window_seconds) == case.expected


def test_requests_per_second() -> None:
    assert RecentTraffic(24.0, 60.0).per_second == pytest.approx(0.4)
    assert RecentTraffic(0.0, 0.0).per_second == 0.0


# ---- the warning ---------------------------------------------------------------------------


def plan_of(**fields: Any) -> AnyPlan:
    data: dict[str, Any] = {
        "endpoint": "ads-endpoint",
        "candidate": {"entity_name": "main.ml.ads_model", "entity_version": "4"},
        "strategy": "canary",
        "steps": [{"weight": 5, "bake": "10m"}, {"weight": 50, "bake": "10m"}],
    }
    data.update(fields)
    return validate_plan({k: v for k, v in data.items() if v is not None})


def policy(min_requests: int = 50, **fields: Any) -> Policy:
    return PolicyLibrary().get("default").model_copy(
        update={"min_requests": min_requests, **fields}
    )


ABSOLUTE_ONLY = {"checks": (CheckSpec.model_validate({"metric": "error_rate", "max": 0.02}),)}


@dataclass
class Expected:
    name: str
    per_second: float
    warning: str | None
    plan: AnyPlan
    policy: Policy
    timing: Timing = DEFAULT_TIMING


WARNINGS = [
    Expected(
        "a quiet endpoint: the first step would not reach min_requests",
        0.4,
        "low traffic: ads-endpoint served 0.4 req/s over the last 10m; at 5 % for 30m (bake "
        "10m x step_deadline_factor 3) the candidate would see about 36 requests, below "
        "min_requests 50: expect the rollout to pause for a person",
        plan_of(),
        policy(),
    ),
    Expected(
        "just enough: 0.6 req/s x 5 % x 30m = 54 requests",
        0.6,
        None,
        plan_of(),
        policy(),
    ),
    Expected(
        "a longer step deadline gives the step enough time",
        0.4,
        None,
        plan_of(),
        policy(),
        Timing(step_deadline_factor=5),
    ),
    Expected(
        "on_no_data: rollback says the rollout will roll back",
        0.4,
        "low traffic: ads-endpoint served 0.4 req/s over the last 10m; at 5 % for 30m (bake "
        "10m x step_deadline_factor 3) the candidate would see about 36 requests, below "
        "min_requests 50: expect the rollout to roll back for want of data (on_no_data: "
        "rollback)",
        plan_of(),
        policy(on_no_data="rollback"),
    ),
    Expected(
        "no traffic at all",
        0.0,
        "low traffic: ads-endpoint served 0 req/s over the last 10m; at 5 % for 30m (bake "
        "10m x step_deadline_factor 3) the candidate would see about 0 requests; the baseline "
        "at 95 % would see about 0 requests, below min_requests 50: expect the rollout to "
        "pause for a person",
        plan_of(),
        policy(),
    ),
    Expected(
        "a busy endpoint",
        250.0,
        None,
        plan_of(),
        policy(min_requests=200),
    ),
    Expected(
        "an A/B split runs its duration",
        0.02,
        "low traffic: ads-endpoint served 0.02 req/s over the last 10m; at 20 % for 1h (the "
        "A/B duration) the candidate would see about 14 requests, below min_requests 50: "
        "expect no winner: the A/B report cannot be conclusive and keeps the baseline",
        plan_of(steps=None, strategy="ab", split=20, duration="1h",
                objective="latency_p99_ms"),
        policy(),
    ),
    Expected(
        "blue/green: a short warm-up starves the control",
        0.1,
        "low traffic: ads-endpoint served 0.1 req/s over the last 10m; the 5m warm-up would "
        "give the baseline's control about 30 requests, below min_requests 50: expect the "
        "rollout to pause for a person",
        plan_of(steps=None, strategy="blue_green", bake="10m", warmup="5m"),
        policy(),
    ),
    Expected(
        "blue/green without a check against the baseline needs no control",
        0.1,
        None,
        plan_of(steps=None, strategy="blue_green", bake="10m", warmup="5m"),
        policy(**ABSOLUTE_ONLY),
    ),
    Expected(
        "a check against the baseline only: the baseline's share counts too",
        1.0,
        "low traffic: ads-endpoint served 1.0 req/s over the last 10m; the baseline at 5 % "
        "would see about 90 requests, below min_requests 100: expect the rollout to pause "
        "for a person",
        plan_of(steps=[{"weight": 95, "bake": "10m"}]),
        policy(min_requests=100),
    ),
]


@pytest.mark.parametrize("case", WARNINGS, ids=[c.name for c in WARNINGS])
def test_low_traffic_warning(case: Expected) -> None:
    traffic = RecentTraffic(case.per_second * 600, 600.0)
    warning = low_traffic_warning("ads-endpoint", case.plan, case.policy, case.timing, traffic)
    assert warning == case.warning
