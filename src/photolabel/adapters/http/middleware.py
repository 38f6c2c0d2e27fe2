"""ASGI middleware of the service: :class:`BodySizeLimit`, which refuses request bodies over a size."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from photolabel.adapters.http.errors import PayloadTooLargeError, error_body


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
        body = json.dumps(error_body("too_large", self._message(what))).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
