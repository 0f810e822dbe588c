"""``rollout serve``: the long-running controller, its root tasks and their supervision.

Where this sits: at the top. It builds every I/O handle from ``Settings`` (store, serving client,
metrics registry, alert HTTP client), wires them into the runner, the reconcile loop, the alert
dispatcher and the HTTP API, and runs them:

- ``api``: uvicorn serving ``rollout.api`` (plans in, rollouts and metrics out), a root task;
- ``outbox``: the alert dispatcher delivering what the engine wrote to the outbox, a root task;
- ``aliases``: the alias watcher (``rollout.engine.aliases``), a root task: it polls the
  Unity Catalog aliases listed in ``ROLLOUT_ALIASES_WATCHES`` and starts one rollout per
  alias move (exactly one between replicas: the store keys it);
- ``alias_moves``: the alias mover, a root task: it moves ``on_success.set_alias`` to the
  candidate's version once a rollout is promoted (retried until done, at least once);
- ``collect``: a full garbage collection every minute, a root task (the collector starts
  none by itself meanwhile: ``rollout.collection``);
- ``reconcile``: the loop that drives the active rollouts this replica owns
  (``rollout.engine.scheduler``), a root task; it catches every reconcile's failure itself, so
  its end means the loop itself broke. ``/readyz`` fails when no scan has completed within
  three scan intervals (a stalled loop) and lists the rollouts this replica owns; it also
  fails while the store refuses writes (``rollout.health.StoreWriteCheck``, a probe write
  cached for two seconds).

Every answer of the serving client also goes to ``rollout.health.WorkspaceWatch``, which
alerts once when the workspace has not answered for ``ROLLOUT_ALERTS_WORKSPACE_OUTAGE_AFTER``
seconds and resolves the alert when it answers again.

Replicas: any number of ``rollout serve`` (and ``rollout engine``) processes may share one
PostgreSQL store; each rollout is driven by one of them at a time under a lease with a fencing
token (``rollout.engine.ownership``). On SQLite a second driving process refuses to start,
naming the first. The lease TTL must exceed the serving client's PUT deadline; ``build`` says
which variables to change when it does not.

If a root task dies the others are stopped and the process exits non-zero. SIGTERM or SIGINT
shuts down in stages: stop taking work (no new scans), let the reconciles in flight finish (a
config update in flight settles or is left to the rollout's next owner, which is safe either
way), release this replica's leases so other replicas take over at once, deliver the alerts
that can be delivered, stop the API, close clients and store, exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog
import uvicorn
from prometheus_client import CollectorRegistry

from rollout.alerts import AlertDispatcher, guarded_client, parse_channels
from rollout.alerts.dispatcher import target_policy
from rollout.alerts.targets import TargetPolicy
from rollout.api import check_bind, create_api
from rollout.api.server import server_config
from rollout.clock import Clock, SystemClock
from rollout.collection import collect_every, timed_full_collections
from rollout.engine.aliases import AliasMover, AliasWatch, AliasWatcher
from rollout.engine.ownership import Owner
from rollout.engine.scheduler import Reconciler
from rollout.engine.service import open_owned_store, wire_driver
from rollout.errors import ConfigurationProblem, with_sign_in_help
from rollout.health import ResponseRelay, StoreWriteCheck, WorkspaceWatch
from rollout.metrics.prometheus import OwnMetrics
from rollout.plan import AlertChannel
from rollout.policies import PolicyLibrary
from rollout.serving.client import ServingClient
from rollout.serving.errors import ServingError
from rollout.settings import Settings, lease_problem
from rollout.store.base import Store
from rollout.store.errors import StoreError
from rollout.store.model import ACTIVE, TERMINAL, RolloutSummary, SummaryCursor
from rollout.telemetry import (
    ACTIVE_PAGE,
    FINISHED_SHOWN,
    FINISHED_VISIBLE_SECONDS,
    MAX_ACTIVE_SERIES,
    ControllerMetrics,
    OwnershipCollector,
    RolloutStateCollector,
    StateReader,
    StateReading,
    configure_logging,
)

log = structlog.get_logger("rollout.daemon")

# Threads for the loop's store calls (the API has its own: rollout.api.app.API_THREADS).
STORE_THREADS = 16


@dataclass
class Controller:
    """Every running part of one controller process, for the supervisor and for tests."""

    settings: Settings
    store: Store
    client: ServingClient
    alerts_http: httpx.AsyncClient
    registry: CollectorRegistry
    watch: WorkspaceWatch
    reconciler: Reconciler
    ownership: Owner
    dispatcher: AlertDispatcher
    watcher: AliasWatcher
    mover: AliasMover
    server: uvicorn.Server
    sock: socket.socket
    own_metrics: OwnMetrics | None = None
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}"


def build(settings: Settings, *, clock: Clock | None = None) -> Controller:
    """Wire a controller from settings; raises ConfigurationProblem with what to fix."""
    clock = clock or SystemClock()
    default_channels, targets, library = _checked_settings(settings)
    try:
        watches = [AliasWatch.from_setting(w, library) for w in settings.aliases.watches]
    except ConfigurationProblem as exc:
        raise ConfigurationProblem(f"ROLLOUT_ALIASES_WATCHES: {exc}") from exc
    registry = CollectorRegistry()
    metrics = ControllerMetrics(registry)
    on_response = ResponseRelay(metrics.on_serving_response)
    # The workspace's credentials first: a controller that cannot sign in creates nothing
    # (no store file), and says what to set.
    try:
        client = ServingClient.from_settings(
            settings.databricks, settings.serving, clock=clock, on_response=on_response
        )
    except ServingError as exc:
        raise ConfigurationProblem(with_sign_in_help(str(exc))) from exc
    store, ownership = open_owned_store(settings, clock)
    # Per-rollout families render their own text after the registry's (thousands of samples).
    rendered = (
        RolloutStateCollector(state_reader(store, clock), clock),
        OwnershipCollector(lambda: ownership.owned, lambda: ownership.replicas),
    )
    alerts_http = guarded_client(targets, timeout=settings.alerts.timeout)
    driver = wire_driver(
        settings, clock, client=client, store=store, ownership=ownership, relay=on_response,
        default_channels=default_channels, hook_targets=targets,
        observer=metrics.on_decision,
        # Gate hooks go where alerts may go, through the same pinned client.
        hook_http=alerts_http,
        on_lag=metrics.on_lag,
    )
    watch, runner, reconciler, own_metrics = (
        driver.watch, driver.runner, driver.reconciler, driver.own_metrics
    )
    try:
        dispatcher = AlertDispatcher(
            store, alerts_http, clock, settings.alerts, on_delivery=metrics.on_alert,
            targets=targets,
        )
    except ValueError as exc:
        store.close()
        raise ConfigurationProblem(f"alert settings: {exc}") from exc

    watcher = AliasWatcher(
        store,
        client,
        clock,
        watches,
        library=library,
        poll_interval=settings.aliases.poll_interval,
        wake=reconciler.poke,
    )
    mover = AliasMover(store, client, clock, settings.aliases)

    store_write = StoreWriteCheck(store, clock)

    async def ready() -> dict[str, str]:
        problems = loop_problems(reconciler, clock)
        # A store that reads but refuses writes cannot commit one decision: not ready.
        problems.update(await store_write.check())
        return problems

    app = create_api(
        store=store,
        client=client,
        clock=clock,
        library=library,
        registry=registry,
        rendered=rendered,
        settings=settings.api,
        alert_targets=targets,
        ready=ready,
        wake=reconciler.poke,
        timing=runner.timing,
        metrics_window=settings.serving.metrics_window,
        owned=lambda: ownership.owned,
        own_metrics=own_metrics,
    )
    try:
        sock = _bind(settings.api.host, settings.api.port)
    except OSError as exc:
        store.close()
        raise ConfigurationProblem(
            f"cannot listen on {settings.api.host}:{settings.api.port}: {exc.strerror or exc}"
        ) from exc
    config = server_config(app, settings.api)
    return Controller(
        settings=settings,
        store=store,
        client=client,
        alerts_http=alerts_http,
        registry=registry,
        watch=watch,
        reconciler=reconciler,
        ownership=ownership,
        dispatcher=dispatcher,
        watcher=watcher,
        mover=mover,
        server=uvicorn.Server(config),
        sock=sock,
        own_metrics=own_metrics,
    )


def _checked_settings(
    settings: Settings,
) -> tuple[list[AlertChannel], TargetPolicy, PolicyLibrary]:
    """The settings that need no I/O to check: the bind, default channels, policies."""
    try:
        tokens = settings.api.tokens.get_secret_value() if settings.api.tokens else None
        check_bind(settings.api.host, tokens)
        default_channels = parse_channels(settings.alerts.channels)
        targets = target_policy(settings.alerts)
        for channel in default_channels:
            refused = targets.literal_refusal(channel.url)
            if refused is not None:
                # Every alert to it would be refused at delivery: say so now, not at a rollback.
                raise ConfigurationProblem(
                    f"ROLLOUT_ALERTS_CHANNELS: {refused}; list it in "
                    "ROLLOUT_ALERTS_ALLOWED_HOSTS to allow it"
                )
        library = PolicyLibrary.from_path_list(settings.engine.policy_dirs)
    except ValueError as exc:
        raise ConfigurationProblem(str(exc)) from exc
    problem = lease_problem(settings)
    if problem is not None:
        raise ConfigurationProblem(problem)
    return default_channels, targets, library


def state_reader(store: Store, clock: Clock) -> StateReader:
    """What ``/metrics`` reads from ``store`` at scrape time: summaries of every active rollout
    and of the recently finished, and the outbox backlog (None when the store cannot be
    read: a scrape must not fail because the store blinked)."""

    def read() -> StateReading | None:
        try:
            shown: list[RolloutSummary] = []
            cursor: SummaryCursor | None = None
            while len(shown) < MAX_ACTIVE_SERIES:
                page = store.list_summaries(phases=ACTIVE, limit=ACTIVE_PAGE, cursor=cursor)
                shown.extend(page)
                if len(page) < ACTIVE_PAGE:
                    break
                cursor = page[-1].cursor
            now = clock.now()
            finished = store.list_summaries(phases=TERMINAL, limit=FINISHED_SHOWN)
            shown.extend(s for s in finished if now - s.updated_at <= FINISHED_VISIBLE_SECONDS)
            return StateReading(shown, store.pending_alert_count())
        except StoreError:
            return None

    return read


def loop_problems(reconciler: Reconciler, clock: Clock) -> dict[str, str]:
    """The reconcile loop's part of readiness: empty while scans keep completing."""
    stalled = reconciler.stalled(clock.now())
    return {} if stalled is None else {"reconcile": stalled}


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def run(controller: Controller, *, on_listening: Callable[[str], None] | None = None) -> int:
    """Run the root tasks until a signal or a failure; returns the exit code."""
    # Full collections on a timer (a root task), not every time looks have made enough
    # long-lived objects: see rollout.collection.
    with timed_full_collections():
        return await _run(controller, on_listening=on_listening)


