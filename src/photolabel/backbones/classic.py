"""The ``classic`` backbone: the Golem scikit-learn image classifier's handcrafted global features, in numpy only.

That classifier (after gogul09's "image classification in Python") describes an image by
three global descriptors, stacked here in this order:

1. Hu's seven moment invariants of the greyscale image (``cv2.HuMoments(cv2.moments(grey))``),
   raw values, so they span many orders of magnitude; the head scales features.
2. The 13 Haralick texture features of the greyscale image, averaged over the four
   directions (``mahotas.features.haralick(grey).mean(axis=0)``).
3. An 8x8x8 colour histogram in OpenCV's 8-bit HSV space (H in [0, 180), S and V in
   [0, 256)), flattened H-major and normalised to sum to 1.

Two deliberate departures from gogul09's code: the hue bins span OpenCV's real hue range
[0, 180) (gogul09 passed [0, 256), leaving two of the eight hue bins always empty), and the
histogram sums to 1 instead of having unit L2 norm, so it reads as colour proportions.

The greyscale and HSV conversions reproduce OpenCV's 8-bit fixed-point arithmetic and
the texture features reproduce mahotas' definitions (including its ``var(P(|i-j|))``
reading of "difference variance"), so neither library is needed. Each image is
computed on its own, in a fixed order of operations, so a vector does not depend on
the batch it came in or on the number of threads.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from photolabel.backbones.base import Backbone, Preprocessing
from photolabel.hashing import sha256_json
from photolabel.images import resize_rgb

#: bump whenever the maths below changes: it is part of the hash, hence of every cache key
FEATURES_VERSION = 1

HU_DIM = 7
HARALICK_DIM = 13
HISTOGRAM_BINS = 8
HISTOGRAM_DIM = HISTOGRAM_BINS**3
EMBEDDING_DIM = HU_DIM + HARALICK_DIM + HISTOGRAM_DIM

# OpenCV's 8-bit RGB->grey: ITU-R BT.601 weights (0.299, 0.587, 0.114) in 15-bit
# fixed point (they sum to 2**15, so white stays 255), rounded half up.
_GREY_SHIFT = 15
_GREY_R, _GREY_G, _GREY_B = 9798, 19235, 3735

# OpenCV's 8-bit RGB->HSV divides through 12-bit fixed-point reciprocal tables.
_HSV_SHIFT = 12
_HUE_RANGE = 180
# int32 is wide enough: every product below is under 255 * 1044480 < 2**31.
_SDIV = np.zeros(256, np.int32)
_HDIV = np.zeros(256, np.int32)
_SDIV[1:] = np.rint((255 << _HSV_SHIFT) / np.arange(1, 256, dtype=np.float64))
_HDIV[1:] = np.rint((_HUE_RANGE << _HSV_SHIFT) / (6.0 * np.arange(1, 256, dtype=np.float64)))

# The four 2-D neighbour offsets (dy, dx) mahotas uses, at distance 1.
_GLCM_OFFSETS = ((0, 1), (1, 1), (1, 0), (1, -1))

_FEATURES_SPEC: list[dict[str, Any]] = [
    {"name": "hu_moments", "dim": HU_DIM, "input": "grey-bt601-fixed15", "moments": "intensity-weighted"},
    {
        "name": "haralick",
        "dim": HARALICK_DIM,
        "input": "grey-bt601-fixed15",
        "levels": "max+1",
        "distance": 1,
        "offsets": [list(offset) for offset in _GLCM_OFFSETS],
        "symmetric": True,
        "reduce": "mean",
        "difference_variance": "var(P(|i-j|))",
        "log": 2,
    },
    {
        "name": "hsv_histogram",
        "dim": HISTOGRAM_DIM,
        "bins": [HISTOGRAM_BINS] * 3,
        "ranges": [[0, _HUE_RANGE], [0, 256], [0, 256]],
        "order": "h,s,v",
        "normalise": "sum",
    },
]


def greyscale(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> grey uint8 (H, W), exactly as ``cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)``."""
    channels = rgb.astype(np.int32)
    weighted = (
        channels[..., 0] * _GREY_R
        + channels[..., 1] * _GREY_G
        + channels[..., 2] * _GREY_B
        + (1 << (_GREY_SHIFT - 1))
    )
    return (weighted >> _GREY_SHIFT).astype(np.uint8)


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 (H, W, 3) -> HSV uint8 (H, W, 3) in OpenCV's 8-bit convention.

    H is in [0, 180), S and V in [0, 256); the same integers as
    ``cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV)``.
    """
    channels = rgb.astype(np.int32)
    red, green, blue = channels[..., 0], channels[..., 1], channels[..., 2]
    value = np.maximum(np.maximum(red, green), blue)
    spread = value - np.minimum(np.minimum(red, green), blue)
    half = 1 << (_HSV_SHIFT - 1)
    saturation = (spread * _SDIV[value] + half) >> _HSV_SHIFT
    # OpenCV picks the sector by which channel is the maximum, red first, then green.
    hue = np.where(
        value == red,
        green - blue,
        np.where(value == green, blue - red + 2 * spread, red - green + 4 * spread),
    )
    hue = (hue * _HDIV[spread] + half) >> _HSV_SHIFT
    hue = np.where(hue < 0, hue + _HUE_RANGE, hue)
    return np.stack([hue, saturation, value], axis=-1).astype(np.uint8)


def hu_moments(grey: np.ndarray) -> np.ndarray:
    """Hu's seven moment invariants of an intensity image, float64 (7,).

    Same definition as ``cv2.HuMoments(cv2.moments(grey))`` (x is the column, y the
    row, pixel values are the weights). A blank (all-zero) image gives zeros.
    """
    height, width = grey.shape
    exact = grey.astype(np.int64)
    m00 = int(exact.sum())
    if m00 == 0:
        return np.zeros(HU_DIM, np.float64)
    # Integer sums are exact; the centroid is then one division away.
    centre_x = int((exact.sum(axis=0) * np.arange(width, dtype=np.int64)).sum()) / m00
    centre_y = int((exact.sum(axis=1) * np.arange(height, dtype=np.int64)).sum()) / m00
    # Central moments straight from centred coordinates: no cancellation between
    # large raw moments, which is what makes the higher orders noisy otherwise.
    powers = np.arange(4)
    dx_powers = (np.arange(width, dtype=np.float64) - centre_x)[:, None] ** powers  # (W, 4)
    dy_powers = (np.arange(height, dtype=np.float64) - centre_y)[:, None] ** powers  # (H, 4)
    by_row = (grey.astype(np.float64)[:, :, None] * dx_powers[None, :, :]).sum(axis=1)  # (H, 4): p
    central = (dy_powers[:, :, None] * by_row[:, None, :]).sum(axis=0)  # (4, 4): [q, p]

    def normalised(p: int, q: int) -> float:
        return float(central[q, p] / m00 ** (1.0 + (p + q) / 2.0))

    nu20, nu11, nu02 = normalised(2, 0), normalised(1, 1), normalised(0, 2)
    nu30, nu21, nu12, nu03 = normalised(3, 0), normalised(2, 1), normalised(1, 2), normalised(0, 3)

    t0, t1 = nu30 + nu12, nu21 + nu03
    q0, q1 = nu30 - 3.0 * nu12, 3.0 * nu21 - nu03
    sum2, diff2 = nu20 + nu02, nu20 - nu02
    return np.array(
        [
            sum2,
            diff2 * diff2 + 4.0 * nu11 * nu11,
            q0 * q0 + q1 * q1,
            t0 * t0 + t1 * t1,
            q0 * t0 * (t0 * t0 - 3.0 * t1 * t1) + q1 * t1 * (3.0 * t0 * t0 - t1 * t1),
            diff2 * (t0 * t0 - t1 * t1) + 4.0 * nu11 * t0 * t1,
            q1 * t0 * (t0 * t0 - 3.0 * t1 * t1) - q0 * t1 * (3.0 * t0 * t0 - t1 * t1),
        ],
        dtype=np.float64,
    )


def _entropy_bits(probabilities: np.ndarray) -> np.ndarray:
    """Shannon entropy in bits along the last axis; zero probabilities contribute nothing."""
    safe = np.where(probabilities > 0, probabilities, 1.0)
    return -(probabilities * np.log2(safe)).sum(axis=-1)


def _count_entropy_bits(counts: np.ndarray) -> float:
    """Entropy in bits of the distribution counts / counts.sum(), over the non-zero counts only."""
    nonzero = counts[counts > 0].astype(np.float64)
    total = nonzero.sum()
    return float(np.log2(total) - (nonzero * np.log2(nonzero)).sum() / total)


def haralick_features(grey: np.ndarray) -> np.ndarray:
    """The 13 Haralick texture features, averaged over 4 directions, float64 (13,).

    Same definitions as ``mahotas.features.haralick(grey).mean(axis=0)``: symmetric
    grey-level co-occurrence matrices at distance 1 with ``grey.max() + 1`` levels,
    entropies in bits. Marginals, sums and differences are counted exactly from the
    pixel pairs; the information measures use the closed forms that hold for a
    symmetric matrix (HXY1 = HXY2 = HX + HY).
    """
    height, width = grey.shape
    if height < 2 or width < 2:
        raise ValueError(f"Haralick features need at least 2x2 pixels, got {height}x{width}")
    levels = int(grey.max()) + 1
    pixels = grey.astype(np.intp)  # the index type bincount wants, so it copies nothing
    n_dirs = len(_GLCM_OFFSETS)

    counts = np.empty((n_dirs, levels, levels), np.int64)
    sum_counts = np.empty((n_dirs, 2 * levels), np.int64)
    signed_difference_counts = np.empty((n_dirs, 2 * levels - 1), np.int64)
    product_sums = np.empty(n_dirs, np.int64)
    totals = np.empty(n_dirs, np.int64)
    for direction, (dy, dx) in enumerate(_GLCM_OFFSETS):
        first = pixels[: height - dy, max(0, -dx) : width - max(0, dx)]
        second = pixels[dy:, max(0, dx) : width - max(0, -dx)]
        one_way = np.bincount((first * levels + second).ravel(), minlength=levels * levels)
        one_way = one_way.reshape(levels, levels)
        counts[direction] = one_way + one_way.T  # symmetric: each pair counted both ways
        sum_counts[direction] = 2 * np.bincount((first + second).ravel(), minlength=2 * levels)
        signed_difference_counts[direction] = np.bincount(
            (first - second + (levels - 1)).ravel(), minlength=2 * levels - 1
        )
        product_sums[direction] = 2 * int((first * second).sum())
        totals[direction] = 2 * first.size
    totals_f = totals.astype(np.float64)[:, None]

    k = np.arange(levels, dtype=np.float64)
    marginal = counts.sum(axis=2) / totals_f  # P_x == P_y for a symmetric matrix
    sums = sum_counts / totals_f  # P_{x+y}
    # P_{|x-y|}: fold the signed differences; d and -d both land on |d|, 0 once per way.
    difference_counts = signed_difference_counts[:, levels - 1 :].copy()
    difference_counts[:, 1:] += signed_difference_counts[:, : levels - 1][:, ::-1]
    differences = 2 * difference_counts / totals_f
    product_mean = product_sums / totals_f[:, 0]  # E[i*j]

    mean = (marginal * k).sum(axis=1)
    variance = (marginal * k * k).sum(axis=1) - mean**2
    std = np.sqrt(np.maximum(variance, 0.0))

    features = np.zeros((n_dirs, HARALICK_DIM), np.float64)
    flat_counts = counts.reshape(n_dirs, -1)
    squared = (flat_counts * flat_counts).sum(axis=1).astype(np.float64)
    features[:, 0] = squared / (totals_f[:, 0] * totals_f[:, 0])  # angular second moment
    features[:, 1] = (differences * k * k).sum(axis=1)  # contrast
    with np.errstate(divide="ignore", invalid="ignore"):
        correlation = (product_mean - mean * mean) / (std * std)
    features[:, 2] = np.where(std == 0.0, 1.0, correlation)
    features[:, 3] = variance  # sum of squares: variance
    features[:, 4] = (differences / (1.0 + k * k)).sum(axis=1)  # inverse difference moment
    two_k = np.arange(2 * levels, dtype=np.float64)
    features[:, 5] = (sums * two_k).sum(axis=1)  # sum average
    features[:, 6] = (sums * two_k * two_k).sum(axis=1) - features[:, 5] ** 2  # sum variance
    features[:, 7] = _entropy_bits(sums)  # sum entropy
    features[:, 8] = [_count_entropy_bits(row) for row in flat_counts]  # entropy (HXY)
    features[:, 9] = differences.var(axis=1)  # difference variance, as mahotas: var of P(|i-j|)
    features[:, 10] = _entropy_bits(differences)  # difference entropy
    marginal_entropy = _entropy_bits(marginal)  # HX == HY for a symmetric matrix
    hxy1 = 2.0 * marginal_entropy
    denominator = np.where(marginal_entropy == 0.0, 1.0, marginal_entropy)
    features[:, 11] = (features[:, 8] - hxy1) / denominator  # information measure of correlation 1
    features[:, 12] = np.sqrt(np.maximum(0.0, 1.0 - np.exp(-2.0 * (hxy1 - features[:, 8]))))
    return features.mean(axis=0)


def hsv_histogram(rgb: np.ndarray, bins: int = HISTOGRAM_BINS) -> np.ndarray:
    """``bins``**3 HSV colour histogram, H-major (index = h*bins^2 + s*bins + v), summing to 1."""
    hsv = rgb_to_hsv(rgb).astype(np.intp)
    hue_bin = hsv[..., 0] * bins // _HUE_RANGE
    saturation_bin = hsv[..., 1] * bins // 256
    value_bin = hsv[..., 2] * bins // 256
    index = (hue_bin * bins + saturation_bin) * bins + value_bin
    counts = np.bincount(index.ravel(), minlength=bins**3)
    return counts / float(index.size)


def classic_features(rgb: np.ndarray) -> np.ndarray:
    """One RGB uint8 image -> float64 (532,): Hu moments, Haralick features, HSV histogram."""
    grey = greyscale(rgb)
    return np.concatenate([hu_moments(grey), haralick_features(grey), hsv_histogram(rgb)])


class ClassicBackbone(Backbone):
    """The Golem scikit-learn classifier's handcrafted global features as a backbone (no network, no weights).

    ``image_size`` is the square side every image is resized to (bilinear) first.
    """

    name = "classic"
    embedding_dim = EMBEDDING_DIM
    preprocessing = Preprocessing(image_size=(256, 256), resample="bilinear", layout="HWC-uint8")

    def __init__(self, image_size: int = 256) -> None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 2:
            raise ValueError(f"image_size must be an integer of at least 2, got {image_size!r}")
        self.preprocessing = Preprocessing(
            image_size=(image_size, image_size), resample="bilinear", layout="HWC-uint8"
        )

    @property
    def hash(self) -> str:
        return sha256_json(
            {
                "kind": self.name,
                "version": FEATURES_VERSION,
                "preprocessing": self.preprocessing.to_dict(),
                "features": _FEATURES_SPEC,
            }
        )

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """Resize one RGB uint8 (H, W, 3) image to the backbone's square size."""
        if not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
            raise ValueError(
                f"expected an RGB uint8 array of shape (H, W, 3), got "
                f"{getattr(rgb, 'dtype', type(rgb).__name__)} {getattr(rgb, 'shape', '')}"
            )
        prepared = resize_rgb(rgb, self.preprocessing.image_size, self.preprocessing.resample)
        return np.ascontiguousarray(prepared)

    def embed_batch(self, prepared: np.ndarray) -> np.ndarray:
        """(N, S, S, 3) uint8 from ``prepare`` -> float32 (N, 532); each row computed alone.

        Raises:
            ValueError: the stack is not uint8 of the backbone's image size.
        """
        height, width = self.preprocessing.image_size
        if (
            not isinstance(prepared, np.ndarray)
            or prepared.dtype != np.uint8
            or prepared.ndim != 4
            or prepared.shape[1:] != (height, width, 3)
        ):
            raise ValueError(
                f"expected prepared images as uint8 (N, {height}, {width}, 3), got "
                f"{getattr(prepared, 'dtype', type(prepared).__name__)} {getattr(prepared, 'shape', '')}"
            )
        vectors = np.empty((prepared.shape[0], EMBEDDING_DIM), np.float32)
        for row, image in enumerate(prepared):
            vectors[row] = classic_features(image).astype(np.float32)
        return vectors
