"""The ``classic`` backbone: seed 001's Hu moments, Haralick texture and HSV histogram."""

from __future__ import annotations

import math

import numpy as np
import pytest

from photolabel.backbones.base import Backbone
from photolabel.backbones.classic import (
    EMBEDDING_DIM,
    HARALICK_DIM,
    HU_DIM,
    ClassicBackbone,
    classic_features,
    greyscale,
    haralick_features,
    hsv_histogram,
    hu_moments,
    rgb_to_hsv,
)

HIST_START = HU_DIM + HARALICK_DIM


def _real_image() -> np.ndarray:
    data = pytest.importorskip("skimage.data", reason="scikit-image provides the real test photo")
    return data.chelsea()  # 300x451 RGB photo of a cat


def _random_image(seed: int, size: int = 256) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def backbone() -> ClassicBackbone:
    return ClassicBackbone()


@pytest.fixture(scope="module")
def cat(backbone: ClassicBackbone) -> np.ndarray:
    return backbone.prepare(_real_image())


# --- the Backbone contract ----------------------------------------------------------------


def test_is_a_backbone_with_the_documented_shape(backbone: ClassicBackbone) -> None:
    assert isinstance(backbone, Backbone)
    assert backbone.name == "classic"
    assert backbone.embedding_dim == EMBEDDING_DIM == 7 + 13 + 512
    assert backbone.preprocessing.image_size == (256, 256)
    assert backbone.preprocessing.layout == "HWC-uint8"
    assert backbone.preprocessing.resample == "bilinear"


def test_prepare_resizes_any_image_to_256_uint8(backbone: ClassicBackbone) -> None:
    prepared = backbone.prepare(np.zeros((100, 150, 3), np.uint8))
    assert prepared.shape == (256, 256, 3)
    assert prepared.dtype == np.uint8


def test_embed_batch_shape_dtype_and_finite(backbone: ClassicBackbone, cat: np.ndarray) -> None:
    batch = np.stack([cat, _random_image(1)])
    vectors = backbone.embed_batch(batch)
    assert vectors.shape == (2, EMBEDDING_DIM)
    assert vectors.dtype == np.float32
    assert np.isfinite(vectors).all()
    assert backbone.embed_batch(batch[:0]).shape == (0, EMBEDDING_DIM)


def test_rows_are_deterministic_and_independent_of_the_batch(
    backbone: ClassicBackbone, cat: np.ndarray
) -> None:
    alone = backbone.embed_batch(cat[None])
    again = backbone.embed_batch(cat[None].copy())
    in_batch = backbone.embed_batch(np.stack([_random_image(2), cat, _random_image(3)]))
    assert alone.tobytes() == again.tobytes()
    assert in_batch[1].tobytes() == alone[0].tobytes()
    assert in_batch[0].tobytes() != in_batch[2].tobytes()


