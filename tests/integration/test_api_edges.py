"""The API at its edges, probed as an attacker or a careless user would: plans built to
amplify, values of the wrong shape, secrets a viewer must not read, alert targets inside the
network, requests a browser on another origin could send, and the OpenAPI document.

In process (ASGI) over the sandbox workspace on real HTTP and a real SQLite store, with the
fixtures of ``test_api``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr
from structlog.testing import capture_logs
from typer.testing import CliRunner

from rollout.alerts.targets import TargetPolicy
from rollout.api import create_api
from rollout.cli import app as cli_app
from rollout.daemon import build
from rollout.errors import ConfigurationProblem
from rollout.plan import MAX_PLAN_BYTES, MAX_STRING_CHARS
from rollout.policies import PolicyLibrary
from rollout.sandbox.server import SandboxServer
from rollout.settings import (
    AlertSettings,
    ApiSettings,
    DatabricksSettings,
    Settings,
    StoreSettings,
)
from rollout.store.base import Store
from tests.integration.test_api import (
    CANARY_YAML,
    ENDPOINT,
    Harness,
    asgi,
    assert_error,
    finish,
    make_endpoint,
    plan_dict,
    serving_client,
    submit_json,
    submit_yaml,
)
from tests.integration.test_cli_client import ApiServer


@pytest.fixture
async def harness(sandbox: SandboxServer, store: Store) -> AsyncIterator[Harness]:
    built = Harness(sandbox, store)
    yield built
    await built.aclose()


@pytest.fixture
async def api(harness: Harness, sandbox_admin: httpx.Client) -> AsyncIterator[httpx.AsyncClient]:
    """An open API (no tokens) with endpoint ``ads`` in the workspace."""
    make_endpoint(sandbox_admin)
    async with asgi(harness.app()) as client:
        yield client

# ---- plan limits -----------------------------------------------------------------------------


def alias_amplification_yaml() -> str:
    """About 20 KB of YAML that stands for tens of megabytes: a long string, aliased in a list
    that is aliased again, inside a field of the candidate that takes any string."""
    chunk = "x" * 10_000
    return (
        f"endpoint: {ENDPOINT}\n"
        "strategy: canary\n"
        "steps: [{weight: 10, bake: 5m}]\n"
        f"pad: &s {chunk}\n"
        "list: &l [" + ", ".join(["*s"] * 60) + "]\n"
        "more: &m [" + ", ".join(["*l"] * 60) + "]\n"
        "candidate:\n"
        "  entity_name: main.ml.ads_model\n"
        "  entity_version: '4'\n"
        "  environment_vars: {A: *s}\n"
        "smoke: {body: {rows: *m}}\n"
    )


async def test_the_alias_amplification_plan_is_413_and_nothing_is_stored(
    api: httpx.AsyncClient, store: Store
) -> None:
    text = alias_amplification_yaml()
    assert len(text) < 50_000
    response = await submit_yaml(api, text)
    error = assert_error(response, 413, "plan_too_large")
    assert str(MAX_PLAN_BYTES) in error["message"]
    assert store.list() == []


async def test_an_oversized_string_is_422_naming_its_field_and_nothing_is_stored(
    api: httpx.AsyncClient, store: Store
) -> None:
    plan = plan_dict(name=None)
    plan["candidate"]["environment_vars"] = {"TOKEN": "y" * (MAX_STRING_CHARS + 1)}
    error = assert_error(await submit_json(api, plan), 422, "invalid_plan")
    assert error["details"][0]["field"] == "candidate.environment_vars.TOKEN"
    assert str(MAX_STRING_CHARS) in error["details"][0]["message"]
    assert store.list() == []


async def test_a_string_at_the_limit_is_accepted(api: httpx.AsyncClient) -> None:
    plan = plan_dict()
    plan["candidate"]["environment_vars"] = {"NOTE": "y" * MAX_STRING_CHARS}
    response = await submit_json(api, plan)
    assert response.status_code == 201, response.text


async def test_non_scalars_where_a_scalar_belongs_are_422_naming_the_field(
    api: httpx.AsyncClient, store: Store
) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"strategy": {}}, "strategy"),
        ({"strategy": ["canary"]}, "strategy"),
        ({"policy": ["default"]}, "policy"),
        ({"steps": [{"weight": [10], "bake": "5m"}]}, "steps[0].weight"),
        ({"steps": [{"weight": 10, "bake": {"m": 5}}]}, "steps[0].bake"),
        ({"endpoint": {"name": ENDPOINT}}, "endpoint"),
    ]
    for fields, field in cases:
        error = assert_error(await submit_json(api, plan_dict(**fields)), 422, "invalid_plan")
        assert [d["field"] for d in error["details"]] == [field], (fields, error)
    # The same in YAML, as `strategy: {}` was first sent.
    yaml_text = CANARY_YAML.replace("strategy: canary", "strategy: {}")
    error = assert_error(await submit_yaml(api, yaml_text), 422, "invalid_plan")
    assert error["details"][0]["field"] == "strategy"
    assert store.list() == []


async def test_plans_as_json_text_count_the_same(api: httpx.AsyncClient) -> None:
    # A JSON body has no aliases, but a long enough one is refused the same way (413 for the
    # body, or the plan's own limit when the body limit allows more).
    plan = plan_dict()
    plan["smoke_notes"] = ["z" * 1000] * 300
    response = await api.post(
        "/api/v1/rollouts", content=json.dumps(plan), headers={"Content-Type": "application/json"}
    )
    assert_error(response, 413, "plan_too_large")


# ---- secrets stay secret ---------------------------------------------------------------------

OPERATOR = "op-edge-token-1"
VIEWER = "view-edge-token-2"
TOKENS = f"{OPERATOR}:operator,{VIEWER}:viewer"
HOOK_SECRET = "whsec-Literal-Hook-Secret-0042"
SLACK_PATH = "/services/T0EDGE/B0EDGE/SlackPathSecret0042"
SLACK_URL = f"https://hooks.slack.com{SLACK_PATH}"
HOOK_URL = "https://hooks.example.com/rollouts/HookPathSecret0042"
SECRETS = (HOOK_SECRET, "SlackPathSecret0042", "HookPathSecret0042")
# The test's receivers have public names; nothing here resolves them.
NAMED_TARGETS = TargetPolicy.parse("hooks.slack.com, hooks.example.com")


def app_with(
    harness: Harness, *, tokens: str | None = None, targets: TargetPolicy | None = None
) -> FastAPI:
    client = serving_client(harness.sandbox)
    harness.clients.append(client)
    return create_api(
        store=harness.store,
        client=client,
        clock=harness.sandbox.clock,
        library=PolicyLibrary(),
        registry=harness.registry,
        settings=ApiSettings(tokens=SecretStr(tokens) if tokens else None),
        wake=harness.woken.append,
        alert_targets=targets,
    )


def secret_plan(**fields: Any) -> dict[str, Any]:
    return plan_dict(
        alerts=[
            {"type": "webhook", "url": HOOK_URL, "secret": HOOK_SECRET, "severity": "warn"},
            {"type": "slack", "url": SLACK_URL},
        ],
        **fields,
    )


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets or SECRETS:
        assert secret not in text, f"{secret!r} leaked"


async def test_viewers_the_page_and_events_never_see_alert_secrets_and_operators_rotate_them(
    harness: Harness, sandbox_admin: httpx.Client, store: Store
) -> None:
    make_endpoint(sandbox_admin)
    app = app_with(harness, tokens=TOKENS, targets=NAMED_TARGETS)
    with capture_logs() as logs:
        async with asgi(app, OPERATOR) as operator, asgi(app, VIEWER) as viewer:
            submitted = await submit_json(operator, secret_plan())
            assert submitted.status_code == 201, submitted.text
            rollout_id = submitted.json()["id"]
            assert_no_secret(submitted.text)
            # Stored and used as given.
            stored = store.get(rollout_id).plan["alerts"]
            assert stored[0]["secret"] == HOOK_SECRET
            assert stored[1]["url"] == SLACK_URL

            reads = [
                await viewer.get("/api/v1/rollouts"),
                await viewer.get(f"/api/v1/rollouts/{rollout_id}"),
                await viewer.get(f"/api/v1/rollouts/{rollout_id}/events"),
                await viewer.get(f"/api/v1/rollouts/{rollout_id}/series"),
            ]
            for response in reads:
                assert response.status_code == 200, response.text
                assert_no_secret(response.text)
            shown = reads[1].json()["plan"]["alerts"]
            assert shown[0]["url"] == "https://hooks.example.com/…"
            assert shown[0]["secret"] == "(redacted)"
            assert shown[1]["url"] == "https://hooks.slack.com/…"

            # A viewer cannot replace them; an operator can, and cannot read them back.
            new_secret = "whsec-Rotated-Secret-0043"
            body = {"alerts": [{"type": "webhook", "url": HOOK_URL.replace("0042", "0043"),
                                "secret": new_secret}]}
            refused = await viewer.put(f"/api/v1/rollouts/{rollout_id}/alerts", json=body)
            assert_error(refused, 403, "forbidden")
            rotated = await operator.put(f"/api/v1/rollouts/{rollout_id}/alerts", json=body)
            assert rotated.status_code == 200, rotated.text
            assert_no_secret(rotated.text, new_secret, "HookPathSecret0043")
            assert rotated.json()["plan"]["alerts"] == [
                {"type": "webhook", "url": "https://hooks.example.com/…",
                 "secret": "(redacted)", "severity": "info"}
            ]
            events = (await viewer.get(f"/api/v1/rollouts/{rollout_id}/events")).json()
            assert events["events"][-1]["kind"] == "alerts_replaced"
            assert_no_secret(json.dumps(events), new_secret, "HookPathSecret0043", *SECRETS)
            record = store.get(rollout_id)
            assert record.plan["alerts"] == [
                {"type": "webhook", "url": HOOK_URL.replace("0042", "0043"),
                 "secret": new_secret, "severity": "info"}
            ]
            # The page is served to anyone: it holds no data of its own.
            page = await viewer.get("/")
            assert page.status_code == 200
            assert_no_secret(page.text)
    assert logs, "the API logged nothing: the log check would prove nothing"
    assert_no_secret(repr(logs), new_secret, "HookPathSecret0043", *SECRETS)


async def test_a_finished_rollout_takes_no_new_channels(
    harness: Harness, sandbox_admin: httpx.Client, store: Store
) -> None:
    make_endpoint(sandbox_admin)
    async with asgi(app_with(harness, targets=NAMED_TARGETS)) as api:
        rollout_id = (await submit_json(api, secret_plan())).json()["id"]
        finish(store, rollout_id, "aborted")
        response = await api.put(f"/api/v1/rollouts/{rollout_id}/alerts", json={"alerts": []})
        assert_error(response, 409, "rollout_finished")
        missing = await api.put("/api/v1/rollouts/nope/alerts", json={"alerts": []})
        assert_error(missing, 404, "rollout_not_found")


def test_the_cli_never_prints_alert_secrets(sandbox: SandboxServer, store: Store,
                                            sandbox_admin: httpx.Client) -> None:
    make_endpoint(sandbox_admin)
    with ApiServer(sandbox, store, tokens=TOKENS, alert_targets=NAMED_TARGETS) as server:
        created = httpx.post(
            f"{server.url}/api/v1/rollouts", json=secret_plan(),
            headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=10,
        )
        assert created.status_code == 201, created.text
        rollout_id = created.json()["id"]
        runner = CliRunner()
        for args in (["get", rollout_id, "--output", "json"], ["get", rollout_id],
                     ["list", "--output", "json"], ["events", rollout_id, "--output", "json"]):
            result = runner.invoke(
                cli_app, [*args, "--server", server.url, "--token", VIEWER]
            )
            assert result.exit_code == 0, result.output
            assert_no_secret(result.output)
        shown = json.loads(runner.invoke(
            cli_app, ["get", rollout_id, "-o", "json", "--server", server.url, "--token", VIEWER]
        ).stdout)
        assert shown["plan"]["alerts"][1]["url"] == "https://hooks.slack.com/…"


# ---- where alerts may go ---------------------------------------------------------------------

REFUSED_BY_DEFAULT = [
    "http://127.0.0.1:9093/hook",
    "http://[::1]:9093/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.1.2.3/hook",
    "http://localhost:9093/hook",  # a name resolving to loopback
]


@pytest.mark.parametrize("url", REFUSED_BY_DEFAULT)
async def test_internal_alert_targets_are_refused_by_default(
    harness: Harness, sandbox_admin: httpx.Client, store: Store, url: str
) -> None:
    make_endpoint(sandbox_admin)
    async with asgi(app_with(harness)) as api:
        plan = plan_dict(alerts=[{"type": "webhook", "url": url}])
        error = assert_error(await submit_json(api, plan), 422, "invalid_plan")
        assert [d["field"] for d in error["details"]] == ["alerts[0].url"]
        assert "ROLLOUT_ALERTS_ALLOWED_HOSTS" in error["message"]
    assert store.list() == []


async def test_internal_hook_targets_are_refused_like_alert_targets(
    harness: Harness, sandbox_admin: httpx.Client, store: Store
) -> None:
    make_endpoint(sandbox_admin)
    async with asgi(app_with(harness)) as api:
        plan = plan_dict(hooks={
            "pre_rollout": {"url": "http://127.0.0.1:9093/gate", "secret": "s3cr3t"},
            "confirm_promotion": {"url": "https://hooks.example.com/confirm"},
            "on_rollback": {"url": "http://169.254.169.254/latest/meta-data/"},
        })
        error = assert_error(await submit_json(api, plan), 422, "invalid_plan")
        assert [d["field"] for d in error["details"]] == [
            "hooks.pre_rollout.url", "hooks.on_rollback.url"]
        assert "ROLLOUT_ALERTS_ALLOWED_HOSTS" in error["message"]
        assert "s3cr3t" not in json.dumps(error)
    assert store.list() == []


@pytest.mark.parametrize(
    ("url", "allowed", "private"),
    [
        ("http://127.0.0.1:9093/hook", "127.0.0.1", False),
        ("http://[::1]:9093/hook", "::1", False),
        ("http://169.254.169.254/hook", "169.254.169.254", False),
        ("http://10.1.2.3/hook", "", True),
        ("http://10.1.2.3/hook", "10.0.0.0/8", False),
        ("http://localhost:9093/hook", "localhost", False),
        ("http://localhost:9093/hook", "127.0.0.0/8, ::1", False),
    ],
)
async def test_internal_alert_targets_are_accepted_once_allowed(
    harness: Harness, sandbox_admin: httpx.Client, url: str, allowed: str, private: bool
) -> None:
    make_endpoint(sandbox_admin)
    targets = TargetPolicy.parse(allowed, allow_private=private)
    async with asgi(app_with(harness, targets=targets)) as api:
        response = await submit_json(api, plan_dict(alerts=[{"type": "webhook", "url": url}]))
        assert response.status_code == 201, response.text


async def test_private_ranges_do_not_open_loopback_or_metadata() -> None:
    targets = TargetPolicy.parse("", allow_private=True)
    assert await targets.refusal("http://192.168.1.10/hook") is None
    for url in ("http://127.0.0.1/hook", "http://169.254.169.254/", "http://[fd00:ec2::254]/",
                "http://[::ffff:127.0.0.1]/hook", "http://0.0.0.0/hook",
                "http://\x9d.example/hook"):  # no name DNS can carry: refused, not a 500
        assert await targets.refusal(url) is not None, url


async def test_replaced_channels_are_checked_like_submitted_ones(
    harness: Harness, sandbox_admin: httpx.Client
) -> None:
    make_endpoint(sandbox_admin)
    async with asgi(app_with(harness, targets=NAMED_TARGETS)) as api:
        rollout_id = (await submit_json(api, secret_plan())).json()["id"]
        response = await api.put(
            f"/api/v1/rollouts/{rollout_id}/alerts",
            json={"alerts": [{"type": "webhook", "url": "https://hooks.slack.com/ok"},
                             {"type": "webhook", "url": "http://169.254.169.254/x"}]},
        )
        error = assert_error(response, 422, "invalid_plan")
        assert [d["field"] for d in error["details"]] == ["alerts[1].url"]


# ---- browsers cannot be turned against it ----------------------------------------------------


async def test_a_cross_origin_simple_post_is_refused_on_the_open_api(
    api: httpx.AsyncClient, store: Store
) -> None:
    rollout_id = (await submit_json(api, plan_dict())).json()["id"]
    pause = f"/api/v1/rollouts/{rollout_id}/pause"
    # What a page on another origin can send without a preflight: text/plain, a form, or a
    # bodiless fetch.
    for headers, body in (
        ({"Content-Type": "text/plain"}, b""),
        ({"Content-Type": "text/plain;charset=UTF-8"}, b'{"reason": "x"}'),
        ({"Content-Type": "application/x-www-form-urlencoded"}, b"reason=x"),
        ({"Content-Type": "multipart/form-data; boundary=x"}, b"--x--"),
        ({}, b""),
    ):
        response = await api.post(pause, content=body, headers=headers)
        assert_error(response, 415, "unsupported_media_type")
    # A browser saying the request is cross-site is refused whatever its content type.
    response = await api.post(pause, json={}, headers={"Sec-Fetch-Site": "cross-site"})
    assert_error(response, 403, "cross_site")
    plan_as_text = json.dumps(plan_dict(endpoint="other"))
    refused = await api.post("/api/v1/rollouts", content=plan_as_text,
                             headers={"Content-Type": "text/plain"})
    assert_error(refused, 415, "unsupported_media_type")
    assert store.pending_commands(rollout_id) == []
    assert len(store.list()) == 1
    # What the CLI and the page send is accepted (three commands: the same one twice is
    # refused as already queued).
    assert (await api.post(pause, json={})).status_code == 202
    promote = f"/api/v1/rollouts/{rollout_id}/promote"
    assert (await api.post(promote, headers={"X-Rollout-Client": "cli"})).status_code == 202
    abort = f"/api/v1/rollouts/{rollout_id}/abort"
    same_site = await api.post(abort, json={}, headers={"Sec-Fetch-Site": "same-origin"})
    assert same_site.status_code == 202
    assert len(store.pending_commands(rollout_id)) == 3


async def test_a_foreign_host_is_refused_on_the_open_api(harness: Harness) -> None:
    app = harness.app()
    for base in ("http://127.0.0.1:8080", "http://localhost", "http://[::1]:9000"):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=base) as c:
            assert (await c.get("/api/v1/rollouts")).status_code == 200, base
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app), base_url="http://rebound.attacker.example:8080"
    ) as client:
        for path in ("/api/v1/rollouts", "/healthz", "/"):
            assert_error(await client.get(path), 421, "host_not_allowed")
        response = await client.post("/api/v1/rollouts/abc/abort", json={})
        assert_error(response, 421, "host_not_allowed")


async def test_allowed_hosts_replace_the_loopback_names(harness: Harness) -> None:
    client = serving_client(harness.sandbox)
    harness.clients.append(client)
    app = create_api(
        store=harness.store, client=client, clock=harness.sandbox.clock,
        library=PolicyLibrary(), registry=harness.registry,
        settings=ApiSettings(tokens=SecretStr(TOKENS), allowed_hosts="rollout.internal"),
    )
    headers = {"Authorization": f"Bearer {VIEWER}"}
    for base, status in (("http://rollout.internal:8080", 200), ("http://127.0.0.1", 421)):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app), base_url=base,
                                     headers=headers) as api:
            assert (await api.get("/api/v1/rollouts")).status_code == status, base


async def test_with_tokens_and_no_allowed_hosts_any_host_is_served(harness: Harness) -> None:
    app = harness.app(tokens=TOKENS)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app),
                                 base_url="http://rollout:8080",
                                 headers={"Authorization": f"Bearer {VIEWER}"}) as api:
        assert (await api.get("/api/v1/rollouts")).status_code == 200


async def test_the_openapi_document_declares_the_bearer_scheme_even_when_open(
    harness: Harness,
) -> None:
    async with asgi(harness.app()) as api:
        document = (await api.get("/openapi.json")).json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["HTTPBearer"] == {**schemes["HTTPBearer"], "type": "http", "scheme": "bearer"}
    put = document["paths"]["/api/v1/rollouts/{rollout_id}/alerts"]["put"]
    assert put["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/AlertsBody"}
    assert "AlertChannel" in document["components"]["schemas"]


async def test_the_daemon_refuses_a_default_channel_to_an_address_not_allowed(
    sandbox: SandboxServer, tmp_path: Path
) -> None:
    channels = json.dumps([{"type": "webhook", "url": "http://169.254.169.254/hook"}])

    def settings(allowed: str) -> Settings:
        return Settings(
            databricks=DatabricksSettings(host=sandbox.url, token=sandbox.token),
            store=StoreSettings(url=f"sqlite:///{tmp_path / 'rollout.db'}"),
            api=ApiSettings(port=0),
            alerts=AlertSettings(channels=channels, allowed_hosts=allowed),
        )

    with pytest.raises(ConfigurationProblem, match="ROLLOUT_ALERTS_ALLOWED_HOSTS"):
        build(settings(""))
    controller = build(settings("169.254.169.254"))
    try:
        assert controller.dispatcher.targets.literal_refusal("http://169.254.169.254/") is None
    finally:
        controller.sock.close()
        controller.store.close()
        await controller.client.aclose()
        await controller.alerts_http.aclose()


async def test_a_policy_of_the_wrong_kind_is_422_on_policy(api: httpx.AsyncClient) -> None:
    for policy in (5, True, {1: "x"}):
        body = json.dumps(plan_dict(policy=policy)) if not isinstance(policy, dict) else (
            "endpoint: ads\nstrategy: canary\ncandidate: {entity_name: m.a, entity_version: '1'}"
            "\nsteps: [{weight: 5, bake: 1m}]\npolicy: {1: x}\n"
        )
        kind = "application/yaml" if isinstance(policy, dict) else "application/json"
        response = await api.post("/api/v1/rollouts", content=body,
                                  headers={"Content-Type": kind})
        error = assert_error(response, 422, "invalid_plan")
        fields = [d["field"] for d in error["details"]]
        assert fields, error
        assert all(f.startswith("policy") for f in fields), error
        assert not any("str" in f for f in fields), fields  # no pydantic union tags
