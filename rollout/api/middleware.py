"""The outer guards of the API: browsers, bounded request bodies, no unexplained failure.

Where this sits: users submit plans and steer rollouts through the HTTP API (the engine acts on
what it stores), and the API may face a network; these ASGI middlewares wrap every route.

``BrowserGuard`` (outermost) keeps a browser from being turned against the controller. An open
API (no tokens, loopback only) trusts whoever reaches it, and a page on any other origin can
reach loopback from the user's browser:

- the ``Host`` header must name this controller (loopback names by default on an open API,
  ``ApiSettings.allowed_hosts`` otherwise): a page whose own name was re-pointed at 127.0.0.1
  (DNS rebinding) sends its own name, and is answered 421 ``host_not_allowed``;
- a state-changing request (POST, PUT, PATCH, DELETE) needs a ``Content-Type`` a plain form or
  ``fetch`` cannot send without a CORS preflight (``application/json`` or a YAML type), or the
  ``X-Rollout-Client`` header (which needs one too): otherwise 415; a browser that says the
  request is cross-site (``Sec-Fetch-Site: cross-site``) is refused 403 ``cross_site``. No
  CORS headers are ever sent, so a preflight always fails. This check is
  ``cross_site_refusal``, a dependency of those routes (after routing and the role check).

``Guard`` refuses a body whose declared ``Content-Length`` exceeds the limit before reading a
byte of it, counts the bytes actually streamed (a chunked body declares no length) and stops
reading at the limit, and turns any exception no handler knew into a 500 in the common error
shape: the traceback goes to the log, never into the answer. A client that goes away while its
body is read (or is cut off by the server's body timeout) is logged, not a 500.
"""

from __future__ import annotations

import traceback
from collections.abc import Mapping

import structlog
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rollout.api.errors import ApiError, BodyTooLargeError, internal_error_body

log = structlog.get_logger("rollout.api")

CLIENT_HEADER = b"x-rollout-client"
"""Sent by the CLI and the status page; a cross-origin page cannot send it unasked."""
_UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Content types a cross-origin page may send without a preflight are the form and text ones;
# these are not among them.
_PREFLIGHTED_TYPES = frozenset(
    {
        "application/json",
        "application/yaml",
        "text/yaml",
        "application/x-yaml",
        "text/x-yaml",
    }
)
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def host_name(header: str) -> str:
    """``Host`` header -> lower-case name without port: ``[::1]:8080`` -> ``::1``."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    name, _, _ = value.partition(":")
    return name.rstrip(".")


class BrowserGuard:
    """ASGI middleware: the Host check (see the module docstring).

    ``allowed_hosts``: names (and addresses) the ``Host`` header may carry, any port; None
    accepts every Host (an API with tokens and no ``allowed_hosts`` setting).
    """

    def __init__(self, app: ASGIApp, *, allowed_hosts: frozenset[str] | None) -> None:
        self.app = app
        self.allowed_hosts = allowed_hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers", []))
        problem = self.refusal(headers)
        if problem is not None:
            log.info(
                "api.request_refused",
                code=problem.code,
                method=scope.get("method"),
                path=scope.get("path"),
            )
            await _send_error(send, problem)
            return
        await self.app(scope, receive, send)

    def refusal(self, headers: dict[bytes, bytes]) -> ApiError | None:
        if self.allowed_hosts is None:
            return None
        host = host_name(headers.get(b"host", b"").decode("latin-1"))
        if host in self.allowed_hosts:
            return None
        return ApiError(
            421,
            "host_not_allowed",
            "this controller does not serve that host name (ROLLOUT_API_ALLOWED_HOSTS lists "
            "the names it answers to)",
        )


def cross_site_refusal(method: str, headers: Mapping[str, str]) -> ApiError | None:
    """Why a state-changing request could have come from a page on another origin, or None.

    Used as a dependency of every route that changes something (after the role check, so a
    viewer still learns it may not act): such a page can send a form, text/plain or a
    bodiless POST without asking, but neither a JSON or YAML content type nor the
    ``X-Rollout-Client`` header, which need a CORS preflight the API never grants.
    """
    if method not in _UNSAFE:
        return None
    if headers.get("sec-fetch-site", "").strip().lower() == "cross-site":
        return ApiError(403, "cross_site", "requests from another site are refused")
    kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if kind in _PREFLIGHTED_TYPES or CLIENT_HEADER.decode() in headers:
        return None
    return ApiError(
        415,
        "unsupported_media_type",
        "a request that changes something is sent as application/json (a plan also as "
        "application/yaml), or with the X-Rollout-Client header; not "
        + (kind or "without Content-Type"),
    )


class Guard:
    """ASGI middleware: body limit and a last-resort 500."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        declared = _content_length(scope)
        if declared is not None and declared < 0:
            await _send_error(
                send, ApiError(400, "bad_request", "the Content-Length header is not a number")
            )
            return
        if declared is not None and declared > limit:
            await _send_error(send, BodyTooLargeError(limit))
            return

        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    # Raised inside the route's read of the body; the ApiError handler
                    # answers 413 and the rest of the body is never read.
                    raise BodyTooLargeError(limit)
            return message

        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLargeError as exc:
            # Read outside a route (no handler in between): answer it here.
            if started:
                raise
            await _send_error(send, exc)
        except ClientDisconnect:
            # Nobody is left to answer: the client went away, or was cut off for sending its
            # body too slowly (ApiSettings.body_timeout).
            log.info("api.client_gone", method=scope.get("method"), path=scope.get("path"))
        except Exception as exc:
            # A plain traceback, not the logger's exc_info: rich tracebacks render frame
            # locals, and those hold request headers, bearer tokens among them.
            log.error(  # noqa: TRY400 -- the traceback is attached as text, without frame locals
                "api.unhandled_error",
                method=scope.get("method"),
                path=scope.get("path"),
                error=repr(exc),
                traceback="".join(traceback.format_exception(exc)),
            )
            if started:
                # Half an answer is already out; only closing the connection is left.
                raise
            await _send_raw(send, 500, internal_error_body())


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return -1
    return None


async def _send_error(send: Send, error: ApiError) -> None:
    response = error.response()
    await _send_raw(send, response.status_code, bytes(response.body))


async def _send_raw(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                # The rest of an oversized body is not read: the connection cannot be reused.
                *([(b"connection", b"close")] if status == 413 else []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
