"""photolabel: labelled images in, a reproducible image classifier out.

>>> import photolabel
>>> result = photolabel.train("examples/fashion-tiny", "models/fashion")   # doctest: +SKIP
>>> model = photolabel.load_model("models/fashion")                         # doctest: +SKIP
>>> model.predict("photo.jpg").label                                        # doctest: +SKIP
>>> photolabel.evaluate(model, [("a.jpg", "cat"), ("b.jpg", "dog")])        # doctest: +SKIP
>>> clf = photolabel.Classifier().fit(paths, labels)                        # doctest: +SKIP (scikit-learn)
"""

from __future__ import annotations

__version__ = "0.1.0"

from photolabel.backbones import get_backbone, list_backbones
from photolabel.config import Runtime, TrainConfig
from photolabel.errors import (
    ConfigError,
    DataError,
    FetchError,
    HashMismatchError,
    ImageError,
    ModelError,
    PhotolabelError,
    SourceNotFoundError,
    UnknownNameError,
)
from photolabel.evaluate import evaluate
from photolabel.heads import list_heads
from photolabel.model import Model, Prediction, load_model
from photolabel.training import TrainResult, train


def __getattr__(name: str) -> object:
    if name == "Classifier":  # scikit-learn's estimator machinery, imported when first used
        from photolabel.estimator import Classifier

        return Classifier
    raise AttributeError(f"module 'photolabel' has no attribute {name!r}")


__all__ = [
    "Classifier",
    "ConfigError",
    "DataError",
    "FetchError",
    "HashMismatchError",
    "ImageError",
    "Model",
    "ModelError",
    "PhotolabelError",
    "Prediction",
    "Runtime",
    "SourceNotFoundError",
    "TrainConfig",
    "TrainResult",
    "UnknownNameError",
    "__version__",
    "evaluate",
    "get_backbone",
    "list_backbones",
    "list_heads",
    "load_model",
    "train",
]
