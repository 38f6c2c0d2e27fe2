"""The answer "unknown": for an image unlike anything the model was trained on, or one it is unsure of.

Two tests, either of which makes the answer ``unknown`` (the scores are still given):

* **far**: the cosine distance of the image's L2-normalised embedding to the nearest
  class centroid (the normalised mean of that class's normalised training embeddings)
  is above ``distance_threshold``. ImageNet features of a drawing, a texture or a
  photo of another kind of thing lie far from every centroid of, say, clothes.
* **unsure**: the calibrated top probability is below ``confidence_threshold``.

Both thresholds are chosen on held-out images so that each test answers unknown for at
most :data:`MAX_HELD_OUT_SHARE` of them (rounded down), then rounded outwards to 4
decimals. The distance test is chosen on the validation images and on every training
image measured against its class centroid computed without it (leave-one-out): many more
held-out distances than the validation split alone, so small data sets get a steady
threshold. The confidence test is chosen on the validation images' calibrated
probabilities; with no validation images it is off (threshold 0).

:class:`Postprocessor` is what follows the head in a model: the temperature
(:mod:`photolabel.calibration`) and then the unknown test. Training fits it with
:func:`fit_calibration_and_unknown`; :class:`~photolabel.model.Model` loads it from the
model card and the hashed file ``unknown/centroids.npy``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from onnx import helper, numpy_helper

from photolabel.calibration import Calibration, fit_calibration

#: the label shown when the model answers unknown
UNKNOWN_LABEL = "unknown"
CENTROIDS_FILE = "unknown/centroids.npy"
METHOD = "nearest-centroid-cosine"
#: each test answers unknown for at most this share of the held-out images it was chosen on
MAX_HELD_OUT_SHARE = 0.05
RULE = ("unknown when the cosine distance of the L2-normalised embedding to the nearest class centroid is above "
        "distance_threshold, or when the calibrated top probability is below confidence_threshold")
_NORM_FLOOR = 1e-12


def normalise_rows(X: np.ndarray) -> np.ndarray:
    """Each row divided by its L2 norm (a zero row stays zero)."""
    X = np.asarray(X, dtype=np.float64)
    norms = np.sqrt(np.einsum("nd,nd->n", X, X, optimize=False))
    return X / np.maximum(norms, _NORM_FLOOR)[:, None]


def class_centroids(X: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """(C, D) unit vectors: the normalised mean of each class's normalised rows."""
    Z = normalise_rows(X)
    sums = np.zeros((n_classes, Z.shape[1]))
    np.add.at(sums, np.asarray(y, dtype=np.int64), Z)
    return normalise_rows(sums)


