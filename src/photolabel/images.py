"""Bytes -> RGB pixels. The one place that decides formats, orientation, alpha, modes and cost caps.

What is accepted
----------------
* Formats: JPEG (baseline and progressive; MPO, the multi-picture JPEG some cameras write, gives its
  first picture), PNG (APNG: its first frame), GIF (its first frame), BMP, WebP (lossy, lossless and
  animated: the first frame) and TIFF (its first page). Anything else Pillow could read (PSD, ICO, PPM,
  ...) is refused by name; bytes in no known format are "not an image".
* Size: width x height at most ``max_pixels`` (default 40 million), read from the header before any
  pixel is decoded.
* Frames: an animated or multi-page image may have at most ``max_frames`` frames, pages or TIFF
  directories (default 64) and at most ``FRAME_PIXEL_FACTOR`` x ``max_pixels`` pixels over all of them;
  they are counted from the file's structure, without decoding them, and only the first is decoded.
* Pixels: EXIF orientation is applied; palette, alpha and colour-key transparency are composited on
  white; greyscale, CMYK, 16-bit and floating-point images become 8-bit RGB.

Anything wrong with one input (empty, truncated, not an image, an unsupported format, over a cap,
malformed metadata such as an EXIF tag of the wrong type, or any other failure of the decoder) is an
:class:`~photolabel.errors.ImageError` naming that input, never another exception. Only
``MemoryError`` (and ``KeyboardInterrupt``) pass through. The caps bound what one image may cost;
the service also gives each decode a deadline (``DECODE_TIMEOUT_S``).
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from photolabel.errors import (
    ImageError,
    ImageTooComplexError,
    ImageTooLargeError,
    NotAnImageError,
    UnsupportedFormatError,
)

#: default pixel cap (width * height), checked from the header before decoding
DEFAULT_MAX_PIXELS = 40_000_000

#: default cap on the frames (GIF, APNG, WebP), pages or directories (TIFF) and pictures (MPO) of one image
DEFAULT_MAX_FRAMES = 64

#: an image's frames together may hold at most this many times ``max_pixels`` pixels
FRAME_PIXEL_FACTOR = 4

#: formats we accept; anything else PIL might open (PSD, ICO, ...) is refused by name
SUPPORTED_FORMATS = frozenset({"JPEG", "MPO", "PNG", "GIF", "BMP", "WEBP", "TIFF"})

#: a GIF's structure is walked block by block to count its frames; past this many blocks it is refused
MAX_GIF_BLOCKS = 1_000_000

#: the readers ``Image.open`` may try (an MPO is read by the JPEG reader, which names it MPO)
_OPEN_FORMATS = sorted(SUPPORTED_FORMATS - {"MPO"})

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
    max_frames: int = DEFAULT_MAX_FRAMES,
    draft_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decode image bytes into an RGB ``uint8`` array of shape (H, W, 3).

    EXIF orientation is applied; palette and alpha images are composited on white;
    greyscale, CMYK and 16-bit images are converted; an animated or multi-page image gives
    its first frame (see the module's text for what is accepted).
    ``draft_size`` (width, height) lets JPEG decode at a reduced scale that is still
    at least that large, which is much faster for big photos and deterministic.

    Raises:
        ImageTooLargeError: the header announces more than ``max_pixels`` pixels.
        ImageTooComplexError: more than ``max_frames`` frames, or too many pixels over all frames.
        ImageError: anything else that keeps this input from decoding (not an image, an
            unsupported format, truncated, malformed metadata, a decoder failure); the message
            names ``source``.
    """
    if not data:
        raise NotAnImageError(f"{source}: empty file, not an image")
    try:
        with warnings.catch_warnings():
            # PIL's own bomb check is replaced by ours, which names the file.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = _open(data, source)
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLargeError(
                f"{source}: image is {width}x{height} = {width * height:,} pixels, "
                f"over the cap of {max_pixels:,}; resize it or raise the cap"
            )
        _check_frames(image, data, source, max_pixels=max_pixels, max_frames=max_frames)
        if draft_size is not None and image.format in ("JPEG", "MPO"):
            image.draft("RGB", draft_size)
        image.load()
        try:
            image = ImageOps.exif_transpose(image) or image
        except MemoryError:
            raise
        except Exception as exc:  # e.g. an EXIF tag stored with the wrong type: Pillow raises anything
            raise ImageError(
                f"{source}: cannot decode image: its EXIF metadata is malformed ({_detail(exc)})"
            ) from None
        return _to_rgb_array(image)
    except (ImageError, MemoryError):
        raise
    except UnidentifiedImageError:
        raise NotAnImageError(f"{source}: not an image (format not recognised)") from None
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"{source}: {exc}") from None
    except (OSError, ValueError, SyntaxError, EOFError) as exc:
        raise ImageError(f"{source}: cannot decode image ({_detail(exc)})") from None
    except Exception as exc:  # any other failure of the decoder on this one input (TypeError, struct.error, ...)
        raise ImageError(f"{source}: cannot decode image: the file is damaged or malformed ({_detail(exc)})") from None


