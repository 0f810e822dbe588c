"""Time, injected.

Every part of a rollout that waits or reads the time (the serving client's retries and polls,
the engine's bake times and deadlines, the scheduler, the sandbox's metric windows) takes a
``Clock``. Production uses ``SystemClock``; tests and benchmarks use ``FakeClock`` so that hours
of rollout run in milliseconds and nothing depends on the speed of the machine.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    """Wall time for timestamps, monotonic time for intervals, and an awaitable sleep."""

    def now(self) -> float:
        """Seconds since the Unix epoch (wall clock, used for timestamps and windows)."""
        ...

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin that never goes backwards (for deadlines)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``; a fake clock advances itself instead of waiting."""
        ...


class SystemClock:
    """The real clock."""

    def now(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that only moves when told to, or when someone sleeps on it.

    ``sleep`` advances the clock by the requested amount and yields to the event loop once, so
    code that polls with sleeps runs at full speed in tests while still observing time passing.
    """

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self._now = start
        self._origin = start
        self.slept: list[float] = []

    def now(self) -> float:
        return self._now

    def monotonic(self) -> float:
        return self._now - self._origin

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go backwards")
        self._now += seconds

    async def sleep(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        self.slept.append(seconds)
        self._now += seconds
        await asyncio.sleep(0)
