"""The FastAPI app of ``photolabel serve``: a thin layer over the library, the job registry and the runner.

Two APIs share one process:

* seed 002's ``POST /train`` and ``POST /infer``, with the seed's exact request and
  response shapes;
* the native ``/v1`` API: archive or CSV uploads, jobs, models, batch predictions.

Training runs in child processes (:mod:`.jobs`); predictions go through one
:class:`~.batching.MicroBatcher` per loaded model, so concurrent requests share a
backbone run and the event loop never waits on a model. Errors are mapped in one
place (:func:`status_of`) and always answer ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, File, Form, Query, Request, UploadFile
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from starlette.concurrency import run_in_threadpool

from photolabel import __version__
from photolabel.adapters.http.batching import PredictorCache, QueueFullError
from photolabel.adapters.http.jobs import TRAIN_KIND, JobRunner, TrainSpec
from photolabel.adapters.http.settings import ServiceSettings
from photolabel.adapters.http.store import Job, ModelRecord, Registry
from photolabel.archives import ARCHIVE_SUFFIXES
from photolabel.artifact import read_model_dir
from photolabel.backbones import check_backbone_name, get_backbone
from photolabel.backbones.efficientnet import BackboneUnavailableError
from photolabel.cache import resolve_cache_dir
from photolabel.dataset import BadInput, parse_label_list
from photolabel.embedding import ImageInput
from photolabel.errors import (
    DataError,
    FetchError,
    FetchTooLargeError,
    HashMismatchError,
    ImageError,
    ImageTooLargeError,
    ModelError,
    NotAnImageError,
    OutputError,
    PhotolabelError,
    SourceNotFoundError,
    UnknownNameError,
)
from photolabel.fetch import fetch_many, fetch_url
from photolabel.fsutil import atomic_write_bytes
from photolabel.hashing import canonical_json, sha1_bytes
from photolabel.heads import get_head_class
from photolabel.model import Model, Prediction
from photolabel.training import DEFAULT_BACKBONE, DEFAULT_HEAD

logger = logging.getLogger("photolabel.http")

STATIC_DIR = Path(__file__).parent / "static"
DB_NAME = "photolabel.sqlite3"
RETRY_AFTER_S = 1
_MAX_SEED = 2**32 - 1  # the heads' random_state range
_COPY_CHUNK = 1 << 20


# --- errors: the HTTP-only ones, and the one table that maps every error to a status ------------


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
    (UnknownNameError, 422),
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
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    if status == 503:
        headers = {"Retry-After": str(RETRY_AFTER_S), **(headers or {})}
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def _describe_validation(errors: list[dict[str, Any]]) -> str:
    parts = []
    for error in errors:
        location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query", "path", "form")]
        parts.append(f"{'.'.join(location) or 'body'}: {error.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _install_error_handlers(app: FastAPI) -> None:
    """Map every failure to ``{"error": {"code", "message"}}`` with its status, in one place."""
    from starlette.exceptions import HTTPException as StarletteHTTPException

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


# --- the service: what the routes share -----------------------------------------------------------


@dataclass
class Service:
    settings: ServiceSettings
    registry: Registry
    runner: JobRunner
    predictors: PredictorCache
    cache_dir: Path
    backbone_ready: bool = False
    model_docs: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def uploads(self) -> Path:
        return self.settings.data_dir / "uploads"

    def model_doc(self, record: ModelRecord) -> dict[str, Any]:
        """model.json, metrics and the lineage summary of a model (read once; models never change)."""
        doc = self.model_docs.get(record.model_id)
        if doc is None:
            files = read_model_dir(record.path, verify=False)
            lineage = {key: value for key, value in files.lineage.items() if key != "images"}
            lineage["n_images"] = len(files.lineage.get("images", []))
            doc = {"model": files.model, "metrics": files.metrics, "lineage": lineage}
            self.model_docs[record.model_id] = doc
        return doc

    def check_backbone(self) -> None:
        """Load the default backbone and embed one blank image (exports it to ONNX the first time)."""
        backbone = get_backbone(DEFAULT_BACKBONE, threads=self.settings.threads, cache_dir=self.cache_dir)
        height, width = backbone.preprocessing.image_size
        blank = backbone.prepare(np.zeros((height, width, 3), dtype=np.uint8))
        backbone.embed_batch(np.stack([blank]))
        self.backbone_ready = True


def get_service(request: Request) -> Service:
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


def _resolve_model(service: Service, key: str) -> ModelRecord:
    """The model that ``key`` names (model id, job id / model_sha1, or a prefix of 8+ hex digits).

    Raises :class:`ModelNotReadyError` for a job that has no model (yet), and
    :class:`NotFoundError` when nothing matches.
    """
    record = service.registry.get_model(key)
    if record is not None:
        return record
    job = service.registry.get_job(key.strip().lower())
    if job is not None:
        if job.status == "error":
            raise ModelNotReadyError(f"job {job.job_id} failed, so it has no model: {job.error_code}: {job.error}; "
                                     f"POST /v1/jobs/{job.job_id}/retry trains it again")
        raise ModelNotReadyError(f"model {key} is not ready: its job is {job.status} "
                                 f"({job.stage}, {round(job.progress * 100)}%); ask again later")
    raise NotFoundError(f"no model {key!r} (or several share that prefix); GET /v1/models lists them")


# --- request and response models (they make /api/doc useful) -------------------------------------


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable reason, e.g. `not_an_image`, `queue_full`.")
    message: str = Field(description="One line saying what was received and what to do.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Malformed JSON (`bad_json`) or a hash mismatch (`sha1_mismatch`).",
        404: "Unknown model or job.",
        409: "The model's job has not finished (`model_not_ready`).",
        413: "Body or image over MAX_UPLOAD_BYTES or MAX_IMAGE_PIXELS (`too_large`, `image_too_large`).",
        415: "Not an image (`not_an_image`).",
        422: "Invalid field, undecodable image (`bad_image`) or unreachable URL (`fetch_failed`).",
        503: "Inference queue full (`queue_full`); retry after the Retry-After header's seconds.",
    }.items()
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: _ERRORS[status] for status in statuses}


_SHA1_PATTERN = r"^[0-9a-fA-F]{40}$"
_KEY_PATTERN = r"^[0-9a-fA-F]{8,64}$"

_SEED_TRAIN_EXAMPLE = {
    "metadata": {"random_seed": 1234},
    "model": {"uri": "gs://test/1"},
    "csv": {
        "url": "https://raw.githubusercontent.com/allenday/static-transfer-learning/master/example-data/train-tiny.csv",
        "sha1": "9abcd53b4bdd2f20cbf6f3ad3b17ee05b58c0fc9",
    },
}
_SEED_INFER_EXAMPLE = {
    "model": {"uri": "gs://static-transfer-learning/my-model", "sha1": "8c2b21181abce83bf795363306a545cf1e0353fd"},
    "image": {
        "url": "https://raw.githubusercontent.com/allenday/static-transfer-learning/master/example-data/sweater/1042.jpg"
    },
}


class TrainMetadata(BaseModel):
    random_seed: int | None = Field(None, ge=0, le=_MAX_SEED,
                                    description="Seed of the validation split and the head (default RANDOM_SEED).")


class CsvRef(BaseModel):
    url: str = Field(description="http(s) URL of a CSV of `image_url,label[,sha1]` rows.", max_length=4096)
    sha1: str = Field(pattern=_SHA1_PATTERN, description="sha1 of the CSV file's bytes; checked after download.")


class ModelUri(BaseModel):
    uri: str = Field("", max_length=4096, description="Where the seed would store the model; recorded only.")


class TrainRequest(BaseModel):
    """Seed 002's training request."""

    model_config = ConfigDict(json_schema_extra={"examples": [_SEED_TRAIN_EXAMPLE]})

    metadata: TrainMetadata = Field(default_factory=TrainMetadata)
    csv: CsvRef
    model: ModelUri = Field(default_factory=ModelUri)