def _detail(exc: BaseException) -> str:
    text = str(exc).strip()
    return text or type(exc).__name__


def _open(data: bytes, source: str) -> Image.Image:
    """Open with the supported formats' readers only; an image in another format is named."""
    try:
        return Image.open(io.BytesIO(data), formats=_OPEN_FORMATS)
    except UnidentifiedImageError:
        pass
    try:  # only to name the format in the refusal
        other = Image.open(io.BytesIO(data)).format
    except MemoryError:
        raise
    except Exception:
        other = None
    if other is None:
        raise NotAnImageError(f"{source}: not an image (format not recognised)")
    raise UnsupportedFormatError(
        f"{source}: unsupported image format {other}; use one of {', '.join(sorted(SUPPORTED_FORMATS - {'MPO'}))}"
    )


# --- frames ------------------------------------------------------------------------------------------


def _check_frames(image: Image.Image, data: bytes, source: str, *, max_pixels: int, max_frames: int) -> None:
    """Refuse an image with more than ``max_frames`` frames or too many pixels over all of them.

    Frames are counted without decoding and without Pillow's seeking (which walks a TIFF's
    directories in quadratic time): TIFF directories and GIF blocks are walked here, at most
    ``max_frames + 1`` of them; PNG, WebP and MPO state their frame count in their headers.
    """
    width, height = image.size
    fmt = image.format
    if fmt == "TIFF":
        frames, pixels = _tiff_frames(data, max_frames + 1, width * height)
    elif fmt == "GIF":
        frames, pixels = _gif_frames(data, max_frames + 1, width * height, source)
    elif fmt in ("PNG", "WEBP", "MPO"):
        frames = int(getattr(image, "n_frames", 1) or 1)
        pixels = frames * width * height
    else:
        frames, pixels = 1, width * height
    kind = {"TIFF": "pages (TIFF directories)", "MPO": "pictures"}.get(fmt or "", "frames")
    if frames > max_frames:
        counted = f"more than {max_frames}" if fmt in ("TIFF", "GIF") else str(frames)
        raise ImageTooComplexError(
            f"{source}: the image has {counted} {kind}; at most {max_frames} are accepted"
        )
    budget = FRAME_PIXEL_FACTOR * max_pixels
    if frames > 1 and pixels > budget:
        raise ImageTooComplexError(
            f"{source}: the image's {frames} {kind} hold {pixels:,} pixels together, over the cap of {budget:,}"
        )


_TIFF_ENTRY = {
    False: np.dtype([("tag", "u2"), ("type", "u2"), ("count", "u4"), ("value", "V4")]),
    True: np.dtype([("tag", "u2"), ("type", "u2"), ("count", "u8"), ("value", "V8")]),
}


