"""Metrics with known answers, and the evaluate() API on real images."""

from __future__ import annotations

import numpy as np
import pytest

import photolabel
from photolabel.evaluation import classification_metrics, format_metrics, write_report


def test_metrics_on_a_known_confusion():
    y_true = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 1, 0])
    probs = np.eye(3)[predicted] * 0.8 + 0.2 / 3
    m = classification_metrics(y_true, probs, ["a", "b", "c"])
    assert m["accuracy"] == round(4 / 6, 6)
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]
    assert m["per_class"]["a"] == {"precision": round(2 / 3, 6), "recall": round(2 / 3, 6),
                                   "f1": round(2 / 3, 6), "support": 3}
    assert m["per_class"]["c"]["recall"] == 0.0 and m["per_class"]["c"]["precision"] == 0.0
    assert "confusion matrix" in format_metrics(m)


def test_report_files(tmp_path):
    m = classification_metrics(np.array([0, 1]), np.array([[0.9, 0.1], [0.4, 0.6]]), ["x", "y"])
    png, page = write_report(m, tmp_path / "r")
    from PIL import Image

    assert Image.open(png).size[0] > 100
    assert "<table>" in page.read_text() and "confusion_matrix.png" in page.read_text()


def test_evaluate_api_and_unknown_labels(trained_model, small_data, tmp_path):
    metrics = photolabel.evaluate(trained_model, small_data)
    assert metrics["n"] == 60 and metrics["labels"] == ["blouse", "halter", "sweater"]
    assert sum(map(sum, metrics["confusion_matrix"])) == 60 and metrics["accuracy"] > 0.6
    other = tmp_path / "other" / "shoes"
    other.mkdir(parents=True)
    src = min((small_data / "blouse").iterdir())
    (other / src.name).write_bytes(src.read_bytes())
    with pytest.raises(photolabel.DataError, match="shoes"):
        photolabel.evaluate(trained_model, tmp_path / "other")
