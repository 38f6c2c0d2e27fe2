"""Bytes -> RGB pixels: formats, orientation, alpha, modes, caps and failures."""

from __future__ import annotations

import io
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from photolabel.errors import ImageError, ImageTooLargeError
from photolabel.images import decode_image, read_image_file, resize_rgb

RED, GREEN, BLUE, WHITE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (0, 0, 0)


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _quadrants(height: int = 24, width: int = 32) -> np.ndarray:
    """Four flat blocks: red, green / blue, white. Large enough to survive JPEG."""
    pixels = np.empty((height, width, 3), np.uint8)
    pixels[: height // 2, : width // 2] = RED
    pixels[: height // 2, width // 2 :] = GREEN
    pixels[height // 2 :, : width // 2] = BLUE
    pixels[height // 2 :, width // 2 :] = WHITE
    return pixels


def _block_centres(rgb: np.ndarray) -> list[tuple[int, ...]]:
    h, w = rgb.shape[:2]
    return [
        tuple(int(v) for v in rgb[y, x])
        for y, x in [(h // 4, w // 4), (h // 4, 3 * w // 4), (3 * h // 4, w // 4), (3 * h // 4, 3 * w // 4)]
    ]


def _png_header_only(width: int, height: int, bit_depth: int = 1, colour_type: int = 0) -> bytes:
    """A PNG signature, IHDR and IEND: claims any size, costs a few dozen bytes."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# --- formats ---------------------------------------------------------------------------


LOSSLESS = {
    "PNG": {},
    "GIF": {},
    "BMP": {},
    "TIFF": {},
    "WEBP": {"lossless": True},
}


@pytest.mark.parametrize("fmt", sorted(LOSSLESS))
def test_lossless_formats_decode_exactly(fmt: str) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("this Pillow was built without WebP")
    pixels = _quadrants()
    decoded = decode_image(_encode(Image.fromarray(pixels), fmt, **LOSSLESS[fmt]))
    assert decoded.dtype == np.uint8
    assert decoded.shape == (24, 32, 3)
    assert np.array_equal(decoded, pixels)


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_lossy_formats_decode_close(fmt: str) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("this Pillow was built without WebP")
    pixels = _quadrants(64, 64)
    decoded = decode_image(_encode(Image.fromarray(pixels), fmt, quality=95))
    assert decoded.dtype == np.uint8
    assert decoded.shape == (64, 64, 3)
    for found, wanted in zip(_block_centres(decoded), [RED, GREEN, BLUE, WHITE]):
        assert np.abs(np.subtract(found, wanted)).max() <= 40, (found, wanted)


def test_animated_gif_gives_its_first_frame() -> None:
    frames = [Image.new("RGB", (16, 12), colour) for colour in (RED, BLUE, GREEN)]
    data = _encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    decoded = decode_image(data)
    assert decoded.shape == (12, 16, 3)
    assert (decoded == RED).all()


# --- orientation ------------------------------------------------------------------------


def test_exif_orientation_6_rotates_clockwise() -> None:
    stored = np.full((20, 40, 3), 90, np.uint8)  # 40 wide, 20 tall as stored
    stored[:8, :8] = RED  # mark the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display
    data = _encode(Image.fromarray(stored), "JPEG", quality=95, exif=exif.tobytes())
    decoded = decode_image(data)
    assert decoded.shape == (40, 20, 3)  # now 20 wide, 40 tall
    # Turning clockwise takes the top-left corner to the top-right.
    top_right = decoded[1:7, -7:-1].reshape(-1, 3).mean(axis=0)
    top_left = decoded[1:7, 1:7].reshape(-1, 3).mean(axis=0)
    assert top_right[0] > 200 and top_right[1] < 60 and top_right[2] < 60
    assert abs(top_left[0] - 90) < 20


# --- alpha and transparency -------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparency_becomes_white(fmt: str) -> None:
    image = Image.new("P", (10, 6), 0)
    image.putpalette([255, 0, 0, 0, 0, 0] + [0] * (256 - 2) * 3)  # 0 red, 1 black
    image.paste(1, (5, 0, 10, 6))  # right half: the transparent black
    decoded = decode_image(_encode(image, fmt, transparency=1))
    assert (decoded[:, :5] == RED).all()
    assert (decoded[:, 5:] == WHITE).all()


def test_rgba_alpha_zero_is_white_and_half_alpha_is_blended() -> None:
    rgba = np.zeros((4, 6, 4), np.uint8)  # black everywhere
    rgba[:, :2, 3] = 255  # opaque black
    rgba[:, 2:4, 3] = 0  # fully transparent black
    rgba[:, 4:, 3] = 128  # half-transparent black
    decoded = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (decoded[:, :2] == BLACK).all()
    assert (decoded[:, 2:4] == WHITE).all()
    assert (np.abs(decoded[:, 4:].astype(int) - 127) <= 1).all()


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_colour_key_transparency_becomes_white(mode: str) -> None:
    # PNG tRNS on a greyscale or truecolour image marks one colour as transparent.
    image = Image.new(mode, (4, 2), 0)
    image.putpixel((0, 0), 100 if mode == "L" else (100, 100, 100))
    decoded = decode_image(_encode(image, "PNG", transparency=0 if mode == "L" else (0, 0, 0)))
    assert tuple(decoded[0, 0]) == (100, 100, 100)
    assert (decoded.reshape(-1, 3)[1:] == WHITE).all()


# --- modes -----------------------------------------------------------------------------------


def test_greyscale_png_becomes_equal_channels() -> None:
    grey = np.arange(0, 240, 10, dtype=np.uint8).reshape(4, 6)
    decoded = decode_image(_encode(Image.fromarray(grey, "L"), "PNG"))
    assert decoded.shape == (4, 6, 3)
    for channel in range(3):
        assert np.array_equal(decoded[:, :, channel], grey)


def test_16bit_png_is_scaled_from_its_full_range() -> None:
    levels = np.array([[0, 257 * 64, 32768, 65535]], np.uint16)
    data = _encode(Image.fromarray(levels), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    decoded = decode_image(data)
    assert decoded[0, :, 0].tolist() == [0, 64, 128, 255]
    assert (decoded[..., 0] == decoded[..., 2]).all()


def test_dark_16bit_png_stays_dark() -> None:
    # 200 out of 65535 is nearly black; it must not be read as 200 out of 255.
    data = _encode(Image.fromarray(np.full((3, 3), 200, np.uint16)), "PNG")
    assert decode_image(data).max() <= 1


def test_cmyk_jpeg_becomes_rgb() -> None:
    image = Image.new("CMYK", (32, 16), (255, 0, 0, 0))  # cyan
    image.paste((0, 0, 0, 0), (16, 0, 32, 16))  # white
    decoded = decode_image(_encode(image, "JPEG", quality=95))
    assert decoded.shape == (16, 32, 3)
    cyan, white = decoded[8, 4].astype(int), decoded[8, 28].astype(int)
    assert cyan[0] < 30 and cyan[1] > 225 and cyan[2] > 225
    assert (white > 240).all()


# --- failures ------------------------------------------------------------------------------------


def test_truncated_jpeg_fails_naming_the_source() -> None:
    data = _encode(Image.fromarray(_quadrants(64, 64)), "JPEG")
    with pytest.raises(ImageError, match="holiday/beach.jpg") as caught:
        decode_image(data[: len(data) // 2], source="holiday/beach.jpg")
    assert not isinstance(caught.value, ImageTooLargeError)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    "data",
    [
        np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
        b"label,image\ncat,cat.jpg\n",
    ],
    ids=["random-bytes", "text"],
)
def test_non_images_fail(data: bytes) -> None:
    with pytest.raises(ImageError, match="notes.txt: not an image"):
        decode_image(data, source="notes.txt")


def test_empty_bytes_fail() -> None:
    with pytest.raises(ImageError, match="empty.png: empty"):
        decode_image(b"", source="empty.png")


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")
def test_corrupt_tiff_directory_chain_is_not_walked_past_the_first_page() -> None:
    data = bytearray(_encode(Image.new("RGB", (32, 24), (10, 20, 30)), "TIFF"))
    assert data[:4] == b"II*\x00" and data[4:8] == b"\x08\x00\x00\x00"
    # The first directory now claims 66 entries, so its "next directory" pointer is garbage: PIL's
    # frame count raises TypeError on it. Only the first page is decoded, and it is intact.
    data[8] = 66
    decoded = decode_image(bytes(data), source="scan.tif")
    assert decoded.shape == (24, 32, 3)
    assert (decoded == (10, 20, 30)).all()


def test_tiff_strip_outside_the_file_fails_as_image_error() -> None:
    data = bytearray(_encode(Image.new("RGB", (32, 24), (10, 20, 30)), "TIFF"))
    count = struct.unpack("<H", data[8:10])[0]
    entries = [10 + 12 * i for i in range(count)]
    (strip,) = [e for e in entries if struct.unpack("<H", data[e : e + 2])[0] == 273]  # StripOffsets
    data[strip + 8 : strip + 12] = struct.pack("<I", 10**8)
    with pytest.raises(ImageError, match="scan.tif"):
        decode_image(bytes(data), source="scan.tif")


@pytest.mark.parametrize(("fmt", "options"), [("ICO", {"sizes": [(16, 16)]}), ("PPM", {})])
def test_readable_but_unsupported_format_is_named(fmt: str, options: dict[str, object]) -> None:
    data = _encode(Image.new("RGB", (16, 16), RED), fmt, **options)
    with pytest.raises(ImageError, match=f"unsupported image format {fmt}"):
        decode_image(data, source="icon")


# --- size caps -----------------------------------------------------------------------------------


def test_pixel_cap_is_checked_from_the_header_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    data = _encode(Image.new("RGB", (20, 20), RED), "PNG")

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixels were decoded before the size check")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    with pytest.raises(
        ImageTooLargeError, match=r"big.png: image is 20x20 = 400 pixels, over the cap of 100"
    ):
        decode_image(data, source="big.png", max_pixels=100)


def test_pixel_cap_allows_an_image_at_the_cap() -> None:
    data = _encode(Image.new("RGB", (10, 10), RED), "PNG")
    assert decode_image(data, max_pixels=100).shape == (10, 10, 3)


@pytest.mark.parametrize(
    ("side", "message"),
    [
        (8000, "huge.png: image is 8000x8000 = 64,000,000 pixels, over the cap of 40,000,000"),
        (20000, "huge.png: .*exceeds limit"),  # past PIL's own bomb check, which Image.open raises
    ],
)
def test_huge_header_fails_fast(side: int, message: str) -> None:
    data = _png_header_only(side, side)
    assert len(data) < 100
    started = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match=message):
        decode_image(data, source="huge.png")  # default cap: 40 million pixels
    assert time.perf_counter() - started < 1.0


# --- draft decoding and resizing ------------------------------------------------------------------


def test_draft_size_decodes_a_large_jpeg_smaller_but_not_below_the_draft() -> None:
    rng = np.random.default_rng(0)
    tiles = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    big = np.repeat(np.repeat(tiles, 100, axis=0), 100, axis=1)  # 1200 x 1600
    data = _encode(Image.fromarray(big), "JPEG", quality=85)
    full = decode_image(data)
    assert full.shape == (1200, 1600, 3)
    drafted = decode_image(data, draft_size=(300, 300))
    height, width = drafted.shape[:2]
    assert width >= 300 and height >= 300
    assert height < 1200 and width < 1600
    assert width * 1200 == height * 1600  # same aspect ratio
    # same picture, just smaller: compare a tile centre
    assert np.abs(drafted[height // 24, width // 32].astype(int) - tiles[0, 0]).max() <= 40


def test_draft_size_is_ignored_for_png() -> None:
    data = _encode(Image.fromarray(_quadrants(60, 80)), "PNG")
    assert decode_image(data, draft_size=(10, 10)).shape == (60, 80, 3)


@pytest.mark.parametrize("resample", ["nearest", "bilinear", "bicubic", "lanczos"])
def test_resize_rgb_returns_the_requested_height_and_width(resample: str) -> None:
    rgb = _quadrants(24, 32)
    resized = resize_rgb(rgb, (30, 50), resample)
    assert resized.shape == (30, 50, 3)
    assert resized.dtype == np.uint8
    assert resize_rgb(rgb, (24, 32)) is rgb  # already the right size: untouched


def test_read_image_file_names_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jpg"
    with pytest.raises(ImageError, match="nope.jpg: cannot read file"):
        read_image_file(str(missing))
    path = tmp_path / "ok.png"
    path.write_bytes(_encode(Image.fromarray(_quadrants()), "PNG"))
    assert read_image_file(str(path)).shape == (24, 32, 3)