class TrainStatus(BaseModel):
    """Seed 002's answer: the model's id, and where its training stands."""

    model_config = ConfigDict(json_schema_extra={
        "examples": [{"model_sha1": "9474ef2130cf215dd9892decba8e0d973fc2f003", "status": "new"}]})

    model_sha1: str = Field(description="sha1 of the CSV's sha1 and the training parameters; the model's key.")
    status: Literal["new", "in_progress", "ready", "error"]
    error: ErrorDetail | None = Field(None, description="Only when status is `error`.")


class InferModelRef(BaseModel):
    uri: str = Field("", max_length=4096, description="The seed's model URI; not used (models are local).")
    sha1: str = Field(pattern=_KEY_PATTERN, description="`model_sha1` from /train (or a model id).")


class InferImageRef(BaseModel):
    url: str = Field(validation_alias=AliasChoices("url", "uri"), max_length=4096,
                     description="http(s) URL of the image (the seed's docs also call it `uri`).")


class InferRequest(BaseModel):
    """Seed 002's inference request."""

    model_config = ConfigDict(json_schema_extra={"examples": [_SEED_INFER_EXAMPLE]})

    model: InferModelRef
    image: InferImageRef


class JobCreated(BaseModel):
    job_id: str
    model_sha1: str = Field(description="The same as job_id (seed 002's name for it).")
    status: Literal["queued", "in_progress", "ready", "error"]
    model_id: str | None = None


