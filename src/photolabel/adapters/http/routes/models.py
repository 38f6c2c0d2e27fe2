"""Models under ``/v1``: ``GET /v1/models``, ``GET /v1/models/{key}`` and ``DELETE /v1/models/{key}``."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from photolabel.adapters.http.deps import ServiceDep, resolve_model
from photolabel.adapters.http.schemas import ModelDetails, ModelKey, ModelList, error_responses
from photolabel.errors import ModelError

logger = logging.getLogger("photolabel.http")

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models", response_model=ModelList, summary="Every model")
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


@router.get("/models/{key}", response_model=ModelDetails, responses=error_responses(404, 409),
            summary="Labels, backbone, head, config, metrics and lineage of a model")
def get_model(key: ModelKey, service: ServiceDep) -> dict[str, Any]:
    record = resolve_model(service, key)
    doc = service.model_doc(record)
    card = doc["card"]
    return {
        "model_id": record.model_id, "job_id": record.job_id, "uri": record.uri, "created_at": record.created_at,
        "labels": list(card.labels), "backbone": card.backbone.to_dict(), "head": card.head.to_dict(),
        "config": card.config.to_dict(), "manifest_sha256": card.manifest_sha256, "metrics": doc["metrics"],
        "lineage": doc["lineage"], "photolabel_version": card.photolabel_version,
        "calibration": card.calibration, "unknown": card.unknown,
    }


@router.delete("/models/{key}", status_code=204, responses=error_responses(404, 409),
               summary="Delete a model: its row, its directory and its loaded copy")
async def delete_model(key: ModelKey, service: ServiceDep) -> Response:
    """The job that trained it turns to `error` (`model_deleted`); retrying the job trains it again."""
    record = await run_in_threadpool(resolve_model, service, key)
    await run_in_threadpool(service.registry.delete_model, record.model_id)
    service.predictors.evict(record.model_id)
    service.model_docs.pop(record.model_id, None)
    folder = Path(record.path).resolve()
    if folder.is_relative_to(service.settings.data_dir.resolve()):
        await run_in_threadpool(shutil.rmtree, folder, True)
    else:  # registered from elsewhere: forget it, but never delete files outside DATA_DIR
        logger.info("model %s: %s is outside DATA_DIR; files left in place", record.model_id, folder)
    return Response(status_code=204)
