"""The deployment files, checked by the programs that will read them: promtool (Prometheus'
configuration, rules and the rules' unit tests), amtool (Alertmanager's configuration, with
its commented examples enabled too), the Compose Specification's JSON schema (both compose
files), plus what none of them can see: services, volumes and mounted files that exist,
ports, hostnames and tokens that agree from one file to the other, every dashboard query
accepted by promtool, and a Dockerfile that builds what pyproject.toml describes.

Prometheus and Alertmanager come from Debian's `prometheus` and `prometheus-alertmanager`
packages (installed by .ci/run); a missing tool fails these tests rather than skipping them.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from deploy_files import (
    ALERTMANAGER_CONFIG,
    COMPOSE,
    COMPOSE_DATABRICKS,
    DASHBOARD,
    DEPLOY,
    PROMETHEUS_DIR,
    ROOT,
    RULES,
    alert_rules,
    all_panels,
    dashboard,
    dashboard_queries,
    grafana_to_promql,
    label_values_selector,
    load_yaml,
    metric_names,
    recorded_names,
    rule_queries,
)

from rollout.alerts import parse_channels
from rollout.alerts.alertmanager import ALERTNAMES, SEVERITY_LABELS

SCHEMA = ROOT / "tests" / "fixtures" / "compose_spec.json"
# The compose services listen on every interface of their own container (the host publishes
# them on loopback only, which test_compose_references_resolve checks).
ALL_INTERFACES = "0.0.0.0"  # noqa: S104 -- an expected value, not an address this test binds
ENTRYPOINT = PROMETHEUS_DIR / "databricks" / "entrypoint.sh"


def tool(name: str) -> str:
    path = shutil.which(name)
    assert path is not None, (
        f"{name} is not installed: apt-get install prometheus prometheus-alertmanager "
        "(.ci/run does it)"
    )
    return path


def run(*command: str, env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, capture_output=True, text=True, timeout=60, check=False,
        env=None if env is None else dict(env),
    )


# ---- Prometheus ------------------------------------------------------------------------------


def test_prometheus_config_and_rules_pass_promtool() -> None:
    result = run(tool("promtool"), "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    # The config names rules.yml relative to itself, so promtool checked the rules too.
    assert "1 rule files found" in result.stdout + result.stderr
    rules = run(tool("promtool"), "check", "rules", str(RULES))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"{len(rule_queries())} rules found" in rules.stdout + rules.stderr


def test_rules_unit_tests_pass() -> None:
    result = run(tool("promtool"), "test", "rules",
                 str(PROMETHEUS_DIR / "tests" / "rules_test.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_rules_unit_tests_catch_a_missed_first_rollback(tmp_path: Path) -> None:
    """Without the part that counts a counter's first appearance, an endpoint's first
    rollback goes unnoticed, and the unit tests say so."""
    rules = RULES.read_text()
    first_leg = re.compile(
        r"\n\s*or\n\s*\(rollout_rollbacks_total\n\s*and \(count_over_time\(rollout_rollbacks_total"
        r"\[1m\]\)\n\s*< on \(instance, job\) group_left \(\) sum_over_time\(up\[1m\]\)\)\)"
    )
    broken, count = first_leg.subn("", rules)
    assert count == 1, "rules.yml no longer has the expected first-rollback clause"
    (tmp_path / "rules.yml").write_text(broken)
    (tmp_path / "tests").mkdir()
    shutil.copy(PROMETHEUS_DIR / "tests" / "rules_test.yml", tmp_path / "tests")
    result = run(tool("promtool"), "test", "rules", str(tmp_path / "tests" / "rules_test.yml"))
    assert result.returncode != 0, "the unit tests did not notice a missed first rollback"
    assert "RolloutRollbackDetected" in result.stdout + result.stderr


def test_alert_rules_are_labelled_for_routing_and_inhibition() -> None:
    alerts = {rule["alert"]: rule for rule in alert_rules()}
    for name, rule in alerts.items():
        assert rule["labels"]["severity"] in SEVERITY_LABELS.values(), name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name
        # Distinct from the controller's alertnames: the two must never merge in Alertmanager.
        assert name not in ALERTNAMES.values(), name
    assert {
        "RolloutRollbackDetected", "RolloutPastDeadline", "RolloutInFailedPhase",
        "RolloutAlertsUndelivered", "RolloutReconcileLagHigh",
    } <= set(alerts)
    # The rollback alert fires at the first evaluation that sees it.
    assert "for" not in alerts["RolloutRollbackDetected"]
    assert "rollback" in alerts["RolloutRollbackDetected"]["expr"]
    # Alertmanager holds a rule alert back while the controller's own alert on the same
    # rollout is active: both names must be real.
    config = load_yaml(ALERTMANAGER_CONFIG)
    for inhibit in config["inhibit_rules"]:
        source = _matched_alertname(inhibit["source_matchers"])
        target = _matched_alertname(inhibit["target_matchers"])
        assert source in ALERTNAMES.values(), source
        assert target in alerts, target
        assert set(inhibit["equal"]) == {"endpoint", "rollout"}
        assert "rollout" in alerts[target]["expr"], "the rule alert carries the rollout label"


def _matched_alertname(matchers: list[str]) -> str:
    (matcher,) = matchers
    match = re.fullmatch(r'alertname="(\w+)"', matcher)
    assert match, matcher
    return match.group(1)


def test_databricks_prometheus_config_renders_and_passes_promtool(tmp_path: Path) -> None:
    """The override's Prometheus: entrypoint.sh writes the token and the targets from the
    environment, and the configuration reading them passes promtool."""
    secrets = tmp_path / "run"
    config = tmp_path / "prometheus.databricks.yml"
    source = (PROMETHEUS_DIR / "prometheus.databricks.yml").read_text()
    assert "/run/databricks" in source
    config.write_text(source.replace("/run/databricks", str(secrets)))
    shutil.copy(RULES, tmp_path / "rules.yml")
    env = {
        "PATH": os.environ["PATH"],
        "DATABRICKS_HOST": "https://adb-123.4.azuredatabricks.net/",
        "DATABRICKS_TOKEN": "dapi-not-a-real-token",
        "ROLLOUT_SCRAPE_ENDPOINTS": "ads-endpoint,search_v2",
        "DATABRICKS_SCRAPE_DIR": str(secrets),
    }
    result = run("sh", str(ENTRYPOINT), tool("promtool"), "check", "config", str(config), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    token = secrets / "token"
    assert token.read_text() == "dapi-not-a-real-token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600, "the token is readable by its owner only"
    groups = yaml.safe_load((secrets / "endpoints.yml").read_text())
    assert groups == [
        {"targets": ["adb-123.4.azuredatabricks.net"],
         "labels": {"__scheme__": "https", "endpoint": name,
                    "__metrics_path__": f"/api/2.0/serving-endpoints/{name}/metrics"}}
        for name in ("ads-endpoint", "search_v2")
    ]

    # No endpoint to chart is valid too (the controller's metrics are still scraped).
    result = run("sh", str(ENTRYPOINT), tool("promtool"), "check", "config", str(config),
                 env={**env, "ROLLOUT_SCRAPE_ENDPOINTS": ""})
    assert result.returncode == 0, result.stdout + result.stderr
    assert yaml.safe_load((secrets / "endpoints.yml").read_text()) == []

    # A name that could break out of the YAML, or no token, stops it before Prometheus runs.
    bad = run("sh", str(ENTRYPOINT), "true",
              env={**env, "ROLLOUT_SCRAPE_ENDPOINTS": 'ads"]\n- x'})
    assert bad.returncode == 2
    assert "not a serving endpoint name" in bad.stderr
    env.pop("DATABRICKS_TOKEN")
    missing = run("sh", str(ENTRYPOINT), "true", env=env)
    assert missing.returncode != 0
    assert "DATABRICKS_TOKEN" in missing.stderr


# ---- Alertmanager ----------------------------------------------------------------------------


def test_alertmanager_config_passes_amtool() -> None:
    result = run(tool("amtool"), "check-config", str(ALERTMANAGER_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    config = load_yaml(ALERTMANAGER_CONFIG)
    assert config["route"]["receiver"] == "default"
    assert {r["name"] for r in config["receivers"]} == {"default"}


def uncomment_examples(text: str) -> str:
    """The configuration with its commented examples enabled, as its header tells people."""
    lines, inside = [], False
    for line in text.splitlines():
        marker = line.strip()
        if marker.startswith("# example:"):
            inside = True
        elif marker == "# end of example":
            inside = False
        elif inside:
            lines.append(re.sub(r"^(\s*)# ?", r"\1", line, count=1))
            continue
        lines.append(line)
    return "\n".join(lines) + "\n"


def test_alertmanager_examples_pass_amtool(tmp_path: Path) -> None:
    enabled = uncomment_examples(ALERTMANAGER_CONFIG.read_text())
    path = tmp_path / "alertmanager.yml"
    path.write_text(enabled)
    result = run(tool("amtool"), "check-config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr + enabled
    config = yaml.safe_load(enabled)
    receivers = {r["name"]: r for r in config["receivers"]}
    assert receivers["slack"]["slack_configs"][0]["api_url"].startswith("https://hooks.slack.com/")
    assert receivers["webhook"]["webhook_configs"][0]["url"].startswith("http")
    routed = {route["receiver"] for route in config["route"]["routes"]}
    assert routed == {"slack", "webhook"}
    # The paging route matches the controller's rollback and failure alerts.
    slack = next(r for r in config["route"]["routes"] if r["receiver"] == "slack")
    (pattern,) = slack["matchers"]
    names = re.fullmatch(r'alertname=~"(.*)"', pattern)
    assert names
    for alertname in ("RolloutRolledBack", "RolloutFailed", "RolloutRollbackDetected"):
        assert re.fullmatch(names.group(1), alertname), alertname


# ---- Compose ---------------------------------------------------------------------------------


def _go_duration(value: object) -> bool:
    # Compose durations are Go's (time.ParseDuration): "10s", "1m30s", "500ms".
    return not isinstance(value, str) or bool(
        re.fullmatch(r"(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+", value)
    )


def compose_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    checker = jsonschema.FormatChecker(formats=())
    checker.checks("duration")(_go_duration)
    # The schema declares draft 2019-09 by an http:// URI with a '#', which jsonschema does
    # not recognise as that draft: name the draft instead of letting it guess.
    assert "2019-09" in schema["$schema"]
    jsonschema.Draft201909Validator.check_schema(schema)
    return jsonschema.Draft201909Validator(schema, format_checker=checker)


class InterpolationError(ValueError):
    pass


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable substitution: ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}, $VAR and $$ (a literal $)."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("plain")
        operator, argument = match.group("op"), match.group("arg") or ""
        present = name in env
        set_and_not_empty = present and env[name] != ""
        if operator in (":-", "-"):
            use_default = not set_and_not_empty if operator == ":-" else not present
            return argument if use_default else env[name]
        if operator in (":?", "?"):
            missing = not set_and_not_empty if operator == ":?" else not present
            if missing:
                raise InterpolationError(f"{name}: {argument}")
            return env[name]
        return env.get(name, "")

    pattern = (r"\$\$|\$\{(?P<braced>\w+)(?:(?P<op>:-|-|:\?|\?)(?P<arg>[^}]*))?\}"
               r"|\$(?P<plain>[A-Za-z_]\w*)")
    return re.sub(pattern, substitute, value)


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file, for the keys these files override: mappings
    (services, environment) merge key by key; anything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = merge(base[key], value) if key in base else value
        return merged
    return override


def compose(env: Mapping[str, str] | None = None, *, databricks: bool = False) -> dict[str, Any]:
    config = interpolate(load_yaml(COMPOSE), env or {})
    if databricks:
        config = merge(config, interpolate(load_yaml(COMPOSE_DATABRICKS), env or {}))
    # Extension fields (x-...) are Compose's place for anchors; they configure nothing.
    return {key: value for key, value in config.items() if not key.startswith("x-")}


DATABRICKS_ENV = {
    "DATABRICKS_HOST": "https://adb-123.4.azuredatabricks.net",
    "DATABRICKS_TOKEN": "dapi-not-a-real-token",
    "ROLLOUT_API_TOKENS": "a-long-random-string:operator",
}


@pytest.mark.parametrize("path", [COMPOSE, COMPOSE_DATABRICKS], ids=lambda p: p.name)
def test_compose_files_match_the_compose_schema(path: Path) -> None:
    validator = compose_validator()
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(load_yaml(path))]
    assert not errors, errors


@pytest.mark.parametrize("databricks", [False, True], ids=["sandbox", "databricks"])
def test_interpolated_and_merged_compose_matches_the_schema(databricks: bool) -> None:
    validator = compose_validator()
    config = compose(DATABRICKS_ENV, databricks=databricks)
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in validator.iter_errors(config)]
    assert not errors, errors


def test_compose_schema_rejects_what_compose_would() -> None:
    """The vendored schema and the format check really constrain the file."""
    validator = compose_validator()
    config = load_yaml(COMPOSE)
    config["services"]["controller"]["depends_on"]["sandbox"]["condition"] = "service_ready"
    config["services"]["sandbox"]["healthcheck"]["interval"] = "ten seconds"
    config["services"]["grafana"]["restart_policy"] = "always"
    messages = " ".join(error.message for error in validator.iter_errors(config))
    assert "service_ready" in messages
    assert "ten seconds" in messages
    assert "restart_policy" in messages


def _service_names(config: Mapping[str, Any]) -> set[str]:
    return set(config["services"])


def _depends_on(service: Mapping[str, Any]) -> dict[str, str]:
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return dict.fromkeys(depends, "service_started")
    return {name: spec["condition"] for name, spec in depends.items()}


def _mounts(service: Mapping[str, Any]) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append((volume["source"], volume["target"]))
        else:
            source, target = volume.split(":")[:2]
            mounts.append((source, target))
    return mounts


@pytest.mark.parametrize("databricks", [False, True], ids=["sandbox", "databricks"])
def test_compose_references_resolve(databricks: bool) -> None:
    config = compose(DATABRICKS_ENV, databricks=databricks)
    services = config["services"]
    assert _service_names(config) == {
        "controller", "sandbox", "prometheus", "alertmanager", "grafana"
    }
    declared_volumes = set(config.get("volumes") or {})
    used_volumes = set()
    for name, service in services.items():
        # Every service reports its health, and every dependency names a service that does.
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        for dependency, condition in _depends_on(service).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            assert dependency != name
            assert condition == "service_healthy", f"{name} -> {dependency}: {condition}"
        for source, target in _mounts(service):
            if source.startswith((".", "/")):
                # Bind mounts come from this repository's deploy/ folder and exist.
                path = (ROOT / source).resolve()
                assert path.is_relative_to(DEPLOY), f"{name} mounts {source}"
                assert path.exists(), f"{name} mounts {source}, which does not exist"
            else:
                assert source in declared_volumes, f"{name} uses undeclared volume {source}"
                used_volumes.add(source)
            assert target.startswith("/"), target
        for port in service.get("ports", []):
            # The sandbox's admin API has no auth: nothing is published beyond this machine.
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} to the network"
    assert used_volumes == declared_volumes, "every declared volume is used"
    assert not _dependency_cycle(services)
    controller = _depends_on(services["controller"])
    assert {"sandbox", "alertmanager"} <= set(controller)


def _dependency_cycle(services: Mapping[str, Any]) -> bool:
    visiting: set[str] = set()
    done: set[str] = set()

    def visit(name: str) -> bool:
        if name in done:
            return False
        if name in visiting:
            return True
        visiting.add(name)
        cyclic = any(visit(dep) for dep in _depends_on(services[name]))
        visiting.discard(name)
        done.add(name)
        return cyclic

    return any(visit(name) for name in services)


def _command(service: Mapping[str, Any]) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(c) for c in command]


def _option(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def _container_path(service: Mapping[str, Any], host_path: Path) -> str:
    """Where a file of this repository appears inside the service's container."""
    for source, target in _mounts(service):
        if source.startswith("."):
            mounted = (ROOT / source).resolve()
            if host_path.resolve().is_relative_to(mounted):
                return str(Path(target) / host_path.resolve().relative_to(mounted))
    raise AssertionError(f"{host_path} is not mounted")


