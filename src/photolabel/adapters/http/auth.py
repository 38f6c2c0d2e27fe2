"""Who may change the service: the bearer token, one rule for every route, and the loopback check of ``serve``.

With a token configured (API_TOKEN or API_TOKEN_FILE), :class:`BearerAuth` asks every request that
changes something for ``Authorization: Bearer <token>``: every POST, PUT, PATCH and DELETE except the
predictions (which ask for it only with PREDICT_REQUIRES_TOKEN). Reading stays open: the page,
``/livez``, ``/readyz``, the docs, and GETs of models and jobs. The rule is keyed on method and path,
here, so a new route is covered without a line of its own (a new kind of change is tokened by default).
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import re
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import FastAPI

from photolabel.adapters.http.errors import error_body

#: methods that only read; they never need the token
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: the prediction routes, open unless PREDICT_REQUIRES_TOKEN (matches both paths and OpenAPI templates)
_PREDICTION = re.compile(r"^/infer$|^/v1/models/[^/]+/(predict|predict-object)$")
UNAUTHORIZED = "unauthorized"
SCHEME_NAME = "bearerAuth"


def needs_token(method: str, path: str, *, predict_requires_token: bool) -> bool:
    """Whether ``method path`` needs the token when one is configured."""
    if method.upper() in READ_METHODS:
        return False
    if _PREDICTION.match(path):
        return predict_requires_token
    return True


def is_loopback_host(host: str) -> bool:
    """Whether binding ``host`` listens only on this machine (127.0.0.0/8, ::1, localhost).

    A name is resolved; it counts as loopback only when every address it resolves to is.
    An empty host, ``0.0.0.0`` and ``::`` listen everywhere.
    """
    text = host.strip().strip("[]")
    if not text:
        return False
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(text, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    addresses = {ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos}
    return bool(addresses) and all(address.is_loopback for address in addresses)


class BearerAuth:
    """Pure ASGI: answer 401 (``unauthorized``, ``WWW-Authenticate: Bearer``) to a request that needs the token
    and does not carry it. The token is compared in constant time; the body of a refused request is never read."""

    def __init__(self, app: Callable[..., Awaitable[None]], token: str, predict_requires_token: bool = False) -> None:
        self.app = app
        self.token = token.encode()
        self.predict_requires_token = predict_requires_token

    async def __call__(self, scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not needs_token(scope.get("method", "GET"), scope.get("path", ""),
                                                      predict_requires_token=self.predict_requires_token):
            await self.app(scope, receive, send)
            return
        sent = _bearer(scope)
        if sent is not None and hmac.compare_digest(sent, self.token):
            await self.app(scope, receive, send)
            return
        what = f"{scope.get('method')} {scope.get('path')}"
        if sent is None:
            message = (f"{what} needs the service's token: send the header 'Authorization: Bearer <token>' "
                       "with the token the server was started with (API_TOKEN or API_TOKEN_FILE)")
            challenge = b'Bearer realm="photolabel"'
        else:
            message = f"{what}: the bearer token is not the service's token (API_TOKEN or API_TOKEN_FILE)"
            challenge = b'Bearer realm="photolabel", error="invalid_token"'
        body = json.dumps(error_body(UNAUTHORIZED, message)).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", challenge),
                                # the body (an upload, perhaps) is not read: end the connection after the answer
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _bearer(scope: MutableMapping[str, Any]) -> bytes | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = bytes(value).strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


def document_bearer_auth(app: FastAPI, *, predict_requires_token: bool) -> None:
    """Declare the bearer scheme in the app's OpenAPI document, on the operations that need the token."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        components = schema.setdefault("components", {})
        components.setdefault("securitySchemes", {})[SCHEME_NAME] = {
            "type": "http", "scheme": "bearer",
            "description": "The token the server was started with (API_TOKEN or API_TOKEN_FILE).",
        }
        error_schema: dict[str, Any] = (
            {"$ref": "#/components/schemas/ErrorResponse"} if "ErrorResponse" in components.get("schemas", {})
            else {"type": "object"}
        )
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                if not isinstance(operation, dict) or method.upper() in READ_METHODS:
                    continue
                if needs_token(method, path, predict_requires_token=predict_requires_token):
                    operation["security"] = [{SCHEME_NAME: []}]
                    operation.setdefault("responses", {})["401"] = {
                        "description": "No token, or not the service's (`unauthorized`).",
                        "content": {"application/json": {"schema": error_schema}},
                    }
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
