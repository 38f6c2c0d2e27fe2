"""Calibrated probabilities: temperature scaling on the validation split, log-loss and ECE."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

import photolabel
from photolabel.calibration import (
    Calibration,
    apply_temperature,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    log_loss,
)


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def test_temperature_scaling_finds_the_known_temperature_of_an_over_confident_model():
    # Labels drawn from softmax(z); the model claims softmax(3 z): over-confident by exactly T = 3.
    rng = np.random.default_rng(7)
    logits = rng.normal(0.0, 1.5, (20_000, 4))
    truth = _softmax(logits)
    y = np.array([rng.choice(4, p=row) for row in truth])
    claimed = _softmax(3.0 * logits)
    temperature = fit_temperature(claimed, y)
    assert temperature == pytest.approx(3.0, rel=0.03)
    calibrated = apply_temperature(claimed, temperature)
    before, after = log_loss(claimed, y), log_loss(calibrated, y)
    assert after < before - 0.1
    assert after == pytest.approx(log_loss(truth, y), abs=0.002)  # as good as the true probabilities
    assert expected_calibration_error(calibrated, y) < expected_calibration_error(claimed, y) / 3
    assert np.array_equal(calibrated.argmax(axis=1), claimed.argmax(axis=1))  # the top label never changes


def test_an_under_confident_model_is_sharpened():
    rng = np.random.default_rng(3)
    logits = rng.normal(0.0, 2.0, (5_000, 3))
    y = np.array([rng.choice(3, p=row) for row in _softmax(logits)])
    assert fit_temperature(_softmax(logits / 2.0), y) == pytest.approx(0.5, rel=0.05)


def test_apply_temperature_by_hand():
    probabilities = np.array([[0.8, 0.2], [0.5, 0.5]])
    # softmax(log p / 2) = sqrt(p) / sum(sqrt(p)): sqrt(0.8) = 2 sqrt(0.2)
    np.testing.assert_allclose(apply_temperature(probabilities, 2.0), [[2 / 3, 1 / 3], [0.5, 0.5]], atol=1e-12)
    assert np.array_equal(apply_temperature(probabilities, 1.0), probabilities)
    assert apply_temperature(np.zeros((0, 2)), 2.0).shape == (0, 2)


def test_log_loss_and_ece_by_hand():
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.55, 0.45]])
    y = np.array([0, 1, 1, 0])
    assert log_loss(probabilities, y) == pytest.approx(
        -(math.log(0.9) + math.log(0.1) + math.log(0.6) + math.log(0.55)) / 4)
    # 15 bins: 0.9 and 0.9 share bin 13 (accuracy 1/2), 0.6 is in bin 9, 0.55 in bin 8 (both right):
    # 2/4 * |0.5 - 0.9| + 1/4 * |1 - 0.6| + 1/4 * |1 - 0.55| = 0.2 + 0.1 + 0.1125
    assert expected_calibration_error(probabilities, y) == pytest.approx(0.4125)
    # one bin: |accuracy 3/4 - mean confidence 0.7375|
    assert expected_calibration_error(probabilities, y, bins=1) == pytest.approx(0.0125)
    assert expected_calibration_error(np.array([[1.0, 0.0]]), np.array([0])) == 0.0  # 1.0 is in the last bin
    with pytest.raises(ValueError):
        log_loss(np.zeros((0, 2)), np.zeros(0))


def test_fit_calibration_reports_before_and_after_and_is_deterministic():
    rng = np.random.default_rng(11)
    logits = rng.normal(0.0, 1.0, (300, 3))
    y = np.array([rng.choice(3, p=row) for row in _softmax(logits)])
    claimed = _softmax(2.5 * logits)
    calibration, report = fit_calibration(claimed, y)
    assert (calibration, report) == fit_calibration(claimed.copy(), y.copy())
    assert report["temperature"] == calibration.temperature > 1.5
    assert report["temperature"] == round(report["temperature"], 4)
    assert report["log_loss_after"] < report["log_loss_before"]
    assert report["ece_after"] < report["ece_before"]
    assert report["n"] == 300
    assert Calibration.from_card(calibration.to_card()) == calibration


def test_no_validation_rows_means_temperature_one():
    calibration, report = fit_calibration(np.zeros((0, 3)), np.zeros(0, dtype=np.int64))
    assert calibration.temperature == 1.0 and report["temperature"] == 1.0
    assert report["log_loss_before"] is None and "no validation images" in report["note"]
    assert "no validation images" in calibration.to_card()["note"]


def test_a_few_validation_images_all_right_do_not_make_every_answer_certain():
    # Six images, all predicted right: the log-loss alone would drive T towards 0.
    claimed = np.array([[0.64, 0.2, 0.16], [0.8, 0.1, 0.1], [0.2, 0.7, 0.1], [0.1, 0.85, 0.05],
                        [0.1, 0.1, 0.8], [0.05, 0.05, 0.9]])
    temperature = fit_temperature(claimed, np.array([0, 0, 1, 1, 2, 2]))
    assert 0.5 < temperature < 1.0


def test_trained_model_reports_and_outputs_calibrated_probabilities(trained_model):
    model = photolabel.load_model(trained_model)
    metrics = json.loads((trained_model / "metrics.json").read_text())
    section = metrics["calibration"]
    assert set(section) >= {"temperature", "log_loss_before", "log_loss_after", "ece_before", "ece_after"}
    assert section["log_loss_after"] <= section["log_loss_before"]
    assert model.card.calibration["temperature"] == section["temperature"] == model.post.temperature
    # the validation metrics describe the calibrated probabilities: the model's own outputs
    assert metrics["validation"]["log_loss"] == pytest.approx(section["log_loss_after"], abs=1e-6)
    rows = [row for row in model.lineage["images"] if row["split"] == "valid"]
    assert len(rows) == section["n"] == metrics["validation"]["n"]
    vectors = np.random.default_rng(0).random((4, model.card.backbone.embedding_dim)).astype(np.float32)
    head = model.head.predict_proba(vectors.astype(np.float64))
    np.testing.assert_array_equal(model.predict_embeddings(vectors),
                                  apply_temperature(head, section["temperature"]))
    print(f"fashion (60 images): temperature {section['temperature']}, validation log-loss "
          f"{section['log_loss_before']} -> {section['log_loss_after']}, ECE {section['ece_before']} -> "
          f"{section['ece_after']}")


def test_calibration_off_and_without_validation(small_data, tmp_path, cache_dir):
    off = photolabel.train(small_data, tmp_path / "off", cache_dir=cache_dir, calibrate=False)
    assert off.model.card.calibration is None and "calibration" not in off.metrics
    assert off.model.card.config.calibrate is False
    vectors = np.random.default_rng(1).random((3, off.model.card.backbone.embedding_dim))
    np.testing.assert_array_equal(off.model.predict_embeddings(vectors), off.model.head.predict_proba(vectors))

    none = photolabel.train(small_data, tmp_path / "none", cache_dir=cache_dir, valid_fraction=0.0)
    assert none.metrics["calibration"]["temperature"] == 1.0 and none.metrics["validation"] is None
    assert "no validation images" in none.metrics["calibration"]["note"]
    assert none.model.card.calibration["temperature"] == 1.0


def test_models_trained_before_calibration_load_and_predict_as_before(trained_model, small_data, tmp_path):
    # A card of an earlier version: no calibration or unknown sections, a config without the newer keys.
    old = tmp_path / "old"
    shutil.copytree(trained_model, old)
    document = json.loads((old / "model.json").read_text())
    for key in ("calibration", "unknown"):
        document.pop(key)
    document["files"].pop("unknown/centroids.npy")
    (old / "unknown" / "centroids.npy").unlink()
    document["config"] = {key: document["config"][key]
                          for key in ("backbone", "head", "head_params", "seed", "valid_fraction", "classes")}
    (old / "model.json").write_text(json.dumps(document))
    model = photolabel.load_model(old)
    assert model.card.config.calibrate is False and model.card.config.unknown is False
    assert model.post.calibration is None and model.post.unknown is None
    images = sorted(small_data.rglob("*.jpg"))[::9]
    for prediction, vector in zip(model.predict(images), _vectors(model, images)):
        assert not prediction.unknown and prediction.label == prediction.best in model.labels
        np.testing.assert_array_equal([prediction.scores[label] for label in model.labels],
                                      model.head.predict_proba(vector[None].astype(np.float64))[0])


def _vectors(model, images):
    from photolabel.embedding import ImageInput, embed_images

    return embed_images([ImageInput(str(p), path=p) for p in images], model.backbone).vectors


def test_training_twice_gives_the_same_calibration_and_unknown_bytes(small_data, tmp_path, cache_dir):
    first = photolabel.train(small_data, tmp_path / "a", cache_dir=cache_dir, write_run_json=False)
    second = photolabel.train(small_data, tmp_path / "b", cache_dir=cache_dir, threads=1)
    for name in ("model.json", "metrics.json", "unknown/centroids.npy"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert first.model.card.calibration == second.model.card.calibration is not None
