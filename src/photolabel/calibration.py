"""Calibrated probabilities: temperature scaling fitted on the validation split, and how to measure it.

Any head's probabilities ``p`` become logits ``log(max(p, EPS))``; the calibrated
probabilities are ``softmax(logits / T)``. One number ``T`` is fitted on the validation
images by minimising their log-loss (Guo et al., 2017): ``T > 1`` softens an over-confident
head, ``T < 1`` sharpens an under-confident one. Dividing by ``T`` never changes which label
is on top, so accuracy and the confusion matrix stay as they were.

The search is deterministic (a golden-section search over ``log T`` with a fixed number
of steps) and ``T`` is rounded to 4 decimals, the value stored in ``model.json`` and used
everywhere, so the same probabilities give the same bytes. A normal prior on ``log T``
(:data:`PRIOR_SCALE`) keeps a handful of validation images, all predicted right, from
driving ``T`` towards 0 (every answer certain); with a few dozen images it hardly matters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

#: the smallest probability taken as a logit's argument: log(EPS) ~ -27.6
EPS = 1e-12
#: the search range of log T: T in [exp(-3), exp(3)] ~ [0.05, 20]
LOG_T_RANGE = (-3.0, 3.0)
#: the standard deviation of the normal prior on log T (in units of the validation log-loss summed over images)
PRIOR_SCALE = 0.5
ECE_BINS = 15
_GOLDEN_STEPS = 80  # the bracket shrinks by 0.618 each step: far below the 4-decimal rounding
_DIGITS = 6


def probabilities_to_logits(probabilities: np.ndarray) -> np.ndarray:
    """``log(p)``, with ``p`` clipped to ``[EPS, 1]``: logits that give back ``p`` through a softmax."""
    return np.log(np.clip(np.asarray(probabilities, dtype=np.float64), EPS, 1.0))


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` row by row. ``T == 1`` returns the probabilities unchanged."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if temperature == 1.0 or len(probabilities) == 0:
        return probabilities
    scaled = probabilities_to_logits(probabilities) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def log_loss(probabilities: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-probability of the true labels ``y`` (probabilities clipped at :data:`EPS`).

    Raises:
        ValueError: no rows.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        raise ValueError("log_loss of no rows")
    picked = np.clip(probabilities[np.arange(len(y)), y], EPS, 1.0)
    return float(-np.mean(np.log(picked)))


def expected_calibration_error(probabilities: np.ndarray, y: np.ndarray, bins: int = ECE_BINS) -> float:
    """How far the top probability is from the accuracy it claims, on average.

    Images are put in ``bins`` equal-width bins by their top probability (bin ``b`` holds
    ``[b / bins, (b + 1) / bins)``, the last one includes 1); the result is the sum over bins
    of ``(images in the bin / all images) * |accuracy in the bin - mean top probability in
    the bin|``. 0 is perfectly calibrated.

    Raises:
        ValueError: no rows, or ``bins`` < 1.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        raise ValueError("expected_calibration_error of no rows")
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == y).astype(np.float64)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    total = 0.0
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        if count:
            total += count / len(y) * abs(float(correct[members].mean()) - float(confidence[members].mean()))
    return total


