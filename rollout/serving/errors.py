"""Every way a call to the serving-endpoints API can fail, as one exception tree.

The client's Unity Catalog registered-model calls (aliases: ``get_model_version_by_alias``,
``get_registered_model``, ``set_alias``, ``delete_alias``) fail the same ways, through the same
tree (an unknown model, alias or version is ``NotFound``; ``endpoint`` is then None).

Where this sits in a rollout: the runner asks the serving client to PUT a config, wait for it,
and scrape export-metrics. Whatever goes wrong on the way (the network, the workspace, the
update itself, or a human who changed the endpoint by hand) reaches the runner as one of the
classes below, never as an ``httpx`` or ``pydantic`` exception: third-party errors are
translated once, at the client's boundary, with ``raise ... from exc``.

Each error says what may be done about it:

- ``retryable``: the same request may succeed if sent again later (after an update settles,
  after a rate limit passes, ...).
- ``transient``: the automatic retry policy (``rollout.serving.retry``) may resend it right
  away, after a backoff. Only transient errors are ever retried automatically.

The tree::

    ServingError                      status, error_code, message, endpoint, retryable, transient
    ├── ConfigurationError            no usable host/credentials (bad profile, missing file, ...)
    ├── ServingTransportError         connection refused/reset, timeouts         transient
    ├── Unauthenticated               401, or the OAuth token endpoint refused us
    ├── PermissionDenied              403
    ├── NotFound                      404 (or RESOURCE_DOES_NOT_EXIST)
    ├── InvalidRequest                400 and other 4xx the caller must fix
    ├── Conflict                      409
    │   ├── AlreadyExists             409 RESOURCE_ALREADY_EXISTS / ALREADY_EXISTS
    │   └── UpdateInProgress          409 "currently updating", 400 INVALID_STATE  retryable
    ├── RateLimited                   429 (retry_after from Retry-After)         transient
    ├── Unavailable                   500 INTERNAL_ERROR, 502, 503, 504          transient
    ├── ServerError                   other 5xx (501 NOT_IMPLEMENTED, ...), and a 500 from an
    │                                 invocation (the model failed to score the request)
    ├── MalformedResponse             a 2xx (or 3xx) whose body is not what the API promises
    ├── UpdateFailed                  the update settled as UPDATE_FAILED / UPDATE_CANCELED
    ├── UpdateTimeout                 the deadline passed while the update was in progress
    └── ConfigMismatch                settled, but the live config is not what was asked (drift)

Mapping (``error_from_response``) reads the status AND the ``error_code``: for 4xx an unambiguous
code wins (Databricks sometimes answers 400 ``RESOURCE_DOES_NOT_EXIST``), otherwise the status
decides and the code refines it. Error bodies are read in every shape the platform is known to
use: ``{"error_code", "message"}``, the 1.2-style ``{"error": ...}``, OAuth's
``{"error", "error_description"}``, plain text ``CODE: message``, HTML pages and empty bodies.
"""

# The class names mirror the platform's own error names (NotFound, PermissionDenied, ...), which
# the rest of the controller and its readers know; an "Error" suffix on each would only add noise.
# ruff: noqa: N818

from __future__ import annotations

import email.utils
import html
import json
import math
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from rollout.serving.models import Endpoint

# Long bodies (an HTML error page, a stack trace) are cut so that log lines stay readable.
_MAX_MESSAGE = 500

# Data-plane calls: a 500 there is the model failing to score the request, an answer about the
# model rather than a blip of the service, so it is not resent (a smoke check must see it).
INVOCATION_CALLS = frozenset({"query", "query_served_model"})

# Calls that change the endpoint's config: on these a bare 409 or a 400 INVALID_STATE can only
# mean "another update is in flight" (databricks-api.md section 6). On an invocation a 400
# INVALID_STATE means something else (a stopped endpoint), so it stays an InvalidRequest.
CONFIG_CHANGING_CALLS = frozenset(
    {"update_config", "patch_tags", "stop_endpoint", "start_endpoint", "delete_endpoint"}
)


class ServingError(Exception):
    """Base of every error raised by ``rollout.serving``."""

    default_retryable: ClassVar[bool] = False
    default_transient: ClassVar[bool] = False

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_code: str | None = None,
        endpoint: str | None = None,
        call: str | None = None,
        retryable: bool | None = None,
        transient: bool | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.error_code = error_code
        self.endpoint = endpoint
        self.call = call
        self.transient = self.default_transient if transient is None else transient
        # Anything the retry policy may resend now may also succeed later.
        if retryable is None:
            retryable = self.default_retryable or self.transient
        self.retryable = retryable

    def __str__(self) -> str:
        context = []
        if self.call:
            context.append(self.call)
        if self.endpoint:
            context.append(f"endpoint {self.endpoint!r}")
        if self.status is not None:
            context.append(f"HTTP {self.status}")
        if self.error_code:
            context.append(self.error_code)
        prefix = f"[{', '.join(context)}] " if context else ""
        return f"{prefix}{self.message}"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(message={self.message!r}, status={self.status!r}, "
            f"error_code={self.error_code!r}, endpoint={self.endpoint!r})"
        )


