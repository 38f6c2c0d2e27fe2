"""Errors of the service: the HTTP-only refusals, the one table mapping every error to a status, and the
exception handlers that answer ``{"error": {"code", "message"}}``.

Route modules raise exceptions (library ones or the :class:`ApiError` family below); they never
build error responses themselves. :func:`install_error_handlers` turns every failure into its status.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from photolabel.adapters.http.batching import QueueFullError
from photolabel.backbones.efficientnet import BackboneUnavailableError
from photolabel.errors import (
    ConfigError,
    DataError,
    FetchError,
    FetchTooLargeError,
    HashMismatchError,
    ImageError,
    ImageTooLargeError,
    MissingDependencyError,
    ModelError,
    NotAnImageError,
    OutputError,
    PhotolabelError,
    SourceNotFoundError,
)

logger = logging.getLogger("photolabel.http")

RETRY_AFTER_S = 1


class ApiError(PhotolabelError):
    """A refusal that only exists in the HTTP adapter; it carries its status."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class BadJsonError(ApiError):
    status, code = 400, "bad_json"


class NotFoundError(ApiError, LookupError):
    status, code = 404, "not_found"


class ModelNotReadyError(ApiError):
    status, code = 409, "model_not_ready"


class PayloadTooLargeError(ApiError):
    status, code = 413, "too_large"


class UnsupportedMediaTypeError(ApiError):
    status, code = 415, "unsupported_media_type"


class InvalidRequestError(ApiError):
    status, code = 422, "invalid_request"


class Sha1MismatchError(HashMismatchError):
    """The CSV fetched for ``POST /train`` does not have the sha1 the request announced."""

    code = "sha1_mismatch"


#: most specific first; the first class an error is an instance of gives its status
ERROR_STATUS: tuple[tuple[type[PhotolabelError], int], ...] = (
    (QueueFullError, 503),
    (ImageTooLargeError, 413),
    (FetchTooLargeError, 413),
    (NotAnImageError, 415),
    (ImageError, 422),
    (HashMismatchError, 400),
    (FetchError, 422),
    (SourceNotFoundError, 404),
    (ConfigError, 422),  # UnknownNameError included
    (MissingDependencyError, 422),  # a storage protocol this server has no package for
    (DataError, 422),
    (BackboneUnavailableError, 500),
    (ModelError, 500),  # a model the registry lists but cannot be loaded: our fault, not the client's
    (OutputError, 500),
)
_STATUS_BY_CODE = {cls.code: status for cls, status in reversed(ERROR_STATUS)}


def status_of(error: PhotolabelError | str) -> int:
    """The HTTP status of an error, or of an error code (as in a :class:`BadInput`). Default 422."""
    if isinstance(error, str):
        return _STATUS_BY_CODE.get(error, 422)
    if isinstance(error, ApiError):
        return error.status
    for cls, status in ERROR_STATUS:
        if isinstance(error, cls):
            return status
    return 422


def error_body(code: str, message: str) -> dict[str, Any]:
    """The JSON body of every error answer."""
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """An error answer; a 503 also says when to retry (``Retry-After``)."""
    if status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_S), **(headers or {})}
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def _describe_validation(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path", "form")]
        parts.append(f"{'.'.join(location) or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    """Map every failure to ``{"error": {"code", "message"}}`` with its status, in one place."""

    @app.exception_handler(PhotolabelError)
    async def photolabel_error(request: Request, exc: PhotolabelError) -> JSONResponse:
        status = status_of(exc)
        if status >= 500:
            logger.error("%s %s: %s", request.method, request.url.path, exc)
        return error_response(status, exc.code, str(exc))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        if any(error.get("type") == "json_invalid" for error in errors):
            detail = "; ".join(str(error.get("ctx", {}).get("error", error.get("msg"))) for error in errors)
            return error_response(400, "bad_json", f"the body is not valid JSON ({detail})")
        return error_response(422, "invalid_request", _describe_validation(errors))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        if exc.status_code == 404:
            detail = exc.detail if exc.detail not in (None, "Not Found") else "no such route or file"
            code, message = "not_found", f"{request.method} {path}: {detail}"
        elif exc.status_code == 405:
            code, message = "method_not_allowed", f"{request.method} is not allowed on {path}"
        elif exc.status_code == 400:  # FastAPI could not parse the body (bad encoding, nesting too deep)
            code, message = "bad_json", f"the body is not valid JSON ({exc.detail})"
        else:
            code, message = f"http_{exc.status_code}", str(exc.detail)
        return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("internal error on %s %s: %s", request.method, request.url.path, exc)
        return error_response(500, "internal", "internal error; the server log has the details")
