"""Images -> embeddings, with a fake backbone whose vectors are known exactly: the mean colour."""

from __future__ import annotations

import hashlib
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from photolabel import embedding
from photolabel.backbones.base import Backbone, Preprocessing
from photolabel.cache import EmbeddingCache
from photolabel.config import Runtime
from photolabel.dataset import BadInput, ImageRecord
from photolabel.embedding import ImageInput, check_pixels, embed_images, embed_records, pixels_sha256
from photolabel.errors import ImageError

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "grey": (51, 102, 204)}


class MeanColour(Backbone):
    """Embedding = mean colour per channel / 255: exact for solid-colour lossless images."""

    name = "mean-colour"
    embedding_dim = 3
    preprocessing = Preprocessing(image_size=(1, 1), layout="HWC-uint8")

    def __init__(self) -> None:
        self.prepared = 0
        self.batch_sizes: list[int] = []
        self._lock = threading.Lock()

    @property
    def hash(self) -> str:
        return "e" * 64

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        with self._lock:  # called from decode threads
            self.prepared += 1
        return rgb.astype(np.float64).mean(axis=(0, 1))

    def embed_batch(self, prepared: np.ndarray) -> np.ndarray:
        self.batch_sizes.append(len(prepared))
        return (prepared / 255.0).astype(np.float32)


def _png(colour: tuple[int, int, int], size: tuple[int, int] = (6, 4)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format="PNG")
    return buffer.getvalue()


def _file(folder: Path, name: str, size: tuple[int, int] = (6, 4)) -> Path:
    path = folder / f"{name}.png"
    path.write_bytes(_png(COLOURS[name], size))
    return path


def _expected(name: str) -> np.ndarray:
    return np.array(COLOURS[name], dtype=np.float32) / np.float32(255.0)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """The sources ``embed_images`` decodes, in the order it decodes them."""
    seen: list[str] = []
    real = embedding.decode_image

    def counting(data: bytes, **kwargs):
        seen.append(kwargs.get("source", "?"))
        return real(data, **kwargs)

    monkeypatch.setattr(embedding, "decode_image", counting)
    return seen


def test_one_vector_per_input_in_order_with_its_sha256(tmp_path):
    red, blue = _file(tmp_path, "red", (3, 5)), _file(tmp_path, "blue")
    green = _png(COLOURS["green"])
    result = embed_images(
        [ImageInput("red.png", path=red), ImageInput("<bytes>", data=green), ImageInput("blue.png", path=blue)],
        MeanColour(),
    )
    assert result.indices == [0, 1, 2] and result.failures == []
    assert result.vectors.dtype == np.float32 and result.vectors.shape == (3, 3)
    np.testing.assert_array_equal(result.vectors, [_expected("red"), _expected("green"), _expected("blue")])
    assert result.sha256 == [_sha(red), hashlib.sha256(green).hexdigest(), _sha(blue)]
    assert (result.computed, result.cached) == (3, 0)


def test_failures_are_listed_with_index_and_reason_and_the_rest_succeed(tmp_path):
    red, grey = _file(tmp_path, "red"), _file(tmp_path, "grey")
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(red.read_bytes()[:50])  # cut inside the IDAT chunk
    inputs = [
        ImageInput("red.png", path=red),
        ImageInput("junk", data=b"not an image at all"),
        ImageInput("gone.png", path=tmp_path / "gone.png"),
        ImageInput("cut.png", path=truncated),
        ImageInput("grey.png", path=grey),
    ]
    result = embed_images(inputs, MeanColour(), batch_size=2)
    assert result.indices == [0, 4]
    np.testing.assert_array_equal(result.vectors, [_expected("red"), _expected("grey")])
    assert [index for index, _ in result.failures] == [1, 2, 3]
    junk, gone, cut = (problem for _, problem in result.failures)
    assert all(isinstance(problem, BadInput) for problem in (junk, gone, cut))
    assert (junk.source, junk.code) == ("junk", "not_an_image")
    assert gone.source == "gone.png" and "cannot read file" in gone.reason
    assert cut.source == "cut.png" and cut.code == "bad_image"
    assert result.computed == 2


