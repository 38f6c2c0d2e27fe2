"""A trained model, loaded once, predicting batches: the one inference interface."""

from __future__ import annotations

import os
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
from photolabel.errors import FetchError, ImageError, ModelError, PhotolabelError
from photolabel.finetune import finetuned_backbone, read_tail
from photolabel.heads import Head, get_head_class
from photolabel.inputs import as_image_list, describe_kind, is_pil_image, pil_to_pixels, read_images
from photolabel.openset import UNKNOWN_LABEL, Postprocessor

#: One image: a local path or ``file://`` URL, raw bytes, an RGB ``uint8`` array (H, W, 3), a PIL image,
#: or an :class:`ImageInput`. (:meth:`Model.predict`, :meth:`Model.predict_proba` and :meth:`Model.embed`
#: also read http(s) and bucket URIs, through :mod:`photolabel.storage`.)
ImageLike = ImageInput | bytes | str | Path | np.ndarray | Any


@dataclass(frozen=True)
class Prediction:
    """The answer for one image: its label, every label's probability, and hashes.

    ``label`` is the answer: the most probable label, or ``"unknown"``
    (:data:`~photolabel.openset.UNKNOWN_LABEL`) when the model answers unknown (the image is
    unlike its training images, or its top probability is too low). ``best`` is always the
    most probable label and ``unknown`` says which case it is (so a class that is itself
    named "unknown" stays distinguishable). ``scores`` are the calibrated probabilities of the
    model's labels, given in both cases; ``probability`` is the score of ``best``.
    """

    image: str
    sha256: str
    label: str
    scores: dict[str, float]
    model_id: str
    best: str = ""
    unknown: bool = False

    def __post_init__(self) -> None:
        if not self.best:
            object.__setattr__(self, "best", self.label)

    @property
    def probability(self) -> float:
        return self.scores[self.best]

    def top(self, k: int) -> list[tuple[str, float]]:
        ranked = sorted(self.scores.items(), key=lambda item: (-item[1], item[0]))
        return ranked[: max(1, k)]

    def to_dict(self, top_k: int | None = None) -> dict[str, Any]:
        scores = dict(self.top(top_k)) if top_k else dict(self.scores)
        return {
            "image": self.image,
            "sha256": self.sha256,
            "label": self.label,
            "best": self.best,
            "unknown": self.unknown,
            "scores": scores,
            "model_id": self.model_id,
        }


