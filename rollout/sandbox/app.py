"""The sandbox's HTTP face: Databricks' serving-endpoints REST API plus an admin API.

The sandbox is the fake Databricks workspace behind the serving client: the client, the daemon
and the benchmarks talk to this app exactly as they would talk to a workspace, and tests steer
it through the unauthenticated admin API under ``/_sandbox/v1`` (see README.md beside this
module for the contract). State lives in ``rollout.sandbox.workspace``; this module only parses
requests, checks bearer tokens and shapes answers.

Route-optimized endpoints (created with ``route_optimized: true``) get an ``endpoint_url`` on
this server under ``/route-optimized/<workspace id>/serving-endpoints/<name>/invocations``,
standing in for Databricks' per-endpoint host: it accepts only OAuth tokens issued by
``/oidc/v1/token`` (a PAT gets 401), and the endpoint answers invocations only there.

Every answer that is not a success is a Databricks error body ``{"error_code", "message"}``
(OAuth's ``{"error", "error_description"}`` on the token endpoint): unknown paths, wrong
methods and malformed bodies get a clear 4xx, never HTML and never a traceback.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import random
from typing import Any, TypeVar
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from rollout.sandbox.models import (
    AdminClockAdvance,
    AdminEndpointCreate,
    AdminFault,
    AdminLoad,
    AdminOAuthClient,
    AdminRevoke,
    AdminToken,
    AdminUpdates,
    ApiError,
    EndpointCreate,
    EntityProfile,
    Permission,
    TagsPatch,
    describe_validation_error,
    invalid,
    parse_config,
)
from rollout.sandbox.realism import EndpointRealism
from rollout.sandbox.workspace import FAULT_ERRORS, Workspace

ADMIN_PREFIX = "/_sandbox/v1"
API = "/api/2.0/serving-endpoints"
WORKSPACE_ID = "1000000000000000"
# Where route-optimized endpoints are queried: Databricks gives each its own host; here it is a
# path prefix on the sandbox's own host, with the same "<workspace id>/serving-endpoints/..."
# layout under it.
ROUTE_OPTIMIZED_PREFIX = f"/route-optimized/{WORKSPACE_ID}"
PERMISSIONS_API = "/api/2.0/permissions/serving-endpoints"
METRICS_MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Keys of an invocation body that carry the model's input (databricks-api.md 1d).
INPUT_KEYS = ("dataframe_split", "dataframe_records", "instances", "inputs", "messages",
              "prompt", "input")

M = TypeVar("M", bound=BaseModel)


def error_response(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


def _reject_constant(name: str) -> float:
    # JSON has no NaN or Infinity; Python's parser accepts them unless told otherwise.
    raise ValueError(f"{name} is not valid JSON")


async def json_body(request: Request, *, required: bool = True) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 that says what is wrong with it."""
    raw = await request.body()
    if not raw.strip():
        if required:
            raise ApiError(400, "BAD_REQUEST", "The request body is empty; expected a JSON "
                           "object.")
        return {}
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, undecodable bytes and over-long integers.
        raise ApiError(400, "BAD_REQUEST", f"Malformed JSON in the request body: {exc}") from exc
    if not isinstance(data, dict):
        raise ApiError(400, "BAD_REQUEST",
                       f"The request body must be a JSON object, not {type(data).__name__}.")
    return data


