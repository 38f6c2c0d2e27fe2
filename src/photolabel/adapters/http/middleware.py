"""ASGI middleware of the service: :class:`BodySizeLimit`, which refuses request bodies over a size, and
:class:`FetchSlots`, which keeps requests that download URLs from taking every thread."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import anyio

from photolabel.adapters.http.errors import RETRY_AFTER_S, PayloadTooLargeError, error_body

BUSY = "busy"


class BodySizeLimit:
    """Refuse request bodies over ``max_bytes`` with 413: by Content-Length, and by counting what streams in.

    Pure ASGI so that nothing buffers the body before it is counted. When the count
    passes the limit mid-stream, whatever the app answers is replaced by the 413.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], max_bytes: int,
                 per_path: dict[str, tuple[int, str]] | None = None) -> None:
        self.app = app
        self.default = (max_bytes, "MAX_UPLOAD_BYTES")
        self.per_path = per_path or {}

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = _Limit(*self.per_path.get(scope.get("path", ""), self.default))
        await limit.guard(self.app, scope, receive, send)


class _Limit:
    """One request's limit: ``max_bytes``, and the setting (``variable``) that the 413's message names."""

    def __init__(self, max_bytes: int, variable: str) -> None:
        self.max_bytes = max_bytes
        self.variable = variable

    async def guard(self, app: Any, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._refuse(send, f"the request body is {declared} bytes")
                    return
        received = 0
        exceeded = False
        started = False

        async def counting_receive() -> MutableMapping[str, Any]:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise PayloadTooLargeError(self._message(f"the request body is over {self.max_bytes} bytes"))
            return message

        async def guarded_send(message: MutableMapping[str, Any]) -> None:
            nonlocal started
            if exceeded:
                return  # the 413 goes out instead
            started = True
            await send(message)

        try:
            await app(scope, counting_receive, guarded_send)
        except Exception:
            if not exceeded or started:
                raise
        if exceeded and not started:
            await self._refuse(send, f"the request body is over {self.max_bytes} bytes")

    def _message(self, what: str) -> str:
        return f"{what}; the limit is {self.variable}={self.max_bytes}"

    async def _refuse(self, send: Any, what: str) -> None:
        body = json.dumps(error_body(PayloadTooLargeError.code, self._message(what))).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


#: routes that may download a URL on the request's time: the seed API's /train (its CSV) and /infer (its image),
#: and predict-object (an http(s) or bucket URI); predict only with a JSON body ({"urls"})
_FETCHING = re.compile(r"^/(train|infer)$|^/v1/models/[^/]+/predict-object$")
_PREDICT = re.compile(r"^/v1/models/[^/]+/predict$")


def may_fetch(scope: MutableMapping[str, Any]) -> bool:
    """Whether a request may download URLs while it is served."""
    if scope.get("type") != "http" or scope.get("method") != "POST":
        return False
    path = scope.get("path", "")
    if _FETCHING.match(path):
        return True
    if _PREDICT.match(path):
        for name, value in scope.get("headers", ()):
            if name == b"content-type":
                media = bytes(value).split(b";", 1)[0].strip().lower()
                return media == b"application/json" or media.endswith(b"+json")
    return False


class FetchSlots:
    """Serve at most ``slots`` requests that download URLs (:func:`may_fetch`) at a time.

    Route code runs its blocking work in the server's one shared thread pool; a download that
    crawls (up to HTTP_TIMEOUT) holds a thread all along. Waiting here, before the route runs,
    holds none, so downloads can take at most ``slots`` threads and the rest stay free for
    every other request (predictions of uploaded images, jobs, health). A request that waits
    ``wait_s`` without a slot is answered 503 (``busy``, with Retry-After).
    """

    def __init__(self, app: Callable[..., Awaitable[None]], slots: int, wait_s: float) -> None:
        self.app = app
        self.slots = slots
        self.wait_s = wait_s
        self._semaphores: dict[asyncio.AbstractEventLoop, anyio.Semaphore] = {}

    def _semaphore(self) -> anyio.Semaphore:
        loop = asyncio.get_running_loop()
        semaphore = self._semaphores.get(loop)
        if semaphore is None:  # one per event loop (tests start several); forget closed loops
            self._semaphores = {known: s for known, s in self._semaphores.items() if not known.is_closed()}
            semaphore = self._semaphores[loop] = anyio.Semaphore(self.slots)
        return semaphore

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if not may_fetch(scope):
            await self.app(scope, receive, send)
            return
        semaphore = self._semaphore()
        acquired = False
        with anyio.move_on_after(self.wait_s):
            await semaphore.acquire()
            acquired = True
        if not acquired:
            await self._refuse(send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            semaphore.release()

    async def _refuse(self, send: Any) -> None:
        message = (f"the server is busy downloading for other requests ({self.slots} at a time, FETCH_REQUEST_SLOTS) "
                   f"and this one waited {self.wait_s:g} s for its turn; retry in a moment")
        body = json.dumps(error_body(BUSY, message)).encode()
        await send({"type": "http.response.start", "status": 503,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"retry-after", str(RETRY_AFTER_S).encode())]})
        await send({"type": "http.response.body", "body": body})
