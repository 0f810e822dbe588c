"""Teams and PagerDuty channels through the HTTP API: checked at submission (fields, targets),
stored as given, and never shown back: not the routing key, not a workflow URL's signature."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import httpx
import pytest
from structlog.testing import capture_logs

from rollout.alerts.targets import TargetPolicy
from rollout.sandbox.server import SandboxServer
from rollout.store.base import Store
from tests.integration.test_api import Harness, asgi, assert_error, plan_dict, submit_json
from tests.integration.test_api_edges import (
    OPERATOR,
    TOKENS,
    VIEWER,
    app_with,
    assert_no_secret,
    make_endpoint,
)

ROUTING_KEY = "PdKey0123456789abcdef0123456789Z"
ROTATED_KEY = "PdKeyRotated0123456789abcdef0123"
TEAMS_URL = (
    "https://prod-01.westeurope.logic.azure.com/workflows/Flow0042/triggers/manual/paths/"
    "invoke?api-version=2016-06-01&sig=WorkflowSig0042"
)
SECRETS = (ROUTING_KEY, "WorkflowSig0042", "Flow0042")
# Public names; nothing here resolves them.
TARGETS = TargetPolicy.parse("events.pagerduty.com, prod-01.westeurope.logic.azure.com")
CHANNELS = [
    {"type": "pagerduty", "routing_key": ROUTING_KEY},
    {"type": "teams", "url": TEAMS_URL, "severity": "warn"},
]


@pytest.fixture
async def harness(sandbox: SandboxServer, store: Store) -> AsyncIterator[Harness]:
    built = Harness(sandbox, store)
    yield built
    await built.aclose()


def assert_hidden(text: str, *secrets: str) -> None:
    assert_no_secret(text, *(secrets or SECRETS))


async def test_oncall_channels_are_stored_as_given_and_shown_redacted(
    harness: Harness, sandbox_admin: httpx.Client, store: Store
) -> None:
    make_endpoint(sandbox_admin)
    app = app_with(harness, tokens=TOKENS, targets=TARGETS)
    with capture_logs() as logs:
        async with asgi(app, OPERATOR) as operator, asgi(app, VIEWER) as viewer:
            submitted = await submit_json(operator, plan_dict(alerts=CHANNELS))
            assert submitted.status_code == 201, submitted.text
            rollout_id = submitted.json()["id"]
            assert_hidden(submitted.text)
            stored = store.get(rollout_id).plan["alerts"]
            assert stored[0]["routing_key"] == ROUTING_KEY
            assert stored[0]["url"] == "https://events.pagerduty.com/v2/enqueue"
            assert stored[0]["severity"] == "warn"
            assert stored[1]["url"] == TEAMS_URL

            shown = await viewer.get(f"/api/v1/rollouts/{rollout_id}")
            assert shown.status_code == 200, shown.text
            assert_hidden(shown.text)
            pd, teams = shown.json()["plan"]["alerts"]
            assert pd["routing_key"] == "(redacted)"
            assert pd["url"] == "https://events.pagerduty.com/…"
            assert teams["url"] == "https://prod-01.westeurope.logic.azure.com/…"

            body = {"alerts": [{"type": "pagerduty", "routing_key": ROTATED_KEY}]}
            rotated = await operator.put(f"/api/v1/rollouts/{rollout_id}/alerts", json=body)
            assert rotated.status_code == 200, rotated.text
            assert_hidden(rotated.text, ROTATED_KEY, *SECRETS)
            events = await viewer.get(f"/api/v1/rollouts/{rollout_id}/events")
            assert_hidden(events.text, ROTATED_KEY, *SECRETS)
            assert store.get(rollout_id).plan["alerts"][0]["routing_key"] == ROTATED_KEY
    assert logs, "the API logged nothing: the log check would prove nothing"
    assert_hidden(json.dumps(logs, default=str), ROTATED_KEY, *SECRETS)


async def test_a_pager_without_its_routing_key_is_refused_by_field(
    harness: Harness, sandbox_admin: httpx.Client, store: Store
) -> None:
    make_endpoint(sandbox_admin)
    async with asgi(app_with(harness, targets=TARGETS)) as api:
        response = await submit_json(api, plan_dict(alerts=[{"type": "pagerduty"}]))
        error = assert_error(response, 422, "invalid_plan")
        [detail] = error["details"]
        assert detail["field"] == "alerts[0].routing_key"
        assert "integration key" in detail["message"]
        rollout_id = (await submit_json(api, plan_dict(alerts=CHANNELS))).json()["id"]
        replaced = await api.put(
            f"/api/v1/rollouts/{rollout_id}/alerts",
            json={"alerts": [{"type": "pagerduty", "routing_key": "short"}]},
        )
        error = assert_error(replaced, 422, "invalid_request")
        assert [d["field"] for d in error["details"]] == ["alerts[0].routing_key"]
        assert "short" not in replaced.text


async def test_a_pager_url_inside_the_network_is_refused_at_submission(
    harness: Harness, sandbox_admin: httpx.Client, store: Store
) -> None:
    make_endpoint(sandbox_admin)
    async with asgi(app_with(harness)) as api:
        plan = plan_dict(alerts=[{"type": "pagerduty", "routing_key": ROUTING_KEY,
                                  "url": "http://127.0.0.1:9/v2/enqueue"}])
        error = assert_error(await submit_json(api, plan), 422, "invalid_plan")
        assert [d["field"] for d in error["details"]] == ["alerts[0].url"]
    assert store.list() == []
