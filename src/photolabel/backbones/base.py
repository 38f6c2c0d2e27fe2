"""What a backbone is: a named, hashed feature extractor from RGB images to vectors."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB image becomes the backbone's input; written into every model.

    ``mean`` and ``std`` apply after scaling pixels to [0, 1]; ``layout`` is "NCHW"
    for networks and "HWC-uint8" for extractors that want plain pixels.
    """

    image_size: tuple[int, int]  # (height, width)
    resample: str = "bilinear"
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    layout: str = "NCHW"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["image_size"] = list(self.image_size)
        data["mean"] = list(self.mean)
        data["std"] = list(self.std)
        return data


class Backbone(ABC):
    """A feature extractor.

    ``prepare`` runs per image (in decode threads) and must be cheap and pure;
    ``embed_batch`` takes a stack of prepared images and returns float32 vectors,
    one row per image, identical whatever the batch size or thread count.
    """

    name: str
    embedding_dim: int
    preprocessing: Preprocessing

    @property
    @abstractmethod
    def hash(self) -> str:
        """sha256 of everything that determines the vectors: weights, code version, preprocessing."""

    @abstractmethod
    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """One RGB uint8 image (H, W, 3) of any size -> the backbone's input for one image."""

    @abstractmethod
    def embed_batch(self, prepared: np.ndarray) -> np.ndarray:
        """A stack of ``prepare`` outputs -> float32 array (N, embedding_dim)."""

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "hash": self.hash,
            "embedding_dim": self.embedding_dim,
            "preprocessing": self.preprocessing.to_dict(),
        }