def _tiff_frames(data: bytes, limit: int, first_pixels: int) -> tuple[int, int]:
    """The directories of a TIFF (classic or BigTIFF), counted up to ``limit``, and their pixels.

    Follows the chain of "next directory" offsets; stops at the end of the chain, an offset outside
    the file, or a directory already seen (a loop). A directory whose size cannot be read counts as
    large as the first.
    """
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None or len(data) < 8:
        return 1, first_pixels
    (magic,) = struct.unpack(order + "H", data[2:4])
    big = magic == 43
    if big:
        if len(data) < 16:
            return 1, first_pixels
        (offset,) = struct.unpack(order + "Q", data[8:16])
        count_format, count_size, next_format, next_size = order + "Q", 8, order + "Q", 8
    else:
        (offset,) = struct.unpack(order + "I", data[4:8])
        count_format, count_size, next_format, next_size = order + "H", 2, order + "I", 4
    dtype = _TIFF_ENTRY[big].newbyteorder(order)
    seen: set[int] = set()
    frames = pixels = 0
    while offset and offset not in seen and frames < limit:
        seen.add(offset)
        if offset + count_size > len(data):
            break
        (entries,) = struct.unpack(count_format, data[offset : offset + count_size])
        start = offset + count_size
        end = start + entries * dtype.itemsize
        if end + next_size > len(data):
            break
        frames += 1
        size = _tiff_size(np.frombuffer(data, dtype=dtype, count=entries, offset=start), order, big)
        pixels += size if size is not None else first_pixels
        (offset,) = struct.unpack(next_format, data[end : end + next_size])
    return max(frames, 1), max(pixels, first_pixels)


def _tiff_size(entries: np.ndarray, order: str, big: bool) -> int | None:
    """Width x height of one TIFF directory (tags 256 and 257, SHORT or LONG), or None."""
    sides = []
    for tag in (256, 257):
        found = entries[entries["tag"] == tag]
        if len(found) != 1 or int(found["count"][0]) != 1:
            return None
        kind, raw = int(found["type"][0]), bytes(found["value"][0])
        if kind == 3:
            sides.append(struct.unpack(order + "H", raw[:2])[0])
        elif kind == 4:
            sides.append(struct.unpack(order + "I", raw[:4])[0])
        elif kind == 16 and big:
            sides.append(struct.unpack(order + "Q", raw[:8])[0])
        else:
            return None
    return sides[0] * sides[1]


def _gif_frames(data: bytes, limit: int, first_pixels: int, source: str) -> tuple[int, int]:
    """The image descriptors of a GIF, counted up to ``limit``, and their pixels (without decoding)."""
    length = len(data)
    if length < 13:
        return 1, first_pixels
    flags = data[10]
    position = 13 + (3 * (2 << (flags & 7)) if flags & 0x80 else 0)
    frames = pixels = blocks = 0
    while position < length and frames < limit:
        introducer = data[position]
        if introducer == 0x2C:  # an image: descriptor, local colour table, LZW code size, data blocks
            if position + 10 > length:
                break
            frame_width, frame_height = struct.unpack("<HH", data[position + 5 : position + 9])
            frames += 1
            pixels += frame_width * frame_height
            local = data[position + 9]
            position += 10 + (3 * (2 << (local & 7)) if local & 0x80 else 0) + 1
        elif introducer == 0x21:  # an extension: label, then data blocks
            position += 2
        else:  # the trailer (0x3B) or something that is no block: the end of what counts
            break
        while position < length:  # data sub-blocks, each its length then its bytes, up to an empty one
            blocks += 1
            if blocks > MAX_GIF_BLOCKS:
                raise ImageTooComplexError(
                    f"{source}: the GIF is made of more than {MAX_GIF_BLOCKS:,} blocks; it is not accepted"
                )
            size = data[position]
            position += 1 + size
            if size == 0:
                break
    return max(frames, 1), max(pixels, first_pixels)


# --- pixels ------------------------------------------------------------------------------------------


def _to_rgb_array(image: Image.Image) -> np.ndarray:
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
                    max_frames: int = DEFAULT_MAX_FRAMES, draft_size: tuple[int, int] | None = None) -> np.ndarray:
    """Read and decode a file; a missing or unreadable file is an :class:`ImageError` naming it."""
    name = source or path
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise ImageError(f"{name}: cannot read file ({exc.strerror or exc})") from None
    return decode_image(data, source=name, max_pixels=max_pixels, max_frames=max_frames, draft_size=draft_size)