def parse_model(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(describe_validation_error(exc)) from exc


def _merge(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``changes`` over ``base``, nested objects merged key by key (a PATCH of one setting)."""
    out = dict(base)
    for key, value in changes.items():
        old = out.get(key)
        out[key] = _merge(old, value) if isinstance(old, dict) and isinstance(value, dict) else (
            value)
    return out


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer" or not credential.strip():
        return None
    return credential.strip()


def _rows(body: dict[str, Any]) -> int:
    """How many predictions an invocation asks for; 400 when the input is unusable."""
    present = [k for k in INPUT_KEYS if k in body]
    if not present:
        raise ApiError(400, "BAD_REQUEST",
                       "Invalid input: the body must contain one of "
                       f"{', '.join(INPUT_KEYS)}.")
    if len(present) > 1:
        raise ApiError(400, "BAD_REQUEST",
                       f"Invalid input: give only one of {', '.join(present)}.")
    key = present[0]
    rows = _count_rows(key, body[key])
    if rows is None:
        shape = "an object with a 'data' list" if key == "dataframe_split" else "a list"
        raise ApiError(400, "BAD_REQUEST", f"Invalid input: {key} must be {shape}.")
    if rows == 0:
        raise ApiError(400, "BAD_REQUEST", f"Invalid input: {key} has no rows.")
    return rows


def _count_rows(key: str, value: object) -> int | None:
    """Rows in one input field; None when the field has the wrong shape."""
    if key == "dataframe_split":
        data = value.get("data") if isinstance(value, dict) else None
        return len(data) if isinstance(data, list) else None
    if key in ("dataframe_records", "instances"):
        return len(value) if isinstance(value, list) else None
    if key == "messages":
        # A chat request gets one answer, however long the conversation.
        return min(1, len(value)) if isinstance(value, list) else None
    if key == "inputs" and isinstance(value, list):
        return len(value)
    if key == "inputs" and isinstance(value, dict):
        first = next(iter(value.values()), None)
        return len(first) if isinstance(first, list) else 1
    return 1


def _predictions(entity: str, body: dict[str, Any], rows: int) -> list[float]:
    # Deterministic per entity and input, so the same request to the same entity answers the
    # same; different entities answer differently (as two model versions would).
    basis = json.dumps(body, sort_keys=True, default=str)
    rng = random.Random(f"{entity}:{basis}")
    return [round(rng.random(), 6) for _ in range(rows)]


def create_app(workspace: Workspace) -> FastAPI:
    """The sandbox application over ``workspace`` (which outlives it and can be shared)."""
    app = FastAPI(
        title="rollout sandbox",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    # A trailing slash is an unknown path (404 JSON), not a redirect to some other one.
    app.router.redirect_slashes = False
    app.state.workspace = workspace

    _register_errors(app)
    _register_faults(app, workspace)
    _register_control_plane(app, workspace)
    _register_permissions(app, workspace)
    _register_invocations(app, workspace)
    _register_oauth(app, workspace)
    _register_admin(app, workspace)
    _register_admin_auth(app, workspace)
    _register_config_log(app, workspace)
    _register_realism(app, workspace)
    _register_registry(app, workspace)
    return app


def _register_errors(app: FastAPI) -> None:
    """Errors: always JSON."""

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            err = ApiError(404, "ENDPOINT_NOT_FOUND", f"No API found for '{where}'")
        elif exc.status_code == 405:
            err = ApiError(405, "METHOD_NOT_ALLOWED", f"Method not allowed: '{where}'",
                           headers=dict(exc.headers or {}))
        else:
            err = ApiError(exc.status_code, "BAD_REQUEST", f"{exc.detail} ({where})")
        return error_response(err)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        return error_response(invalid(f"Invalid request: {exc.errors()[:1]}"))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> Response:
        return error_response(
            ApiError(500, "INTERNAL_ERROR", f"Internal error in the sandbox: {type(exc).__name__}")
        )


def _register_faults(app: FastAPI, ws: Workspace) -> None:
    """Faults and request counting for everything but the admin API."""
    app.add_middleware(FaultMiddleware, workspace=ws)


class FaultMiddleware:
    """Counts every non-admin request and applies the injected faults before routing.

    Plain ASGI rather than ``@app.middleware("http")``: it runs on every request and the
    request/response wrapping of the latter costs more than everything else here.
    """

    def __init__(self, app: ASGIApp, workspace: Workspace) -> None:
        self.app = app
        self.workspace = workspace

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or path.startswith(ADMIN_PREFIX):
            await self.app(scope, receive, send)
            return
        ws = self.workspace
        headers = dict(scope.get("headers") or [])
        ws.count_request(
            str(scope["method"]),
            path,
            headers.get(b"host", b"").decode("latin-1"),
            headers.get(b"authorization", b"").decode("latin-1") or None,
        )
        hit = ws.draw_fault(str(scope["method"]), path)
        if hit is not None:
            if hit.delay > 0:
                await asyncio.sleep(hit.delay)
            if hit.status:
                code, message = FAULT_ERRORS[hit.status]
                headers = {}
                if hit.retry_after is not None:
                    headers["Retry-After"] = str(hit.retry_after)
                response = error_response(ApiError(hit.status, code, message, headers))
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _register_control_plane(app: FastAPI, ws: Workspace) -> None:
    """Serving endpoints (control plane)."""

    @app.get(API)
    async def list_endpoints(request: Request) -> Response:
        _authorize(ws, request, "CAN_VIEW", "list serving endpoints")
        return JSONResponse({"endpoints": ws.list_endpoints()})

    @app.post(API)
    async def create_endpoint(request: Request) -> Response:
        _authorize(ws, request, "CAN_MANAGE", "create a serving endpoint")
        raw = await json_body(request)
        body = parse_model(EndpointCreate, raw)
        spec = None
        if body.config is not None:
            config = dict(body.config)
            # EndpointCoreConfigInput carries the endpoint's name; the SDK always sends it.
            config_name = config.pop("name", None)
            if config_name is not None and config_name != body.name:
                raise invalid(f"'config.name' is '{config_name}' but the endpoint is named "
                              f"'{body.name}'; leave it out or make them equal.")
            spec = parse_config(config, "config.")
        created = ws.create_endpoint(
            body.name,
            spec,
            tags={t.key: t.value or "" for t in body.tags},
            description=body.description,
            route_optimized=body.route_optimized,
            extras=raw,
        )
        return JSONResponse(_with_url(request, created))

    @app.get(API + "/{name}")
    async def get_endpoint(request: Request, name: str) -> Response:
        permission = _authorize(ws, request, "CAN_VIEW", "read a serving endpoint")
        return JSONResponse(_with_url(request, ws.get_endpoint(name, permission)))

    @app.delete(API + "/{name}")
    async def delete_endpoint(request: Request, name: str) -> Response:
        _authorize(ws, request, "CAN_MANAGE", "delete a serving endpoint")
        ws.delete_endpoint(name)
        return JSONResponse({})

    @app.put(API + "/{name}/config")
    async def update_config(request: Request, name: str) -> Response:
        _authorize(ws, request, "CAN_MANAGE", "update a serving endpoint's config")
        spec = parse_config(await json_body(request))
        return JSONResponse(_with_url(request, ws.update_config(name, spec)))

    # Starlette escapes literal path text, so the ':' of these Google-style custom methods is
    # matched literally (and '{name}' never swallows it: it stops at the '/').
    @app.post(API + "/{name}/config:stop")
    async def stop_endpoint(request: Request, name: str) -> Response:
        _authorize(ws, request, "CAN_MANAGE", "stop a serving endpoint")
        return JSONResponse(_with_url(request, ws.stop(name)))

    @app.post(API + "/{name}/config:start")
    async def start_endpoint(request: Request, name: str) -> Response:
        _authorize(ws, request, "CAN_MANAGE", "start a serving endpoint")
        return JSONResponse(_with_url(request, ws.start(name)))

    @app.patch(API + "/{name}/tags")
    async def patch_tags(request: Request, name: str) -> Response:
        _authorize(ws, request, "CAN_MANAGE", "change a serving endpoint's tags")
        body = parse_model(TagsPatch, await json_body(request))
        tags = ws.patch_tags(name, {t.key: t.value or "" for t in body.add_tags},
                             body.delete_tags)
        return JSONResponse({"tags": tags})

    @app.put(API + "/{name}/rate-limits")
    async def put_rate_limits(request: Request, name: str) -> Response:
        _authorize(ws, request, "CAN_MANAGE", "change a serving endpoint's rate limits")
        return JSONResponse(ws.put_rate_limits(name, await json_body(request, required=False)))

    @app.put(API + "/{name}/ai-gateway")
    async def put_ai_gateway(request: Request, name: str) -> Response:
        _authorize(ws, request, "CAN_MANAGE", "change a serving endpoint's AI gateway")
        return JSONResponse(ws.put_ai_gateway(name, await json_body(request, required=False)))

    @app.patch(API + "/{name}/notifications")
    async def patch_notifications(request: Request, name: str) -> Response:
        _authorize(ws, request, "CAN_MANAGE", "change a serving endpoint's notifications")
        body = await json_body(request, required=False)
        return JSONResponse(ws.patch_notifications(name, body))

    @app.get(API + "/{name}/metrics")
    async def export_metrics(request: Request, name: str) -> Response:
        _authorize(ws, request, "CAN_VIEW", "export a serving endpoint's metrics")
        return PlainTextResponse(ws.export_metrics(name), media_type=METRICS_MEDIA_TYPE)

    @app.get(API + "/{name}/served-models/{entity}/build-logs")
    async def build_logs(request: Request, name: str, entity: str) -> Response:
        _authorize(ws, request, "CAN_VIEW", "read build logs")
        return JSONResponse({"logs": ws.build_logs(name, entity)})

    @app.get(API + "/{name}/served-models/{entity}/logs")
    async def server_logs(request: Request, name: str, entity: str) -> Response:
        _authorize(ws, request, "CAN_VIEW", "read server logs")
        return JSONResponse({"logs": ws.server_logs(name, entity)})

    @app.get(API + "/{name}/openapi")
    async def openapi(request: Request, name: str) -> Response:
        _authorize(ws, request, "CAN_VIEW", "read a serving endpoint's OpenAPI document")
        return JSONResponse(ws.openapi(name, str(request.base_url)))


def _register_permissions(app: FastAPI, ws: Workspace) -> None:
    """Permissions of serving endpoints, keyed by endpoint id (``/api/2.0/permissions``)."""

    @app.get(PERMISSIONS_API + "/{endpoint_id}/permissionLevels")
    async def permission_levels(request: Request, endpoint_id: str) -> Response:
        _authorize(ws, request, "CAN_VIEW", "read permission levels")
        return JSONResponse(ws.permission_levels(endpoint_id))

    @app.get(PERMISSIONS_API + "/{endpoint_id}")
    async def get_permissions(request: Request, endpoint_id: str) -> Response:
        _authorize(ws, request, "CAN_VIEW", "read a serving endpoint's permissions")
        return JSONResponse(ws.get_permissions(endpoint_id))

    @app.put(PERMISSIONS_API + "/{endpoint_id}")
    async def set_permissions(request: Request, endpoint_id: str) -> Response:
        _authorize(ws, request, "CAN_MANAGE", "set a serving endpoint's permissions")
        body = await json_body(request, required=False)
        return JSONResponse(ws.set_permissions(endpoint_id, body))

    @app.patch(PERMISSIONS_API + "/{endpoint_id}")
    async def update_permissions(request: Request, endpoint_id: str) -> Response:
        _authorize(ws, request, "CAN_MANAGE", "update a serving endpoint's permissions")
        body = await json_body(request, required=False)
        return JSONResponse(ws.update_permissions(endpoint_id, body))


def _register_invocations(app: FastAPI, ws: Workspace) -> None:
    """Invocations (data plane; no /api/2.0 prefix)."""

    async def _invoke(request: Request, name: str, entity: str | None,
                      route_optimized: bool = False) -> Response:
        if route_optimized:
            permission = ws.authenticate_oauth(_bearer(request))
            ws.require(permission, "CAN_QUERY", "query a serving endpoint")
        else:
            _authorize(ws, request, "CAN_QUERY", "query a serving endpoint")
        body = await json_body(request)
        rows = _rows(body)
        outcome = ws.invoke(name, entity, route_optimized_url=route_optimized)
        headers = {"served-model-name": outcome.entity}
        if outcome.status >= 500:
            err = ApiError(outcome.status, "INTERNAL_ERROR",
                           f"Served entity {outcome.entity} failed to score the request "
                           "(simulated model error).", headers)
            return error_response(err)
        if outcome.status >= 400:
            err = ApiError(outcome.status, "BAD_REQUEST",
                           f"Served entity {outcome.entity} rejected the input (simulated "
                           "client error).", headers)
            return error_response(err)
        return JSONResponse({"predictions": _predictions(outcome.entity, body, rows)},
                            headers=headers)

    @app.post("/serving-endpoints/{name}/invocations")
    async def invocations(request: Request, name: str) -> Response:
        return await _invoke(request, name, None)

    @app.post("/serving-endpoints/{name}/served-models/{entity}/invocations")
    async def entity_invocations(request: Request, name: str, entity: str) -> Response:
        return await _invoke(request, name, entity)

    @app.post(ROUTE_OPTIMIZED_PREFIX + "/serving-endpoints/{name}/invocations")
    async def ro_invocations(request: Request, name: str) -> Response:
        return await _invoke(request, name, None, route_optimized=True)

    @app.post(ROUTE_OPTIMIZED_PREFIX
              + "/serving-endpoints/{name}/served-models/{entity}/invocations")
    async def ro_entity_invocations(request: Request, name: str, entity: str) -> Response:
        return await _invoke(request, name, entity, route_optimized=True)


def _with_url(request: Request, endpoint: dict[str, Any]) -> dict[str, Any]:
    """A route-optimized endpoint's answer with its ``endpoint_url`` on this server."""
    if endpoint.get("route_optimized") and isinstance(endpoint.get("name"), str):
        base = str(request.base_url).rstrip("/")
        name = quote(endpoint["name"], safe="")
        endpoint["endpoint_url"] = (
            f"{base}{ROUTE_OPTIMIZED_PREFIX}/serving-endpoints/{name}/invocations")
    return endpoint


def _register_oauth(app: FastAPI, ws: Workspace) -> None:
    """OAuth M2M."""

    def oauth_error(status: int, error: str, description: str) -> JSONResponse:
        return JSONResponse({"error": error, "error_description": description},
                            status_code=status)

    @app.post("/oidc/v1/token")
    async def oidc_token(request: Request) -> Response:
        content_type = request.headers.get("content-type", "")
        if content_type and "application/x-www-form-urlencoded" not in content_type:
            return oauth_error(400, "invalid_request",
                               "The token request must be form-encoded "
                               "(application/x-www-form-urlencoded).")
        try:
            form = parse_qs((await request.body()).decode("utf-8"), keep_blank_values=True)
        except (UnicodeDecodeError, ValueError):
            return oauth_error(400, "invalid_request", "The token request body is not valid.")
        grant = (form.get("grant_type") or [""])[0]
        if grant != "client_credentials":
            return oauth_error(400, "unsupported_grant_type",
                               f"grant_type must be client_credentials, not '{grant}'.")
        scope = (form.get("scope") or ["all-apis"])[0]
        if "all-apis" not in scope.split():
            return oauth_error(400, "invalid_scope", f"Unsupported scope '{scope}'.")
        client_id, client_secret = _client_credentials(request, form)
        if client_id is None or client_secret is None:
            return oauth_error(401, "invalid_client",
                               "Client credentials are missing (send them with HTTP Basic).")
        try:
            token, lifetime = ws.issue_oauth_token(client_id, client_secret)
        except ApiError:
            return oauth_error(401, "invalid_client", "Client authentication failed.")
        return JSONResponse({"access_token": token, "token_type": "Bearer",
                             "expires_in": lifetime, "scope": "all-apis"})

    @app.get("/oidc/.well-known/oauth-authorization-server")
    async def oidc_discovery(request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        return JSONResponse({
            "issuer": f"{base}/oidc",
            "authorization_endpoint": f"{base}/oidc/v1/authorize",
            "token_endpoint": f"{base}/oidc/v1/token",
        })

    @app.get("/.well-known/databricks-config")
    async def databricks_config(request: Request) -> Response:
        base = str(request.base_url).rstrip("/")
        return JSONResponse({"oidc_endpoint": f"{base}/oidc", "workspace_id": WORKSPACE_ID,
                             "cloud": "sandbox"})


def _register_admin_auth(app: FastAPI, ws: Workspace) -> None:
    """Admin API: revoking tokens (a 401 mid-rollout) and the log of API requests."""

    @app.post(ADMIN_PREFIX + "/tokens/revoke")
    async def admin_revoke(request: Request) -> Response:
        body = parse_model(AdminRevoke, await json_body(request))
        if body.token is None and not body.oauth:
            raise invalid("Give a token to revoke, or oauth: true to revoke every OAuth token.")
        return JSONResponse({"revoked": ws.revoke_tokens(body.token, oauth=body.oauth)})

    @app.get(ADMIN_PREFIX + "/requests")
    async def admin_requests() -> Response:
        return JSONResponse({"requests": ws.requests_logged()})


def _register_realism(app: FastAPI, ws: Workspace) -> None:
    """Admin API: an endpoint's traffic beyond its profiles (``EndpointRealism``)."""

    @app.get(ADMIN_PREFIX + "/endpoints/{name}/realism")
    async def admin_get_realism(name: str) -> Response:
        return JSONResponse(ws.get_realism(name).model_dump())

    @app.put(ADMIN_PREFIX + "/endpoints/{name}/realism")
    async def admin_put_realism(request: Request, name: str) -> Response:
        realism = parse_model(EndpointRealism, await json_body(request, required=False))
        ws.set_realism(name, realism)
        return JSONResponse(realism.model_dump())

    @app.patch(ADMIN_PREFIX + "/endpoints/{name}/realism")
    async def admin_patch_realism(request: Request, name: str) -> Response:
        changes = await json_body(request)
        realism = parse_model(EndpointRealism, _merge(ws.get_realism(name).model_dump(), changes))
        ws.set_realism(name, realism)
        return JSONResponse(realism.model_dump())


def _register_config_log(app: FastAPI, ws: Workspace) -> None:
    """Admin: every PUT config an endpoint received (what tests of replicas count)."""

    @app.get(ADMIN_PREFIX + "/endpoints/{name}/config-log")
    async def admin_config_log(name: str) -> Response:
        return JSONResponse({"puts": ws.config_log(name)})


def _register_admin(app: FastAPI, ws: Workspace) -> None:
    """Admin API (no auth: the server only listens on loopback)."""

    @app.post(ADMIN_PREFIX + "/endpoints")
    async def admin_create(request: Request) -> Response:
        body = parse_model(AdminEndpointCreate, await json_body(request))
        spec = parse_config({"served_entities": body.served_entities,
                             "traffic_config": body.traffic_config})
        created = ws.create_endpoint(body.name, spec, tags=body.tags, ready=True,
                                     profiles=body.profiles, qps=body.qps,
                                     realism=body.realism,
                                     route_optimized=body.route_optimized)
        return JSONResponse(_with_url(request, created), status_code=201)

    @app.get(ADMIN_PREFIX + "/endpoints/{name}")
    async def admin_view(name: str) -> Response:
        return JSONResponse(ws.admin_view(name))

    @app.get(ADMIN_PREFIX + "/endpoints/{name}/profiles/{entity}")
    async def admin_get_profile(name: str, entity: str) -> Response:
        return JSONResponse(ws.get_profile(name, entity).model_dump())

    @app.put(ADMIN_PREFIX + "/endpoints/{name}/profiles/{entity}")
    async def admin_put_profile(request: Request, name: str, entity: str) -> Response:
        profile = parse_model(EntityProfile, await json_body(request, required=False))
        ws.set_profile(name, entity, profile)
        return JSONResponse(profile.model_dump())

    @app.patch(ADMIN_PREFIX + "/endpoints/{name}/profiles/{entity}")
    async def admin_patch_profile(request: Request, name: str, entity: str) -> Response:
        changes = await json_body(request)
        merged = {**ws.get_profile(name, entity).model_dump(), **changes}
        profile = parse_model(EntityProfile, merged)
        ws.set_profile(name, entity, profile)
        return JSONResponse(profile.model_dump())

    @app.put(ADMIN_PREFIX + "/endpoints/{name}/load")
    async def admin_load(request: Request, name: str) -> Response:
        body = parse_model(AdminLoad, await json_body(request))
        ws.set_qps(name, body.qps)
        return JSONResponse({"qps": body.qps})

    @app.put(ADMIN_PREFIX + "/endpoints/{name}/updates")
    async def admin_updates(request: Request, name: str) -> Response:
        body = parse_model(AdminUpdates, await json_body(request))
        return JSONResponse(ws.set_updates(name, body.duration_seconds, body.fail_next))

    @app.get(ADMIN_PREFIX + "/endpoints/{name}/windows/{index}")
    async def admin_window(name: str, index: str) -> Response:
        k: int | None
        if index == "last":
            k = None
        else:
            try:
                k = int(index)
            except ValueError as exc:
                raise invalid(f"Window index must be an integer or 'last', not '{index}'.") from exc
        start_ms, counts = ws.window(name, k)
        return JSONResponse({
            "start_ms": start_ms,
            "entities": {
                e: {"requests": c.requests, "errors_4xx": c.errors_4xx,
                    "errors_5xx": c.errors_5xx, "latency_counts": c.latency_counts,
                    "latency_sum_ms": c.latency_sum_ms}
                for e, c in sorted(counts.items())
            },
        })

    @app.post(ADMIN_PREFIX + "/faults")
    async def admin_add_fault(request: Request) -> Response:
        body = parse_model(AdminFault, await json_body(request))
        fault = ws.add_fault(status=body.status, rate=body.rate, count=body.count,
                             retry_after=body.retry_after_seconds, delay=body.delay_seconds,
                             path_pattern=body.path_pattern, methods=body.methods)
        return JSONResponse({"id": fault.id}, status_code=201)

    @app.get(ADMIN_PREFIX + "/faults")
    async def admin_list_faults() -> Response:
        return JSONResponse({"faults": ws.list_faults()})

    @app.delete(ADMIN_PREFIX + "/faults")
    async def admin_clear_faults() -> Response:
        ws.clear_faults()
        return JSONResponse({})

    @app.delete(ADMIN_PREFIX + "/faults/{fault_id}")
    async def admin_remove_fault(fault_id: str) -> Response:
        ws.remove_fault(fault_id)
        return JSONResponse({})

    @app.post(ADMIN_PREFIX + "/tokens")
    async def admin_token(request: Request) -> Response:
        body = parse_model(AdminToken, await json_body(request))
        ws.add_token(body.token, body.permission, body.expires_in_seconds)
        return JSONResponse({"token": body.token, "permission": body.permission},
                            status_code=201)

    @app.post(ADMIN_PREFIX + "/oauth-clients")
    async def admin_oauth_client(request: Request) -> Response:
        body = parse_model(AdminOAuthClient, await json_body(request))
        ws.add_oauth_client(body.client_id, body.client_secret, body.token_lifetime_seconds,
                            body.permission)
        return JSONResponse({"client_id": body.client_id,
                             "token_lifetime_seconds": body.token_lifetime_seconds},
                            status_code=201)

    @app.get(ADMIN_PREFIX + "/stats")
    async def admin_stats() -> Response:
        return JSONResponse(ws.stats_dict())

    @app.post(ADMIN_PREFIX + "/reset")
    async def admin_reset() -> Response:
        ws.reset()
        return JSONResponse({})

    @app.get(ADMIN_PREFIX + "/clock")
    async def admin_clock() -> Response:
        return JSONResponse({"now": ws.now(), "window_seconds": ws.window_seconds})

    @app.post(ADMIN_PREFIX + "/clock/advance")
    async def admin_clock_advance(request: Request) -> Response:
        body = parse_model(AdminClockAdvance, await json_body(request))
        return JSONResponse({"now": ws.advance_clock(body.seconds)})



def _authorize(ws: Workspace, request: Request, needed: Permission, action: str) -> Permission:
    """The caller's permission; 401 without a valid token, 403 below ``needed``."""
    permission = ws.authenticate(_bearer(request))
    ws.require(permission, needed, action)
    return permission


def _client_credentials(
    request: Request, form: dict[str, list[str]]
) -> tuple[str | None, str | None]:
    """Client id and secret from HTTP Basic (what the SDK sends) or, failing that, the form."""
    scheme, _, encoded = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "basic" and encoded:
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        client_id, sep, secret = decoded.partition(":")
        return (client_id, secret) if sep else (None, None)
    ids = form.get("client_id") or []
    secrets_ = form.get("client_secret") or []
    return (ids[0] if ids else None), (secrets_[0] if secrets_ else None)


UC_MODELS = "/api/2.1/unity-catalog/models"


def _register_registry(app: FastAPI, ws: Workspace) -> None:
    """Unity Catalog registered models: aliases (``rollout.sandbox.registry``), and the admin
    calls that register a version and move an alias without a token."""

    @app.get(UC_MODELS + "/{full_name}")
    async def get_registered_model(request: Request, full_name: str) -> Response:
        _authorize(ws, request, "CAN_VIEW", "read a registered model")
        include = request.query_params.get("include_aliases", "false").lower() == "true"
        return JSONResponse(ws.registry.get_model(full_name, include_aliases=include))

    @app.get(UC_MODELS + "/{full_name}/aliases/{alias}")
    async def get_by_alias(request: Request, full_name: str, alias: str) -> Response:
        _authorize(ws, request, "CAN_VIEW", "read a registered model")
        return JSONResponse(ws.registry.get_by_alias(full_name, alias))

    @app.put(UC_MODELS + "/{full_name}/aliases/{alias}")
    async def set_alias(request: Request, full_name: str, alias: str) -> Response:
        _authorize(ws, request, "CAN_MANAGE", "set a registered model's alias")
        body = await json_body(request)
        if "version_num" not in body:
            raise invalid("Missing required field: version_num")
        return JSONResponse(ws.registry.set_alias(full_name, alias, body["version_num"]))

    @app.delete(UC_MODELS + "/{full_name}/aliases/{alias}")
    async def delete_alias(request: Request, full_name: str, alias: str) -> Response:
        _authorize(ws, request, "CAN_MANAGE", "delete a registered model's alias")
        ws.registry.delete_alias(full_name, alias)
        return JSONResponse({})

    @app.post(ADMIN_PREFIX + "/models/{full_name}/versions")
    async def admin_create_version(request: Request, full_name: str) -> Response:
        body = await json_body(request, required=False)
        aliases = body.get("aliases", [])
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise invalid("'aliases' must be a list of alias names")
        return JSONResponse(
            ws.registry.create_version(full_name, round(ws.now() * 1000), aliases)
        )

    @app.put(ADMIN_PREFIX + "/models/{full_name}/aliases/{alias}")
    async def admin_move_alias(request: Request, full_name: str, alias: str) -> Response:
        body = await json_body(request)
        return JSONResponse(ws.registry.set_alias(full_name, alias, body.get("version")))

    @app.get(ADMIN_PREFIX + "/models/{full_name}")
    async def admin_view_model(full_name: str) -> Response:
        return JSONResponse(ws.registry.view(full_name))
