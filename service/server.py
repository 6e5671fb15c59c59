"""The serving process: uvicorn with a read timeout, a bounded shutdown, and readiness that fails as
soon as shutdown starts.

- A request's headers and body must have arrived ``SIDREC_READ_TIMEOUT_S`` after its first byte (or
  after the connection opened); else the connection is closed. uvicorn times out only idle
  keep-alive connections, so half a request would hold its connection, and a shutdown, for ever.
- On SIGTERM the listening socket and idle connections close, requests in flight finish, and what
  still runs after ``SIDREC_SHUTDOWN_GRACE_S`` is cancelled; every acknowledged event is already in
  Redis or fsynced (``service.spool``). ``/readyz`` answers 503 from the signal on.
"""

from __future__ import annotations

import asyncio
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from service.settings import Settings

__all__ = ["Server"]


class _ReadTimeoutProtocol(HttpToolsProtocol):
    read_timeout_s = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._disarm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._read_timer is None:  # from the first byte of a request, not reset by later ones
            self._read_timer = self.loop.call_later(self.read_timeout_s, self._timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _timed_out(self) -> None:
        self._read_timer = None
        if not self.transport.is_closing():
            self.transport.close()  # a route waiting for the body sees a disconnect


class Server(uvicorn.Server):
    """uvicorn's server for ``app``; marks ``app.state.shutting_down`` when a stop signal arrives."""

    def __init__(self, app: FastAPI, settings: Settings) -> None:
        app.state.shutting_down = False
        self.app = app
        super().__init__(
            uvicorn.Config(
                app,
                host=settings.host,
                port=settings.port,
                log_level=settings.log_level,
                http=type(
                    "ReadTimeout", (_ReadTimeoutProtocol,), {"read_timeout_s": settings.read_timeout_s}
                ),
                timeout_graceful_shutdown=settings.shutdown_grace_s,  # type: ignore[arg-type]
            )
        )

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.app.state.shutting_down = True  # SIGTERM or SIGINT: uvicorn handles no others
        super().handle_exit(sig, frame)
