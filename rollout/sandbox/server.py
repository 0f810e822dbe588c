"""Running the sandbox: uvicorn in a background thread (tests, demo) or in the foreground (CLI).

The sandbox is the fake Databricks workspace behind the serving client. ``SandboxServer`` is
how tests, the demo and the benchmarks get one: a context manager that binds a free loopback
port, serves ``rollout.sandbox.app`` from a thread and stops it on exit. ``run`` is what
``rollout sandbox`` calls.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType, TracebackType
from typing import Any

import uvicorn

from rollout.clock import Clock, FakeClock, SystemClock
from rollout.sandbox.app import ADMIN_PREFIX, create_app
from rollout.sandbox.models import parse_config
from rollout.sandbox.workspace import DEFAULT_TOKEN, Workspace

LOOPBACK = "127.0.0.1"


class SandboxServer:
    """A sandbox workspace served over HTTP on ``host`` (loopback) and a free port.

    ``with SandboxServer() as sandbox:`` gives ``sandbox.url`` (the workspace host to give the
    serving client), ``sandbox.token`` (a CAN_MANAGE personal access token),
    ``sandbox.admin_url`` and ``sandbox.workspace`` (the state, for direct inspection).
    Without an explicit ``workspace`` one is built from the keyword arguments; its clock
    defaults to a ``FakeClock`` so that tests decide when time passes.
    """

    def __init__(
        self,
        workspace: Workspace | None = None,
        *,
        clock: Clock | None = None,
        seed: int = 0,
        window_seconds: float = 60.0,
        update_seconds: float = 5.0,
        token: str = DEFAULT_TOKEN,
        host: str = LOOPBACK,
        port: int = 0,
        log_level: str = "warning",
    ) -> None:
        if workspace is None:
            workspace = Workspace(
                clock if clock is not None else FakeClock(),
                seed=seed,
                window_seconds=window_seconds,
                update_seconds=update_seconds,
                token=token,
            )
        self.workspace = workspace
        self.token = workspace.default_token
        self.host = host
        self._requested_port = port
        self._log_level = log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.port = 0

    @property
    def clock(self) -> Clock:
        return self.workspace.clock

    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("the sandbox server is not running")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return self.url + ADMIN_PREFIX

    def start(self, timeout: float = 10.0) -> SandboxServer:
        """Bind, serve from a daemon thread, and return once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("the sandbox server is already running")
        # Binding here (not inside uvicorn) lets port 0 pick a free port that is known before
        # the thread starts, with no window for another process to take it.
        family, kind, proto, _, address = socket.getaddrinfo(
            self.host, self._requested_port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )[0]
        # proto=IPPROTO_TCP matters: asyncio only sets TCP_NODELAY on accepted sockets whose
        # proto says TCP, and without it keep-alive requests stall ~40 ms on delayed ACKs.
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError:
            sock.close()
            raise
        sock.set_inheritable(True)
        self._socket = sock
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            create_app(self.workspace),
            log_level=self._log_level,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        server = uvicorn.Server(config)
        self._server = server
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="sandbox-server", daemon=True
        )
        self._thread = thread
        thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not thread.is_alive():
                self._cleanup()
                raise RuntimeError("the sandbox server failed to start")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the sandbox server did not start within {timeout} s")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask uvicorn to exit and wait for its thread (bounded)."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive() and self._server is not None:
                # Open keep-alive or slow (fault-delayed) connections: stop waiting for them.
                self._server.force_exit = True
                self._thread.join(timeout)
        self._cleanup()

    def _cleanup(self) -> None:
        if self._socket is not None:
            self._socket.close()
        self._socket = None
        self._thread = None
        self._server = None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


DEMO_ENDPOINT = "demo-endpoint"
DEMO_ENTITY = "demo-model-1"


