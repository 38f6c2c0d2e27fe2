"""Training and jobs under ``/v1``: ``POST /v1/train`` (an archive or CSV upload), ``GET /v1/jobs``,
``GET /v1/jobs/{job_id}`` and ``POST /v1/jobs/{job_id}/retry``.

An uploaded CSV is checked when it arrives (empty, header only, malformed rows: 400; over MAX_CSV_ROWS or
MAX_CSV_FIELD_BYTES: 413, the line named), so that it never becomes a job that fails later. A request that
creates a job may carry an ``Idempotency-Key`` header: the same key with the same request (the upload's
sha256 and the form fields) finds the job it made; with another request it is refused with 422
``idempotency_key_reused``, as the IETF draft "The Idempotency-Key HTTP Header Field" says.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Header, Query, Response, UploadFile
from starlette.concurrency import run_in_threadpool

from photolabel.adapters.http.deps import Service, ServiceDep, save_upload
from photolabel.adapters.http.errors import (
    BadCsvError,
    BadIdempotencyKeyError,
    IdempotencyKeyReusedError,
    InvalidRequestError,
    NotFoundError,
)
from photolabel.adapters.http.job_kinds import TRAIN_KIND, TrainSpec
from photolabel.adapters.http.schemas import JobCreated, JobId, JobList, JobView, error_responses
from photolabel.adapters.http.settings import ServiceSettings
from photolabel.adapters.http.store import IdempotencyKey, IdempotencyKeyReused, Job, Registry
from photolabel.archives import ARCHIVE_SUFFIXES
from photolabel.config import TRAIN_DEFAULTS, TrainConfig
from photolabel.dataset import parse_label_list
from photolabel.errors import CsvLimitError, DataError
from photolabel.hashing import canonical_json
from photolabel.sources import check_manifest

logger = logging.getLogger("photolabel.http")

router = APIRouter(prefix="/v1", tags=["training"])

MAX_IDEMPOTENCY_KEY_CHARS = 255
TRAIN_SCOPE = "POST /v1/train"

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(alias="Idempotency-Key",
           description="Any string of 1 to 255 printable ASCII characters (a UUID, say), quoted or not. The "
                       "same key with the same request answers the job it made (200); with another request: 422 "
                       "`idempotency_key_reused`."),
]


def idempotency_key(value: str | None, scope: str, request: dict[str, Any]) -> IdempotencyKey | None:
    """The request's ``Idempotency-Key`` (None without one), with the fingerprint of ``request`` (its canonical form).

    Raises :class:`BadIdempotencyKeyError` for an empty or overlong key, or one with other than printable ASCII.
    """
    if value is None:
        return None
    key = value.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':  # the draft's form: a quoted structured-field string
        key = key[1:-1]
    if not key or len(key) > MAX_IDEMPOTENCY_KEY_CHARS or not all(" " <= char <= "~" for char in key):
        raise BadIdempotencyKeyError(f"Idempotency-Key: expected 1 to {MAX_IDEMPOTENCY_KEY_CHARS} printable ASCII "
                                     f"characters, got {len(key)} characters{'' if key.isascii() else ', not ASCII'}")
    return IdempotencyKey(scope=scope, key=key, fingerprint=hashlib.sha256(canonical_json(request)).hexdigest())


def create_job_once(registry: Registry, job_id: str, kind: str, spec: dict[str, Any],
                    idempotency: IdempotencyKey | None) -> tuple[Job, bool]:
    """``registry.create_job`` with the request's idempotency key; a key reused with another request is a 422."""
    try:
        return registry.create_job(job_id, kind, spec, idempotency=idempotency)
    except IdempotencyKeyReused as exc:
        raise _key_reused(exc) from None


def find_idempotent_job(registry: Registry, idempotency: IdempotencyKey | None) -> Job | None:
    """The job an earlier request with the same key and the same content made (None: none, or no key)."""
    if idempotency is None:
        return None
    try:
        return registry.find_idempotent_job(idempotency)
    except IdempotencyKeyReused as exc:
        raise _key_reused(exc) from None


