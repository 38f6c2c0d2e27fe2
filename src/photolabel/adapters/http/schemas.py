"""Request and response models of the service (they make /api/doc useful), and the path parameters
that several routes share.

Routes declare their bodies and answers with these; nothing here knows about a request.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from fastapi import Path as PathParam
from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator


class ErrorDetail(BaseModel):
    code: str = Field(description="Machine-readable reason, e.g. `not_an_image`, `queue_full`.")
    message: str = Field(description="One line saying what was received and what to do.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": text}
    for status, text in {
        400: "Malformed JSON (`bad_json`) or a hash mismatch (`sha1_mismatch`).",
        404: "Unknown model or job.",
        409: "The model's job has not finished (`model_not_ready`).",
        413: "Body or image over MAX_UPLOAD_BYTES or MAX_IMAGE_PIXELS (`too_large`, `image_too_large`).",
        415: "Not an image (`not_an_image`).",
        422: "Invalid field, undecodable image (`bad_image`) or unreachable URL (`fetch_failed`).",
        503: "Inference queue full (`queue_full`); retry after the Retry-After header's seconds.",
    }.items()
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` of a route that may answer these error statuses."""
    return {status: _ERRORS[status] for status in statuses}


_SHA1_PATTERN = r"^[0-9a-fA-F]{40}$"
_KEY_PATTERN = r"^[0-9a-fA-F]{8,64}$"

_SEED_TRAIN_EXAMPLE = {
    "metadata": {"random_seed": 1234},
    "model": {"uri": "gs://test/1"},
    "csv": {
        "url": "https://raw.githubusercontent.com/allenday/static-transfer-learning/master/example-data/train-tiny.csv",
        "sha1": "9abcd53b4bdd2f20cbf6f3ad3b17ee05b58c0fc9",
    },
}
_SEED_INFER_EXAMPLE = {
    "model": {"uri": "gs://static-transfer-learning/my-model", "sha1": "8c2b21181abce83bf795363306a545cf1e0353fd"},
    "image": {
        "url": "https://raw.githubusercontent.com/allenday/static-transfer-learning/master/example-data/sweater/1042.jpg"
    },
}


class TrainMetadata(BaseModel):
    random_seed: int | None = Field(None, description="Seed of the validation split and the head, 0 to 4294967295 "
                                                      "(default RANDOM_SEED).")


class CsvRef(BaseModel):
    url: str = Field(description="http(s) URL of a CSV of `image_url,label[,sha1]` rows.", max_length=4096)
    sha1: str = Field(pattern=_SHA1_PATTERN, description="sha1 of the CSV file's bytes; checked after download.")


class ModelUri(BaseModel):
    uri: str = Field("", max_length=4096, description="Where the seed would store the model; recorded only.")


class TrainRequest(BaseModel):
    """The static-transfer-learning service's training request."""

    model_config = ConfigDict(json_schema_extra={"examples": [_SEED_TRAIN_EXAMPLE]})

    metadata: TrainMetadata = Field(default_factory=TrainMetadata)
    csv: CsvRef
    model: ModelUri = Field(default_factory=ModelUri)


class TrainStatus(BaseModel):
    """The static-transfer-learning service's answer: the model's id, and where its training stands."""

    model_config = ConfigDict(json_schema_extra={
        "examples": [{"model_sha1": "9474ef2130cf215dd9892decba8e0d973fc2f003", "status": "new"}]})

    model_sha1: str = Field(description="sha1 of the CSV's sha1 and the training parameters; the model's key.")
    status: Literal["new", "in_progress", "ready", "error"]
    error: ErrorDetail | None = Field(None, description="Only when status is `error`.")


class InferModelRef(BaseModel):
    uri: str = Field("", max_length=4096, description="The seed's model URI; not used (models are local).")
    sha1: str = Field(pattern=_KEY_PATTERN, description="`model_sha1` from /train (or a model id).")


class InferImageRef(BaseModel):
    url: str = Field(validation_alias=AliasChoices("url", "uri"), max_length=4096,
                     description="http(s) URL of the image (the seed's docs also call it `uri`).")


class InferRequest(BaseModel):
    """The static-transfer-learning service's inference request."""

    model_config = ConfigDict(json_schema_extra={"examples": [_SEED_INFER_EXAMPLE]})

    model: InferModelRef
    image: InferImageRef


class JobCreated(BaseModel):
    job_id: str
    model_sha1: str = Field(description="The same as job_id (the static-transfer-learning service's name for it).")
    status: Literal["queued", "in_progress", "ready", "error"]
    model_id: str | None = None


