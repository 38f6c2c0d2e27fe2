"""Augmented views: drawn from the image hash, the seed and the view index; the same pixels every run;
cached by view key; training rows only; byte-identical models."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_embedding import MeanColour

import photolabel
from photolabel.artifact import compute_model_id
from photolabel.augment import (
    AUGMENT_VERSION,
    RECIPE,
    AugmentedView,
    ViewParams,
    apply_view,
    draw_params,
    embed_views,
    view_key,
    with_views,
)
from photolabel.cache import EmbeddingCache
from photolabel.dataset import ImageRecord
from photolabel.embedding import ImageInput, embed_images
from photolabel.errors import DataError, ModelError

SHA = hashlib.sha256(b"an image").hexdigest()


def _gradient(height: int = 48, width: int = 64) -> np.ndarray:
    """An asymmetric test picture: red grows left to right, green top to bottom, blue constant."""
    rows, cols = np.mgrid[0:height, 0:width]
    return np.stack([cols * 255 // (width - 1), rows * 255 // (height - 1), np.full_like(rows, 90)],
                    axis=2).astype(np.uint8)


def _model_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "run.json"}


# --- keys and parameters ---------------------------------------------------------------------------


def test_view_key_is_a_sha256_of_image_seed_index_and_version():
    key = view_key(SHA, 1234, 0)
    assert len(key) == 64 and int(key, 16) >= 0
    assert key == view_key(SHA, 1234, 0) == AugmentedView(SHA, 1234, 0).key
    others = {view_key(SHA, 1234, 1), view_key(SHA, 7, 0), view_key(SHA, 1234, 0, version=AUGMENT_VERSION + 1),
              view_key(hashlib.sha256(b"another image").hexdigest(), 1234, 0)}
    assert len(others) == 4 and key not in others and SHA not in others


def test_parameters_are_deterministic_and_inside_the_recipe():
    drawn = [draw_params(view_key(SHA, seed, index)) for seed in range(20) for index in range(16)]
    assert drawn[:16] == [draw_params(view_key(SHA, 0, index)) for index in range(16)]
    assert len(set(drawn)) == len(drawn)
    for params in drawn:
        assert RECIPE.scale[0] <= params.scale <= RECIPE.scale[1]
        assert RECIPE.ratio[0] - 1e-6 <= params.ratio <= RECIPE.ratio[1] + 1e-6
        assert 0.0 <= params.x <= 1.0 and 0.0 <= params.y <= 1.0
        assert abs(params.angle) <= RECIPE.rotation
        for factor, spread in ((params.brightness, RECIPE.brightness), (params.contrast, RECIPE.contrast),
                               (params.saturation, RECIPE.saturation)):
            assert 1.0 - spread <= factor <= 1.0 + spread
    flips = sum(params.flip for params in drawn)
    assert 0.4 * len(drawn) < flips < 0.6 * len(drawn)


def test_the_recipe_is_pinned_to_its_version():
    """Changing what a view looks like must bump AUGMENT_VERSION (and then these values)."""
    assert AUGMENT_VERSION == 1
    assert RECIPE.to_dict() == {"flip": 0.5, "scale": [0.6, 1.0], "ratio": [0.75, 1.333333], "rotation": 10.0,
                                "brightness": 0.2, "contrast": 0.2, "saturation": 0.2}
    view = AugmentedView(SHA, 1234, 3)
    assert view.params == ViewParams(flip=True, scale=0.648611, ratio=1.166946, x=0.700567, y=0.759729,
                                     angle=0.153725, brightness=1.007886, contrast=0.87981, saturation=0.966441)
    pixels = view.apply(_gradient())
    assert pixels.shape == (36, 56, 3)
    assert hashlib.sha256(pixels.tobytes()).hexdigest() == (
        "e5489cea0362e26e0ca967c81d24fb24c953754ef46f547b447ef4b6c269b5df")


# --- pixels ----------------------------------------------------------------------------------------


def test_views_are_the_same_pixels_every_time_and_differ_by_index_and_seed():
    rgb = _gradient()
    first = [AugmentedView(SHA, 1234, k).apply(rgb) for k in range(4)]
    again = [AugmentedView(SHA, 1234, k).apply(rgb) for k in range(4)]
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
    digests = {hashlib.sha256(v.tobytes()).hexdigest() for v in first}
    other_seed = AugmentedView(SHA, 99, 0).apply(rgb)
    assert len(digests) == 4 and hashlib.sha256(other_seed.tobytes()).hexdigest() not in digests
    np.testing.assert_array_equal(rgb, _gradient())  # the input is left alone


def test_the_identity_view_changes_nothing():
    rgb = _gradient()
    np.testing.assert_array_equal(apply_view(rgb, ViewParams()), rgb)


def test_a_flip_view_mirrors_and_leaves_a_symmetric_image_as_it_is():
    rgb = _gradient()
    np.testing.assert_array_equal(apply_view(rgb, ViewParams(flip=True)), rgb[:, ::-1])
    symmetric = np.concatenate([rgb, rgb[:, ::-1]], axis=1)
    np.testing.assert_array_equal(apply_view(symmetric, ViewParams(flip=True)), symmetric)


def test_a_rotated_crop_stays_inside_the_image():
    """No filled corners: a solid picture stays solid under the largest rotation, whole-image crop."""
    solid = np.zeros((40, 70, 3), dtype=np.uint8)
    solid[:] = (200, 50, 30)
    for angle in (-RECIPE.rotation, RECIPE.rotation):
        for scale, x, y in ((1.0, 0.5, 0.5), (RECIPE.scale[0], 0.0, 1.0), (RECIPE.scale[0], 1.0, 0.0)):
            out = apply_view(solid, ViewParams(scale=scale, x=x, y=y, angle=angle, ratio=RECIPE.ratio[1]))
            assert out.shape[0] < 40 and out.shape[1] < 70
            assert (out == solid[0, 0]).all(), (angle, scale, x, y)


def test_a_crop_takes_the_share_of_the_image_it_was_drawn_with():
    rgb = _gradient(60, 80)
    out = apply_view(rgb, ViewParams(scale=0.64, x=0.0, y=0.0))
    assert out.shape == (48, 64, 3)
    np.testing.assert_array_equal(out, rgb[:48, :64])  # top-left corner, no rotation: the pixels themselves


def test_colour_jitter_brightness_contrast_saturation():
    grey = np.full((4, 4, 3), 100, dtype=np.uint8)
    assert (apply_view(grey, ViewParams(brightness=1.2)) == 120).all()
    assert (apply_view(grey, ViewParams(contrast=0.8)) == 100).all()  # a flat picture has no contrast to lose
    colour = np.zeros((2, 2, 3), dtype=np.uint8)
    colour[:] = (200, 100, 0)
    grey_of_colour = round(0.299 * 200 + 0.587 * 100)
    assert (apply_view(colour, ViewParams(saturation=0.8)) == np.rint(
        0.8 * np.array([200, 100, 0]) + 0.2 * grey_of_colour)).all()
    stripes = np.zeros((2, 2, 3), dtype=np.uint8)
    stripes[0] = 50
    stripes[1] = 150
    lower = apply_view(stripes, ViewParams(contrast=0.5))
    assert (lower[0] == 75).all() and (lower[1] == 125).all()


def test_with_views_puts_each_image_before_its_views_with_its_label():
    X = np.array([[1.0], [2.0]])
    views = np.array([[[1.1], [1.2]], [[2.1], [2.2]]], dtype=np.float32)
    rows, labels = with_views(X, np.array([0, 1]), views)
    np.testing.assert_allclose(rows[:, 0], [1.0, 1.1, 1.2, 2.0, 2.1, 2.2], rtol=1e-6)
    assert rows.dtype == np.float64 and labels.tolist() == [0, 0, 0, 1, 1, 1]


# --- embedding: views go through the cache by their key -----------------------------------------------


@dataclass(frozen=True)
class LeftHalf:
    """A view for the tests: the left half of the image."""

    key: str

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(rgb[:, : rgb.shape[1] // 2])


def _red_blue_png() -> bytes:
    pixels = np.zeros((4, 8, 3), dtype=np.uint8)
    pixels[:, :4] = (255, 0, 0)
    pixels[:, 4:] = (0, 0, 255)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_view_is_applied_after_decoding_and_cached_under_its_key(tmp_path):
    data = _red_blue_png()
    sha = hashlib.sha256(data).hexdigest()
    path = tmp_path / "red-blue.png"
    path.write_bytes(data)
    cache = EmbeddingCache(tmp_path / "cache", MeanColour().hash, 3)
    key = view_key(sha, 1, 0)
    inputs = [ImageInput("rb", path=path, sha256=sha), ImageInput("rb", path=path, sha256=sha, view=LeftHalf(key))]
    first = embed_images(inputs, MeanColour(), cache=cache)
    np.testing.assert_array_equal(first.vectors, [[0.5, 0, 0.5], [1, 0, 0]])  # the whole image, then its red half
    assert first.sha256 == [sha, sha] and (first.computed, first.cached) == (2, 0)
    np.testing.assert_array_equal(cache.get(key), [1, 0, 0])
    np.testing.assert_array_equal(cache.get(sha), [0.5, 0, 0.5])

    backbone = MeanColour()
    second = embed_images(inputs, backbone, cache=cache)
    assert (second.computed, second.cached) == (0, 2) and backbone.prepared == 0
    np.testing.assert_array_equal(second.vectors, first.vectors)


def test_a_view_of_changed_bytes_is_a_failure(tmp_path):
    path = tmp_path / "rb.png"
    path.write_bytes(_red_blue_png())
    listed = "0" * 64
    result = embed_images([ImageInput("rb.png", path=path, sha256=listed, view=LeftHalf(view_key(listed, 1, 0)))],
                          MeanColour())
    assert result.indices == [] and "file changed" in result.failures[0][1].reason


# --- training ------------------------------------------------------------------------------------------


def test_training_with_views_is_byte_identical_cached_and_keeps_views_out_of_validation(small_data, tmp_path):
    one = photolabel.train(small_data, tmp_path / "one", cache_dir=tmp_path / "cache-a", threads=1, augment=2)
    warm = photolabel.train(small_data, tmp_path / "warm", cache_dir=tmp_path / "cache-a", threads=2, augment=2)
    # the views again, cold, with other threads and batches (the images' own vectors kept, to save time)
    shutil.copytree(tmp_path / "cache-a", tmp_path / "cache-b")
    for view_file in (tmp_path / "cache-b").rglob("*.emb"):
        if view_file.stem not in {row["sha256"] for row in one.model.lineage["images"]}:
            view_file.unlink()
    two = photolabel.train(small_data, tmp_path / "two", cache_dir=tmp_path / "cache-b", threads=2, augment=2,
                           batch_size=7)
    assert (one.n_train, one.n_valid) == (54, 6)  # real images; the split is by image
    assert (one.embeddings_computed, one.embeddings_cached) == (60 + 2 * 54, 0)  # views of training images only
    assert (warm.embeddings_computed, warm.embeddings_cached) == (0, 60 + 2 * 54)
    assert (two.embeddings_computed, two.embeddings_cached) == (2 * 54, 60)
    reference = _model_bytes(tmp_path / "one")
    assert _model_bytes(tmp_path / "warm") == reference and _model_bytes(tmp_path / "two") == reference
    assert one.model_id == warm.model_id == two.model_id

    model = photolabel.load_model(tmp_path / "one")
    assert len(model.lineage["images"]) == 60  # the lineage lists the real images
    assert model.card.config.augment == 2
    assert model.card.augment == {"views": 2, "version": AUGMENT_VERSION, "recipe": RECIPE.to_dict()}
    cache = EmbeddingCache(tmp_path / "cache-a", model.card.backbone.hash, model.card.backbone.embedding_dim)
    for row in model.lineage["images"]:
        has_views = [cache.contains(view_key(row["sha256"], 1234, k)) for k in range(3)]
        assert has_views == ([True, True, False] if row["split"] == "train" else [False, False, False]), row


def test_the_number_of_views_and_the_recipe_version_enter_the_model_id(small_data, tmp_path, cache_dir):
    plain = photolabel.train(small_data, tmp_path / "plain", cache_dir=cache_dir)
    one = photolabel.train(small_data, tmp_path / "one", cache_dir=cache_dir, augment=1)
    two = photolabel.train(small_data, tmp_path / "two", cache_dir=cache_dir, augment=2)
    assert len({plain.model_id, one.model_id, two.model_id}) == 3
    assert plain.model.card.augment is None and "augment" not in json.loads(
        (tmp_path / "plain" / "model.json").read_text())

    card = one.model.card
    described = (card.manifest_sha256, card.config, card.head.version, card.backbone.hash)
    assert compute_model_id(*described, augment_version=AUGMENT_VERSION) == one.model_id
    assert compute_model_id(*described, augment_version=AUGMENT_VERSION + 1) != one.model_id


def test_an_edited_augmentation_version_is_refused(small_data, tmp_path, cache_dir):
    photolabel.train(small_data, tmp_path / "m", cache_dir=cache_dir, augment=1)
    card = tmp_path / "m" / "model.json"
    doc = json.loads(card.read_text())
    doc["augment"]["version"] = AUGMENT_VERSION + 1
    card.write_text(json.dumps(doc))
    with pytest.raises(ModelError, match="model_id"):
        photolabel.load_model(tmp_path / "m")


def test_views_of_images_without_bytes_must_be_cached(tmp_path):
    """An incremental model's old images have no bytes here: their views can only come from the cache."""
    cache = EmbeddingCache(tmp_path / "cache", MeanColour().hash, 3)
    records = [ImageRecord("old:1", None, SHA, "a")]  # type: ignore[arg-type]
    with pytest.raises(DataError, match="augmented views of 1 images"):
        embed_views(records, MeanColour(), views=2, seed=1, cache=cache)
    for index in range(2):
        cache.put(view_key(SHA, 1, index), np.array([index, 0, 0], dtype=np.float32))
    embedded = embed_views(records, MeanColour(), views=2, seed=1, cache=cache)
    assert embedded.vectors.shape == (1, 2, 3) and (embedded.computed, embedded.cached) == (0, 2)
    np.testing.assert_array_equal(embedded.vectors[0, :, 0], [0, 1])
