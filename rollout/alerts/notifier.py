"""What every channel shares: the notifier interface and the one HTTP call, translated once.

Where this sits in the path of a rollout: decision -> outbox row (same transaction) ->
dispatcher -> notifier -> receiver. A notifier turns one ``AlertPayload`` into one HTTP request
and sends it with ``post``, which is the only place ``httpx`` results and exceptions are read:
2xx is delivered; 408, 429, 5xx, timeouts and connection failures raise a retryable
``DeliveryError``; any other status a non-retryable one. ``Retry-After`` is read on 429 and
503, in both of its forms (seconds, HTTP date).
"""

from __future__ import annotations

import email.utils
import json
import math
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import quote

import httpx

from rollout import __version__
from rollout.alerts.errors import ReceiverRejected, ReceiverTimeout, ReceiverUnreachable
from rollout.alerts.payload import AlertPayload
from rollout.redaction import excerpt, redact_url

__all__ = [
    "MAX_RETRY_AFTER",
    "USER_AGENT",
    "LinkingNotifier",
    "Notifier",
    "SendContext",
    "header_value",
    "parse_retry_after",
    "post",
    "post_json",
    "redact_url",
]

USER_AGENT = f"rollout/{__version__}"

# A Retry-After beyond a day is more likely a bug than a plan; the alert must not sleep forever.
MAX_RETRY_AFTER = 86_400.0


@dataclass(frozen=True)
class SendContext:
    """What a notifier may know besides the alert.

    ``now`` is the dispatcher's clock at the attempt (``sent_at``, signatures, ``endsAt``).
    ``rollout_ended`` says the rollout reached a terminal phase before this alert went out (a
    retried ``paused`` alert arriving after the rollback): Alertmanager then sends it already
    resolved instead of firing it for an hour.
    """

    now: float
    rollout_ended: bool = False


class Notifier(Protocol):
    """Delivers alerts of one channel type. ``send`` returns on 2xx, else ``DeliveryError``.

    ``wants_rollout_state``: the dispatcher looks the rollout up before each send and fills
    ``SendContext.rollout_ended`` (a store read, so only channels that use it ask for it).
    """

    @property
    def channel_type(self) -> str: ...

    @property
    def wants_rollout_state(self) -> bool: ...

    async def send(self, payload: AlertPayload, context: SendContext) -> None: ...


class LinkingNotifier:
    """The state of a notifier whose messages link to the status page (Teams, PagerDuty): the
    shared HTTP client, the per-request timeout, and ``public_url``, the status page as people
    reach it ("" for no link)."""

    def __init__(
        self, http: httpx.AsyncClient, *, timeout: float = 10.0, public_url: str = ""
    ) -> None:
        self.http = http
        self.timeout = timeout
        self.public_url = public_url


def header_value(text: str) -> str:
    """``text`` as an HTTP header value: unchanged when it is printable ASCII (a dedup key
    always is, unless a rollout id is not), otherwise percent-encoded (RFC 3986)."""
    if text.isascii() and text.isprintable():
        return text
    return quote(text, safe="!#$&'()*+,/:;=?@[]~-._")


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - now
    if math.isnan(seconds):
        return None
    return min(MAX_RETRY_AFTER, max(0.0, seconds))


async def post(
    http: httpx.AsyncClient,
    url: str,
    *,
    content: bytes,
    headers: dict[str, str],
    request_timeout: float,
    now: float,
    what: str,
) -> httpx.Response:
    """POST ``content`` to ``url``; return the 2xx response or raise a ``DeliveryError``.

    ``what`` names the channel in messages (``"slack"``); URLs in messages are redacted, since
    they end up in logs and in the outbox's ``last_error``.
    """
    where = f"{what} receiver {redact_url(url)}"
    all_headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, **headers}
    try:
        response = await http.post(
            url, content=content, headers=all_headers, timeout=request_timeout
        )
    except httpx.TimeoutException as exc:
        raise ReceiverTimeout(f"{where}: no answer within {request_timeout:g} s") from exc
    except httpx.UnsupportedProtocol as exc:
        # A URL httpx cannot speak to will not improve by waiting: someone must fix it.
        raise ReceiverUnreachable(f"{where}: {exc}", retryable=False) from exc
    except httpx.TransportError as exc:
        raise ReceiverUnreachable(f"{where}: {type(exc).__name__}: {exc}") from exc
    except httpx.InvalidURL as exc:
        raise ReceiverUnreachable(f"{where}: invalid URL: {exc}", retryable=False) from exc
    status = response.status_code
    if 200 <= status < 300:
        return response
    retry_after = None
    if status in (429, 503):
        retry_after = parse_retry_after(response.headers.get("retry-after"), now)
    retryable = status in (408, 429) or status >= 500
    # A receiver's words are evidence, but its page is not ours to log: an internal service
    # reached by mistake must not have its answer copied into the controller's log.
    body = excerpt(response.text)
    message = f"{where} answered {status}" + (f": {body}" if body else "")
    raise ReceiverRejected(message, retryable=retryable, status=status, retry_after=retry_after)


async def post_json(
    http: httpx.AsyncClient,
    url: str,
    body: Any,
    *,
    request_timeout: float,
    now: float,
    what: str,
) -> httpx.Response:
    """``post`` of ``body`` as UTF-8 JSON, with no header of the channel's own."""
    return await post(
        http,
        url,
        content=json.dumps(body, ensure_ascii=False).encode(),
        headers={},
        request_timeout=request_timeout,
        now=now,
        what=what,
    )
