"""Hostile images: one bad input fails only itself, in every surface, and decoding has a cost cap.

* Malformed EXIF (a tag stored with a type Pillow does not expect) makes Pillow's ``exif_transpose``
  raise AttributeError, TypeError or struct.error; any exception from decoding one input must become
  an :class:`ImageError` naming it: a BadInput in a batch, a skipped row with ``skip_bad``, one
  ``error:`` line in ``photolabel predict``, an error answer in the worker.
* Frames, pages (TIFF directories) and pictures are counted cheaply and capped: a TIFF with 30,000
  directories is refused at once instead of Pillow walking them in quadratic time.
* A bounded fuzz test: mutated real JPEG/PNG/GIF/TIFF/WebP/BMP bytes decode to RGB uint8 or raise
  ImageError, nothing else.
"""

from __future__ import annotations

import io
import shutil
import struct
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFile, ImageOps, features

from photolabel import images as images_module
from photolabel.backbones.base import Backbone, Preprocessing
from photolabel.errors import ImageError, ImageTooComplexError, ImageTooLargeError
from photolabel.images import DEFAULT_MAX_FRAMES, decode_image

HANG_TIMEOUT_S = 60.0  # only to turn a hang into a failure; nothing here asserts a duration
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


# --- hostile image builders ---------------------------------------------------------------------------


def _jpeg(size: tuple[int, int] = (16, 8), colour: tuple[int, int, int] = (200, 10, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def _exif_ifd(entries: list[tuple[int, int, int, bytes]], extra: bytes = b"") -> bytes:
    """A little-endian TIFF header and one IFD of ``(tag, type, count, 4 value bytes)`` entries, then ``extra``
    (where an entry whose value does not fit in 4 bytes points: offset ``_extra_offset(len(entries))``)."""
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHI", tag, kind, count) + value
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + extra


def _extra_offset(entries: int) -> bytes:
    return struct.pack("<I", 8 + 2 + 12 * entries + 4)


def jpeg_with_exif(tiff: bytes, size: tuple[int, int] = (16, 8)) -> bytes:
    """A JPEG whose APP1 segment holds ``tiff`` as its EXIF, written by hand (Pillow would not write it)."""
    data = _jpeg(size)
    payload = b"Exif\x00\x00" + tiff
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


ORIENTATION_6 = (0x0112, 3, 1, struct.pack("<HH", 6, 0))  # SHORT 6: rotate, so exif_transpose re-writes the EXIF

#: malformed EXIF that makes Pillow 13's exif_transpose raise (the exception it raises, for the record)
MALFORMED_EXIF = {
    # Make (ASCII expected) stored as RATIONAL: AttributeError 'IFDRational' object has no attribute 'encode'
    "make-rational": _exif_ifd([ORIENTATION_6, (0x010F, 5, 1, _extra_offset(2))], struct.pack("<II", 6, 1)),
    # Make stored as FLOAT: AttributeError 'float' object has no attribute 'encode'
    "make-float": _exif_ifd([ORIENTATION_6, (0x010F, 11, 1, struct.pack("<f", 1.5))]),
    # XResolution (RATIONAL expected) stored as ASCII: TypeError bad operand type for abs(): 'str'
    "xresolution-ascii": _exif_ifd([ORIENTATION_6, (0x011A, 2, 4, b"abc\x00")]),
    # YCbCrPositioning (SHORT expected) stored as ASCII: struct.error required argument is not an integer
    "ycbcr-ascii": _exif_ifd([ORIENTATION_6, (0x0213, 2, 4, b"ab\x00\x00")]),
    # XResolution as a negative SRATIONAL: struct.error argument out of range
    "xresolution-negative": _exif_ifd([ORIENTATION_6, (0x011A, 10, 1, _extra_offset(2))],
                                      struct.pack("<ii", -6, 0)),
}


def bad_exif_jpeg() -> bytes:
    return jpeg_with_exif(MALFORMED_EXIF["make-rational"])


def many_directory_tiff(directories: int, *, order: str = "<", sizes: list[tuple[int, int]] | None = None) -> bytes:
    """A TIFF of ``directories`` 8-bit grey pages chained one after the other, all sharing one strip of
    pixel bytes; ``sizes`` gives each page's (width, height) (default 1x1; the strip holds the first's)."""
    sizes = sizes or [(1, 1)] * directories
    first_width, first_height = sizes[0]
    strip = bytes(range(256)) * (first_width * first_height // 256 + 1)
    strip = strip[: first_width * first_height]
    header = (b"II*\x00" if order == "<" else b"MM\x00*") + struct.pack(order + "I", 8 + len(strip))
    out = bytearray(header + strip)
    for index, (width, height) in enumerate(sizes):
        entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 4, 8),
                   (277, 3, 1), (278, 4, height), (279, 4, width * height)]
        ifd = struct.pack(order + "H", len(entries))
        for tag, kind, value in entries:
            packed = struct.pack(order + "H", value) + b"\x00\x00" if kind == 3 else struct.pack(order + "I", value)
            ifd += struct.pack(order + "HHI", tag, kind, 1) + packed
        following = len(out) + len(ifd) + 4 if index < len(sizes) - 1 else 0
        out += ifd + struct.pack(order + "I", following)
    return bytes(out)


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **options)
    return buffer.getvalue()


