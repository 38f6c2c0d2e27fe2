"""Predictions under ``/v1``: ``POST /v1/models/{key}/predict`` (uploaded images, image URLs or one raw
image) and ``POST /v1/models/{key}/predict-object`` (an image in storage).
"""

from __future__ import annotations

import json
from typing import IO, Any

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from photolabel.adapters.http.deps import Service, ServiceDep, resolve_model
from photolabel.adapters.http.errors import (
    BadJsonError,
    InvalidRequestError,
    NotFoundError,
    UnsupportedMediaTypeError,
)
from photolabel.adapters.http.predicting import predict_items, predict_one, prediction_entry, raise_for_bad_input
from photolabel.adapters.http.schemas import (
    ErrorResponse,
    ModelKey,
    ObjectRef,
    PredictResponse,
    PredictUrls,
    error_responses,
)
from photolabel.dataset import BadInput
from photolabel.embedding import ImageInput
from photolabel.errors import FetchTooLargeError, PhotolabelError

router = APIRouter(prefix="/v1", tags=["models"])

#: an image past DECODE_TIMEOUT_S or INFER_TIMEOUT_S
_DEADLINE = {504: {"model": ErrorResponse, "description": "The image took longer than the server allows to decode "
                   "(DECODE_TIMEOUT_S) or to label (INFER_TIMEOUT_S) (`deadline_exceeded`)."}}

_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["images"], "properties": {
                    "images": {"type": "array", "items": {"type": "string", "format": "binary"}}}},
            },
            "application/json": {
                "schema": {"type": "object", "required": ["urls"], "properties": {
                    "urls": {"type": "array", "items": {"type": "string"}, "minItems": 1}}},
                "example": {"urls": ["https://raw.githubusercontent.com/allenday/static-transfer-learning/"
                                     "master/example-data/sweater/1042.jpg"]},
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}


@router.post("/models/{key}/predict", response_model=PredictResponse, openapi_extra=_PREDICT_BODY,
             responses={**error_responses(400, 404, 409, 413, 415, 422, 503), **_DEADLINE},
             summary="Label images: multipart `images`, JSON `{urls}`, or one raw image body")
async def predict(key: ModelKey, request: Request, service: ServiceDep) -> dict[str, Any]:
    """One entry per image, in order: a prediction or an error. When the request carries
    exactly one image and it fails, the answer is that error's status (413, 415, 422 or 504)."""
    record = await run_in_threadpool(resolve_model, service, key)
    items = await _read_predict_body(request, service)
    results = await predict_items(service, record, items)
    if len(results) == 1 and isinstance(results[0], BadInput):
        raise_for_bad_input(results[0])
    return {"model_id": record.model_id, "predictions": [prediction_entry(r) for r in results]}


async def _read_predict_body(request: Request, service: Service) -> list[ImageInput | BadInput]:
    settings = service.settings
    limit = settings.infer_max_queue
    media_type = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    items: list[ImageInput | BadInput] = []
    if media_type == "multipart/form-data":
        form = await request.form(max_files=limit + 1, max_fields=limit + 16)
        try:
            uploads = form.getlist("images")
            if not uploads:
                raise InvalidRequestError("images: no file; send one or more files in the form field 'images'")
            for index, upload in enumerate(uploads):
                if isinstance(upload, str):
                    items.append(BadInput(f"images[{index}]", "a text field, not a file", "bad_image"))
                    continue
                items.append(ImageInput(source=upload.filename or f"images[{index}]", data=await upload.read()))
        finally:
            await form.close()
    elif media_type == "application/json" or media_type.endswith("+json"):
        try:
            document = json.loads(await request.body())
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise BadJsonError(f"the body is not valid JSON ({type(exc).__name__}: {exc})") from None
        try:
            urls = PredictUrls.model_validate(document).urls
        except ValidationError as exc:
            raise RequestValidationError(
                [dict(error, loc=("body", *error["loc"])) for error in exc.errors(include_url=False)]
            ) from None
        if len(urls) > limit:
            raise InvalidRequestError(f"urls: {len(urls)} URLs; at most {limit} per request (INFER_MAX_QUEUE)")
        bodies = await run_in_threadpool(service.fetch_many, urls)
        for url, body in zip(urls, bodies):
            if isinstance(body, PhotolabelError):
                items.append(BadInput(url, str(body), body.code))
            else:
                items.append(ImageInput(source=url, data=body))
    elif media_type.startswith("image/"):
        items.append(ImageInput(source="<body>", data=await request.body()))
    else:
        raise UnsupportedMediaTypeError(
            f"Content-Type {media_type or 'none'} is not accepted here; send multipart/form-data with 'images' "
            "files, application/json {\"urls\": [...]}, or one image with an image/* type")
    if len(items) > limit:
        raise InvalidRequestError(f"{len(items)} images; at most {limit} per request (INFER_MAX_QUEUE)")
    return items


@router.post("/models/{key}/predict-object", response_model=PredictResponse,
             responses={**error_responses(404, 409, 413, 415, 422, 503), **_DEADLINE},
             summary="Label an image in storage: a cloud function's {bucket, filename}, or a storage {uri}")
async def predict_object(key: ModelKey, body: ObjectRef, service: ServiceDep) -> dict[str, Any]:
    """`bucket` is a folder under STORAGE_ROOT and `filename` a relative path inside it. `uri`
    may be an http(s) URL or a storage URI: s3://, gs://, az://, memory:// (the cloud ones need
    `photolabel[cloud]` on the server, and read with the server's credentials)."""
    record = await run_in_threadpool(resolve_model, service, key)
    if body.uri is not None:
        name = body.uri
        data = await run_in_threadpool(service.read_object, body.uri)
    else:
        assert body.bucket is not None and body.filename is not None
        name = f"{body.bucket}/{body.filename}"
        data = await run_in_threadpool(_read_bucket_object, service, body.bucket, body.filename)
    result = await predict_one(service, record, ImageInput(source=name, data=data))
    return {"model_id": record.model_id, "predictions": [prediction_entry(result)]}


def _read_bucket_object(service: Service, bucket: str, filename: str) -> bytes:
    root = service.settings.storage_path.resolve()
    bucket_dir = (root / bucket).resolve()
    if not bucket_dir.is_relative_to(root) or bucket_dir == root:
        raise InvalidRequestError(f"bucket {bucket!r} is not a folder under STORAGE_ROOT", code="bad_path")
    if not bucket_dir.is_dir():
        raise NotFoundError(f"no bucket {bucket!r}")
    target = (bucket_dir / filename).resolve()
    if not target.is_relative_to(bucket_dir):  # a symbolic link that leads out of the bucket
        raise InvalidRequestError(f"{bucket}/{filename} leads outside the bucket", code="bad_path")
    if not target.is_file():
        raise NotFoundError(f"no object {filename!r} in bucket {bucket!r}")
    return _read_capped(target.open("rb"), f"{bucket}/{filename}", service.settings.max_upload_bytes)


def _read_capped(handle: IO[bytes], name: str, max_bytes: int) -> bytes:
    with handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise FetchTooLargeError(f"{name} is over MAX_UPLOAD_BYTES={max_bytes}")
    return data
