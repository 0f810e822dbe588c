"""The engine as a process: store, serving client, runner and reconcile loop, wired from Settings.

Where this sits: ``rollout engine`` calls ``run_engine`` (and ``rollout watch-alias`` calls
``run_alias_watch``, the alias watcher alone: ``rollout.engine.aliases``); it builds every
I/O handle from the settings, runs the reconcile loop, and on SIGTERM/SIGINT stops taking
work, lets the reconciles in flight finish and releases its leases before closing the
client and the store. It takes part in rollout ownership like a ``rollout serve`` replica
(``rollout.engine.ownership``): beside other controllers on PostgreSQL it drives only its
share, and on SQLite it refuses to start while another process drives the same file. If the
loop dies the process ends with the loop's error.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import httpx
import structlog

from rollout.alerts.dispatcher import target_policy
from rollout.alerts.targets import TargetPolicy
from rollout.clock import Clock, SystemClock
from rollout.collection import collect_every, timed_full_collections
from rollout.engine.aliases import AliasWatch, AliasWatcher, WatchOutcome
from rollout.engine.decide import Timing
from rollout.engine.model import TERMINAL_PHASES, Phase
from rollout.engine.ownership import Owner, new_holder_id
from rollout.engine.runner import DecisionObserver, Runner
from rollout.engine.scheduler import Reconciler
from rollout.errors import ConfigurationProblem, with_sign_in_help
from rollout.health import ResponseRelay, WorkspaceWatch
from rollout.metrics.prometheus import OwnMetrics
from rollout.plan import AlertChannel
from rollout.policies import PolicyLibrary
from rollout.serving.client import ServingClient
from rollout.serving.errors import ServingError
from rollout.settings import AliasWatchSetting, EngineSettings, Settings, lease_problem
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


@dataclass(frozen=True)
class Driver:
    """What drives rollouts in a process (``rollout serve`` and ``rollout engine`` alike): the
    watch that raises the workspace-outage alert, the runner and the reconcile loop."""

    watch: WorkspaceWatch
    runner: Runner
    reconciler: Reconciler
    own_metrics: OwnMetrics


def wire_driver(
    settings: Settings,
    clock: Clock,
    *,
    client: ServingClient,
    store: Store,
    ownership: Owner,
    relay: ResponseRelay,
    default_channels: Sequence[AlertChannel],
    hook_targets: TargetPolicy,
    observer: DecisionObserver | None = None,
    hook_http: httpx.AsyncClient | None = None,
    on_lag: Callable[[float], None] | None = None,
) -> Driver:
    """Wire the driving part of a process; ``relay`` (the serving client's response hook)
    gains the workspace watch, so every answer of the workspace reaches it."""
    watch = WorkspaceWatch(
        store,
        clock,
        workspace=client.host,
        outage_after=settings.alerts.workspace_outage_after,
        channels=default_channels,
    )
    relay.add(watch.on_response)
    # The sources of the policies' checks on a team's own metrics (Prometheus, web JSON).
    own_metrics = OwnMetrics(settings.prometheus)
    runner = Runner(
        store,
        client,
        clock=clock,
        timing=timing_from(settings.engine, metrics_window=settings.serving.metrics_window),
        default_channels=default_channels,
        observer=observer,
        ownership=ownership,
        own_metrics=own_metrics,
        # Gate hooks go where alerts may go: through ``hook_http`` when the caller pins one,
        # else the runner makes its own pinned client.
        hook_http=hook_http,
        hook_targets=hook_targets,
    )
    reconciler = Reconciler(
        runner,
        store,
        clock,
        scan_interval=settings.engine.scan_interval,
        failure_backoff=settings.engine.failure_backoff,
        on_lag=on_lag,
        ownership=ownership,
    )
    return Driver(watch, runner, reconciler, own_metrics)


async def run_engine(
    settings: Settings,
    *,
    until_idle: bool = False,
    default_channels: Sequence[AlertChannel] = (),
) -> None:
    """Reconcile every active rollout until SIGTERM/SIGINT (or, ``until_idle``, none is left).

    Alerts go to the outbox with the plan's channels and ``default_channels`` (the caller
    parses ``ROLLOUT_ALERTS_CHANNELS``), as under ``rollout serve``, the workspace-outage
    alert included (``rollout.health.WorkspaceWatch``); this process does not deliver them:
    a ``rollout serve`` on the same store does.
    """
    configure_logging(settings.log)
    problem = lease_problem(settings)
    if problem is not None:
        raise ConfigurationProblem(problem)
    clock = SystemClock()
    try:
        targets = target_policy(settings.alerts)
    except ValueError as exc:
        raise ConfigurationProblem(f"alert settings: {exc}") from exc
    on_response = ResponseRelay()
    # Credentials first: nothing is created (no store file) for a process that cannot sign in.
    try:
        client = ServingClient.from_settings(
            settings.databricks, settings.serving, clock=clock, on_response=on_response
        )
    except ServingError as exc:
        raise ConfigurationProblem(with_sign_in_help(str(exc))) from exc
    try:
        store, ownership = open_owned_store(settings, clock)
    except ConfigurationProblem:
        await client.aclose()
        raise
    # A workspace that stops answering raises one alert here too: a deployment of engines
    # beside an API-only ``serve`` must not go silent (the serve process delivers it).
    driver = wire_driver(settings, clock, client=client, store=store, ownership=ownership,
                         relay=on_response, default_channels=default_channels,
                         hook_targets=targets)
    reconciler = driver.reconciler
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop_task = asyncio.create_task(reconciler.run(stop), name="reconcile")
    # Full garbage collections on a timer, as under ``rollout serve`` (rollout.collection).
    collect_task = asyncio.create_task(collect_every(stop), name="collect")
    log.info("engine.started", store=settings.store.url.split("@")[-1], holder=ownership.holder)
    try:
        with timed_full_collections():
            await _supervise(loop_task, stop, store, reconciler,
                             every=settings.engine.scan_interval, until_idle=until_idle)
    finally:
        log.info("engine.stopping", in_flight=reconciler.in_flight)
        stop.set()
        await reconciler.stop(grace=settings.engine.update_poll * 12)
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await loop_task
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await collect_task
        await driver.watch.drain()
        await driver.runner.aclose()
        await client.aclose()
        await driver.own_metrics.aclose()
        store.close()
        log.info("engine.stopped")


async def _supervise(
    loop_task: asyncio.Task[None],
    stop: asyncio.Event,
    store: Store,
    reconciler: Reconciler,
    *,
    every: float,
    until_idle: bool,
) -> None:
    """Wait for a stop signal, the reconcile loop's death (raised), or (``until_idle``) no
    rollout left to drive."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=every)
        if loop_task.done() and not stop.is_set():
            # The loop died: end with its error (or say it stopped by itself).
            loop_task.result()
            raise RuntimeError("the reconcile loop stopped by itself")
        if until_idle:
            active = await asyncio.to_thread(store.list, None, ACTIVE_PHASES, 1)
            if not active and not reconciler.in_flight:
                return


