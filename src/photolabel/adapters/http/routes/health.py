"""Health checks: ``GET /livez`` (the process answers) and ``GET /readyz`` (database, job runner, backbone)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from photolabel.adapters.http.deps import ServiceDep
from photolabel.adapters.http.errors import error_response
from photolabel.config import TRAIN_DEFAULTS

router = APIRouter(tags=["health"])


@router.get("/livez", summary="The process answers")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The database answers, the job runner runs and the backbone loads",
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
            problems.append(f"backbone {TRAIN_DEFAULTS.backbone} does not load: {exc}")
    if problems:
        return error_response(503, "not_ready", "; ".join(problems))
    return JSONResponse({"status": "ready"})