def _host_path(service: Mapping[str, Any], container_path: str) -> Path:
    for source, target in _mounts(service):
        if source.startswith(".") and Path(container_path).is_relative_to(target):
            return (ROOT / source).resolve() / Path(container_path).relative_to(target)
    raise AssertionError(f"{container_path} is not a mounted file")


def test_compose_services_agree_with_each_other() -> None:
    """Hostnames, ports, tokens and paths that one file names and another serves."""
    services = compose()["services"]
    controller, sandbox = services["controller"], services["sandbox"]
    env = controller["environment"]

    # The controller listens beyond loopback, which it only does with API tokens.
    command = _command(controller)
    assert command[0] == "serve"
    assert _option(command, "--host") == ALL_INTERFACES
    controller_port = _option(command, "--port")
    assert env["ROLLOUT_API_TOKENS"]
    assert ":" in env["ROLLOUT_API_TOKENS"]
    # Its SQLite store lives on its named volume.
    assert env["ROLLOUT_STORE_URL"].startswith("sqlite:////data/")
    assert ("controller-data", "/data") in _mounts(controller)

    # It drives the sandbox with the sandbox's token.
    sandbox_command = _command(sandbox)
    assert sandbox_command[0] == "sandbox"
    assert "--demo" in sandbox_command
    assert _option(sandbox_command, "--host") == ALL_INTERFACES
    sandbox_port = _option(sandbox_command, "--port")
    sandbox_token = _option(sandbox_command, "--token")
    assert env["DATABRICKS_HOST"] == f"http://sandbox:{sandbox_port}"
    assert env["DATABRICKS_TOKEN"] == sandbox_token
    window = float(_option(sandbox_command, "--window-seconds"))
    assert float(env["ROLLOUT_ENGINE_LOOK_INTERVAL"]) <= window / 2, "no window is missed"

    # Its default alert channel is the alertmanager service, as the controller parses it.
    (channel,) = parse_channels(env["ROLLOUT_ALERTS_CHANNELS"])
    assert channel.type == "alertmanager"
    assert urlsplit(channel.url).netloc == "alertmanager:9093"
    assert "--cluster.listen-address=" in _command(services["alertmanager"])

    # Prometheus scrapes both, with the sandbox's token, and loads the rules and alerts
    # the alertmanager service.
    prometheus = services["prometheus"]
    config_path = _host_path(prometheus, _option_value(_command(prometheus), "--config.file"))
    config = load_yaml(config_path)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["rollout-controller"]["static_configs"][0]["targets"] == [
        f"controller:{controller_port}"
    ]
    endpoint_job = jobs["serving-endpoint"]
    assert endpoint_job["static_configs"][0]["targets"] == [f"sandbox:{sandbox_port}"]
    assert endpoint_job["authorization"]["credentials"] == sandbox_token
    assert endpoint_job["metrics_path"] == (
        "/api/2.0/serving-endpoints/demo-endpoint/metrics"
    )
    assert endpoint_job["static_configs"][0]["labels"]["endpoint"] == "demo-endpoint"
    assert endpoint_job["honor_timestamps"] is True
    assert float(endpoint_job["scrape_interval"].rstrip("s")) == window
    for rule_file in config["rule_files"]:
        assert (config_path.parent / rule_file).resolve() == RULES.resolve()
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] == [
        "alertmanager:9093"
    ]
    alertmanager = services["alertmanager"]
    am_config = _option_value(_command(alertmanager), "--config.file")
    assert _host_path(alertmanager, am_config) == ALERTMANAGER_CONFIG.resolve()

    # Grafana reads the provisioned data sources and the dashboard from their mounts.
    grafana = services["grafana"]
    provisioning = DEPLOY / "grafana" / "provisioning"
    sources = load_yaml(provisioning / "datasources" / "datasources.yml")["datasources"]
    urls = {source["type"]: source["url"] for source in sources}
    assert urls == {"prometheus": "http://prometheus:9090",
                    "alertmanager": "http://alertmanager:9093"}
    assert _container_path(grafana, provisioning) == "/etc/grafana/provisioning"
    (provider,) = load_yaml(provisioning / "dashboards" / "dashboards.yml")["providers"]
    assert _host_path(grafana, provider["options"]["path"]) == DASHBOARD.parent.resolve()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert _host_path(grafana, home) == DASHBOARD.resolve()