def fit_temperature(probabilities: np.ndarray, y: np.ndarray) -> float:
    """The temperature that minimises the validation log-loss (plus the prior on ``log T``), rounded to 4
    decimals; 1.0 when there are no rows or when no temperature does better than 1.

    Deterministic: a golden-section search over ``log T`` in :data:`LOG_T_RANGE`. The
    objective is unimodal there: the log-loss is convex in ``1 / T`` and the prior is
    convex in ``log T``.
    """
    y = np.asarray(y, dtype=np.int64)
    if len(y) == 0:
        return 1.0
    logits = probabilities_to_logits(probabilities)
    rows = np.arange(len(y))

    def objective(log_t: float) -> float:
        scaled = logits * math.exp(-log_t)
        top = scaled.max(axis=1)
        log_norm = top + np.log(np.exp(scaled - top[:, None]).sum(axis=1))
        return float(np.sum(log_norm - scaled[rows, y])) + 0.5 * (log_t / PRIOR_SCALE) ** 2

    ratio = (math.sqrt(5.0) - 1.0) / 2.0
    low, high = LOG_T_RANGE
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = objective(a), objective(b)
    for _ in range(_GOLDEN_STEPS):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = objective(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = objective(b)
    temperature = round(math.exp((low + high) / 2.0), 4)
    return temperature if objective(math.log(temperature)) < objective(0.0) else 1.0


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature. ``n_valid`` is the number of validation images it was fitted on."""

    temperature: float = 1.0
    n_valid: int = 0

    def apply(self, probabilities: np.ndarray) -> np.ndarray:
        return apply_temperature(probabilities, self.temperature)

    def onnx_nodes(self, probabilities: str, output: str, prefix: str = "calibration/") -> tuple[list[Any], list[Any]]:
        """ONNX nodes computing ``output = softmax(log(max(probabilities, EPS)) / T)`` (float N x C) and their
        initializers; none when ``T`` is 1 (then ``output`` is ``probabilities`` itself: the caller
        keeps its name)."""
        from onnx import helper, numpy_helper

        p = prefix
        inits = [numpy_helper.from_array(np.array(EPS, dtype=np.float32), f"{p}eps"),
                 numpy_helper.from_array(np.array(self.temperature, dtype=np.float32), f"{p}temperature")]
        nodes = [
            helper.make_node("Clip", [probabilities, f"{p}eps"], [f"{p}clipped"]),
            helper.make_node("Log", [f"{p}clipped"], [f"{p}logits"]),
            helper.make_node("Div", [f"{p}logits", f"{p}temperature"], [f"{p}scaled"]),
            helper.make_node("Softmax", [f"{p}scaled"], [output], axis=1),
        ]
        return nodes, inits

    def to_card(self) -> dict[str, Any]:
        """The ``calibration`` section of model.json."""
        section: dict[str, Any] = {"method": "temperature", "temperature": self.temperature,
                                   "n_valid": self.n_valid}
        if self.n_valid == 0:
            section["note"] = "no validation images: temperature 1, the head's probabilities as they are"
        return section

    @classmethod
    def from_card(cls, section: Mapping[str, Any] | None) -> Calibration | None:
        """The calibration a model.json section describes; None for a model without one.

        Raises:
            ValueError: a section that is not a positive temperature.
        """
        if section is None:
            return None
        if section.get("method", "temperature") != "temperature":
            raise ValueError(f"calibration method {section.get('method')!r} is not known")
        temperature = float(section["temperature"])
        if not math.isfinite(temperature) or temperature <= 0:
            raise ValueError(f"calibration temperature {temperature} is not a positive number")
        return cls(temperature, int(section.get("n_valid", 0)))


def fit_calibration(probabilities: np.ndarray, y: np.ndarray) -> tuple[Calibration, dict[str, Any]]:
    """Fit a temperature on validation probabilities and labels.

    Returns the :class:`Calibration` and the ``calibration`` section of metrics.json:
    the temperature, and the validation log-loss and expected calibration error before and
    after (None, with a note, when there are no validation images).
    """
    y = np.asarray(y, dtype=np.int64)
    calibration = Calibration(fit_temperature(probabilities, y), len(y))
    report: dict[str, Any] = {"temperature": calibration.temperature, "n": len(y)}
    if len(y) == 0:
        report.update(log_loss_before=None, log_loss_after=None, ece_before=None, ece_after=None,
                      note="no validation images: temperature 1, the head's probabilities as they are")
        return calibration, report
    after = calibration.apply(probabilities)
    report.update(
        log_loss_before=round(log_loss(probabilities, y), _DIGITS),
        log_loss_after=round(log_loss(after, y), _DIGITS),
        ece_before=round(expected_calibration_error(probabilities, y), _DIGITS),
        ece_after=round(expected_calibration_error(after, y), _DIGITS),
    )
    return calibration, report
