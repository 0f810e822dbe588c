"""How the API is served: uvicorn with every connection bounded in time and in number.

Where this sits: ``rollout serve`` (``rollout.daemon.build``) serves the HTTP API through which
users submit plans and steer rollouts. uvicorn alone waits for a request's headers and body as
long as a client likes, so a few hundred clients trickling bytes (slowloris) would hold every
connection forever. ``server_config`` gives uvicorn ``BoundedH11`` and the limits of
``ApiSettings``:

- ``header_timeout``: a connection must deliver a request's complete headers within this many
  seconds of opening (or, kept alive, of the next request's first byte), however slowly it
  trickles them; otherwise it is closed;
- ``body_timeout``: while a body is being received, a pause of this long without a byte closes
  the connection (not when the application is the one not reading);
- ``keep_alive_timeout``: an idle kept-alive connection is closed after it;
- ``max_connections``: beyond it, uvicorn answers new requests 503 at once.

A closed request reaches the application as a disconnect (``Guard`` logs it); nothing is
answered to a client that was too slow.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.h11_impl import H11Protocol

from rollout.settings import ApiSettings


class BoundedH11(H11Protocol):
    """uvicorn's h11 protocol with header and body read timeouts (see the module docstring).

    The timeouts are class attributes: uvicorn builds the protocol itself, so
    ``bounded_protocol`` makes a subclass carrying them.
    """

    header_timeout: float = 10.0
    body_timeout: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer: asyncio.TimerHandle | None = None
        self._reading: str | None = None  # "headers", "body" or None: what the timer bounds

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._bound_reading()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self._bound_reading()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # uvicorn's keep-alive timer now bounds the idle connection; the next request's first
        # byte starts the header clock again.
        self._stop_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        super().connection_lost(exc)

    def _bound_reading(self) -> None:
        if self.transport.is_closing():
            self._stop_timer()
            return
        state = self.conn.their_state
        if state is h11.IDLE and (self.cycle is None or self.cycle.response_complete):
            # Waiting for a request's headers: one deadline for all of them, not reset by
            # each trickled byte (a slowloris client sends a byte every few seconds).
            if self._reading != "headers":
                self._start_timer("headers", self.header_timeout)
        elif state is h11.SEND_BODY:
            # Receiving a body: the deadline moves with every byte.
            self._start_timer("body", self.body_timeout)
        else:
            self._stop_timer()

    def _start_timer(self, reading: str, seconds: float) -> None:
        self._stop_timer()
        self._reading = reading
        self._read_timer = self.loop.call_later(seconds, self._read_timed_out)

    def _stop_timer(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
        self._read_timer = None
        self._reading = None

    def _read_timed_out(self) -> None:
        reading = self._reading
        self._read_timer = None
        self._reading = None
        if self.transport.is_closing():
            return
        if reading == "body" and self.flow.read_paused:
            # The application is not reading (back-pressure), not the client being slow.
            self._start_timer("body", self.body_timeout)
            return
        self.logger.info("Closing a connection too slow to send its request %s.", reading)
        self.transport.close()


def bounded_protocol(*, header_timeout: float, body_timeout: float) -> type[BoundedH11]:
    """A ``BoundedH11`` subclass with these timeouts, for ``uvicorn.Config(http=...)``."""
    return type(
        "BoundedH11",
        (BoundedH11,),
        {"header_timeout": header_timeout, "body_timeout": body_timeout},
    )


def server_config(app: ASGIApp, settings: ApiSettings) -> uvicorn.Config:
    """uvicorn's configuration for the API: bounded connections, no access log, no lifespan."""
    return uvicorn.Config(
        app,
        http=bounded_protocol(
            header_timeout=settings.header_timeout, body_timeout=settings.body_timeout
        ),
        timeout_keep_alive=settings.keep_alive_timeout,
        limit_concurrency=settings.max_connections,
        log_config=None,
        access_log=False,
        lifespan="off",
    )