def _option_value(command: list[str], flag: str) -> str:
    (value,) = [arg.split("=", 1)[1] for arg in command if arg.startswith(flag + "=")]
    return value


def test_databricks_override_needs_a_workspace_and_points_the_stack_at_it() -> None:
    for missing in DATABRICKS_ENV:
        env = {k: v for k, v in DATABRICKS_ENV.items() if k != missing}
        with pytest.raises(InterpolationError, match=missing):
            compose(env, databricks=True)
    services = compose(DATABRICKS_ENV, databricks=True)["services"]
    env = services["controller"]["environment"]
    assert env["DATABRICKS_HOST"] == DATABRICKS_ENV["DATABRICKS_HOST"]
    assert env["DATABRICKS_TOKEN"] == DATABRICKS_ENV["DATABRICKS_TOKEN"]
    assert env["ROLLOUT_API_TOKENS"] == DATABRICKS_ENV["ROLLOUT_API_TOKENS"]
    # Everything else the controller needs is kept from docker-compose.yml.
    assert env["ROLLOUT_STORE_URL"].startswith("sqlite:////data/")
    assert "alertmanager" in env["ROLLOUT_ALERTS_CHANNELS"]
    assert float(env["ROLLOUT_ENGINE_LOOK_INTERVAL"]) <= 30, "at most half a 60 s window"

    prometheus = services["prometheus"]
    entrypoint = prometheus["entrypoint"]
    assert entrypoint[0] == "/bin/sh"
    assert _host_path(prometheus, entrypoint[1]) == ENTRYPOINT.resolve()
    config = _host_path(prometheus, _option_value(prometheus["command"], "--config.file"))
    assert config == (PROMETHEUS_DIR / "prometheus.databricks.yml").resolve()
    assert "/run/databricks" in prometheus["tmpfs"], "the token file stays in memory"
    assert prometheus["environment"]["DATABRICKS_TOKEN"] == DATABRICKS_ENV["DATABRICKS_TOKEN"]
    # Without the override nothing asks for a workspace.
    assert compose({})["services"]["controller"]["environment"]["ROLLOUT_API_TOKENS"]


