"""The answer "unknown": far from every class centroid, or not confident enough; thresholds from held-out images."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from foreign_images import generated_images, skimage_images

import photolabel
from photolabel.errors import ModelError
from photolabel.model import Prediction
from photolabel.openset import (
    CENTROIDS_FILE,
    UNKNOWN_LABEL,
    class_centroids,
    confidence_threshold_for,
    distance_threshold_for,
    leave_one_out_distances,
    normalise_rows,
)

EXAMPLES = Path(__file__).parents[2] / "examples" / "fashion-tiny"


@pytest.fixture(scope="module")
def model(trained_model: Path, cache_dir: Path) -> photolabel.Model:
    return photolabel.load_model(trained_model, cache_dir=cache_dir)


def _validation_images(model: photolabel.Model, folder: Path) -> list[Path]:
    wanted = {row["sha256"] for row in model.lineage["images"] if row["split"] == "valid"}
    return [p for p in sorted(folder.rglob("*.jpg")) if hashlib.sha256(p.read_bytes()).hexdigest() in wanted]


def test_foreign_images_are_unknown_and_own_validation_images_are_not(model, small_data, capsys):
    """The issue's test: a model trained on the fashion photos answers unknown for most images of another kind
    (scikit-image's pictures, noise, gradients, shapes) and for few of its own validation images."""
    pytest.importorskip("skimage", reason="scikit-image is not installed: pip install -e '.[test]'")
    foreign = {**skimage_images(), **generated_images()}
    foreign_answers = model.predict(list(foreign.values()))
    validation = _validation_images(model, small_data)
    assert len(validation) == model.lineage["counts"]["valid"] > 0
    own_answers = model.predict(validation)
    # images of the same kind the model never saw: the rest of fashion-tiny
    seen = {p.name for p in small_data.rglob("*.jpg")}
    unseen = [p for p in sorted(EXAMPLES.glob("*/*.jpg")) if p.name not in seen]
    unseen_answers = model.predict(unseen)

    def rate(answers: list[Prediction]) -> float:
        return sum(a.unknown for a in answers) / len(answers)

    with capsys.disabled():
        print(f"\nunknown: {rate(foreign_answers):.0%} of {len(foreign)} foreign images, "
              f"{rate(own_answers):.0%} of {len(validation)} own validation images, "
              f"{rate(unseen_answers):.0%} of {len(unseen)} unseen fashion photos")
    known = [name for name, answer in zip(foreign, foreign_answers) if not answer.unknown]
    assert rate(foreign_answers) > 0.7, f"answered with a label: {known}"
    assert rate(own_answers) < 0.2
    assert rate(unseen_answers) < 0.35  # unseen photos: mostly labelled, unknown only when unsure
    for answer in foreign_answers:
        assert answer.label == (UNKNOWN_LABEL if answer.unknown else answer.best)
        assert answer.best in model.labels and answer.probability == answer.scores[answer.best]


def test_prediction_of_an_unknown_image_keeps_its_scores(model):
    (answer,) = model.predict([generated_images()["noise"]])
    assert answer.unknown and answer.label == "unknown" and answer.best in model.labels
    assert set(answer.scores) == set(model.labels) and sum(answer.scores.values()) == pytest.approx(1.0)
    assert answer.best == max(answer.scores, key=answer.scores.get)
    document = answer.to_dict()
    assert (document["label"], document["best"], document["unknown"]) == ("unknown", answer.best, True)
    assert answer.top(1) == [(answer.best, answer.probability)]


def test_card_holds_the_thresholds_and_the_hashed_centroids(model, trained_model):
    card = json.loads((trained_model / "model.json").read_text())
    section = card["unknown"]
    assert section["centroids"] == CENTROIDS_FILE and CENTROIDS_FILE in card["files"]
    assert 0 < section["distance_threshold"] < 2 and 0 <= section["confidence_threshold"] < 1
    assert "validation images" in section["distance_chosen_on"] and section["max_held_out_share"] == 0.05
    metrics = json.loads((trained_model / "metrics.json").read_text())
    assert metrics["unknown"] == {"distance_threshold": section["distance_threshold"],
                                  "confidence_threshold": section["confidence_threshold"]}
    validation = metrics["validation"]["unknown"]
    assert validation["n"] == metrics["validation"]["n"] and validation["count"] <= validation["n"]
    centroids = np.load(trained_model / CENTROIDS_FILE)
    assert centroids.shape == (len(model.labels), model.card.backbone.embedding_dim)
    np.testing.assert_allclose(np.linalg.norm(centroids, axis=1), 1.0)


def test_tampered_centroids_are_refused(trained_model, tmp_path):
    copy = tmp_path / "m"
    shutil.copytree(trained_model, copy)
    data = bytearray((copy / CENTROIDS_FILE).read_bytes())
    data[-1] ^= 1
    (copy / CENTROIDS_FILE).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="centroids.npy"):
        photolabel.load_model(copy)


def test_unknown_off_never_answers_unknown(small_data, tmp_path, cache_dir):
    result = photolabel.train(small_data, tmp_path / "off", cache_dir=cache_dir, unknown=False)
    assert result.model.card.unknown is None and "unknown" not in result.metrics
    assert not (tmp_path / "off" / "unknown").exists()
    assert "unknown" not in result.metrics["validation"]
    (answer,) = result.model.predict([generated_images()["noise"]])
    assert not answer.unknown and answer.label == answer.best in result.model.labels
    on = photolabel.train(small_data, tmp_path / "on", cache_dir=cache_dir)
    assert on.model_id != result.model_id  # the setting is part of what determines the model


def test_thresholds_allow_at_most_five_percent_of_held_out_images():
    distances = np.linspace(0.1, 0.5, 41)  # 41 values: at most 2 may be above the threshold
    threshold = distance_threshold_for(distances)
    assert threshold == 0.48 and int(np.sum(distances > threshold)) == 2
    assert distance_threshold_for(np.array([0.31234, 0.2])) == 0.3124  # none allowed: the largest, rounded up
    top = np.linspace(0.4, 1.0, 41)
    threshold = confidence_threshold_for(top)
    assert threshold == 0.43 and int(np.sum(top < threshold)) == 2
    assert confidence_threshold_for(np.array([0.56789, 0.9])) == 0.5678
    assert confidence_threshold_for(np.zeros(0)) == 0.0  # no validation images: the confidence test is off


def test_leave_one_out_distances_match_centroids_computed_without_each_row():
    rng = np.random.default_rng(5)
    X = rng.random((12, 6))
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 0])
    found = leave_one_out_distances(X, y, 3)
    for i in range(len(X)):
        keep = np.arange(len(X)) != i
        centroids = class_centroids(X[keep], y[keep], 3)
        expected = 1.0 - float((normalise_rows(X[i:i + 1]) @ centroids.T).max())
        assert found[i] == pytest.approx(expected, abs=1e-12)


def test_distances_do_not_depend_on_the_batch(model):
    vectors = np.random.default_rng(2).random((9, model.card.backbone.embedding_dim)).astype(np.float32)
    together = model.unknown_embeddings(vectors)
    one_by_one = np.concatenate([model.unknown_embeddings(vectors[i:i + 1]) for i in range(len(vectors))])
    assert np.array_equal(together, one_by_one)
    batch = model.post.unknown.distances(vectors)
    assert np.array_equal(batch, np.concatenate([model.post.unknown.distances(vectors[i:i + 1]) for i in range(9)]))
