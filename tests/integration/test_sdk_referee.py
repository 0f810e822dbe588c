"""databricks-sdk as the referee: the sandbox as the SDK sees it, and our model as the SDK's.

Two halves. First, the SDK's own ``WorkspaceClient(...).serving_endpoints`` drives a real
sandbox server, call by call: every call it sends must be accepted and every answer must read
into the SDK's dataclasses as Databricks' would, its waiters (``create_and_wait``,
``update_config_and_wait``) must end as they do against a workspace, and the sandbox's errors
must surface as the SDK's error classes. The server runs on the system clock (the waiters sleep
for real, a second or so per poll) with half-second updates, so each waiter returns within a
few seconds; every wait has a short timeout.

Second, the project's endpoint model is fed the SDK's own ``ServingEndpointDetailed`` with every
field populated: each field the SDK knows is either read by the model or on a list of fields
ignored on purpose, with the reason. A field the SDK adds later is on neither list, and the test
fails until someone decides.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
import typing
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from databricks.sdk import WorkspaceClient
from databricks.sdk.errors import (
    InvalidParameterValue,
    NotFound,
    OperationFailed,
    ResourceAlreadyExists,
    ResourceConflict,
)
from databricks.sdk.service import serving as sdk

from rollout.clock import SystemClock
from rollout.metrics.parse import parse_export_metrics
from rollout.sandbox.server import SandboxServer
from rollout.serving.models import ConfigSpec, Endpoint

pytestmark = pytest.mark.slow

WAIT = timedelta(seconds=20)


@pytest.fixture(scope="module")
def server() -> Iterator[SandboxServer]:
    with SandboxServer(clock=SystemClock(), window_seconds=1.0, update_seconds=0.5) as sandbox:
        yield sandbox


@pytest.fixture
def w(server: SandboxServer) -> WorkspaceClient:
    server.workspace.reset()
    return WorkspaceClient(host=server.url, token=server.token, auth_type="pat")


@pytest.fixture
def admin(server: SandboxServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.admin_url, timeout=10.0) as client:
        yield client


def entity(version: str) -> sdk.ServedEntityInput:
    return sdk.ServedEntityInput(
        name=f"ads-{version}",
        entity_name="main.ml.ads",
        entity_version=version,
        workload_size="Small",
        scale_to_zero_enabled=False,
    )


def routes(split: dict[str, int]) -> sdk.TrafficConfig:
    return sdk.TrafficConfig(
        routes=[sdk.Route(served_entity_name=k, traffic_percentage=v) for k, v in split.items()]
    )


def create(w: WorkspaceClient, name: str = "ads") -> sdk.ServingEndpointDetailed:
    return w.serving_endpoints.create_and_wait(
        name=name,
        config=sdk.EndpointCoreConfigInput(name=name, served_entities=[entity("3")]),
        tags=[sdk.EndpointTag(key="team", value="ml")],
        rate_limits=[sdk.RateLimit(calls=100, renewal_period=sdk.RateLimitRenewalPeriod.MINUTE)],
        timeout=WAIT,
    )


# ---- the sandbox, call by call ------------------------------------------------------------


def test_create_get_list_update_delete_with_the_waiters(w: WorkspaceClient) -> None:
    created = create(w)
    assert created.state is not None
    assert created.state.config_update is sdk.EndpointStateConfigUpdate.NOT_UPDATING
    assert created.state.ready is sdk.EndpointStateReady.READY
    assert created.config is not None
    assert [e.name for e in created.config.served_entities or []] == ["ads-3"]

    got = w.serving_endpoints.get("ads")
    assert got.id == created.id
    assert got.tags == [sdk.EndpointTag(key="team", value="ml")]
    assert [e.name for e in w.serving_endpoints.list()] == ["ads"]

    updated = w.serving_endpoints.update_config_and_wait(
        "ads", served_entities=[entity("3"), entity("4")],
        traffic_config=routes({"ads-3": 90, "ads-4": 10}), timeout=WAIT,
    )
    assert updated.config is not None
    assert updated.config.config_version == 2
    assert updated.pending_config is None
    split = {r.served_entity_name: r.traffic_percentage
             for r in (updated.config.traffic_config or sdk.TrafficConfig()).routes or []}
    assert split == {"ads-3": 90, "ads-4": 10}
    # What the SDK read back, the controller reads the same way.
    ours = Endpoint.model_validate(updated.as_dict())
    assert ConfigSpec.from_endpoint(ours).split == {"ads-3": 90, "ads-4": 10}

    w.serving_endpoints.delete("ads")
    with pytest.raises(NotFound):
        w.serving_endpoints.get("ads")


def test_errors_arrive_as_the_sdks_classes(w: WorkspaceClient, admin: httpx.Client) -> None:
    with pytest.raises(NotFound, match="not found"):
        w.serving_endpoints.get("missing")
    create(w)
    with pytest.raises(ResourceAlreadyExists):
        create(w)
    with pytest.raises(InvalidParameterValue, match="sum to 100"):
        w.serving_endpoints.update_config(
            "ads", served_entities=[entity("3"), entity("4")],
            traffic_config=routes({"ads-3": 80, "ads-4": 10}),
        )
    with pytest.raises(InvalidParameterValue, match=r"config\.name"):
        w.serving_endpoints.create(
            name="other", config=sdk.EndpointCoreConfigInput(name="ads",
                                                             served_entities=[entity("3")]),
        )
    # A second update while one is in flight: refused, then the first one is waited out.
    slow = admin.put("/endpoints/ads/updates", json={"duration_seconds": 2.0})
    assert slow.status_code == 200, slow.text
    waiter = w.serving_endpoints.update_config(
        "ads", served_entities=[entity("3"), entity("4")],
        traffic_config=routes({"ads-3": 50, "ads-4": 50}),
    )
    with pytest.raises(ResourceConflict, match="currently updating"):
        w.serving_endpoints.update_config(
            "ads", served_entities=[entity("3")], traffic_config=routes({"ads-3": 100})
        )
    assert waiter.result(timeout=WAIT).state is not None


def test_waiters_fail_and_time_out_as_against_a_workspace(
    w: WorkspaceClient, admin: httpx.Client
) -> None:
    create(w)
    failing = admin.put("/endpoints/ads/updates", json={"fail_next": 1})
    assert failing.status_code == 200, failing.text
    with pytest.raises(OperationFailed, match="UPDATE_FAILED"):
        w.serving_endpoints.update_config_and_wait(
            "ads", served_entities=[entity("3"), entity("5")],
            traffic_config=routes({"ads-3": 90, "ads-5": 10}), timeout=WAIT,
        )
    # The failed update left the old config serving.
    live = w.serving_endpoints.get("ads")
    assert live.config is not None
    assert [e.name for e in live.config.served_entities or []] == ["ads-3"]

    slow = admin.put("/endpoints/ads/updates", json={"duration_seconds": 60.0})
    assert slow.status_code == 200, slow.text
    with pytest.raises(TimeoutError):
        w.serving_endpoints.update_config_and_wait(
            "ads", served_entities=[entity("3"), entity("4")],
            traffic_config=routes({"ads-3": 90, "ads-4": 10}), timeout=timedelta(seconds=1.5),
        )


def test_tags_rate_limits_ai_gateway_notifications(w: WorkspaceClient) -> None:
    create(w)
    tags = w.serving_endpoints.patch(
        "ads", add_tags=[sdk.EndpointTag(key="owner", value="ads-team")], delete_tags=["team"]
    )
    assert tags.tags == [sdk.EndpointTag(key="owner", value="ads-team")]

    limits = w.serving_endpoints.put("ads", rate_limits=[
        sdk.RateLimit(calls=10, renewal_period=sdk.RateLimitRenewalPeriod.MINUTE,
                      key=sdk.RateLimitKey.ENDPOINT)
    ])
    assert limits.rate_limits == [sdk.RateLimit(
        calls=10, renewal_period=sdk.RateLimitRenewalPeriod.MINUTE, key=sdk.RateLimitKey.ENDPOINT
    )]

    gateway = w.serving_endpoints.put_ai_gateway(
        "ads",
        usage_tracking_config=sdk.AiGatewayUsageTrackingConfig(enabled=True),
        rate_limits=[sdk.AiGatewayRateLimit(
            renewal_period=sdk.AiGatewayRateLimitRenewalPeriod.MINUTE, calls=5,
            key=sdk.AiGatewayRateLimitKey.USER,
        )],
    )
    assert gateway.usage_tracking_config == sdk.AiGatewayUsageTrackingConfig(enabled=True)
    got = w.serving_endpoints.get("ads")
    assert got.ai_gateway is not None
    assert got.ai_gateway.usage_tracking_config == sdk.AiGatewayUsageTrackingConfig(enabled=True)
    # A full replace: what is left out is unset.
    w.serving_endpoints.put_ai_gateway(
        "ads", inference_table_config=sdk.AiGatewayInferenceTableConfig(enabled=False)
    )
    replaced = w.serving_endpoints.get("ads").ai_gateway
    assert replaced is not None
    assert replaced.usage_tracking_config is None
    assert replaced.rate_limits in (None, [])

    with pytest.raises(InvalidParameterValue, match="renewal_period"):
        w.api_client.do("PUT", "/api/2.0/serving-endpoints/ads/rate-limits",
                        body={"rate_limits": [{"calls": 1, "renewal_period": "hour"}]})

    notified = w.serving_endpoints.update_notifications(
        "ads", email_notifications=sdk.EmailNotifications(on_update_failure=["a@example.com"])
    )
    assert notified.email_notifications == sdk.EmailNotifications(
        on_update_failure=["a@example.com"]
    )


def test_permissions(w: WorkspaceClient) -> None:
    endpoint_id = create(w).id
    assert endpoint_id is not None
    levels = w.serving_endpoints.get_permission_levels(endpoint_id)
    assert [d.permission_level for d in levels.permission_levels or []] == [
        sdk.ServingEndpointPermissionLevel.CAN_MANAGE,
        sdk.ServingEndpointPermissionLevel.CAN_QUERY,
        sdk.ServingEndpointPermissionLevel.CAN_VIEW,
    ]

    def grants(perms: sdk.ServingEndpointPermissions) -> dict[str, str]:
        out = {}
        for acl in perms.access_control_list or []:
            who = acl.user_name or acl.group_name or acl.service_principal_name or ""
            for p in acl.all_permissions or []:
                assert p.permission_level is not None
                out[who] = p.permission_level.value
        return out

    first = w.serving_endpoints.get_permissions(endpoint_id)
    assert first.object_id == f"/serving-endpoints/{endpoint_id}"
    assert grants(first) == {"sandbox-user@example.com": "CAN_MANAGE", "admins": "CAN_MANAGE"}
    query = sdk.ServingEndpointPermissionLevel.CAN_QUERY
    set_ = w.serving_endpoints.set_permissions(endpoint_id, access_control_list=[
        sdk.ServingEndpointAccessControlRequest(group_name="analysts", permission_level=query)
    ])
    assert grants(set_) == {"analysts": "CAN_QUERY", "admins": "CAN_MANAGE"}
    view = sdk.ServingEndpointPermissionLevel.CAN_VIEW
    updated = w.serving_endpoints.update_permissions(endpoint_id, access_control_list=[
        sdk.ServingEndpointAccessControlRequest(service_principal_name="sp-1",
                                                permission_level=view)
    ])
    assert grants(updated) == {"analysts": "CAN_QUERY", "sp-1": "CAN_VIEW", "admins": "CAN_MANAGE"}
    with pytest.raises(NotFound):
        w.serving_endpoints.get_permissions("no-such-id")
    with pytest.raises(InvalidParameterValue, match="exactly one"):
        w.serving_endpoints.update_permissions(endpoint_id, access_control_list=[
            sdk.ServingEndpointAccessControlRequest(permission_level=view)
        ])


def test_logs_metrics_openapi_query(w: WorkspaceClient, admin: httpx.Client) -> None:
    create(w)
    load = admin.put("/endpoints/ads/load", json={"qps": 50.0})
    assert load.status_code == 200, load.text
    assert "ads-3" in w.serving_endpoints.build_logs("ads", "ads-3").logs
    assert isinstance(w.serving_endpoints.logs("ads", "ads-3").logs, str)
    with pytest.raises(NotFound):
        w.serving_endpoints.build_logs("ads", "ads-9")

    answer = w.serving_endpoints.query("ads", dataframe_records=[{"x": 1}, {"x": 2}])
    assert answer.served_model_name == "ads-3"
    assert answer.predictions is not None
    assert len(answer.predictions) == 2

    # Windows last a second here; wait (bounded) for one that closed under load.
    for _ in range(50):
        metrics = w.serving_endpoints.export_metrics("ads")
        assert metrics.contents is not None
        scrape = parse_export_metrics(metrics.contents.read().decode())
        if scrape.windows:
            break
        time.sleep(0.1)
    assert scrape.has_entity_labels
    assert {window.entity for window in scrape.windows} == {"ads-3"}

    document = w.serving_endpoints.get_open_api("ads")
    assert document.contents is not None
    assert "/served-models/ads-3/invocations" in "".join(
        json.loads(document.contents.read())["paths"]
    )


# ---- the project's model fed the SDK's dataclasses -------------------------------------------

# Every (SDK dataclass, field) the endpoint model does not read, and why that is safe.
IGNORED: dict[tuple[str, str], str] = {
    ("ServingEndpointDetailed", "ai_gateway"): "set by its own call; a config PUT leaves it",
    ("ServingEndpointDetailed", "budget_policy_id"): "billing; no config PUT touches it",
    ("ServingEndpointDetailed", "data_plane_info"): "query routing for some endpoints; the "
    "controller queries through the workspace",
    ("ServingEndpointDetailed", "email_notifications"): "set by its own call",
    ("ServingEndpointDetailed", "telemetry_config"): "set by its own call",
}
# The SDK dataclass -> the model class that reads it, for every class reachable from the
# endpoint through fields the model reads.
READERS: dict[str, str] = {
    "ServingEndpointDetailed": "Endpoint",
    "EndpointState": "EndpointState",
    "EndpointCoreConfigOutput": "EndpointConfig",
    "EndpointPendingConfig": "PendingConfig",
    "ServedEntityOutput": "ServedEntity",
    "ServedModelOutput": "ServedModel",
    "ServedModelState": "ServedEntityState",
    "TrafficConfig": "TrafficConfig",
    "Route": "Route",
    "EndpointTag": "Tag",
}


def _populated(cls: type[Any], depth: int = 0) -> Any:
    """An instance of SDK dataclass ``cls`` with every field set (nested ones too)."""
    hints = typing.get_type_hints(cls)
    values = {f.name: _value(hints[f.name], f.name, depth) for f in dataclasses.fields(cls)}
    return cls(**values)


def _value(hint: Any, name: str, depth: int) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union:
        return _value(next(a for a in args if a is not type(None)), name, depth)
    if origin is list:
        return [_value(args[0], name, depth)]
    if origin is dict:
        return {"KEY": "value"}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _populated(hint, depth + 1) if depth < 6 else None
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return next(iter(hint))
    if hint is bool:
        return False
    if hint is int:
        return 7
    if hint is float:
        return 0.5
    if hint is str:
        return f"{name}-value"
    return None  # Any, BinaryIO: nothing the endpoint carries


def _sdk_endpoint() -> dict[str, Any]:
    endpoint = _populated(sdk.ServingEndpointDetailed)
    # The few values the model checks: a state it knows, a route that names a served entity.
    endpoint.state = sdk.EndpointState(
        config_update=sdk.EndpointStateConfigUpdate.NOT_UPDATING,
        ready=sdk.EndpointStateReady.READY,
    )
    for config in (endpoint.config, endpoint.pending_config):
        # A legacy model beside the entity, under a name of its own.
        config.served_models[0].name = "legacy-value"
        config.traffic_config = sdk.TrafficConfig(
            routes=[sdk.Route(served_entity_name="name-value", served_model_name="name-value",
                              traffic_percentage=100)]
        )
    data: dict[str, Any] = json.loads(json.dumps(endpoint.as_dict()))
    return data


def _read(model: Any, name: str) -> Any:
    value = getattr(model, name, None)
    if value is None and model.model_extra:
        value = model.model_extra.get(name)
    return value


def _walk(sdk_cls: type[Any], ours: Any, seen: list[tuple[str, str]]) -> None:
    """Check every field of ``sdk_cls`` against the model instance ``ours`` that read it."""
    assert type(ours).__name__ == READERS[sdk_cls.__name__], (sdk_cls.__name__, type(ours))
    hints = typing.get_type_hints(sdk_cls)
    for f in dataclasses.fields(sdk_cls):
        key = (sdk_cls.__name__, f.name)
        seen.append(key)
        if key in IGNORED:
            continue
        value = _read(ours, f.name)
        assert value is not None, f"{key}: read by neither the model nor the IGNORED list"
        hint = hints[f.name]
        inner = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
        if typing.get_origin(inner) is list:
            inner = typing.get_args(inner)[0]
            value = value[0]
        if dataclasses.is_dataclass(inner) and inner.__name__ in READERS:
            _walk(inner, value, seen)  # type: ignore[arg-type]


def test_every_sdk_endpoint_field_is_read_or_deliberately_ignored() -> None:
    data = _sdk_endpoint()
    ours = Endpoint.model_validate(data)
    seen: list[tuple[str, str]] = []
    _walk(sdk.ServingEndpointDetailed, ours, seen)
    stale = sorted(set(IGNORED) - set(seen))
    assert not stale, f"IGNORED names fields the SDK no longer has: {stale}"
    # The served entity's fields survive into the PUT, output-only ones excepted.
    assert ours.config is not None
    (entity_input,) = [e.to_input() for e in ours.config.served_entities]
    sdk_input = {f.name for f in dataclasses.fields(sdk.ServedEntityInput)}
    assert sdk_input <= set(entity_input)
    assert not {"state", "creator", "creation_timestamp", "foundation_model"} & set(entity_input)
    # Legacy served models become served entities carrying every input field a GET shows.
    (converted,) = [m.to_entity().to_input() for m in ours.config.served_models]
    model_fields = {f.name for f in dataclasses.fields(sdk.ServedModelInput)} & {
        f.name for f in dataclasses.fields(sdk.ServedModelOutput)
    }
    renamed = {"model_name": "entity_name", "model_version": "entity_version"}
    assert {renamed.get(n, n) for n in model_fields} <= set(converted)
    assert converted["entity_name"] == "model_name-value"
    # The legacy inference-table config goes back as it came, without its output-only state.
    body = ConfigSpec.from_endpoint(ours).put_body()
    sdk_capture = {f.name for f in dataclasses.fields(sdk.AutoCaptureConfigInput)}
    assert set(body["auto_capture_config"]) == sdk_capture
