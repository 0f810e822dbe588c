"""Every way delivering an alert can fail, as one small exception tree.

Where this sits in the path of a rollout: a decision commits its alert rows to the outbox in the
same transaction as its events; the dispatcher (``rollout.alerts.dispatcher``) claims them and
hands each to the notifier of its channel. Whatever goes wrong on the way to the receiver
(connection refused, a timeout, a 5xx, a 4xx, a row that cannot be rendered) reaches the
dispatcher as one of the classes below, never as an ``httpx`` exception: third-party errors are
translated once, in ``rollout.alerts.notifier.post``, with ``raise ... from exc``.

The tree::

    AlertError
    ├── ChannelConfigError      the default channels setting is not a valid list of channels
    └── DeliveryError           retryable, status, retry_after
        ├── ReceiverUnreachable connection refused/reset, DNS, timeouts            retryable
        │   ├── ReceiverTimeout     no answer within the request's timeout        retryable
        │   ├── TargetUnresolvable  the URL's host does not resolve               retryable
        │   └── TargetRefused       it resolves to an address alerts may not go to
        │                           (loopback, private, metadata: targets.py)     not retryable
        ├── ReceiverRejected    a non-2xx answer: 408/429/5xx retryable, other 4xx not
        │   └── EventRefused    the receiver's API says this request will never be
        │                       accepted (PagerDuty's 400)                        permanent
        └── MalformedAlert      the outbox row cannot be turned into a request     not retryable

``retryable`` tells the dispatcher how soon to try again, never whether: a non-retryable failure
(a receiver answering 400 or 404 because it is misconfigured) is retried too, at the longest
backoff, so that a receiver fixed later still gets the alert. Nothing is dropped silently.
The one exception is ``permanent``: a receiver whose API documents that a refused request must
not be sent again (PagerDuty answers 400 to an event it will never accept, and the outbox row
keeps its channel, so the same bytes would go out every time). The row then stays in the outbox
undelivered, with its error, and is not sent again; the failure is logged as an error.
"""

# The names read as what happened ("receiver unreachable", "malformed alert"), like the
# serving client's tree; an "Error" suffix on each would only add noise.
# ruff: noqa: N818

from __future__ import annotations


class AlertError(Exception):
    """Base of every error raised by ``rollout.alerts``."""


class ChannelConfigError(AlertError, ValueError):
    """The channels setting is unusable; ``problems`` lists each bad item with its index."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid alert channels: " + "; ".join(self.problems))


class DeliveryError(AlertError):
    """One delivery attempt failed.

    ``retryable``: the same request may succeed later without anyone changing anything (the
    receiver was down, slow or rate limiting). ``status`` is the receiver's HTTP status when it
    answered. ``retry_after`` is the receiver's ``Retry-After`` in seconds, when it gave one.
    ``permanent``: the receiver will never accept this request; it is not sent again.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        retry_after: float | None = None,
        permanent: bool = False,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable and not permanent
        self.status = status
        self.retry_after = retry_after
        self.permanent = permanent


class ReceiverUnreachable(DeliveryError):
    """No HTTP answer: the connection failed or the receiver did not answer in time."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message, retryable=retryable)


class ReceiverTimeout(ReceiverUnreachable):
    """The receiver did not answer within the request's timeout (a gate says so)."""


class ReceiverRejected(DeliveryError):
    """The receiver answered with a status other than 2xx."""


class EventRefused(ReceiverRejected):
    """The receiver refused the request for good (its API says: do not retry)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message, retryable=False, status=status, permanent=True)


class MalformedAlert(DeliveryError):
    """The outbox row lacks what its channel needs (a field, a known channel type)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class TargetRefused(ReceiverUnreachable):
    """The alert URL resolves to an address this controller may not send to."""

    def __init__(self, message: str) -> None:
        # Not retryable: only a change of settings (or of the plan) makes it deliverable.
        super().__init__(message, retryable=False)


class TargetUnresolvable(ReceiverUnreachable):
    """The alert URL's host does not resolve now (retryable: DNS may come back)."""
