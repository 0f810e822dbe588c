"""Checks on own metrics against a real Prometheus (the binary, on loopback): readings per
arm, outages, web JSON sources, and validation at submission (API 422/503) and by
``rollout validate``.

Prometheus scrapes itself with ``served_entity_name="ads-3"`` on its series: the baseline
of the sandbox endpoint ``ads`` has a series (``up{served_entity_name="ads-3"}``), its
candidate none yet.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from pydantic import SecretStr
from typer.testing import CliRunner

from rollout.analysis.spec import Policy
from rollout.api.app import create_api
from rollout.cli import app as cli
from rollout.metrics.prometheus import OwnMetrics
from rollout.policies import PolicyLibrary
from rollout.sandbox.server import SandboxServer
from rollout.serving.auth import PatAuth
from rollout.serving.client import ServingClient
from rollout.serving.retry import RetryPolicy
from rollout.settings import ApiSettings, PrometheusSettings
from rollout.store.base import Store
from tests.prometheus import closed_port_url, running_prometheus

pytestmark = pytest.mark.timeout(90)

UP = "up{served_entity_name={{ candidate }}}"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("prometheus")
    with running_prometheus(tmp, [], self_labels={"served_entity_name": "ads-3",
                                                  "endpoint": "ads"}) as url:
        yield url


def policy(*checks: dict[str, Any]) -> Policy:
    return Policy.model_validate({"checks": list(checks), "failure_threshold": 2})


async def test_readings_run_the_query_once_per_arm(prometheus: str) -> None:
    own = OwnMetrics(PrometheusSettings(url=prometheus))
    pol = policy(
        {"query": UP, "compare": "baseline", "max_ratio": 2},
        {"name": "web", "web": {
            "url": prometheus + "/api/v1/query?query=up%7Bserved_entity_name%3D%22"
                   "{{ candidate }}%22%7D",
            "selector": "$.data.result[0].value[1]"}, "min": 1},
    )
    try:
        promql, web = await own.readings(
            pol, endpoint="ads", candidate="ads-4", baseline="ads-3", window="30s"
        )
    finally:
        await own.aclose()
    assert promql.candidate.query == 'up{served_entity_name="ads-4"}'
    assert promql.baseline.query == 'up{served_entity_name="ads-3"}'
    assert (promql.candidate.value, promql.baseline.value) == (None, 1.0)
    assert promql.outage is None
    assert web.baseline.value == 1.0
    assert web.baseline.query.endswith("%22ads-3%22%7D")
    # The candidate has no series: the web answer has no result[0].
    assert web.candidate.value is None
    assert "has no item [0]" in web.candidate.note


async def test_several_series_are_no_number(prometheus: str) -> None:
    own = OwnMetrics(PrometheusSettings(url=prometheus))
    pol = policy({"query": 'vector(1) or label_replace(vector(2), "a", "b", "", "")',
                  "max": 5})
    try:
        (one,) = await own.readings(
            pol, endpoint="ads", candidate="ads-4", baseline="ads-3", window="30s"
        )
    finally:
        await own.aclose()
    assert one.candidate.value is None
    assert one.outage is None
    assert "returns 2 series, not one" in one.candidate.note


async def test_an_unreachable_prometheus_is_an_outage_not_a_number() -> None:
    own = OwnMetrics(PrometheusSettings(url=closed_port_url(), timeout=2))
    try:
        (one,) = await own.readings(
            policy({"query": UP, "max": 1}),
            endpoint="ads", candidate="ads-4", baseline="ads-3", window="30s",
        )
    finally:
        await own.aclose()
    assert one.outage is not None
    assert one.outage.startswith("prometheus unreachable: ConnectError")
    assert one.candidate.value is None


# ---- at submission ------------------------------------------------------------------------


def _plan(query: str, **fields: Any) -> dict[str, Any]:
    return {
        "endpoint": "ads",
        "candidate": {"entity_name": "main.ml.ads_model", "entity_version": "4"},
        "strategy": "canary",
        "steps": [{"weight": 10, "bake": "5m"}],
        "policy": {"checks": [{"metric": "error_rate", "max": "5%"},
                              {"query": query, **(fields or {"max": 1})}]},
    }


@pytest.fixture
async def submit(
    sandbox: SandboxServer, store: Store, sandbox_admin: httpx.Client
) -> AsyncIterator[Any]:
    response = sandbox_admin.post("/endpoints", json={
        "name": "ads",
        "served_entities": [{"name": "ads-3", "entity_name": "main.ml.ads_model",
                             "entity_version": "3", "workload_size": "Small"}],
        "qps": 10,
    })
    assert response.status_code == 201, response.text
    opened: list[Any] = []

    async def post(plan: dict[str, Any], url: str | None) -> httpx.Response:
        client = ServingClient(
            sandbox.url, PatAuth(sandbox.token), clock=sandbox.clock,
            retry=RetryPolicy(initial_backoff=0.1, max_backoff=1, budget_seconds=5),
        )
        # As the daemon wires it: a client even without a Prometheus (for web checks).
        own = OwnMetrics(PrometheusSettings(url=url, timeout=2))
        opened.extend([client, own])
        api = create_api(
            store=store, client=client, clock=sandbox.clock, library=PolicyLibrary(),
            registry=CollectorRegistry(), settings=ApiSettings(tokens=SecretStr("t:operator")),
            own_metrics=own,
        )
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(api), base_url="http://127.0.0.1",
            headers={"Authorization": "Bearer t"},
        ) as http:
            return await http.post("/api/v1/rollouts", json=plan)

    yield post
    for handle in opened:
        await handle.aclose()


@pytest.mark.parametrize(
    ("query", "fields", "message"),
    [
        ("sum(rate(up{served_entity_name={{ candidate }}}[{{ window }}])",
         {"max": 1}, "prometheus refused the query: bad_data"),
        ("up{served_entity_name={{ candidate }}, job=\"nope\"}", {"max": 1},
         ('returns no series for the baseline \'ads-3\' (up{served_entity_name="ads-3", '
          'job="nope"})')),
        ("vector(1) or label_replace(vector(2), \"a\", \"b\", \"\", \"\")",
         {"max": 1}, "returns 2 series, not one"),
    ],
    ids=["parse error", "no series for the baseline", "several series"],
)
async def test_submission_refuses_a_query_that_cannot_run(
    submit: Any, prometheus: str, query: str, fields: dict[str, Any], message: str
) -> None:
    response = await submit(_plan(query, **fields), prometheus)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_plan"
    (detail,) = error["details"]
    assert detail["field"] == "policy.checks[1].query"
    assert message in detail["message"]


@pytest.mark.parametrize(
    ("selector", "field", "message"),
    [
        ("$.data.result[0].value[1]", None, None),
        ("$.data.result[0].values", "policy.checks[1].web.selector",
         "$.data.result[0] has no member 'values'"),
    ],
)
async def test_submission_asks_a_web_check_for_the_baselines_number(
    submit: Any, prometheus: str, selector: str, field: str | None, message: str | None
) -> None:
    plan = _plan(UP)
    plan["policy"]["checks"][1] = {
        "web": {"url": prometheus + "/api/v1/query?query=up%7Bserved_entity_name%3D%22"
                "{{ candidate }}%22%7D", "selector": selector},
        "min": 1,
    }
    response = await submit(plan, None)
    if field is None:
        assert response.status_code == 201, response.text
        return
    assert response.status_code == 422, response.text
    (detail,) = response.json()["error"]["details"]
    assert detail["field"] == field
    assert message is not None
    assert message in detail["message"]


async def test_submission_takes_a_query_with_a_series_for_the_baseline(
    submit: Any, prometheus: str
) -> None:
    plan = _plan(UP, compare="baseline", max_increase=0.5)
    response = await submit(plan, prometheus)
    assert response.status_code == 201, response.text


async def test_submission_without_prometheus_refuses_a_promql_check(submit: Any) -> None:
    response = await submit(_plan(UP), None)
    assert response.status_code == 422, response.text
    (detail,) = response.json()["error"]["details"]
    assert detail["field"] == "policy.checks[1].query"
    assert "set ROLLOUT_PROMETHEUS_URL" in detail["message"]


async def test_submission_with_prometheus_down_is_503(submit: Any) -> None:
    response = await submit(_plan(UP), closed_port_url())
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "metrics_source_unavailable"


# ---- rollout validate ---------------------------------------------------------------------


def _plan_file(tmp_path: Path, query: str) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(
        "endpoint: ads\nbaseline: ads-3\nstrategy: canary\n"
        "candidate: {entity_name: main.ml.ads_model, entity_version: 4}\n"
        "steps: [{weight: 10, bake: 5m}]\n"
        f"policy:\n  checks:\n    - query: '{query}'\n      max: 1\n"
    )
    return path


@pytest.mark.parametrize(
    "case",
    [
        ("", UP, 1, "policy.checks[0].query: no Prometheus is configured"),
        ("prometheus", "sum(up", 1, "policy.checks[0].query: prometheus refused the query"),
        ("prometheus", UP, 0, "valid canary plan"),
        ("closed", UP, 2, "prometheus unreachable"),
    ],
    ids=["not configured", "parse error", "valid", "unreachable"],
)
def test_validate_asks_prometheus(
    tmp_path: Path,
    prometheus: str,
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[str, str, int, str],
) -> None:
    env, query, code, output = case
    monkeypatch.delenv("ROLLOUT_PROMETHEUS_URL", raising=False)
    if env:
        url = prometheus if env == "prometheus" else closed_port_url()
        monkeypatch.setenv("ROLLOUT_PROMETHEUS_URL", url)
        monkeypatch.setenv("ROLLOUT_PROMETHEUS_TIMEOUT", "2")
    result = CliRunner().invoke(cli, ["validate", str(_plan_file(tmp_path, query))])
    assert result.exit_code == code, result.output
    assert output in result.output