def test_bad_inputs_are_refused_with_the_shape_received(backbone: ClassicBackbone) -> None:
    with pytest.raises(ValueError, match="float64"):
        backbone.prepare(np.zeros((10, 10, 3)))
    with pytest.raises(ValueError, match=r"\(10, 10\)"):
        backbone.prepare(np.zeros((10, 10), np.uint8))
    with pytest.raises(ValueError, match=r"\(1, 64, 64, 3\)"):
        backbone.embed_batch(np.zeros((1, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="image_size"):
        ClassicBackbone(image_size=1)


def test_hash_is_stable_and_follows_preprocessing() -> None:
    default = ClassicBackbone().hash
    assert default == ClassicBackbone(image_size=256).hash
    assert len(default) == 64 and int(default, 16) >= 0
    smaller = ClassicBackbone(image_size=128)
    assert smaller.hash != default
    assert smaller.preprocessing.image_size == (128, 128)
    assert smaller.embed_batch(smaller.prepare(_random_image(4))[None]).shape == (1, EMBEDDING_DIM)
    assert ClassicBackbone().describe()["hash"] == default


# --- colour conversions: OpenCV's 8-bit arithmetic ----------------------------------------

PRIMARIES = np.array(
    [
        [
            [255, 0, 0],
            [0, 255, 0],
            [0, 0, 255],
            [255, 255, 0],
            [0, 255, 255],
            [255, 0, 255],
            [128, 128, 128],
            [0, 0, 0],
            [255, 255, 255],
        ]
    ],
    dtype=np.uint8,
)


def test_greyscale_matches_opencv_bt601_values() -> None:
    # cv2.cvtColor(..., COLOR_RGB2GRAY) gives 76, 150, 29 for pure red, green, blue.
    assert greyscale(PRIMARIES)[0].tolist() == [76, 150, 29, 226, 179, 105, 128, 0, 255]


def test_hsv_uses_opencv_8bit_ranges() -> None:
    hsv = rgb_to_hsv(PRIMARIES)[0].tolist()
    assert [h for h, _, _ in hsv] == [0, 60, 120, 30, 90, 150, 0, 0, 0]
    assert hsv[0] == [0, 255, 255]
    assert hsv[6] == [0, 0, 128]
    assert hsv[8] == [0, 0, 255]
    # hue stays below 180: a slightly blue red wraps to 179
    assert rgb_to_hsv(np.array([[[255, 0, 5]]], np.uint8))[0, 0, 0] == 179


def test_conversions_are_bit_exact_with_opencv_when_installed() -> None:
    cv2 = pytest.importorskip("cv2", reason="OpenCV is only a cross-check, not a dependency")
    grid = np.stack(np.meshgrid(np.arange(256), np.arange(256), np.arange(0, 256, 17), indexing="ij"), -1)
    rgb = grid.reshape(1, -1, 3).astype(np.uint8)
    assert np.array_equal(greyscale(rgb), cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY))
    assert np.array_equal(rgb_to_hsv(rgb), cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV))


# --- HSV histogram --------------------------------------------------------------------------


def test_histogram_sums_to_one_and_is_h_major(cat: np.ndarray) -> None:
    histogram = hsv_histogram(cat)
    assert histogram.shape == (512,)
    assert histogram.sum() == pytest.approx(1.0, abs=1e-12)
    assert (histogram >= 0).all()


@pytest.mark.parametrize(
    ("colour", "index"),
    [
        ((255, 0, 0), 0 * 64 + 7 * 8 + 7),  # H=0, S=255, V=255
        ((0, 0, 255), 5 * 64 + 7 * 8 + 7),  # H=120 -> bin 120*8//180 = 5
        ((128, 128, 128), 0 * 64 + 0 * 8 + 4),  # grey: S=0, V=128 -> bin 4
        ((0, 0, 0), 0),
    ],
)
def test_flat_colour_lands_in_its_bin(colour: tuple[int, int, int], index: int) -> None:
    image = np.empty((256, 256, 3), np.uint8)
    image[:] = colour
    vector = ClassicBackbone().embed_batch(image[None])[0]
    histogram = vector[HIST_START:]
    assert histogram[index] == 1.0
    assert histogram.sum() == 1.0


# --- Hu moments ----------------------------------------------------------------------------


def test_hu_moments_match_scikit_image(cat: np.ndarray) -> None:
    measure = pytest.importorskip("skimage.measure", reason="scikit-image is the Hu cross-check")
    grey = greyscale(cat)
    # skimage indexes moments (row, col); transposing makes its first index x = column,
    # OpenCV's convention, so even the sign of the 7th (reflection-odd) invariant agrees.
    nu = measure.moments_normalized(measure.moments_central(grey.T.astype(np.float64), order=3), order=3)
    expected = measure.moments_hu(nu)
    # Both compute central moments from centred coordinates in float64; 1e-9 relative
    # leaves room for summation order only.
    np.testing.assert_allclose(hu_moments(grey), expected, rtol=1e-9, atol=0)


def test_hu_moments_are_rotation_invariant_and_h7_flips_in_a_mirror(cat: np.ndarray) -> None:
    grey = greyscale(cat)
    hu = hu_moments(grey)
    np.testing.assert_allclose(hu_moments(np.rot90(grey).copy()), hu, rtol=1e-9)
    mirrored = hu_moments(np.fliplr(grey).copy())
    np.testing.assert_allclose(mirrored[:6], hu[:6], rtol=1e-9)
    np.testing.assert_allclose(mirrored[6], -hu[6], rtol=1e-9)


