"""Full garbage collections on a timer (``rollout.collection``)."""

from __future__ import annotations

import asyncio
import gc

import pytest

from rollout.collection import collect_every, timed_full_collections


def test_no_automatic_full_collection_within_and_thresholds_restored_after() -> None:
    before = gc.get_threshold()
    with timed_full_collections():
        young, middle, full = gc.get_threshold()
        assert (young, middle) == before[:2]
        assert full > 1_000_000  # never reached: full collections come from collect_every
    assert gc.get_threshold() == before


def test_thresholds_restored_when_the_body_raises() -> None:
    before = gc.get_threshold()
    with pytest.raises(RuntimeError), timed_full_collections():
        raise RuntimeError("boom")
    assert gc.get_threshold() == before


def test_collects_until_stopped_and_not_after() -> None:
    calls: list[int] = []

    async def scenario() -> None:
        stopping = asyncio.Event()

        def collect() -> int:
            calls.append(1)
            if len(calls) == 3:
                stopping.set()
            return 0

        await asyncio.wait_for(collect_every(stopping, 0.001, collect=collect), timeout=30)

    asyncio.run(scenario())
    assert len(calls) == 3


def test_a_stop_before_the_first_period_collects_nothing() -> None:
    calls: list[int] = []

    async def scenario() -> None:
        stopping = asyncio.Event()
        stopping.set()
        await collect_every(stopping, 3600.0, collect=lambda: calls.append(1))

    asyncio.run(scenario())
    assert calls == []