async def _run(controller: Controller, *, on_listening: Callable[[str], None] | None) -> int:
    loop = asyncio.get_running_loop()
    # Store calls wait on the database (PostgreSQL round trips, SQLite's write lock) with the
    # GIL released: more threads than cores keep due looks from queueing behind them.
    loop.set_default_executor(
        ThreadPoolExecutor(max_workers=STORE_THREADS, thread_name_prefix="store")
    )
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, controller.stopping.set)
    tasks = {
        "reconcile": asyncio.create_task(
            controller.reconciler.run(controller.stopping), name="reconcile"
        ),
        "api": asyncio.create_task(controller.server.serve(sockets=[controller.sock]), name="api"),
        "outbox": asyncio.create_task(
            controller.dispatcher.run(controller.stopping), name="outbox"
        ),
        "aliases": asyncio.create_task(
            controller.watcher.run(controller.stopping), name="aliases"
        ),
        "alias_moves": asyncio.create_task(
            controller.mover.run(controller.stopping), name="alias_moves"
        ),
        "collect": asyncio.create_task(collect_every(controller.stopping), name="collect"),
        "stopping": asyncio.create_task(controller.stopping.wait(), name="stopping"),
    }
    # uvicorn reports being up only through its ``started`` flag.
    while not controller.server.started and not tasks["api"].done():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    if controller.server.started:
        log.info("daemon.listening", url=controller.url)
        if on_listening is not None:
            on_listening(controller.url)
    sign_in = asyncio.create_task(_check_sign_in(controller.client), name="sign_in")
    done, _ = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)
    sign_in.cancel()
    # A root task that returns while the daemon is not stopping has died as surely as one
    # that raised.
    failed = [
        name
        for name, task in tasks.items()
        if task in done
        and name != "stopping"
        and (task.cancelled() or task.exception() is not None or not controller.stopping.is_set())
    ]
    for name in failed:
        error = tasks[name].exception() if not tasks[name].cancelled() else None
        log.error("daemon.root_task_ended", task=name, error=str(error) if error else None)
    await shutdown(controller, tasks)
    return 1 if failed else 0


