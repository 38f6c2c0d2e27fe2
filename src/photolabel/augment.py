"""Augmented views of training images, the same on every run and every machine.

A view is one random-looking but fully determined variant of an image: a random
resized crop with a small rotation, a horizontal flip, and brightness / contrast /
saturation jitter. Its parameters are drawn from its **view key**,

    view_key = sha256("photolabel-view:{AUGMENT_VERSION}:{seed}:{index}:{image_sha256}")

by hashing the key with each parameter's name (no random-number generator whose stream
could change between numpy versions). The view key is also the view's key in the
embedding cache, beside the images' own sha256, so a second training with the same
augmentation embeds nothing again.

Bump :data:`AUGMENT_VERSION` whenever :data:`RECIPE` or the code that applies it changes
what a view looks like: it changes every view key (so no stale embedding is reused) and
the id of every augmented model (``artifact.compute_model_id``).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

from photolabel.backbones.base import Backbone
from photolabel.cache import EmbeddingCache
from photolabel.config import RUNTIME_DEFAULTS, Runtime
from photolabel.dataset import ImageRecord
from photolabel.embedding import ImageInput, embed_images
from photolabel.errors import DataError, ImageError

#: the recipe's version: enters every view key and every augmented model's id
AUGMENT_VERSION = 1

# Drawn parameters and affine coefficients are rounded so that a last-bit difference in
# a platform's exp/log/sin/cos cannot move a pixel.
_PARAM_DIGITS = 6
_AFFINE_DIGITS = 9


@dataclass(frozen=True)
class Recipe:
    """The ranges views are drawn from.

    ``scale``: crop area as a share of the image's; ``ratio``: the crop's aspect ratio relative
    to the image's (log-uniform); ``rotation``: degrees either way; ``brightness``,
    ``contrast``, ``saturation``: factors drawn in [1 - x, 1 + x]; ``flip``: probability of a
    horizontal flip.
    """

    flip: float = 0.5
    scale: tuple[float, float] = (0.6, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotation: float = 10.0
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["scale"] = list(self.scale)
        data["ratio"] = [round(r, _PARAM_DIGITS) for r in self.ratio]
        return data


#: the recipe every view is drawn from (changing it means bumping AUGMENT_VERSION)
RECIPE = Recipe()


@dataclass(frozen=True)
class ViewParams:
    """What one view does to an image; the defaults leave it unchanged.

    ``x`` and ``y`` place the crop in the room left around it (0: left/top edge, 1: right/bottom);
    ``angle`` is in degrees, counter-clockwise; the colour factors multiply (1: unchanged).
    """

    flip: bool = False
    scale: float = 1.0
    ratio: float = 1.0
    x: float = 0.5
    y: float = 0.5
    angle: float = 0.0
    brightness: float = 1.0
    contrast: float = 1.0
    saturation: float = 1.0


def view_key(image_sha256: str, seed: int, index: int, version: int | None = None) -> str:
    """The cache key (and the source of the random parameters) of view ``index`` of an image.

    The same for the same image bytes, run seed, view index and recipe version (default
    :data:`AUGMENT_VERSION`); any other image, seed, index or version gives another key. Usable
    by anything that caches per-view results (embeddings, activations).
    """
    version = AUGMENT_VERSION if version is None else version
    return hashlib.sha256(f"photolabel-view:{version}:{seed}:{index}:{image_sha256}".encode()).hexdigest()


def draw_params(key: str, recipe: Recipe | None = None) -> ViewParams:
    """The parameters of the view with this :func:`view_key`, drawn from ``recipe``'s ranges
    (default :data:`RECIPE`)."""
    recipe = RECIPE if recipe is None else recipe

    def uniform(name: str, low: float, high: float) -> float:
        digest = hashlib.sha256(f"{key}:{name}".encode()).digest()
        fraction = int.from_bytes(digest[:8], "big") / 2.0**64
        return round(low + (high - low) * fraction, _PARAM_DIGITS)

    log_low, log_high = math.log(recipe.ratio[0]), math.log(recipe.ratio[1])
    return ViewParams(
        flip=uniform("flip", 0.0, 1.0) < recipe.flip,
        scale=uniform("scale", *recipe.scale),
        ratio=round(math.exp(uniform("ratio", log_low, log_high)), _PARAM_DIGITS),
        x=uniform("x", 0.0, 1.0),
        y=uniform("y", 0.0, 1.0),
        angle=uniform("angle", -recipe.rotation, recipe.rotation),
        brightness=uniform("brightness", 1.0 - recipe.brightness, 1.0 + recipe.brightness),
        contrast=uniform("contrast", 1.0 - recipe.contrast, 1.0 + recipe.contrast),
        saturation=uniform("saturation", 1.0 - recipe.saturation, 1.0 + recipe.saturation),
    )


def apply_view(rgb: np.ndarray, params: ViewParams) -> np.ndarray:
    """``rgb`` (uint8, H x W x 3) as the view ``params`` describes: cropped and rotated (bilinear,
    the rotated crop kept inside the image), flipped, then colour-jittered. A new array."""
    image = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8))
    if params.scale < 1.0 or params.ratio != 1.0 or params.angle != 0.0:
        image = _crop_rotated(image, params)
    if params.flip:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    out = np.asarray(image, dtype=np.uint8)
    if (params.brightness, params.contrast, params.saturation) != (1.0, 1.0, 1.0):
        out = _jitter(out, params)
    return np.array(out, dtype=np.uint8, copy=True)


def _crop_rotated(image: Image.Image, params: ViewParams) -> Image.Image:
    width, height = image.size
    crop_w = min(width * math.sqrt(params.scale * params.ratio), width)
    crop_h = min(height * math.sqrt(params.scale / params.ratio), height)
    theta = math.radians(params.angle)
    cos, sin = math.cos(theta), math.sin(theta)
    # shrink the crop until its rotated corners stay inside the image (no filled corners)
    fit = min(1.0, width / (crop_w * abs(cos) + crop_h * abs(sin)), height / (crop_w * abs(sin) + crop_h * abs(cos)))
    crop_w, crop_h = crop_w * fit, crop_h * fit
    half_x = (crop_w * abs(cos) + crop_h * abs(sin)) / 2
    half_y = (crop_w * abs(sin) + crop_h * abs(cos)) / 2
    centre_x = half_x + params.x * max(width - 2 * half_x, 0.0)
    centre_y = half_y + params.y * max(height - 2 * half_y, 0.0)
    out_w, out_h = max(1, round(crop_w)), max(1, round(crop_h))
    step_x, step_y = crop_w / out_w, crop_h / out_h
    # output (u, v) -> input: rotate the centred, scaled output point about the crop's centre
    a, b = cos * step_x, sin * step_y
    d, e = -sin * step_x, cos * step_y
    c = centre_x - a * out_w / 2 - b * out_h / 2
    f = centre_y - d * out_w / 2 - e * out_h / 2
    coefficients = tuple(round(value, _AFFINE_DIGITS) for value in (a, b, c, d, e, f))
    return image.transform((out_w, out_h), Image.Transform.AFFINE, coefficients, Image.Resampling.BILINEAR)


def _jitter(rgb: np.ndarray, params: ViewParams) -> np.ndarray:
    """Brightness, then contrast about the mean luminance, then saturation about each pixel's grey.

    Elementwise float64 steps in a fixed order (no BLAS, no float reductions), so every machine
    gets the same bytes."""
    brightness, contrast, saturation = params.brightness, params.contrast, params.saturation
    sums = rgb.reshape(-1, 3).sum(axis=0, dtype=np.int64)  # integer sums: exact in any order
    mean = brightness * int(299 * sums[0] + 587 * sums[1] + 114 * sums[2]) / (1000.0 * rgb.shape[0] * rgb.shape[1])
    pixels = rgb.astype(np.float64)
    pixels *= brightness * contrast
    pixels += mean * (1.0 - contrast)
    grey = pixels[..., 0] * 0.299
    grey += pixels[..., 1] * 0.587
    grey += pixels[..., 2] * 0.114
    grey *= 1.0 - saturation
    pixels *= saturation
    pixels += grey[..., None]
    np.rint(pixels, out=pixels)
    np.clip(pixels, 0, 255, out=pixels)
    return pixels.astype(np.uint8)


@dataclass(frozen=True)
class AugmentedView:
    """View ``index`` of the image with ``image_sha256`` under run seed ``seed``: what
    :class:`photolabel.embedding.ImageInput` takes as its ``view``."""

    image_sha256: str
    seed: int
    index: int

    @property
    def key(self) -> str:
        return view_key(self.image_sha256, self.seed, self.index)

    @property
    def params(self) -> ViewParams:
        return draw_params(self.key)

    def apply(self, rgb: np.ndarray) -> np.ndarray:
        return apply_view(rgb, self.params)


def describe_augmentation(views: int) -> dict[str, Any] | None:
    """What a model card records about its augmentation (None without): views, version, recipe."""
    if not views:
        return None
    return {"views": views, "version": AUGMENT_VERSION, "recipe": RECIPE.to_dict()}


@dataclass
class ViewEmbeddings:
    """``vectors[i, k]`` is view k of ``records[i]``; counts as in :class:`~photolabel.embedding.EmbeddingResult`."""

    vectors: np.ndarray
    computed: int = 0
    cached: int = 0


def embed_views(
    records: Sequence[ImageRecord],
    backbone: Backbone,
    *,
    views: int,
    seed: int,
    cache: EmbeddingCache | None,
    runtime: Runtime = RUNTIME_DEFAULTS,
    on_progress: Callable[[int, int], None] | None = None,
) -> ViewEmbeddings:
    """Embed ``views`` augmented views of each record (cached by view key).

    Raises:
        DataError: a record has no bytes (an incremental model's image) and a view is not cached.
        ImageError: a view could not be made (the file changed since it was first read).
    """
    inputs = [ImageInput(r.source, path=r.path, sha256=r.sha256, view=AugmentedView(r.sha256, seed, k))
              for r in records for k in range(views)]
    if cache is not None:
        missing = [item for item in inputs
                   if item.path is None and item.data is None and not cache.contains(item.view.key)]  # type: ignore[union-attr]
        if missing:
            images = len({item.sha256 for item in missing})
            raise DataError(
                f"the augmented views of {images} images have no bytes here and are not in the embedding "
                f"cache (first: {missing[0].source}); train on the union of the data instead"
            )
    embedded = embed_images(inputs, backbone, cache=cache, batch_size=runtime.batch_size, workers=runtime.workers,
                            max_pixels=runtime.max_pixels, progress=runtime.progress, on_progress=on_progress)
    if embedded.failures:
        index, problem = embedded.failures[0]
        raise ImageError(f"{problem.message} (while making augmented view {index % views})")
    vectors = embedded.vectors.reshape(len(records), views, backbone.embedding_dim)
    return ViewEmbeddings(vectors, embedded.computed, embedded.cached)


def with_views(X: np.ndarray, y: np.ndarray, views: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Training rows with each image followed by its views (``views[i]``, same label ``y[i]``)."""
    count, per_image = views.shape[0], views.shape[1]
    rows = np.concatenate([X[:, None, :], views.astype(X.dtype)], axis=1).reshape(count * (1 + per_image), -1)
    return rows, np.repeat(y, 1 + per_image)
