"""Images of another kind than fashion-tiny's product photos, for the tests of the answer "unknown".

:func:`generated_images` draws noise, gradients and shapes (no dependency);
:func:`skimage_images` takes scikit-image's bundled pictures (camera, coins, moon, astronaut, ...).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

#: scikit-image pictures that ship with the package (no download)
SKIMAGE_NAMES = ("camera", "coins", "moon", "astronaut", "coffee", "chelsea", "checkerboard", "text", "horse",
                 "rocket", "page", "clock", "hubble_deep_field", "immunohistochemistry", "logo", "grass", "gravel",
                 "brick", "cell", "colorwheel", "retina", "microaneurysms", "binary_blobs", "shepp_logan_phantom")


def as_rgb(array: np.ndarray) -> np.ndarray:
    """Any scikit-image picture (bool, grey, float, RGBA) as RGB uint8 (H, W, 3)."""
    array = np.asarray(array)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    if array.dtype != np.uint8:
        low, high = float(array.min()), float(array.max())
        array = (255 * (array - low) / max(high - low, 1e-9)).astype(np.uint8)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])


def generated_images(seed: int = 0) -> dict[str, np.ndarray]:
    """Noise, two gradients and four pictures of flat shapes, RGB uint8, the same for the same seed."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    ramp = np.tile(np.linspace(0, 255, 256), (256, 1))
    images = {
        "noise": rng.integers(0, 256, (256, 256, 3), dtype=np.uint8),
        "grey-gradient": as_rgb(ramp.astype(np.uint8)),
        "colour-gradient": np.stack([ramp, ramp.T, np.full((256, 256), 128.0)], axis=-1).astype(np.uint8),
    }
    for index in range(4):
        picture = Image.new("RGB", (256, 256), tuple(int(v) for v in rng.integers(0, 256, 3)))
        draw = ImageDraw.Draw(picture)
        for _ in range(5):
            x0, y0 = (int(v) for v in rng.integers(0, 200, 2))
            box = [x0, y0, x0 + int(rng.integers(20, 56)), y0 + int(rng.integers(20, 56))]
            colour = tuple(int(v) for v in rng.integers(0, 256, 3))
            (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=colour)
        images[f"shapes-{index}"] = np.asarray(picture)
    return images


def skimage_images() -> dict[str, np.ndarray]:
    """scikit-image's bundled pictures as RGB uint8 (the caller skips the test without scikit-image)."""
    from skimage import data

    return {name: as_rgb(getattr(data, name)()) for name in SKIMAGE_NAMES}


def png_bytes(array: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def write_noise_png(folder: Path, name: str = "noise.png") -> Path:
    """A PNG of random noise, far from any photo a model is trained on."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(png_bytes(generated_images()["noise"]))
    return path
