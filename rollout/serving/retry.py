"""The one retry policy of the serving client.

Where this sits in a rollout: every request the runner makes through the serving client (the
config PUT, each poll of ``wait_until_applied``, each export-metrics scrape) is one attempt of
``RetryPolicy.run``. Only errors marked ``transient`` (connection failures, timeouts, 429,
500 INTERNAL_ERROR, 502/503/504) are resent; everything else surfaces at once, so a 400, 403
or 404 costs exactly one request.

Backoff is exponential with full jitter (sleep a uniform amount between 0 and
``min(max_backoff, initial_backoff * multiplier ** attempt)``), which spreads retries of many
callers apart. A ``Retry-After`` from the server is honoured as the minimum wait. Everything is
bounded by ``budget_seconds`` measured on the injected ``Clock``: the policy never sleeps past
the budget; when the next wait would cross it, the last error is raised as it is.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import structlog

from rollout.serving.errors import RateLimited, ServingError, Unavailable

if TYPE_CHECKING:
    from rollout.clock import Clock
    from rollout.settings import ServingSettings

T = TypeVar("T")

log = structlog.get_logger("rollout.serving.retry")

# Called before each backoff sleep: (call, attempt number that failed, error, seconds to sleep).
RetryHook = Callable[[str, int, ServingError, float], None]


class RetryPolicy:
    """Full-jitter exponential backoff for transient errors, bounded by a time budget."""

    def __init__(
        self,
        *,
        initial_backoff: float = 0.5,
        max_backoff: float = 20.0,
        budget_seconds: float = 120.0,
        multiplier: float = 2.0,
        jitter: bool = True,
        rng: random.Random | None = None,
        max_attempts: int = 100,
    ) -> None:
        if initial_backoff <= 0 or max_backoff < initial_backoff:
            raise ValueError("need 0 < initial_backoff <= max_backoff")
        if budget_seconds < 0 or multiplier < 1 or max_attempts < 1:
            raise ValueError("need budget_seconds >= 0, multiplier >= 1, max_attempts >= 1")
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.budget_seconds = budget_seconds
        self.multiplier = multiplier
        self.jitter = jitter
        # Injected so that tests see the same jitter every run.
        self.rng = rng or random.Random()
        # A safety net only: the budget ends retries first unless the rng keeps drawing ~0.
        self.max_attempts = max_attempts

    @classmethod
    def from_settings(
        cls, serving: ServingSettings, *, rng: random.Random | None = None
    ) -> RetryPolicy:
        return cls(
            initial_backoff=serving.retry_initial_backoff,
            max_backoff=max(serving.retry_max_backoff, serving.retry_initial_backoff),
            budget_seconds=serving.retry_budget,
            rng=rng,
        )

    @classmethod
    def never(cls) -> RetryPolicy:
        """A policy that sends every request once."""
        return cls(budget_seconds=0.0, max_attempts=1)

    def __repr__(self) -> str:
        return (
            f"RetryPolicy(initial_backoff={self.initial_backoff}, max_backoff={self.max_backoff}, "
            f"budget_seconds={self.budget_seconds}, multiplier={self.multiplier}, "
            f"jitter={self.jitter})"
        )

    def cap(self, attempt: int) -> float:
        """The largest backoff after failed attempt number ``attempt`` (0-based)."""
        # Bound the exponent so huge attempt numbers cannot overflow a float.
        exponent = min(attempt, 64)
        return float(min(self.max_backoff, self.initial_backoff * self.multiplier**exponent))

    def backoff(self, attempt: int) -> float:
        """Seconds to sleep after failed attempt number ``attempt``: full jitter under the cap."""
        cap = self.cap(attempt)
        return self.rng.uniform(0.0, cap) if self.jitter else cap

    def delay_for(self, error: ServingError, attempt: int) -> float:
        """The backoff, raised to the server's Retry-After when it gave one."""
        delay = self.backoff(attempt)
        if isinstance(error, RateLimited | Unavailable) and error.retry_after is not None:
            delay = max(delay, error.retry_after)
        return delay

    async def run(
        self,
        attempt: Callable[[], Awaitable[T]],
        *,
        clock: Clock,
        call: str = "",
        on_retry: RetryHook | None = None,
    ) -> T:
        """Run ``attempt`` until it succeeds, fails for good, or the budget is spent."""
        started = clock.monotonic()
        number = 0
        while True:
            try:
                return await attempt()
            except ServingError as error:
                if not error.transient or number + 1 >= self.max_attempts:
                    raise
                delay = self.delay_for(error, number)
                remaining = self.budget_seconds - (clock.monotonic() - started)
                if remaining <= 0:
                    raise
                server_asked = isinstance(error, RateLimited | Unavailable) and (
                    error.retry_after is not None and error.retry_after > 0
                )
                if delay > remaining:
                    if server_asked:
                        # Retrying before the server's Retry-After is only asking to be refused.
                        raise
                    # Our own backoff may be shortened: one last try as the budget ends.
                    delay = remaining
                log.info(
                    "serving.retry",
                    call=call,
                    attempt=number + 1,
                    error=type(error).__name__,
                    status=error.status,
                    error_code=error.error_code,
                    delay=round(delay, 3),
                )
                if on_retry is not None:
                    on_retry(call, number + 1, error, delay)
                await clock.sleep(delay)
                number += 1
