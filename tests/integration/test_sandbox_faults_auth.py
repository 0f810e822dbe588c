"""Injected faults, OAuth M2M, the admin API's own validation, and malformed requests.

Whatever arrives, the sandbox answers a clear 4xx with a JSON error body: never HTML, never a
500 traceback.
"""

from __future__ import annotations

import base64
import ssl
import time
from typing import Any

import httpx
import pytest

from rollout.clock import SystemClock
from rollout.sandbox.server import SandboxServer

API = "/api/2.0/serving-endpoints"
# The sandbox speaks plain HTTP; handing httpx a context skips loading the CA bundle per client.
TLS = ssl.create_default_context()
BASELINE = {"name": "ads-3", "entity_name": "main.ml.ads", "entity_version": "3"}


def create(admin: httpx.Client) -> None:
    response = admin.post("/endpoints", json={"name": "ads", "served_entities": [BASELINE]})
    assert response.status_code == 201, response.text


def add_fault(admin: httpx.Client, **body: Any) -> str:
    response = admin.post("/faults", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_429_with_retry_after_at_most_count_times(sandbox_admin: httpx.Client,
                                                  sandbox_api: httpx.Client) -> None:
    create(sandbox_admin)
    add_fault(sandbox_admin, status=429, count=2, retry_after_seconds=7,
              path_pattern=r"^/api/2\.0/serving-endpoints/ads$", methods=["GET"])
    for _ in range(2):
        response = sandbox_api.get(f"{API}/ads")
        assert response.status_code == 429
        assert response.headers["Retry-After"] == "7"
        assert response.json() == {"error_code": "REQUEST_LIMIT_EXCEEDED",
                                   "message": "Too many requests. Please wait and retry."}
    assert sandbox_api.get(f"{API}/ads").status_code == 200
    # Other paths and methods were never affected.
    assert sandbox_api.get(f"{API}/ads/metrics").status_code == 200
    faults = sandbox_admin.get("/faults").json()["faults"]
    assert faults[0]["remaining"] == 0
    assert faults[0]["served"] == 2
    stats = sandbox_admin.get("/stats").json()
    assert stats["faults_served"] == 2
    assert stats["requests"] == 4


@pytest.mark.parametrize(("status", "code"),
                         [(500, "INTERNAL_ERROR"), (503, "TEMPORARILY_UNAVAILABLE"),
                          (504, "DEADLINE_EXCEEDED")])
def test_server_error_faults_have_databricks_bodies(sandbox_admin: httpx.Client,
                                                    sandbox_api: httpx.Client, status: int,
                                                    code: str) -> None:
    create(sandbox_admin)
    add_fault(sandbox_admin, status=status, count=1, path_pattern="invocations")
    response = sandbox_api.post("/serving-endpoints/ads/invocations", json={"instances": [1]})
    assert response.status_code == status
    assert response.json()["error_code"] == code
    assert "Retry-After" not in response.headers
    assert sandbox_api.post("/serving-endpoints/ads/invocations",
                            json={"instances": [1]}).status_code == 200


def test_fault_rate_is_a_probability(sandbox_admin: httpx.Client,
                                     sandbox_api: httpx.Client) -> None:
    create(sandbox_admin)
    add_fault(sandbox_admin, status=503, rate=0.0)
    assert sandbox_api.get(f"{API}/ads").status_code == 200
    sandbox_admin.delete("/faults")
    add_fault(sandbox_admin, status=503, rate=0.5, path_pattern="/ads$")
    n = 120
    failed = sum(sandbox_api.get(f"{API}/ads").status_code == 503 for _ in range(n))
    # Binomial(120, 0.5): sd 5.5, tolerance 4 sd.
    assert abs(failed - n / 2) <= 4 * (n * 0.25) ** 0.5
    assert sandbox_admin.get("/stats").json()["faults_served"] == failed


def test_slow_responses_and_clearing(sandbox_admin: httpx.Client,
                                     sandbox_api: httpx.Client) -> None:
    create(sandbox_admin)
    fault_id = add_fault(sandbox_admin, delay_seconds=0.3, path_pattern="/ads$")
    started = time.monotonic()
    assert sandbox_api.get(f"{API}/ads").status_code == 200  # only slow
    assert time.monotonic() - started >= 0.3
    assert sandbox_admin.delete(f"/faults/{fault_id}").status_code == 200
    assert sandbox_admin.delete(f"/faults/{fault_id}").status_code == 404
    add_fault(sandbox_admin, status=429, path_pattern=".*")
    # The admin API is never faulted, even by a catch-all pattern.
    assert sandbox_admin.get("/stats").status_code == 200
    assert sandbox_api.get(f"{API}/ads").status_code == 429
    assert sandbox_admin.delete("/faults").json() == {}
    assert sandbox_api.get(f"{API}/ads").status_code == 200


@pytest.mark.parametrize(
    "body",
    [{"status": 418}, {"status": 429, "rate": 2}, {"path_pattern": "("},
     {"status": 429, "count": -1}, {"delay_seconds": "slow"}, {"status": 429, "surprise": 1}],
    ids=["status", "rate", "pattern", "count", "delay-type", "unknown-field"],
)
def test_invalid_fault_is_400(sandbox_admin: httpx.Client, body: dict[str, Any]) -> None:
    response = sandbox_admin.post("/faults", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


FORM = {"grant_type": "client_credentials", "scope": "all-apis"}


def test_oauth_m2m_token(sandbox: SandboxServer, sandbox_admin: httpx.Client) -> None:
    create(sandbox_admin)
    with httpx.Client(base_url=sandbox.url, timeout=10.0, verify=TLS) as client:
        response = client.post("/oidc/v1/token", data=FORM,
                               headers=basic("sandbox-client", "sandbox-secret"))
        assert response.status_code == 200, response.text
        token = response.json()
        assert token["token_type"] == "Bearer"
        assert token["expires_in"] == 3600
        bearer = {"Authorization": f"Bearer {token['access_token']}"}
        got = client.get(f"{API}/ads", headers=bearer)
        assert got.status_code == 200
        assert got.json()["permission_level"] == "CAN_MANAGE"
        # Credentials in the form work too.
        form_creds = client.post("/oidc/v1/token", data=FORM | {
            "client_id": "sandbox-client", "client_secret": "sandbox-secret"})
        assert form_creds.status_code == 200
        assert sandbox_admin.get("/stats").json()["oauth_tokens_issued"] == 2
        # The token expires on the workspace clock.
        sandbox_admin.post("/clock/advance", json={"seconds": 3600})
        expired = client.get(f"{API}/ads", headers=bearer)
        assert expired.status_code == 401
        assert expired.json()["error_code"] == "UNAUTHENTICATED"
        discovery = client.get("/oidc/.well-known/oauth-authorization-server").json()
        assert discovery["token_endpoint"] == f"{sandbox.url}/oidc/v1/token"


def test_oauth_errors(sandbox: SandboxServer, sandbox_admin: httpx.Client) -> None:
    r = sandbox_admin.post("/oauth-clients", json={"client_id": "sp", "client_secret": "s3",
                                                   "token_lifetime_seconds": 60,
                                                   "permission": "CAN_VIEW"})
    assert r.status_code == 201
    with httpx.Client(base_url=sandbox.url, timeout=10.0, verify=TLS) as client:
        for headers in (basic("sandbox-client", "wrong"), basic("nobody", "x"), {},
                        {"Authorization": "Basic !!!"}):
            response = client.post("/oidc/v1/token", data=FORM, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"] == "invalid_client"
            assert response.json()["error_description"]
        bad_grant = client.post("/oidc/v1/token", data=FORM | {"grant_type": "password"},
                                headers=basic("sp", "s3"))
        assert bad_grant.status_code == 400
        assert bad_grant.json()["error"] == "unsupported_grant_type"
        as_json = client.post("/oidc/v1/token", json=FORM, headers=basic("sp", "s3"))
        assert as_json.status_code == 400
        assert as_json.json()["error"] == "invalid_request"
        ok = client.post("/oidc/v1/token", data=FORM, headers=basic("sp", "s3")).json()
        assert ok["expires_in"] == 60
        viewer = {"Authorization": f"Bearer {ok['access_token']}"}
        create(sandbox_admin)
        assert client.put(f"{API}/ads/config", json={"served_entities": [BASELINE]},
                          headers=viewer).status_code == 403


def test_clock_advance_needs_a_fake_clock() -> None:
    with SandboxServer(clock=SystemClock()) as real, httpx.Client(
        base_url=real.admin_url, timeout=10.0, verify=TLS
    ) as admin:
        response = admin.post("/clock/advance", json={"seconds": 1})
        assert response.status_code == 409
        assert response.json()["error_code"] == "INVALID_STATE"


def test_reset_forgets_everything(sandbox_admin: httpx.Client,
                                  sandbox_api: httpx.Client) -> None:
    create(sandbox_admin)
    add_fault(sandbox_admin, status=429, path_pattern="nothing-matches")
    sandbox_admin.post("/tokens", json={"token": "extra", "permission": "CAN_VIEW"})
    assert sandbox_admin.post("/reset").json() == {}
    assert sandbox_api.get(API).json() == {"endpoints": []}
    assert sandbox_admin.get("/faults").json() == {"faults": []}
    stats = sandbox_admin.get("/stats").json()
    assert stats["requests"] == 1  # the list call just above
    assert stats["oauth_tokens_issued"] == 0
    assert sandbox_api.get(API, headers={"Authorization": "Bearer extra"}).status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 404),
        ("GET", "/api/2.0/clusters/list", 404),
        ("GET", f"{API}/", 404),
        ("GET", f"{API}/ads/unknown", 404),
        ("GET", "/docs", 404),
        ("GET", "/openapi.json", 404),
        ("GET", "/_sandbox/v1/nothing", 404),
        ("GET", f"{API}/" + "x" * 5000, 404),
        ("POST", f"{API}/ads", 405),
        ("GET", f"{API}/ads/config", 405),
        ("DELETE", f"{API}/ads/config:stop", 405),
        ("PUT", "/serving-endpoints/ads/invocations", 405),
        ("GET", "/oidc/v1/token", 405),
        ("PATCH", "/_sandbox/v1/faults", 405),
    ],
)
def test_unknown_paths_and_wrong_methods_answer_json(sandbox_admin: httpx.Client,
                                                     sandbox_api: httpx.Client, method: str,
                                                     path: str, status: int) -> None:
    create(sandbox_admin)
    response = sandbox_api.request(method, path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error_code"] in {"ENDPOINT_NOT_FOUND", "METHOD_NOT_ALLOWED",
                                             "RESOURCE_DOES_NOT_EXIST"}
    assert response.json()["message"]