# ---- Dockerfile ------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = (ROOT / "Dockerfile").read_text()
    text = re.sub(r"\\\n", " ", text)  # continuation lines
    instructions = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def _dockerignored(path: str) -> bool:
    """Whether .dockerignore keeps ``path`` out of the build context (its patterns, last
    match wins, as Docker reads them; only the forms the file uses)."""
    ignored = False
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").rstrip("/")
        if pattern.startswith("**/"):
            matched = fnmatch.fnmatch(Path(path).name, pattern[3:])
        else:
            matched = fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/")
        if matched:
            ignored = not negate
    return ignored


def test_dockerfile_builds_the_package_for_an_unprivileged_user() -> None:
    instructions = dockerfile_instructions()
    stages = [i for i, (keyword, _) in enumerate(instructions) if keyword == "FROM"]
    final = instructions[stages[-1]:]
    assert final[0][1] == "python:3.11-slim"
    assert all(instructions[i][1].startswith("python:3.11-slim") for i in stages)

    # Everything the build copies from the context exists and is not ignored; together it is
    # what pyproject.toml builds the wheel from.
    pyproject = _pyproject()
    wheel = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]
    needed = {"pyproject.toml", pyproject["project"]["readme"], *wheel["packages"],
              *wheel["force-include"]}
    copied = set()
    for keyword, rest in instructions:
        if keyword == "COPY" and not rest.startswith("--from"):
            *sources, _ = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert not _dockerignored(source), f"{source} is excluded by .dockerignore"
                copied.add(source)
    assert needed <= copied, f"not copied into the build: {needed - copied}"
    assert _dockerignored("tests")
    assert _dockerignored(".git")
    assert _dockerignored("deploy")
    assert _dockerignored("rollout/__pycache__")

    # The runtime stage installs the wheel and runs `rollout` as a non-root user.
    runs = " ".join(rest for keyword, rest in final if keyword == "RUN")
    assert "pip install" in runs
    assert "useradd" in runs
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users, "the image runs as root"
    user, _, group = users[-1].partition(":")
    assert user not in ("root", "0")
    uid = re.search(r"useradd [^&]*--uid (\d+)", runs)
    gid = re.search(r"groupadd [^&]*--gid (\d+)", runs)
    assert uid is not None
    assert gid is not None
    assert user == uid.group(1), "USER is the user the image creates"
    assert group == gid.group(1), "and its group"
    (entrypoint,) = [json.loads(rest) for keyword, rest in final if keyword == "ENTRYPOINT"]
    assert entrypoint == ["rollout"]
    assert pyproject["project"]["scripts"]["rollout"]

    # The store's directory and the ports match docker-compose.yml.
    services = compose()["services"]
    env = dict(rest.split("=", 1) for keyword, rest in final if keyword == "ENV"
               and rest.startswith("ROLLOUT_STORE_URL="))
    assert env["ROLLOUT_STORE_URL"] == services["controller"]["environment"]["ROLLOUT_STORE_URL"]
    assert "chown rollout:rollout /data" in runs
    exposed = {p for keyword, rest in final if keyword == "EXPOSE" for p in rest.split()}
    assert {_option(_command(services["controller"]), "--port"),
            _option(_command(services["sandbox"]), "--port")} <= exposed


