"""The service's configuration: environment variables, read once when the app is created.

Names follow the static-transfer-learning service (no prefix): ``DATA_DIR``, ``HTTP_TIMEOUT``, ``RANDOM_SEED``,
``API_PORT`` and so on; the service adds its own limits (``MAX_UPLOAD_BYTES``,
``INFER_MAX_BATCH``, ...). Values are validated at start-up, so a bad setting stops the
service with a message that names the variable instead of failing on a request.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from photolabel.fetch import FetchOptions
from photolabel.images import DEFAULT_MAX_FRAMES, DEFAULT_MAX_PIXELS
from photolabel.limits import (
    CSV_MODULE_FIELD_LIMIT,
    DEFAULT_ARCHIVE_LIMITS,
    DEFAULT_CSV_LIMITS,
    ArchiveLimits,
    CsvLimits,
)

MiB = 1024**2
MIN_TOKEN_CHARS = 16


def _check_token(token: str, source: str) -> str:
    token = token.strip()
    if len(token) < MIN_TOKEN_CHARS or any(char.isspace() for char in token):
        raise ValueError(f"{source} must be at least {MIN_TOKEN_CHARS} characters, without spaces; make one with "
                         "python -c \"import secrets; print(secrets.token_urlsafe(32))\"")
    return token


def _read_token_file(path: Path) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the token file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return _check_token(text, f"the token in {path}")


class ServiceSettings(BaseSettings):
    """Settings of ``photolabel serve``; each field is read from the variable of the same name in capitals."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", frozen=True)

    # -- static-transfer-learning's variables --------------------------------------------------
    data_dir: Path = Field(Path("data"), description="Folder for the job database, uploads and models.")
    http_timeout: float = Field(120.0, gt=0, description="Seconds before a URL download gives up.")
    data_limit: int = Field(
        0, ge=0,
        description="Most training images per label, as in the static-transfer-learning service: 0 (the "
                    "default) trains on as many images of each label as the smallest label has; N on at most N. "
                    "Validation images are never dropped. Used by /train and by /v1/train when the request "
                    "gives no max_per_label.",
    )
    batch_size: int = Field(
        32, ge=1, le=4096,
        description="Images per backbone batch when embedding; also the training images per gradient step of "
                    "a head trained in epochs (mlp) when a request sets no `batch_size` head parameter.",
    )
    epochs: int = Field(
        30, ge=1, le=100_000,
        description="Passes over the training images of a head trained in epochs (mlp) when a request sets no "
                    "`epochs` head parameter. The other heads are fitted to convergence and do not use it.",
    )
    train_percentage: float = Field(
        0.9, gt=0.0, le=1.0,
        description="Share of each label used for training; the rest (1 - TRAIN_PERCENTAGE) is validation.",
    )
    download_pool_size: int = Field(16, ge=1, le=256, description="Concurrent URL downloads.")
    random_seed: int = Field(1234, ge=0, lt=2**32, description="Seed used when a request gives none.")
    api_host: str = Field("127.0.0.1", description="Address `photolabel serve` binds to.")
    api_port: int = Field(8080, ge=0, le=65535, description="Port `photolabel serve` listens on.")

    # -- the service's own -----------------------------------------------------------------
    allow_private_urls: bool = Field(
        False,
        description="Fetch URLs that resolve to private, loopback or link-local addresses "
                    "(off: a request cannot make the service reach its own network).",
    )
    max_upload_bytes: int = Field(
        20 * MiB, ge=1, description="Largest request body, and largest image or CSV fetched from a URL."
    )
    max_train_upload_bytes: int = Field(
        2 * 1024 * MiB, ge=1, description="Largest archive or manifest uploaded to POST /v1/train."
    )
    max_image_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description="Largest image (width x height).")
    infer_max_batch: int = Field(32, ge=1, description="Most images one model runs in one batch.")
    infer_max_wait_ms: float = Field(
        5.0, ge=0, description="How long the first image of a batch waits for others to join it."
    )
    infer_max_queue: int = Field(
        256, ge=1,
        description="Images waiting per model before requests are refused with 503; also the most "
                    "images one predict request may carry.",
    )
    model_cache_size: int = Field(4, ge=1, description="Loaded models kept in memory (least recently used go).")
    train_workers: int = Field(1, ge=1, description="Training jobs that run at once, each in a child process.")
    train_threads: int = Field(1, ge=1, description="CPU threads of each training job.")
    threads: int | None = Field(None, ge=1, description="CPU threads for inference (default: all cores).")
    photolabel_cache_dir: Path | None = Field(
        None, description="Embedding and backbone cache (default ~/.cache/photolabel)."
    )
    storage_root: Path | None = Field(
        None, description="Root of the buckets predict-object reads (default DATA_DIR/storage)."
    )
    tensorboard_logs_enabled: bool = Field(
        False,
        description="Write each training job's TensorBoard curves (heads trained in epochs, such as mlp: loss "
                    "and accuracy per epoch) under DATA_DIR/tensorboard/<job_id>; needs "
                    "pip install 'photolabel[tensorboard]'. Models are the same with or without.",
    )

    # models, state and shutdown
    drain_timeout_s: float = Field(
        30.0, ge=0, le=3600,
        description="On SIGTERM, `photolabel serve` first answers GET /readyz with 503 (draining), refuses new "
                    "training jobs with 503 and queues a running one again; requests already in progress get up "
                    "to this many seconds to finish before the service exits.",
    )

    # -- network, clients and authentication ---------------------------------------------------
    api_token: SecretStr | None = Field(
        None,
        description="Bearer token that training, deleting and every other change require (the header "
                    "`Authorization: Bearer <token>`); at least 16 characters. Unset (and no API_TOKEN_FILE): "
                    "no token is asked for, and `photolabel serve` listens only on a loopback address.",
    )
    api_token_file: Path | None = Field(
        None, description="A file holding the token instead of API_TOKEN (surrounding whitespace is ignored)."
    )
    predict_requires_token: bool = Field(
        False, description="Ask for the token for predictions too (POST /infer, /v1/models/{key}/predict, "
                           "/v1/models/{key}/predict-object); by default anyone who reaches the port may predict.",
    )
    no_auth: bool = Field(
        False, description="Let `photolabel serve` listen on a non-loopback address without a token "
                           "(same as --no-auth): anyone who reaches the port can then train, delete and upload.",
    )
    header_timeout_s: float = Field(
        10.0, gt=0, description="Seconds a client has to send a request's line and headers (from the connection, "
                                "or from the previous answer on a kept-alive one); then it is answered 408 and closed.",
    )
    body_timeout_s: float = Field(
        60.0, gt=0, description="Seconds a client has to send a request body once its headers are in, plus one "
                                "second for every BODY_MIN_BYTES_PER_S bytes it sends; then it is answered 408 "
                                "and closed.",
    )
    body_min_bytes_per_s: int = Field(
        16 * 1024, ge=1, description="The slowest upload (bytes per second, on average) that BODY_TIMEOUT_S waits "
                                     "for beyond its first seconds.",
    )
    fetch_request_slots: int = Field(
        8, ge=1, le=32,
        description="Requests that download URLs (POST /train, POST /infer, predict with {\"urls\"}, "
                    "predict-object) handled at once; more wait their turn (up to HTTP_TIMEOUT, then 503), so "
                    "slow downloads never hold the threads that other requests need.",
    )
    keep_uploads: bool = Field(
        False, description="Keep every uploaded or fetched training file under DATA_DIR/uploads forever "
                           "(by default they are removed once no job needs them).",
    )
    upload_retention_s: float = Field(
        86400.0, ge=0,
        description="Seconds the uploaded data of a failed job is kept, so that POST /v1/jobs/{job_id}/retry can "
                    "train again; the data of a job that succeeded is removed when it ends.",
    )

    # decode and inference deadlines
    decode_timeout_s: float = Field(
        15.0, gt=0, le=3600,
        description="Seconds one image may take to decode (in a decoding process of its own); past it the image "
                    "is answered 504 `deadline_exceeded` (an entry of the answer when a request carries several) "
                    "and its process is replaced. Other images never wait behind it.",
    )
    infer_timeout_s: float = Field(
        60.0, gt=0, le=3600,
        description="Seconds one batch of decoded images may take in the model; past it its images are answered "
                    "504 `deadline_exceeded` and the model's inference thread is replaced, so later batches start "
                    "at once.",
    )
    decode_workers: int = Field(
        2, ge=1, le=64, description="Processes that decode images for predictions at once (each one image at a time)."
    )
    max_image_frames: int = Field(
        DEFAULT_MAX_FRAMES, ge=1, le=100_000,
        description="Most frames (GIF, APNG, WebP), pages (TIFF directories) or pictures (MPO) one image may have; "
                    "only the first is decoded, and all of them together may hold at most 4 x MAX_IMAGE_PIXELS "
                    "pixels. Over it: 413 `image_too_complex`.",
    )

    # archive and CSV limits (what a training upload, or a CSV fetched for POST /train, may hold)
    max_archive_bytes: int = Field(
        DEFAULT_ARCHIVE_LIMITS.max_total_bytes, ge=1,
        description="Most bytes an uploaded archive may hold once extracted (its members' sizes together); a "
                    "larger one is refused before any of it is written.",
    )
    max_archive_members: int = Field(
        DEFAULT_ARCHIVE_LIMITS.max_members, ge=1, description="Most entries (files and folders) in an archive."
    )
    max_archive_ratio: float = Field(
        DEFAULT_ARCHIVE_LIMITS.max_ratio, ge=1,
        description="Most bytes an archive may expand to per byte of the archive file, once it expands to more "
                    f"than {DEFAULT_ARCHIVE_LIMITS.ratio_floor_bytes // MiB} MiB (a compression bomb is refused "
                    "before anything is written).",
    )
    archive_deadline_s: float = Field(
        DEFAULT_ARCHIVE_LIMITS.deadline_s, gt=0, description="Seconds the extraction of one archive may take."
    )
    max_csv_rows: int = Field(
        DEFAULT_CSV_LIMITS.max_rows, ge=1,
        description="Most rows in a CSV manifest (POST /v1/train, POST /train); more: 413 naming the line.",
    )
    max_csv_field_bytes: int = Field(
        DEFAULT_CSV_LIMITS.max_field_bytes, ge=1, le=CSV_MODULE_FIELD_LIMIT,
        description="Most bytes in one cell of a CSV manifest; more: 413 naming the line.",
    )

    def archive_limits(self) -> ArchiveLimits:
        """MAX_ARCHIVE_BYTES, MAX_ARCHIVE_MEMBERS, MAX_ARCHIVE_RATIO and ARCHIVE_DEADLINE_S as the core's limits."""
        return dataclasses.replace(DEFAULT_ARCHIVE_LIMITS, max_total_bytes=self.max_archive_bytes,
                                   max_members=self.max_archive_members, max_ratio=self.max_archive_ratio,
                                   deadline_s=self.archive_deadline_s)

    def csv_limits(self) -> CsvLimits:
        """MAX_CSV_ROWS and MAX_CSV_FIELD_BYTES as the core's limits."""
        return CsvLimits(max_rows=self.max_csv_rows, max_field_bytes=self.max_csv_field_bytes)

    @field_validator("api_token", "api_token_file", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("api_token")
    @classmethod
    def _token_long_enough(cls, token: SecretStr | None) -> SecretStr | None:
        if token is not None:
            _check_token(token.get_secret_value(), "API_TOKEN")
        return token

    @field_validator("api_token_file")
    @classmethod
    def _token_file_readable(cls, path: Path | None) -> Path | None:
        if path is not None:
            _read_token_file(path)
        return path

    @model_validator(mode="after")
    def _one_token(self) -> ServiceSettings:
        if self.api_token is not None and self.api_token_file is not None:
            raise ValueError("set API_TOKEN or API_TOKEN_FILE, not both")
        return self

    def bearer_token(self) -> str | None:
        """The token that changes (and, with PREDICT_REQUIRES_TOKEN, predictions) need; None when none is set."""
        if self.api_token is not None:
            return self.api_token.get_secret_value().strip()
        if self.api_token_file is not None:
            return _read_token_file(self.api_token_file)
        return None

    @field_validator("tensorboard_logs_enabled")
    @classmethod
    def _tensorboard_installed(cls, enabled: bool) -> bool:
        if enabled:
            from photolabel.tensorboard import require_tensorboard

            try:
                require_tensorboard()
            except ImportError as exc:
                raise ValueError(str(exc)) from None
        return enabled

    def epoch_params(self, head: str, params: Any) -> Any:
        """A request's head parameters with ``epochs`` (EPOCHS) and ``batch_size`` (BATCH_SIZE) filled in, when
        ``head`` is trained in epochs (mlp) and the request leaves them out; other heads' parameters unchanged."""
        from photolabel.heads import get_head_class, list_heads

        if not isinstance(params, Mapping) or head not in list_heads():
            return params  # TrainConfig names the problem
        names = get_head_class(head).param_names()
        if "epochs" not in names:
            return params
        defaults = {"epochs": self.epochs, "batch_size": self.batch_size}
        return {**{name: value for name, value in defaults.items() if name in names}, **params}

    @property
    def valid_fraction(self) -> float:
        """Share of each label held out for validation: ``1 - TRAIN_PERCENTAGE``."""
        return round(1.0 - self.train_percentage, 6)

    @property
    def storage_path(self) -> Path:
        return self.storage_root if self.storage_root is not None else self.data_dir / "storage"

    def fetch_options(self) -> FetchOptions:
        """Caps for every URL the service fetches: CSVs, training images, images to label."""
        return FetchOptions(
            timeout=self.http_timeout,
            max_bytes=self.max_upload_bytes,
            pool_size=self.download_pool_size,
            allow_private=self.allow_private_urls,
        )
