"""The monitoring stack of docker-compose.yml, run as plain processes on loopback: the sandbox
(``--demo``, with the token Prometheus' configuration uses), ``rollout serve`` alerting a real
Alertmanager (configured by deploy/alertmanager/alertmanager.yml as shipped), and a real
Prometheus whose configuration is deploy/prometheus/prometheus.yml with loopback targets and
1 s intervals, loading deploy/prometheus/rules.yml.

A regressed canary is rolled back and a healthy one promoted, with 2 s metric windows. Then:
Prometheus recorded the candidate's weight going up and back to 0 and the rollback counter;
its rollback alert fires, labelled with the endpoint and the rollout, and every rule evaluates
without error; Alertmanager holds the controller's rollback alert and holds Prometheus' back
(inhibited by it); every dashboard query runs on Prometheus and finds data; and every metric
name the dashboard and the rules read is one the live controller (or the endpoint's
export-metrics) exports.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from deploy_files import (
    ALERTMANAGER_CONFIG,
    COMPOSE,
    PROMETHEUS_DIR,
    RULES,
    Query,
    alert_rules,
    dashboard_queries,
    exported_sample_names,
    grafana_to_promql,
    load_yaml,
    metric_names,
    recorded_names,
    rule_queries,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(150)]

OPERATOR_TOKEN = "e2e-operator-token"
BAD_ENDPOINT = "demo-endpoint"  # the endpoint --demo creates, which Prometheus' config scrapes
GOOD_ENDPOINT = "good-endpoint"
POLICY = {
    "name": "e2e",
    "min_requests": 50,
    # The suite must not fail one run in a hundred because a healthy candidate drew badly:
    # a tenth of the default budget, still far more than the regressed arms need.
    "false_rollback_rate": "0.1%",
    "checks": [{"metric": "error_rate", "compare": "baseline", "max_ratio": 2,
                "max_increase": "1%"}],
    # A deadline far away: the deadline gauge and its panel have data, and nothing passes it.
    "deadline": "10m",
    "on_deadline": "rollback",
}
TERMINAL = {"succeeded", "rolled_back", "aborted", "failed"}
# Prometheus' own series, not exported by any scraped program.
PROMETHEUS_GENERATED = {"up"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def binary(*names: str) -> str:
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    raise AssertionError(f"none of {names} is installed (.ci/run installs them)")


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=10)


@dataclass
class Stack:
    tmp: Path
    processes: list[Process] = field(default_factory=list)
    alertmanager: str = ""
    sandbox: str = ""
    controller: str = ""
    prometheus: str = ""
    sandbox_token: str = ""
    bad: str = ""
    good: str = ""
    submitted_at: float = 0.0
    controller_metrics: str = ""
    endpoint_metrics: str = ""

    def start(self, name: str, command: list[str], env: dict[str, str] | None = None) -> Process:
        log = self.tmp / f"{name}.log"
        popen = subprocess.Popen(
            command, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
            cwd=self.tmp,
        )
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for p in self.processes)

    def prom(self, path: str, **params: Any) -> Any:
        response = httpx.get(f"{self.prometheus}{path}", params=params, timeout=10)
        body = response.json()
        assert body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.prom("/api/v1/query", query=expr)["result"]
        return result

    def query_range(self, expr: str, step: float = 1.0) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.prom(
            "/api/v1/query_range", query=expr, start=self.submitted_at - 5,
            end=time.time(), step=step,
        )["result"]
        return result

    def am_alerts(self, alertname: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.alertmanager}/api/v2/alerts",
                             params={"filter": f'alertname="{alertname}"'}, timeout=10)
        response.raise_for_status()
        alerts: list[dict[str, Any]] = response.json()
        return alerts


def wait_for(what: str, check: Callable[[], Any], stack: Stack, timeout: float) -> Any:
    """``check()``'s first truthy answer; fails with the processes' logs after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except (httpx.HTTPError, OSError, AssertionError, KeyError, ValueError):
            result = None
        if result:
            return result
        for process in stack.processes:
            assert process.popen.poll() is None, f"{process.name} exited:\n{stack.logs()}"
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}\n{stack.logs()}")


def printed_url(process: Process) -> str | None:
    match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", process.output())
    return match.group(1) if match else None


def compose_sandbox_token() -> str:
    """The token docker-compose.yml gives the sandbox, which Prometheus' config presents."""
    command = [str(c) for c in load_yaml(COMPOSE)["services"]["sandbox"]["command"]]
    return command[command.index("--token") + 1]


