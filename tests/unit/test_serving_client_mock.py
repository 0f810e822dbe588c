"""The client over httpx.MockTransport: every call's request, every malformed answer, the waiter.

These cover what a well-behaved server (the sandbox) never sends: HTML error pages, empty
bodies, non-JSON 200s, missing fields, wrong types, truncated bodies. Each must end as a typed
``ServingError`` within the retry budget, never as a raw exception or a hang.
"""

from __future__ import annotations

import asyncio
import copy
import json
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from rollout.clock import FakeClock
from rollout.serving.auth import PatAuth
from rollout.serving.client import ServingClient
from rollout.serving.errors import (
    ConfigMismatch,
    InvalidRequest,
    MalformedResponse,
    NotFound,
    PermissionDenied,
    ServingError,
    ServingTransportError,
    Unavailable,
    UpdateFailed,
    UpdateInProgress,
    UpdateTimeout,
)
from rollout.serving.models import ConfigSpec, Endpoint, ServedEntity
from rollout.serving.retry import RetryPolicy
from rollout.settings import DatabricksSettings, ServingSettings

HOST = "https://workspace.example.com"
TOKEN = "dapi-unit-token"

Handler = Callable[[httpx.Request], httpx.Response]


def endpoint_body(
    *,
    name: str = "ads",
    ready: str = "READY",
    update: str = "NOT_UPDATING",
    version: int = 1,
    split: dict[str, int] | None = None,
    pending: dict[str, Any] | None = None,
) -> dict[str, Any]:
    split = {"ads-3": 100} if split is None else split
    versions = {"ads-3": "3", "ads-4": "4"}
    body: dict[str, Any] = {
        "name": name,
        "id": "e-1",
        "state": {"ready": ready, "config_update": update},
        "config": {
            "config_version": version,
            "served_entities": [
                {"name": n, "entity_name": "main.ml.ads", "entity_version": versions[n]}
                for n in sorted(split)
            ],
            "traffic_config": {
                "routes": [
                    {"served_model_name": n, "served_entity_name": n, "traffic_percentage": p}
                    for n, p in split.items()
                ]
            },
        },
    }
    if pending is not None:
        body["pending_config"] = pending
    return body


def spec(split: dict[str, int]) -> ConfigSpec:
    versions = {"ads-3": "3", "ads-4": "4"}
    return ConfigSpec.build(
        [
            ServedEntity(
                name=n,
                entity_name="main.ml.ads",
                entity_version=versions[n],
                workload_size="Small",
                scale_to_zero_enabled=False,
            )
            for n in sorted(split)
        ],
        split,
    )