def create_demo_endpoint(workspace: Workspace, qps: float = 50.0) -> None:
    """``demo-endpoint``: one healthy entity at 100 % under simulated load."""
    spec = parse_config({
        "served_entities": [{
            "name": DEMO_ENTITY,
            "entity_name": "main.default.demo_model",
            "entity_version": "1",
            "workload_size": "Small",
            "scale_to_zero_enabled": False,
        }],
        "traffic_config": {"routes": [{"served_entity_name": DEMO_ENTITY,
                                       "traffic_percentage": 100}]},
    })
    workspace.create_endpoint(DEMO_ENDPOINT, spec, ready=True, qps=qps)


def banner(sandbox: SandboxServer, demo: bool) -> str:
    """What ``rollout sandbox`` prints: where the workspace is and how to talk to it."""
    ws = sandbox.workspace
    lines = [
        f"Sandbox Databricks workspace listening on {sandbox.url}",
        f"  token (CAN_MANAGE):  {sandbox.token}",
        "  OAuth M2M client:    sandbox-client / sandbox-secret",
        (
            f"  metrics window:      {ws.window_seconds:g} s; config updates take "
            f"{ws.update_seconds:g} s"
        ),
        f"  admin API:           {sandbox.admin_url} (see rollout/sandbox/README.md)",
        "",
        f"  export DATABRICKS_HOST={sandbox.url} DATABRICKS_TOKEN={sandbox.token}",
    ]
    if sandbox.host not in ("127.0.0.1", "::1", "localhost"):
        lines += [
            "",
            (
                f"  WARNING: {sandbox.host} may be reachable from other machines, and the "
                "admin API has no authentication."
            ),
        ]
    if demo:
        auth = f'-H "Authorization: Bearer {sandbox.token}"'
        base = f"{sandbox.url}/api/2.0/serving-endpoints/{DEMO_ENDPOINT}"
        lines += [
            "",
            (
                f"Endpoint {DEMO_ENDPOINT} serves {DEMO_ENTITY} at 100 % under simulated load "
                f"({sandbox.workspace.admin_view(DEMO_ENDPOINT)['qps']:g} requests/s)."
            ),
            "Try:",
            f"  curl -s {auth} {base}",
            f"  curl -s {auth} {base}/metrics",
            (
                f"  curl -s {auth} -H 'Content-Type: application/json' "
                f"-d '{{\"dataframe_records\": [{{\"x\": 1}}]}}' "
                f"{sandbox.url}/serving-endpoints/{DEMO_ENDPOINT}/invocations"
            ),
        ]
    lines += ["", "Press Ctrl-C to stop."]
    return "\n".join(lines)


@contextlib.contextmanager
def _stop_signals(on_signal: Callable[[], None]) -> Iterator[None]:
    """Route SIGINT and SIGTERM to ``on_signal`` for the duration, then restore handlers."""

    def handler(_signum: int, _frame: FrameType | None) -> None:
        on_signal()

    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for restored, old in previous.items():
            signal.signal(restored, old)


def run(
    *,
    host: str = LOOPBACK,
    port: int = 8765,
    seed: int = 0,
    window_seconds: float = 60.0,
    update_seconds: float = 10.0,
    token: str = DEFAULT_TOKEN,
    demo: bool = False,
    demo_qps: float = 50.0,
    clock: Clock | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Serve a sandbox until SIGINT or SIGTERM (the CLI's ``rollout sandbox``)."""
    workspace = Workspace(
        clock if clock is not None else SystemClock(),
        seed=seed,
        window_seconds=window_seconds,
        update_seconds=update_seconds,
        token=token,
    )
    if demo:
        create_demo_endpoint(workspace, qps=demo_qps)
    stop = threading.Event()
    sandbox = SandboxServer(workspace, host=host, port=port)
    with _stop_signals(stop.set), sandbox:
        echo(banner(sandbox, demo))
        # Event.wait with a timeout keeps the main thread responsive to signals.
        while not stop.wait(0.5):
            pass
    echo("Sandbox stopped.")
