"""The outer guard of the API: bounded request bodies and no unexplained failure.

Where this sits: users submit plans and steer rollouts through the HTTP API (the engine acts on
what it stores), and the API may face a network; this ASGI middleware wraps every route. It
refuses a body whose declared ``Content-Length`` exceeds the limit before reading a byte of it,
counts the bytes actually streamed (a chunked body declares no length) and stops reading at the
limit, and turns any exception no handler knew into a 500 in the common error shape: the
traceback goes to the log, never into the answer.
"""

from __future__ import annotations

import traceback

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rollout.api.errors import ApiError, BodyTooLargeError, internal_error_body

log = structlog.get_logger("rollout.api")


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
