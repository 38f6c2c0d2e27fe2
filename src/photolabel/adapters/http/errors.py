"""Errors of the service: the HTTP-only refusals, the one table mapping every error to a status, and the
exception handlers that answer ``{"error": {"code", "message"}}``.

Route modules raise exceptions (library ones or the :class:`ApiError` family below); they never
build error responses themselves. :func:`install_error_handlers` turns every failure into its status.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from photolabel.adapters.http.batching import DeadlineExceededError, DecoderUnavailableError, QueueFullError
from photolabel.backbones.efficientnet import BackboneUnavailableError
from photolabel.errors import (
    ArchiveTooLargeError,
    ConfigError,
    CsvLimitError,
    DataError,
    FetchError,
    FetchTooLargeError,
    HashMismatchError,
    ImageError,
    ImageTooLargeError,
    InsufficientStorageError,
    MissingDependencyError,
    ModelError,
    ModelIntegrityError,
    NotAnImageError,
    OutputError,
    PhotolabelError,
    SourceNotFoundError,
    UnsupportedSchemeError,
    UrlBlockedError,
)
from photolabel.fsutil import is_storage_full

logger = logging.getLogger("photolabel.http")

RETRY_AFTER_S = 1
STORAGE_FULL_MESSAGE = "the server has no storage space left to save this; try again later"


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


class BadMultipartError(ApiError):
    """A multipart/form-data body that cannot be parsed (no boundary, a broken part, too many parts)."""

    status, code = 400, "bad_multipart"


class BadBodyError(ApiError):
    """A body of another type (not JSON, not multipart) that cannot be parsed."""

    status, code = 400, "bad_request"


class NotFoundError(ApiError, LookupError):
    status, code = 404, "not_found"


class ModelNotReadyError(ApiError):
    status, code = 409, "model_not_ready"


class PayloadTooLargeError(ApiError):
    """A request body over MAX_UPLOAD_BYTES (MAX_TRAIN_UPLOAD_BYTES for POST /v1/train)."""

    status, code = 413, "body_too_large"


class UnsupportedMediaTypeError(ApiError):
    status, code = 415, "unsupported_media_type"


class InvalidRequestError(ApiError):
    status, code = 422, "invalid_request"


class DrainingError(ApiError):
    """The service is stopping (SIGTERM): it finishes what it started and takes no new work."""

    status, code = 503, "draining"


class NotReadyError(ApiError):
    """GET /readyz: the database, the job runner or the backbone is not available."""

    status, code = 503, "not_ready"


class InsufficientStorageApiError(ApiError):
    """A request whose data could not be saved because the server's disk is full."""

    status, code = 507, "insufficient_storage"


class Sha1MismatchError(HashMismatchError):
    """The CSV fetched for ``POST /train`` does not have the sha1 the request announced."""

    code = "sha1_mismatch"


class BadCsvError(ApiError):
    """A CSV manifest refused when it arrives: empty, a header without rows, or a malformed row (named by line)."""

    status, code = 400, "bad_csv"


class BadIdempotencyKeyError(ApiError):
    """An ``Idempotency-Key`` header that is empty, too long, or not printable ASCII."""

    status, code = 400, "bad_idempotency_key"


class IdempotencyKeyReusedError(ApiError):
    """An ``Idempotency-Key`` sent again with another request than the one it first came with."""

    status, code = 422, "idempotency_key_reused"


#: most specific first; the first class an error is an instance of gives its status (docs/ERRORS.md lists the codes)
ERROR_STATUS: tuple[tuple[type[PhotolabelError], int], ...] = (
    (QueueFullError, 503),
    (DecoderUnavailableError, 503),
    (DeadlineExceededError, 504),  # an image too slow to decode, or its batch to run
    (ImageTooLargeError, 413),
    (FetchTooLargeError, 413),  # CsvTooLargeError included
    (ArchiveTooLargeError, 413),
    (CsvLimitError, 413),  # a manifest over MAX_CSV_ROWS or MAX_CSV_FIELD_BYTES
    (NotAnImageError, 415),  # UnsupportedFormatError included
    (ImageError, 422),
    (HashMismatchError, 400),
    (UrlBlockedError, 422),
    (UnsupportedSchemeError, 422),
    (FetchError, 422),
    (SourceNotFoundError, 404),
    (ConfigError, 422),  # UnknownNameError included
    (MissingDependencyError, 422),  # a storage protocol this server has no package for
    (DataError, 422),
    (BackboneUnavailableError, 500),
    # a stored model that fails its checks (edited, tampered, half-deleted) or cannot be loaded: the
    # request is fine, the model is not usable; a conflict with the state of the resource, not a 500
    (ModelIntegrityError, 409),
    (ModelError, 409),
    (InsufficientStorageError, 507),
    (OutputError, 500),
)


def _error_classes() -> list[type[PhotolabelError]]:
    """Every PhotolabelError class defined so far (subclasses of subclasses included)."""
    found: list[type[PhotolabelError]] = []
    pending: list[type[PhotolabelError]] = [PhotolabelError]
    while pending:
        cls = pending.pop()
        found.append(cls)
        pending.extend(cls.__subclasses__())
    return found


