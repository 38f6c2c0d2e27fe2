"""The Python API takes what users hold: one path or URL, a list, bytes, PIL images, arrays, (image, label)
pairs and DataFrames; errors name the input without printing it."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import photolabel
from photolabel import storage
from photolabel.embedding import pixels_sha256
from photolabel.errors import DataError, ImageError, SourceNotFoundError
from photolabel.images import decode_image
from photolabel.inputs import encode_png
from photolabel.model import Model, Prediction, load_model

LABELS = ("blouse", "halter", "sweater")


@pytest.fixture(scope="module")
def model(trained_model: Path, cache_dir: Path) -> Model:
    return load_model(trained_model, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def images(small_data: Path) -> list[Path]:
    """One image of each label."""
    return [min((small_data / label).iterdir()) for label in LABELS]


def _pairs(small_data: Path) -> list[tuple[Path, str]]:
    return [(path, label) for label in LABELS for path in sorted((small_data / label).iterdir())]


class _Frame:
    """Just enough of a DataFrame (columns, __getitem__, index) to show that no pandas is needed."""

    def __init__(self, **columns: list) -> None:
        self._columns = columns
        self.columns = list(columns)
        self.index = range(len(next(iter(columns.values()))))

    def __getitem__(self, name: str) -> list:
        return self._columns[name]


# --- predict --------------------------------------------------------------------------------------


def test_a_single_path_gives_a_single_prediction_and_a_list_a_list(model, images):
    one = model.predict(str(images[0]))
    assert isinstance(one, Prediction) and one.image == str(images[0])
    assert model.predict(images[0]) == one  # a Path too
    several = model.predict([str(images[0]), images[1]])
    assert isinstance(several, list) and several[0] == one and len(several) == 2
    assert model.predict_batch(images[0]) == one
    assert model.predict(images[:0]) == []


def test_a_single_url_is_read_through_storage(model, images):
    uri = f"memory://photolabel-tests/{uuid.uuid4().hex}/x.jpg"
    storage.write_bytes(uri, images[0].read_bytes())
    by_uri, by_path = model.predict(uri), model.predict(images[0])
    assert by_uri.image == uri and by_uri.sha256 == by_path.sha256 and by_uri.scores == by_path.scores


def test_bytes_pil_images_and_arrays_are_single_images(model, images):
    data = images[1].read_bytes()
    pixels = decode_image(data)  # full resolution, as PIL opens it
    assert model.predict(data).scores == model.predict(images[1]).scores
    by_pil = model.predict(Image.open(images[1]))
    by_array = model.predict(pixels)
    assert by_pil.image == "<PIL image>" and by_array.image == "<array>"
    assert by_pil.sha256 == by_array.sha256 == pixels_sha256(pixels)
    assert by_pil.scores == by_array.scores
    rgba = Image.open(images[1]).convert("RGBA")  # any mode is converted as a file's would be
    assert model.predict(rgba).sha256 == by_array.sha256
    stacked = model.predict(np.stack([pixels, pixels]))  # (N, H, W, 3): N images
    assert [p.sha256 for p in stacked] == [by_array.sha256] * 2
    assert [p.image for p in model.predict(np.array([str(images[0]), str(images[2])]))] == [
        str(images[0]), str(images[2])]


def test_bad_inputs_are_named_without_printing_them(model):
    big = np.zeros((500, 500), dtype=np.float64)
    with pytest.raises(ImageError) as caught:
        model.predict(big)
    message = str(caught.value)
    assert message.startswith("<array>:") and "(500, 500)" in message and "float64" in message
    assert "[[" not in message and len(message) < 200
    for thing, name in ((42, "int"), ({"a": 1}, "dict")):
        with pytest.raises(ImageError, match=f"^{name}: expected an image"):
            model.predict([thing])
    assert model.predict_batch([None])[0].source == "NoneType"


def test_predict_proba_and_embed_follow_the_input_shape(model, images):
    one = model.predict_proba(images[0])
    assert one.shape == (3,) and one.sum() == pytest.approx(1.0)
    rows = model.predict_proba(images)
    assert rows.shape == (3, 3) and list(rows[0]) == list(one)
    vectors = model.embed(images)
    assert vectors.shape == (3, model.backbone.embedding_dim) and vectors.dtype == np.float32
    np.testing.assert_array_equal(model.embed(images[0]), vectors[0])
    np.testing.assert_allclose(model.predict_embeddings(vectors), rows, atol=1e-9)
    np.testing.assert_array_equal(model.embed(images, use_cache=True), vectors)
    with pytest.raises(ImageError, match="^<bytes>: "):
        model.embed([images[0], b"junk"])


def test_repr_is_one_readable_line(model):
    text = repr(model)
    assert text.startswith("<photolabel.Model ") and "\n" not in text and model.model_id[:12] in text
    assert "logistic" in text and "efficientnet-lite1" in text and str(model.path) in text


# --- train and evaluate on pairs --------------------------------------------------------------------


def test_pairs_of_paths_and_of_bytes_train_the_folders_model_byte_for_byte(small_data, trained_model, cache_dir,
                                                                           tmp_path):
    pairs = _pairs(small_data)
    by_paths = photolabel.train([(str(p), label) for p, label in pairs], tmp_path / "paths", cache_dir=cache_dir)
    by_bytes = photolabel.train([(p.read_bytes(), label) for p, label in pairs], tmp_path / "bytes",
                                cache_dir=cache_dir)
    expected = load_model(trained_model).model_id
    assert by_paths.model_id == by_bytes.model_id == expected
    names = sorted(p.relative_to(trained_model) for p in trained_model.rglob("*") if p.is_file())
    names = [name for name in names if name.name != "run.json"]
    for out in (tmp_path / "paths", tmp_path / "bytes"):
        for name in names:
            assert (out / name).read_bytes() == (trained_model / name).read_bytes(), name
    assert by_bytes.embeddings_computed == 0  # the same bytes: the cache answers


def test_arrays_and_pil_images_train_reproducibly(small_data, cache_dir, tmp_path):
    pairs = [(p, label) for label in LABELS for p in sorted((small_data / label).iterdir())[:4]]
    arrays = [(decode_image(p.read_bytes()), label) for p, label in pairs]
    first = photolabel.train(arrays, tmp_path / "a", cache_dir=cache_dir, seed=3)
    pil = [(Image.open(p), label) for p, label in pairs]
    second = photolabel.train(pil, tmp_path / "b", cache_dir=cache_dir, seed=3)
    assert first.model_id == second.model_id  # the same pixels, the same PNG encoding
    assert second.embeddings_computed == 0
    assert (tmp_path / "a" / "model.json").read_bytes() == (tmp_path / "b" / "model.json").read_bytes()
    hashes = {row["sha256"] for row in first.model.lineage["images"]}
    assert hashes == {hashlib.sha256(encode_png(pixels)).hexdigest() for pixels, _ in arrays}


def test_evaluate_takes_pairs_and_dataframes(model, small_data):
    pairs = _pairs(small_data)
    expected = photolabel.evaluate(model, small_data)
    by_pairs = photolabel.evaluate(model, [(str(p), label) for p, label in pairs])
    by_frame = photolabel.evaluate(model, _Frame(image=[str(p) for p, _ in pairs], label=[la for _, la in pairs]))
    assert by_pairs == by_frame == expected


def test_evaluate_takes_a_pandas_dataframe(model, small_data):
    pd = pytest.importorskip("pandas")
    pairs = _pairs(small_data)
    frame = pd.DataFrame({"image": [str(p) for p, _ in pairs], "label": [label for _, label in pairs]})
    assert photolabel.evaluate(model, frame)["accuracy"] == photolabel.evaluate(model, small_data)["accuracy"]


def test_bad_pairs_are_named(model, small_data, tmp_path):
    image = str(next((small_data / "blouse").iterdir()))
    with pytest.raises(DataError, match=r"^item 1: expected an \(image, label\) pair, got str$"):
        photolabel.evaluate(model, [(image, "blouse"), image])
    with pytest.raises(DataError, match="^item 0: a label must be a string, got NoneType$"):
        photolabel.evaluate(model, [(image, None)])
    with pytest.raises(DataError) as caught:
        photolabel.evaluate(model, [(np.zeros((300, 300), dtype=np.float32), "blouse")])
    assert str(caught.value).startswith("item 0 (<array>): ") and "[[" not in str(caught.value)
    with pytest.raises(DataError, match="^item 0: expected an image .*got dict$"):
        photolabel.evaluate(model, [({"x": 1}, "blouse")])
    with pytest.raises(DataError, match="no 'label' column"):
        photolabel.evaluate(model, _Frame(image=[image], tag=["blouse"]))
    with pytest.raises(DataError, match="^the given images: label.*cat"):
        photolabel.evaluate(model, [(image, "cat")])
    missing = tmp_path / "missing.jpg"
    with pytest.raises(SourceNotFoundError, match="^item 1: image .*missing.jpg: not found"):
        photolabel.evaluate(model, [(image, "blouse"), (missing, "blouse")])
    result = photolabel.evaluate(model, [(image, "blouse"), (missing, "blouse")], skip_bad=True)
    assert [s["image"] for s in result["skipped"]] == [str(missing)]


def test_train_refuses_pairs_with_one_label(small_data, tmp_path, cache_dir):
    image = str(next((small_data / "blouse").iterdir()))
    with pytest.raises(DataError, match="at least two labels"):
        photolabel.train([(image, "blouse")], tmp_path / "out", cache_dir=cache_dir)
    assert not (tmp_path / "out").exists()
