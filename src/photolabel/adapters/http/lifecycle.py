"""How ``photolabel serve`` stops: a graceful drain on SIGTERM.

On SIGTERM the service

1. turns draining at once: ``GET /readyz`` answers 503 ``draining`` (a load balancer stops sending
   traffic), new training jobs (``POST /train``, ``POST /v1/train``, ``POST /v1/jobs/{id}/retry``) are
   refused with 503 ``draining``, and the job runner stops: a running job's child process is ended
   (it removes its temporary files) and the job is queued again, to run at the next start;
2. lets the requests already in progress finish, for at most ``DRAIN_TIMEOUT_S`` seconds (30);
3. exits (uvicorn's own shutdown, then the app's lifespan end).

A second SIGTERM, or SIGINT (Ctrl-C), stops at once as uvicorn does. :class:`Drain` holds the state,
:class:`DrainGate` (ASGI middleware) counts the requests in flight and refuses new work while draining,
and :func:`serve_app` runs uvicorn with the SIGTERM handling. Health probes are never counted or refused.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from types import FrameType
from typing import Any

from photolabel.adapters.http.errors import RETRY_AFTER_S, DrainingError, error_body

logger = logging.getLogger("photolabel.http")

#: paths that are never counted as work in flight nor refused while draining
PROBE_PATHS = frozenset({"/livez", "/healthz", "/readyz"})
#: requests that start new work (a training job): refused while draining
_NEW_WORK = (("POST", re.compile(r"^/(v1/)?train/?$")), ("POST", re.compile(r"^/v1/jobs/[^/]+/retry/?$")))
#: seconds uvicorn waits for connections once the drain is over (requests still running are then cancelled)
_AFTER_DRAIN_S = 1.0
#: uvicorn's exit status when the server could not start (the port is taken, the app failed to start)
STARTUP_FAILURE = 3


class Drain:
    """The draining state of one app: a flag, the count of requests in flight, what to do when it starts.

    Thread-safe: the flag is set from a signal handler, requests come and go on the event loop, and
    :meth:`run` waits in a thread of its own.
    """

    def __init__(self, timeout_s: float = 30.0) -> None:
        self.timeout_s = float(timeout_s)
        self._draining = threading.Event()
        self._cond = threading.Condition()
        self._in_flight = 0
        self._callbacks: list[Callable[[], object]] = []
        self._thread: threading.Thread | None = None
        #: True once the stop cut requests short (the drain time ran out, or a second SIGTERM came)
        self.cut_short = False

    @property
    def draining(self) -> bool:
        return self._draining.is_set()

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    def on_begin(self, callback: Callable[[], object]) -> None:
        """Call ``callback`` (in the drain's thread) when draining begins; now, if it already has."""
        with self._cond:
            if not self._draining.is_set():
                self._callbacks.append(callback)
                return
        _call(callback)

    def begin(self) -> bool:
        """Turn draining on (``/readyz`` answers 503 from now on). True the first time, False after."""
        with self._cond:
            if self._draining.is_set():
                return False
            self._draining.set()
            return True

    def enter(self) -> None:
        with self._cond:
            self._in_flight += 1

    def leave(self) -> None:
        with self._cond:
            self._in_flight -= 1
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no request is in flight, at most ``timeout`` seconds; whether none is."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._in_flight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def run(self, then: Callable[[], object]) -> threading.Thread | None:
        """Begin draining and, in a thread: run the callbacks (the job runner stops, its job is queued
        again), wait for the requests in flight (``timeout_s`` at most), then call ``then`` (the server
        exits). Returns the thread, or None when draining had already begun."""
        if not self.begin():
            return None
        with self._cond:
            callbacks, self._callbacks = self._callbacks, []

        def drain() -> None:
            started = time.monotonic()
            for callback in callbacks:
                _call(callback)
            left = max(self.timeout_s - (time.monotonic() - started), 0.0)
            if self.wait_idle(left):
                logger.info("drained: no request in progress; stopping")
            else:
                self.cut_short = True
                logger.warning("drain time (DRAIN_TIMEOUT_S=%g) is over with %d request(s) in progress; stopping",
                               self.timeout_s, self.in_flight)
            _call(then)

        self._thread = threading.Thread(target=drain, name="photolabel-drain", daemon=True)
        self._thread.start()
        return self._thread


def _call(callback: Callable[[], object]) -> None:
    try:
        callback()
    except Exception:  # one failing step must not keep the service from stopping
        logger.exception("while draining")


class DrainGate:
    """ASGI middleware: counts the requests in flight for :class:`Drain` and, while draining, refuses new
    training jobs with 503 ``draining``. Health probes pass untouched."""

    def __init__(self, app: Callable[..., Awaitable[None]], drain: Drain) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path", "") in PROBE_PATHS:
            await self.app(scope, receive, send)
            return
        if self.drain.draining and _starts_work(scope):
            await _refuse(send)
            return
        self.drain.enter()
        try:
            await self.app(scope, receive, send)
        finally:
            self.drain.leave()


def _starts_work(scope: MutableMapping[str, Any]) -> bool:
    method, path = scope.get("method", ""), scope.get("path", "")
    return any(method == wanted and pattern.match(path) for wanted, pattern in _NEW_WORK)


async def _refuse(send: Any) -> None:
    body = json.dumps(error_body(DrainingError.code, "the service is stopping and takes no new training jobs; "
                                                     "send the request again in a moment")).encode()
    await send({"type": "http.response.start", "status": DrainingError.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"retry-after", str(RETRY_AFTER_S).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def serve_app(app: Any, *, host: str, port: int, drain: Drain | None = None, **options: Any) -> None:
    """Run ``app`` with uvicorn (``options`` go to ``uvicorn.Config``) until it is stopped; SIGTERM drains it
    first (see the module's text). ``drain`` defaults to the app's own (``app.state.drain``)."""
    import uvicorn

    drain = drain if drain is not None else getattr(getattr(app, "state", None), "drain", None) or Drain()
    options.setdefault("timeout_graceful_shutdown", max(drain.timeout_s, _AFTER_DRAIN_S))
    config = uvicorn.Config(app, host=host, port=port, **options)
    server = _draining_server(config, drain)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: uvicorn raises it again once stopped, as uvicorn.run
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
    if drain.cut_short:
        _end_stuck_threads(_AFTER_DRAIN_S)


def _end_stuck_threads(grace: float) -> None:
    """After the server stopped: a request cancelled at the end of the drain may leave a worker thread
    blocked (a download that waits for its timeout). Give such threads ``grace`` seconds, then exit
    without waiting for them, so that the drain time bounds the stop."""
    deadline = time.monotonic() + grace
    for thread in threading.enumerate():
        if thread is threading.current_thread() or thread.daemon:
            continue
        thread.join(max(deadline - time.monotonic(), 0.0))
    stuck = [t.name for t in threading.enumerate() if t is not threading.current_thread() and not t.daemon
             and t.is_alive()]
    if stuck:
        logger.warning("exiting without waiting for %d thread(s) still busy: %s", len(stuck), ", ".join(stuck))
        logging.shutdown()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(0)


def _draining_server(config: Any, drain: Drain) -> Any:
    """A ``uvicorn.Server`` whose first SIGTERM drains before the usual shutdown."""
    import uvicorn

    class DrainingServer(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            if sig == signal.SIGTERM and not drain.draining and not self.should_exit:
                logger.info("SIGTERM: draining (not ready, no new jobs; up to %g s for requests in progress)",
                            drain.timeout_s)
                drain.run(then=self.drained)
                return
            if sig == signal.SIGTERM:  # a second one: stop now, cancelling what still runs
                logger.info("SIGTERM again: stopping now")
                drain.cut_short = True
                self.drained()
                return
            super().handle_exit(sig, frame)

        def drained(self) -> None:
            self.config.timeout_graceful_shutdown = _AFTER_DRAIN_S
            self.should_exit = True

    return DrainingServer(config)
