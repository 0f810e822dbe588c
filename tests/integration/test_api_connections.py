"""Slow clients against the API served as ``rollout serve`` serves it (``server_config`` on
uvicorn, a real socket on 127.0.0.1): trickled headers and stalled bodies are disconnected
after the configured timeouts, while /healthz keeps answering the others."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest

from rollout.sandbox.server import SandboxServer
from rollout.settings import ApiSettings
from rollout.store.base import Store
from tests.integration.test_cli_client import ApiServer

SLOW_CLIENTS = 40
# Every wait below is a bound on something expected to happen, never a measured duration.
WAIT = 15.0

pytestmark = pytest.mark.slow


@pytest.fixture
def server(sandbox: SandboxServer, store: Store) -> Iterator[ApiServer]:
    settings = ApiSettings(header_timeout=1.0, body_timeout=1.0, keep_alive_timeout=1,
                           max_connections=100)
    with ApiServer(sandbox, store, settings=settings) as running:
        yield running


def connect(server: ApiServer) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=WAIT)


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server closes the connection (EOF or reset) before ``WAIT`` runs out."""
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def test_slow_clients_are_disconnected_while_healthz_stays_fast(server: ApiServer) -> None:
    trickling = []
    for _ in range(SLOW_CLIENTS):
        sock = connect(server)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        trickling.append(sock)
    stalled = connect(server)
    stalled.sendall(
        b"POST /api/v1/rollouts HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"endpoint\""
    )
    silent = connect(server)  # connects and sends nothing at all
    try:
        # The others are served at once, the slow ones notwithstanding.
        with httpx.Client(base_url=server.url, timeout=2.0) as client:
            for _ in range(5):
                assert client.get("/healthz").json() == {"status": "ok"}
            # Trickling more bytes does not buy more time: the header deadline is fixed.
            for sock in trickling[:5]:
                sock.sendall(b"a")
            for sock in [*trickling, stalled, silent]:
                assert closed_by_server(sock)
            assert client.get("/healthz").status_code == 200
    finally:
        for sock in [*trickling, stalled, silent]:
            sock.close()
    assert server.store.list() == []  # the stalled plan was never stored


def test_a_prompt_client_on_a_kept_alive_connection_is_not_cut(server: ApiServer) -> None:
    with httpx.Client(base_url=server.url, timeout=5.0) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
        body = b'{"endpoint": "none"}'
        response = client.post("/api/v1/rollouts", content=body,
                               headers={"Content-Type": "application/json"})
        assert response.status_code in (404, 422), response.text
        assert client.get("/healthz").status_code == 200  # the same connection, still open
