"""Predictions as the prediction routes (seed ``/infer`` and ``/v1/models/{key}/predict*``) share them:
images through a model's micro-batcher, and each result as a JSON entry or an error answer.
"""

from __future__ import annotations

from typing import Any, NoReturn

from photolabel.adapters.http.deps import Service
from photolabel.adapters.http.errors import ApiError, status_of
from photolabel.adapters.http.store import ModelRecord
from photolabel.dataset import BadInput
from photolabel.embedding import ImageInput
from photolabel.model import Prediction


def prediction_entry(result: Prediction | BadInput) -> dict[str, Any]:
    """One entry of a ``predictions`` list: the label ("unknown" when the model answers unknown), the best
    label, the unknown flag and the scores, or the image's error."""
    if isinstance(result, BadInput):
        return {"image": result.source, "error": {"code": result.code, "message": result.message}}
    return {"image": result.image, "sha256": result.sha256, "label": result.label, "best": result.best,
            "unknown": result.unknown, "scores": result.scores}


def raise_for_bad_input(bad: BadInput) -> NoReturn:
    """Answer with the error of the one image a request carried (413, 415, 422 or 504 by its code)."""
    raise ApiError(bad.message, code=bad.code, status=status_of(bad.code))


async def predict_items(service: Service, record: ModelRecord,
                        items: list[ImageInput | BadInput]) -> list[Prediction | BadInput]:
    """Run the live items through the model's batcher; BadInputs pass through in place.

    Each image is decoded first in the service's decoding processes (DECODE_WORKERS), concurrently
    and within DECODE_TIMEOUT_S, then labelled in a batch within INFER_TIMEOUT_S; an image that
    fails either way gets its own :class:`BadInput` (``deadline_exceeded`` past a deadline) and
    never the others'.
    """
    live = [item for item in items if isinstance(item, ImageInput)]
    answers: list[Prediction | BadInput] = []
    if live:
        settings = service.settings
        predictors = service.predictors
        batcher = await predictors.get(record.model_id, record.path)
        batcher.check_room(len(live))  # before decoding: a full queue is refused at once
        draft_size = await batcher.draft_size()
        pool = predictors.decode_pool(settings.decode_workers)

        async def decode(images: list[ImageInput]) -> list[ImageInput | BadInput]:
            return await pool.decode_many(images, timeout_s=settings.decode_timeout_s,
                                          max_pixels=settings.max_image_pixels,
                                          max_frames=settings.max_image_frames, draft_size=draft_size)

        answers = await batcher.predict_many(live, timeout_s=settings.infer_timeout_s, decode=decode)
    results = iter(answers)
    return [item if isinstance(item, BadInput) else next(results) for item in items]


async def predict_one(service: Service, record: ModelRecord, image: ImageInput) -> Prediction:
    """The prediction for one image; a bad image is the request's error (see :func:`raise_for_bad_input`)."""
    (result,) = await predict_items(service, record, [image])
    if isinstance(result, BadInput):
        raise_for_bad_input(result)
    return result
