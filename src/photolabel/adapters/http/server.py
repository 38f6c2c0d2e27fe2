"""How ``photolabel serve`` speaks HTTP: uvicorn's h11 protocol with deadlines for slow clients.

uvicorn waits for a request's headers and body as long as the client keeps the connection
open, so a few dozen sockets that send one byte every few seconds hold the server's
connections for as long as they like. :class:`DeadlineProtocol` closes them:

* the request line and headers must be complete within HEADER_TIMEOUT_S of the connection
  opening (or of the previous answer, on a kept-alive connection);
* a body must be complete within BODY_TIMEOUT_S of its headers, plus one second for every
  BODY_MIN_BYTES_PER_S bytes received, so an upload that keeps coming at a fair rate is never cut.
  Time the server itself spends not reading (the route has not asked for more yet) is not counted.

A client that started a request and missed its deadline is answered ``408`` (``request_timeout``)
before the connection closes; an idle connection is closed without an answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from photolabel.adapters.http.errors import error_body

logger = logging.getLogger("photolabel.http")

REQUEST_TIMEOUT = "request_timeout"


class DeadlineProtocol(H11Protocol):
    """uvicorn's :class:`H11Protocol` with a header deadline and a body deadline (see the module)."""

    header_timeout: float = 10.0
    body_timeout: float = 60.0
    body_min_bytes_per_s: float = 16 * 1024.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline_timer: asyncio.TimerHandle | None = None
        self._phase: str | None = None  # "head" or "body": what the armed deadline waits for
        self._body_since = 0.0
        self._body_received = 0

    # -- uvicorn's protocol interface -------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._follow()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        counting = self._phase == "body"
        super().data_received(data)
        if counting and self._phase == "body":
            self._body_received += len(data)
        self._follow()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._follow()

    # -- the deadlines ------------------------------------------------------------------------------

    def _follow(self) -> None:
        """Arm the deadline that fits what the connection waits for now, or none."""
        if self.transport is None or self.transport.is_closing():
            self._disarm()
            return
        state = self.conn.their_state
        if state is h11.IDLE:  # waiting for a request line and headers
            if self._phase != "head":
                self._arm("head", self.header_timeout)
        elif state is h11.SEND_BODY:  # the headers are in, the body is not
            if self._phase != "body":
                self._body_since, self._body_received = self.loop.time(), 0
                self._arm("body", self.body_timeout)
        else:  # the request is in: the route's time is not limited here
            self._disarm()

    def _arm(self, phase: str, delay: float) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._phase = phase
        self._deadline_timer = self.loop.call_later(max(delay, 0.0), self._expired)

    def _disarm(self) -> None:
        if self._deadline_timer is not None:
            self._deadline_timer.cancel()
        self._deadline_timer = None
        self._phase = None

    def _expired(self) -> None:
        self._deadline_timer = None
        phase, self._phase = self._phase, None
        if self.transport.is_closing():
            return
        state = self.conn.their_state
        if phase == "head" and state is h11.IDLE:
            started = bool(self.conn.trailing_data[0])  # part of a request arrived, not all of its head
            self._close(f"the request line and headers did not all arrive within {self.header_timeout:g} s "
                        "(HEADER_TIMEOUT_S)", answer=started)
        elif phase == "body" and state is h11.SEND_BODY:
            now = self.loop.time()
            cycle = self.cycle
            if self.flow.read_paused or (cycle is not None and cycle.waiting_for_100_continue):
                # the server is not reading yet (the route has not asked for the body): the client is not late
                self._body_since, self._body_received = now, 0
                self._arm("body", self.body_timeout)
                return
            due = self._body_since + self.body_timeout + self._body_received / self.body_min_bytes_per_s
            if now < due:
                self._arm("body", due - now)
                return
            self._close(f"the request body did not arrive in time: {self._body_received} bytes in "
                        f"{now - self._body_since:.0f} s (BODY_TIMEOUT_S={self.body_timeout:g}, then at least "
                        f"BODY_MIN_BYTES_PER_S={self.body_min_bytes_per_s:g} bytes a second)",
                        answer=True)
        else:
            self._follow()

    def _close(self, message: str, *, answer: bool) -> None:
        client = f"{self.client[0]}:{self.client[1]}" if self.client else "a client"
        # an idle connection (nothing of a request yet) is routine; a late request is worth a line
        logger.log(logging.INFO if answer else logging.DEBUG, "closed the connection of %s: %s", client, message)
        cycle = self.cycle if self.conn.their_state is h11.SEND_BODY else None  # else: the last, answered request
        if cycle is not None:
            answer = answer and not cycle.response_started  # never a second answer, nor half of one
            if not cycle.response_complete:
                cycle.disconnected = True  # the route reads a disconnect; whatever it answers goes nowhere
                cycle.message_event.set()
        if answer:
            body = json.dumps(error_body(REQUEST_TIMEOUT, message)).encode()
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body))
        self.transport.close()


def deadline_protocol(header_timeout: float, body_timeout: float, body_min_bytes_per_s: float) -> type[H11Protocol]:
    """A :class:`DeadlineProtocol` class with these deadlines, for ``uvicorn.Config(http=...)``."""
    return type("DeadlineProtocol", (DeadlineProtocol,), {
        "header_timeout": float(header_timeout), "body_timeout": float(body_timeout),
        "body_min_bytes_per_s": float(body_min_bytes_per_s),
    })


def protocol_for(settings: Any) -> type[H11Protocol]:
    """The protocol class of ``settings`` (HEADER_TIMEOUT_S, BODY_TIMEOUT_S, BODY_MIN_BYTES_PER_S)."""
    return deadline_protocol(settings.header_timeout_s, settings.body_timeout_s, settings.body_min_bytes_per_s)