ADMIN_CASES: list[tuple[str, str, Any]] = [
    ("POST", "/endpoints", {"name": "x"}),
    ("POST", "/endpoints", {"name": "x", "served_entities": "nope"}),
    ("POST", "/endpoints", {"name": "bad name", "served_entities": [BASELINE]}),
    ("POST", "/endpoints", {"name": "x", "served_entities": [BASELINE], "qps": -1}),
    ("POST", "/endpoints",
     b'{"name": "x", "served_entities": [{"name": "a", "entity_name": "m"}], "qps": 1e999}'),
    ("POST", "/endpoints", {"name": "x", "served_entities": [BASELINE],
                            "profiles": {"ads-3": {"error_rate": 2}}}),
    ("POST", "/endpoints", {"name": "x", "served_entities": [BASELINE],
                            "profiles": {"ads-3": {"latency_p50_ms": 100,
                                                   "latency_p99_ms": 10}}}),
    ("PUT", "/endpoints/ads/profiles/ads-3", {"typo_rate": 0.1}),
    ("PUT", "/endpoints/ads/profiles/bad name", {}),
    ("PUT", "/endpoints/ads/load", {"qps": "fast"}),
    ("PUT", "/endpoints/ads/load", {}),
    ("PUT", "/endpoints/ads/updates", {"duration_seconds": -1}),
    ("PUT", "/endpoints/ads/updates", {"fail_next": 10**40}),
    ("POST", "/tokens", {"token": "t", "permission": "CAN_EVERYTHING"}),
    ("POST", "/oauth-clients", {"client_id": "c"}),
    ("POST", "/clock/advance", {"seconds": -5}),
    ("POST", "/clock/advance", {"seconds": [1]}),
    ("GET", "/endpoints/ads/windows/abc", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ADMIN_CASES)
def test_admin_rejects_bad_bodies_with_400(sandbox_admin: httpx.Client, method: str, path: str,
                                           body: Any) -> None:
    create(sandbox_admin)
    if isinstance(body, bytes):  # JSON that Python's encoder refuses to produce
        response = sandbox_admin.request(method, path, content=body)
    else:
        response = sandbox_admin.request(method, path, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    assert response.json()["message"]


def test_admin_unknown_endpoint_is_404(sandbox_admin: httpx.Client) -> None:
    for method, path, body in (("PUT", "/endpoints/none/load", {"qps": 1}),
                               ("PUT", "/endpoints/none/profiles/e", {}),
                               ("PUT", "/endpoints/none/updates", {}),
                               ("GET", "/endpoints/none", None)):
        response = sandbox_admin.request(method, path, json=body)
        assert response.status_code == 404
        assert response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"


def test_garbage_never_causes_a_500(sandbox_admin: httpx.Client,
                                    sandbox_api: httpx.Client) -> None:
    create(sandbox_admin)
    payloads: list[bytes] = [b"", b"null", b"0", b"{", b"\x00\x01", b'{"a":' * 2000,
                             b'{"served_entities": [null]}', b'{"traffic_config": null}',
                             b'{"add_tags": [null]}', b'{"name": 5}', b'{"qps": null}',
                             b'{"dataframe_records": {"a": 1}}', b'{"seconds": 1e400}']
    targets = [("PUT", f"{API}/ads/config"), ("POST", API), ("PATCH", f"{API}/ads/tags"),
               ("POST", "/serving-endpoints/ads/invocations"),
               ("POST", "/oidc/v1/token")]
    admin_targets = [("POST", "/endpoints"), ("PUT", "/endpoints/ads/load"),
                     ("POST", "/faults"), ("POST", "/clock/advance"),
                     ("PATCH", "/endpoints/ads/profiles/ads-3")]
    for payload in payloads:
        for method, path in targets:
            response = sandbox_api.request(method, path, content=payload,
                                           headers={"Content-Type": "application/json"})
            assert 400 <= response.status_code < 500, (path, payload[:20], response.text)
            assert response.json()
        for method, path in admin_targets:
            response = sandbox_admin.request(method, path, content=payload,
                                             headers={"Content-Type": "application/json"})
            assert 400 <= response.status_code < 500, (path, payload[:20], response.text)
            assert response.json()["error_code"]
    # And the workspace is still fine.
    assert sandbox_api.get(f"{API}/ads").status_code == 200
