"""What the routes share: the :class:`Service` (settings, job registry, runner, loaded models), the
``ServiceDep`` dependency that hands it to a route, and the lookups several routes make.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Annotated, Any

import numpy as np
from fastapi import Depends, Request

from photolabel import storage
from photolabel.adapters.http.batching import PredictorCache
from photolabel.adapters.http.errors import (
    InvalidRequestError,
    ModelNotReadyError,
    NotFoundError,
    PayloadTooLargeError,
)
from photolabel.adapters.http.jobs import JobRunner
from photolabel.adapters.http.settings import ServiceSettings
from photolabel.adapters.http.store import ModelRecord, Registry
from photolabel.artifact import read_model_dir
from photolabel.backbones import get_backbone
from photolabel.config import TRAIN_DEFAULTS
from photolabel.errors import PhotolabelError, SourceNotFoundError, UnsupportedSchemeError


@dataclass
class Service:
    """The state of one running service; the app's lifespan builds it and closes what it holds."""

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

    def fetch(self, url: str) -> bytes:
        """The body at the http(s) ``url``, within the service's download limits and private-address rule."""
        return storage.read_bytes(check_web_url(url), self.settings.fetch_options())

    def fetch_many(self, urls: list[str]) -> list[bytes | PhotolabelError]:
        """:meth:`fetch` for several URLs, concurrently; one body or error per URL, in order."""
        checked: list[str] = []
        refused: dict[int, PhotolabelError] = {}
        for index, url in enumerate(urls):
            try:
                checked.append(check_web_url(url))
            except PhotolabelError as exc:
                refused[index] = exc
        bodies = iter(storage.read_many(checked, self.settings.fetch_options()))
        return [refused[i] if i in refused else next(bodies) for i in range(len(urls))]

    def read_object(self, uri: str) -> bytes:
        """The bytes of a storage object (s3://, gs://, az://, memory://, or http(s)), capped at
        MAX_UPLOAD_BYTES. Local paths and file:// are refused: files under STORAGE_ROOT are reached
        through a bucket name, which cannot leave STORAGE_ROOT."""
        if storage.is_local(uri) or not storage.scheme_of(uri):
            raise InvalidRequestError(f"uri {uri}: local files are not accepted; give bucket and filename for a "
                                      "file under STORAGE_ROOT", code="bad_uri")
        try:
            storage.check_uri(uri)
        except UnsupportedSchemeError as exc:
            raise InvalidRequestError(f"uri {exc}", code="bad_uri") from None
        try:
            return storage.read_bytes(uri, self.settings.fetch_options(), max_bytes=self.settings.max_upload_bytes)
        except SourceNotFoundError:
            raise NotFoundError(f"no object at {uri}") from None

    def model_doc(self, record: ModelRecord) -> dict[str, Any]:
        """The card (model.json), metrics and lineage summary of a model (read once; models never change)."""
        doc = self.model_docs.get(record.model_id)
        if doc is None:
            files = read_model_dir(record.path, verify=False)
            lineage = {key: value for key, value in files.lineage.items() if key != "images"}
            lineage["n_images"] = len(files.lineage.get("images", []))
            doc = {"card": files.card, "metrics": files.metrics, "lineage": lineage}
            self.model_docs[record.model_id] = doc
        return doc

    def check_backbone(self) -> None:
        """Load the default backbone and embed one blank image (exports it to ONNX the first time)."""
        backbone = get_backbone(TRAIN_DEFAULTS.backbone, threads=self.settings.threads, cache_dir=self.cache_dir)
        height, width = backbone.preprocessing.image_size
        blank = backbone.prepare(np.zeros((height, width, 3), dtype=np.uint8))
        backbone.embed_batch(np.stack([blank]))
        self.backbone_ready = True


def check_web_url(url: str) -> str:
    """``url`` if it is http(s); the seed API and ``{"urls"}`` take web URLs only.

    Raises:
        UnsupportedSchemeError: another scheme, named.
    """
    if storage.scheme_of(url) not in ("http", "https"):
        shown = storage.scheme_of(url) or "none"
        raise UnsupportedSchemeError(f"cannot fetch {url}: unsupported URL scheme '{shown}' (only http and https)")
    return url


async def get_service(request: Request) -> Service:
    # async: FastAPI runs a plain def dependency in the thread pool, which slow work elsewhere may have filled
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


def resolve_model(service: Service, key: str) -> ModelRecord:
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


#: bytes per read when an upload is copied to disk
COPY_CHUNK = 1 << 20


def save_upload(source: IO[bytes], folder: Path, suffix: str, max_bytes: int) -> tuple[Path, str, int, bool]:
    """Copy an upload into ``folder/<sha256><suffix>`` (atomically), refusing it past ``max_bytes`` (413); returns
    (path, sha256, size, whether the file is new: no earlier upload had these bytes). Used for training data and
    imported models alike."""
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    size = 0
    handle, temp = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            while chunk := source.read(COPY_CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLargeError(
                        f"the upload is over the limit of {max_bytes} bytes (MAX_TRAIN_UPLOAD_BYTES)")
                digest.update(chunk)
                out.write(chunk)
        target = folder / f"{digest.hexdigest()}{suffix}"
        fresh = not target.exists()
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target, digest.hexdigest(), size, fresh
