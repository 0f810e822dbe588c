"""The retry policy on a fake clock: growth, jitter, Retry-After, budget, what is never retried."""

from __future__ import annotations

import random

import pytest

from rollout.clock import FakeClock
from rollout.serving.errors import (
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    ServerError,
    ServingError,
    ServingTransportError,
    Unavailable,
    UpdateInProgress,
)
from rollout.serving.retry import RetryPolicy
from rollout.settings import ServingSettings


class Flaky:
    """Fails with the given errors in turn, then answers "ok"."""

    def __init__(self, *errors: ServingError) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def unavailable(retry_after: float | None = None) -> Unavailable:
    return Unavailable("down", status=503, retry_after=retry_after)


def test_backoff_cap_grows_exponentially_up_to_the_max() -> None:
    policy = RetryPolicy(initial_backoff=0.5, max_backoff=8.0, jitter=False)
    assert [policy.backoff(n) for n in range(7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert policy.cap(10_000) == 8.0


def test_full_jitter_stays_within_zero_and_the_cap_and_is_reproducible() -> None:
    first = RetryPolicy(initial_backoff=1.0, max_backoff=30.0, rng=random.Random(7))
    second = RetryPolicy(initial_backoff=1.0, max_backoff=30.0, rng=random.Random(7))
    draws = [first.backoff(n % 6) for n in range(600)]
    assert draws == [second.backoff(n % 6) for n in range(600)]
    for n, delay in enumerate(draws):
        assert 0.0 <= delay <= first.cap(n % 6)
    # Full jitter really spreads: the draws for the largest cap cover most of [0, cap].
    top = [d for n, d in enumerate(draws) if n % 6 == 5]
    assert min(top) < 0.2 * first.cap(5)
    assert max(top) > 0.8 * first.cap(5)


async def test_transient_errors_are_retried_with_growing_sleeps() -> None:
    clock = FakeClock()
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=100.0, budget_seconds=1000, jitter=False)
    flaky = Flaky(unavailable(), ServingTransportError("reset"), RateLimited("slow", status=429))
    assert await policy.run(flaky, clock=clock, call="get_endpoint") == "ok"
    assert flaky.calls == 4
    assert clock.slept == [1.0, 2.0, 4.0]


async def test_retry_after_is_honoured_as_the_minimum_wait() -> None:
    clock = FakeClock()
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, budget_seconds=100, jitter=False)
    flaky = Flaky(RateLimited("slow", status=429, retry_after=7.0), unavailable(retry_after=3.0))
    assert await policy.run(flaky, clock=clock) == "ok"
    assert clock.slept == [7.0, 3.0]


async def test_backoff_longer_than_retry_after_wins() -> None:
    clock = FakeClock()
    policy = RetryPolicy(initial_backoff=5.0, max_backoff=5.0, budget_seconds=100, jitter=False)
    assert await policy.run(Flaky(unavailable(retry_after=1.0)), clock=clock) == "ok"
    assert clock.slept == [5.0]


async def test_budget_is_never_overslept_and_the_last_error_is_raised() -> None:
    clock = FakeClock()
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=4.0, budget_seconds=10.0, jitter=False)
    errors = [unavailable() for _ in range(50)]
    flaky = Flaky(*errors)
    with pytest.raises(Unavailable) as caught:
        await policy.run(flaky, clock=clock)
    # 1 + 2 + 4 = 7, then only 3 s of budget remain: the last sleep is cut to fit.
    assert clock.slept == [1.0, 2.0, 4.0, 3.0]
    assert sum(clock.slept) == pytest.approx(10.0)
    assert flaky.calls == 5
    assert caught.value is errors[4]


async def test_time_spent_in_attempts_counts_against_the_budget() -> None:
    clock = FakeClock()
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=1.0, budget_seconds=10.0, jitter=False)
    calls = 0

    async def slow_failure() -> str:
        nonlocal calls
        calls += 1
        clock.advance(4.0)  # each attempt takes 4 s before failing
        raise ServingTransportError("timed out")

    with pytest.raises(ServingTransportError):
        await policy.run(slow_failure, clock=clock)
    # t=4 fail, sleep 1; t=9 fail, sleep 1; t=14: over budget, no more sleeping.
    assert calls == 3
    assert clock.slept == [1.0, 1.0]


async def test_retry_after_beyond_the_budget_gives_up_at_once() -> None:
    clock = FakeClock()
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, budget_seconds=5.0)
    flaky = Flaky(RateLimited("slow", status=429, retry_after=30.0))
    with pytest.raises(RateLimited):
        await policy.run(flaky, clock=clock)
    assert flaky.calls == 1
    assert clock.slept == []


@pytest.mark.parametrize(
    "error",
    [
        InvalidRequest("bad", status=400),
        PermissionDenied("no", status=403),
        NotFound("gone", status=404),
        UpdateInProgress("busy", status=409),
        ServerError("not implemented", status=501),
    ],
)
async def test_non_transient_errors_are_never_retried(error: ServingError) -> None:
    clock = FakeClock()
    flaky = Flaky(error)
    with pytest.raises(type(error)):
        await RetryPolicy(budget_seconds=1000).run(flaky, clock=clock)
    assert flaky.calls == 1
    assert clock.slept == []


async def test_non_serving_exceptions_propagate_untouched() -> None:
    async def broken() -> str:
        raise KeyError("bug")

    with pytest.raises(KeyError):
        await RetryPolicy().run(broken, clock=FakeClock())


async def test_max_attempts_bounds_a_degenerate_rng() -> None:
    class Zero(random.Random):
        def uniform(self, a: float, b: float) -> float:
            # Always the lower bound: full jitter at its most degenerate.
            return min(a, b)

    clock = FakeClock()
    flaky = Flaky(*[unavailable() for _ in range(20)])
    policy = RetryPolicy(budget_seconds=100, rng=Zero(), max_attempts=5)
    with pytest.raises(Unavailable):
        await policy.run(flaky, clock=clock)
    assert flaky.calls == 5


async def test_on_retry_hook_sees_each_retry() -> None:
    seen: list[tuple[str, int, str, float]] = []
    policy = RetryPolicy(initial_backoff=1.0, budget_seconds=100, jitter=False)
    await policy.run(
        Flaky(unavailable(), unavailable()),
        clock=FakeClock(),
        call="export_metrics",
        on_retry=lambda call, n, err, delay: seen.append((call, n, type(err).__name__, delay)),
    )
    assert seen == [
        ("export_metrics", 1, "Unavailable", 1.0),
        ("export_metrics", 2, "Unavailable", 2.0),
    ]


def test_built_from_settings() -> None:
    settings = ServingSettings(retry_initial_backoff=0.25, retry_max_backoff=3.0, retry_budget=9.0)
    policy = RetryPolicy.from_settings(settings, rng=random.Random(1))
    assert (policy.initial_backoff, policy.max_backoff, policy.budget_seconds) == (0.25, 3.0, 9.0)
    assert policy.jitter


async def test_never_sends_once() -> None:
    flaky = Flaky(unavailable())
    with pytest.raises(Unavailable):
        await RetryPolicy.never().run(flaky, clock=FakeClock())
    assert flaky.calls == 1