async def _check_sign_in(client: ServingClient) -> None:
    """Sign in once at startup, so missing credentials are logged now, not at the first call.

    Not fatal: the workspace may be unreachable for a moment, and every call signs in again.
    """
    try:
        oauth = await client.signs_in_with_oauth()
    except ServingError as exc:
        failure = str(exc)  # one line naming what is missing; no traceback needed
    else:
        log.info("daemon.signed_in", host=client.host, oauth=oauth)
        return
    log.error("daemon.sign_in_failed", host=client.host, error=failure)


async def shutdown(controller: Controller, tasks: dict[str, asyncio.Task[Any]]) -> None:
    """Stop in stages: take no work, finish reconciles, flush alerts, stop serving, close."""
    settings = controller.settings
    controller.stopping.set()
    log.info("daemon.stopping", in_flight=controller.reconciler.in_flight)
    # 1. No new scans; reconciles in flight (a config update and its wait) get to finish;
    # then this replica's leases are released, so other replicas take over at once.
    await controller.reconciler.stop(grace=settings.engine.update_poll * 12)
    with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
        await asyncio.wait_for(tasks["reconcile"], timeout=10)
    # 2. Deliver what can be delivered now; the rest waits in the outbox for the next start.
    await controller.watch.drain()
    with contextlib.suppress(Exception):
        await controller.dispatcher.flush(timeout=settings.alerts.timeout)
    # 3. Stop serving the API.
    controller.server.should_exit = True
    for name in ("outbox", "api", "aliases", "alias_moves", "collect"):
        task = tasks.get(name)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
                await asyncio.wait_for(task, timeout=10)
    tasks["stopping"].cancel()
    await controller.client.aclose()
    await controller.alerts_http.aclose()
    if controller.own_metrics is not None:
        await controller.own_metrics.aclose()
    controller.store.close()
    log.info("daemon.stopped")


async def serve(settings: Settings, *, on_listening: Callable[[str], None] | None = None) -> int:
    """``rollout serve``: build and run a controller; returns the exit code."""
    configure_logging(settings.log)
    controller = build(settings)
    return await run(controller, on_listening=on_listening)
