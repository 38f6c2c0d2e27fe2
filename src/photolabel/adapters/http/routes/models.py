"""Models under ``/v1``: ``GET /v1/models``, ``GET /v1/models/{key}``, ``DELETE /v1/models/{key}``, the import
``POST /v1/models`` (an archive of a model directory) and the export ``GET /v1/models/{key}/archive``.

Every model the service keeps lives in ``DATA_DIR/models/<model_id>`` (:func:`.job_kinds.model_dir_for`): trained
by a job, imported, or registered at start (``photolabel serve --models DIR``, :func:`register_models_from`).
An imported folder is checked by its hashes (:func:`photolabel.artifact.read_model_dir`) before it is kept.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any

from fastapi import APIRouter, File, Response, UploadFile
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from photolabel.adapters.http.deps import COPY_CHUNK, Service, ServiceDep, resolve_model, save_upload
from photolabel.adapters.http.errors import InvalidRequestError
from photolabel.adapters.http.job_kinds import MODELS_DIR_NAME, publish_model_dir, staging_dir_for
from photolabel.adapters.http.schemas import ModelDetails, ModelKey, ModelList, error_responses
from photolabel.adapters.http.store import ModelRecord, Registry, utc_now
from photolabel.archives import extract_archive
from photolabel.artifact import MODEL_JSON, read_model_dir
from photolabel.errors import ModelError
from photolabel.fsutil import process_tag
from photolabel.limits import ArchiveLimits

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
    return model_details(service, resolve_model(service, key))


def model_details(service: Service, record: ModelRecord) -> dict[str, Any]:
    """What ``GET /v1/models/{key}`` answers for ``record``."""
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


# --- import and export ---------------------------------------------------------------------------------------

MODEL_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".zip")


class NotAModelError(InvalidRequestError):
    """An archive sent to ``POST /v1/models`` that holds no model directory (no model.json at its top)."""

    code = "not_a_model"


def register_model_dir(registry: Registry, data_dir: Path, source: Path, *, move: bool = False
                       ) -> tuple[ModelRecord, bool]:
    """Check the model directory ``source`` by its hashes, keep it as ``DATA_DIR/models/<model_id>`` and list it:
    ``(record, created)``; ``created`` is False when the registry already had this model (nothing changes then).

    ``move``: ``source`` is a staging folder beside the models (moved, not copied).

    Raises:
        ModelIntegrityError: a file's hash, or the id, does not match model.json (``model_corrupt``).
        ModelError: not a photolabel model, or a malformed one.
    """
    files = read_model_dir(source)  # every hash and the id checked
    card = files.card
    known = registry.get_model(card.model_id)
    if known is not None and known.model_id == card.model_id and Path(known.path).is_dir():
        return known, False
    if move:
        staging = source
    else:
        staging = staging_dir_for(data_dir, f"register-{card.model_id[:16]}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(source, staging, symlinks=True)
    try:
        path = publish_model_dir(staging, data_dir, card.model_id)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    record = ModelRecord(model_id=card.model_id, job_id=None, path=str(path), labels=list(card.labels),
                         backbone=card.backbone.name, head=card.head.name, uri=None, created_at=utc_now())
    registry.add_model(record)
    return record, True


def model_dirs_in(folder: Path) -> list[Path]:
    """``folder`` itself when it is a model directory (holds model.json), else its sub-folders, sorted."""
    if (folder / MODEL_JSON).is_file():
        return [folder]
    return sorted(entry for entry in folder.iterdir() if entry.is_dir() and not entry.name.startswith("."))


def register_models_from(registry: Registry, data_dir: Path, folder: Path) -> list[ModelRecord]:
    """``photolabel serve --models DIR``: register every model directory under ``folder`` (or ``folder`` itself).

    Each is checked by its hashes and copied to ``DATA_DIR/models/<model_id>``; one that fails is logged and
    skipped. Returns the records of the models now listed (new or already there)."""
    try:
        candidates = model_dirs_in(folder)
    except OSError as exc:
        logger.error("--models %s: cannot read it (%s); no model registered from it", folder, exc.strerror or exc)
        return []
    records: list[ModelRecord] = []
    for candidate in candidates:
        try:
            record, created = register_model_dir(registry, data_dir, candidate)
        except (ModelError, OSError) as exc:
            logger.warning("--models: skipped %s: %s", candidate, exc)
            continue
        logger.info("--models: model %s from %s %s", record.model_id, candidate,
                    "registered" if created else "was already registered")
        records.append(record)
    return records


def _import_archive(service: Service, source: IO[bytes], filename: str) -> tuple[ModelRecord, bool]:
    settings = service.settings
    name = filename.lower()
    suffix = next((s for s in MODEL_ARCHIVE_SUFFIXES if name.endswith(s)), None)
    if suffix is None:
        raise InvalidRequestError(f"archive: {filename or 'the upload'} is not a model archive; send the .tar.gz "
                                  "(or .zip) of a model directory, as GET /v1/models/{key}/archive or "
                                  "`tar czf model.tar.gz -C OUT .` makes it", code="bad_upload")
    models = settings.data_dir / MODELS_DIR_NAME
    models.mkdir(parents=True, exist_ok=True)
    # beside the models (one file system: the model is moved into place, not copied), named for the sweep
    work = Path(tempfile.mkdtemp(dir=models, prefix=f".job-{process_tag()}-import-"))
    try:
        upload, _, size, _ = save_upload(source, work, suffix, settings.max_train_upload_bytes)
        if size == 0:
            raise InvalidRequestError(f"archive: {filename} is empty", code="bad_upload")
        limits: ArchiveLimits = settings.archive_limits()
        root = extract_archive(upload, work / "model", limits=limits)
        if not (root / MODEL_JSON).is_file():
            raise NotAModelError(f"archive: {filename} holds no photolabel model: {MODEL_JSON} is not at its top "
                                 "(or in its one folder); send the archive of a model directory")
        return register_model_dir(service.registry, settings.data_dir, root, move=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


@router.post("/models", status_code=201, response_model=ModelDetails,
             responses={200: {"model": ModelDetails, "description": "The service already had this model."},
                        **error_responses(400, 409, 413, 422)},
             summary="Import a model: an archive (.tar.gz or .zip) of a model directory")
async def import_model(
    service: ServiceDep,
    response: Response,
    archive: Annotated[UploadFile, File(description="A .tar.gz/.tgz/.zip of a model directory (as written by "
                                                    "`photolabel train --out`, or GET /v1/models/{key}/archive).")],
) -> dict[str, Any]:
    """The archive is extracted within the archive limits (MAX_ARCHIVE_*), the model checked by its hashes (a
    tampered one: 409 `model_corrupt`; no model.json: 422 `not_a_model`), kept as `DATA_DIR/models/<model_id>`
    and listed: 201 with the model, or 200 if the service already had it."""
    record, created = await run_in_threadpool(_import_archive, service, archive.file, archive.filename or "")
    if created:
        logger.info("model %s: imported from %s", record.model_id, archive.filename)
    else:
        response.status_code = 200
    return await run_in_threadpool(model_details, service, record)


def _add_member(tar: tarfile.TarFile, name: str, path: Path | None) -> None:
    info = tarfile.TarInfo(name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    if path is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(info)
        return
    info.mode, info.size = 0o644, path.stat().st_size
    with open(path, "rb") as handle:
        tar.addfile(info, handle)


def write_model_archive(folder: Path, top: str, out: IO[bytes]) -> None:
    """A .tar.gz of the model directory ``folder`` under one folder ``top``, byte for byte the same for the same
    files: members sorted, mtime 0 (the gzip header's too), uid/gid 0, no user or group names, fixed modes.
    Links and special files are left out."""
    entries: list[tuple[str, Path | None]] = [(top, None)]
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        here = Path(dirpath)
        relative = here.relative_to(folder)
        for dirname in dirnames:
            if not (here / dirname).is_symlink():
                entries.append(((Path(top) / relative / dirname).as_posix(), None))
        for filename in filenames:
            path = here / filename
            if path.is_file() and not path.is_symlink():
                entries.append(((Path(top) / relative / filename).as_posix(), path))
    entries.sort(key=lambda entry: entry[0])
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as compressed, \
            tarfile.open(fileobj=compressed, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, path in entries:
            _add_member(tar, name, path)


def _export(record: ModelRecord) -> IO[bytes]:
    read_model_dir(record.path)  # hashes checked: a tampered model is not handed out (409 model_corrupt)
    out = tempfile.TemporaryFile()  # noqa: SIM115  (handed to the response, which closes it)
    try:
        write_model_archive(Path(record.path), record.model_id, out)
        out.seek(0)
    except BaseException:
        out.close()
        raise
    return out


def _chunks(handle: IO[bytes]) -> Iterator[bytes]:
    try:
        while chunk := handle.read(COPY_CHUNK):
            yield chunk
    finally:
        handle.close()


@router.get("/models/{key}/archive", response_class=StreamingResponse,
            responses={200: {"content": {"application/gzip": {}}, "description": "The model directory as .tar.gz"},
                       **error_responses(404, 409)},
            summary="Export a model: its directory as a .tar.gz that POST /v1/models and the CLI accept")
async def export_model(key: ModelKey, service: ServiceDep) -> StreamingResponse:
    """The same model gives the same bytes (sorted members, mtime 0, owner 0, no user names). Extracted, it is a
    model directory the CLI loads (`photolabel predict --model <model_id>/ ...`)."""
    record = await run_in_threadpool(resolve_model, service, key)
    handle = await run_in_threadpool(_export, record)
    size = os.fstat(handle.fileno()).st_size
    return StreamingResponse(_chunks(handle), media_type="application/gzip", headers={
        "Content-Disposition": f'attachment; filename="photolabel-model-{record.model_id[:12]}.tar.gz"',
        "Content-Length": str(size)})
