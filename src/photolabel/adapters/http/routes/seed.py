"""The static-transfer-learning service's API, with its exact request and response shapes:
``POST /train`` on a CSV of image URLs (repeat it to follow the job) and ``POST /infer`` on one image URL.

``POST /train`` checks the CSV when it is fetched, before any job exists (see :mod:`.training`), and
takes an ``Idempotency-Key`` header as ``POST /v1/train`` does (the request's canonical form is its JSON body).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from photolabel.adapters.http.deps import ServiceDep, resolve_model
from photolabel.adapters.http.errors import Sha1MismatchError
from photolabel.adapters.http.job_kinds import TRAIN_KIND, TrainSpec
from photolabel.adapters.http.predicting import predict_one
from photolabel.adapters.http.routes.training import (
    IdempotencyKeyHeader,
    check_upload_manifest,
    create_job_once,
    data_limits,
    find_idempotent_job,
    idempotency_key,
    remember_idempotency_key,
)
from photolabel.adapters.http.schemas import InferRequest, TrainRequest, TrainStatus, error_responses
from photolabel.adapters.http.store import Job
from photolabel.config import TRAIN_DEFAULTS, TrainConfig
from photolabel.embedding import ImageInput
from photolabel.errors import CsvTooLargeError, FetchTooLargeError, PhotolabelError
from photolabel.fsutil import atomic_write_bytes
from photolabel.hashing import canonical_json, sha1_bytes

logger = logging.getLogger("photolabel.http")

router = APIRouter(tags=["static-transfer-learning"])

SEED_TRAIN_SCOPE = "POST /train"


def seed_model_sha1(csv_sha1: str, config: TrainConfig) -> str:
    """The seed API's ``model_sha1``: it depends only on the CSV's content and the training configuration."""
    params = {"csv_sha1": csv_sha1.lower(), "config": config.to_dict()}
    return hashlib.sha1(canonical_json(params)).hexdigest()


def _seed_status(job: Job) -> dict[str, Any]:
    status = {"queued": "in_progress", "in_progress": "in_progress"}.get(job.status, job.status)
    answer: dict[str, Any] = {"model_sha1": job.job_id, "status": status}
    if job.status == "error":
        answer["error"] = {"code": job.error_code or "error", "message": job.error or ""}
    return answer


@router.post("/train", response_model=TrainStatus, response_model_exclude_none=True,
             responses=error_responses(400, 413, 422),
             summary="Train a model on a CSV of image URLs (static-transfer-learning)")
async def train_from_csv(body: TrainRequest, service: ServiceDep,
                         idempotency_key_header: IdempotencyKeyHeader = None) -> dict[str, Any]:
    """Start training, or report on it. Repeat the same request to follow it:
    `new` → `in_progress` → `ready` (or `error`). The CSV is fetched only the first time;
    its sha1 must match `csv.sha1`, and its rows may only be http(s) URLs. A CSV that is empty, has a
    header only or a malformed row is refused at once (400 `bad_csv`), one over MAX_CSV_ROWS or
    MAX_CSV_FIELD_BYTES too (413 `csv_over_limit`), the line named."""
    settings = service.settings
    idempotency = idempotency_key(idempotency_key_header, SEED_TRAIN_SCOPE, body.model_dump(mode="json"))
    earlier = await run_in_threadpool(find_idempotent_job, service.registry, idempotency)
    if earlier is not None:
        return _seed_status(earlier)
    seed = body.metadata.random_seed if body.metadata.random_seed is not None else settings.random_seed
    # the seed API trains the default head, with EPOCHS and BATCH_SIZE if that head is trained in epochs
    config = TrainConfig(seed=seed, valid_fraction=settings.valid_fraction,
                         head_params=settings.epoch_params(TRAIN_DEFAULTS.head, {}),
                         max_per_label=settings.data_limit)
    csv_sha1 = body.csv.sha1.lower()
    model_sha1 = seed_model_sha1(csv_sha1, config)
    job = await run_in_threadpool(service.registry.get_job, model_sha1)
    if job is not None:
        if idempotency is not None:
            job = await run_in_threadpool(remember_idempotency_key, service.registry, idempotency, model_sha1) or job
        return _seed_status(job)
    try:
        data = await run_in_threadpool(service.fetch, body.csv.url)
    except FetchTooLargeError as exc:
        raise CsvTooLargeError(f"csv.url: {exc}") from None
    found = sha1_bytes(data)
    if found != csv_sha1:
        raise Sha1MismatchError(f"csv.url {body.csv.url}: the file's sha1 is {found}, but the request says "
                                f"{csv_sha1}; fix csv.sha1 or the file")
    path = service.uploads / f"{csv_sha1}.csv"
    spec = TrainSpec(data=str(path), config=config.to_dict(), urls_only=body.csv.url,
                     model_uri=body.model.uri or None, skip_bad=False, data_limits=data_limits(settings))

    def save_check_and_create() -> tuple[Job, bool]:
        path.parent.mkdir(parents=True, exist_ok=True)
        fresh = not path.exists()
        atomic_write_bytes(path, data)
        try:
            check_upload_manifest(path, body.csv.url, settings, urls_only=body.csv.url, classes=None)
        except PhotolabelError:
            if fresh:  # a refused CSV leaves no file behind
                path.unlink(missing_ok=True)
            raise
        return create_job_once(service.registry, model_sha1, TRAIN_KIND, asdict(spec), idempotency)

    job, created = await run_in_threadpool(save_check_and_create)
    if not created:
        return _seed_status(job)
    service.runner.submit(model_sha1)
    logger.info("job %s: queued from %s", model_sha1, body.csv.url)
    return {"model_sha1": model_sha1, "status": "new"}


@router.post("/infer", response_model=dict[str, float], responses=error_responses(404, 409, 413, 415, 422, 503),
             summary="Label one image by URL (static-transfer-learning)")
async def infer(body: InferRequest, service: ServiceDep) -> dict[str, float]:
    """Every label's probability for the image at `image.url`, e.g.
    `{"blouse": 0.02, "halter": 0.01, "sweater": 0.97}` (calibrated when the model is). The seed's
    shape has no room for the answer "unknown": `POST /v1/models/{key}/predict` gives it."""
    record = await run_in_threadpool(resolve_model, service, body.model.sha1)
    data = await run_in_threadpool(service.fetch, body.image.url)
    result = await predict_one(service, record, ImageInput(source=body.image.url, data=data))
    return dict(result.scores)
