"""``rollout serve``: the long-running controller, its root tasks and their supervision.

Where this sits: at the top. It builds every I/O handle from ``Settings`` (store, serving client,
metrics registry, alert HTTP client), wires them into the runner, the reconcile loop, the alert
dispatcher and the HTTP API, and runs them:

- ``api``: uvicorn serving ``rollout.api`` (plans in, rollouts and metrics out), a root task;
- ``outbox``: the alert dispatcher delivering what the engine wrote to the outbox, a root task;
- the reconcile loop that drives every active rollout: an APScheduler job on the same event
  loop (``rollout.engine.scheduler``), which catches every reconcile's failure itself; if the
  scheduler is not running, ``/readyz`` says so.

If a root task dies the other is stopped and the process exits non-zero. SIGTERM or SIGINT
shuts down in stages: stop taking work (no new scans), let the reconciles
in flight finish (a config update in flight settles or is left to the next start, which is safe
either way), deliver the alerts that can be delivered, stop the API, close clients and store,
exit 0.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog
import uvicorn
from prometheus_client import CollectorRegistry

from rollout.alerts import AlertDispatcher, parse_channels
from rollout.api import check_bind, create_api
from rollout.clock import Clock, SystemClock
from rollout.engine.runner import Runner
from rollout.engine.scheduler import Reconciler
from rollout.engine.service import timing_from
from rollout.errors import ConfigurationProblem, with_sign_in_help
from rollout.policies import PolicyLibrary
from rollout.serving.client import ServingClient
from rollout.serving.errors import ServingError
from rollout.settings import Settings
from rollout.store.base import Store
from rollout.store.errors import StoreError
from rollout.store.factory import open_store
from rollout.telemetry import ControllerMetrics, RolloutStateCollector, configure_logging

log = structlog.get_logger("rollout.daemon")


@dataclass
class Controller:
    """Every running part of one controller process, for the supervisor and for tests."""

    settings: Settings
    store: Store
    client: ServingClient
    alerts_http: httpx.AsyncClient
    registry: CollectorRegistry
    reconciler: Reconciler
    dispatcher: AlertDispatcher
    server: uvicorn.Server
    sock: socket.socket
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        host, port = self.sock.getsockname()[:2]
        return f"http://{host}:{port}"


def build(settings: Settings, *, clock: Clock | None = None) -> Controller:
    """Wire a controller from settings; raises ConfigurationProblem with what to fix."""
    clock = clock or SystemClock()
    try:
        tokens = settings.api.tokens.get_secret_value() if settings.api.tokens else None
        check_bind(settings.api.host, tokens)
        default_channels = parse_channels(settings.alerts.channels)
        library = PolicyLibrary.from_path_list(settings.engine.policy_dirs)
    except ValueError as exc:
        raise ConfigurationProblem(str(exc)) from exc
    registry = CollectorRegistry()
    metrics = ControllerMetrics(registry)
    # The workspace's credentials first: a controller that cannot sign in creates nothing
    # (no store file), and says what to set.
    try:
        client = ServingClient.from_settings(
            settings.databricks,
            settings.serving,
            clock=clock,
            on_response=metrics.on_serving_response,
        )
    except ServingError as exc:
        raise ConfigurationProblem(with_sign_in_help(str(exc))) from exc
    try:
        store = open_store(settings.store.url)
        store.migrate()
    except (StoreError, ValueError) as exc:
        raise ConfigurationProblem(f"the store is unusable: {exc}") from exc
    registry.register(RolloutStateCollector(store, clock))
    runner = Runner(
        store,
        client,
        clock=clock,
        timing=timing_from(settings.engine, metrics_window=settings.serving.metrics_window),
        default_channels=default_channels,
        observer=metrics.on_decision,
    )
    reconciler = Reconciler(
        runner,
        store,
        clock,
        scan_interval=settings.engine.scan_interval,
        failure_backoff=settings.engine.failure_backoff,
        on_lag=metrics.on_lag,
    )
    alerts_http = httpx.AsyncClient(timeout=settings.alerts.timeout, follow_redirects=False)
    try:
        dispatcher = AlertDispatcher(
            store, alerts_http, clock, settings.alerts, on_delivery=metrics.on_alert
        )
    except ValueError as exc:
        store.close()
        raise ConfigurationProblem(f"alert settings: {exc}") from exc

    async def ready() -> dict[str, str]:
        return {} if reconciler.running else {"scheduler": "not running"}

    app = create_api(
        store=store,
        client=client,
        clock=clock,
        library=library,
        registry=registry,
        settings=settings.api,
        ready=ready,
        wake=reconciler.poke,
        timing=runner.timing,
        metrics_window=settings.serving.metrics_window,
    )
    try:
        sock = _bind(settings.api.host, settings.api.port)
    except OSError as exc:
        store.close()
        raise ConfigurationProblem(
            f"cannot listen on {settings.api.host}:{settings.api.port}: {exc.strerror or exc}"
        ) from exc
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off")
    return Controller(
        settings=settings,
        store=store,
        client=client,
        alerts_http=alerts_http,
        registry=registry,
        reconciler=reconciler,
        dispatcher=dispatcher,
        server=uvicorn.Server(config),
        sock=sock,
    )


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
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, controller.stopping.set)
    controller.reconciler.start()
    tasks = {
        "api": asyncio.create_task(controller.server.serve(sockets=[controller.sock]), name="api"),
        "outbox": asyncio.create_task(
            controller.dispatcher.run(controller.stopping), name="outbox"
        ),
        "stopping": asyncio.create_task(controller.stopping.wait(), name="stopping"),
    }
    # uvicorn reports being up only through its ``started`` flag.
    while not controller.server.started and not tasks["api"].done():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    if controller.server.started:
        log.info("daemon.listening", url=controller.url)
        if on_listening is not None:
            on_listening(controller.url)
    done, _ = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_COMPLETED)
    failed = [name for name, task in tasks.items() if task in done and name != "stopping"]
    for name in failed:
        error = tasks[name].exception() if not tasks[name].cancelled() else None
        log.error("daemon.root_task_ended", task=name, error=str(error) if error else None)
    await shutdown(controller, tasks)
    return 1 if failed else 0


async def shutdown(controller: Controller, tasks: dict[str, asyncio.Task[Any]]) -> None:
    """Stop in stages: take no work, finish reconciles, flush alerts, stop serving, close."""
    settings = controller.settings
    controller.stopping.set()
    log.info("daemon.stopping", in_flight=controller.reconciler.in_flight)
    # 1. No new scans; reconciles in flight (a config update and its wait) get to finish.
    await controller.reconciler.stop(grace=settings.engine.update_poll * 12)
    # 2. Deliver what can be delivered now; the rest waits in the outbox for the next start.
    with contextlib.suppress(Exception):
        await controller.dispatcher.flush(timeout=settings.alerts.timeout)
    # 3. Stop serving the API.
    controller.server.should_exit = True
    for name in ("outbox", "api"):
        task = tasks.get(name)
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, Exception):
                await asyncio.wait_for(task, timeout=10)
    tasks["stopping"].cancel()
    await controller.client.aclose()
    await controller.alerts_http.aclose()
    controller.store.close()
    log.info("daemon.stopped")


async def serve(settings: Settings, *, on_listening: Callable[[str], None] | None = None) -> int:
    """``rollout serve``: build and run a controller; returns the exit code."""
    configure_logging(settings.log)
    controller = build(settings)
    return await run(controller, on_listening=on_listening)
