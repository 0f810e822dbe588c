"""The plan's ``hooks:`` section: what is accepted, and each refusal naming its field."""

from __future__ import annotations

from typing import Any

import pytest

from rollout.plan import MAX_HOOK_TIMEOUT, PlanError, validate_plan
from rollout.redaction import REDACTED, redacted_plan

PLAN: dict[str, Any] = {
    "endpoint": "ads",
    "candidate": {"entity_name": "main.ml.ads_model", "entity_version": "4"},
    "strategy": "canary",
    "steps": [{"weight": 10, "bake": "10m"}],
}
URL = "https://hooks.example.com/rollouts/T0/secret-path"


def with_hooks(hooks: object) -> dict[str, Any]:
    return {**PLAN, "hooks": hooks}


def issues(hooks: object) -> dict[str, str]:
    with pytest.raises(PlanError) as caught:
        validate_plan(with_hooks(hooks))
    return {issue.field: issue.message for issue in caught.value.issues}


def test_every_hook_with_its_defaults() -> None:
    plan = validate_plan(with_hooks({
        "pre_rollout": {"url": URL, "secret": "s3cr3t"},
        "confirm_promotion": {"url": URL, "timeout": "30s", "retries": 0, "interval": "2m",
                              "limit": "2h", "on_limit": "rollback"},
        "post_rollout": {"url": URL},
        "on_rollback": {"url": URL, "retries": 5},
    }))
    pre, confirm = plan.hooks.pre_rollout, plan.hooks.confirm_promotion
    assert pre is not None
    assert confirm is not None
    assert (pre.timeout, pre.retries, pre.interval, pre.limit, pre.on_limit) == (
        10.0, 2, 60.0, 3600.0, "pause")
    assert (confirm.timeout, confirm.interval, confirm.limit, confirm.on_limit) == (
        30.0, 120.0, 7200.0, "rollback")
    assert [name for name, _ in plan.hooks.named()] == [
        "pre_rollout", "confirm_promotion", "post_rollout", "on_rollback"]
    assert "s3cr3t" not in repr(plan), "the secret never shows in a repr"


def test_no_hooks_is_the_default() -> None:
    assert validate_plan(PLAN).hooks.named() == []


@pytest.mark.parametrize(
    ("hooks", "field", "words"),
    [
        ({"pre_rollout": {"url": "ftp://hooks.example.com/x"}}, "hooks.pre_rollout.url",
         "https?://"),
        ({"pre_rollout": {"url": "hooks.example.com"}}, "hooks.pre_rollout.url", "https?://"),
        ({"post_rollout": {}}, "hooks.post_rollout.url", "Field required"),
        ({"confirm_promotion": {"url": URL, "timeout": -1}}, "hooks.confirm_promotion.timeout",
         "must be positive"),
        ({"on_rollback": {"url": URL, "timeout": "0s"}}, "hooks.on_rollback.timeout",
         "must be positive"),
        ({"pre_rollout": {"url": URL, "timeout": "5m"}}, "hooks.pre_rollout.timeout",
         f"{MAX_HOOK_TIMEOUT:g}"),
        ({"pre_rollout": {"url": URL, "retries": -1}}, "hooks.pre_rollout.retries",
         "greater than or equal to 0"),
        ({"pre_rollout": {"url": URL, "interval": "2h"}}, "hooks.pre_rollout.interval",
         "must not be longer than limit"),
        ({"pre_rollout": {"url": URL, "on_limit": "ignore"}}, "hooks.pre_rollout.on_limit",
         "'pause' or 'rollback'"),
        ({"post_rollout": {"url": URL, "interval": "1m"}}, "hooks.post_rollout.interval",
         "unknown field"),
        ({"pre_deploy": {"url": URL}}, "hooks.pre_deploy",
         "not a hook: use pre_rollout, confirm_promotion, post_rollout, on_rollback"),
    ],
    ids=["ftp", "no scheme", "no url", "negative timeout", "zero timeout", "timeout too long",
         "negative retries", "interval beyond limit", "unknown on_limit",
         "interval on a notification", "unknown hook"],
)
def test_a_bad_hook_is_refused_naming_its_field(hooks: object, field: str, words: str) -> None:
    found = issues(hooks)
    assert field in found, found
    assert words in found[field], found[field]


def test_every_bad_hook_is_listed_at_once() -> None:
    found = issues({"pre_rollout": {"url": "nope", "timeout": -5}, "later": {}})
    assert set(found) == {"hooks.pre_rollout.url", "hooks.pre_rollout.timeout", "hooks.later"}


def test_hook_urls_and_secrets_are_redacted_when_a_plan_is_shown() -> None:
    plan = validate_plan(with_hooks({"pre_rollout": {"url": URL, "secret": "s3cr3t"},
                                     "post_rollout": {"url": URL}}))
    shown = redacted_plan(plan.model_dump(mode="json", exclude_none=True))
    assert shown["hooks"]["pre_rollout"]["url"] == "https://hooks.example.com/…"
    assert shown["hooks"]["pre_rollout"]["secret"] == REDACTED
    assert "secret-path" not in str(shown)
