"""Deadlines for slow clients, below the ASGI app: uvicorn's h11 protocol with two timers.

uvicorn times out idle keep-alive connections only: a client that opens a connection and
trickles a header byte every few seconds (slowloris), or sends headers and then stalls in the
body, holds its connection (and a file descriptor) for ever. Here each connection must deliver
a request's headers within ``header_timeout`` seconds of starting it (or of the previous
response), and its body within ``read_timeout`` seconds of the headers; otherwise the
connection is closed. A request that was fully received is never timed out (generation can
take long)."""
from __future__ import annotations

import asyncio
from typing import Optional

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from vllm.logger import init_logger

logger = init_logger(__name__)


def guarded_protocol(header_timeout: float, read_timeout: float) -> type:
    class GuardedH11Protocol(H11Protocol):
        _guard: Optional[asyncio.TimerHandle] = None
        _phase: Optional[str] = None

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm("headers")

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            state = self.conn.their_state
            if state is h11.IDLE:
                self._arm("headers")        # part of the next request's headers came
            elif state is h11.SEND_BODY:
                self._arm("body")
            else:
                self._disarm()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self, phase: str) -> None:
            if self._phase == phase:
                return                      # the deadline runs from the phase's start
            self._disarm()
            self._phase = phase
            delay = header_timeout if phase == "headers" else read_timeout
            self._guard = self.loop.call_later(delay, self._expire)

        def _disarm(self) -> None:
            if self._guard is not None:
                self._guard.cancel()
            self._guard = None
            self._phase = None

        def _expire(self) -> None:
            phase, self._guard, self._phase = self._phase, None, None
            if not self.transport.is_closing():
                logger.info("closing a connection from %s: its request %s did not arrive "
                            "in time", self.client, phase)
                self.transport.close()

    return GuardedH11Protocol
