"""The sandbox's serving-endpoints API over real HTTP: lifecycle, validation, auth, shapes.

The ``sandbox`` fixture runs on a FakeClock: updates settle and windows close only when a test
advances the clock through the admin API.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx
import pytest

from rollout.sandbox.server import SandboxServer

API = "/api/2.0/serving-endpoints"
# The sandbox speaks plain HTTP; handing httpx a context skips loading the CA bundle per client.
TLS = ssl.create_default_context()
BASELINE = {"name": "ads-3", "entity_name": "main.ml.ads", "entity_version": "3",
            "workload_size": "Small", "scale_to_zero_enabled": False}
CANDIDATE = {"name": "ads-4", "entity_name": "main.ml.ads", "entity_version": "4",
             "workload_size": "Small", "scale_to_zero_enabled": False}
START_MS = 1_800_000_000_000  # FakeClock's default start


def routes(split: dict[str, int]) -> dict[str, Any]:
    return {"routes": [{"served_entity_name": k, "traffic_percentage": v}
                       for k, v in split.items()]}


def canary(base: int, cand: int) -> dict[str, Any]:
    return {"served_entities": [BASELINE, CANDIDATE],
            "traffic_config": routes({"ads-3": base, "ads-4": cand})}


def create(admin: httpx.Client, name: str = "ads", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"name": name, "served_entities": [BASELINE], **extra}
    response = admin.post("/endpoints", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


def advance(admin: httpx.Client, seconds: float) -> None:
    response = admin.post("/clock/advance", json={"seconds": seconds})
    assert response.status_code == 200, response.text


def get(api: httpx.Client, name: str = "ads") -> dict[str, Any]:
    response = api.get(f"{API}/{name}")
    assert response.status_code == 200, response.text
    return dict(response.json())


def assert_error(response: httpx.Response, status: int, code: str, text: str = "") -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error_code", "message"}
    assert body["error_code"] == code
    assert text in body["message"]


def test_admin_create_is_ready_at_version_1(sandbox_admin: httpx.Client,
                                            sandbox_api: httpx.Client) -> None:
    created = create(sandbox_admin, tags={"team": "ads"})
    assert created["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    body = get(sandbox_api)
    assert body["config"]["config_version"] == 1
    assert "pending_config" not in body
    assert body["config"]["traffic_config"] == {"routes": [
        {"served_model_name": "ads-3", "served_entity_name": "ads-3", "traffic_percentage": 100}
    ]}
    entity = body["config"]["served_entities"][0]
    assert entity["name"] == "ads-3"
    assert entity["entity_version"] == "3"
    assert entity["state"]["deployment"] == "DEPLOYMENT_READY"
    assert body["tags"] == [{"key": "team", "value": "ads"}]
    assert body["creation_timestamp"] == START_MS


def test_config_update_lifecycle(sandbox_admin: httpx.Client, sandbox_api: httpx.Client) -> None:
    create(sandbox_admin)
    advance(sandbox_admin, 10.0)
    put = sandbox_api.put(f"{API}/ads/config", json=canary(90, 10))
    assert put.status_code == 200, put.text
    body = put.json()
    assert body["state"] == {"ready": "READY", "config_update": "IN_PROGRESS"}
    assert body["config"]["config_version"] == 1  # the old config keeps serving meanwhile
    pending = body["pending_config"]
    assert pending["config_version"] == 2
    assert pending["start_time"] == START_MS + 10_000
    assert [e["name"] for e in pending["served_entities"]] == ["ads-3", "ads-4"]
    states = {e["name"]: e["state"]["deployment"] for e in pending["served_entities"]}
    assert states == {"ads-3": "DEPLOYMENT_READY", "ads-4": "DEPLOYMENT_CREATING"}

    advance(sandbox_admin, 4.9)
    assert get(sandbox_api)["state"]["config_update"] == "IN_PROGRESS"
    advance(sandbox_admin, 0.2)
    body = get(sandbox_api)
    assert body["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    assert "pending_config" not in body
    assert body["config"]["config_version"] == 2
    assert body["config"]["traffic_config"]["routes"] == [
        {"served_model_name": "ads-3", "served_entity_name": "ads-3", "traffic_percentage": 90},
        {"served_model_name": "ads-4", "served_entity_name": "ads-4", "traffic_percentage": 10},
    ]
    assert body["last_updated_timestamp"] == START_MS + 15_000
    stats = sandbox_admin.get("/stats").json()
    assert stats["config_updates"] == 1


def test_put_while_updating_is_409_then_accepted(sandbox_admin: httpx.Client,
                                                 sandbox_api: httpx.Client) -> None:
    create(sandbox_admin)
    assert sandbox_api.put(f"{API}/ads/config", json=canary(90, 10)).status_code == 200
    assert_error(sandbox_api.put(f"{API}/ads/config", json=canary(50, 50)), 409,
                 "RESOURCE_CONFLICT", "Endpoint ads is currently updating.")
    assert_error(sandbox_api.post(f"{API}/ads/config:stop"), 409, "RESOURCE_CONFLICT")
    advance(sandbox_admin, 5.0)
    again = sandbox_api.put(f"{API}/ads/config", json=canary(50, 50))
    assert again.status_code == 200
    assert again.json()["pending_config"]["config_version"] == 3


def test_legacy_served_models_and_served_model_name_routes(sandbox_admin: httpx.Client,
                                                           sandbox_api: httpx.Client) -> None:
    create(sandbox_admin)
    body = {
        "served_models": [
            {"model_name": "ads", "model_version": "5", "workload_size": "Small",
             "scale_to_zero_enabled": False},
        ],
        "traffic_config": {"routes": [{"served_model_name": "ads-5", "traffic_percentage": 100}]},
    }
    put = sandbox_api.put(f"{API}/ads/config", json=body)
    assert put.status_code == 200, put.text
    advance(sandbox_admin, 5.0)
    config = get(sandbox_api)["config"]
    assert [m["name"] for m in config["served_models"]] == ["ads-5"]
    assert config["traffic_config"]["routes"][0]["served_entity_name"] == "ads-5"


def test_default_name_and_single_entity_default_route(sandbox_admin: httpx.Client,
                                                      sandbox_api: httpx.Client) -> None:
    create(sandbox_admin)
    unnamed = {"entity_name": "main.ml.ads", "entity_version": 7, "workload_size": "Medium",
               "scale_to_zero_enabled": False}
    put = sandbox_api.put(f"{API}/ads/config", json={"served_entities": [unnamed]})
    assert put.status_code == 200, put.text
    pending = put.json()["pending_config"]
    assert pending["served_entities"][0]["name"] == "ads-7"
    assert pending["served_entities"][0]["entity_version"] == "7"
    assert pending["traffic_config"]["routes"] == [
        {"served_model_name": "ads-7", "served_entity_name": "ads-7", "traffic_percentage": 100}
    ]


def _many(n: int) -> list[dict[str, Any]]:
    return [{"name": f"m-{i}", "entity_name": "main.ml.m", "entity_version": str(i)}
            for i in range(n)]


BAD_CONFIGS: list[tuple[str, Any, str]] = [
    ("routes sum to 90", canary(80, 10), "must sum to 100, not 90"),
    ("routes sum to 110", canary(100, 10), "must sum to 100, not 110"),
    ("percentage above 100", canary(101, 0), "integer from 0 to 100"),
    ("negative percentage", canary(-5, 105), "integer from 0 to 100"),
    ("huge percentage", canary(10**30, 0), "integer from 0 to 100"),
    ("fractional percentage", canary(90, 10) | {"traffic_config": {"routes": [
        {"served_entity_name": "ads-3", "traffic_percentage": 89.5},
        {"served_entity_name": "ads-4", "traffic_percentage": 10.5}]}},
     "traffic_config.routes[0].traffic_percentage"),
    ("percentage as string", {"served_entities": [BASELINE], "traffic_config": {"routes": [
        {"served_entity_name": "ads-3", "traffic_percentage": "100"}]}},
     "traffic_config.routes[0].traffic_percentage"),
    ("percentage as bool", {"served_entities": [BASELINE], "traffic_config": {"routes": [
        {"served_entity_name": "ads-3", "traffic_percentage": True}]}},
     "traffic_config.routes[0].traffic_percentage"),
    ("unknown route target", {"served_entities": [BASELINE], "traffic_config": routes(
        {"ads-9": 100})}, "routes traffic to 'ads-9', which is not a served entity"),
    ("route without target", {"served_entities": [BASELINE], "traffic_config": {"routes": [
        {"traffic_percentage": 100}]}}, "must name its target"),
    ("two routes to one entity", {"served_entities": [BASELINE], "traffic_config": {"routes": [
        {"served_entity_name": "ads-3", "traffic_percentage": 50},
        {"served_model_name": "ads-3", "traffic_percentage": 50}]}}, "more than one route"),
    ("route names disagree", {"served_entities": [BASELINE], "traffic_config": {"routes": [
        {"served_entity_name": "ads-3", "served_model_name": "ads-4",
         "traffic_percentage": 100}]}}, "two different targets"),
    ("empty routes", {"served_entities": [BASELINE], "traffic_config": {"routes": []}},
     "non-empty list"),
    ("traffic_config not an object", {"served_entities": [BASELINE], "traffic_config": [1]},
     "must be an object"),
    ("duplicate names", {"served_entities": [BASELINE, BASELINE],
                         "traffic_config": routes({"ads-3": 100})}, "used more than once"),
    ("invalid name", {"served_entities": [BASELINE | {"name": "bad name!"}]},
     "Invalid served entity name 'bad name!'"),
    ("name too long", {"served_entities": [BASELINE | {"name": "x" * 64}]},
     "Invalid served entity name"),
    ("more than 15 entities", {"served_entities": _many(16),
                               "traffic_config": routes({"m-0": 100})}, "at most 15"),
    ("missing entity_name", {"served_entities": [{"name": "x", "entity_version": "1"}]},
     "entity_name' is required"),
    ("two entities, no traffic_config", {"served_entities": [BASELINE, CANDIDATE]},
     "required when the config has more than one served entity"),
    ("no entities", {"served_entities": []}, "at least one served entity"),
    ("entities not a list", {"served_entities": {"name": "x"}}, "must be a list"),
    ("entity not an object", {"served_entities": ["ads-3"]}, "must be an object"),
    ("wrapped in config", {"config": canary(90, 10)}, "Unknown field 'config'"),
    ("bad workload size", {"served_entities": [BASELINE | {"workload_size": "Huge"}]},
     "Invalid workload_size 'Huge'"),
    ("version of the wrong type", {"served_entities": [BASELINE | {"entity_version": [3]}]},
     "served_entities[0].entity_version"),
    ("both served_entities and served_models",
     {"served_entities": [BASELINE], "served_models": [{"model_name": "a"}]}, "not both"),
]


@pytest.mark.parametrize(("case", "body", "message"), BAD_CONFIGS,
                         ids=[c[0] for c in BAD_CONFIGS])
def test_invalid_config_is_400_naming_the_problem(
    sandbox_admin: httpx.Client, sandbox_api: httpx.Client, case: str, body: Any, message: str
) -> None:
    create(sandbox_admin)
    assert_error(sandbox_api.put(f"{API}/ads/config", json=body), 400,
                 "INVALID_PARAMETER_VALUE", message)
    # Nothing changed.
    state = get(sandbox_api)
    assert state["state"]["config_update"] == "NOT_UPDATING"
    assert state["config"]["config_version"] == 1


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"served_entities": [', "Malformed JSON"),
        (b"", "empty"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b"\xff\xfe\x00", "Malformed JSON"),
        (b'{"x": NaN}', "Malformed JSON"),
        (b'{"x": ' + b"9" * 5000 + b"}", "Malformed JSON"),
        (b"[" * 100_000, "Malformed JSON"),
    ],
    ids=["truncated", "empty", "array", "string", "not-utf8", "nan", "huge-int", "deep"],
)
def test_malformed_bodies_are_bad_request(sandbox_admin: httpx.Client,
                                          sandbox_api: httpx.Client, raw: bytes,
                                          message: str) -> None:
    create(sandbox_admin)
    response = sandbox_api.put(f"{API}/ads/config", content=raw,
                               headers={"Content-Type": "application/json"})
    assert_error(response, 400, "BAD_REQUEST", message)


def test_update_failed_keeps_the_old_config_and_explains_in_build_logs(
    sandbox_admin: httpx.Client, sandbox_api: httpx.Client
) -> None:
    create(sandbox_admin)
    # The profile is set before the candidate exists.
    r = sandbox_admin.put("/endpoints/ads/profiles/ads-4", json={"fail_build": True})
    assert r.status_code == 200, r.text
    assert sandbox_api.put(f"{API}/ads/config", json=canary(90, 10)).status_code == 200
    advance(sandbox_admin, 5.0)
    body = get(sandbox_api)
    assert body["state"] == {"ready": "READY", "config_update": "UPDATE_FAILED"}
    assert "pending_config" not in body
    assert body["config"]["config_version"] == 1
    assert [e["name"] for e in body["config"]["served_entities"]] == ["ads-3"]
    logs = sandbox_api.get(f"{API}/ads/served-models/ads-4/build-logs")
    assert logs.status_code == 200
    assert "failed to build" in logs.json()["logs"]
    assert "fail_build" in logs.json()["logs"]
    # The old config really serves: every invocation is answered by the baseline.
    for _ in range(20):
        inv = sandbox_api.post("/serving-endpoints/ads/invocations",
                               json={"dataframe_records": [{"x": 1}]})
        assert inv.headers["served-model-name"] == "ads-3"
    # Fix the candidate: the next update goes through.
    sandbox_admin.put("/endpoints/ads/profiles/ads-4", json={})
    assert sandbox_api.put(f"{API}/ads/config", json=canary(90, 10)).status_code == 200
    advance(sandbox_admin, 5.0)
    body = get(sandbox_api)
    assert body["state"]["config_update"] == "NOT_UPDATING"
    assert body["config"]["config_version"] == 2


def test_injected_failures_and_update_duration(sandbox_admin: httpx.Client,
                                               sandbox_api: httpx.Client) -> None:
    create(sandbox_admin)
    r = sandbox_admin.put("/endpoints/ads/updates",
                          json={"duration_seconds": 30, "fail_next": 1})
    assert r.json() == {"duration_seconds": 30.0, "fail_next": 1}
    sandbox_api.put(f"{API}/ads/config", json=canary(90, 10))
    advance(sandbox_admin, 29.0)
    assert get(sandbox_api)["state"]["config_update"] == "IN_PROGRESS"
    advance(sandbox_admin, 1.0)
    assert get(sandbox_api)["state"]["config_update"] == "UPDATE_FAILED"
    logs = sandbox_api.get(f"{API}/ads/served-models/ads-4/build-logs").json()["logs"]
    assert "injected" in logs
    sandbox_api.put(f"{API}/ads/config", json=canary(90, 10))
    advance(sandbox_admin, 30.0)
    assert get(sandbox_api)["state"]["config_update"] == "NOT_UPDATING"


def test_public_create_goes_through_the_lifecycle_and_delete(
    sandbox_admin: httpx.Client, sandbox_api: httpx.Client
) -> None:
    body = {"name": "fresh", "config": {"served_entities": [BASELINE]},
            "tags": [{"key": "b", "value": "2"}, {"key": "a", "value": "1"}]}
    created = sandbox_api.post(API, json=body)
    assert created.status_code == 200, created.text
    assert created.json()["state"] == {"ready": "NOT_READY", "config_update": "IN_PROGRESS"}
    assert "config" not in created.json()
    assert created.json()["pending_config"]["config_version"] == 1
    assert_error(sandbox_api.post(API, json=body), 409, "RESOURCE_ALREADY_EXISTS",
                 "Serving endpoint with name fresh already exists")
    advance(sandbox_admin, 5.0)
    got = get(sandbox_api, "fresh")
    assert got["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    assert got["tags"] == [{"key": "a", "value": "1"}, {"key": "b", "value": "2"}]
    listed = sandbox_api.get(API).json()["endpoints"]
    assert [e["name"] for e in listed] == ["fresh"]
    assert listed[0]["config"]["served_entities"] == [
        {"name": "ads-3", "entity_name": "main.ml.ads", "entity_version": "3"}
    ]
    assert sandbox_api.delete(f"{API}/fresh").json() == {}
    assert_error(sandbox_api.get(f"{API}/fresh"), 404, "RESOURCE_DOES_NOT_EXIST")
    assert sandbox_api.get(API).json() == {"endpoints": []}


def test_create_validation(sandbox_api: httpx.Client) -> None:
    assert_error(sandbox_api.post(API, json={"name": "bad name"}), 400,
                 "INVALID_PARAMETER_VALUE", "Invalid endpoint name")
    assert_error(sandbox_api.post(API, json={"config": {}}), 400, "INVALID_PARAMETER_VALUE",
                 "name")
    assert_error(sandbox_api.post(API, json={"name": "x", "config": {
        "served_entities": [BASELINE, CANDIDATE]}}), 400, "INVALID_PARAMETER_VALUE",
        "config.traffic_config")
    # No config: an endpoint that exists but serves nothing yet.
    empty = sandbox_api.post(API, json={"name": "empty"})
    assert empty.json()["state"] == {"ready": "NOT_READY", "config_update": "NOT_UPDATING"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"{API}/nope"),
        ("DELETE", f"{API}/nope"),
        ("PUT", f"{API}/nope/config"),
        ("PATCH", f"{API}/nope/tags"),
        ("GET", f"{API}/nope/metrics"),
        ("GET", f"{API}/nope/openapi"),
        ("GET", f"{API}/nope/served-models/x/build-logs"),
        ("GET", f"{API}/nope/served-models/x/logs"),
        ("POST", f"{API}/nope/config:stop"),
        ("POST", f"{API}/nope/config:start"),
        ("POST", "/serving-endpoints/nope/invocations"),
        ("POST", "/serving-endpoints/nope/served-models/x/invocations"),
    ],
)
def test_unknown_endpoint_is_404_like_databricks(sandbox_api: httpx.Client, method: str,
                                                 path: str) -> None:
    body: dict[str, Any] = {"dataframe_records": [{"x": 1}]} if "invocations" in path else {}
    if path.endswith("/config"):
        body = {"served_entities": [BASELINE]}
    response = sandbox_api.request(method, path, json=body if method != "GET" else None)
    assert_error(response, 404, "RESOURCE_DOES_NOT_EXIST",
                 "Serving endpoint with name nope not found")


def test_unknown_served_model_is_404(sandbox_admin: httpx.Client,
                                     sandbox_api: httpx.Client) -> None:
    create(sandbox_admin)
    assert_error(sandbox_api.get(f"{API}/ads/served-models/zz/build-logs"), 404,
                 "RESOURCE_DOES_NOT_EXIST", "Served model zz")
    assert_error(sandbox_api.post("/serving-endpoints/ads/served-models/zz/invocations",
                                  json={"instances": [1]}), 404, "RESOURCE_DOES_NOT_EXIST")
    assert_error(sandbox_admin.post("/endpoints", json={"name": "ads",
                                                        "served_entities": [BASELINE]}),
                 409, "RESOURCE_ALREADY_EXISTS")


def test_auth_401(sandbox: SandboxServer, sandbox_admin: httpx.Client) -> None:
    create(sandbox_admin)
    with httpx.Client(base_url=sandbox.url, timeout=10.0, verify=TLS) as anonymous:
        assert_error(anonymous.get(f"{API}/ads"), 401, "UNAUTHENTICATED")
        assert_error(anonymous.get(f"{API}/ads", headers={"Authorization": "Bearer wrong"}),
                     401, "UNAUTHENTICATED", "Invalid access token")
        assert_error(anonymous.get(API, headers={"Authorization": f"Basic {sandbox.token}"}),
                     401, "UNAUTHENTICATED")
        assert_error(anonymous.post("/serving-endpoints/ads/invocations",
                                    json={"instances": [1]}), 401, "UNAUTHENTICATED")
        # An expiring PAT.
        sandbox_admin.post("/tokens", json={"token": "short", "permission": "CAN_MANAGE",
                                            "expires_in_seconds": 10})
        short = {"Authorization": "Bearer short"}
        assert anonymous.get(f"{API}/ads", headers=short).status_code == 200
        advance(sandbox_admin, 10.0)
        assert_error(anonymous.get(f"{API}/ads", headers=short), 401, "UNAUTHENTICATED",
                     "expired")
    assert sandbox_admin.get("/stats").json()["auth_failures"] == 5


def test_auth_403_by_permission(sandbox: SandboxServer, sandbox_admin: httpx.Client) -> None:
    create(sandbox_admin)
    for token, permission in (("viewer", "CAN_VIEW"), ("querier", "CAN_QUERY")):
        r = sandbox_admin.post("/tokens", json={"token": token, "permission": permission})
        assert r.status_code == 201
    invoke = {"dataframe_records": [{"x": 1}]}
    with httpx.Client(base_url=sandbox.url, timeout=10.0, verify=TLS) as client:
        viewer = {"Authorization": "Bearer viewer"}
        querier = {"Authorization": "Bearer querier"}
        got = client.get(f"{API}/ads", headers=viewer)
        assert got.status_code == 200
        assert got.json()["permission_level"] == "CAN_VIEW"
        assert client.get(f"{API}/ads/metrics", headers=viewer).status_code == 200
        for method, path, body in (
            ("PUT", f"{API}/ads/config", canary(90, 10)),
            ("POST", API, {"name": "other"}),
            ("DELETE", f"{API}/ads", None),
            ("PATCH", f"{API}/ads/tags", {"add_tags": [{"key": "k", "value": "v"}]}),
            ("POST", f"{API}/ads/config:stop", None),
            ("POST", "/serving-endpoints/ads/invocations", invoke),
        ):
            assert_error(client.request(method, path, json=body, headers=viewer), 403,
                         "PERMISSION_DENIED")
        assert client.post("/serving-endpoints/ads/invocations", json=invoke,
                           headers=querier).status_code == 200
        assert_error(client.put(f"{API}/ads/config", json=canary(90, 10), headers=querier),
                     403, "PERMISSION_DENIED", "CAN_MANAGE")
        assert_error(client.post(f"{API}/ads/config:stop", headers=querier), 403,
                     "PERMISSION_DENIED")
    assert get_state(sandbox, "ads") == "NOT_UPDATING"


def get_state(sandbox: SandboxServer, name: str) -> str:
    state = sandbox.workspace.get_endpoint(name, "CAN_MANAGE")["state"]["config_update"]
    return str(state)


def test_stop_and_start(sandbox_admin: httpx.Client, sandbox_api: httpx.Client) -> None:
    create(sandbox_admin, qps=50.0)
    invoke = {"dataframe_records": [{"x": 1}]}
    stopped = sandbox_api.post(f"{API}/ads/config:stop")
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["state"] == {"ready": "NOT_READY", "config_update": "NOT_UPDATING"}
    assert_error(sandbox_api.post("/serving-endpoints/ads/invocations", json=invoke), 400,
                 "BAD_REQUEST", "stopped")
    assert_error(sandbox_api.put(f"{API}/ads/config", json=canary(90, 10)), 400,
                 "INVALID_STATE", "stopped")
    # A stopped endpoint takes no simulated traffic.
    advance(sandbox_admin, 60.0)
    assert "request_count_total{" not in sandbox_api.get(f"{API}/ads/metrics").text

    # The ':' may also arrive percent-encoded.
    started = sandbox_api.post(f"{API}/ads/config%3Astart")
    assert started.status_code == 200, started.text
    body = started.json()
    assert body["state"] == {"ready": "NOT_READY", "config_update": "IN_PROGRESS"}
    assert body["pending_config"]["config_version"] == 2
    assert_error(sandbox_api.post(f"{API}/ads/config:start"), 409, "RESOURCE_CONFLICT")
    advance(sandbox_admin, 5.0)
    body = get(sandbox_api)
    assert body["state"] == {"ready": "READY", "config_update": "NOT_UPDATING"}
    assert body["config"]["config_version"] == 2
    assert sandbox_api.post("/serving-endpoints/ads/invocations", json=invoke).status_code == 200
    assert_error(sandbox_api.post(f"{API}/ads/config:start"), 400, "INVALID_STATE",
                 "not stopped")


def test_tags_are_patched_and_sorted(sandbox_admin: httpx.Client,
                                     sandbox_api: httpx.Client) -> None:
    create(sandbox_admin)
    r = sandbox_api.patch(f"{API}/ads/tags", json={"add_tags": [
        {"key": "zeta", "value": "1"}, {"key": "alpha", "value": "2"}, {"key": "mid"}]})
    assert r.status_code == 200, r.text
    assert r.json() == {"tags": [{"key": "alpha", "value": "2"}, {"key": "mid", "value": ""},
                                 {"key": "zeta", "value": "1"}]}
    r = sandbox_api.patch(f"{API}/ads/tags", json={"delete_tags": ["alpha", "absent"]})
    assert [t["key"] for t in r.json()["tags"]] == ["mid", "zeta"]
    assert [t["key"] for t in get(sandbox_api)["tags"]] == ["mid", "zeta"]
    assert_error(sandbox_api.patch(f"{API}/ads/tags", json={"add_tags": "k=v"}), 400,
                 "INVALID_PARAMETER_VALUE", "add_tags")
    assert_error(sandbox_api.patch(f"{API}/ads/tags", json={"add_tags": [{"key": ""}]}), 400,
                 "INVALID_PARAMETER_VALUE", "add_tags[0].key")


def test_openapi_uses_each_entity_input_schema(sandbox_admin: httpx.Client,
                                               sandbox_api: httpx.Client) -> None:
    create(sandbox_admin)
    schema = {"type": "object", "properties": {"inputs": {"type": "array"}},
              "required": ["inputs"]}
    sandbox_admin.put("/endpoints/ads/profiles/ads-4", json={"input_schema": schema})
    doc = sandbox_api.get(f"{API}/ads/openapi").json()
    assert doc["openapi"].startswith("3.")
    body_schema = doc["paths"]["/served-models/ads-3/invocations"]["post"]["requestBody"]
    assert body_schema["content"]["application/json"]["schema"]["required"] == [
        "dataframe_records"]
    sandbox_api.put(f"{API}/ads/config", json=canary(90, 10))
    advance(sandbox_admin, 5.0)
    doc = sandbox_api.get(f"{API}/ads/openapi").json()
    cand = doc["paths"]["/served-models/ads-4/invocations"]["post"]["requestBody"]
    assert cand["content"]["application/json"]["schema"] == schema
    endpoint_schema = doc["paths"]["/invocations"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]
    assert schema in endpoint_schema["oneOf"]
    assert doc["info"]["version"] == "2"


def test_server_logs(sandbox_admin: httpx.Client, sandbox_api: httpx.Client) -> None:
    create(sandbox_admin)
    sandbox_api.post("/serving-endpoints/ads/invocations", json={"instances": [1, 2]})
    logs = sandbox_api.get(f"{API}/ads/served-models/ads-3/logs")
    assert logs.status_code == 200
    assert "ads-3" in logs.json()["logs"]
    assert "1 invocation(s)" in logs.json()["logs"]