class ConfigurationError(ServingError):
    """The client cannot be built: no host, no credentials, an unknown profile, a bad URL."""


class ServingTransportError(ServingError):
    """The request did not get an HTTP answer: connection refused or reset, DNS, timeouts."""

    default_transient = True


class Unauthenticated(ServingError):
    """401, or the OAuth token endpoint refused the client credentials."""


class PermissionDenied(ServingError):
    """403: the principal lacks the permission level the call needs."""


class NotFound(ServingError):
    """404: no such endpoint (or served model)."""


class InvalidRequest(ServingError):
    """400 and other 4xx: the request itself is wrong; sending it again will not help."""


class Conflict(ServingError):
    """409: the request conflicts with the endpoint's current state."""


class AlreadyExists(Conflict):
    """409 on create: an endpoint with that name exists."""


class UpdateInProgress(Conflict):
    """Another config update is in flight; wait for it to settle, then send again."""

    default_retryable = True


class RateLimited(ServingError):
    """429: slow down. ``retry_after`` is the server's Retry-After, in seconds, when given."""

    default_transient = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class Unavailable(ServingError):
    """500 INTERNAL_ERROR, 502, 503, 504: the service is briefly unable to answer."""

    default_transient = True

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after = retry_after


class ServerError(ServingError):
    """Other 5xx (501 NOT_IMPLEMENTED, ...): resending the same request will not help."""


class MalformedResponse(ServingError):
    """A successful status whose body is not what the API promises (bad JSON, wrong types)."""


