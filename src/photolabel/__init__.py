"""photolabel: labelled images in, a reproducible image classifier out.

>>> import photolabel
>>> result = photolabel.train("examples/fashion-tiny", "models/fashion")   # doctest: +SKIP
>>> model = photolabel.load_model("models/fashion")                         # doctest: +SKIP
>>> model.predict(["photo.jpg"])[0].label                                   # doctest: +SKIP
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

__all__ = [
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
