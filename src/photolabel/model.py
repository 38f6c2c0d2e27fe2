"""A trained model, loaded once, predicting batches: the one inference interface."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from photolabel import storage
from photolabel.artifact import ModelCard, ModelFiles, open_model_dir
from photolabel.backbones import Backbone, get_backbone
from photolabel.config import RUNTIME_DEFAULTS, Runtime, merge_overrides
from photolabel.dataset import BadInput
from photolabel.embedding import ImageInput, check_pixels, embed_images
from photolabel.errors import FetchError, ModelError, PhotolabelError
from photolabel.heads import Head, get_head_class

ImageLike = ImageInput | bytes | str | Path | np.ndarray


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
    """A model directory, loaded: its card (``model.json``), head and backbone.

    Use :func:`load_model` (or :meth:`Model.load`) once, then :meth:`predict_batch`
    as often as needed; the backbone session is shared per process. A model reads
    local files, bytes and arrays only: URIs (http, s3, ...) are read by
    :mod:`photolabel.storage` before they reach it.
    """

    def __init__(self, files: ModelFiles, head: Head, *, runtime: Runtime = RUNTIME_DEFAULTS) -> None:
        self.path = files.path
        self.files = files
        self.card: ModelCard = files.card
        self.metrics = files.metrics
        self.lineage = files.lineage
        self.labels: tuple[str, ...] = files.card.labels
        self.model_id: str = files.card.model_id
        self.head = head
        self.runtime = runtime
        self._backbone: Backbone | None = None

    @classmethod
    def load(cls, path: str | Path, *, runtime: Runtime | None = None, threads: int | None = None,
             cache_dir: str | Path | None = None, max_pixels: int | None = None, verify: bool = True) -> Model:
        """Load a model directory (a path or a storage URI such as ``s3://bucket/models/x``); see
        :func:`photolabel.artifact.read_model_dir` for the checks.

        ``threads``, ``cache_dir`` and ``max_pixels`` override single fields of ``runtime``.
        """
        runtime = merge_overrides(runtime or RUNTIME_DEFAULTS, threads=threads, cache_dir=cache_dir,
                                  max_pixels=max_pixels)
        with open_model_dir(path, verify=verify) as files:
            card = files.card
            try:
                head = get_head_class(card.head.name).load(Path(files.path) / "head", card.head.to_dict())
            except (ValueError, OSError) as exc:
                raise ModelError(f"{path}: cannot load the head ({exc})") from None
        return cls(files, head, runtime=runtime)

    @property
    def cache_dir(self) -> Path | None:
        return self.runtime.cache_dir

    @property
    def max_pixels(self) -> int:
        return self.runtime.max_pixels

    @property
    def backbone(self) -> Backbone:
        if self._backbone is None:
            spec = self.card.backbone
            backbone = get_backbone(spec.name, threads=self.runtime.threads, cache_dir=self.runtime.cache_dir)
            if backbone.hash != spec.hash:
                raise ModelError(
                    f"{self.path}: trained with backbone {spec.name} hash {spec.hash[:16]}…, "
                    f"but the installed one has hash {backbone.hash[:16]}…; reinstall the same weights "
                    "package or retrain"
                )
            self._backbone = backbone
        return self._backbone

    def __repr__(self) -> str:
        return (f"<photolabel.Model {self.model_id[:12]} labels={list(self.labels)} "
                f"backbone={self.card.backbone.name} head={self.card.head.name}>")

    # -- predictions -----------------------------------------------------------------------
    def predict_embeddings(self, vectors: np.ndarray) -> np.ndarray:
        """Probabilities (N, C) for embeddings (N, D)."""
        if len(vectors) == 0:
            return np.zeros((0, len(self.labels)))
        return self.head.predict_proba(np.asarray(vectors))

    def predict_batch(self, images: Sequence[ImageLike], *, batch_size: int | None = None,
                      progress: bool | None = None) -> list[Prediction | BadInput]:
        """One result per input, in order: a :class:`Prediction`, or a :class:`BadInput` saying why not.

        Inputs are local paths (or ``file://`` URLs), raw bytes, RGB ``uint8`` arrays
        (H, W, 3) or :class:`ImageInput`. Other URIs are refused per input: read them with
        :func:`photolabel.inputs.read_images` first.
        """
        inputs: list[ImageInput | None] = []
        results: list[Prediction | BadInput | None] = [None] * len(images)
        for index, image in enumerate(images):
            if isinstance(image, BadInput):  # refused upstream (an unreadable URI): passed through in place
                inputs.append(None)
                results[index] = image
                continue
            try:
                inputs.append(as_image_input(image))
            except PhotolabelError as exc:
                inputs.append(None)
                results[index] = BadInput(_name_of(image), str(exc), exc.code)
        live = [i for i, item in enumerate(inputs) if item is not None]
        embedded = embed_images(
            [inputs[i] for i in live],  # type: ignore[misc]
            self.backbone,
            batch_size=batch_size or self.runtime.batch_size,
            workers=self.runtime.workers,
            max_pixels=self.runtime.max_pixels,
            progress=self.runtime.progress if progress is None else progress,
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
    """Local paths, ``file://`` URLs, raw bytes and RGB arrays -> :class:`ImageInput`.

    Raises:
        FetchError: another URI scheme (the model reads no network; see :mod:`photolabel.storage`).
        ImageError: an array that is not RGB uint8 (H, W, 3).
    """
    if isinstance(image, ImageInput):
        return image
    if isinstance(image, (bytes, bytearray, memoryview)):
        return ImageInput(source="<bytes>", data=bytes(image))
    if isinstance(image, np.ndarray):
        return ImageInput(source="<array>", pixels=check_pixels(image, "<array>"))
    text = str(image)
    if storage.is_local(text):
        return ImageInput(source=text, path=storage.local_path(text))
    scheme = storage.scheme_of(text)
    if scheme:
        raise FetchError(f"{text}: a model reads local files, bytes and arrays; read {scheme}:// URIs with "
                         "photolabel.inputs.read_images() first")
    return ImageInput(source=text, path=Path(text))


def _name_of(image: ImageLike) -> str:
    if isinstance(image, ImageInput):
        return image.source
    if isinstance(image, (bytes, bytearray, memoryview)):
        return "<bytes>"
    if isinstance(image, np.ndarray):
        return "<array>"
    return str(image)


def load_model(path: str | Path, **kwargs: Any) -> Model:
    """Load the model directory at ``path``. Keyword arguments go to :meth:`Model.load`."""
    return Model.load(path, **kwargs)
