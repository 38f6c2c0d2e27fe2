"""The service's configuration: environment variables, read once when the app is created.

Names follow seed 002 (no prefix): ``DATA_DIR``, ``HTTP_TIMEOUT``, ``RANDOM_SEED``,
``API_PORT`` and so on; the service adds its own limits (``MAX_UPLOAD_BYTES``,
``INFER_MAX_BATCH``, ...). Values are validated at start-up, so a bad setting stops the
service with a message that names the variable instead of failing on a request.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from photolabel.fetch import FetchOptions
from photolabel.images import DEFAULT_MAX_PIXELS

MiB = 1024**2


class ServiceSettings(BaseSettings):
    """Settings of ``photolabel serve``; each field is read from the variable of the same name in capitals."""

    model_config = SettingsConfigDict(env_prefix="", case_sensitive=False, extra="ignore", frozen=True)

    # -- seed 002's variables ------------------------------------------------------------------
    data_dir: Path = Field(Path("data"), description="Folder for the job database, uploads and models.")
    http_timeout: float = Field(120.0, gt=0, description="Seconds before a URL download gives up.")
    data_limit: int = Field(
        0, ge=0,
        description="Seed 002's 'max images per label'. Accepted for compatibility but not used yet: "
                    "every listed image is trained on.",
    )
    batch_size: int = Field(32, ge=1, le=4096, description="Images per backbone batch when embedding.")
    epochs: int = Field(
        30, ge=0,
        description="Accepted for seed 002 compatibility and ignored: photolabel's heads are fitted to "
                    "convergence on embeddings by deterministic solvers, not trained in epochs.",
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