class JobView(BaseModel):
    job_id: str
    model_sha1: str
    kind: str
    status: Literal["queued", "in_progress", "ready", "error"]
    stage: str
    progress: float = Field(description="Fraction done, 0 to 1.")
    error: ErrorDetail | None
    model_id: str | None
    attempts: int
    created_at: str
    updated_at: str


class JobList(BaseModel):
    jobs: list[JobView]


class ModelSummary(BaseModel):
    model_id: str
    job_id: str | None
    labels: list[str]
    backbone: str
    head: str
    uri: str | None
    created_at: str
    validation_accuracy: float | None = Field(description="Accuracy on the validation split, if it had one.")


class ModelList(BaseModel):
    models: list[ModelSummary]


class ModelDetails(BaseModel):
    model_id: str
    job_id: str | None
    uri: str | None
    created_at: str
    labels: list[str]
    backbone: dict[str, Any] = Field(description="name, hash, embedding size and preprocessing.")
    head: dict[str, Any]
    config: dict[str, Any]
    manifest_sha256: str | None
    metrics: dict[str, Any] = Field(description="training and validation: accuracy, per-class precision/recall/F1, "
                                                "confusion_matrix (rows true, columns predicted).")
    lineage: dict[str, Any] = Field(description="manifest hash, split rule, counts; `n_images` instead of the list.")
    calibration: dict[str, Any] | None = Field(None, description="The temperature fitted on the validation images; "
                                                                 "null for a model trained without calibration.")
    unknown: dict[str, Any] | None = Field(None, description="When the model answers unknown: its thresholds and "
                                                             "the rule; null for a model trained without it.")
    photolabel_version: str | None = None


class ImagePrediction(BaseModel):
    image: str
    sha256: str
    label: str = Field(description='The answer: the most probable label, or "unknown" when the image is unlike the '
                                   "model's training images or the model is not confident enough.")
    best: str = Field(description="The most probable label, even when `label` is \"unknown\".")
    unknown: bool = Field(description="True when the model answers unknown (models trained with `unknown` on).")
    scores: dict[str, float] = Field(description="Every label's (calibrated) probability; given when unknown too.")


class ImageFailure(BaseModel):
    image: str
    error: ErrorDetail


class PredictResponse(BaseModel):
    model_id: str
    predictions: list[ImagePrediction | ImageFailure]


class PredictUrls(BaseModel):
    urls: list[Annotated[str, Field(max_length=4096)]] = Field(min_length=1)


_BUCKET = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,221}$")


class ObjectRef(BaseModel):
    """A cloud function's body ``{bucket, filename}``, or ``{uri}`` for a storage URI."""

    model_config = ConfigDict(json_schema_extra={"examples": [
        {"bucket": "cmpsc445-uploads", "filename": "3001-BBA14BB7-DA8A-4BCD-BF88-0F4CEA5C1ADC.jpeg"},
        {"uri": "gs://my-bucket/photos/1042.jpg"},
    ]})

    bucket: str | None = Field(None, description="A folder directly under STORAGE_ROOT.")
    filename: str | None = Field(None, max_length=1024, description="Path of the object inside the bucket.")
    uri: str | None = Field(None, max_length=4096,
                            description="fsspec URL (gs://, s3://, az://, memory://) or http(s) URL; needs fsspec.")

    @field_validator("bucket")
    @classmethod
    def _plain_bucket(cls, value: str | None) -> str | None:
        if value is not None and (not _BUCKET.match(value) or ".." in value):
            raise ValueError("a bucket is one folder name: letters, digits, '.', '_', '-', no '..'")
        return value

    @field_validator("filename")
    @classmethod
    def _relative_filename(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if (not value or "\\" in value or "\x00" in value or value.startswith("/")
                or any(part in (".", "..") for part in value.split("/"))):
            raise ValueError("must be a relative path inside the bucket, without '..', '.', '\\' or a leading '/'")
        return value

    @model_validator(mode="after")
    def _one_form(self) -> ObjectRef:
        has_object = self.bucket is not None or self.filename is not None
        if self.uri is not None and has_object:
            raise ValueError("give either bucket and filename, or uri, not both")
        if self.uri is None and (self.bucket is None or self.filename is None):
            raise ValueError("give bucket and filename (an object under STORAGE_ROOT), or uri")
        return self


ModelKey = Annotated[str, PathParam(max_length=128,
                                    description="Model id, job id (model_sha1) or a unique prefix of 8+ hex digits.")]
JobId = Annotated[str, PathParam(max_length=128, description="job_id (= model_sha1)")]