class Recorder:
    """Wraps a handler, keeping every request it saw."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        return self.handler(request)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_client(
    clock: FakeClock,
) -> Callable[..., ServingClient]:
    def make(handler: Handler, **kwargs: Any) -> ServingClient:
        options: dict[str, Any] = {
            "transport": httpx.MockTransport(handler),
            "clock": clock,
            "retry": RetryPolicy(
                initial_backoff=0.5, max_backoff=4.0, budget_seconds=30.0, rng=random.Random(3)
            ),
            "poll_interval": 2.0,
            "timeout": 5.0,
        }
        options.update(kwargs)
        return ServingClient(HOST, PatAuth(TOKEN), **options)

    return make


# --- every call sends what the API expects -----------------------------------------------------


async def test_every_call_sends_the_documented_request(
    make_client: Callable[..., ServingClient],
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/metrics"):
            return httpx.Response(200, text="# TYPE request_count_total gauge\n")
        if path.endswith(("/build-logs", "/logs")):
            return httpx.Response(200, json={"logs": f"log of {path}"})
        if path.endswith("/openapi"):
            return httpx.Response(200, json={"openapi": "3.1.0", "paths": {}})
        if path.endswith("/tags"):
            return httpx.Response(200, json={"tags": [{"key": "a", "value": "1"}]})
        if path.endswith("/invocations"):
            return httpx.Response(
                200, json={"predictions": [1]}, headers={"served-model-name": "ads-3"}
            )
        if request.method == "DELETE":
            return httpx.Response(200, json={})
        if path == "/api/2.0/serving-endpoints" and request.method == "GET":
            return httpx.Response(200, json={"endpoints": [endpoint_body()]})
        if path.endswith(("config:stop", "config:start")):
            return httpx.Response(200, text="")
        return httpx.Response(200, json=endpoint_body())

    recorder = Recorder(handler)
    seen: list[tuple[str, int | None]] = []
    async with make_client(
        recorder, on_response=lambda call, status, _s: seen.append((call, status))
    ) as client:
        two = spec({"ads-3": 90, "ads-4": 10})
        await client.get_endpoint("ads")
        await client.list_endpoints()
        await client.create_endpoint("ads", two, {"team": "ads"}, description="d")
        await client.update_config("ads", two)
        await client.patch_tags("ads", add={"a": "1"}, delete=["old"])
        assert await client.export_metrics("ads") == "# TYPE request_count_total gauge\n"
        assert "build-logs" in await client.build_logs("ads", "ads-4")
        assert (await client.server_logs("ads", "ads-4")).endswith("/logs")
        assert (await client.openapi("ads"))["openapi"] == "3.1.0"
        assert await client.stop_endpoint("ads") is None
        assert await client.start_endpoint("ads") is None
        result = await client.query("ads", {"inputs": [[1, 2]]})
        assert (result.status, result.served_model_name, result.body) == (
            200,
            "ads-3",
            {"predictions": [1]},
        )
        await client.query_served_model("ads", "ads-4", {"inputs": [[1]]})
        await client.delete_endpoint("ads")

    sent = [(r.method, r.url.path) for r in recorder.requests]
    assert sent == [
        ("GET", "/api/2.0/serving-endpoints/ads"),
        ("GET", "/api/2.0/serving-endpoints"),
        ("POST", "/api/2.0/serving-endpoints"),
        ("PUT", "/api/2.0/serving-endpoints/ads/config"),
        ("PATCH", "/api/2.0/serving-endpoints/ads/tags"),
        ("GET", "/api/2.0/serving-endpoints/ads/metrics"),
        ("GET", "/api/2.0/serving-endpoints/ads/served-models/ads-4/build-logs"),
        ("GET", "/api/2.0/serving-endpoints/ads/served-models/ads-4/logs"),
        ("GET", "/api/2.0/serving-endpoints/ads/openapi"),
        ("POST", "/api/2.0/serving-endpoints/ads/config:stop"),
        ("POST", "/api/2.0/serving-endpoints/ads/config:start"),
        ("POST", "/serving-endpoints/ads/invocations"),
        ("POST", "/serving-endpoints/ads/served-models/ads-4/invocations"),
        ("DELETE", "/api/2.0/serving-endpoints/ads"),
    ]
    assert [call for call, _ in seen] == [
        "get_endpoint",
        "list_endpoints",
        "create_endpoint",
        "update_config",
        "patch_tags",
        "export_metrics",
        "build_logs",
        "server_logs",
        "openapi",
        "stop_endpoint",
        "start_endpoint",
        "query",
        "query_served_model",
        "delete_endpoint",
    ]
    for request in recorder.requests:
        assert request.headers["authorization"] == f"Bearer {TOKEN}"
        assert request.headers["user-agent"].startswith("rollout/")
    by_path = {(r.method, r.url.path): r for r in recorder.requests}
    metrics = by_path[("GET", "/api/2.0/serving-endpoints/ads/metrics")]
    assert metrics.headers["accept"] == "text/plain"
    create = json.loads(by_path[("POST", "/api/2.0/serving-endpoints")].content)
    assert create["name"] == "ads"
    assert create["config"] == two.put_body()
    assert create["tags"] == [{"key": "team", "value": "ads"}]
    put = json.loads(by_path[("PUT", "/api/2.0/serving-endpoints/ads/config")].content)
    # Flat: no "config" wrapper, no "name".
    assert put == two.put_body()
    assert put["served_entities"][0]["scale_to_zero_enabled"] is False
    tags = json.loads(by_path[("PATCH", "/api/2.0/serving-endpoints/ads/tags")].content)
    assert tags == {"add_tags": [{"key": "a", "value": "1"}], "delete_tags": ["old"]}


async def test_names_are_url_quoted(make_client: Callable[..., ServingClient]) -> None:
    recorder = Recorder(lambda _r: httpx.Response(404, json={"error_code": "NOT_FOUND"}))
    async with make_client(recorder) as client:
        with pytest.raises(NotFound):
            await client.build_logs("a b/c", "m?x")
    assert recorder.requests[0].url.raw_path == (
        b"/api/2.0/serving-endpoints/a%20b%2Fc/served-models/m%3Fx/build-logs"
    )


async def test_export_metrics_accepts_a_json_contents_body(
    make_client: Callable[..., ServingClient],
) -> None:
    text = "request_count_total 5 1700000000000\n"
    async with make_client(lambda _r: httpx.Response(200, json={"contents": text})) as client:
        assert await client.export_metrics("ads") == text


async def test_openapi_yaml_text_is_read(make_client: Callable[..., ServingClient]) -> None:
    yaml_text = "openapi: 3.0.1\npaths:\n  /invocations: {}\n"
    async with make_client(lambda _r: httpx.Response(200, text=yaml_text)) as client:
        assert (await client.openapi("ads"))["paths"] == {"/invocations": {}}


async def test_stop_answer_with_an_endpoint_is_parsed(
    make_client: Callable[..., ServingClient],
) -> None:
    body = endpoint_body(ready="NOT_READY", update="IN_PROGRESS", version=2)
    async with make_client(lambda _r: httpx.Response(200, json=body)) as client:
        stopped = await client.stop_endpoint("ads")
    assert stopped is not None
    assert stopped.state.config_update == "IN_PROGRESS"


async def test_empty_list_is_an_empty_list(make_client: Callable[..., ServingClient]) -> None:
    async with make_client(lambda _r: httpx.Response(200, json={})) as client:
        assert await client.list_endpoints() == []


# --- malformed answers: always a typed error ---------------------------------------------------


async def invoke(client: ServingClient, call: str) -> object:
    """Make the named call with plausible arguments."""
    one = spec({"ads-3": 100})
    calls: dict[str, Callable[[], Any]] = {
        "get_endpoint": lambda: client.get_endpoint("ads"),
        "update_config": lambda: client.update_config("ads", one),
        "create_endpoint": lambda: client.create_endpoint("ads", one),
        "list_endpoints": client.list_endpoints,
        "patch_tags": lambda: client.patch_tags("ads", add={"a": "b"}),
        "build_logs": lambda: client.build_logs("ads", "ads-3"),
        "server_logs": lambda: client.server_logs("ads", "ads-3"),
        "export_metrics": lambda: client.export_metrics("ads"),
        "openapi": lambda: client.openapi("ads"),
        "stop_endpoint": lambda: client.stop_endpoint("ads"),
        "start_endpoint": lambda: client.start_endpoint("ads"),
        "query": lambda: client.query("ads", {"inputs": [1]}),
    }
    result: object = await calls[call]()
    return result


HTML_PAGE = "<html><head><title>Sign in</title></head><body>login</body></html>"

MALFORMED_200 = [
    pytest.param(
        httpx.Response(200, text=HTML_PAGE, headers={"content-type": "text/html"}), id="html"
    ),
    pytest.param(httpx.Response(200, content=b""), id="empty"),
    pytest.param(httpx.Response(200, text="OK"), id="plain-text"),
    pytest.param(
        httpx.Response(200, text='{"name": "ads", "state": {"ready": "REA'), id="truncated"
    ),
    pytest.param(httpx.Response(200, json=["ads"]), id="array"),
    pytest.param(httpx.Response(200, json="ads"), id="string"),
    pytest.param(httpx.Response(200, json={"state": {}}), id="missing-name"),
    pytest.param(
        httpx.Response(200, json={"name": "ads", "state": {"ready": None, "config_update": 1}}),
        id="wrong-types",
    ),
    pytest.param(httpx.Response(200, content=b"\xff\xfe\xfa\x00"), id="binary"),
]


@pytest.mark.parametrize("response", MALFORMED_200)
@pytest.mark.parametrize("call", ["get_endpoint", "update_config", "create_endpoint"])
async def test_malformed_2xx_is_malformed_response(
    make_client: Callable[..., ServingClient], clock: FakeClock, response: httpx.Response, call: str
) -> None:
    recorder = Recorder(lambda _r: response)
    async with make_client(recorder) as client:
        with pytest.raises(MalformedResponse) as caught:
            await invoke(client, call)
    assert caught.value.call == call
    assert caught.value.status == 200
    # Malformed answers are not resent: one request, no sleeping.
    assert len(recorder.requests) == 1
    assert clock.slept == []


@pytest.mark.parametrize(
    ("response", "call"),
    [
        (httpx.Response(200, json={"logs": 42}), "build_logs"),
        (httpx.Response(200, text="no json"), "server_logs"),
        (httpx.Response(200, json={"contents": ["x"]}), "export_metrics"),
        (httpx.Response(200, content=b"\xff\xfe\x00\x01"), "export_metrics"),
        (httpx.Response(200, text="just words"), "openapi"),
        (httpx.Response(200, text="{broken json"), "openapi"),
        (httpx.Response(200, text="[1, 2]"), "openapi"),
        (httpx.Response(200, text="<html>nope</html>"), "query"),
        (httpx.Response(200, content=b""), "query"),
        (httpx.Response(200, json={"endpoints": {"a": 1}}), "list_endpoints"),
        (httpx.Response(200, text=HTML_PAGE), "list_endpoints"),
        (httpx.Response(200, content=b""), "list_endpoints"),
        (httpx.Response(200, text='{"endpoints": [{"name": "a"'), "list_endpoints"),
        (httpx.Response(200, json=[]), "list_endpoints"),
        (httpx.Response(200, text="<html></html>"), "patch_tags"),
        (httpx.Response(200, json={"endpoints": [{"id": "no-name"}]}), "list_endpoints"),
        (httpx.Response(200, json={"tags": [{"value": "no key"}]}), "patch_tags"),
        (httpx.Response(200, json={"tags": "a"}), "patch_tags"),
        (httpx.Response(200, json=[1]), "stop_endpoint"),
        (httpx.Response(200, json={"name": "ads", "state": "x"}), "start_endpoint"),
    ],
)
async def test_malformed_bodies_of_the_other_calls(
    make_client: Callable[..., ServingClient], response: httpx.Response, call: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        # Before its first invocation of an endpoint the client reads where to send it.
        if request.method == "GET" and call == "query":
            return httpx.Response(200, json=endpoint_body())
        return response

    async with make_client(handler) as client:
        with pytest.raises(MalformedResponse) as caught:
            await invoke(client, call)
    assert caught.value.call == call


@pytest.mark.parametrize(
    ("response", "cls"),
    [
        (httpx.Response(502, text="<html><title>502 Bad Gateway</title></html>"), Unavailable),
        (httpx.Response(500, content=b""), Unavailable),
        (httpx.Response(404, text="<html>Not Found</html>"), NotFound),
        (httpx.Response(403, content=b""), PermissionDenied),
        (httpx.Response(400, text="INVALID_PARAMETER_VALUE: bad split"), InvalidRequest),
        (httpx.Response(409, text="conflict"), UpdateInProgress),
        (httpx.Response(302, headers={"location": "https://login.example.com"}), MalformedResponse),
    ],
)
async def test_error_pages_become_typed_errors_within_the_budget(
    make_client: Callable[..., ServingClient],
    clock: FakeClock,
    response: httpx.Response,
    cls: type[ServingError],
) -> None:
    recorder = Recorder(lambda _r: response)
    async with make_client(recorder) as client:
        with pytest.raises(cls):
            await client.update_config("ads", spec({"ads-3": 100}))
    if cls is Unavailable:
        assert len(recorder.requests) > 2
        # The fake clock counts from an epoch near 1.8e9 s: allow its float rounding.
        assert sum(clock.slept) <= 30.0 + 1e-6
    else:
        assert len(recorder.requests) == 1


class _BrokenStream(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"name": "ads", '
        raise httpx.RemoteProtocolError("peer closed connection without complete body")


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param(httpx.ConnectError("connection refused"), id="connect"),
        pytest.param(httpx.ReadTimeout("read timed out"), id="timeout"),
        pytest.param(httpx.RemoteProtocolError("server disconnected"), id="disconnect"),
        pytest.param("truncated-stream", id="truncated-stream"),
    ],
)
async def test_transport_failures_are_retried_then_typed(
    make_client: Callable[..., ServingClient], clock: FakeClock, failure: Exception | str
) -> None:
    recorder_calls = 0
    statuses: list[int | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal recorder_calls
        recorder_calls += 1
        if isinstance(failure, Exception):
            raise failure
        return httpx.Response(200, stream=_BrokenStream())

    async with make_client(
        handler, on_response=lambda _c, status, _s: statuses.append(status)
    ) as client:
        with pytest.raises(ServingTransportError) as caught:
            await client.get_endpoint("ads")
    assert caught.value.transient
    assert isinstance(caught.value.__cause__, httpx.HTTPError)
    assert recorder_calls > 2
    assert set(statuses) == {None}
    assert 0 < sum(clock.slept) <= 30.0 + 1e-6


async def test_transient_failures_are_ridden_through(
    make_client: Callable[..., ServingClient], clock: FakeClock
) -> None:
    answers = [
        httpx.Response(
            503, json={"error_code": "TEMPORARILY_UNAVAILABLE"}, headers={"retry-after": "2"}
        ),
        httpx.Response(
            429, json={"error_code": "REQUEST_LIMIT_EXCEEDED"}, headers={"retry-after": "1"}
        ),
        httpx.Response(200, json=endpoint_body()),
    ]
    async with make_client(lambda _r: answers.pop(0)) as client:
        endpoint = await client.get_endpoint("ads")
    assert endpoint.name == "ads"
    assert len(clock.slept) == 2
    assert clock.slept[0] >= 2.0
    assert clock.slept[1] >= 1.0


async def test_a_failing_metrics_hook_does_not_break_calls(
    make_client: Callable[..., ServingClient],
) -> None:
    def hook(call: str, status: int | None, seconds: float) -> None:
        raise RuntimeError("metrics backend down")

    async with make_client(
        lambda _r: httpx.Response(200, json=endpoint_body()), on_response=hook
    ) as c:
        assert (await c.get_endpoint("ads")).name == "ads"


# --- wait_until_applied ---------------------------------------------------------------------


class Script:
    """GET answers in order; the last one repeats."""

    def __init__(self, *bodies: dict[str, Any] | httpx.Response) -> None:
        self.bodies = list(bodies)
        self.gets = 0

    def __call__(self, _request: httpx.Request) -> httpx.Response:
        self.gets += 1
        body = self.bodies.pop(0) if len(self.bodies) > 1 else self.bodies[0]
        if isinstance(body, httpx.Response):
            return body
        return httpx.Response(200, json=copy.deepcopy(body))


TARGET = {"ads-3": 90, "ads-4": 10}


async def test_wait_polls_through_in_progress_then_verifies(
    make_client: Callable[..., ServingClient], clock: FakeClock
) -> None:
    script = Script(
        endpoint_body(ready="READY", update="IN_PROGRESS", version=1),
        endpoint_body(ready="READY", update="IN_PROGRESS", version=1),
        endpoint_body(split=TARGET, version=2),
    )
    async with make_client(script) as client:
        endpoint = await client.wait_until_applied("ads", spec(TARGET), deadline_seconds=60)
    assert endpoint.config is not None
    assert endpoint.config.config_version == 2
    assert script.gets == 3
    assert clock.slept == [2.0, 2.0]


async def test_wait_treats_an_old_version_as_still_pending(
    make_client: Callable[..., ServingClient], clock: FakeClock
) -> None:
    put_answer = endpoint_body(
        update="IN_PROGRESS",
        version=4,
        pending={"config_version": 5, "start_time": 1, "served_entities": []},
    )
    gets = Script(
        endpoint_body(version=4),  # the race: NOT_UPDATING, still the old config
        endpoint_body(version=4),
        endpoint_body(split=TARGET, version=5),
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            return httpx.Response(200, json=put_answer)
        return gets(request)

    async with make_client(handler) as client:
        await client.update_config("ads", spec(TARGET))
        endpoint = await client.wait_until_applied("ads", spec(TARGET), deadline_seconds=60)
    assert endpoint.config is not None
    assert endpoint.config.config_version == 5
    assert gets.gets == 3


async def test_without_the_version_check_the_race_looks_like_drift(
    make_client: Callable[..., ServingClient],
) -> None:
    async with make_client(Script(endpoint_body(version=4))) as client:
        with pytest.raises(ConfigMismatch):
            await client.wait_until_applied("ads", spec(TARGET), deadline_seconds=60)


async def test_wait_raises_update_failed_with_the_snapshot(
    make_client: Callable[..., ServingClient],
) -> None:
    failed = endpoint_body(update="UPDATE_FAILED", version=1)
    async with make_client(Script(endpoint_body(update="IN_PROGRESS"), failed)) as client:
        with pytest.raises(UpdateFailed) as caught:
            await client.wait_until_applied("ads", spec(TARGET), deadline_seconds=60)
    assert caught.value.endpoint_snapshot.state.config_update == "UPDATE_FAILED"
    assert caught.value.endpoint == "ads"
    assert not caught.value.retryable


async def test_a_failed_update_is_not_waited_for_again(
    make_client: Callable[..., ServingClient],
) -> None:
    put_answer = endpoint_body(
        update="IN_PROGRESS", version=1, pending={"config_version": 2, "served_entities": []}
    )
    gets = Script(
        endpoint_body(update="UPDATE_FAILED", version=1),
        endpoint_body(version=1),
    )

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            return httpx.Response(200, json=put_answer)
        return gets(request)

    async with make_client(handler) as client:
        await client.update_config("ads", spec(TARGET))
        with pytest.raises(UpdateFailed):
            await client.wait_until_applied("ads", spec(TARGET), deadline_seconds=60)
        # The old config serves on; checking it settles at once instead of waiting for a
        # version 2 that will never come.
        restored = await client.wait_until_applied("ads", spec({"ads-3": 100}), deadline_seconds=60)
    assert restored.config is not None
    assert restored.config.config_version == 1
    assert gets.gets == 2


async def test_wait_raises_update_failed_on_cancel(
    make_client: Callable[..., ServingClient],
) -> None:
    async with make_client(Script(endpoint_body(update="UPDATE_CANCELED"))) as client:
        with pytest.raises(UpdateFailed):
            await client.wait_until_applied("ads", spec(TARGET), deadline_seconds=60)


async def test_wait_times_out_exactly_at_the_deadline(
    make_client: Callable[..., ServingClient], clock: FakeClock
) -> None:
    start = clock.monotonic()
    script = Script(endpoint_body(update="IN_PROGRESS"))
    async with make_client(script) as client:
        with pytest.raises(UpdateTimeout) as caught:
            await client.wait_until_applied("ads", spec(TARGET), deadline_seconds=7)
    assert clock.monotonic() - start == pytest.approx(7.0)
    assert clock.slept == [2.0, 2.0, 2.0, 1.0]
    assert caught.value.retryable
    assert caught.value.endpoint_snapshot is not None
    assert "IN_PROGRESS" in str(caught.value)


async def test_wait_keeps_polling_while_not_ready_or_in_an_unknown_state(
    make_client: Callable[..., ServingClient],
) -> None:
    script = Script(
        endpoint_body(ready="NOT_READY", split=TARGET, version=2),
        endpoint_body(ready="READY", update="WARMING_SOMETHING", split=TARGET, version=2),
        endpoint_body(split=TARGET, version=2),
    )
    async with make_client(script) as client:
        await client.wait_until_applied("ads", spec(TARGET), deadline_seconds=60)
    assert script.gets == 3


async def test_wait_detects_drift_as_config_mismatch(
    make_client: Callable[..., ServingClient],
) -> None:
    by_hand = endpoint_body(split={"ads-3": 50, "ads-4": 50}, version=3)
    async with make_client(Script(by_hand)) as client:
        with pytest.raises(ConfigMismatch) as caught:
            await client.wait_until_applied("ads", spec(TARGET), deadline_seconds=60)
    assert caught.value.expected == TARGET
    assert caught.value.actual == {"ads-3": 50, "ads-4": 50}
    assert caught.value.endpoint_snapshot.name == "ads"


async def test_wait_detects_a_swapped_entity_version(
    make_client: Callable[..., ServingClient],
) -> None:
    live = endpoint_body(split=TARGET, version=3)
    live["config"]["served_entities"][1]["entity_version"] = "5"
    async with make_client(Script(live)) as client:
        with pytest.raises(ConfigMismatch) as caught:
            await client.wait_until_applied("ads", spec(TARGET), deadline_seconds=60)
    assert ("ads-4", "main.ml.ads", "5") in caught.value.actual_entities
    assert ("ads-4", "main.ml.ads", "4") in caught.value.expected_entities


async def test_wait_compares_routes_by_whichever_name_is_set(
    make_client: Callable[..., ServingClient],
) -> None:
    live = endpoint_body(split=TARGET, version=3)
    live["config"]["traffic_config"]["routes"] = [
        {"served_entity_name": "ads-3", "traffic_percentage": 90},
        {"served_model_name": "ads-4", "traffic_percentage": 10},
    ]
    async with make_client(Script(live)) as client:
        await client.wait_until_applied("ads", spec(TARGET), deadline_seconds=60)


async def test_wait_rides_out_transient_poll_errors(
    make_client: Callable[..., ServingClient],
) -> None:
    script = Script(
        endpoint_body(update="IN_PROGRESS"),
        httpx.Response(503, text="busy"),
        httpx.Response(503, text="busy"),
        endpoint_body(split=TARGET, version=2),
    )
    retry = RetryPolicy.never()
    async with make_client(script, retry=retry) as client:
        await client.wait_until_applied("ads", spec(TARGET), deadline_seconds=60)
    assert script.gets == 4


async def test_wait_surfaces_permanent_poll_errors_at_once(
    make_client: Callable[..., ServingClient],
) -> None:
    script = Script(endpoint_body(update="IN_PROGRESS"), httpx.Response(404, json={}))
    async with make_client(script) as client:
        with pytest.raises(NotFound):
            await client.wait_until_applied("ads", spec(TARGET), deadline_seconds=60)
    assert script.gets == 2


async def test_wait_timeout_after_only_failed_polls_keeps_the_cause(
    make_client: Callable[..., ServingClient],
) -> None:
    script = Script(httpx.Response(503, text="down"))
    async with make_client(script, retry=RetryPolicy.never()) as client:
        with pytest.raises(UpdateTimeout) as caught:
            await client.wait_until_applied("ads", spec(TARGET), deadline_seconds=5)
    assert caught.value.endpoint_snapshot is None
    assert isinstance(caught.value.__cause__, Unavailable)


# --- building from settings -------------------------------------------------------------------


async def test_from_settings_wires_auth_timeouts_and_retry() -> None:
    recorder = Recorder(lambda _r: httpx.Response(200, json=endpoint_body()))
    databricks = DatabricksSettings.model_construct(
        host="workspace.example.com",
        token=SecretStr("dapi-from-settings"),
        client_id=None,
        client_secret=None,
        config_profile=None,
        auth_type=None,
    )
    serving = ServingSettings(
        request_timeout=3.0, update_poll_interval=1.5, retry_budget=9.0, auth_resolver="builtin"
    )
    client = ServingClient.from_settings(
        databricks, serving, transport=httpx.MockTransport(recorder), clock=FakeClock()
    )
    async with client:
        await client.get_endpoint("ads")
    assert client.host == "https://workspace.example.com"
    assert client.poll_interval == 1.5
    assert client.timeout == 3.0
    assert client.retry.budget_seconds == 9.0
    assert recorder.requests[0].headers["authorization"] == "Bearer dapi-from-settings"
    assert (
        str(recorder.requests[0].url)
        == "https://workspace.example.com/api/2.0/serving-endpoints/ads"
    )


@settings(max_examples=150, deadline=None)
@given(
    status=st.sampled_from([200, 201, 204, 301, 400, 401, 404, 409, 429, 500, 502, 503]),
    body=st.one_of(
        st.binary(max_size=300),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(max_size=12),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(
                    st.sampled_from(
                        ["name", "state", "ready", "config_update", "config", "routes"]
                    ),
                    inner,
                    max_size=4,
                )
            ),
            max_leaves=12,
        ).map(lambda value: json.dumps(value).encode()),
    ),
    content_type=st.sampled_from(["application/json", "text/html", "text/plain"]),
)
def test_any_answer_is_an_endpoint_or_a_serving_error(
    status: int, body: bytes, content_type: str
) -> None:
    async def scenario() -> None:
        transport = httpx.MockTransport(
            lambda _r: httpx.Response(status, content=body, headers={"content-type": content_type})
        )
        clock = FakeClock()
        retry = RetryPolicy(initial_backoff=0.5, max_backoff=2.0, budget_seconds=5.0)
        async with ServingClient(
            HOST, PatAuth(TOKEN), transport=transport, clock=clock, retry=retry
        ) as client:
            outcome: object
            try:
                outcome = await client.get_endpoint("ads")
            except ServingError as error:
                outcome = error
        if isinstance(outcome, ServingError):
            assert outcome.call == "get_endpoint"
            assert sum(clock.slept) <= 5.0 + 1e-6
        else:
            assert 200 <= status < 300
            assert isinstance(outcome, Endpoint)

    asyncio.run(scenario())
