"""``photolabel.Classifier``: photolabel's training as a scikit-learn estimator.

``X`` is a list (or array) of images: paths or URLs, bytes, PIL images or RGB ``uint8`` arrays
(H, W, 3); ``y`` their labels (strings or integers). ``fit`` trains exactly what
:func:`photolabel.train` trains on the same images and settings (the model is kept in memory,
written only to a temporary folder that is removed), so it drops into ``cross_val_score``,
``GridSearchCV`` (over ``head``, ``head_params``, ``seed``, ...) and pipelines.

Unlike :meth:`photolabel.Model.predict`, :meth:`Classifier.predict` never answers "unknown":
it gives the most probable of ``classes_``, as scikit-learn expects (the model is trained
with ``unknown=False``). scikit-learn itself is needed only here (``pip install scikit-learn``).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from photolabel.config import TRAIN_DEFAULTS
from photolabel.inputs import as_image_list


class Classifier(ClassifierMixin, BaseEstimator):
    """An image classifier: a photolabel backbone (frozen) and a head, fitted on ``fit(X, y)``.

    Parameters are those of :class:`photolabel.TrainConfig` of the same names (their defaults are
    the library's), plus ``cache_dir`` and ``threads`` (how it runs; they never change a result).
    ``valid_fraction`` of each label's images is held out to calibrate the probabilities
    (``calibrate``); set it to 0 with ``calibrate=False`` to fit the head on every image.

    After ``fit``: ``classes_`` (the sorted labels of ``y``, the order of :meth:`predict_proba`'s
    columns) and ``model_`` (the :class:`photolabel.Model`).
    """

    def __init__(self, backbone: str = TRAIN_DEFAULTS.backbone, head: str = TRAIN_DEFAULTS.head,
                 head_params: Mapping[str, Any] | None = None, seed: int = TRAIN_DEFAULTS.seed,
                 valid_fraction: float = TRAIN_DEFAULTS.valid_fraction, calibrate: bool = TRAIN_DEFAULTS.calibrate,
                 balance: bool = TRAIN_DEFAULTS.balance, augment: int = TRAIN_DEFAULTS.augment,
                 cache_dir: str | Path | None = None, threads: int | None = None) -> None:
        self.backbone = backbone
        self.head = head
        self.head_params = head_params
        self.seed = seed
        self.valid_fraction = valid_fraction
        self.calibrate = calibrate
        self.balance = balance
        self.augment = augment
        self.cache_dir = cache_dir
        self.threads = threads

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False  # X holds images, not rows of numbers
        tags.input_tags.string = True  # paths and URLs
        return tags

    def fit(self, X: Any, y: Any) -> Classifier:
        """Train on the images ``X`` labelled ``y``; returns ``self``.

        Raises:
            ValueError: ``X`` and ``y`` differ in length, or two labels read the same as text.
            photolabel.PhotolabelError: what :func:`photolabel.train` raises (an unreadable image,
                a label with too few images, a setting out of range), naming the image or setting.
        """
        from photolabel.training import train

        images, _ = as_image_list(X)
        labels = np.asarray(y)
        if labels.ndim != 1 or len(labels) != len(images):
            raise ValueError(f"X has {len(images)} images but y has shape {labels.shape}; give one label per image")
        classes = np.unique(labels)
        names = [str(c) for c in classes.tolist()]
        if len(set(names)) != len(names):
            raise ValueError(f"labels {names} read the same as text; use distinct labels")
        text = {c: name for c, name in zip(classes.tolist(), names)}
        pairs = [(image, text[label]) for image, label in zip(images, labels.tolist())]
        with tempfile.TemporaryDirectory(prefix="photolabel-classifier-") as folder:
            result = train(pairs, Path(folder) / "model", backbone=self.backbone, head=self.head,
                           head_params=dict(self.head_params or {}), seed=self.seed,
                           valid_fraction=self.valid_fraction, classes=names, augment=self.augment,
                           balance=self.balance, calibrate=self.calibrate, unknown=False,
                           cache_dir=self.cache_dir, threads=self.threads, progress=False, write_run_json=False)
        self.classes_ = classes
        self.model_ = result.model
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Probabilities (N, n_classes), columns in the order of ``classes_``."""
        check_is_fitted(self)
        images, _ = as_image_list(X)
        return self.model_.predict_embeddings(self.model_.embed(images, use_cache=self.cache_dir is not None))

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class of each image (never "unknown"), an array of ``classes_`` values."""
        probabilities = self.predict_proba(X)
        return self.classes_[np.argmax(probabilities, axis=1)]

    def embed(self, X: Any) -> np.ndarray:
        """The backbone's embeddings (N, D) of the images (see :meth:`photolabel.Model.embed`)."""
        check_is_fitted(self)
        images, _ = as_image_list(X)
        return self.model_.embed(images, use_cache=self.cache_dir is not None)
