"""Garbage collection in the long-running controller: full collections on a timer.

Where this sits: ``rollout serve`` (``rollout.daemon.run``) and ``rollout engine``
(``rollout.engine.service.run_engine``) run their root tasks inside ``timed_full_collections``,
with ``collect_every`` as one more task. Nothing here touches a rollout.

Why: every look replaces a rollout's kept state (a few thousand objects) with a new one that
survives into the oldest generation, and CPython starts a full collection once those exceed a
quarter of what the oldest generation holds. A controller keeping 1,000 aged rollouts holds
millions of objects, so it ran a full collection of 0.3-0.6 s every 20 s or so: about 14 % of
its CPU (measured with ``bench/scale.py``, PostgreSQL, 1,000 aged rollouts: 6.8 s of 40 s).
Young collections stay as they are; full ones run every ``FULL_COLLECTION_EVERY`` seconds
instead, which bounds the cyclic garbage held between them the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable, Iterator
from typing import Final

FULL_COLLECTION_EVERY: Final = 60.0
"""Seconds between full collections while ``timed_full_collections`` is in force."""

_NEVER: Final = 2**31 - 1
"""A third threshold no count of young collections reaches: no automatic full collection."""


@contextlib.contextmanager
def timed_full_collections() -> Iterator[None]:
    """Within: the collector starts no full collection by itself (``collect_every`` does);
    the thresholds before are restored on exit."""
    before = gc.get_threshold()
    gc.set_threshold(before[0], before[1], _NEVER)
    try:
        yield
    finally:
        gc.set_threshold(*before)


async def collect_every(
    stopping: asyncio.Event,
    every: float = FULL_COLLECTION_EVERY,
    *,
    collect: Callable[[], object] = gc.collect,
) -> None:
    """A full collection every ``every`` seconds until ``stopping`` is set."""
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), timeout=every)
        if not stopping.is_set():
            collect()