class JobView(BaseModel):
    job_id: str
    model_sha1: str
    kind: str
    status: Literal["queued", "in_progress", "ready", "error"]
    stage: str
    progress: float = Field(description="Fraction done, 0 to 1.")
    error: ErrorDetail | None
    model_id: str | None
    attempts: int
    created_at: str
    updated_at: str


class JobList(BaseModel):
    jobs: list[JobView]


class ModelSummary(BaseModel):
    model_id: str
    job_id: str | None
    labels: list[str]
    backbone: str
    head: str
    uri: str | None
    created_at: str
    validation_accuracy: float | None = Field(description="Accuracy on the validation split, if it had one.")


class ModelList(BaseModel):
    models: list[ModelSummary]


class ModelDetails(BaseModel):
    model_id: str
    job_id: str | None
    uri: str | None
    created_at: str
    labels: list[str]
    backbone: dict[str, Any] = Field(description="name, hash, embedding size and preprocessing.")
    head: dict[str, Any]
    config: dict[str, Any]
    manifest_sha256: str | None
    metrics: dict[str, Any] = Field(description="training and validation: accuracy, per-class precision/recall/F1, "
                                                "confusion_matrix (rows true, columns predicted).")
    lineage: dict[str, Any] = Field(description="manifest hash, split rule, counts; `n_images` instead of the list.")
    photolabel_version: str | None = None


class ImagePrediction(BaseModel):
    image: str
    sha256: str
    label: str
    scores: dict[str, float]


class ImageFailure(BaseModel):
    image: str
    error: ErrorDetail


class PredictResponse(BaseModel):
    model_id: str
    predictions: list[ImagePrediction | ImageFailure]


class PredictUrls(BaseModel):
    urls: list[Annotated[str, Field(max_length=4096)]] = Field(min_length=1)


_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,221}$")


class ObjectRef(BaseModel):
    """Seed 004's cloud-function body ``{bucket, filename}``, or ``{uri}`` for an fsspec URL."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"bucket": "cmpsc445-uploads", "filename": "3001-BBA14BB7-DA8A-4BCD-BF88-0F4CEA5C1ADC.jpeg"},
        {"uri": "gs://my-bucket/photos/1042.jpg"},
    ]})

    bucket: str | None = Field(None, description="A folder directly under STORAGE_ROOT.")
    filename: str | None = Field(None, max_length=1024, description="Path of the object inside the bucket.")
    uri: str | None = Field(None, max_length=4096,
                            description="fsspec URL (gs://, s3://, az://, memory://) or http(s) URL; needs fsspec.")

    @field_validator("bucket")
    @classmethod
    def _plain_bucket(cls, value: str | None) -> str | None:
        if value is not None and (not _BUCKET.match(value) or ".." in value):
            raise ValueError("a bucket is one folder name: letters, digits, '.', '_', '-', no '..'")
        return value

    @field_validator("filename")
    @classmethod
    def _relative_filename(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if (not value or "\\" in value or "\x00" in value or value.startswith("/")
                or any(part in (".", "..") for part in value.split("/"))):
            raise ValueError("must be a relative path inside the bucket, without '..', '.', '\\' or a leading '/'")
        return value

    @model_validator(mode="after")
    def _one_form(self) -> ObjectRef:
        has_object = self.bucket is not None or self.filename is not None
        if self.uri is not None and has_object:
            raise ValueError("give either bucket and filename, or uri, not both")
        if self.uri is None and (self.bucket is None or self.filename is None):
            raise ValueError("give bucket and filename (an object under STORAGE_ROOT), or uri")
        return self


# --- helpers shared by the routes --------------------------------------------------------------


def seed_model_sha1(csv_sha1: str, random_seed: int, backbone: str, head: str, valid_fraction: float) -> str:
    """The seed API's ``model_sha1``: it depends only on the CSV's content and the training parameters."""
    params = {"csv_sha1": csv_sha1.lower(), "random_seed": random_seed, "backbone": backbone, "head": head,
              "valid_fraction": valid_fraction}
    return hashlib.sha1(canonical_json(params)).hexdigest()


def upload_job_id(upload_sha256: str, spec: TrainSpec) -> str:
    """``/v1/train``'s job id: sha1 over the upload's sha256 and every parameter that changes the model."""
    params = {"upload_sha256": upload_sha256, "seed": spec.seed, "backbone": spec.backbone, "head": spec.head,
              "valid_fraction": spec.valid_fraction, "classes": spec.classes, "skip_bad": spec.skip_bad}
    return hashlib.sha1(canonical_json(params)).hexdigest()


def _seed_status(job: Job) -> dict[str, Any]:
    status = {"queued": "in_progress", "in_progress": "in_progress"}.get(job.status, job.status)
    answer: dict[str, Any] = {"model_sha1": job.job_id, "status": status}
    if job.status == "error":
        answer["error"] = {"code": job.error_code or "error", "message": job.error or ""}
    return answer


def _fetch(url: str, service: Service) -> bytes:
    return fetch_url(url, service.settings.fetch_options())


def _prediction_entry(result: Prediction | BadInput) -> dict[str, Any]:
    if isinstance(result, BadInput):
        return {"image": result.source, "error": {"code": result.code, "message": result.message}}
    return {"image": result.image, "sha256": result.sha256, "label": result.label, "scores": result.scores}


def _raise_for_bad_input(bad: BadInput) -> None:
    entry = _prediction_entry(bad)["error"]
    raise ApiError(entry["message"], code=entry["code"], status=status_of(bad.code))


async def _predict_items(service: Service, record: ModelRecord,
                         items: list[ImageInput | BadInput]) -> list[Prediction | BadInput]:
    """Run the live items through the model's batcher; BadInputs pass through in place."""
    live = [item for item in items if isinstance(item, ImageInput)]
    answers: list[Prediction | BadInput] = []
    if live:
        batcher = await service.predictors.get(record.model_id, record.path)
        answers = await batcher.predict_many(live)
    results = iter(answers)
    return [item if isinstance(item, BadInput) else next(results) for item in items]