def remember_idempotency_key(registry: Registry, idempotency: IdempotencyKey, job_id: str) -> Job | None:
    """Bind the request's key to a job it found already made; a key reused with another request is a 422."""
    try:
        return registry.remember_idempotency_key(idempotency, job_id)
    except IdempotencyKeyReused as exc:
        raise _key_reused(exc) from None


def _key_reused(exc: IdempotencyKeyReused) -> IdempotencyKeyReusedError:
    return IdempotencyKeyReusedError(
        f"Idempotency-Key {exc.key.key!r} was first sent with another request to {exc.key.scope} (it made job "
        f"{exc.job_id}); use a new key for a new request")


def data_limits(settings: ServiceSettings) -> dict[str, Any]:
    """The archive and CSV limits a training job reads its data with (a TrainSpec's ``data_limits``)."""
    return {"archive": asdict(settings.archive_limits()), "csv": asdict(settings.csv_limits())}


def check_upload_manifest(path: Path, shown: str, settings: ServiceSettings, *, urls_only: str,
                          classes: tuple[str, ...] | None) -> int:
    """Check a CSV manifest (named ``shown``) as its job will read it: a malformed one is a 400, one over a
    limit a 413 (the line named); returns its rows."""
    try:
        return check_manifest(path, urls_only=urls_only, classes=classes, csv_limits=settings.csv_limits(),
                              shown=shown)
    except CsvLimitError:
        raise
    except DataError as exc:
        raise BadCsvError(str(exc)) from None


def upload_job_id(upload_sha256: str, spec: TrainSpec) -> str:
    """``/v1/train``'s job id: sha1 over the upload's sha256 and every parameter that changes the model."""
    params = {"upload_sha256": upload_sha256, "config": spec.config, "skip_bad": spec.skip_bad}
    return hashlib.sha1(canonical_json(params)).hexdigest()


def _upload_suffix(filename: str) -> str:
    name = filename.lower()
    for suffix in (*ARCHIVE_SUFFIXES, ".csv"):
        if name.endswith(suffix):
            return suffix
    raise InvalidRequestError(
        f"data: {filename or 'the upload'} is not a data set; upload a {', '.join(ARCHIVE_SUFFIXES)} archive "
        "of label folders, or a .csv of image_url,label[,sha1] rows", code="bad_upload")


def _train_config(service: Service, *, seed: int | None, backbone: str, head: str, head_params: str | None,
                  valid_fraction: float | None, classes: str | None, augment: int = TRAIN_DEFAULTS.augment,
                  finetune: bool = TRAIN_DEFAULTS.finetune,
                  calibrate: bool = TRAIN_DEFAULTS.calibrate, unknown: bool = TRAIN_DEFAULTS.unknown,
                  max_per_label: str | None = None, balance: bool = TRAIN_DEFAULTS.balance,
                  tune: bool = TRAIN_DEFAULTS.tune, preset: str | None = TRAIN_DEFAULTS.preset,
                  ) -> TrainConfig:
    """The request's TrainConfig, settings filling what it leaves out. Checked by the core: a bad value is a
    ConfigError (422 with the field named)."""
    try:
        names = parse_label_list(classes)
    except DataError as exc:
        raise InvalidRequestError(f"classes: {exc}") from None
    params: Any = {}
    if head_params and head_params.strip():
        try:
            params = json.loads(head_params)
        except ValueError as exc:
            raise InvalidRequestError(f"head_params: not a JSON object ({exc})", code="invalid_config") from None
    settings = service.settings
    return TrainConfig(
        backbone=backbone, head=head, head_params=settings.epoch_params(head, params),
        seed=settings.random_seed if seed is None else seed,
        valid_fraction=settings.valid_fraction if valid_fraction is None else valid_fraction,
        classes=names, augment=augment, finetune=finetune, calibrate=calibrate, unknown=unknown,
        max_per_label=_max_per_label(max_per_label, settings.data_limit), balance=balance, tune=tune,
        preset=preset or None,
    )


