"""What the deployment files under deploy/ contain, for the tests that check them.

Shared by ``tests/integration/test_deploy_configs.py`` (the files alone, with promtool, amtool
and the Compose schema) and ``tests/e2e/test_monitoring_stack.py`` (the files against running
programs). Importable as ``deploy_files`` because pytest puts ``tests/`` on ``sys.path`` for
``tests/conftest.py`` (its default "prepend" import mode).

Queries are collected from the Grafana dashboard (panel targets, annotations, template
variables) and from Prometheus' rules, with Grafana's variables replaced so that Prometheus
and promtool accept them; ``metric_names`` lists the metric names a PromQL expression reads.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROMETHEUS_DIR = DEPLOY / "prometheus"
RULES = PROMETHEUS_DIR / "rules.yml"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "rollouts.json"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_DATABRICKS = ROOT / "docker-compose.databricks.yml"
ALERTMANAGER_CONFIG = DEPLOY / "alertmanager" / "alertmanager.yml"

TERMINAL_PHASES = ("succeeded", "rolled_back", "aborted", "failed")


@dataclass(frozen=True)
class Query:
    """One PromQL expression and where it comes from (for failure messages)."""

    where: str
    expr: str


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_queries(board: Mapping[str, Any] | None = None) -> list[Query]:
    """Every PromQL expression of the dashboard, with Grafana's variables still in."""
    board = board if board is not None else dashboard()
    queries = [
        Query(f"panel {panel['title']!r} target {target['refId']}", target["expr"])
        for panel in all_panels(board["panels"])
        for target in panel.get("targets", [])
    ]
    queries += [
        Query(f"annotation {annotation['name']!r}", annotation["expr"])
        for annotation in board["annotations"]["list"]
        if "expr" in annotation
    ]
    for variable in board["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            queries.append(Query(f"variable {variable['name']!r}", label_values_selector(text)))
    return queries


def label_values_selector(text: str) -> str:
    """The series selector of Grafana's ``label_values(selector, label)``: the PromQL part."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\s*\)\s*", text, re.DOTALL)
    if match is None:
        raise ValueError(f"not a label_values(selector, label) query: {text!r}")
    return match.group(1).strip()


def rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(RULES)["groups"] for rule in group["rules"]]


def rule_queries() -> list[Query]:
    return [
        Query(f"rule {rule.get('record') or rule.get('alert')}", rule["expr"])
        for rule in rules()
    ]


def recorded_names() -> set[str]:
    return {rule["record"] for rule in rules() if "record" in rule}


def alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in rules() if "alert" in rule]


# Grafana's built-in interval variables, and the value each gets outside Grafana.
_INTERVALS = ("$__rate_interval", "$__interval", "$__range")


def grafana_to_promql(expr: str, variables: Mapping[str, str], interval: str = "5m") -> str:
    """``expr`` as Grafana sends it: built-in intervals become ``interval``, ``$name`` and
    ``${name}`` the given values. Raises KeyError for a variable without a value."""
    for name in _INTERVALS:
        expr = expr.replace(name, interval)

    def value(match: re.Match[str]) -> str:
        return variables[match.group(1) or match.group(2)]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", value, expr)


# Words of PromQL that are not metric names where they stand (functions and aggregations are
# recognised by the parenthesis after them).
_KEYWORDS = frozenset({
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "atan2", "inf", "nan",
})


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression reads (without Grafana variables: see
    ``grafana_to_promql``)."""
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|`[^`]*`', '""', expr)
    names = {
        match.group(1) for match in re.finditer(r'__name__\s*=\s*"([^"]*)"', expr)
    }
    text = re.sub(r"\{[^{}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\[\]]*\]", " ", text)  # ranges and subqueries
    # Grouping clauses name labels, not metrics: `sum by (a, b) (...)`, `on (a) group_left (b)`.
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", " ", text
    )
    for match in re.finditer(r"(?<![\w:.])([A-Za-z_:][\w:]*)(\s*\()?", text):
        word, call = match.group(1), match.group(2)
        if call or word in _KEYWORDS:
            continue
        names.add(word)
    return names


def histogram_family(name: str) -> str:
    """The family a sample name belongs to, for the suffixes Prometheus adds."""
    for suffix in ("_bucket", "_sum", "_count", "_total", "_created"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def exported_sample_names(exposition: str) -> set[str]:
    """Every sample name a Prometheus text exposition may carry: the samples it has, plus, for
    each family declared (# TYPE), the names its type implies, since a labelled counter or
    histogram that has not been used yet is declared without samples."""
    names: set[str] = set()
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("_sum", "_count", "_created", ""),
        "gauge": ("",),
        "untyped": ("",),
        "unknown": ("",),
        "info": ("_info",),
        "stateset": ("",),
        "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    }
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in suffixes[family.type])
        names.update(sample.name for sample in family.samples)
    return names