class Model:
    """A model directory, loaded: its card (``model.json``), head and backbone.

    Use :func:`load_model` (or :meth:`Model.load`) once, then :meth:`predict` (one image or a
    list; raises on a bad one), :meth:`predict_batch` (a result or a reason per input),
    :meth:`predict_proba` or :meth:`embed` as often as needed; the backbone session is shared
    per process. :meth:`predict_batch`, which the service runs, reads local files, bytes, arrays
    and PIL images only; :meth:`predict`, :meth:`predict_proba` and :meth:`embed` first read URIs
    (http, s3, ...) through :mod:`photolabel.storage` with the runtime's fetch limits.
    """

    def __init__(self, files: ModelFiles, head: Head, *, runtime: Runtime = RUNTIME_DEFAULTS,
                 post: Postprocessor | None = None) -> None:
        self.path = files.path
        self.files = files
        self.card: ModelCard = files.card
        self.metrics = files.metrics
        self.lineage = files.lineage
        self.labels: tuple[str, ...] = files.card.labels
        self.model_id: str = files.card.model_id
        self.head = head
        #: the temperature and the unknown tests that follow the head (none for models trained without them)
        self.post = post or Postprocessor()
        self.runtime = runtime
        self._backbone: Backbone | None = None
        #: a fine-tuned model's tail (``finetune/tail.onnx``), read at load; None for other models
        self._tuned_tail: bytes | None = None

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
            try:
                post = Postprocessor.from_card(card, Path(files.path))
            except (ValueError, KeyError, TypeError, OSError) as exc:
                raise ModelError(f"{path}: cannot load the calibration or the unknown answer ({exc})") from None
            tuned_tail = read_tail(card, Path(files.path), where=path)
        model = cls(files, head, runtime=runtime, post=post)
        model._tuned_tail = tuned_tail
        return model

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
            if self._tuned_tail is not None:  # fine-tuned: the installed trunk, then the model's tail
                backbone = finetuned_backbone(backbone, self.card.finetune or {}, self._tuned_tail)
            if backbone.hash != spec.hash:
                raise ModelError(
                    f"{self.path}: trained with backbone {spec.name} hash {spec.hash[:16]}…, "
                    f"but the installed one has hash {backbone.hash[:16]}…; reinstall the same weights "
                    "package or retrain"
                )
            self._backbone = backbone
        return self._backbone

    def __getstate__(self) -> dict[str, Any]:
        """Pickled without the backbone's session, which is loaded again (and checked) when next used."""
        state = dict(self.__dict__)
        state["_backbone"] = None
        return state

    def __repr__(self) -> str:
        return (f"<photolabel.Model {self.model_id[:12]} labels={list(self.labels)} "
                f"backbone={self.card.backbone.name} head={self.card.head.name} path={str(self.path)!r}>")

    # -- predictions -----------------------------------------------------------------------
    def predict_embeddings(self, vectors: np.ndarray) -> np.ndarray:
        """Probabilities (N, C) for embeddings (N, D): the head's, calibrated when the model has a temperature."""
        return self.post.predict_proba(self.head, vectors, len(self.labels))

    def unknown_embeddings(self, vectors: np.ndarray, probabilities: np.ndarray | None = None) -> np.ndarray:
        """Which embeddings (N, D) the model answers unknown for (bool, N); all False for a model trained
        without the unknown answer. ``probabilities``: their :meth:`predict_embeddings`, if already computed."""
        if probabilities is None:
            probabilities = self.predict_embeddings(vectors)
        return self.post.is_unknown(np.asarray(vectors, dtype=np.float64), probabilities)

    def predict_batch(self, images: Sequence[ImageLike] | ImageLike, *, batch_size: int | None = None,
                      progress: bool | None = None) -> Any:
        """One result per input, in order: a :class:`Prediction`, or a :class:`BadInput` saying why not.
        A single image (not in a list) gives a single result.

        Inputs are local paths (or ``file://`` URLs), raw bytes, RGB ``uint8`` arrays
        (H, W, 3), PIL images or :class:`ImageInput`. Other URIs are refused per input (this
        method reads no network): read them with :func:`photolabel.inputs.read_images` first,
        or use :meth:`predict`.
        """
        images, single = as_image_list(images)
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
        unknown = self.unknown_embeddings(embedded.vectors, probabilities)
        for row, local in enumerate(embedded.indices):
            index = live[local]
            scores = {label: float(p) for label, p in zip(self.labels, probabilities[row])}
            best = self.labels[int(np.argmax(probabilities[row]))]
            results[index] = Prediction(
                image=inputs[index].source,  # type: ignore[union-attr]
                sha256=embedded.sha256[local] or "",
                label=UNKNOWN_LABEL if unknown[row] else best,
                scores=scores,
                model_id=self.model_id,
                best=best,
                unknown=bool(unknown[row]),
            )
        for local, problem in embedded.failures:
            results[live[local]] = problem
        return results[0] if single else results

    def predict(self, images: Sequence[ImageLike] | ImageLike, **kwargs: Any) -> Any:
        """The :class:`Prediction` of one image, or a list of them for a list of images.

        Takes what :meth:`predict_batch` takes, and also http(s) and bucket URIs (read through
        :mod:`photolabel.storage` with the runtime's fetch limits). Raises on the first input that
        fails (an :class:`~photolabel.errors.ImageError` naming it). ``kwargs``: ``batch_size``, ``progress``.
        """
        items, single = as_image_list(images)
        results = self.predict_batch(self._resolved(items), **kwargs)
        _raise_first_bad(results)
        return results[0] if single else results

    def predict_proba(self, images: Sequence[ImageLike] | ImageLike, **kwargs: Any) -> np.ndarray:
        """Probabilities in the order of :attr:`labels`: shape (C,) for one image, (N, C) for a list."""
        items, single = as_image_list(images)
        predictions = self.predict(items, **kwargs)
        rows = np.array([[p.scores[label] for label in self.labels] for p in predictions], dtype=np.float64)
        return rows[0] if single else rows.reshape(len(items), len(self.labels))

    def embed(self, images: Sequence[ImageLike] | ImageLike, *, batch_size: int | None = None,
              progress: bool | None = None, use_cache: bool = False) -> np.ndarray:
        """The backbone's embeddings (float32) of the images the model would classify: shape (D,) for one
        image, (N, D) for a list; the vectors :meth:`predict_embeddings` takes. For a fine-tuned model
        they come out of its tuned tail.

        Takes what :meth:`predict` takes and raises on the first input that fails. ``use_cache``: look
        vectors up in (and add them to) the embedding cache under the runtime's ``cache_dir``, by image sha256.
        """
        items, single = as_image_list(images)
        results: list[Any] = self._resolved(items)
        inputs: list[ImageInput] = []
        for image in results:
            if isinstance(image, BadInput):
                _raise_first_bad([image])
            inputs.append(as_image_input(image))
        cache = None
        if use_cache:
            from photolabel.cache import EmbeddingCache, resolve_cache_dir

            cache = EmbeddingCache(resolve_cache_dir(self.runtime.cache_dir), self.backbone.hash,
                                   self.backbone.embedding_dim)
        embedded = embed_images(inputs, self.backbone, cache=cache,
                                batch_size=batch_size or self.runtime.batch_size, workers=self.runtime.workers,
                                max_pixels=self.runtime.max_pixels,
                                progress=self.runtime.progress if progress is None else progress)
        _raise_first_bad([problem for _, problem in embedded.failures])
        return embedded.vectors[0] if single else embedded.vectors

    def _resolved(self, items: list[Any]) -> list[Any]:
        """``items`` with remote URIs read (the runtime's fetch limits); a failed read becomes a BadInput."""
        return read_images([os.fspath(i) if isinstance(i, Path) else i for i in items], self.runtime.fetch)


def _raise_first_bad(results: Sequence[Any]) -> None:
    for result in results:
        if isinstance(result, BadInput):
            raise ImageError(result.message)


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
    if is_pil_image(image):
        return ImageInput(source="<PIL image>", pixels=pil_to_pixels(image))
    if not isinstance(image, (str, os.PathLike)):
        raise ImageError(f"{describe_kind(image)}: expected an image (a path, URL, bytes, PIL image or RGB uint8 "
                         "array)")
    text = os.fspath(image)
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
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    return describe_kind(image)


def load_model(path: str | Path, **kwargs: Any) -> Model:
    """Load the model directory at ``path``. Keyword arguments go to :meth:`Model.load`."""
    return Model.load(path, **kwargs)