def _save_upload(source: IO[bytes], folder: Path, suffix: str, max_bytes: int) -> tuple[Path, str, int]:
    """Copy an upload into ``folder/<sha256><suffix>`` (atomically); returns (path, sha256, size)."""
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    handle, temp = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            while chunk := source.read(_COPY_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLargeError(f"the upload is over the limit of {max_bytes} bytes")
                digest.update(chunk)
                out.write(chunk)
        target = folder / f"{digest.hexdigest()}{suffix}"
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target, digest.hexdigest(), size


def _upload_suffix(filename: str) -> str:
    name = filename.lower()
    for suffix in (*ARCHIVE_SUFFIXES, ".csv"):
        if name.endswith(suffix):
            return suffix
    raise InvalidRequestError(
        f"data: {filename or 'the upload'} is not a data set; upload a {', '.join(ARCHIVE_SUFFIXES)} archive "
        "of label folders, or a .csv of image_url,label[,sha1] rows", code="bad_upload")


def _split_classes(text: str | None) -> list[str] | None:
    try:
        names = parse_label_list(text)
    except DataError as exc:
        raise InvalidRequestError(str(exc)) from None
    return list(names) if names else None


def _check_names(backbone: str, head: str) -> None:
    check_backbone_name(backbone)
    get_head_class(head)


# --- seed 002 ---------------------------------------------------------------------------------------

seed_router = APIRouter(tags=["seed 002"])


@seed_router.post("/train", response_model=TrainStatus, response_model_exclude_none=True,
                  responses=_errors(400, 413, 422),
                  summary="Train a model on a CSV of image URLs (seed 002)")
async def train_from_csv(body: TrainRequest, service: ServiceDep) -> dict[str, Any]:
    """Start training, or report on it. Repeat the same request to follow it:
    `new` → `in_progress` → `ready` (or `error`). The CSV is fetched only the first time;
    its sha1 must match `csv.sha1`, and its rows may only be http(s) URLs."""
    settings = service.settings
    seed = body.metadata.random_seed if body.metadata.random_seed is not None else settings.random_seed
    csv_sha1 = body.csv.sha1.lower()
    model_sha1 = seed_model_sha1(csv_sha1, seed, DEFAULT_BACKBONE, DEFAULT_HEAD, settings.valid_fraction)
    job = await run_in_threadpool(service.registry.get_job, model_sha1)
    if job is not None:
        return _seed_status(job)
    data = await run_in_threadpool(_fetch, body.csv.url, service)
    found = sha1_bytes(data)
    if found != csv_sha1:
        raise Sha1MismatchError(f"csv.url {body.csv.url}: the file's sha1 is {found}, but the request says "
                                f"{csv_sha1}; fix csv.sha1 or the file")
    path = service.uploads / f"{csv_sha1}.csv"
    spec = TrainSpec(data=str(path), urls_only=body.csv.url, seed=seed, backbone=DEFAULT_BACKBONE,
                     head=DEFAULT_HEAD, valid_fraction=settings.valid_fraction, classes=None,
                     model_uri=body.model.uri or None, skip_bad=False)

    def save_and_create() -> tuple[Job, bool]:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        return service.registry.create_job(model_sha1, TRAIN_KIND, asdict(spec))

    job, created = await run_in_threadpool(save_and_create)
    if not created:
        return _seed_status(job)
    service.runner.submit(model_sha1)
    logger.info("job %s: queued from %s", model_sha1, body.csv.url)
    return {"model_sha1": model_sha1, "status": "new"}


@seed_router.post("/infer", response_model=dict[str, float], responses=_errors(404, 409, 413, 415, 422, 503),
                  summary="Label one image by URL (seed 002)")
async def infer(body: InferRequest, service: ServiceDep) -> dict[str, float]:
    """Every label's probability for the image at `image.url`, e.g.
    `{"blouse": 0.02, "halter": 0.01, "sweater": 0.97}`."""
    record = await run_in_threadpool(_resolve_model, service, body.model.sha1)
    data = await run_in_threadpool(_fetch, body.image.url, service)
    (result,) = await _predict_items(service, record, [ImageInput(source=body.image.url, data=data)])
    if isinstance(result, BadInput):
        _raise_for_bad_input(result)
    assert isinstance(result, Prediction)
    return dict(result.scores)


# --- /v1: training and jobs ----------------------------------------------------------------------

v1 = APIRouter(prefix="/v1")


@v1.post("/train", status_code=202, response_model=JobCreated, response_model_exclude_none=True,
         responses={200: {"model": JobCreated, "description": "The same upload and parameters: the existing job."},
                    **_errors(413, 422)},
         tags=["training"], summary="Train a model on an uploaded archive or CSV")
async def train_upload(
    service: ServiceDep,
    response: Response,
    data: Annotated[UploadFile, File(description="A .tar.gz/.tgz/.tar/.zip archive of one folder per label "
                                                 "(or train/ and valid/), or a .csv of image_url,label[,sha1].")],
    seed: Annotated[int | None, Form(ge=0, le=_MAX_SEED, description="Default RANDOM_SEED.")] = None,
    backbone: Annotated[str, Form(description="See `photolabel backbones`.")] = DEFAULT_BACKBONE,
    head: Annotated[str, Form(description="See `photolabel heads`.")] = DEFAULT_HEAD,
    valid_fraction: Annotated[float | None, Form(ge=0.0, lt=1.0,
                                                 description="Default 1 - TRAIN_PERCENTAGE.")] = None,
    classes: Annotated[str | None, Form(description="Labels in this order, space or comma separated.")] = None,
    skip_bad: Annotated[bool, Form(description="Skip unreadable images instead of failing.")] = False,
) -> dict[str, Any]:
    """Queue a training job (202), or find the job already made from the same bytes and parameters (200).
    Follow it with `GET /v1/jobs/{job_id}`."""
    settings = service.settings
    suffix = _upload_suffix(data.filename or "")
    _check_names(backbone, head)
    class_list = _split_classes(classes)
    path, sha256, size = await run_in_threadpool(_save_upload, data.file, service.uploads, suffix,
                                                 settings.max_train_upload_bytes)
    if size == 0:
        raise InvalidRequestError(f"data: {data.filename} is empty", code="bad_upload")
    spec = TrainSpec(
        data=str(path), urls_only="upload" if suffix == ".csv" else None,
        seed=settings.random_seed if seed is None else seed, backbone=backbone, head=head,
        valid_fraction=settings.valid_fraction if valid_fraction is None else valid_fraction,
        classes=class_list, model_uri=None, skip_bad=skip_bad,
    )
    job_id = upload_job_id(sha256, spec)
    job, created = await run_in_threadpool(service.registry.create_job, job_id, TRAIN_KIND, asdict(spec))
    if created:
        service.runner.submit(job_id)
        logger.info("job %s: queued from upload %s (%d bytes)", job_id, data.filename, size)
    else:
        response.status_code = 200
    return {"job_id": job.job_id, "model_sha1": job.job_id, "status": job.status, "model_id": job.model_id}


@v1.get("/jobs", response_model=JobList, tags=["training"], summary="The newest jobs")
def list_jobs(service: ServiceDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    return {"jobs": [job.to_dict() for job in service.registry.list_jobs(limit)]}


JobId = Annotated[str, PathParam(max_length=128, description="job_id (= model_sha1)")]


@v1.get("/jobs/{job_id}", response_model=JobView, responses=_errors(404), tags=["training"],
        summary="One job: status, stage, progress, error")
def get_job(job_id: JobId, service: ServiceDep) -> dict[str, Any]:
    job = service.registry.get_job(job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id!r}; GET /v1/jobs lists them")
    return job.to_dict()


@v1.post("/jobs/{job_id}/retry", response_model=JobView, responses=_errors(404), tags=["training"],
         summary="Queue a failed job again")
def retry_job(job_id: JobId, service: ServiceDep) -> dict[str, Any]:
    """A job in error goes back to the queue; a job in any other status is returned unchanged."""
    try:
        before = service.registry.get_job(job_id)
        if before is None:
            raise KeyError(job_id)
        job = service.registry.retry_job(job_id)
    except KeyError:
        raise NotFoundError(f"no job {job_id!r}; GET /v1/jobs lists them") from None
    if before.status == "error" and job.status == "queued":
        service.runner.submit(job_id)
    return job.to_dict()


# --- /v1: models ---------------------------------------------------------------------------------

ModelKey = Annotated[str, PathParam(max_length=128,
                                    description="Model id, job id (model_sha1) or a unique prefix of 8+ hex digits.")]


@v1.get("/models", response_model=ModelList, tags=["models"], summary="Every model")
def list_models(service: ServiceDep) -> dict[str, Any]:
    models = []
    for record in service.registry.list_models():
        try:
            validation = service.model_doc(record)["metrics"].get("validation") or {}
        except ModelError as exc:
            logger.warning("model %s: %s", record.model_id, exc)
            validation = {}
        summary = {key: value for key, value in record.to_dict().items() if key != "path"}
        models.append({**summary, "validation_accuracy": validation.get("accuracy")})
    return {"models": models}


@v1.get("/models/{key}", response_model=ModelDetails, responses=_errors(404, 409), tags=["models"],
        summary="Labels, backbone, head, config, metrics and lineage of a model")
def get_model(key: ModelKey, service: ServiceDep) -> dict[str, Any]:
    record = _resolve_model(service, key)
    doc = service.model_doc(record)
    model = doc["model"]
    return {
        "model_id": record.model_id, "job_id": record.job_id, "uri": record.uri, "created_at": record.created_at,
        "labels": model["labels"], "backbone": model["backbone"], "head": model["head"], "config": model["config"],
        "manifest_sha256": model.get("manifest_sha256"), "metrics": doc["metrics"], "lineage": doc["lineage"],
        "photolabel_version": model.get("photolabel_version"),
    }


@v1.delete("/models/{key}", status_code=204, responses=_errors(404, 409), tags=["models"],
           summary="Delete a model: its row, its directory and its loaded copy")
async def delete_model(key: ModelKey, service: ServiceDep) -> Response:
    """The job that trained it turns to `error` (`model_deleted`); retrying the job trains it again."""
    record = await run_in_threadpool(_resolve_model, service, key)
    await run_in_threadpool(service.registry.delete_model, record.model_id)
    service.predictors.evict(record.model_id)
    service.model_docs.pop(record.model_id, None)
    folder = Path(record.path).resolve()
    if folder.is_relative_to(service.settings.data_dir.resolve()):
        await run_in_threadpool(shutil.rmtree, folder, True)
    else:  # registered from elsewhere: forget it, but never delete files outside DATA_DIR
        logger.info("model %s: %s is outside DATA_DIR; files left in place", record.model_id, folder)
    return Response(status_code=204)


_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["images"], "properties": {
                    "images": {"type": "array", "items": {"type": "string", "format": "binary"}}}},
            },
            "application/json": {
                "schema": {"type": "object", "required": ["urls"], "properties": {
                    "urls": {"type": "array", "items": {"type": "string"}, "minItems": 1}}},
                "example": {"urls": ["https://raw.githubusercontent.com/allenday/static-transfer-learning/"
                                     "master/example-data/sweater/1042.jpg"]},
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@v1.post("/models/{key}/predict", response_model=PredictResponse, openapi_extra=_PREDICT_BODY,
         responses=_errors(400, 404, 409, 413, 415, 422, 503), tags=["models"],
         summary="Label images: multipart `images`, JSON `{urls}`, or one raw image body")
async def predict(key: ModelKey, request: Request, service: ServiceDep) -> dict[str, Any]:
    """One entry per image, in order: a prediction or an error. When the request carries
    exactly one image and it fails, the answer is that error's status (413, 415 or 422)."""
    record = await run_in_threadpool(_resolve_model, service, key)
    items = await _read_predict_body(request, service)
    results = await _predict_items(service, record, items)
    if len(results) == 1 and isinstance(results[0], BadInput):
        _raise_for_bad_input(results[0])
    return {"model_id": record.model_id, "predictions": [_prediction_entry(r) for r in results]}


async def _read_predict_body(request: Request, service: Service) -> list[ImageInput | BadInput]:
    settings = service.settings
    limit = settings.infer_max_queue
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    items: list[ImageInput | BadInput] = []
    if media_type == "multipart/form-data":
        form = await request.form(max_files=limit + 1, max_fields=limit + 16)
        try:
            uploads = form.getlist("images")
            if not uploads:
                raise InvalidRequestError("images: no file; send one or more files in the form field 'images'")
            for index, upload in enumerate(uploads):
                if isinstance(upload, str):
                    items.append(BadInput(f"images[{index}]", "a text field, not a file", "bad_image"))
                    continue
                items.append(ImageInput(source=upload.filename or f"images[{index}]", data=await upload.read()))
        finally:
            await form.close()
    elif media_type == "application/json" or media_type.endswith("+json"):
        try:
            document = json.loads(await request.body())
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise BadJsonError(f"the body is not valid JSON ({type(exc).__name__}: {exc})") from None
        try:
            urls = PredictUrls.model_validate(document).urls
        except ValidationError as exc:
            raise RequestValidationError(
                [dict(error, loc=("body", *error["loc"])) for error in exc.errors(include_url=False)]
            ) from None
        if len(urls) > limit:
            raise InvalidRequestError(f"urls: {len(urls)} URLs; at most {limit} per request (INFER_MAX_QUEUE)")
        bodies = await run_in_threadpool(fetch_many, urls, settings.fetch_options())
        for url, body in zip(urls, bodies):
            if isinstance(body, FetchError):
                items.append(BadInput(url, str(body), body.code))
            else:
                items.append(ImageInput(source=url, data=body))
    elif media_type.startswith("image/"):
        items.append(ImageInput(source="<body>", data=await request.body()))
    else:
        raise UnsupportedMediaTypeError(
            f"Content-Type {media_type or 'none'} is not accepted here; send multipart/form-data with 'images' "
            "files, application/json {\"urls\": [...]}, or one image with an image/* type")
    if len(items) > limit:
        raise InvalidRequestError(f"{len(items)} images; at most {limit} per request (INFER_MAX_QUEUE)")
    return items


# Object stores fsspec may read from. Local files go through {bucket, filename}, http(s) through our
# capped fetcher (which refuses private addresses); other protocols could reach the host or its network.
FSSPEC_PROTOCOLS = ("abfs", "abfss", "az", "gcs", "gs", "memory", "s3", "s3a")


@v1.post("/models/{key}/predict-object", response_model=PredictResponse,
         responses=_errors(404, 409, 413, 415, 422, 503), tags=["models"],
         summary="Label an image in storage: seed 004's {bucket, filename}, or an fsspec {uri}")
async def predict_object(key: ModelKey, body: ObjectRef, service: ServiceDep) -> dict[str, Any]:
    """`bucket` is a folder under STORAGE_ROOT and `filename` a relative path inside it. `uri`
    may be an http(s) URL or, when fsspec is installed, one of gs://, s3://, az://, memory://."""
    record = await run_in_threadpool(_resolve_model, service, key)
    if body.uri is not None:
        name = body.uri
        data = await run_in_threadpool(_read_uri, body.uri, service)
    else:
        assert body.bucket is not None and body.filename is not None
        name = f"{body.bucket}/{body.filename}"
        data = await run_in_threadpool(_read_bucket_object, service, body.bucket, body.filename)
    (result,) = await _predict_items(service, record, [ImageInput(source=name, data=data)])
    if isinstance(result, BadInput):
        _raise_for_bad_input(result)
    return {"model_id": record.model_id, "predictions": [_prediction_entry(result)]}


def _read_bucket_object(service: Service, bucket: str, filename: str) -> bytes:
    root = service.settings.storage_path.resolve()
    bucket_dir = (root / bucket).resolve()
    if not bucket_dir.is_relative_to(root) or bucket_dir == root:
        raise InvalidRequestError(f"bucket {bucket!r} is not a folder under STORAGE_ROOT", code="bad_path")
    if not bucket_dir.is_dir():
        raise NotFoundError(f"no bucket {bucket!r}")
    target = (bucket_dir / filename).resolve()
    if not target.is_relative_to(bucket_dir):  # a symbolic link that leads out of the bucket
        raise InvalidRequestError(f"{bucket}/{filename} leads outside the bucket", code="bad_path")
    if not target.is_file():
        raise NotFoundError(f"no object {filename!r} in bucket {bucket!r}")
    return _read_capped(target.open("rb"), f"{bucket}/{filename}", service.settings.max_upload_bytes)


def _read_capped(handle: IO[bytes], name: str, max_bytes: int) -> bytes:
    with handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PayloadTooLargeError(f"{name} is over MAX_UPLOAD_BYTES={max_bytes}")
    return data


def _read_uri(uri: str, service: Service) -> bytes:
    protocol = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if protocol in ("http", "https"):
        return _fetch(uri, service)
    if importlib.util.find_spec("fsspec") is None:
        raise InvalidRequestError(
            f"uri {uri}: reading object URIs needs fsspec, which is not installed on this server: "
            "pip install fsspec (and gcsfs for gs://, s3fs for s3://, adlfs for az://)", code="fsspec_missing")
    if "::" in uri or protocol not in FSSPEC_PROTOCOLS:
        raise InvalidRequestError(
            f"uri {uri}: protocol {protocol or 'none'!r} is not accepted; use one of "
            f"{', '.join(p + '://' for p in FSSPEC_PROTOCOLS)}, http(s)://, or bucket and filename for files "
            "under STORAGE_ROOT", code="bad_uri")
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(uri)
        return _read_capped(fs.open(path, "rb"), uri, service.settings.max_upload_bytes)
    except FileNotFoundError:
        raise NotFoundError(f"no object at {uri}") from None
    except ImportError as exc:
        raise InvalidRequestError(f"uri {uri}: {exc}", code="fsspec_missing") from None
    except (OSError, ValueError) as exc:
        raise FetchError(f"cannot read {uri}: {exc}") from None


# --- health, docs, the web page --------------------------------------------------------------------

health = APIRouter(tags=["health"])


@health.get("/livez", summary="The process answers")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@health.get("/readyz", summary="The database answers, the job runner runs and the backbone loads",
            responses={503: {"description": "Not ready; the body says which check failed."}})
async def readyz(service: ServiceDep) -> JSONResponse:
    problems = []
    if not await run_in_threadpool(service.registry.ping):
        problems.append(f"the database {service.registry.db_path} does not answer")
    if not service.runner.is_alive():
        problems.append("the training job runner is not running")
    if not service.backbone_ready:
        try:
            await run_in_threadpool(service.check_backbone)
        except Exception as exc:  # any failure here means "not ready", never a 500
            problems.append(f"backbone {DEFAULT_BACKBONE} does not load: {exc}")
    if problems:
        return error_response(503, "not_ready", "; ".join(problems))
    return JSONResponse({"status": "ready"})


# --- the app -------------------------------------------------------------------------------------------

_DESCRIPTION = """
Label images with reproducible classifiers trained on your own labelled images.

* **Seed 002**: `POST /train` with a CSV of image URLs, repeat it until `ready`, then `POST /infer`.
* **Native API** under `/v1`: upload an archive or CSV to `/v1/train`, follow `/v1/jobs/{job_id}`,
  list and inspect `/v1/models`, predict with `/v1/models/{key}/predict`.

Every error answers `{"error": {"code", "message"}}`.
"""


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The service as an ASGI app. ``settings`` default to the environment, read now."""
    settings = settings or ServiceSettings()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        data_dir = settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        cache_dir = resolve_cache_dir(settings.photolabel_cache_dir)
        registry = Registry(data_dir / DB_NAME)
        runner = JobRunner(registry, data_dir=data_dir, cache_dir=cache_dir, fetch_options=settings.fetch_options(),
                           workers=settings.train_workers, threads=settings.train_threads)

        def load(_model_id: str, path: str) -> Model:
            return Model.load(path, threads=settings.threads, cache_dir=cache_dir,
                              max_pixels=settings.max_image_pixels)

        predictors = PredictorCache(settings.model_cache_size, loader=load, max_batch=settings.infer_max_batch,
                                    max_wait_ms=settings.infer_max_wait_ms, max_queue=settings.infer_max_queue,
                                    batch_size=settings.batch_size)
        recovered = runner.start()
        if recovered:
            logger.info("requeued or failed %d job(s) interrupted by the last stop", len(recovered))
        app.state.service = Service(settings, registry, runner, predictors, cache_dir)
        try:
            yield
        finally:
            predictors.close()
            await run_in_threadpool(runner.stop, 10)
            registry.close()

    app = FastAPI(
        title="photolabel", version=__version__, description=_DESCRIPTION, lifespan=lifespan,
        docs_url="/api/doc", openapi_url="/api/openapi.json", redoc_url=None,
    )
    _install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_upload_bytes,
                       per_path={"/v1/train": (settings.max_train_upload_bytes, "MAX_TRAIN_UPLOAD_BYTES")})
    app.include_router(seed_router)
    app.include_router(v1)
    app.include_router(health)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC_DIR / "index.html"
        if not page.is_file():
            raise NotFoundError("the web page is not installed (static/index.html is missing)")
        return FileResponse(page, media_type="text/html")

    return app