def _pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


# ---- Grafana ---------------------------------------------------------------------------------


def test_dashboard_structure() -> None:
    board = dashboard()
    assert board["uid"]
    assert board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    # The datasource variable defaults to the provisioned Prometheus, by uid.
    sources = load_yaml(DEPLOY / "grafana" / "provisioning" / "datasources" /
                        "datasources.yml")["datasources"]
    prometheus_uid = next(s["uid"] for s in sources if s["type"] == "prometheus")
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["datasource"]["current"]["value"] == prometheus_uid
    # The rollout variable lists the rollouts the controller reports.
    rollout = variables["rollout"]
    assert label_values_selector(rollout["query"]).startswith("rollout_info")
    assert rollout["multi"]
    assert rollout["includeAll"]

    panels = list(all_panels(board["panels"]))
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    repeated = [p for p in panels if p.get("repeat") == "rollout"]
    assert len(repeated) == 1, "one row per rollout"
    assert repeated[0]["type"] == "row"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
    _assert_no_overlap(panels)

    # Per rollout: weight, arms' error rate and latency, step; verdict and rollback marks.
    per_rollout = _row_panels(board["panels"], repeated[0])
    exprs = " ".join(t["expr"] for p in per_rollout for t in p.get("targets", []))
    for metric in ("rollout_candidate_weight_percent", "rollout_observed_error_rate",
                   "rollout_observed_latency_p99_ms", "rollout_step", "rollout_info"):
        assert metric in exprs, metric
    assert exprs.count('rollout="$rollout"') >= 5
    annotations = {a["name"]: a for a in board["annotations"]["list"]}
    assert "rollout_rollbacks" in annotations["Rollbacks"]["expr"]
    assert "rollout_verdicts" in annotations["Verdicts"]["expr"]
    everything = " ".join(q.expr for q in dashboard_queries(board))
    for metric in ("rollout_promotions", "rollout_reconcile_lag_seconds",
                   "rollout_serving_requests_total", "rollout_alerts_total",
                   "rollout_alerts_pending"):
        assert metric in everything, metric