def _class_status(cls: type[PhotolabelError]) -> int:
    if issubclass(cls, ApiError):
        return cls.status
    for parent, status in ERROR_STATUS:
        if issubclass(cls, parent):
            return status
    return 422


def status_by_code() -> dict[str, int]:
    """``{code: status}`` for every error class defined (an error code in a job or a BadInput answers this)."""
    table: dict[str, int] = {}
    for cls in _error_classes():
        table.setdefault(cls.code, _class_status(cls))
    return table


def status_of(error: PhotolabelError | str) -> int:
    """The HTTP status of an error, or of an error code (as in a :class:`BadInput`). Default 422."""
    if isinstance(error, str):
        return status_by_code().get(error, 422)
    if isinstance(error, ApiError):
        return error.status
    if isinstance(error, OutputError) and is_storage_full(error):
        return 507
    for cls, status in ERROR_STATUS:
        if isinstance(error, cls):
            return status
    return 422


def error_code(error: PhotolabelError) -> str:
    """The code an error answers with (an OutputError caused by a full disk is ``insufficient_storage``)."""
    if isinstance(error, OutputError) and not isinstance(error, InsufficientStorageError) and is_storage_full(error):
        return InsufficientStorageError.code
    return error.code


def server_roots(request: Request) -> list[tuple[str, str]]:
    """``(folder, the name clients see for it)`` of the server's own folders, for :func:`hide_paths`."""
    roots: list[tuple[str, str]] = []
    service = getattr(request.app.state, "service", None)
    settings = getattr(service, "settings", None)
    if settings is not None:
        roots += [(str(settings.data_dir), "DATA_DIR"), (str(settings.storage_path), "STORAGE_ROOT")]
    cache_dir = getattr(service, "cache_dir", None)
    if cache_dir is not None:
        roots.append((str(cache_dir), "PHOTOLABEL_CACHE_DIR"))
    roots.append((tempfile.gettempdir(), "TMPDIR"))
    return roots


def hide_paths(message: str, roots: list[tuple[str, str]]) -> str:
    """``message`` with the server's folders named by their setting (``DATA_DIR/models/...``), never by path."""
    spelled: list[tuple[str, str]] = []
    for folder, name in roots:
        for form in {folder, os.path.abspath(folder), os.path.realpath(folder)}:
            form = form.rstrip("/")
            if len(form) > 1:
                spelled.append((form, name))
    for form, name in sorted(spelled, key=lambda pair: len(pair[0]), reverse=True):
        # a whole path: "/srv/data/x", not "/srv/database" nor the path of a URL ("http://host/srv/data")
        message = re.sub(r"(?<![\w.:/-])" + re.escape(form) + r"(?=$|[^\w.-])", name, message)
    return message


def public_message(error: PhotolabelError, request: Request) -> str:
    """What a client reads of ``error``: a model's problem named inside the model (no server path), any
    other message with the server's folders named by their settings."""
    if isinstance(error, ModelError) and error.detail:
        prefix = "the model's files fail their checks" if isinstance(error, ModelIntegrityError) else "the model"
        message = f"{prefix}: {error.detail}"
    elif error_code(error) == InsufficientStorageError.code:
        message = STORAGE_FULL_MESSAGE
    else:
        message = str(error)
    return hide_paths(message, server_roots(request))


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
        if status >= 500 or isinstance(exc, ModelError):
            logger.error("%s %s: %s", request.method, request.url.path, exc)
        return error_response(status, error_code(exc), public_message(exc, request))

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
        elif exc.status_code == 400 and is_storage_full(exc):  # the body was spooled to a full disk
            logger.error("%s %s: out of storage space: %s", request.method, path, exc.__cause__)
            return error_response(InsufficientStorageApiError.status, InsufficientStorageApiError.code,
                                  STORAGE_FULL_MESSAGE)
        elif exc.status_code == 400:  # the body could not be parsed: say as what
            kind = _body_kind(request)
            if kind == "multipart":
                code, message = BadMultipartError.code, f"the multipart/form-data body cannot be parsed ({exc.detail})"
            elif kind == "json":
                code, message = BadJsonError.code, f"the body is not valid JSON ({exc.detail})"
            else:
                code, message = BadBodyError.code, f"the body cannot be parsed ({exc.detail})"
        else:
            code, message = f"http_{exc.status_code}", str(exc.detail)
        return error_response(exc.status_code, code, message, headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        if is_storage_full(exc):  # a write of the request's data (an upload, a CSV) found the disk full
            logger.error("%s %s: out of storage space: %s", request.method, request.url.path, exc)
            return error_response(InsufficientStorageApiError.status, InsufficientStorageApiError.code,
                                  STORAGE_FULL_MESSAGE)
        logger.exception("internal error on %s %s: %s", request.method, request.url.path, exc)
        return error_response(500, "internal", "internal error; the server log has the details")


def _body_kind(request: Request) -> str:
    """"multipart", "json" or "other", from the request's Content-Type."""
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media_type.startswith("multipart/") or media_type == "application/x-www-form-urlencoded":
        return "multipart"
    if media_type in ("", "application/json") or media_type.endswith("+json"):
        return "json"
    return "other"