def test_cache_hits_are_not_decoded_and_give_the_same_vectors(tmp_path, decodes):
    paths = [_file(tmp_path, name) for name in ("red", "green", "blue")]
    cache = EmbeddingCache(tmp_path / "cache", MeanColour().hash, 3)
    first = embed_images([ImageInput(p.name, path=p) for p in paths], MeanColour(), cache=cache)
    assert len(decodes) == 3 and (first.computed, first.cached) == (3, 0)

    backbone = MeanColour()
    listed = [ImageInput(p.name, path=p, sha256=_sha(p)) for p in paths]
    listed.append(ImageInput("no bytes needed", sha256=_sha(paths[0])))  # a hit needs no bytes at all
    second = embed_images(listed, backbone, cache=cache)
    assert len(decodes) == 3 and backbone.prepared == 0 and backbone.batch_sizes == []
    assert (second.computed, second.cached) == (0, 4)
    np.testing.assert_array_equal(second.vectors[:3], first.vectors)
    np.testing.assert_array_equal(second.vectors[3], first.vectors[0])


def test_a_miss_without_bytes_is_a_failure_not_a_crash():
    result = embed_images([ImageInput("ghost", sha256="0" * 64)], MeanColour())
    assert result.indices == [] and result.vectors.shape == (0, 3)
    (index, problem), = result.failures
    assert index == 0 and "no image bytes" in problem.reason


@pytest.mark.parametrize(("batch_size", "workers"), [(1, 1), (2, 4), (3, 2), (64, 8)])
def test_results_do_not_depend_on_batch_size_or_workers(tmp_path, batch_size, workers):
    names = ["red", "green", "blue", "grey"]
    inputs = [ImageInput(f"{i}", path=_file(tmp_path, names[i % 4], (i + 1, 2))) for i in range(7)]
    inputs.insert(3, ImageInput("bad", data=b"garbage"))
    backbone = MeanColour()
    result = embed_images(inputs, backbone, batch_size=batch_size, workers=workers)
    assert result.indices == [0, 1, 2, 4, 5, 6, 7]
    assert [index for index, _ in result.failures] == [3]
    np.testing.assert_array_equal(result.vectors, [_expected(names[i % 4]) for i in range(7)])
    assert max(backbone.batch_sizes) <= batch_size and sum(backbone.batch_sizes) == 7


def test_progress_reports_reach_the_total(tmp_path):
    paths = [_file(tmp_path, name) for name in COLOURS]
    calls: list[tuple[int, int]] = []
    embed_images([ImageInput(p.name, path=p) for p in paths], MeanColour(), batch_size=3,
                 on_progress=lambda done, total: calls.append((done, total)))
    assert calls == [(3, 4), (4, 4)]


def test_a_file_whose_bytes_changed_since_listed_is_refused(tmp_path, decodes):
    red = _file(tmp_path, "red")
    listed = "1" * 64
    result = embed_images([ImageInput("red.png", path=red, sha256=listed)], MeanColour())
    assert result.indices == [] and decodes == []
    (_, problem), = result.failures
    assert problem.code == "bad_image" and "changed" in problem.reason
    assert listed in problem.reason and _sha(red) in problem.reason


def test_pixels_skip_decoding_and_are_hashed_over_shape_and_bytes(tmp_path, decodes):
    pixels = np.zeros((2, 6, 3), dtype=np.uint8)
    pixels[..., 2] = 255
    result = embed_images([ImageInput("<array>", pixels=pixels)], MeanColour())
    assert decodes == []
    np.testing.assert_array_equal(result.vectors, [_expected("blue")])
    expected = hashlib.sha256(b"2x6x3:" + pixels.tobytes()).hexdigest()
    assert result.sha256 == [expected] == [pixels_sha256(pixels)]
    assert pixels_sha256(pixels.reshape(6, 2, 3)) != expected  # same bytes, another shape
    assert pixels_sha256(np.asfortranarray(pixels)) == expected  # memory layout does not matter