def _max_per_label(value: str | None, data_limit: int) -> int | None:
    """The ``max_per_label`` form field: a whole number, ``min`` (0) or ``all`` (None); DATA_LIMIT when absent."""
    text = (value or "").strip().lower()
    if not text:
        return data_limit
    if text == "all":
        return None
    if text == "min":
        return 0
    if not text.isdigit():
        raise InvalidRequestError(f"max_per_label: expected a whole number, 'min' or 'all', got {value!r}",
                                  code="invalid_config")
    return int(text)


@router.post("/train", status_code=202, response_model=JobCreated, response_model_exclude_none=True,
             responses={200: {"model": JobCreated, "description": "The same upload and parameters (or the same "
                                                                  "Idempotency-Key and request): the existing job."},
                        **error_responses(400, 413, 422)},
             summary="Train a model on an uploaded archive or CSV")
async def train_upload(
    service: ServiceDep,
    response: Response,
    data: Annotated[UploadFile, File(description="A .tar.gz/.tgz/.tar/.zip archive of one folder per label "
                                                 "(or train/ and valid/), or a .csv of image_url,label[,sha1].")],
    seed: Annotated[int | None, Form(description="0 to 4294967295; default RANDOM_SEED.")] = None,
    backbone: Annotated[str, Form(description="See `photolabel backbones`.")] = TRAIN_DEFAULTS.backbone,
    head: Annotated[str, Form(description="See `photolabel heads`.")] = TRAIN_DEFAULTS.head,
    head_params: Annotated[str | None, Form(description='The head\'s hyperparameters as a JSON object, e.g. '
                                                        '`{"C": 0.1}`; `photolabel heads` lists them with their '
                                                        'defaults and ranges.')] = None,
    valid_fraction: Annotated[float | None, Form(description="In [0, 1); default 1 - TRAIN_PERCENTAGE.")] = None,
    classes: Annotated[str | None, Form(description="Labels in this order, space or comma separated.")] = None,
    augment: Annotated[int, Form(description="K augmented views of each training image (flip, crop, small "
                                             "rotation, colour jitter), 0 to 16.")] = TRAIN_DEFAULTS.augment,
    finetune: Annotated[bool, Form(description="Also train the backbone's last block and 1x1 conv head on the "
                                               "training images (EfficientNet-Lite backbones only; minutes on a "
                                               "CPU).")
                        ] = TRAIN_DEFAULTS.finetune,
    skip_bad: Annotated[bool, Form(description="Skip unreadable images instead of failing.")] = False,
    calibrate: Annotated[bool, Form(description="Fit a temperature on the validation images so that the "
                                                "probabilities say how often the model is right.")
                         ] = TRAIN_DEFAULTS.calibrate,
    unknown: Annotated[bool, Form(description='Let the model answer "unknown" for images unlike its training '
                                              "images or when it is not confident enough.")
                       ] = TRAIN_DEFAULTS.unknown,
    max_per_label: Annotated[str | None, Form(description="Most training images per label: a whole number, "
                                                          "'min' (as many as the smallest label has) or 'all'; "
                                                          "default DATA_LIMIT (0: 'min').")] = None,
    balance: Annotated[bool, Form(description="Weight each label inversely to its number of training images.")
                       ] = TRAIN_DEFAULTS.balance,
    tune: Annotated[bool, Form(description="Choose the head's parameters by 5-fold cross-validation on the "
                                           "training images.")] = TRAIN_DEFAULTS.tune,
    preset: Annotated[str | None, Form(description="'best': choose the head too, searching every head's grid "
                                                   "as tune does.")] = TRAIN_DEFAULTS.preset,
    idempotency_key_header: IdempotencyKeyHeader = None,
) -> dict[str, Any]:
    """Queue a training job (202), or find the job already made from the same bytes and parameters (200).
    Follow it with `GET /v1/jobs/{job_id}`. An uploaded CSV is checked at once: empty, header only or a
    malformed row: 400 `bad_csv`; over MAX_CSV_ROWS or MAX_CSV_FIELD_BYTES: 413 `csv_over_limit`."""
    settings = service.settings
    form = {"seed": seed, "backbone": backbone, "head": head, "head_params": head_params,
            "valid_fraction": valid_fraction, "classes": classes, "augment": augment, "finetune": finetune,
            "skip_bad": skip_bad, "calibrate": calibrate, "unknown": unknown, "max_per_label": max_per_label,
            "balance": balance, "tune": tune, "preset": preset}
    idempotency_key(idempotency_key_header, TRAIN_SCOPE, {})  # a malformed key is refused before the upload is read
    suffix = _upload_suffix(data.filename or "")
    config = _train_config(service, seed=seed, backbone=backbone, head=head, head_params=head_params,
                           valid_fraction=valid_fraction, classes=classes, augment=augment, finetune=finetune,
                           calibrate=calibrate, unknown=unknown, max_per_label=max_per_label, balance=balance,
                           tune=tune, preset=preset)
    path, sha256, size, fresh = await run_in_threadpool(save_upload, data.file, service.uploads, suffix,
                                                        settings.max_train_upload_bytes)
    # the request's canonical form: what was uploaded (its bytes, as what kind of file) and the form fields
    idempotency = idempotency_key(idempotency_key_header, TRAIN_SCOPE, {
        "upload_sha256": sha256, "upload_kind": suffix,
        "form": {name: value for name, value in form.items() if value is not None}})
    try:
        earlier = await run_in_threadpool(find_idempotent_job, service.registry, idempotency)
        if earlier is not None:
            response.status_code = 200
            return {"job_id": earlier.job_id, "model_sha1": earlier.job_id, "status": earlier.status,
                    "model_id": earlier.model_id}
        if suffix == ".csv":
            if size == 0:
                raise BadCsvError(f"data: {data.filename} is empty; expected lines of image_url,label[,sha1]")
            await run_in_threadpool(check_upload_manifest, path, data.filename or "the upload", settings,
                                    urls_only="upload", classes=config.classes)
        elif size == 0:
            raise InvalidRequestError(f"data: {data.filename} is empty", code="bad_upload")
        spec = TrainSpec(data=str(path), config=config.to_dict(), urls_only="upload" if suffix == ".csv" else None,
                         model_uri=None, skip_bad=skip_bad, data_limits=data_limits(settings))
        job_id = upload_job_id(sha256, spec)
        job, created = await run_in_threadpool(create_job_once, service.registry, job_id, TRAIN_KIND, asdict(spec),
                                               idempotency)
    except (BadCsvError, CsvLimitError, InvalidRequestError):
        if fresh:  # bytes refused for what they are: no job uses them, so no file is left behind
            path.unlink(missing_ok=True)
        raise
    if created:
        service.runner.submit(job_id)
        logger.info("job %s: queued from upload %s (%d bytes)", job_id, data.filename, size)
    else:
        response.status_code = 200
    return {"job_id": job.job_id, "model_sha1": job.job_id, "status": job.status, "model_id": job.model_id}


@router.get("/jobs", response_model=JobList, summary="The newest jobs")
def list_jobs(service: ServiceDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    return {"jobs": [job.to_dict() for job in service.registry.list_jobs(limit)]}


@router.get("/jobs/{job_id}", response_model=JobView, responses=error_responses(404),
            summary="One job: status, stage, progress, error")
def get_job(job_id: JobId, service: ServiceDep) -> dict[str, Any]:
    job = service.registry.get_job(job_id)
    if job is None:
        raise NotFoundError(f"no job {job_id!r}; GET /v1/jobs lists them")
    return job.to_dict()


@router.post("/jobs/{job_id}/retry", response_model=JobView, responses=error_responses(404),
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
