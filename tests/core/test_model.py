"""The one inference interface: load a model directory once, predict batches, one result per input."""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from photolabel.config import Runtime
from photolabel.dataset import BadInput
from photolabel.embedding import ImageInput, pixels_sha256
from photolabel.errors import ImageError, ModelError
from photolabel.images import decode_image
from photolabel.model import Model, Prediction, load_model

LABELS = ("blouse", "halter", "sweater")


@pytest.fixture(scope="module")
def model(trained_model: Path, cache_dir: Path) -> Model:
    return load_model(trained_model, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def images(small_data: Path) -> list[Path]:
    """One image of each label."""
    return [min((small_data / label).iterdir()) for label in LABELS]


def _copy(trained_model: Path, tmp_path: Path) -> Path:
    out = tmp_path / "copy"
    shutil.copytree(trained_model, out)
    return out


def test_load_reads_the_card(model, trained_model, cache_dir):
    document = json.loads((trained_model / "model.json").read_text())
    assert model.labels == LABELS
    assert model.model_id == document["model_id"] and len(model.model_id) == 64
    assert model.card.backbone.name == "efficientnet-lite1"  # the default
    assert model.card.backbone.hash == document["backbone"]["hash"] == model.backbone.hash
    assert model.card.head.name == "logistic"
    assert model.path == trained_model
    assert model.cache_dir == cache_dir and model.runtime.cache_dir == cache_dir


def test_overrides_replace_single_fields_of_the_runtime(trained_model, cache_dir):
    runtime = Runtime(batch_size=8, threads=3, max_pixels=1000)
    loaded = Model.load(trained_model, runtime=runtime, threads=1, cache_dir=cache_dir)
    assert (loaded.runtime.threads, loaded.runtime.batch_size, loaded.runtime.max_pixels) == (1, 8, 1000)
    assert loaded.runtime.cache_dir == cache_dir and loaded.max_pixels == 1000
    assert runtime.threads == 3  # the caller's runtime is left alone


def test_repr_names_the_id_and_labels(model):
    text = repr(model)
    assert model.model_id[:12] in text and str(list(LABELS)) in text and "logistic" in text


def test_predict_batch_pairs_results_with_inputs_and_keeps_bad_ones_in_place(model, images, tmp_path):
    missing = tmp_path / "missing.jpg"
    results = model.predict_batch([images[0], missing, b"not an image", images[2]])
    assert [type(r) for r in results] == [Prediction, BadInput, BadInput, Prediction]
    first, gone, junk, last = results
    assert first.image == str(images[0]) and last.image == str(images[2])
    assert first.sha256 == hashlib.sha256(images[0].read_bytes()).hexdigest()
    assert first.model_id == model.model_id and set(first.scores) == set(LABELS)
    assert first.label == max(first.scores, key=first.scores.get) and first.probability == first.scores[first.label]
    assert gone.source == str(missing) and "cannot read file" in gone.reason
    assert junk.source == "<bytes>" and junk.code == "not_an_image"


def test_bytes_and_path_of_one_image_give_the_same_answer(model, images):
    by_path, by_bytes, by_input = model.predict_batch(
        [images[1], images[1].read_bytes(), ImageInput("mine", path=images[1])])
    assert by_bytes.image == "<bytes>" and by_input.image == "mine"
    assert by_path.sha256 == by_bytes.sha256 == by_input.sha256
    assert by_bytes.scores == pytest.approx(by_path.scores, abs=1e-6)
    assert by_input.scores == pytest.approx(by_path.scores, abs=1e-6)


def test_rgb_uint8_array_is_accepted_and_a_float_array_is_refused_in_place(model, images):
    # Decoded as the model decodes files, so the answer must match the file's.
    pixels = decode_image(images[2].read_bytes(), draft_size=model.backbone.draft_size)
    by_path, by_array, by_float = model.predict_batch([images[2], pixels, pixels.astype(np.float32)])
    assert by_array.image == "<array>" and by_array.sha256 == pixels_sha256(pixels)
    assert by_array.scores == pytest.approx(by_path.scores, abs=1e-6)
    assert isinstance(by_float, BadInput) and by_float.source == "<array>" and by_float.code == "bad_image"
    assert "float32" in by_float.reason and str(pixels.shape) in by_float.reason


def test_remote_uris_are_refused_per_input_without_network(model, images, monkeypatch):
    attempts: list[object] = []

    def no_network(*args, **kwargs):
        attempts.append(args)
        raise OSError("network used in a test")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    uris = ["https://example.invalid/x.jpg", "s3://b/x.jpg"]
    results = model.predict_batch([uris[0], images[0], uris[1]])
    assert attempts == []
    assert isinstance(results[1], Prediction)
    for uri, result in zip(uris, (results[0], results[2])):
        assert isinstance(result, BadInput) and result.source == uri and result.code == "fetch_failed"
        assert "read_images" in result.reason


def test_file_url_is_a_local_path(model, images):
    by_path, by_url = model.predict_batch([images[0], images[0].as_uri()])
    assert isinstance(by_url, Prediction) and by_url.sha256 == by_path.sha256


def test_upstream_bad_input_is_passed_through_in_place(model, images):
    refused = BadInput("https://x.invalid/a.jpg", "timed out", "fetch_failed")
    results = model.predict_batch([refused, images[0]])
    assert results[0] is refused and isinstance(results[1], Prediction)


def test_predict_raises_on_the_first_bad_input(model, images, tmp_path):
    with pytest.raises(ImageError, match="^<bytes>: ") as caught:
        model.predict([images[0], b"junk", tmp_path / "missing.jpg"])
    assert "missing.jpg" not in str(caught.value)
    assert [p.label for p in model.predict(images)] == [p.label for p in model.predict_batch(images)]


def test_predict_proba_rows_follow_the_label_order_and_sum_to_one(model, images):
    probabilities = model.predict_proba(images)
    assert probabilities.shape == (3, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    for row, prediction in zip(probabilities, model.predict(images)):
        assert list(row) == [prediction.scores[label] for label in LABELS]


def test_predict_embeddings(model):
    assert model.predict_embeddings(np.zeros((0, 1280), dtype=np.float32)).shape == (0, 3)
    vectors = np.random.default_rng(0).random((4, 1280), dtype=np.float32)
    probabilities = model.predict_embeddings(vectors)
    assert probabilities.shape == (4, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)


def test_prediction_top_and_to_dict(model, images):
    (prediction,) = model.predict([images[0]])
    top = prediction.top(2)
    assert len(top) == 2 and top[0] == (prediction.label, prediction.probability) and top[0][1] >= top[1][1]
    assert prediction.top(0) == top[:1]
    doc = prediction.to_dict(top_k=1)
    assert doc["scores"] == {prediction.label: prediction.probability}
    assert doc["image"] == str(images[0]) and doc["model_id"] == model.model_id
    assert set(prediction.to_dict()["scores"]) == set(LABELS)


def test_another_backbone_hash_is_refused_when_the_backbone_is_needed(trained_model, cache_dir, tmp_path, images):
    out = _copy(trained_model, tmp_path)
    document = json.loads((out / "model.json").read_text())
    document["backbone"]["hash"] = "0" * 64
    (out / "model.json").write_text(json.dumps(document))
    with pytest.raises(ModelError, match="the file was edited"):  # the id no longer matches the card
        load_model(out, cache_dir=cache_dir)
    loaded = load_model(out, cache_dir=cache_dir, verify=False)
    with pytest.raises(ModelError, match="reinstall") as caught:
        _ = loaded.backbone
    assert "0000000000000000" in str(caught.value)
    with pytest.raises(ModelError, match="reinstall"):
        loaded.predict_batch([images[0]])


def test_tampered_head_file_is_refused_at_load(trained_model, cache_dir, tmp_path):
    out = _copy(trained_model, tmp_path)
    coef = out / "head" / "coef.npy"
    data = bytearray(coef.read_bytes())
    data[-1] ^= 1
    coef.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"coef\.npy: sha256 [0-9a-f]{64} does not match"):
        load_model(out, cache_dir=cache_dir)
    assert load_model(out, cache_dir=cache_dir, verify=False).labels == LABELS


def test_unreadable_head_is_a_model_error(trained_model, cache_dir, tmp_path):
    out = _copy(trained_model, tmp_path)
    (out / "head" / "coef.npy").write_bytes(b"not numpy")
    with pytest.raises(ModelError, match="cannot load the head"):
        load_model(out, cache_dir=cache_dir, verify=False)