def test_bad_pixels_in_an_image_input_are_failures_not_a_sunk_batch():
    good = np.full((2, 2, 3), 255, dtype=np.uint8)
    inputs = [ImageInput("flat", pixels=np.zeros((4, 4), dtype=np.uint8)), ImageInput("ok", pixels=good),
              ImageInput("floats", pixels=good.astype(np.float32))]
    result = embed_images(inputs, MeanColour())
    assert result.indices == [1]
    assert [(index, problem.source) for index, problem in result.failures] == [(0, "flat"), (2, "floats")]
    assert "got uint8 of shape (4, 4)" in result.failures[0][1].reason
    assert "got float32 of shape (2, 2, 3)" in result.failures[1][1].reason


def test_check_pixels_accepts_rgb_uint8_only():
    good = np.zeros((4, 5, 3), dtype=np.uint8)
    assert check_pixels(good, "<array>") is good
    cases = [
        (np.zeros((4, 5, 3), dtype=np.float32), "float32", "(4, 5, 3)"),
        (np.zeros((4, 5), dtype=np.uint8), "uint8", "(4, 5)"),
        (np.zeros((4, 5, 4), dtype=np.uint8), "uint8", "(4, 5, 4)"),
        (np.zeros((0, 5, 3), dtype=np.uint8), "uint8", "(0, 5, 3)"),
    ]
    for array, dtype, shape in cases:
        with pytest.raises(ImageError) as caught:
            check_pixels(array, "img7")
        message = str(caught.value)
        assert message.startswith("img7: ") and f"got {dtype} of shape {shape}" in message
    with pytest.raises(ImageError, match="expected a numpy array, got list"):
        check_pixels([[[0, 0, 0]]], "img7")


# -- embed_records -----------------------------------------------------------------------------

def _records(folder: Path, bad: int) -> list[ImageRecord]:
    records = []
    for name in ("red", "green"):
        path = _file(folder, name)
        records.append(ImageRecord(f"{name}.png", path, _sha(path), name))
    for i in range(bad):
        path = folder / f"bad{i}.png"
        path.write_bytes(b"nope" * (i + 1))
        records.append(ImageRecord(f"bad{i}.png", path, _sha(path), "red"))
    return records


def test_embed_records_raises_on_a_bad_image_unless_skip_bad(tmp_path):
    records = _records(tmp_path, bad=1)
    with pytest.raises(ImageError, match="^bad0.png: ") as caught:
        embed_records(records, MeanColour(), cache=None, skip_bad=False)
    assert caught.value.remedy == "skip_bad"
    assert "--skip-bad" not in str(caught.value) and "more bad" not in str(caught.value)


def test_embed_records_counts_the_other_bad_images(tmp_path):
    with pytest.raises(ImageError, match=r"\(and 2 more bad images\)$"):
        embed_records(_records(tmp_path, bad=3), MeanColour(), cache=None, skip_bad=False)


def test_embed_records_with_skip_bad_returns_the_problems_and_fills_the_cache(tmp_path):
    records = _records(tmp_path, bad=2)
    cache = EmbeddingCache(tmp_path / "cache", MeanColour().hash, 3)
    result, problems = embed_records(records, MeanColour(), cache=cache, skip_bad=True,
                                     runtime=Runtime(batch_size=1, threads=1))
    assert [p.source for p in problems] == ["bad0.png", "bad1.png"]
    assert result.indices == [0, 1]
    np.testing.assert_array_equal(result.vectors, [_expected("red"), _expected("green")])
    assert all(cache.contains(r.sha256) for r in records[:2])
    assert not any(cache.contains(r.sha256) for r in records[2:])
