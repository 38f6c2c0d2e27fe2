"""Hostile images through the service: one bad image never fails another, and a slow one holds up only itself.

* A JPEG with malformed EXIF is a 422 for that image alone: alone in a request, beside good images in one
  request, and among concurrent requests that share a micro-batch.
* A batch whose inference raises is run again image by image; a batch past INFER_TIMEOUT_S answers
  ``deadline_exceeded`` and the batcher's thread is replaced.
* A TIFF with 30,000 directories is refused (413 ``image_too_complex``) at once; an image still decoding
  at DECODE_TIMEOUT_S answers 504 ``deadline_exceeded`` while a concurrent good request to the same model
  answers 200, and its decoding process is replaced.
"""

from __future__ import annotations

import asyncio
import io
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_api import LABELS, assert_error, image_files, make_settings, register_model, running

from photolabel.adapters.http.batching import DecodePool, MicroBatcher
from photolabel.dataset import BadInput
from photolabel.embedding import ImageInput
from photolabel.images import decode_image
from photolabel.model import Prediction

HANG_TIMEOUT_S = 120.0  # only to turn a hang into a failure; nothing here asserts a duration


# --- hostile images (the same constructions as tests/core/test_hostile_images.py) --------------------


def bad_exif_jpeg() -> bytes:
    """A JPEG whose EXIF stores Make (ASCII) as a RATIONAL beside Orientation 6: Pillow's exif_transpose
    raises AttributeError on it."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 8), (200, 10, 10)).save(buffer, "JPEG")
    data = buffer.getvalue()
    entries = [(0x0112, 3, 1, struct.pack("<HH", 6, 0)), (0x010F, 5, 1, struct.pack("<I", 8 + 2 + 24 + 4))]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", *entry[:3]) + entry[3] for entry in entries)
    tiff = b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + struct.pack("<II", 6, 1)
    payload = b"Exif\x00\x00" + tiff
    return data[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + data[2:]


def many_directory_tiff(directories: int) -> bytes:
    """1x1 grey pages, each directory pointing to the next."""
    out = bytearray(b"II*\x00" + struct.pack("<I", 9) + b"\x80")
    entries = [(256, 1), (257, 1), (258, 8), (259, 1), (262, 1), (273, 8), (278, 1), (279, 1)]
    for index in range(directories):
        ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", tag, 4, 1, value)
                                                         for tag, value in entries)
        following = len(out) + len(ifd) + 4 if index < directories - 1 else 0
        out += ifd + struct.pack("<I", following)
    return bytes(out)


def slow_or_decode(data: bytes, **options: Any) -> np.ndarray:
    """A decoder for the test's DecodePool (it runs in the pool's child processes): bytes that start with
    ``SLOW`` name a file to create, then never finish; anything else decodes as usual."""
    if data.startswith(b"SLOW"):
        Path(data[4:].decode()).write_text("decoding")
        time.sleep(3600)
    return decode_image(data, **options)


# --- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture
def model_id(tmp_path: Path, trained_model: Path) -> str:
    return register_model(tmp_path / "data", trained_model)


@pytest.fixture
def good(small_data: Path) -> dict[str, bytes]:
    return {label: image_files(small_data, label)[0].read_bytes() for label in LABELS}


@pytest.fixture
def client(tmp_path: Path, cache_dir: Path, model_id: str) -> Iterator[TestClient]:
    with running(make_settings(tmp_path, cache_dir, infer_max_batch=8, infer_max_wait_ms=300)) as client:
        yield client


def predict_raw(client: TestClient, model_id: str, body: bytes) -> httpx.Response:
    return client.post(f"/v1/models/{model_id}/predict", content=body, headers={"Content-Type": "image/jpeg"})


# --- point 1: one bad image never fails another --------------------------------------------------------


def test_malformed_exif_is_a_422_for_that_image_alone(client: TestClient, model_id: str,
                                                     good: dict[str, bytes]) -> None:
    message = assert_error(predict_raw(client, model_id, bad_exif_jpeg()), 422, "bad_image")
    assert message.startswith("<body>: ") and "EXIF" in message
    files = [("images", ("blouse.jpg", good["blouse"], "image/jpeg")),
             ("images", ("bad-exif.jpg", bad_exif_jpeg(), "image/jpeg")),
             ("images", ("halter.jpg", good["halter"], "image/jpeg"))]
    response = client.post(f"/v1/models/{model_id}/predict", files=files)
    assert response.status_code == 200, response.text
    first, bad, last = response.json()["predictions"]
    assert (first["image"], first["best"]) == ("blouse.jpg", "blouse")
    assert (last["image"], last["best"]) == ("halter.jpg", "halter")
    assert bad["image"] == "bad-exif.jpg" and bad["error"]["code"] == "bad_image"
    assert bad["error"]["message"].startswith("bad-exif.jpg: ")
    assert predict_raw(client, model_id, good["sweater"]).status_code == 200


def test_a_bad_image_among_concurrent_requests_fails_only_its_own(client: TestClient, model_id: str,
                                                                  good: dict[str, bytes]) -> None:
    assert predict_raw(client, model_id, good["blouse"]).status_code == 200  # loads the model
    bodies = [good["blouse"], bad_exif_jpeg(), good["halter"], good["sweater"], bad_exif_jpeg(), good["blouse"]]
    barrier = threading.Barrier(len(bodies))

    def together(body: bytes) -> httpx.Response:
        barrier.wait()
        return predict_raw(client, model_id, body)

    with ThreadPoolExecutor(len(bodies)) as pool:
        answers = [future.result(timeout=HANG_TIMEOUT_S) for future in [pool.submit(together, b) for b in bodies]]
    assert [a.status_code for a in answers] == [200, 422, 200, 200, 422, 200], [a.text for a in answers]
    assert [answers[i].json()["predictions"][0]["best"] for i in (0, 2, 3, 5)] == [
        "blouse", "halter", "sweater", "blouse"]
    assert {answers[i].json()["error"]["code"] for i in (1, 4)} == {"bad_image"}


class FakeModel:
    """Labels every image "a"; a batch holding "poison" raises, one holding "stuck" waits for ``release``."""

    model_id = "f" * 64

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[list[str]] = []

    def predict_batch(self, items: list[ImageInput], batch_size: int | None = None) -> list[Prediction | BadInput]:
        names = [item.source for item in items]
        self.calls.append(names)
        if "stuck" in names:
            self.release.wait(HANG_TIMEOUT_S)
        if "poison" in names:
            raise ValueError("the backbone broke on this batch")
        return [Prediction(image=name, sha256="", label="a", scores={"a": 1.0}, model_id=self.model_id)
                for name in names]


def test_a_batch_whose_inference_raises_gives_each_image_its_own_outcome() -> None:
    model = FakeModel()

    async def scenario() -> list[Any]:
        batcher = MicroBatcher(model, max_batch=3, max_wait_ms=2000, max_queue=8)  # type: ignore[arg-type]
        try:
            return await asyncio.wait_for(asyncio.gather(
                *(batcher.predict(ImageInput(name, data=b"x")) for name in ("one", "poison", "two")),
                return_exceptions=True), HANG_TIMEOUT_S)
        finally:
            batcher.close()

    one, poison, two = asyncio.run(scenario())
    assert isinstance(one, Prediction) and one.image == "one"
    assert isinstance(two, Prediction) and two.image == "two"
    assert isinstance(poison, ValueError)  # a broken model, not a bad image: that request alone gets a 500
    assert model.calls[0] == ["one", "poison", "two"]
    assert sorted(map(tuple, model.calls[1:])) == [("one",), ("poison",), ("two",)]


def test_a_batch_past_its_deadline_answers_504_and_the_next_runs_on_a_new_thread() -> None:
    model = FakeModel()

    async def scenario() -> tuple[Any, Any, int]:
        batcher = MicroBatcher(model, max_batch=4, max_wait_ms=0, max_queue=8)  # type: ignore[arg-type]
        try:
            late = await asyncio.wait_for(batcher.predict(ImageInput("stuck", data=b"x"), timeout_s=0.5),
                                          HANG_TIMEOUT_S)
            # the stuck batch still holds its thread (release is not set): the next batch must not wait for it
            after = await asyncio.wait_for(batcher.predict(ImageInput("fine", data=b"x"), timeout_s=60),
                                           HANG_TIMEOUT_S)
            return late, after, batcher.workers_replaced
        finally:
            model.release.set()
            batcher.close()

    late, after, replaced = asyncio.run(scenario())
    assert isinstance(late, BadInput) and late.code == "deadline_exceeded" and late.source == "stuck"
    assert late.message.startswith("stuck: ") and "longer than" in late.message
    assert isinstance(after, Prediction) and after.image == "fine"
    assert replaced == 1


# --- point 2: cost caps, deadlines, no head-of-line blocking --------------------------------------------


def test_a_tiff_with_30000_directories_is_refused_as_too_complex(client: TestClient, model_id: str) -> None:
    data = many_directory_tiff(30_000)
    assert len(data) > 3_000_000
    with ThreadPoolExecutor(1) as pool:
        response = pool.submit(predict_raw, client, model_id, data).result(timeout=HANG_TIMEOUT_S)
    message = assert_error(response, 413, "image_too_complex")
    assert message == "<body>: the image has more than 64 pages (TIFF directories); at most 64 are accepted"


def test_max_image_frames_setting_caps_frames(tmp_path: Path, cache_dir: Path, model_id: str) -> None:
    frames = [Image.new("RGB", (8, 8), (i * 60, 0, 0)) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:])
    with running(make_settings(tmp_path, cache_dir, max_image_frames=2)) as client:
        assert_error(predict_raw(client, model_id, buffer.getvalue()), 413, "image_too_complex")
        assert predict_raw(client, model_id, many_directory_tiff(2)).status_code == 200


def test_a_slow_decode_answers_504_while_a_good_request_answers_200(tmp_path: Path, cache_dir: Path, model_id: str,
                                                                     good: dict[str, bytes]) -> None:
    settings = make_settings(tmp_path, cache_dir, decode_timeout_s=10, decode_workers=2)
    marker = tmp_path / "slow-decode-started"
    with running(settings) as client:
        predictors = client.app.state.service.predictors
        pool = predictors.decoder = DecodePool(2, decode=slow_or_decode)
        pool.start()
        with ThreadPoolExecutor(3) as threads:
            # start both decoding processes, so that the good request below finds one ready
            warm = [threads.submit(predict_raw, client, model_id, good[label]) for label in ("blouse", "halter")]
            assert [f.result(timeout=HANG_TIMEOUT_S).status_code for f in warm] == [200, 200]
            slow = threads.submit(predict_raw, client, model_id, b"SLOW" + str(marker).encode())
            deadline = time.monotonic() + HANG_TIMEOUT_S
            while not marker.exists():
                assert time.monotonic() < deadline and not slow.done(), "the slow decode never started"
                time.sleep(0.05)
            fine = predict_raw(client, model_id, good["sweater"])
            assert not slow.done()  # the good request did not wait behind the slow one
            assert fine.status_code == 200, fine.text
            assert fine.json()["predictions"][0]["best"] == "sweater"
            late = slow.result(timeout=HANG_TIMEOUT_S)
        message = assert_error(late, 504, "deadline_exceeded")
        assert message.startswith("<body>: decoding this image took longer than the server's limit of 10 s")
        assert pool.replaced == 1  # its decoding process was killed and replaced
        again = predict_raw(client, model_id, good["halter"])  # on the replacement process
        assert again.status_code == 200 and again.json()["predictions"][0]["best"] == "halter"


def test_predict_routes_document_the_504(client: TestClient) -> None:
    paths = client.get("/api/openapi.json").json()["paths"]
    for path in ("/v1/models/{key}/predict", "/v1/models/{key}/predict-object"):
        assert "504" in paths[path]["post"]["responses"], path
