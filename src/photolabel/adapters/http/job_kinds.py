"""What a job does, by kind: the registry of job kinds, and the built-in ``train`` kind.

A kind is a handler ``handler(context: JobContext) -> ModelRecord | None`` registered under
a name (the ``Job.kind`` of the jobs it runs) with :func:`register_job_kind`.
:func:`~photolabel.adapters.http.jobs.run_job` looks the kind up and keeps the bookkeeping
every kind shares: it records failures as job errors, adds the model a handler returns
to the registry, and marks the job ready.

To add a kind, write its handler and register it below, next to ``train``. Kinds must be
registered when this module is imported: the job's child process
(``python -m photolabel.adapters.http.jobs``) knows only those.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from photolabel.adapters.http.store import Job, ModelRecord, Registry, utc_now
from photolabel.artifact import read_model_dir
from photolabel.config import TRAIN_DEFAULTS, Runtime, TrainConfig
from photolabel.errors import ModelError, UnknownNameError
from photolabel.fetch import FetchOptions
from photolabel.fsutil import exchange_paths, owner_gone, process_tag
from photolabel.limits import ArchiveLimits, CsvLimits

TRAIN_KIND = "train"

ProgressCallback = Callable[[str, float], None]


@dataclass(frozen=True)
class JobContext:
    """What a job handler gets: its job, where the service keeps files, and how to report progress.

    ``progress(stage, fraction)`` writes into the job row (throttled); ``fetch_options``
    are the service's limits on URL downloads; ``threads`` is what the backbone may use;
    ``tensorboard``: write TensorBoard curves under :func:`tensorboard_dir_for` (TENSORBOARD_LOGS_ENABLED).
    """

    registry: Registry
    job: Job
    data_dir: Path
    cache_dir: Path | None
    fetch_options: FetchOptions
    threads: int
    progress: ProgressCallback
    tensorboard: bool = False


JobHandler = Callable[[JobContext], ModelRecord | None]
"""Runs one job; returns the model it made (added to the registry by ``run_job``), or None.
Raises :class:`~photolabel.errors.PhotolabelError` for failures the client should read."""

_JOB_KINDS: dict[str, JobHandler] = {}


def register_job_kind(kind: str, handler: JobHandler) -> JobHandler:
    """Run jobs of kind ``kind`` with ``handler``; returns the handler.

    Raises ``ValueError`` when ``kind`` is already registered.
    """
    if kind in _JOB_KINDS:
        raise ValueError(f"job kind {kind!r} is already registered")
    _JOB_KINDS[kind] = handler
    return handler


def list_job_kinds() -> list[str]:
    return sorted(_JOB_KINDS)


def get_job_kind(kind: str) -> JobHandler:
    """The handler of job kind ``kind``.

    Raises:
        UnknownNameError: no such kind; the message lists the known ones.
    """
    if kind not in _JOB_KINDS:
        raise UnknownNameError(f"unknown job kind {kind!r}; this server runs: {', '.join(list_job_kinds())}")
    return _JOB_KINDS[kind]


# --- train: fit a model on a data set ---------------------------------------------------------


@dataclass(frozen=True)
class TrainSpec:
    """What a training job trains on and how; stored as JSON in ``Job.spec``.

    ``data`` is a local path (a CSV or an archive saved by the service, or a folder).
    ``urls_only`` names where an untrusted CSV came from (its URL, or "upload"): its
    rows may then only be remote URLs (see :func:`photolabel.sources.load_dataset`).
    ``config`` is the :class:`~photolabel.config.TrainConfig` as a dict (checked when the
    request was taken). ``model_uri`` is the seed API's ``model.uri``, recorded only.
    ``data_limits`` holds the service's archive and CSV limits when the request was taken
    (``{"archive": {...}, "csv": {...}}``, fields of :mod:`photolabel.limits`; None: the defaults).
    """

    data: str
    config: dict[str, Any] = field(default_factory=lambda: TRAIN_DEFAULTS.to_dict())
    urls_only: str | None = None
    model_uri: str | None = None
    skip_bad: bool = False
    data_limits: dict[str, Any] | None = None

    def train_config(self) -> TrainConfig:
        return TrainConfig.from_dict(self.config)

    def limits(self) -> tuple[ArchiveLimits, CsvLimits]:
        """The archive and CSV limits this job reads its data with."""
        given = self.data_limits or {}
        return (_limits(ArchiveLimits, given.get("archive")), _limits(CsvLimits, given.get("csv")))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> TrainSpec:
        """The spec in ``spec``; unknown keys are ignored (specs written by a newer version). Specs written
        before the config was one object (flat ``seed``, ``head``, ...) are read too."""
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in spec.items() if key in known}
        if "config" not in values:
            flat = {key: spec[key] for key in ("backbone", "head", "seed", "valid_fraction", "classes")
                    if spec.get(key) is not None}
            values["config"] = TrainConfig(**flat).to_dict()  # a new training: today's defaults for the rest
        return cls(**values)


def _limits(cls: Any, values: Any) -> Any:
    known = {f.name for f in fields(cls)}
    return cls(**{key: value for key, value in (values or {}).items() if key in known})


MODELS_DIR_NAME = "models"  # DATA_DIR/models/<model_id>: one folder per model, however it arrived
STAGING_PREFIX = ".job-"  # DATA_DIR/models/.job-<host>-<pid>-<name>: a model being trained or imported


def model_dir_for(data_dir: str | Path, model_id: str) -> Path:
    """Where the service keeps model ``model_id``: ``DATA_DIR/models/<model_id>``, whether a job trained it,
    it was imported (``POST /v1/models``) or registered at start (``serve --models``). Rows written by older
    versions keep their paths (``DATA_DIR/models/<job_id>``)."""
    return Path(data_dir) / MODELS_DIR_NAME / model_id


def staging_dir_for(data_dir: str | Path, name: str) -> Path:
    """A folder beside the models (same file system) where one model is written before it is published under its
    id; named with this process's host and pid, so that :func:`sweep_staging` can tell one a dead process left."""
    return Path(data_dir) / MODELS_DIR_NAME / f"{STAGING_PREFIX}{process_tag()}-{name}"


