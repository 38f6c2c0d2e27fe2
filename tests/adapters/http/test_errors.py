"""Every error status the service answers: the status, the ``{"error": {"code", "message"}}`` shape,
and a service that still answers afterwards."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from support import closed_port
from test_api import (
    FileServer,
    assert_alive,
    assert_error,
    image_files,
    image_server,
    make_settings,
    register_model,
    running,
    train_request,
    url_csv,
)

from photolabel.adapters.http.store import Registry


@pytest.fixture
def model_id(tmp_path: Path, trained_model: Path) -> str:
    return register_model(tmp_path / "data", trained_model)


@pytest.fixture
def client(tmp_path: Path, cache_dir: Path, model_id: str) -> Iterator[TestClient]:
    with running(make_settings(tmp_path, cache_dir)) as client:
        yield client


@pytest.fixture
def jpeg(small_data: Path) -> bytes:
    return image_files(small_data, "blouse")[0].read_bytes()


def predict_raw(client: TestClient, model_id: str, body: bytes, content_type: str = "image/jpeg") -> httpx.Response:
    return client.post(f"/v1/models/{model_id}/predict", content=body, headers={"Content-Type": content_type})


# --- 400 -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", [b'{"csv": {"url": ', b'{"\xff": 1}', b"[" * 50_000], ids=["cut", "latin1", "deep"])
@pytest.mark.parametrize("path", ["/train", "/infer", "/v1/models/{model_id}/predict",
                                  "/v1/models/{model_id}/predict-object"])
def test_400_malformed_json(client: TestClient, model_id: str, path: str, body: bytes) -> None:
    response = client.post(path.format(model_id=model_id), content=body, headers={"Content-Type": "application/json"})
    assert "JSON" in assert_error(response, 400, "bad_json")
    assert_alive(client)


def test_400_sha1_mismatch(tmp_path: Path, cache_dir: Path) -> None:
    server = FileServer({"/train.csv": b"https://example.com/a.jpg,a\n"})
    with server.serving() as base, running(make_settings(tmp_path, cache_dir, allow_private_urls=True)) as client:
        message = assert_error(client.post("/train", json=train_request(f"{base}/train.csv", "a" * 40)),
                               400, "sha1_mismatch")
        assert hashlib.sha1(server.files["/train.csv"]).hexdigest() in message and "a" * 40 in message
        assert_alive(client)


# --- 404 -------------------------------------------------------------------------------------------


def test_404_unknown_model_job_and_route(client: TestClient, jpeg: bytes) -> None:
    unknown = "0123456789abcdef0123456789abcdef01234567"
    assert_error(client.post("/infer", json={"model": {"uri": "", "sha1": unknown},
                                            "image": {"url": "https://example.com/a.jpg"}}), 404, "not_found")
    assert_error(client.get(f"/v1/models/{unknown}"), 404, "not_found")
    assert_error(predict_raw(client, unknown, jpeg), 404, "not_found")
    assert_error(client.get(f"/v1/jobs/{unknown}"), 404, "not_found")
    assert_error(client.post(f"/v1/jobs/{unknown}/retry"), 404, "not_found")
    assert "/no/such/route" in assert_error(client.get("/no/such/route"), 404, "not_found")
    assert_error(client.get("/static/no-such-file.js"), 404, "not_found")
    assert_error(client.get("/train"), 405, "method_not_allowed")
    assert_alive(client)


# --- 409 -------------------------------------------------------------------------------------------


def test_409_model_not_ready(tmp_path: Path, client: TestClient, jpeg: bytes) -> None:
    job_id = "f" * 40
    Registry(tmp_path / "data" / "photolabel.sqlite3").create_job(
        job_id, "train", {"data": str(tmp_path / "missing.csv")})
    message = assert_error(client.post("/infer", json={"model": {"uri": "", "sha1": job_id},
                                                       "image": {"url": "https://example.com/a.jpg"}}),
                           409, "model_not_ready")
    assert job_id in message
    assert_error(predict_raw(client, job_id, jpeg), 409, "model_not_ready")
    assert_alive(client)


# --- 413 -------------------------------------------------------------------------------------------


def test_413_body_too_large_declared_and_streamed(tmp_path: Path, cache_dir: Path, model_id: str,
                                                  jpeg: bytes) -> None:
    with running(make_settings(tmp_path, cache_dir, max_upload_bytes=1000, max_train_upload_bytes=2000)) as client:
        declared = predict_raw(client, model_id, jpeg)  # Content-Length says it all
        assert "MAX_UPLOAD_BYTES=1000" in assert_error(declared, 413, "body_too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: the middleware counts
            for start in range(0, len(jpeg), 512):
                yield jpeg[start:start + 512]

        streamed = predict_raw(client, model_id, chunks())  # type: ignore[arg-type]
        assert_error(streamed, 413, "body_too_large")
        upload = client.post("/v1/train", files={"data": ("big.zip", b"x" * 5000, "application/zip")})
        assert "MAX_TRAIN_UPLOAD_BYTES=2000" in assert_error(upload, 413, "body_too_large")
        assert client.get("/v1/jobs").json() == {"jobs": []}
        assert_alive(client)


def test_413_image_too_large(tmp_path: Path, cache_dir: Path, model_id: str, small_data: Path,
                             jpeg: bytes) -> None:
    server = image_server(small_data)
    settings = make_settings(tmp_path, cache_dir, max_image_pixels=1000, max_upload_bytes=len(jpeg) + 2000,
                             allow_private_urls=True)
    with server.serving() as base, running(settings) as client:
        assert "pixels" in assert_error(predict_raw(client, model_id, jpeg), 413, "image_too_large")
        # a fetched image over MAX_UPLOAD_BYTES
        big = max(server.files, key=lambda path: len(server.files[path]))
        server.files[big] += b"\0" * 4000
        assert_error(client.post(f"/v1/models/{model_id}/predict", json={"urls": [f"{base}{big}"]}),
                     413, "download_too_large")
        assert_alive(client)


# --- 415 -------------------------------------------------------------------------------------------


def test_415_not_an_image(client: TestClient, model_id: str) -> None:
    assert_error(predict_raw(client, model_id, b"name,label\na.jpg,cat\n"), 415, "not_an_image")
    assert_error(client.post(f"/v1/models/{model_id}/predict", files={"images": ("notes.txt", b"hello")}),
                 415, "not_an_image")
    assert_error(predict_raw(client, model_id, b"hello", content_type="text/plain"), 415, "unsupported_media_type")
    assert_alive(client)


def test_415_one_bad_image_among_several_is_an_entry(client: TestClient, model_id: str, jpeg: bytes) -> None:
    files = [("images", ("good.jpg", jpeg, "image/jpeg")), ("images", ("bad.jpg", b"hello", "image/jpeg"))]
    response = client.post(f"/v1/models/{model_id}/predict", files=files)
    assert response.status_code == 200, response.text
    good, bad = response.json()["predictions"]
    assert good["label"] == "blouse"
    assert bad["image"] == "bad.jpg" and bad["error"]["code"] == "not_an_image"


# --- 422 -------------------------------------------------------------------------------------------


def test_422_undecodable_image(client: TestClient, model_id: str, jpeg: bytes) -> None:
    message = assert_error(predict_raw(client, model_id, jpeg[: len(jpeg) // 2]), 422, "bad_image")
    assert "<body>" in message
    assert_alive(client)


@pytest.mark.parametrize("path, body", [
    ("/train", {"csv": {"url": "https://example.com/t.csv", "sha1": "not-a-sha1"}}),
    ("/train", ["not", "an", "object"]),
    ("/infer", {"model": {"sha1": "a" * 40}}),
    ("/v1/models/{model_id}/predict", {"urls": []}),
    ("/v1/models/{model_id}/predict", {"urls": "https://example.com/a.jpg"}),
    ("/v1/models/{model_id}/predict-object", {"bucket": "b"}),
])
def test_422_invalid_field(client: TestClient, model_id: str, path: str, body: object) -> None:
    assert_error(client.post(path.format(model_id=model_id), json=body), 422, "invalid_request")
    assert_alive(client)


def test_422_seed_api_seed_out_of_range(client: TestClient) -> None:
    body = {"metadata": {"random_seed": -1}, "csv": {"url": "https://example.com/t.csv", "sha1": "a" * 40}}
    assert "seed must be in 0..4294967295" in assert_error(client.post("/train", json=body), 422, "invalid_config")
    assert_alive(client)


def test_422_invalid_training_upload(client: TestClient) -> None:
    archive = ("d.tar.gz", b"\x1f\x8b not really", "application/gzip")
    assert "known backbones" in assert_error(
        client.post("/v1/train", files={"data": archive}, data={"backbone": "resnet-9000"}), 422, "unknown_name")
    assert "valid_fraction must be in [0, 1)" in assert_error(
        client.post("/v1/train", files={"data": archive}, data={"valid_fraction": "1.5"}), 422, "invalid_config")
    for form, field in (({"seed": "-1"}, "seed must be in 0..4294967295"),
                        ({"head_params": '{"C": 0}'}, "head parameter C=0: expected float in (0, inf)"),
                        ({"head": "nb", "head_params": '{"C": 1}'}, "head 'nb' has no parameter 'C'"),
                        ({"head": "xgboost"}, "known heads: cart")):
        message = assert_error(client.post("/v1/train", files={"data": archive}, data=form), 422,
                               "unknown_name" if "xgboost" in form.get("head", "") else "invalid_config")
        assert field in message
    assert "not a JSON object" in assert_error(
        client.post("/v1/train", files={"data": archive}, data={"head_params": "C=1"}), 422, "invalid_config")
    assert_error(client.post("/v1/train", files={"data": ("d.exe", b"MZ", "application/octet-stream")}),
                 422, "bad_upload")
    assert_error(client.post("/v1/train", data={"seed": "1"}), 422, "invalid_request")
    assert client.get("/v1/jobs").json() == {"jobs": []}
    assert_alive(client)


def test_422_unreachable_image_url(tmp_path: Path, cache_dir: Path, model_id: str) -> None:
    with running(make_settings(tmp_path, cache_dir, allow_private_urls=True)) as client:
        url = f"http://127.0.0.1:{closed_port()}/a.jpg"
        message = assert_error(client.post("/infer", json={"model": {"uri": "", "sha1": model_id},
                                                          "image": {"url": url}}), 422, "fetch_failed")
        assert url in message and "refused" in message
        assert_error(client.post(f"/v1/models/{model_id}/predict", json={"urls": [url]}), 422, "fetch_failed")
        assert_error(client.post("/infer", json={"model": {"uri": "", "sha1": model_id},
                                                "image": {"url": "ftp://example.com/a.jpg"}}),
                     422, "unsupported_scheme")
        assert_alive(client)


# --- 503 -------------------------------------------------------------------------------------------


def test_503_queue_full_with_retry_after(tmp_path: Path, cache_dir: Path, model_id: str, jpeg: bytes) -> None:
    # One image may wait, for up to 1.5 s, for others to join its batch: a second one finds the queue full.
    settings = make_settings(tmp_path, cache_dir, infer_max_queue=1, infer_max_batch=8, infer_max_wait_ms=1500)
    with running(settings) as client:
        assert predict_raw(client, model_id, jpeg).status_code == 200  # loads the model
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(predict_raw, client, model_id, jpeg)
            time.sleep(0.5)
            refused = predict_raw(client, model_id, jpeg)
            assert first.result().status_code == 200
        assert_error(refused, 503, "queue_full")
        assert refused.headers["Retry-After"] == "1"
        assert predict_raw(client, model_id, jpeg).status_code == 200
        assert_alive(client)


# --- 500 -------------------------------------------------------------------------------------------


def test_500_unexpected_error_is_logged_and_shaped(tmp_path: Path, cache_dir: Path,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    with running(make_settings(tmp_path, cache_dir), raise_server_exceptions=False) as client:
        registry = client.app.state.service.registry

        def broken(limit: int = 100) -> list:
            raise RuntimeError("disk on fire")

        registry.list_jobs = broken
        assert_error(client.get("/v1/jobs"), 500, "internal")
        assert "disk on fire" in caplog.text
        assert_alive(client)


# --- concurrency -----------------------------------------------------------------------------------


def test_concurrent_identical_train_requests_make_one_job(tmp_path: Path, cache_dir: Path,
                                                          small_data: Path) -> None:
    server = image_server(small_data)
    with server.serving() as base, running(make_settings(tmp_path, cache_dir, allow_private_urls=True)) as client:
        server.files["/train.csv"] = url_csv(server, base)
        request = train_request(f"{base}/train.csv", hashlib.sha1(server.files["/train.csv"]).hexdigest())
        server.gate.clear()  # keep the job from finishing while the requests race
        barrier = threading.Barrier(6)

        def post() -> dict:
            barrier.wait()
            return client.post("/train", json=request).json()

        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda _: post(), range(6)))
        assert len({answer["model_sha1"] for answer in answers}) == 1
        assert sorted(answer["status"] for answer in answers) == ["in_progress"] * 5 + ["new"]
        assert len(client.get("/v1/jobs").json()["jobs"]) == 1
        assert_alive(client)