class UpdateFailed(ServingError):
    """The config update settled as UPDATE_FAILED or UPDATE_CANCELED; the old config serves.

    ``endpoint_snapshot`` is the endpoint as last read, for the alert and the build logs.
    """

    def __init__(self, message: str, *, endpoint_snapshot: Endpoint, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.endpoint_snapshot = endpoint_snapshot


class UpdateTimeout(ServingError):
    """The deadline passed while the update was still in progress (or the endpoint not ready).

    Retryable: waiting again may see it settle. ``endpoint_snapshot`` is the last endpoint read,
    or None when no read succeeded before the deadline.
    """

    default_retryable = True

    def __init__(
        self,
        message: str,
        *,
        endpoint_snapshot: Endpoint | None,
        deadline_seconds: float,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.endpoint_snapshot = endpoint_snapshot
        self.deadline_seconds = deadline_seconds


class ConfigMismatch(ServingError):
    """The update settled but the live config differs from the one asked for.

    This is how drift is detected: someone (or something) changed the endpoint by hand.
    ``expected``/``actual`` are traffic splits (served entity name -> percent, zero routes
    dropped); ``expected_entities``/``actual_entities`` are (name, entity_name, entity_version).
    """

    def __init__(
        self,
        message: str,
        *,
        expected: Mapping[str, int],
        actual: Mapping[str, int],
        expected_entities: frozenset[tuple[str, str | None, str | None]],
        actual_entities: frozenset[tuple[str, str | None, str | None]],
        endpoint_snapshot: Endpoint,
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)
        self.expected = dict(expected)
        self.actual = dict(actual)
        self.expected_entities = expected_entities
        self.actual_entities = actual_entities
        self.endpoint_snapshot = endpoint_snapshot


# --- reading error bodies -------------------------------------------------------------------

_PLAIN_CODE = re.compile(r"^\s*([A-Z][A-Z0-9_]{2,}):\s*(.*)$", re.DOTALL)
_HTML_PRE = re.compile(r"<pre[^>]*>(.*?)</pre>", re.IGNORECASE | re.DOTALL)
_HTML_TITLE = re.compile(r"<title[^>]*>(.*?)</title>", re.IGNORECASE | re.DOTALL)
_HTML_TAG = re.compile(r"<[^>]+>")


def _shorten(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


def _from_json(payload: Any) -> tuple[str | None, str | None]:
    """(error_code, message) from any of the JSON error shapes, or (None, None)."""
    if not isinstance(payload, dict):
        return None, None
    code = payload.get("error_code") or payload.get("errorCode")
    message = (
        payload.get("message")
        or payload.get("error_description")
        or payload.get("errorSummary")
        or payload.get("detail")
    )
    error = payload.get("error")
    if isinstance(error, dict):
        # {"error": {"code": ..., "message": ...}}: read the inner object the same way.
        inner_code, inner_message = _from_json(error)
        nested = error.get("code")
        code = code or inner_code or (nested if isinstance(nested, str) else None)
        message = message or inner_message
    elif isinstance(error, str):
        if message:
            # OAuth style: {"error": "invalid_client", "error_description": "..."}.
            code = code or error
        else:
            # API 1.2 style: {"error": "the message"}.
            message = error
    return (
        code if isinstance(code, str) and code else None,
        message if isinstance(message, str) and message else None,
    )


def parse_error_body(body: bytes, content_type: str | None = None) -> tuple[str | None, str | None]:
    """Extract (error_code, message) from an error response body of any known shape."""
    text = body.decode("utf-8", errors="replace").strip()
    if not text:
        return None, None
    if text[:1] in "{[":
        try:
            payload = json.loads(text)
        except ValueError:
            payload = None
        code, message = _from_json(payload)
        if code or message:
            return code, _shorten(message) if message else None
    looks_html = "html" in (content_type or "").lower() or text[:1] == "<"
    if looks_html:
        found = _HTML_PRE.search(text) or _HTML_TITLE.search(text)
        inner = found.group(1) if found else text
        inner = html.unescape(_HTML_TAG.sub(" ", inner)).strip()
        plain = _PLAIN_CODE.match(inner)
        if plain:
            return plain.group(1), _shorten(plain.group(2))
        return None, _shorten(inner) or None
    plain = _PLAIN_CODE.match(text)
    if plain:
        return plain.group(1), _shorten(plain.group(2))
    return None, _shorten(text)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP date."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return None if math.isnan(seconds) else max(0.0, seconds)
    if now is None:
        return None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - now)


# --- status x error_code -> class ------------------------------------------------------------

# Codes precise enough to decide the class on their own when the status is a 4xx.
_CODE_CLASSES: dict[str, type[ServingError]] = {
    "RESOURCE_DOES_NOT_EXIST": NotFound,
    "NOT_FOUND": NotFound,
    "FEATURE_DISABLED": NotFound,
    "PERMISSION_DENIED": PermissionDenied,
    "UNAUTHENTICATED": Unauthenticated,
    "REQUEST_LIMIT_EXCEEDED": RateLimited,
    "RESOURCE_EXHAUSTED": RateLimited,
    "TOO_MANY_REQUESTS": RateLimited,
    "RESOURCE_ALREADY_EXISTS": AlreadyExists,
    "ALREADY_EXISTS": AlreadyExists,
}

# 5xx codes that mean "try again": the rest of the 5xx family is a permanent server error.
_TRANSIENT_5XX_CODES = frozenset({"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "DEADLINE_EXCEEDED"})
_TRANSIENT_5XX_STATUSES = frozenset({502, 503, 504})

_UPDATING = re.compile(r"currently updating|update (is )?in progress|being updated", re.IGNORECASE)
# INVALID_STATE also says "the endpoint is stopped" (or "not stopped", "has no config"): waiting
# for an update would not help there, so those stay InvalidRequest.
_OTHER_STATE = re.compile(r"\bstopped\b|\bno config\b", re.IGNORECASE)


_BY_4XX_STATUS: dict[int, type[ServingError]] = {
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
}


def _classify_4xx(
    status: int, error_code: str | None, message: str, call: str | None
) -> type[ServingError]:
    by_code = _CODE_CLASSES.get(error_code or "")
    if by_code is not None:
        return by_code
    if status == 409:
        updating = (
            error_code == "RESOURCE_CONFLICT"
            or _UPDATING.search(message)
            or call in CONFIG_CHANGING_CALLS
        )
        return UpdateInProgress if updating else Conflict
    if (
        status == 400
        and error_code == "INVALID_STATE"
        and (_UPDATING.search(message) or call in CONFIG_CHANGING_CALLS)
        and not _OTHER_STATE.search(message)
    ):
        return UpdateInProgress
    return _BY_4XX_STATUS.get(status, InvalidRequest)


def _classify_5xx(status: int, error_code: str | None, call: str | None) -> type[ServingError]:
    if status == 500 and call in INVOCATION_CALLS:
        return ServerError
    if error_code in _TRANSIENT_5XX_CODES or status in _TRANSIENT_5XX_STATUSES:
        return Unavailable
    if status == 500 and error_code is None:
        # A bare 500 (a proxy's HTML page, an empty body) is how INTERNAL_ERROR looks from
        # outside; treat it like one.
        return Unavailable
    return ServerError


def classify(
    status: int, error_code: str | None, message: str, call: str | None
) -> type[ServingError]:
    """The exception class for an HTTP error status and its ``error_code``."""
    if status == 429:
        return RateLimited
    if 400 <= status < 500:
        return _classify_4xx(status, error_code, message, call)
    if status >= 500:
        return _classify_5xx(status, error_code, call)
    # 1xx/3xx: not an answer the API gives; most likely a redirect to a login page.
    return MalformedResponse


def error_from_response(
    status: int,
    body: bytes,
    *,
    headers: Mapping[str, str] | None = None,
    reason: str = "",
    endpoint: str | None = None,
    call: str | None = None,
    now: float | None = None,
) -> ServingError:
    """Build the typed error for a non-2xx response."""
    headers = headers or {}
    content_type = headers.get("content-type")
    code, message = parse_error_body(body, content_type)
    if not message:
        message = reason or f"HTTP {status}"
        if not body.strip():
            message += " (empty body)"
    cls = classify(status, code, message, call)
    kwargs: dict[str, Any] = {
        "status": status,
        "error_code": code,
        "endpoint": endpoint,
        "call": call,
    }
    if cls in (RateLimited, Unavailable):
        kwargs["retry_after"] = parse_retry_after(headers.get("retry-after"), now=now)
    return cls(message, **kwargs)