def _row_panels(panels: list[dict[str, Any]], row: dict[str, Any]) -> list[dict[str, Any]]:
    """The panels of an expanded row: those after it, up to the next row."""
    start = panels.index(row) + 1
    following = []
    for panel in panels[start:]:
        if panel["type"] == "row":
            break
        following.append(panel)
    return following


def _assert_no_overlap(panels: list[dict[str, Any]]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


GRAFANA_VALUES = {"rollout": "3f9c2a1b7d4e", "endpoint": ".+", "datasource": "prometheus"}


def test_every_query_parses_with_promtool(tmp_path: Path) -> None:
    """promtool parses every dashboard query (as a recording rule) and every rule, so a
    typo in a panel fails here rather than as an empty graph."""
    queries = dashboard_queries() + rule_queries()
    rules = [
        {"record": f"check:query:{index}", "expr": grafana_to_promql(q.expr, GRAFANA_VALUES)}
        for index, q in enumerate(queries)
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": rules}]}))
    result = run(tool("promtool"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(rules)} rules found" in result.stdout + result.stderr

    # And promtool does fail on a broken one, so the check above means something.
    path.write_text(yaml.safe_dump({"groups": [{"name": "queries", "rules": [
        {"record": "check:query:broken", "expr": "sum by (endpoint (rollout_info)"}]}]}))
    assert run(tool("promtool"), "check", "rules", str(path)).returncode != 0


def test_metric_name_extraction() -> None:
    """The extraction the live metric-name check (tests/e2e) relies on."""
    assert metric_names(
        'sum by (endpoint) (increase(rollout_rollbacks_total{reason!~"a|b"}[1h] offset 5m))'
        " / on (endpoint) group_left (rollout) max(rollout_info) > bool 0"
    ) == {"rollout_rollbacks_total", "rollout_info"}
    assert metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(x_seconds_bucket[5m]))) and up == 1e3"
    ) == {"x_seconds_bucket", "up"}
    assert metric_names('topk by (a) (1, b:c:d) or {__name__="e"} unless vector(0)') == {
        "b:c:d", "e",
    }
    assert metric_names(
        grafana_to_promql('rate(a_total{x="$rollout"}[$__rate_interval])', GRAFANA_VALUES)
    ) == {"a_total"}
    names = set().union(*(metric_names(grafana_to_promql(q.expr, GRAFANA_VALUES))
                          for q in dashboard_queries() + rule_queries()))
    assert recorded_names() <= names, "every recording rule is used by a panel or an alert"
    assert "rollout_candidate_weight_percent" in names


DEMO_PLANS = sorted((DEPLOY / "demo").glob("*.yaml"))


@pytest.mark.parametrize("plan", DEMO_PLANS, ids=lambda p: p.stem)
def test_demo_plans_validate_and_target_the_scraped_endpoint(plan: Path) -> None:
    assert len(DEMO_PLANS) == 2, "a healthy and a regressed canary"
    result = subprocess.run(
        [sys.executable, "-m", "rollout.cli", "validate", str(plan)],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "valid canary plan for endpoint demo-endpoint" in result.stdout
    prometheus = load_yaml(PROMETHEUS_DIR / "prometheus.yml")
    job = next(j for j in prometheus["scrape_configs"] if j["job_name"] == "serving-endpoint")
    endpoint = load_yaml(plan)["endpoint"]
    assert job["metrics_path"] == f"/api/2.0/serving-endpoints/{endpoint}/metrics"