def _frames(count: int, size: tuple[int, int] = (8, 6)) -> list[Image.Image]:
    """``count`` frames of different colours (identical frames may be merged by the encoder)."""
    return [Image.new("RGB", size, ((index * 37) % 256, (index * 91) % 256, (index * 53) % 256))
            for index in range(count)]


def _animated(fmt: str, count: int, size: tuple[int, int] = (8, 6)) -> bytes:
    frames = _frames(count, size)
    options: dict[str, object] = {"save_all": True, "append_images": frames[1:]}
    if fmt == "WEBP":
        options["lossless"] = True
    return _encode(frames[0], fmt, **options)


def _decode_or_hang(data: bytes, **options: object) -> np.ndarray:
    """decode_image in a thread, failing the test instead of hanging it."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(decode_image, data, **options).result(timeout=HANG_TIMEOUT_S)


# --- point 1: any exception while decoding one input is an ImageError naming it -----------------------


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("case", sorted(MALFORMED_EXIF))
def test_malformed_exif_is_an_image_error_naming_the_file(case: str) -> None:
    data = jpeg_with_exif(MALFORMED_EXIF[case])
    # the reproduction: Pillow itself raises something that is not an ImageError
    with pytest.raises(Exception) as raw:
        ImageOps.exif_transpose(Image.open(io.BytesIO(data)))
    assert not isinstance(raw.value, ImageError)
    with pytest.raises(ImageError, match=r"^holiday/IMG_0001\.jpg: cannot decode image: its EXIF metadata is "
                                         r"malformed") as caught:
        decode_image(data, source="holiday/IMG_0001.jpg")
    assert caught.value.code == "bad_image"
    assert "\n" not in str(caught.value)


def test_well_formed_exif_beside_the_malformed_cases_still_rotates() -> None:
    # the same hand-made EXIF with a Make of the right type: decodes, turned by its orientation
    data = jpeg_with_exif(_exif_ifd([ORIENTATION_6, (0x010F, 2, 4, b"abc\x00")]))
    assert decode_image(data).shape == (16, 8, 3)  # stored 16 wide, 8 tall; shown 8 wide, 16 tall


@pytest.mark.parametrize("error", [AttributeError("'IFDRational' object has no attribute 'encode'"),
                                   KeyError(274), struct.error("unpack requires a buffer of 4 bytes"),
                                   RuntimeError(""), ZeroDivisionError("division by zero"), IndexError("index")])
@pytest.mark.parametrize("stage", ["transpose", "load"])
def test_any_exception_of_the_decoder_becomes_an_image_error(monkeypatch: pytest.MonkeyPatch, stage: str,
                                                             error: Exception) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise error

    if stage == "transpose":
        monkeypatch.setattr(ImageOps, "exif_transpose", fail)
    else:
        monkeypatch.setattr(ImageFile.ImageFile, "load", fail)
    with pytest.raises(ImageError, match=r"^scan\.jpg: cannot decode image") as caught:
        decode_image(_jpeg(), source="scan.jpg")
    assert caught.value.code == "bad_image"
    assert caught.value.__cause__ is None  # "from None": the user sees one message, no chained traceback


def test_memory_error_is_not_swallowed(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise MemoryError

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail)
    with pytest.raises(MemoryError):
        decode_image(_jpeg(), source="big.jpg")


class _Mean(Backbone):
    """Embedding = mean colour; ``prepare`` raises a plain ValueError for a 3-pixel-wide image."""

    name = "mean"
    embedding_dim = 3
    preprocessing = Preprocessing(image_size=(1, 1), layout="HWC-uint8")

    @property
    def hash(self) -> str:
        return "f" * 64

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        if rgb.shape[1] == 3:
            raise ValueError("cannot resize this")
        return rgb.astype(np.float64).mean(axis=(0, 1))

    def embed_batch(self, prepared: np.ndarray) -> np.ndarray:
        return (prepared / 255.0).astype(np.float32)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_embedding_keeps_each_failure_to_its_own_input() -> None:
    from photolabel.embedding import ImageInput, embed_images

    good = _encode(Image.new("RGB", (6, 4), BLUE), "PNG")
    odd = _encode(Image.new("RGB", (3, 4), RED), "PNG")  # prepare raises on it
    inputs = [ImageInput("good-1.png", data=good), ImageInput("exif.jpg", data=bad_exif_jpeg()),
              ImageInput("odd.png", data=odd), ImageInput("good-2.png", data=good)]
    result = embed_images(inputs, _Mean(), batch_size=4)
    assert result.indices == [0, 3]
    np.testing.assert_allclose(result.vectors, [[0, 0, 1], [0, 0, 1]])
    failures = {index: problem for index, problem in result.failures}
    assert sorted(failures) == [1, 2]
    assert failures[1].code == "bad_image" and failures[1].message.startswith("exif.jpg: ")
    assert "EXIF" in failures[1].message
    assert failures[2].code == "bad_image" and failures[2].message == "odd.png: cannot prepare the image (cannot " \
                                                                       "resize this)"


# --- point 1, surface by surface ----------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_model_predict_batch_answers_the_others(trained_model: Path, small_data: Path) -> None:
    from photolabel.dataset import BadInput
    from photolabel.model import Prediction, load_model

    model = load_model(trained_model)
    halter = min((small_data / "halter").iterdir()).read_bytes()
    results = model.predict_batch([halter, bad_exif_jpeg(), halter])
    assert isinstance(results[0], Prediction) and isinstance(results[2], Prediction)
    assert results[0].scores == results[2].scores
    assert isinstance(results[1], BadInput) and results[1].code == "bad_image"
    assert "EXIF" in results[1].message


@pytest.fixture
def data_with_a_bad_exif_photo(tmp_path: Path, small_data: Path) -> Path:
    root = tmp_path / "data"
    shutil.copytree(small_data, root)
    (root / "halter" / "zz-bad-exif.jpg").write_bytes(bad_exif_jpeg())
    return root


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_training_skips_the_bad_photo_with_skip_bad_and_names_it_without(
        data_with_a_bad_exif_photo: Path, tmp_path: Path, cache_dir: Path) -> None:
    import photolabel

    result = photolabel.train(data_with_a_bad_exif_photo, tmp_path / "model", cache_dir=cache_dir, skip_bad=True)
    (skipped,) = result.skipped
    assert skipped.source.endswith("halter/zz-bad-exif.jpg")
    assert skipped.code == "bad_image" and "EXIF" in skipped.reason
    with pytest.raises(ImageError, match="zz-bad-exif.jpg") as caught:  # an ImageError (remedy: skip_bad), not internal
        photolabel.train(data_with_a_bad_exif_photo, tmp_path / "model-2", cache_dir=cache_dir)
    assert caught.value.remedy == "skip_bad"


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_cli_predict_prints_one_error_line_and_labels_the_others(
        trained_model: Path, small_data: Path, tmp_path: Path, cache_dir: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from photolabel.adapters.cli import main

    monkeypatch.setenv("PHOTOLABEL_CACHE_DIR", str(cache_dir))
    good = min((small_data / "halter").iterdir())
    bad = tmp_path / "bad-exif.jpg"
    bad.write_bytes(bad_exif_jpeg())
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click 8.1
    except TypeError:  # click >= 8.2 keeps stderr apart
        runner = CliRunner()
    result = runner.invoke(main, ["predict", str(trained_model), str(good), str(bad), "--quiet"])
    assert result.exit_code == 1, (result.output, result.exception)
    assert isinstance(result.exception, SystemExit)  # an orderly exit, not an exception CliRunner caught
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{good}\t")
    errors = result.stderr.splitlines()
    assert errors == [line for line in errors if line.startswith("error: ")]
    assert len(errors) == 1 and str(bad) in errors[0] and "EXIF" in errors[0]
    assert "Traceback" not in result.stderr


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_worker_answers_an_error_for_the_bad_photo_and_keeps_predicting(
        trained_model: Path, small_data: Path, tmp_path: Path, cache_dir: Path) -> None:
    from photolabel.adapters.worker import WorkerSession, WorkerSettings
    from photolabel.config import Runtime
    from photolabel.model import load_model

    runtime = Runtime(cache_dir=cache_dir)
    session = WorkerSession(WorkerSettings(dataset="unused", classes=()), model=load_model(trained_model,
                            runtime=runtime), runtime=runtime)
    bad = tmp_path / "bad-exif.jpg"
    bad.write_bytes(bad_exif_jpeg())
    answer = session.handle(f"predict {bad}")
    assert answer is not None and answer["ok"] is False
    assert answer["error"]["code"] == "bad_image" and str(bad) in answer["error"]["message"]
    good = session.handle(f"predict {min((small_data / 'halter').iterdir())}")
    assert good is not None and good["ok"] is True and good["label"] in ("blouse", "halter", "sweater", "unknown")


# --- point 2: frames, pages and directories are counted cheaply and capped -----------------------------


def test_a_tiff_with_30000_directories_is_refused_without_walking_them() -> None:
    data = many_directory_tiff(30_000)
    assert len(data) > 3_000_000
    with pytest.raises(ImageTooComplexError, match=r"^scan\.tif: the image has more than 64 pages \(TIFF "
                                                   r"directories\); at most 64 are accepted$") as caught:
        _decode_or_hang(data, source="scan.tif")
    assert caught.value.code == "image_too_complex"
    assert isinstance(caught.value, ImageTooLargeError)  # a size refusal: 413 in the service


@pytest.mark.parametrize("order", ["<", ">"])
def test_tiff_directories_up_to_the_cap_are_accepted_and_one_more_is_not(order: str) -> None:
    assert _decode_or_hang(many_directory_tiff(DEFAULT_MAX_FRAMES, order=order)).shape == (1, 1, 3)
    with pytest.raises(ImageTooComplexError):
        _decode_or_hang(many_directory_tiff(DEFAULT_MAX_FRAMES + 1, order=order))
    assert _decode_or_hang(many_directory_tiff(5, order=order), max_frames=5).shape == (1, 1, 3)
    with pytest.raises(ImageTooComplexError, match="more than 4 pages"):
        _decode_or_hang(many_directory_tiff(5, order=order), max_frames=4)


def test_a_tiff_whose_directories_loop_is_counted_once_per_directory() -> None:
    data = bytearray(many_directory_tiff(2))
    first = struct.unpack("<I", data[4:8])[0]
    entries = struct.unpack("<H", data[first : first + 2])[0]
    second_next = len(data) - 4  # the last directory's "next" pointer: point it back at the first
    data[second_next:] = struct.pack("<I", first)
    assert struct.unpack("<I", data[first + 2 + 12 * entries : first + 6 + 12 * entries])[0] != 0
    assert _decode_or_hang(bytes(data), max_frames=2).shape == (1, 1, 3)


def test_tiff_pages_are_capped_by_their_pixels_together() -> None:
    # a 2x2 first page, then pages that claim 1000x1000 each (no pixel data is ever read for them)
    data = many_directory_tiff(3, sizes=[(2, 2), (1000, 1000), (1000, 1000)])
    assert _decode_or_hang(data, max_pixels=1_000_000).shape == (2, 2, 3)  # 2,000,004 <= 4 x 1,000,000
    with pytest.raises(ImageTooComplexError, match=r"3 pages \(TIFF directories\) hold 2,000,004 pixels together, "
                                                   r"over the cap of 1,600,000"):
        _decode_or_hang(data, max_pixels=400_000)


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "WEBP"])
def test_animated_images_are_capped_by_frames_and_give_their_first_frame(fmt: str) -> None:
    if fmt == "WEBP" and not features.check("webp"):
        pytest.skip("this Pillow was built without WebP")
    ok = _animated(fmt, 4)
    assert Image.open(io.BytesIO(ok)).n_frames == 4
    decoded = _decode_or_hang(ok, max_frames=4)
    assert decoded.shape == (6, 8, 3)
    assert (decoded == _frames(1)[0].getpixel((0, 0))).all()
    with pytest.raises(ImageTooComplexError, match=r"the image has (more than 3|4) frames; at most 3 are accepted"):
        _decode_or_hang(ok, max_frames=3, source="anim")
    many = _animated(fmt, DEFAULT_MAX_FRAMES + 1)
    with pytest.raises(ImageTooComplexError):
        _decode_or_hang(many)


def test_animated_frames_are_capped_by_their_pixels_together() -> None:
    data = _animated("GIF", 5, size=(100, 100))  # 50,000 pixels over its frames
    assert _decode_or_hang(data, max_pixels=12_500).shape == (100, 100, 3)  # cap 4 x 12,500 = 50,000
    with pytest.raises(ImageTooComplexError, match="5 frames hold 50,000 pixels together, over the cap of 40,000"):
        _decode_or_hang(data, max_pixels=10_000)


def test_a_gif_made_of_too_many_blocks_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images_module, "MAX_GIF_BLOCKS", 1000)
    gif = _encode(Image.new("P", (4, 4)), "GIF")
    comments = b"\x21\xfe\x01x\x00" * 600  # 600 comment extensions of 2 blocks each, before the trailer
    padded = gif[:-1] + comments + gif[-1:]
    assert _decode_or_hang(gif).shape == (4, 4, 3)
    with pytest.raises(ImageTooComplexError, match="more than 1,000 blocks"):
        _decode_or_hang(padded, source="comments.gif")


def test_an_mpo_with_two_pictures_is_accepted() -> None:
    first, second = _frames(2, size=(16, 12))
    data = _encode(first, "MPO", save_all=True, append_images=[second])
    assert Image.open(io.BytesIO(data)).format == "MPO"
    assert _decode_or_hang(data).shape == (12, 16, 3)
    with pytest.raises(ImageTooComplexError, match="2 pictures"):
        _decode_or_hang(data, max_frames=1)


# --- fuzz: mutated real images decode to RGB uint8 or raise ImageError, nothing else -------------------


def _seed_images() -> list[bytes]:
    rng = np.random.default_rng(7)
    pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
    picture = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "camera"
    seeds = [
        _encode(picture, "JPEG", quality=80, exif=exif.tobytes()),
        _encode(picture, "JPEG", quality=80, progressive=True),
        _encode(picture.convert("RGBA"), "PNG"),
        _encode(picture.convert("P"), "PNG", transparency=0),
        _animated("GIF", 3),
        _animated("PNG", 3),
        _encode(picture, "TIFF", save_all=True, append_images=[picture.convert("L")]),
        _encode(picture, "TIFF", compression="tiff_lzw"),
        _encode(picture, "BMP"),
        jpeg_with_exif(MALFORMED_EXIF["ycbcr-ascii"]),
        many_directory_tiff(3),
    ]
    if features.check("webp"):
        seeds += [_encode(picture, "WEBP", quality=70), _animated("WEBP", 3)]
    return seeds


SEEDS = _seed_images()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["flip", "byte", "word", "cut", "insert", "delete", "copy"]))
        # header and metadata bytes matter most: favour the first 200 bytes
        position = draw(st.one_of(st.integers(0, min(200, len(data) - 1)), st.integers(0, len(data) - 1)))
        if kind == "flip":
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif kind == "byte":
            data[position] = draw(st.sampled_from([0x00, 0x01, 0x7F, 0x80, 0xFF]))
        elif kind == "word":
            word = draw(st.sampled_from([b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x00\x00\x01\x00",
                                         b"\x7f\xff\xff\xff", b"\x00\x05", b"\x00\x02"]))
            data[position : position + len(word)] = word
        elif kind == "cut":
            del data[max(position, 1):]
        elif kind == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[position : position + draw(st.integers(1, 16))]
        else:  # copy a run of the file over another place
            length = draw(st.integers(1, 64))
            source = draw(st.integers(0, len(data) - 1))
            data[position : position + length] = data[source : source + length]
        if not data:
            data = bytearray(b"\x00")
    return bytes(data)


@pytest.mark.filterwarnings("ignore")
@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_images())
def test_mutated_images_decode_to_rgb_or_raise_image_error(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            decoded = decode_image(data, source="fuzz", max_pixels=1_000_000)
        except ImageError as exc:
            assert str(exc).startswith("fuzz: ")
            return
    assert isinstance(decoded, np.ndarray)
    assert decoded.dtype == np.uint8 and decoded.ndim == 3 and decoded.shape[2] == 3
    assert decoded.shape[0] >= 1 and decoded.shape[1] >= 1
