"""Every API error has one shape: ``{"error": {"code", "message", ...}}``.

Where this sits: users submit plans and steer rollouts through the HTTP API, and the engine
acts on the stored rollouts and queued commands; whatever goes wrong on the way (a bad plan, an
unknown rollout, a missing token, a workspace that cannot be reached, an unknown route) leaves
the API through the handlers installed here, so clients (the ``rollout`` CLI first of all) read
one shape and never a traceback. ``code`` is a stable machine-readable word; ``message`` is for
people; some codes add fields (``details`` lists the invalid fields of a plan,
``active_rollout`` names the rollout holding an endpoint).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute

from rollout.plan import FieldProblemError

log = structlog.get_logger("rollout.api")


class ApiError(Exception):
    """An answer that is not a success; raised anywhere below a route, rendered by a handler."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


class BodyTooLargeError(ApiError):
    """The request body is longer than ``max_body_bytes`` (declared or actually sent)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            413, "body_too_large", f"the request body is larger than the limit of {limit} bytes"
        )


def field_issues(errors: Sequence[Any]) -> list[dict[str, str]]:
    """``[{field, message}]`` from pydantic/FastAPI validation errors."""
    issues = []
    for error in errors:
        loc = list(error.get("loc", ()))
        # "query"/"path"/"body" say where FastAPI found the value; the name is what matters.
        if loc and loc[0] in ("query", "path", "header", "body"):
            loc = loc[1:]
        problem = (error.get("ctx") or {}).get("error")
        if isinstance(problem, FieldProblemError):
            loc.extend(problem.parts())  # a model's own check that names its field
        field = ""
        for part in loc:
            field += f"[{part}]" if isinstance(part, int) else (f".{part}" if field else str(part))
        message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
        issues.append({"field": field or "(request)", "message": message})
    return issues


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "body_too_large",
    415: "unsupported_media_type",
}


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)  # noqa: S101 -- registered for ApiError only
    return exc.response()


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette raises these for unknown routes (404) and wrong methods (405).
    assert isinstance(exc, StarletteHTTPException)  # noqa: S101 -- registered for it only
    status = exc.status_code
    headers = exc.headers
    if status == 404:
        message = f"no such route: {request.method} {request.url.path}"
    elif status == 405:
        # Starlette names the methods of the first route on the path only; GET and POST of
        # one path are two routes, so collect them all.
        allowed = _allowed_methods(request)
        headers = {**(exc.headers or {}), "Allow": ", ".join(allowed)} if allowed else headers
        message = f"{request.method} is not allowed on {request.url.path}"
        if allowed:
            message += f"; allowed: {', '.join(allowed)}"
    else:
        message = str(exc.detail)
    return ApiError(
        status, _STATUS_CODES.get(status, f"http_{status}"), message, headers=headers
    ).response()


def _allowed_methods(request: Request) -> list[str]:
    table: list[tuple[re.Pattern[str], set[str]]] = getattr(request.app.state, "methods", [])
    methods: set[str] = set()
    for pattern, allowed in table:
        if pattern.match(request.url.path):
            methods.update(allowed)
    return sorted(methods)


def record_methods(app: FastAPI, routes: Iterable[BaseRoute]) -> None:
    """Remember which methods each path takes, for the Allow header of a 405."""
    table: list[tuple[re.Pattern[str], set[str]]] = list(getattr(app.state, "methods", []))
    for route in routes:
        pattern = getattr(route, "path_regex", None)
        methods = getattr(route, "methods", None)
        if pattern is not None and methods:
            table.append((pattern, set(methods)))
    app.state.methods = table


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)  # noqa: S101 -- registered for it only
    details = field_issues(exc.errors())
    summary = "; ".join(f"{d['field']}: {d['message']}" for d in details)
    return ApiError(
        422, "invalid_request", f"invalid request: {summary}", details=details
    ).response()


def install_handlers(app: FastAPI) -> None:
    """Render every known failure in the common shape (unexpected ones: see ``Guard``)."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)


def internal_error_body() -> bytes:
    """The 500 body: says nothing about the failure beyond that it was ours."""
    return (
        b'{"error":{"code":"internal","message":"internal error; the controller\'s log has '
        b'the details"}}'
    )