def _similarities(Z: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    # einsum's plain loops, not BLAS: a row's result does not depend on the batch it came in
    return np.einsum("nd,cd->nc", Z, centroids, optimize=False)


def leave_one_out_distances(X: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Each training row's distance to the nearest centroid, its own class's centroid computed without it.

    With ``s`` the sum of the class's normalised rows and ``z`` the row (unit length), the
    cosine with ``s - z`` is ``(z·s - 1) / |s - z|`` and ``|s - z|² = |s|² - 2 z·s + 1``: no
    (N, D) array of centroids is needed. A class with one row has no centroid without it.
    """
    Z = normalise_rows(X)
    y = np.asarray(y, dtype=np.int64)
    sums = np.zeros((n_classes, Z.shape[1]))
    np.add.at(sums, y, Z)
    similarity = _similarities(Z, normalise_rows(sums))
    rows = np.arange(len(y))
    own_dot = _similarities(Z, sums)[rows, y]
    own_sq = np.einsum("cd,cd->c", sums, sums, optimize=False)[y]
    rest = np.sqrt(np.maximum(own_sq - 2.0 * own_dot + 1.0, 0.0))
    counts = np.bincount(y, minlength=n_classes)[y]
    similarity[rows, y] = np.where((counts > 1) & (rest > _NORM_FLOOR),
                                   (own_dot - 1.0) / np.maximum(rest, _NORM_FLOOR), -np.inf)
    return 1.0 - similarity.max(axis=1)


def _allowed(n: int) -> int:
    return math.floor(MAX_HELD_OUT_SHARE * n + 1e-9)


def _ceil4(value: float) -> float:
    return math.ceil(round(value * 1e4, 6)) / 1e4


def _floor4(value: float) -> float:
    return math.floor(round(value * 1e4, 6)) / 1e4


def distance_threshold_for(distances: np.ndarray) -> float:
    """The (m+1)-th largest distance, m = ``floor(MAX_HELD_OUT_SHARE * n)``, rounded up to 4 decimals:
    ``distance > threshold`` holds for at most m of ``distances``."""
    ordered = np.sort(np.asarray(distances, dtype=np.float64))[::-1]
    return _ceil4(float(ordered[_allowed(len(ordered))]))


def confidence_threshold_for(top_probabilities: np.ndarray) -> float:
    """The (m+1)-th smallest top probability, rounded down to 4 decimals (0 for none):
    ``probability < threshold`` holds for at most m of them."""
    if len(top_probabilities) == 0:
        return 0.0
    ordered = np.sort(np.asarray(top_probabilities, dtype=np.float64))
    return _floor4(float(ordered[_allowed(len(ordered))]))


@dataclass(frozen=True)
class UnknownDetector:
    """The unknown tests of one model: its class centroids and two thresholds (see the module's text)."""

    centroids: np.ndarray = field(repr=False)
    distance_threshold: float
    confidence_threshold: float
    facts: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def distances(self, X: np.ndarray) -> np.ndarray:
        """Cosine distance of each row to the nearest class centroid, in [0, 2]."""
        if len(X) == 0:
            return np.zeros(0)
        return 1.0 - _similarities(normalise_rows(X), self.centroids).max(axis=1)

    def tests(self, X: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(far, unsure): which rows fail the distance test, and which the confidence test."""
        far = self.distances(X) > self.distance_threshold
        top = np.asarray(probabilities, dtype=np.float64).max(axis=1) if len(X) else np.zeros(0)
        return far, top < self.confidence_threshold

    def is_unknown(self, X: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        far, unsure = self.tests(X, probabilities)
        return far | unsure

    def to_card(self) -> dict[str, Any]:
        """The ``unknown`` section of model.json."""
        return {"method": METHOD, "centroids": CENTROIDS_FILE, "distance_threshold": self.distance_threshold,
                "confidence_threshold": self.confidence_threshold, "rule": RULE, **dict(self.facts)}

    def files(self) -> dict[str, bytes]:
        buffer = io.BytesIO()
        np.save(buffer, np.ascontiguousarray(self.centroids, dtype="<f8"), allow_pickle=False)
        return {CENTROIDS_FILE: buffer.getvalue()}

    @classmethod
    def load(cls, folder: Path, section: Mapping[str, Any], *, n_classes: int, dim: int) -> UnknownDetector:
        """The detector a model.json section and the model's files describe.

        Raises:
            ValueError: an unknown method, or centroids of the wrong shape.
        """
        if section.get("method") != METHOD:
            raise ValueError(f"unknown-answer method {section.get('method')!r} is not known")
        centroids = np.load(Path(folder) / section.get("centroids", CENTROIDS_FILE), allow_pickle=False)
        if centroids.shape != (n_classes, dim):
            raise ValueError(f"{CENTROIDS_FILE} has shape {centroids.shape}, expected {(n_classes, dim)}")
        facts = {k: v for k, v in section.items()
                 if k not in ("method", "centroids", "distance_threshold", "confidence_threshold", "rule")}
        return cls(np.ascontiguousarray(centroids, dtype=np.float64), float(section["distance_threshold"]),
                   float(section["confidence_threshold"]), facts)

    def onnx_nodes(self, embedding: str, probabilities: str, output: str, prefix: str = "unknown/"
                   ) -> tuple[list[Any], list[Any]]:
        """ONNX nodes computing ``output`` (bool, N) from ``embedding`` (float N x D) and calibrated
        ``probabilities`` (float N x C), and their initializers. Uses only operators whose form is the
        same from opset 13 on (MatMul, TopK, Reshape, ...)."""
        p = prefix
        dim = self.centroids.shape[1]
        inits = [
            numpy_helper.from_array(np.ascontiguousarray(self.centroids.T, dtype=np.float32), f"{p}centroids_t"),
            numpy_helper.from_array(np.ones((dim, 1), dtype=np.float32), f"{p}ones"),
            numpy_helper.from_array(np.array(_NORM_FLOOR, dtype=np.float32), f"{p}norm_floor"),
            numpy_helper.from_array(np.array(1.0, dtype=np.float32), f"{p}one"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), f"{p}k"),
            numpy_helper.from_array(np.array([-1], dtype=np.int64), f"{p}flat"),
            numpy_helper.from_array(np.array(self.distance_threshold, dtype=np.float32), f"{p}distance_threshold"),
            numpy_helper.from_array(np.array(self.confidence_threshold, dtype=np.float32),
                                    f"{p}confidence_threshold"),
        ]
        nodes = [
            helper.make_node("Mul", [embedding, embedding], [f"{p}squares"]),
            helper.make_node("MatMul", [f"{p}squares", f"{p}ones"], [f"{p}sum_squares"]),
            helper.make_node("Sqrt", [f"{p}sum_squares"], [f"{p}norm"]),
            helper.make_node("Max", [f"{p}norm", f"{p}norm_floor"], [f"{p}norm_floored"]),
            helper.make_node("Div", [embedding, f"{p}norm_floored"], [f"{p}unit"]),
            helper.make_node("MatMul", [f"{p}unit", f"{p}centroids_t"], [f"{p}similarity"]),
            helper.make_node("TopK", [f"{p}similarity", f"{p}k"], [f"{p}nearest", f"{p}nearest_index"], axis=1),
            helper.make_node("Reshape", [f"{p}nearest", f"{p}flat"], [f"{p}nearest_flat"]),
            helper.make_node("Sub", [f"{p}one", f"{p}nearest_flat"], [f"{p}distance"]),
            helper.make_node("Greater", [f"{p}distance", f"{p}distance_threshold"], [f"{p}far"]),
            helper.make_node("TopK", [probabilities, f"{p}k"], [f"{p}top", f"{p}top_index"], axis=1),
            helper.make_node("Reshape", [f"{p}top", f"{p}flat"], [f"{p}top_flat"]),
            helper.make_node("Less", [f"{p}top_flat", f"{p}confidence_threshold"], [f"{p}unsure"]),
            helper.make_node("Or", [f"{p}far", f"{p}unsure"], [output]),
        ]
        return nodes, inits


def fit_unknown(X_train: np.ndarray, y_train: np.ndarray, X_valid: np.ndarray, valid_probabilities: np.ndarray,
                n_classes: int) -> UnknownDetector:
    """Centroids from the training rows; thresholds from the held-out distances and the validation images'
    calibrated probabilities (see the module's text)."""
    centroids = class_centroids(X_train, y_train, n_classes)
    valid_distances = (1.0 - _similarities(normalise_rows(X_valid), centroids).max(axis=1)
                       if len(X_valid) else np.zeros(0))
    held_out = np.concatenate([valid_distances, leave_one_out_distances(X_train, y_train, n_classes)])
    top = np.asarray(valid_probabilities, dtype=np.float64).max(axis=1) if len(X_valid) else np.zeros(0)
    facts: dict[str, Any] = {
        "max_held_out_share": MAX_HELD_OUT_SHARE,
        "distance_chosen_on": f"{len(valid_distances)} validation images and {len(X_train)} training images "
                              "(each against its class centroid computed without it)",
        "confidence_chosen_on": f"{len(top)} validation images" if len(top)
                                else "no validation images: the confidence test is off",
    }
    return UnknownDetector(centroids, distance_threshold_for(held_out), confidence_threshold_for(top), facts)


@dataclass(frozen=True)
class Postprocessor:
    """What follows the head in a model: the temperature, then the unknown tests. Either may be absent
    (models trained without them, or before they existed): then probabilities pass unchanged and no
    answer is unknown."""

    calibration: Calibration | None = None
    unknown: UnknownDetector | None = None

    def probabilities(self, head_probabilities: np.ndarray) -> np.ndarray:
        """The model's probabilities: the head's, calibrated."""
        if self.calibration is None:
            return np.asarray(head_probabilities, dtype=np.float64)
        return self.calibration.apply(head_probabilities)

    def predict_proba(self, head: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
        """The model's probabilities for embeddings ``X`` (N, D): ``head``'s, calibrated; (0, C) for no rows."""
        if len(X) == 0:
            return np.zeros((0, n_classes))
        return self.probabilities(head.predict_proba(np.asarray(X, dtype=np.float64)))

    def unknown_tests(self, X: np.ndarray, probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(far, unsure) for each row of embeddings ``X`` and their calibrated ``probabilities``; None for a
        model without the unknown answer."""
        return self.unknown.tests(X, probabilities) if self.unknown is not None else None

    def is_unknown(self, X: np.ndarray, probabilities: np.ndarray) -> np.ndarray:
        """Which rows the model answers unknown for (none without the unknown answer)."""
        if self.unknown is None:
            return np.zeros(len(X), dtype=bool)
        return self.unknown.is_unknown(X, probabilities)

    @property
    def temperature(self) -> float:
        return self.calibration.temperature if self.calibration is not None else 1.0

    def files(self) -> dict[str, bytes]:
        return self.unknown.files() if self.unknown is not None else {}

    @classmethod
    def from_card(cls, card: Any, folder: Path) -> Postprocessor:
        """The postprocessor of a model card (a :class:`~photolabel.artifact.ModelCard`), whose files are in
        ``folder``.

        Raises:
            ValueError: a malformed ``calibration`` or ``unknown`` section, or bad centroids.
        """
        calibration = Calibration.from_card(card.calibration)
        unknown = None
        if card.unknown is not None:
            unknown = UnknownDetector.load(folder, card.unknown, n_classes=len(card.labels),
                                           dim=card.backbone.embedding_dim)
        return cls(calibration, unknown)


def fit_calibration_and_unknown(head: Any, X_train: np.ndarray, y_train: np.ndarray, X_valid: np.ndarray,
                                y_valid: np.ndarray, n_classes: int, *, calibrate: bool, unknown: bool,
                                ) -> tuple[Postprocessor, dict[str, Any]]:
    """Fit what follows a fitted ``head``: a temperature on its validation probabilities (``calibrate``), then
    the unknown tests (``unknown``): centroids of ``X_train`` (the training images), thresholds on the
    held-out distances and the calibrated validation probabilities.

    Returns the :class:`Postprocessor` and its part of metrics.json: ``{"calibration": ...}``
    (see :func:`photolabel.calibration.fit_calibration`) when ``calibrate``, and ``{"unknown":
    {"distance_threshold", "confidence_threshold"}}`` when ``unknown``. The validation unknown
    rate goes with the validation metrics.
    """
    metrics: dict[str, Any] = {}
    head_valid = Postprocessor().predict_proba(head, X_valid, n_classes)
    calibration = None
    if calibrate:
        calibration, metrics["calibration"] = fit_calibration(head_valid, y_valid)
    detector = None
    if unknown:
        calibrated = Postprocessor(calibration).probabilities(head_valid)
        detector = fit_unknown(X_train, y_train, X_valid, calibrated, n_classes)
        metrics["unknown"] = {"distance_threshold": detector.distance_threshold,
                              "confidence_threshold": detector.confidence_threshold}
    return Postprocessor(calibration, detector), metrics