def prometheus_config(stack: Stack) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with loopback targets, 1 s intervals and the rules
    file by absolute path; every other setting (paths, bearer token, labels) as shipped."""
    config = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    targets = {
        "controller:8080": stack.controller.removeprefix("http://"),
        "sandbox:8765": stack.sandbox.removeprefix("http://"),
        "alertmanager:9093": stack.alertmanager.removeprefix("http://"),
    }
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    groups = [*config["alerting"]["alertmanagers"], *config["scrape_configs"]]
    for job in config["scrape_configs"]:
        if "scrape_interval" in job:
            job["scrape_interval"] = "1s"
    for group in groups:
        for static in group["static_configs"]:
            static["targets"] = [targets.pop(target) for target in static["targets"]]
    assert not targets, f"not in deploy/prometheus/prometheus.yml any more: {targets}"
    return config


def plan(endpoint: str, candidate: str, entity: str) -> dict[str, Any]:
    return {
        "endpoint": endpoint,
        "candidate": {"name": candidate, "entity_name": entity, "entity_version": "2",
                      "workload_size": "Small"},
        "strategy": "canary",
        "steps": [{"weight": 20, "bake": "6s"}, {"weight": 50, "bake": "6s"}],
        "policy": POLICY,
    }


def run_scenario(stack: Stack) -> None:
    # Alertmanager, configured exactly as docker-compose.yml configures it.
    am_port = free_port()
    stack.start("alertmanager", [
        binary("prometheus-alertmanager", "alertmanager"),
        f"--config.file={ALERTMANAGER_CONFIG}",
        f"--storage.path={stack.tmp / 'alertmanager'}",
        f"--web.listen-address=127.0.0.1:{am_port}",
        "--cluster.listen-address=",
    ])
    stack.alertmanager = f"http://127.0.0.1:{am_port}"

    # The sandbox as the compose service runs it, with 2 s windows.
    stack.sandbox_token = compose_sandbox_token()
    sandbox = stack.start("sandbox", [
        sys.executable, "-m", "rollout.cli", "sandbox", "--port", "0", "--demo",
        "--window-seconds", "2", "--update-seconds", "1.5", "--seed", "7",
        "--token", stack.sandbox_token,
    ])
    stack.sandbox = wait_for("the sandbox", lambda: printed_url(sandbox), stack, 20)
    with httpx.Client(base_url=f"{stack.sandbox}/_sandbox/v1", timeout=10) as admin:
        # More load on demo-endpoint, and a candidate that fails 30 % of its requests.
        assert admin.put(f"/endpoints/{BAD_ENDPOINT}/load", json={"qps": 400}).status_code == 200
        response = admin.put(f"/endpoints/{BAD_ENDPOINT}/profiles/demo-model-2",
                             json={"error_rate": 0.3})
        assert response.status_code == 200, response.text
        response = admin.post("/endpoints", json={
            "name": GOOD_ENDPOINT,
            "served_entities": [{"name": "model-1", "entity_name": "main.ml.model",
                                 "entity_version": "1", "workload_size": "Small",
                                 "scale_to_zero_enabled": False}],
            "profiles": {"model-1": {"error_rate": 0.002}, "model-2": {"error_rate": 0.002}},
            "qps": 400,
        })
        assert response.status_code == 201, response.text

    wait_for("Alertmanager", lambda: httpx.get(f"{stack.alertmanager}/-/ready").is_success,
             stack, 20)

    # The controller, alerting that Alertmanager, with API tokens as in docker-compose.yml.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABRICKS_", "ROLLOUT_"))}
    env.update({
        "DATABRICKS_HOST": stack.sandbox,
        "DATABRICKS_TOKEN": stack.sandbox_token,
        "ROLLOUT_API_TOKENS": f"{OPERATOR_TOKEN}:operator",
        "ROLLOUT_STORE_URL": f"sqlite:///{stack.tmp / 'rollout.db'}",
        "ROLLOUT_API_PORT": "0",
        "ROLLOUT_ENGINE_LOOK_INTERVAL": "0.5",
        "ROLLOUT_ENGINE_UPDATE_POLL": "0.25",
        "ROLLOUT_ENGINE_SCAN_INTERVAL": "0.2",
        "ROLLOUT_SERVING_UPDATE_POLL_INTERVAL": "0.25",
        # On a loaded machine a 6 s step may see few fresh windows; the healthy canary should
        # wait for its verdict rather than pause at 3 bakes without one.
        "ROLLOUT_ENGINE_STEP_DEADLINE_FACTOR": "10",
        "ROLLOUT_ALERTS_CHANNELS": json.dumps(
            [{"type": "alertmanager", "url": stack.alertmanager}]
        ),
        "ROLLOUT_ALERTS_POLL_INTERVAL": "0.2",
        # The receiver listens on loopback: alerts go there only when allowed.
        "ROLLOUT_ALERTS_ALLOWED_HOSTS": "127.0.0.1",
        "ROLLOUT_LOG_FORMAT": "json",
    })
    controller = stack.start(
        "controller", [sys.executable, "-m", "rollout.cli", "serve"], env=env
    )
    stack.controller = wait_for("the controller", lambda: printed_url(controller), stack, 30)

    # Prometheus, from deploy/prometheus/prometheus.yml.
    prom_port = free_port()
    config = stack.tmp / "prometheus.yml"
    config.write_text(yaml.safe_dump(prometheus_config(stack)))
    stack.start("prometheus", [
        binary("prometheus"),
        f"--config.file={config}",
        f"--storage.tsdb.path={stack.tmp / 'prometheus'}",
        f"--web.listen-address=127.0.0.1:{prom_port}",
    ])
    stack.prometheus = f"http://127.0.0.1:{prom_port}"
    # Both targets scraped before anything happens, as in a stack that has been running.
    wait_for("both targets up", lambda: {
        r["metric"]["job"] for r in stack.query("up == 1")
    } == {"rollout-controller", "serving-endpoint"}, stack, 30)

    # One regressed and one healthy canary, through the API with the operator token.
    stack.submitted_at = time.time()
    auth = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    ids = {}
    for endpoint, candidate, entity in (
        (BAD_ENDPOINT, "demo-model-2", "main.default.demo_model"),
        (GOOD_ENDPOINT, "model-2", "main.ml.model"),
    ):
        response = httpx.post(f"{stack.controller}/api/v1/rollouts",
                              json=plan(endpoint, candidate, entity), headers=auth, timeout=30)
        assert response.status_code == 201, response.text
        ids[endpoint] = response.json()["id"]
    stack.bad, stack.good = ids[BAD_ENDPOINT], ids[GOOD_ENDPOINT]

    def phases() -> dict[str, str] | None:
        found = {
            rid: httpx.get(f"{stack.controller}/api/v1/rollouts/{rid}", headers=auth,
                           timeout=10).json()["phase"]
            for rid in (stack.bad, stack.good)
        }
        return found if set(found.values()) <= TERMINAL else None

    ended = wait_for("both rollouts to end", phases, stack, 75)
    assert ended == {stack.bad: "rolled_back", stack.good: "succeeded"}, stack.logs()

    # Prometheus and Alertmanager catch up within a few evaluations.
    wait_for("the rollback alert to fire in Prometheus", lambda: firing_rollback(stack),
             stack, 20)
    wait_for("the controller's rollback alert in Alertmanager",
             lambda: stack.am_alerts("RolloutRolledBack"), stack, 20)
    wait_for("Prometheus' rollback alert in Alertmanager",
             lambda: stack.am_alerts("RolloutRollbackDetected"), stack, 20)
    wait_for("the promotion recorded", lambda: stack.query(
        f'endpoint:rollout_promotions:increase1h{{endpoint="{GOOD_ENDPOINT}"}} > 0'), stack, 20)
    # A range query's last step falls up to one step before its end: two more evaluations
    # put the final state inside every range the tests query.
    time.sleep(2.5)
    stack.controller_metrics = httpx.get(f"{stack.controller}/metrics", timeout=10).text
    stack.endpoint_metrics = httpx.get(
        f"{stack.sandbox}/api/2.0/serving-endpoints/{BAD_ENDPOINT}/metrics",
        headers={"Authorization": f"Bearer {stack.sandbox_token}"}, timeout=10,
    ).text


def firing_rollback(stack: Stack) -> list[dict[str, Any]]:
    return [
        alert for alert in stack.prom("/api/v1/alerts")["alerts"]
        if alert["labels"]["alertname"] == "RolloutRollbackDetected"
        and alert["state"] == "firing"
    ]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    state = Stack(tmp_path_factory.mktemp("monitoring"))
    try:
        run_scenario(state)
        yield state
    finally:
        # The controller first (it flushes alerts to Alertmanager), then the others.
        for process in sorted(state.processes, key=lambda p: p.name != "controller"):
            process.stop()


# ---- what Prometheus recorded ----------------------------------------------------------------


def test_candidate_weight_rises_then_returns_to_zero(stack: Stack) -> None:
    (series,) = stack.query_range(f'rollout_candidate_weight_percent{{rollout="{stack.bad}"}}')
    assert series["metric"]["endpoint"] == BAD_ENDPOINT
    weights = [float(value) for _, value in series["values"]]
    peak = weights.index(max(weights))
    assert max(weights) == 20, weights
    assert 0 in weights[:peak], f"deployed at 0 % before the first step: {weights}"
    assert weights[-1] == 0, f"rolled back to 0 %: {weights}"
    (held,) = stack.query(
        f'max_over_time(rollout_candidate_weight_percent{{rollout="{stack.bad}"}}[5m])'
    )
    assert float(held["value"][1]) == 20

    # The healthy candidate went up through its steps to 100 %.
    (good,) = stack.query_range(f'rollout_candidate_weight_percent{{rollout="{stack.good}"}}')
    good_weights = [float(value) for _, value in good["values"]]
    assert {20, 50, 100} <= set(good_weights), good_weights
    assert good_weights[-1] == 100


def test_rollback_and_promotion_counters(stack: Stack) -> None:
    (rollbacks,) = stack.query(f'rollout_rollbacks_total{{endpoint="{BAD_ENDPOINT}"}}')
    assert rollbacks["metric"]["reason"] == "analysis"
    assert float(rollbacks["value"][1]) == 1
    assert not stack.query(f'rollout_rollbacks_total{{endpoint="{GOOD_ENDPOINT}"}}')
    # Absent before the rollback, present after: the counter appeared during the run.
    before = stack.prom("/api/v1/query", query="rollout_rollbacks_total",
                        time=stack.submitted_at)["result"]
    assert before == []
    (per_hour,) = stack.query("endpoint_reason:rollout_rollbacks:increase1h")
    assert per_hour["metric"] == {"__name__": "endpoint_reason:rollout_rollbacks:increase1h",
                                  "endpoint": BAD_ENDPOINT, "reason": "analysis"}
    assert float(per_hour["value"][1]) == 1
    (promotions,) = stack.query("endpoint:rollout_promotions:increase1h")
    assert promotions["metric"]["endpoint"] == GOOD_ENDPOINT
    assert float(promotions["value"][1]) == 1


def test_rule_alert_fires_with_endpoint_and_rollout(stack: Stack) -> None:
    (alert,) = firing_rollback(stack)
    assert alert["labels"] == {"alertname": "RolloutRollbackDetected", "severity": "critical",
                               "endpoint": BAD_ENDPOINT, "rollout": stack.bad}
    assert "cause: analysis" in alert["annotations"]["description"]
    firing = {a["labels"]["alertname"] for a in stack.prom("/api/v1/alerts")["alerts"]
              if a["state"] == "firing"}
    assert firing == {"RolloutRollbackDetected"}, "nothing else is wrong in this run"


def test_every_rule_evaluates_without_error(stack: Stack) -> None:
    rules = [rule for group in stack.prom("/api/v1/rules")["groups"] for rule in group["rules"]]
    names = {rule["name"] for rule in rules}
    assert names == recorded_names() | {rule["alert"] for rule in alert_rules()}
    broken = {rule["name"]: rule.get("lastError") for rule in rules if rule["health"] != "ok"}
    assert not broken, broken


# ---- what Alertmanager holds -----------------------------------------------------------------


def test_controller_rollback_alert_in_alertmanager(stack: Stack) -> None:
    alerts = stack.am_alerts("RolloutRolledBack")
    (alert,) = [a for a in alerts if a["labels"]["rollout"] == stack.bad]
    assert alert["labels"] == {"alertname": "RolloutRolledBack", "endpoint": BAD_ENDPOINT,
                               "rollout": stack.bad, "severity": "critical"}
    assert alert["status"]["state"] == "active"
    assert alert["annotations"]["phase"] == "rolled_back"
    assert "error_rate" in alert["annotations"]["description"], "the verdict's numbers"
    assert not [a for a in alerts if a["labels"]["rollout"] == stack.good]
    succeeded = stack.am_alerts("RolloutSucceeded")
    assert [a["labels"]["rollout"] for a in succeeded] == [stack.good]


def test_prometheus_alert_is_held_back_by_the_controllers(stack: Stack) -> None:
    """Both alerts reach Alertmanager; the inhibit rule keeps people from being told twice."""
    (alert,) = stack.am_alerts("RolloutRollbackDetected")
    assert alert["labels"]["rollout"] == stack.bad
    assert alert["status"]["state"] == "suppressed"
    (controllers,) = [a for a in stack.am_alerts("RolloutRolledBack")
                      if a["labels"]["rollout"] == stack.bad]
    assert alert["status"]["inhibitedBy"] == [controllers["fingerprint"]]


# ---- the dashboard on this data --------------------------------------------------------------


def dashboard_values(stack: Stack) -> dict[str, str]:
    return {"rollout": stack.bad, "endpoint": ".+", "datasource": "prometheus"}


def has_data(result: list[dict[str, Any]]) -> bool:
    return any(
        not math.isnan(float(value))
        for series in result for _, value in series.get("values", [series.get("value")])
    )


def test_every_dashboard_query_finds_data(stack: Stack) -> None:
    """Every panel, annotation and variable of the dashboard, as Grafana would send it for
    the rolled-back rollout over the run, runs on Prometheus and returns data."""
    empty = []
    for query in dashboard_queries():
        # With 1 s scrapes Grafana's $__rate_interval is its minimum: 4 scrape intervals.
        expr = grafana_to_promql(query.expr, dashboard_values(stack), interval="4s")
        if not has_data(stack.query_range(expr)):
            empty.append(f"{query.where}: {expr}")
    assert not empty, "\n".join(empty)


def test_template_variables_list_the_rollouts(stack: Stack) -> None:
    rollouts = stack.prom("/api/v1/label/rollout/values", **{"match[]": "rollout_info"})
    assert {stack.bad, stack.good} <= set(rollouts)
    endpoints = stack.prom("/api/v1/label/endpoint/values", **{"match[]": "rollout_info"})
    assert {BAD_ENDPOINT, GOOD_ENDPOINT} <= set(endpoints)


def test_per_rollout_panels_compare_both_arms(stack: Stack) -> None:
    for metric in ("rollout_observed_error_rate", "rollout_observed_latency_p99_ms"):
        arms = {series["metric"]["arm"]
                for series in stack.query_range(f'{metric}{{rollout="{stack.bad}"}}')}
        assert arms == {"candidate", "baseline"}, metric
    rates = {
        series["metric"]["arm"]: max(float(v) for _, v in series["values"])
        for series in stack.query_range(f'rollout_observed_error_rate{{rollout="{stack.bad}"}}')
    }
    assert rates["candidate"] > 0.1 > rates["baseline"], rates


def test_sandbox_export_metrics_scraped_with_the_configured_token(stack: Stack) -> None:
    (target,) = [t for t in stack.prom("/api/v1/targets")["activeTargets"]
                 if t["labels"]["job"] == "serving-endpoint"]
    assert target["health"] == "up", target
    entities = {series["metric"]["served_entity_name"] for series in stack.query_range(
        f'request_count_total{{endpoint="{BAD_ENDPOINT}"}}')}
    assert {"demo-model-1", "demo-model-2"} <= entities


# ---- metric names ----------------------------------------------------------------------------


def test_every_metric_name_used_is_exported(stack: Stack) -> None:
    """The names read by every dashboard query and every rule exist in what the live
    controller exports (or the endpoint's export-metrics, or the rules record)."""
    controller = exported_sample_names(stack.controller_metrics)
    endpoint = exported_sample_names(stack.endpoint_metrics)
    recorded = recorded_names()
    queries: list[Query] = dashboard_queries() + rule_queries()
    missing = {}
    for query in queries:
        for name in metric_names(grafana_to_promql(query.expr, dashboard_values(stack))):
            known = (controller if name.startswith("rollout_")
                     else endpoint | recorded | PROMETHEUS_GENERATED)
            if name not in known:
                missing[name] = query.where
    assert not missing, missing
    used = set().union(*(metric_names(grafana_to_promql(q.expr, dashboard_values(stack)))
                         for q in queries))
    # The dashboard and the rules cover every per-rollout gauge and counter of the controller.
    for name in ("rollout_info", "rollout_candidate_weight_percent", "rollout_step",
                 "rollout_observed_error_rate", "rollout_observed_latency_p99_ms",
                 "rollout_deadline_timestamp_seconds", "rollout_alerts_pending",
                 "rollout_verdicts_total", "rollout_rollbacks_total",
                 "rollout_promotions_total", "rollout_serving_requests_total",
                 "rollout_alerts_total", "rollout_reconcile_lag_seconds"):
        assert name in used, name
        assert name in controller, name
    # And each of them has series in Prometheus after this run.
    for name in sorted(used - recorded):
        assert stack.query(f'count({{__name__="{name}"}})'), f"no {name} series in Prometheus"
