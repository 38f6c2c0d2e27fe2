"""The service's configuration: environment variables, read once when the app is created.

Names follow the static-transfer-learning service (no prefix): ``DATA_DIR``, ``HTTP_TIMEOUT``, ``RANDOM_SEED``,
``API_PORT`` and so on; the service adds its own limits (``MAX_UPLOAD_BYTES``,
``INFER_MAX_BATCH``, ...). Values are validated at start-up, so a bad setting stops the
service with a message that names the variable instead of failing on a request.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from photolabel.fetch import FetchOptions
from photolabel.images import DEFAULT_MAX_PIXELS

MiB = 1024**2


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
