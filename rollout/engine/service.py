"""The engine as a process: store, serving client, runner and reconcile loop, wired from Settings.

Where this sits: ``rollout engine`` (and, later, the daemon) calls ``run_engine``; it builds
every I/O handle from the settings, starts the scheduler, and on SIGTERM/SIGINT stops taking
work and lets the reconciles in flight finish before closing the client and the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence

import structlog

from rollout.clock import SystemClock
from rollout.engine.decide import Timing
from rollout.engine.model import TERMINAL_PHASES, Phase
from rollout.engine.runner import Runner
from rollout.engine.scheduler import Reconciler
from rollout.errors import ConfigurationProblem, with_sign_in_help
from rollout.plan import AlertChannel
from rollout.serving.client import ServingClient
from rollout.serving.errors import ServingError
from rollout.settings import EngineSettings, Settings
from rollout.store.errors import StoreError
from rollout.store.factory import open_store
from rollout.telemetry import configure_logging

log = structlog.get_logger("rollout.engine")

ACTIVE_PHASES = [p.value for p in Phase if p not in TERMINAL_PHASES]


def timing_from(settings: EngineSettings, *, metrics_window: float = 60.0) -> Timing:
    return Timing(
        look_interval=settings.look_interval,
        update_poll=settings.update_poll,
        update_deadline=settings.update_deadline,
        max_put_attempts=settings.max_put_attempts,
        step_deadline_factor=settings.step_deadline_factor,
        metrics_window=metrics_window,
    )


async def run_engine(
    settings: Settings,
    *,
    until_idle: bool = False,
    default_channels: Sequence[AlertChannel] = (),
) -> None:
    """Reconcile every active rollout until SIGTERM/SIGINT (or, ``until_idle``, none is left).

    Alerts go to the outbox with the plan's channels and ``default_channels`` (the caller
    parses ``ROLLOUT_ALERTS_CHANNELS``), as under ``rollout serve``; this process does not
    deliver them: a ``rollout serve`` on the same store does.
    """
    configure_logging(settings.log)
    clock = SystemClock()
    # Credentials first: nothing is created (no store file) for a process that cannot sign in.
    try:
        client = ServingClient.from_settings(settings.databricks, settings.serving, clock=clock)
    except ServingError as exc:
        raise ConfigurationProblem(with_sign_in_help(str(exc))) from exc
    try:
        store = open_store(settings.store.url)
        store.migrate()
    except (StoreError, ValueError) as exc:
        await client.aclose()
        raise ConfigurationProblem(f"store {settings.store.url!r} unusable: {exc}") from exc
    runner = Runner(
        store,
        client,
        clock=clock,
        timing=timing_from(settings.engine, metrics_window=settings.serving.metrics_window),
        default_channels=default_channels,
    )
    reconciler = Reconciler(
        runner,
        store,
        clock,
        scan_interval=settings.engine.scan_interval,
        failure_backoff=settings.engine.failure_backoff,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reconciler.start()
    log.info("engine.started", store=settings.store.url.split("@")[-1])
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=settings.engine.scan_interval)
            if until_idle:
                active = await asyncio.to_thread(store.list, None, ACTIVE_PHASES, 1)
                if not active and not reconciler.in_flight:
                    break
    finally:
        log.info("engine.stopping", in_flight=reconciler.in_flight)
        await reconciler.stop(grace=settings.engine.update_poll * 12)
        await client.aclose()
        store.close()
        log.info("engine.stopped")
