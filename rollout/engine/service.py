"""The engine as a process: store, serving client, runner and reconcile loop, wired from Settings.

Where this sits: ``rollout engine`` calls ``run_engine``; it builds every I/O handle from the
settings, runs the reconcile loop, and on SIGTERM/SIGINT stops taking work, lets the
reconciles in flight finish and releases its leases before closing the client and the store.
It takes part in rollout ownership like a ``rollout serve`` replica (``rollout.engine
.ownership``): beside other controllers on PostgreSQL it drives only its share, and on SQLite
it refuses to start while another process drives the same file. If the loop dies the
process ends with the loop's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Sequence

import structlog

from rollout.clock import Clock, SystemClock
from rollout.engine.decide import Timing
from rollout.engine.model import TERMINAL_PHASES, Phase
from rollout.engine.ownership import Owner, new_holder_id
from rollout.engine.runner import Runner
from rollout.engine.scheduler import Reconciler
from rollout.errors import ConfigurationProblem, with_sign_in_help
from rollout.metrics.prometheus import OwnMetrics
from rollout.plan import AlertChannel
from rollout.serving.client import ServingClient
from rollout.serving.errors import ServingError
from rollout.settings import EngineSettings, Settings, lease_problem
from rollout.store.base import Store
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


def open_owned_store(settings: Settings, clock: Clock) -> tuple[Store, Owner]:
    """Open and migrate the store and set up this process's ownership of rollouts.

    On SQLite this takes the single-driver lease: ``DriverAlreadyRunning`` (a
    ``ConfigurationProblem``) names the process already driving the file.
    """
    try:
        store = open_store(settings.store.url)
        store.migrate()
    except (StoreError, ValueError) as exc:
        raise ConfigurationProblem(f"the store is unusable: {exc}") from exc
    ownership = Owner(
        store,
        clock,
        holder=new_holder_id(clock),
        lease_ttl=settings.engine.lease_ttl,
        wire_seconds=settings.serving.put_deadline,
        slack=settings.engine.ownership_slack,
        single_driver=settings.store.url.startswith("sqlite:"),
    )
    try:
        ownership.take_driver()
    except StoreError as exc:
        store.close()
        raise ConfigurationProblem(f"the store is unusable: {exc}") from exc
    except ConfigurationProblem:
        store.close()
        raise
    return store, ownership


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
    problem = lease_problem(settings)
    if problem is not None:
        raise ConfigurationProblem(problem)
    clock = SystemClock()
    # Credentials first: nothing is created (no store file) for a process that cannot sign in.
    try:
        client = ServingClient.from_settings(settings.databricks, settings.serving, clock=clock)
    except ServingError as exc:
        raise ConfigurationProblem(with_sign_in_help(str(exc))) from exc
    try:
        store, ownership = open_owned_store(settings, clock)
    except ConfigurationProblem:
        await client.aclose()
        raise
    own_metrics = OwnMetrics(settings.prometheus)
    runner = Runner(
        store,
        client,
        clock=clock,
        timing=timing_from(settings.engine, metrics_window=settings.serving.metrics_window),
        default_channels=default_channels,
        ownership=ownership,
        own_metrics=own_metrics,
    )
    reconciler = Reconciler(
        runner,
        store,
        clock,
        scan_interval=settings.engine.scan_interval,
        failure_backoff=settings.engine.failure_backoff,
        ownership=ownership,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop_task = asyncio.create_task(reconciler.run(stop), name="reconcile")
    log.info("engine.started", store=settings.store.url.split("@")[-1], holder=ownership.holder)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=settings.engine.scan_interval)
            if loop_task.done() and not stop.is_set():
                # The loop died: end with its error (or say it stopped by itself).
                loop_task.result()
                raise RuntimeError("the reconcile loop stopped by itself")
            if until_idle:
                active = await asyncio.to_thread(store.list, None, ACTIVE_PHASES, 1)
                if not active and not reconciler.in_flight:
                    break
    finally:
        log.info("engine.stopping", in_flight=reconciler.in_flight)
        stop.set()
        await reconciler.stop(grace=settings.engine.update_poll * 12)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await loop_task
        await client.aclose()
        await own_metrics.aclose()
        store.close()
        log.info("engine.stopped")