def test_hu_moments_of_a_centred_square_are_known() -> None:
    # An n x n square of ones: nu20 = nu02 = (n^2 - 1) / (12 n^2) and nothing else, so
    # h1 = (n^2 - 1) / (6 n^2) and h2..h7 = 0. (Intensity scales nu by 1/value.)
    n = 32
    image = np.zeros((64, 64), np.uint8)
    image[16 : 16 + n, 16 : 16 + n] = 1
    hu = hu_moments(image)
    assert hu[0] == pytest.approx((n * n - 1) / (6 * n * n), rel=1e-12)
    np.testing.assert_allclose(hu[1:], 0.0, atol=1e-15)


# --- Haralick texture ------------------------------------------------------------------------


def test_haralick_on_a_hand_computed_two_level_image() -> None:
    # Vertical stripes 0 1 0 1: horizontal and both diagonal neighbours always differ,
    # vertical neighbours are always equal. Derivation per direction:
    #   differ: P = [[0, .5], [.5, 0]];  equal: P = [[.5, 0], [0, .5]]; marginals (.5, .5)
    #   ASM .5 / .5; contrast 1 / 0; correlation -1 / 1; variance .25 / .25; IDM .5 / 1;
    #   P(x+y) = [0,1,0,0] / [.5,0,.5,0]: sum average 1 / 1, sum variance 0 / 1,
    #   sum entropy 0 / 1; entropy 1 / 1; P(|x-y|) = [0,1] / [1,0]: its variance .25 / .25,
    #   entropy 0 / 0; HX = 1, HXY1 = HXY2 = 2: IMC1 = (1-2)/1 = -1, IMC2 = sqrt(1-e^-2).
    # The features are the mean over the 4 directions (3 "differ", 1 "equal").
    image = np.tile(np.array([0, 1], np.uint8), (4, 2))
    expected = [
        0.5,
        0.75,
        -0.5,
        0.25,
        0.625,
        1.0,
        0.25,
        0.25,
        1.0,
        0.25,
        0.0,
        -1.0,
        math.sqrt(1 - math.exp(-2)),
    ]
    np.testing.assert_allclose(haralick_features(image), expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("which", ["cat", "random", "gradient", "black", "white"])
def test_haralick_matches_mahotas(which: str, cat: np.ndarray) -> None:
    mahotas = pytest.importorskip("mahotas", reason="mahotas is the Haralick cross-check")
    yy, xx = np.mgrid[:256, :256]
    images = {
        "cat": greyscale(cat),
        "random": greyscale(_random_image(5)),
        "gradient": ((xx + yy) // 2).astype(np.uint8),
        "black": np.zeros((256, 256), np.uint8),
        "white": np.full((256, 256), 255, np.uint8),
    }
    grey = images[which]
    expected = mahotas.features.haralick(grey).mean(axis=0)
    # Ours counts marginals and sums exactly from pixel pairs; mahotas sums floats.
    np.testing.assert_allclose(haralick_features(grey), expected, rtol=1e-9, atol=1e-12)


# --- blank and real images ---------------------------------------------------------------------


@pytest.mark.parametrize("level", [0, 255, 37])
def test_blank_images_give_finite_features(level: int) -> None:
    image = np.full((256, 256, 3), level, np.uint8)
    vector = ClassicBackbone().embed_batch(image[None])[0]
    assert np.isfinite(vector).all()
    if level == 0:
        assert (vector[:HU_DIM] == 0).all()  # no mass, no moments (OpenCV gives zeros too)
    assert vector[HU_DIM + 2] == 1.0  # correlation of a constant image is defined as 1


def test_real_photo_features_are_plausible(cat: np.ndarray) -> None:
    features = classic_features(cat)
    assert features.shape == (EMBEDDING_DIM,)
    assert np.isfinite(features).all()
    hu = features[:HU_DIM]
    assert 0 < hu[0] < 1  # h1 = nu20 + nu02 of a natural photo
    haralick = features[HU_DIM:HIST_START]
    assert -1 <= haralick[2] <= 1  # correlation
    assert 0 < haralick[0] <= 1  # angular second moment
    assert np.count_nonzero(features[HIST_START:]) > 10  # a photo spreads over many colours
