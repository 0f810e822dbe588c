"""Checks on a team's own metrics: the per-look rule, rendering and escaping, the JSON
selector, the plan's validation messages, and decide acting on them. Pure, table-driven."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout.analysis.queries import (
    ArmReading,
    Names,
    QueryReading,
    SelectorError,
    arm_names,
    judge_queries,
    promql_duration,
    render,
    select,
)
from rollout.analysis.spec import Policy, QueryCheck
from rollout.analysis.verdict import Outcome
from rollout.engine.decide import Timing, decide
from rollout.engine.model import Observation, Phase, RolloutState
from rollout.metrics.model import EntityWindow
from rollout.plan import PlanError, check_plan, validate_plan

QUERY = 'sum(errors{model={{ candidate }}}) / sum(requests{model={{ candidate }}})'


def check(**fields: Any) -> QueryCheck:
    return QueryCheck.model_validate({"query": QUERY, **fields})


def policy(*checks: QueryCheck, threshold: int = 3) -> Policy:
    return Policy(checks=checks, failure_threshold=threshold)


def reading(spec: QueryCheck, cand: float | None, base: float | None = None,
            outage: str | None = None) -> QueryReading:
    return QueryReading(
        spec.describe(),
        spec.source,
        ArmReading("q{model=\"c\"}", cand, outage),
        ArmReading("q{model=\"b\"}", base, outage),
    )


# ---- the rule: one number per arm per look ------------------------------------------------

RELATIVE = check(compare="baseline", max_ratio=1.5)
HIGHER = check(compare="baseline", max_increase=0.1, direction="higher")
CEILING = check(max=0.05)
FLOOR = check(min=0.9)


@dataclass
class RuleCase:
    name: str
    spec: QueryCheck
    looks: list[tuple[float | None, float | None] | str]  # (candidate, baseline) or outage
    outcome: Outcome
    leans_bad: bool = False
    missing: bool = False
    in_reason: str = ""


RULE_CASES = [
    RuleCase("passes after threshold passing looks", RELATIVE,
             [(1.0, 1.0), (1.4, 1.0), (1.0, 1.0)], Outcome.PASS),
    RuleCase("not yet: two passing looks of three", RELATIVE,
             [(1.0, 1.0), (1.0, 1.0)], Outcome.INCONCLUSIVE),
    RuleCase("fails after threshold failing looks in a row", RELATIVE,
             [(1.6, 1.0), (2.0, 1.0), (3.0, 1.0)], Outcome.FAIL, leans_bad=True,
             in_reason="3 failing looks in a row"),
    RuleCase("a passing look breaks the failing run", RELATIVE,
             [(1.6, 1.0), (2.0, 1.0), (1.0, 1.0), (3.0, 1.0), (3.0, 1.0)],
             Outcome.INCONCLUSIVE, leans_bad=True),
    RuleCase("a fail is final", RELATIVE,
             [(2.0, 1.0)] * 3 + [(1.0, 1.0)] * 5, Outcome.FAIL, leans_bad=True),
    RuleCase("inconclusive without data, never a fail", RELATIVE,
             [(None, 1.0)] * 6, Outcome.INCONCLUSIVE, missing=True,
             in_reason="no data for the candidate"),
    RuleCase("a comparison needs the baseline's number", RELATIVE,
             [(9.0, None)] * 6, Outcome.INCONCLUSIVE, missing=True,
             in_reason="no data for the baseline"),
    RuleCase("looks without data neither count nor break a run", RELATIVE,
             [(2.0, 1.0), (None, 1.0), (2.0, 1.0), (None, None), (2.0, 1.0)], Outcome.FAIL,
             leans_bad=True),
    RuleCase("an unreachable source is not a failure", RELATIVE,
             ["prometheus unreachable: ConnectError"] * 6, Outcome.INCONCLUSIVE,
             missing=True, in_reason="prometheus unreachable: ConnectError"),
    RuleCase("a passed check is inconclusive while its source is down", RELATIVE,
             [(1.0, 1.0)] * 3 + ["prometheus unreachable: x"], Outcome.INCONCLUSIVE,
             missing=True, in_reason="prometheus unreachable: x (0 failing / 3 passing"),
    RuleCase("and passes again at its next number", RELATIVE,
             [(1.0, 1.0)] * 3 + ["prometheus unreachable: x", (1.0, 1.0)], Outcome.PASS),
    RuleCase("an outage between failing looks counts neither way", RELATIVE,
             [(2.0, 1.0), "prometheus unreachable: x", (2.0, 1.0), (2.0, 1.0)],
             Outcome.FAIL, leans_bad=True),
    RuleCase("higher is better: a drop beyond the tolerance fails", HIGHER,
             [(0.7, 0.9)] * 3, Outcome.FAIL, leans_bad=True, in_reason="below 0.8"),
    RuleCase("higher is better: a rise passes", HIGHER, [(0.99, 0.9)] * 3, Outcome.PASS),
    RuleCase("absolute max", CEILING, [(0.06, None)] * 3, Outcome.FAIL, leans_bad=True,
             in_reason="above max 0.05"),
    RuleCase("absolute max needs no baseline", CEILING, [(0.01, None)] * 3, Outcome.PASS),
    RuleCase("absolute min", FLOOR, [(0.8, 0.95)] * 3, Outcome.FAIL, leans_bad=True),
]


@pytest.mark.parametrize("case", RULE_CASES, ids=lambda c: c.name)
def test_the_rule_for_one_number_per_look(case: RuleCase) -> None:
    pol = policy(case.spec)
    state: dict[str, Any] = {}
    result = None
    for look in case.looks:
        if isinstance(look, str):
            one = reading(case.spec, None, None, outage=look)
        else:
            one = reading(case.spec, *look)
        (result,), state = judge_queries(pol, [one], state, split="0@1")
    assert result is not None
    assert result.outcome is case.outcome, result.reason
    assert result.leans_bad is case.leans_bad
    assert result.missing is case.missing
    assert case.in_reason in result.reason
    # Both arms' numbers and the resolved queries are in every result.
    assert result.detail["query"] == 'q{model="c"}'
    assert result.detail["baseline_query"] == 'q{model="b"}'


def test_the_runs_restart_when_the_split_changes() -> None:
    pol = policy(RELATIVE)
    state: dict[str, Any] = {}
    for _ in range(3):
        (result,), state = judge_queries(pol, [reading(RELATIVE, 1.0, 1.0)], state, split="0")
    assert result.outcome is Outcome.PASS
    (result,), state = judge_queries(pol, [reading(RELATIVE, 1.0, 1.0)], state, split="1")
    assert result.outcome is Outcome.INCONCLUSIVE
    assert result.statistic["passing_looks"] == 1


# ---- decide: an outage raises one alert, and never rolls back -----------------------------

PLAN = {
    "endpoint": "ads",
    "candidate": {"name": "ads-4", "entity_name": "main.ml.ads", "entity_version": "4"},
    "baseline": "ads-3",
    "strategy": "canary",
    "steps": [{"weight": 10, "bake": "10m"}],
    "policy": {"min_requests": 0, "warmup_windows": 0, "failure_threshold": 2,
               "checks": [{"query": QUERY, "compare": "baseline", "max_ratio": 1.5}]},
}


def play(looks: list[QueryReading]) -> tuple[RolloutState, list[str], list[str]]:
    """decide at one look per reading, 30 s apart, on a 10 % step with its windows in;
    returns the last state, and the kinds of the events and alerts on the way."""
    plan, pol = check_plan(PLAN)
    st = RolloutState(phase=Phase.PROGRESSING, started_at=0.0, step=0, candidate_weight=10,
                      baseline="ads-3", split_applied_at=0.0, step_started_at=0.0)
    win = (EntityWindow("ads-4", 0, requests=100), EntityWindow("ads-3", 0, requests=900))
    events: list[str] = []
    alerts: list[str] = []
    for now, one in enumerate(looks, start=1):
        obs = Observation(windows=win, readings=(one,))
        decision = decide(plan, st, obs, now * 30.0, policy=pol, timing=Timing(look_interval=30))
        st = decision.state
        events += [e.kind for e in decision.events]
        alerts += [a.event for a in decision.alerts]
    return st, events, alerts


SPEC = QueryCheck.model_validate(PLAN["policy"]["checks"][0])


def test_decide_alerts_once_per_outage_and_never_rolls_back_for_it() -> None:
    down = reading(SPEC, None, None, outage="prometheus unreachable: ConnectError")
    st, events, alerts = play([down] * 5)
    assert st.phase is Phase.PROGRESSING
    assert alerts == ["metrics_source_unreachable"]
    assert events.count("metrics_source_unreachable") == 1
    assert st.last_verdict is not None
    assert "prometheus unreachable: ConnectError" in st.last_verdict.reason
    st, events, alerts = play([down] * 5 + [reading(SPEC, 1.0, 1.0)] * 2)
    assert st.phase is Phase.PROGRESSING
    assert alerts == ["metrics_source_unreachable", "metrics_source_reachable"]
    verdict = st.last_verdict
    assert verdict is not None
    assert verdict.outcome == "pass"
    (own,) = [c for c in verdict.checks if c.metric == "prometheus"]
    assert own.candidate_value == 1.0
    assert own.detail["query"] == 'q{model="c"}'


def test_decide_rolls_back_on_a_failing_query_check() -> None:
    st, _, _ = play([reading(SPEC, 3.0, 1.0)] * 2)
    assert st.phase is Phase.ROLLING_BACK
    assert st.ending_reason is not None
    assert "2 failing looks in a row" in st.ending_reason


# ---- rendering ----------------------------------------------------------------------------

NAMES = Names(endpoint="ads", candidate="ads-4", baseline="ads-3", window="1m")


@pytest.mark.parametrize(
    ("template", "names", "expected"),
    [
        ("rate(x{model={{ candidate }}}[{{ window }}])", NAMES, 'rate(x{model="ads-4"}[1m])'),
        ('x{model="{{candidate}}", ep="{{ endpoint }}"}', NAMES, 'x{model="ads-4", ep="ads"}'),
        ("x{model='{{ baseline }}'}", NAMES, "x{model='ads-3'}"),
        # A name cannot break out of its string, whatever it holds.
        ("x{model={{ candidate }}}", Names("e", 'a"} or vector(1) #', "b", "1m"),
         'x{model="a\\"} or vector(1) #"}'),
        ('x{model="{{ candidate }}"}', Names("e", 'back\\slash"q', "b", "1m"),
         'x{model="back\\\\slash\\"q"}'),
        ("x{model='{{ candidate }}'}", Names("e", "it's", "b", "1m"), "x{model='it\\'s'}"),
        ("x{model={{ candidate }}}", Names("e", "line\nbreak", "b", "1m"),
         'x{model="line\\nbreak"}'),
        # Quotes inside an earlier string do not confuse where the placeholder sits.
        ('label_replace(x, "a", "\\"", "b", "") * on() y{m={{ candidate }}}', NAMES,
         'label_replace(x, "a", "\\"", "b", "") * on() y{m="ads-4"}'),
    ],
)
def test_render_quotes_names_into_promql_safely(
    template: str, names: Names, expected: str
) -> None:
    assert render(template, names, kind="promql") == expected


def test_render_percent_encodes_names_in_urls() -> None:
    names = Names("ads", "a b/&c", "ads-3", "30s")
    url = "http://scores/{{ endpoint }}?model={{ candidate }}&w={{ window }}"
    assert render(url, names, kind="url") == "http://scores/ads?model=a%20b%2F%26c&w=30s"


def test_render_refuses_a_name_in_a_raw_string() -> None:
    with pytest.raises(ValueError, match="raw"):
        render("x{model=`{{ candidate }}`}", NAMES, kind="promql")


def test_each_arm_gets_its_own_name_in_the_candidates_place() -> None:
    cand, base = arm_names(endpoint="e", candidate="c", baseline="b", window="1m")
    template = "x{m={{ candidate }}} / x{m={{ baseline }}}"
    assert render(template, cand, kind="promql") == 'x{m="c"} / x{m="b"}'
    assert render(template, base, kind="promql") == 'x{m="b"} / x{m="b"}'


@pytest.mark.parametrize(
    ("seconds", "expected"),
    [(60, "1m"), (30, "30s"), (90, "1m30s"), (0.5, "500ms"), (3600, "1h"), (7322, "2h2m2s")],
)
def test_window_as_a_promql_duration(seconds: float, expected: str) -> None:
    assert promql_duration(seconds) == expected


# ---- the JSON selector --------------------------------------------------------------------

DOC = {"data": {"value": 0.25, "text": "1.5", "none": None, "flag": True},
       "items": [{"score": 7}, {"score": "NaN"}], "top-level": 3}


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("$.data.value", 0.25),
        ("$.data.text", 1.5),  # numbers written as strings, as Prometheus writes them
        ("$.items[0].score", 7.0),
        ("$.items[1].score", None),  # NaN is no data
        ("$.data.none", None),
        ("$.top-level", 3.0),
    ],
)
def test_selector_picks_a_number(selector: str, expected: float | None) -> None:
    assert select(DOC, selector) == expected


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("$.data.missing", r"\$\.data has no member 'missing'"),
        ("$.items[5].score", r"\$\.items has no item \[5\]"),
        ("$.data", "dict, not a number"),
        ("$.data.flag", "boolean"),
        ("$.items.score", r"\$\.items has no member 'score'"),
        ("data.value", "starts with"),
    ],
)
def test_selector_says_what_is_missing(selector: str, message: str) -> None:
    with pytest.raises(SelectorError, match=message):
        select(DOC, selector)


# ---- validation messages of the plan ------------------------------------------------------


def _plan_with(*checks: dict[str, Any]) -> dict[str, Any]:
    return {**PLAN, "policy": {**PLAN["policy"], "checks": list(checks)}}


@pytest.mark.parametrize(
    ("checks", "field", "message"),
    [
        ([{"metric": "error_rate", "max": "2%"}, {"query": "x{m={{ model }}}", "max": 1}],
         "policy.checks[1].query", "unknown placeholder(s) in the query: model"),
        ([{"query": QUERY}], "policy.checks[0]", "needs max or min"),
        ([{"query": QUERY, "max_ratio": 2}], "policy.checks[0]",
         "max_ratio and max_increase need compare: baseline"),
        ([{"query": QUERY, "compare": "baseline"}], "policy.checks[0]",
         "compare: baseline needs max_ratio"),
        ([{"query": QUERY, "compare": "baseline", "max_ratio": 0.5}],
         "policy.checks[0].max_ratio", "greater than 1"),
        ([{"query": QUERY, "max": 1, "direction": "up"}], "policy.checks[0].direction",
         "'lower' or 'higher'"),
        ([{"query": QUERY, "web": {"url": "http://x", "selector": "$.a"}, "max": 1}],
         "policy.checks[0]", "query (PromQL) or web, not both"),
        ([{"web": {"url": "ftp://x", "selector": "$.a"}, "max": 1}],
         "policy.checks[0].web.url", "http:// or https://"),
        ([{"web": {"url": "http://x", "selector": "$..a"}, "max": 1}],
         "policy.checks[0].web.selector", "is not a selector"),
        ([{"query": QUERY, "max": 1, "step": 3}], "policy.checks[0].step", "unknown field"),
        ([{"query": QUERY, "max": 1}, {"query": QUERY, "max": 1}], "policy",
         "duplicate checks"),
    ],
)
def test_validation_names_the_field(
    checks: list[dict[str, Any]], field: str, message: str
) -> None:
    with pytest.raises(PlanError) as raised:
        check_plan(_plan_with(*checks))
    found = {(i.field, i.message) for i in raised.value.issues}
    assert any(f == field and message in m for f, m in found), found


def test_metric_check_messages_keep_their_paths() -> None:
    with pytest.raises(PlanError) as raised:
        check_plan(_plan_with({"metric": "error_rate", "compare": "baseline"}))
    first = raised.value.issues[0]
    assert (first.field, first.message) == (
        "policy.checks[0]", "compare: baseline needs max_ratio and/or max_increase"
    )


def test_a_policy_of_both_kinds_round_trips_as_stored() -> None:
    plan, pol = check_plan(_plan_with(
        {"metric": "error_rate", "max": "2%"},
        {"name": "score", "web": {"url": "http://s/{{ candidate }}", "selector": "$.v",
                                  "headers": {"X-Key": "k"}}, "min": 0.8},
        {"query": QUERY, "compare": "baseline", "max_increase": 0.01, "direction": "higher"},
    ))
    assert [type(c).__name__ for c in pol.checks] == ["CheckSpec", "QueryCheck", "QueryCheck"]
    assert len(pol.metric_checks) == 1
    assert len(pol.query_checks) == 2
    again = Policy.model_validate(pol.model_dump(mode="json", exclude_none=True))
    assert again == pol
    assert validate_plan(plan.model_dump(mode="json", exclude_none=True)) == plan


def test_the_readme_example_is_a_valid_plan() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme.split("### Checks on your own metrics", 1)[1]
    text = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    plan, pol = check_plan(yaml.safe_load(text))
    assert plan.endpoint == "checkout"
    assert [c.describe() for c in pol.query_checks] == [
        "payment failures vs baseline: max_ratio 1.5, max_increase 0.002",
        "conversion vs baseline: max_increase 0.01, higher is better",
        "relevance min 0.8",
    ]
    (conversion,) = [c for c in pol.query_checks if c.name == "conversion"]
    assert conversion.tolerated(0.05) == pytest.approx(0.04)
    cand, _ = arm_names(endpoint="checkout", candidate="checkout-8", baseline="checkout-7",
                        window="30s")
    (payments,) = [c for c in pol.query_checks if c.name == "payment failures"]
    assert render(payments.template, cand, kind="promql") == (
        'sum(rate(payments_failed_total{model="checkout-8"}[30s])) / '
        'sum(rate(payments_total{model="checkout-8"}[30s]))'
    )
