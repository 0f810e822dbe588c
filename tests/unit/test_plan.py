"""Plans and policies: loading YAML/JSON and precise, per-field validation messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from rollout.plan import (
    ABPlan,
    BlueGreenPlan,
    CanaryPlan,
    PlanError,
    describe_steps,
    load_plan,
    validate_plan,
)
from rollout.policies import PolicyLibrary, PolicyNotFoundError, builtin_policy_dir

CANARY: dict[str, Any] = {
    "name": "ads-v4",
    "endpoint": "ads-endpoint",
    "candidate": {
        "entity_name": "main.ml.ads_model",
        "entity_version": "4",
        "workload_size": "Small",
    },
    "strategy": "canary",
    "steps": [
        {"weight": 5, "bake": "10m"},
        {"weight": 25, "bake": "10m"},
        {"weight": 50, "bake": "20m"},
    ],
    "policy": "default",
    "alerts": [{"type": "webhook", "url": "http://hooks.internal/rollouts"}],
}


def with_(**changes: Any) -> dict[str, Any]:
    data = json.loads(json.dumps(CANARY))
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def test_design_example_loads_from_yaml() -> None:
    plan, policy = load_plan(yaml.safe_dump(CANARY))
    assert isinstance(plan, CanaryPlan)
    assert plan.candidate.served_name == "ads_model-4"
    assert [(s.weight, s.bake) for s in plan.canary_steps()] == [(5, 600), (25, 600), (50, 1200)]
    assert describe_steps(plan) == "5% for 10m, 25% for 10m, 50% for 20m, then 100%"
    assert policy.name == "default"


def test_json_and_yaml_give_the_same_plan() -> None:
    from_json, _ = load_plan(json.dumps(CANARY), content_type="application/json")
    from_yaml, _ = load_plan(yaml.safe_dump(CANARY), content_type="application/yaml")
    assert from_json == from_yaml


def test_numeric_entity_version_is_read_as_text() -> None:
    plan = validate_plan(with_(candidate={"entity_name": "m", "entity_version": 4}))
    assert plan.candidate.entity_version == "4"
    assert plan.candidate.as_served_entity()["name"] == "m-4"


def test_linear_canary_expands_below_100() -> None:
    plan = validate_plan(with_(steps=None, step_weight=20, bake="5m"))
    assert isinstance(plan, CanaryPlan)
    assert [s.weight for s in plan.canary_steps()] == [20, 40, 60, 80]
    capped = validate_plan(with_(steps=None, step_weight=10, max_weight=30, bake="1m"))
    assert isinstance(capped, CanaryPlan)
    assert [s.weight for s in capped.canary_steps()] == [10, 20, 30]


def test_ab_and_blue_green_shapes() -> None:
    ab = validate_plan(
        with_(steps=None, strategy="ab", split=30, duration="2h", objective="latency_p99_ms")
    )
    assert isinstance(ab, ABPlan)
    assert (ab.split, ab.duration) == (30, 7200)
    bg = validate_plan(with_(steps=None, strategy="blue_green", bake="15m"))
    assert isinstance(bg, BlueGreenPlan)
    assert bg.bake == 900
    assert bg.schema_check is True


ERRORS = [
    (
        "weights must strictly increase",
        with_(steps=[{"weight": 25, "bake": "1m"}, {"weight": 25, "bake": "1m"}]),
        "steps[1].weight",
        "strictly increase",
    ),
    ("weight above 100", with_(steps=[{"weight": 120, "bake": "1m"}]), "steps[0].weight", "100"),
    ("weight zero", with_(steps=[{"weight": 0, "bake": "1m"}]), "steps[0].weight", "0"),
    ("negative bake", with_(steps=[{"weight": 5, "bake": "-3m"}]), "steps[0].bake", "duration"),
    ("zero bake", with_(steps=[{"weight": 5, "bake": 0}]), "steps[0].bake", "positive"),
    (
        "unit typo",
        with_(steps=[{"weight": 5, "bake": "10 mins"}]),
        "steps[0].bake",
        "not a duration",
    ),
    ("endpoint name", with_(endpoint="ads endpoint!"), "endpoint", "not a valid endpoint name"),
    (
        "settings for the candidate",
        with_(entity_settings={"ads_model-4": {"burst_scaling_enabled": False}}),
        "entity_settings",
        "state its settings in candidate",
    ),
    (
        "a setting a GET shows",
        with_(entity_settings={"ads-model-3": {"workload_size": "Large"}}),
        "entity_settings.ads-model-3.workload_size",
        "",
    ),
    ("endpoint too long", with_(endpoint="e" * 64), "endpoint", "1 to 63"),
    (
        "candidate name",
        with_(candidate={"name": "a/b", "entity_name": "m", "entity_version": "1"}),
        "candidate.name",
        "served entity",
    ),
    (
        "candidate without a model",
        with_(candidate={"entity_version": "1"}),
        "candidate.entity_name",
        "required",
    ),
    (
        "candidate unknown field",
        with_(candidate={"entity_name": "m", "entity_version": "1", "gpu": True}),
        "candidate.gpu",
        "unknown field",
    ),
    (
        "candidate sizing conflict",
        with_(
            candidate={
                "entity_name": "m",
                "entity_version": "1",
                "workload_size": "Small",
                "min_provisioned_concurrency": 4,
            }
        ),
        "candidate.workload_size",
        "cannot be combined",
    ),
    ("field of another strategy", with_(split=50), "split", "belongs to ab"),
    ("unknown field", with_(colour="red"), "colour", "unknown field"),
    ("unknown strategy", with_(strategy="rolling"), "strategy", "canary, ab or blue_green"),
    ("missing strategy", with_(strategy=None), "strategy", "missing"),
    ("no steps", with_(steps=None), "steps", "needs steps"),
    ("both forms", with_(step_weight=10, bake="1m"), "steps", "not both"),
    ("baseline is the candidate", with_(baseline="ads_model-4"), "baseline", "same"),
    ("alert url", with_(alerts=[{"type": "webhook", "url": "ftp://x"}]), "alerts[0].url", ""),
    ("alert type", with_(alerts=[{"type": "pager", "url": "http://x"}]), "alerts[0].type", ""),
    (
        "ab split out of range",
        with_(steps=None, strategy="ab", split=100, duration="1h"),
        "split",
        "100",
    ),
    ("ab without duration", with_(steps=None, strategy="ab"), "duration", "required"),
    (
        "ab objective it cannot compare",
        with_(steps=None, strategy="ab", duration="1h", objective="latency_p99"),
        "objective",
        "latency_p99_ms",
    ),
    (
        "a step at 100 % (the promotion is implied)",
        with_(steps=[{"weight": 10, "bake": "1m"}, {"weight": 100, "bake": "1h"}]),
        "steps[1].weight",
        "promotion",
    ),
    (
        "smoke failures",
        with_(
            steps=None, strategy="blue_green", bake="1m", smoke={"requests": 3, "max_failures": 3}
        ),
        "smoke.max_failures",
        "smaller",
    ),
]


@pytest.mark.parametrize(("name", "data", "field", "words"), ERRORS, ids=[e[0] for e in ERRORS])
def test_invalid_plans_name_the_field(
    name: str, data: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(PlanError) as caught:
        validate_plan(data)
    fields = {issue.field: issue.message for issue in caught.value.issues}
    assert field in fields, fields
    assert words in fields[field]
    assert field in str(caught.value)


POLICY_ERRORS = [
    ("unknown policy", "nope", "policy", "known policies: default"),
    (
        "unknown metric",
        {"checks": [{"metric": "error_ratio", "max": "1%"}]},
        "policy.checks[0].metric",
        "error_rate",
    ),
    (
        "unknown policy field",
        {"checks": [{"metric": "error_rate", "max": "1%"}], "colour": 1},
        "policy.colour",
        "unknown field",
    ),
    (
        "relative check without tolerance",
        {"checks": [{"metric": "error_rate", "compare": "baseline"}]},
        "policy.checks[0]",
        "max_ratio",
    ),
]


@pytest.mark.parametrize(
    ("name", "policy", "field", "words"), POLICY_ERRORS, ids=[e[0] for e in POLICY_ERRORS]
)
def test_invalid_policies_name_the_field(name: str, policy: Any, field: str, words: str) -> None:
    with pytest.raises(PlanError) as caught:
        load_plan(json.dumps(with_(policy=policy)))
    fields = {issue.field: issue.message for issue in caught.value.issues}
    assert field in fields, fields
    assert words in fields[field]


def test_inline_policy_is_used() -> None:
    _, policy = load_plan(
        json.dumps(
            with_(
                policy={
                    "name": "mine",
                    "judge": "threshold",
                    "checks": [{"metric": "latency_p99_ms", "max": 500}],
                }
            )
        )
    )
    assert policy.name == "mine"
    assert policy.judge == "threshold"


@pytest.mark.parametrize("text", ["{bad json", "a: [1, 2", "- just\n- a list\n", "", "42"])
def test_unreadable_documents_are_plan_errors(text: str) -> None:
    with pytest.raises(PlanError) as caught:
        load_plan(text)
    assert caught.value.issues


def test_builtin_policies_all_load() -> None:
    library = PolicyLibrary()
    names = library.names()
    assert {"default", "strict", "latency-sensitive", "flagger-compatible"} <= set(names)
    for name in names:
        assert library.get(name).name == name
    assert library.get("flagger-compatible").judge == "threshold"
    assert library.get("default").judge == "sequential"


def test_later_policy_directories_override(tmp_path: Path) -> None:
    (tmp_path / "default.yaml").write_text(
        "judge: threshold\nchecks:\n  - {metric: error_rate, max: 5%}\n"
    )
    library = PolicyLibrary([builtin_policy_dir(), tmp_path])
    assert library.get("default").judge == "threshold"
    with pytest.raises(PolicyNotFoundError):
        library.get("missing")


# ---- candidates from Unity Catalog aliases ------------------------------------------------


def _alias_plan(**candidate: Any) -> dict[str, Any]:
    base = {"entity_name": "main.ml.ads_model", "workload_size": "Small"}
    return with_(candidate={**base, **candidate})


def _issues(data: dict[str, Any], *, stored: bool = False) -> dict[str, str]:
    with pytest.raises(PlanError) as caught:
        validate_plan(data, stored=stored)
    return {i.field: i.message for i in caught.value.issues}


def test_alias_instead_of_version() -> None:
    plan = validate_plan(_alias_plan(alias="challenger"))
    assert plan.candidate.alias == "challenger"
    assert plan.candidate.entity_version is None
    assert not plan.candidate.resolved
    assert plan.candidate.describe() == "main.ml.ads_model@challenger (resolved at submission)"
    with pytest.raises(ValueError, match="never resolved"):
        plan.candidate.as_served_entity()
    resolved = plan.candidate.with_version("7")
    assert resolved.describe() == "main.ml.ads_model@challenger = version 7"
    assert resolved.served_name == "ads_model-7"
    # The alias is where the version came from, not a field Databricks knows.
    assert resolved.as_served_entity() == {
        "name": "ads_model-7",
        "entity_name": "main.ml.ads_model",
        "entity_version": "7",
        "workload_size": "Small",
        "scale_to_zero_enabled": False,
    }


def test_version_and_alias_together_is_refused_from_a_user() -> None:
    issues = _issues(_alias_plan(alias="challenger", entity_version="7"))
    assert issues == {
        "candidate.alias": "give entity_version or alias, not both: the controller "
        "resolves the alias to a version at submission"
    }
    # ... but is what the controller stores once it resolved the alias.
    plan = validate_plan(_alias_plan(alias="challenger", entity_version="7"), stored=True)
    assert plan.candidate.describe() == "main.ml.ads_model@challenger = version 7"


def test_neither_version_nor_alias() -> None:
    assert _issues(_alias_plan()) == {
        "candidate.entity_version": "give the model version to serve, or alias to resolve one"
    }


@pytest.mark.parametrize(
    ("candidate", "field", "fragment"),
    [
        ({"alias": "7"}, "candidate.alias", "not a valid alias"),
        ({"alias": "champ-ion"}, "candidate.alias", "not a valid alias"),
        ({"alias": "challenger", "entity_name": "ads_model"}, "candidate.entity_name",
         "not a Unity Catalog model"),
    ],
)
def test_bad_aliases(candidate: dict[str, Any], field: str, fragment: str) -> None:
    issues = _issues(_alias_plan(**candidate))
    assert fragment in issues[field]


def test_on_success_set_alias() -> None:
    data = {**_alias_plan(alias="challenger"), "on_success": {"set_alias": "champion"}}
    plan = validate_plan(data)
    assert plan.on_success is not None
    assert plan.on_success.set_alias == "champion"
    same = {**_alias_plan(alias="challenger"), "on_success": {"set_alias": "challenger"}}
    assert "already names the candidate" in _issues(same)["on_success.set_alias"]
    filled = {**data, "on_success": {"set_alias": "champion", "previous_version": "6"}}
    assert _issues(filled) == {
        "on_success.previous_version": "filled by the controller at submission; leave it out"
    }
    assert validate_plan(filled, stored=True).on_success == plan.on_success.model_copy(
        update={"previous_version": "6"}
    )
    legacy = with_(on_success={"set_alias": "champion"})
    legacy["candidate"]["entity_name"] = "ads_model"
    assert "not a Unity Catalog model" in _issues(legacy)["on_success.set_alias"]


def test_readme_alias_plan_is_valid() -> None:
    """The plan template of the README's "Rollouts from Unity Catalog aliases" validates
    as written (the controller fills in the version at submission)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Rollouts from Unity Catalog aliases", 1)[1]
    block = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    plan, policy = load_plan(block)
    assert plan.candidate.describe() == "main.ml.ads_model@challenger (resolved at submission)"
    assert plan.on_success is not None
    assert plan.on_success.set_alias == "champion"
    assert policy.name == "default"
