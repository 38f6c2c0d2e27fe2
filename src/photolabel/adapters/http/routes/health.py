"""Health checks: ``GET /livez`` and ``GET /healthz`` (the process answers) and ``GET /readyz`` (the service
can answer: not stopping, database, job runner, backbone)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from photolabel.adapters.http.deps import ServiceDep
from photolabel.adapters.http.errors import DrainingError, NotReadyError, error_response, hide_paths, server_roots
from photolabel.config import TRAIN_DEFAULTS

router = APIRouter(tags=["health"])


@router.get("/livez", summary="The process answers (liveness)")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/healthz", summary="The process answers (liveness; the same as /livez)")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="The service can answer: not stopping, the database answers, the job runner runs and "
                               "the backbone is loaded",
            responses={503: {"description": "Not ready (`not_ready`, the body says which check failed) or "
                                            "stopping (`draining`, after SIGTERM)."}})
async def readyz(request: Request, service: ServiceDep) -> JSONResponse:
    drain = getattr(request.app.state, "drain", None)
    if drain is not None and drain.draining:
        return error_response(DrainingError.status, DrainingError.code,
                              "the service is stopping: it finishes the requests in progress and takes no new work")
    problems = []
    if not await run_in_threadpool(service.registry.ping):
        problems.append("the job database does not answer")
    if not service.runner.is_alive():
        problems.append("the training job runner is not running")
    if not service.backbone_ready:
        try:
            await run_in_threadpool(service.check_backbone)
        except Exception as exc:  # any failure here means "not ready", never a 500
            problems.append(f"backbone {TRAIN_DEFAULTS.backbone} does not load: "
                            f"{hide_paths(str(exc), server_roots(request))}")
    if problems:
        return error_response(NotReadyError.status, NotReadyError.code, "; ".join(problems))
    return JSONResponse({"status": "ready"})