_STAGING = re.compile(r"^\.job-(?P<host>[A-Za-z0-9.]+)-(?P<pid>[0-9]+)-")


def sweep_staging(data_dir: str | Path) -> list[Path]:
    """Remove the staging folders (:func:`staging_dir_for`) of processes that no longer run; the paths removed."""
    removed: list[Path] = []
    with contextlib.suppress(OSError):
        for entry in sorted((Path(data_dir) / MODELS_DIR_NAME).iterdir()):
            match = _STAGING.match(entry.name)
            if match is None or not owner_gone(match["host"], match["pid"]):
                continue
            shutil.rmtree(entry, ignore_errors=True)
            if not os.path.lexists(entry):
                removed.append(entry)
    return removed


def publish_model_dir(staging: Path, data_dir: str | Path, model_id: str) -> Path:
    """Move the checked model folder ``staging`` to ``DATA_DIR/models/<model_id>`` and return that path.

    A folder already there that holds this model, its hashes checked, is kept (the same id is the same model) and
    ``staging`` removed; anything else there is replaced in one atomic step where the system allows it.
    """
    target = model_dir_for(data_dir, model_id)
    if not target.exists():
        os.rename(staging, target)
        return target
    try:
        kept = read_model_dir(target).card.model_id == model_id
    except ModelError:
        kept = False
    if not kept and not exchange_paths(staging, target):  # exchanged: staging now holds what was there
        aside = staging.with_name(staging.name + ".old")
        os.rename(target, aside)
        os.rename(staging, target)
        staging = aside
    shutil.rmtree(staging, ignore_errors=True)
    return target


def tensorboard_dir_for(data_dir: str | Path, job_id: str) -> Path:
    """Where job ``job_id`` writes TensorBoard curves: ``DATA_DIR/tensorboard/<job_id>``."""
    return Path(data_dir) / "tensorboard" / job_id


def train_job(context: JobContext) -> ModelRecord:
    """The ``train`` kind: train on the job's :class:`TrainSpec` with :func:`photolabel.train`."""
    # imported here: the server process only queues jobs and need not load the training stack
    from photolabel.sources import load_dataset
    from photolabel.training import train

    job_id = context.job.job_id
    spec = TrainSpec.from_dict(context.job.spec)
    context.progress("loading", 0.0)
    config = spec.train_config()
    archive_limits, csv_limits = spec.limits()
    runtime = Runtime(threads=context.threads, cache_dir=context.cache_dir, fetch=context.fetch_options,
                      tensorboard_dir=tensorboard_dir_for(context.data_dir, job_id) if context.tensorboard else None,
                      archive_limits=archive_limits, csv_limits=csv_limits)
    dataset = load_dataset(spec.data, classes=config.classes, skip_bad=spec.skip_bad,
                           fetch_options=context.fetch_options, urls_only=spec.urls_only,
                           archive_limits=archive_limits, csv_limits=csv_limits)
    # written beside the models under a staging name, then published under its model id (DATA_DIR/models/<id>)
    staging = staging_dir_for(context.data_dir, job_id)
    try:
        result = train(dataset, staging, config, runtime, skip_bad=spec.skip_bad, on_progress=context.progress)
        path = publish_model_dir(staging, context.data_dir, result.model_id)
    finally:
        dataset.close()
        shutil.rmtree(staging, ignore_errors=True)
    return ModelRecord(model_id=result.model_id, job_id=job_id, path=str(path),
                       labels=list(result.model.labels), backbone=config.backbone, head=result.model.card.head.name,
                       uri=spec.model_uri, created_at=utc_now())


register_job_kind(TRAIN_KIND, train_job)