async def run_alias_watch(
    settings: Settings,
    watch: AliasWatchSetting,
    *,
    once: bool = False,
    on_pass: Callable[[WatchOutcome], None] | None = None,
) -> WatchOutcome | None:
    """Watch one alias until SIGTERM/SIGINT (``once``: look once and return what it came to).

    Rollouts it starts are stored in ``pending``; a controller on the same store
    (``rollout serve`` or ``rollout engine``) drives them. Any number of watchers may share
    the store: each alias move starts one rollout.
    """
    configure_logging(settings.log)
    clock = SystemClock()
    try:
        library = PolicyLibrary.from_path_list(settings.engine.policy_dirs)
    except ValueError as exc:
        raise ConfigurationProblem(str(exc)) from exc
    watched = AliasWatch.from_setting(watch, library)
    try:
        client = ServingClient.from_settings(settings.databricks, settings.serving, clock=clock)
    except ServingError as exc:
        raise ConfigurationProblem(with_sign_in_help(str(exc))) from exc
    try:
        store = open_store(settings.store.url)
        store.migrate()
    except (StoreError, ValueError) as exc:
        await client.aclose()
        raise ConfigurationProblem(f"the store is unusable: {exc}") from exc
    watcher = AliasWatcher(
        store, client, clock, [watched], library=library,
        poll_interval=settings.aliases.poll_interval,
    )
    log.info("aliases.watching", watch=watched.key, interval=watcher.poll_interval)
    try:
        if once:
            return await watcher.check(watched)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            outcome = await watcher.check(watched)
            if on_pass is not None:
                on_pass(outcome)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=watcher.poll_interval)
        return None
    finally:
        await client.aclose()
        store.close()
