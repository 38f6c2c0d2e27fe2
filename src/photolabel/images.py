"""Bytes -> RGB pixels. The one place that decides orientation, alpha, modes and size caps."""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from photolabel.errors import ImageError, ImageTooLargeError, NotAnImageError

#: default pixel cap (width * height), checked from the header before decoding
DEFAULT_MAX_PIXELS = 40_000_000

#: formats we accept; anything else PIL might open (PSD, ICO, ...) is refused by name
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP", "TIFF"})

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

# Truncated files must fail loudly, never decode into half-grey pictures.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def decode_image(
    data: bytes,
    *,
    source: str = "<bytes>",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode image bytes into an RGB ``uint8`` array of shape (H, W, 3).

    EXIF orientation is applied; palette and alpha images are composited on white;
    greyscale, CMYK and 16-bit images are converted; a GIF gives its first frame.
    ``draft_size`` (width, height) lets JPEG decode at a reduced scale that is still
    at least that large, which is much faster for big photos and deterministic.

    Raises:
        ImageTooLargeError: the header announces more than ``max_pixels`` pixels.
        ImageError: the bytes are not an image of a supported format, or are truncated.
    """
    if not data:
        raise NotAnImageError(f"{source}: empty file, not an image")
    try:
        with warnings.catch_warnings():
            # PIL's own bomb check is replaced by ours, which names the file.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"{source}: image is {width}x{height} = {width * height:,} pixels, "
                f"over the cap of {max_pixels:,}; resize it or raise the cap"
            )
        if image.format not in SUPPORTED_FORMATS:
            raise NotAnImageError(
                f"{source}: unsupported image format {image.format}; "
                f"use one of {', '.join(sorted(SUPPORTED_FORMATS - {'MPO'}))}"
            )
        if draft_size is not None and image.format in ("JPEG", "MPO"):
            image.draft("RGB", draft_size)
        image.load()
        return _to_rgb_array(image)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise NotAnImageError(f"{source}: not an image (format not recognised)") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{source}: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError, TypeError) as exc:
        # TypeError: PIL's TIFF reader raises it for a directory without dimensions.
        raise ImageError(f"{source}: cannot decode image ({exc})") from None


def _to_rgb_array(image: Image.Image) -> np.ndarray:
    if getattr(image, "n_frames", 1) > 1:
        image.seek(0)
    image = ImageOps.exif_transpose(image) or image
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale is scaled from 0..65535 whatever its content (a dark 16-bit
        # image must stay dark). Mode "I" (32-bit) does not say its range: values that
        # fit in 8 bits are taken as 8-bit, anything larger as 16-bit.
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if mode != "I" or array.max(initial=0) > 255 else 255.0
        grey = np.clip(np.rint(array * (255.0 / top)), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(np.repeat(grey[:, :, None], 3, axis=2))
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.rint(array * 255.0 if array.max(initial=0) <= 1.0 else array), 0, 255)
        return np.ascontiguousarray(np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2))
    # Palette, alpha and colour-key (PNG tRNS) transparency all become RGBA, then white.
    has_colour_key = mode in ("1", "L", "RGB") and image.info.get("transparency") is not None
    if mode in ("P", "PA", "LA", "La", "RGBa") or has_colour_key:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.ascontiguousarray(np.asarray(image, dtype=np.uint8))


def resize_rgb(rgb: np.ndarray, size: tuple[int, int], resample: str = "bilinear") -> np.ndarray:
    """Resize an RGB uint8 array to ``size`` = (height, width)."""
    height, width = size
    if rgb.shape[0] == height and rgb.shape[1] == width:
        return rgb
    image = Image.fromarray(rgb)
    return np.asarray(image.resize((width, height), _RESAMPLE[resample]), dtype=np.uint8)


def read_image_file(path: str, *, source: str | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
                    draft_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read and decode a file; a missing or unreadable file is an :class:`ImageError` naming it."""
    name = source or path
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ImageError(f"{name}: cannot read file ({exc.strerror or exc})") from None
    return decode_image(data, source=name, max_pixels=max_pixels, draft_size=draft_size)
