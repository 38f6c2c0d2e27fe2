"""The HTTP service through FastAPI's TestClient (lifespan included), plus one real uvicorn server.

Training runs in the service's child processes against images served by a local HTTP
server; tests that need a model without waiting for one register the session's
``trained_model`` in the service's registry directly.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from support import QuietHandler, closed_port, serve_http, wait_until_live

from photolabel.adapters.http.app import create_app
from photolabel.adapters.http.settings import ServiceSettings
from photolabel.adapters.http.store import ModelRecord, Registry, utc_now
from photolabel.artifact import read_model_dir

LABELS = ["blouse", "halter", "sweater"]
TRAIN_TIMEOUT_S = 60


# --- helpers (test_errors.py imports them too) ---------------------------------------------------


def make_settings(tmp_path: Path, cache_dir: Path, **overrides: Any) -> ServiceSettings:
    values: dict[str, Any] = {"data_dir": tmp_path / "data", "photolabel_cache_dir": cache_dir, "threads": 2,
                              "train_threads": 1, "allow_private_urls": False}
    values.update(overrides)
    return ServiceSettings(**values)


@contextmanager
def running(settings: ServiceSettings, **client_options: Any) -> Iterator[TestClient]:
    """The app with its lifespan (registry, job runner, predictors) running."""
    with TestClient(create_app(settings), **client_options) as client:
        yield client


def register_model(data_dir: Path, model_dir: Path) -> str:
    """Copy a trained model into DATA_DIR/models and list it in the service's registry; its id."""
    files = read_model_dir(model_dir)
    target = data_dir / "models" / f"registered-{files.card.model_id[:12]}"
    if not target.exists():
        shutil.copytree(model_dir, target)
    Registry(data_dir / "photolabel.sqlite3").add_model(ModelRecord(
        model_id=files.card.model_id, job_id=None, path=str(target), labels=list(files.card.labels),
        backbone=files.card.backbone.name, head=files.card.head.name, uri=None,
        created_at=utc_now(),
    ))
    return files.card.model_id


def assert_error(response: httpx.Response, status: int, code: str) -> str:
    """The response is ``{"error": {"code", "message"}}`` with this status and code; its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return body["error"]["message"]


def assert_alive(client: TestClient) -> None:
    response = client.get("/livez")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def image_files(small_data: Path, label: str) -> list[Path]:
    return sorted((small_data / label).glob("*.jpg"))


class FileServer:
    """Serves ``files`` (path -> bytes) on 127.0.0.1; paths under /img/ wait for ``gate`` first."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.gate = threading.Event()
        self.gate.set()
        self.hits: dict[str, int] = {}
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                if self.path.startswith("/img/"):
                    server.gate.wait(TRAIN_TIMEOUT_S)
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up: fine
                    self.wfile.write(body)

        self.handler = Handler

    @contextmanager
    def serving(self) -> Iterator[str]:
        try:
            with serve_http(self.handler) as base:
                yield base
        finally:
            self.gate.set()  # never leave a training child or a handler thread waiting


def image_server(small_data: Path) -> FileServer:
    """Every image of ``small_data`` at /img/<label>/<name>."""
    files = {}
    for label in LABELS:
        for path in image_files(small_data, label):
            files[f"/img/{label}/{path.name}"] = path.read_bytes()
    return FileServer(files)


def url_csv(server: FileServer, base: str) -> bytes:
    """A seed-002 CSV: ``image_url,label,sha1`` for every image the server has."""
    lines = []
    for path, body in sorted(server.files.items()):
        if path.startswith("/img/"):
            label = path.split("/")[2]
            lines.append(f"{base}{path},{label},{hashlib.sha1(body).hexdigest()}")
    return ("\n".join(lines) + "\n").encode()


def wait_for_job(client: TestClient, job_id: str, statuses: tuple[str, ...] = ("ready", "error"),
                 timeout: float = TRAIN_TIMEOUT_S) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in statuses:
            return job
        assert time.monotonic() < deadline, f"job still {job['status']} ({job['stage']}) after {timeout} s"
        time.sleep(0.1)


def tar_gz(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for label_dir in sorted(folder.iterdir()):
            archive.add(label_dir, arcname=label_dir.name)
    return buffer.getvalue()


def train_request(csv_url: str, csv_sha1: str, seed: int = 1234) -> dict[str, Any]:
    return {"metadata": {"random_seed": seed}, "csv": {"url": csv_url, "sha1": csv_sha1},
            "model": {"uri": "gs://test/1"}}


# --- seed 002 ---------------------------------------------------------------------------------------


def test_seed_train_then_infer(tmp_path: Path, cache_dir: Path, small_data: Path) -> None:
    server = image_server(small_data)
    with server.serving() as base:
        csv = url_csv(server, base)
        server.files["/train.csv"] = server.files["/copy-of-train.csv"] = csv
        sha1 = hashlib.sha1(csv).hexdigest()
        request = train_request(f"{base}/train.csv", sha1)
        server.gate.clear()  # images wait: the job cannot finish before we have looked at it
        with running(make_settings(tmp_path, cache_dir, allow_private_urls=True)) as client:
            first = client.post("/train", json=request)
            assert first.status_code == 200, first.text
            assert first.json()["status"] == "new"
            model_sha1 = first.json()["model_sha1"]
            assert len(model_sha1) == 40

            again = client.post("/train", json=request)
            assert again.json() == {"model_sha1": model_sha1, "status": "in_progress"}
            assert server.hits["/train.csv"] == 1  # a known job: the CSV is not fetched again

            server.gate.set()
            deadline = time.monotonic() + TRAIN_TIMEOUT_S
            while (answer := client.post("/train", json=request).json())["status"] == "in_progress":
                assert time.monotonic() < deadline
                time.sleep(0.1)
            assert answer == {"model_sha1": model_sha1, "status": "ready"}, answer

            # The same bytes at another URL: the same model, and nothing fetched.
            moved = client.post("/train", json=train_request(f"{base}/copy-of-train.csv", sha1)).json()
            assert moved == {"model_sha1": model_sha1, "status": "ready"}
            assert "/copy-of-train.csv" not in server.hits
            # Another seed is another model.
            other = client.post("/train", json=train_request(f"{base}/train.csv", sha1, seed=7)).json()
            assert other["model_sha1"] != model_sha1 and other["status"] == "new"

            sweater = image_files(small_data, "sweater")[0].name
            infer = client.post("/infer", json={"model": {"uri": "gs://test/1", "sha1": model_sha1},
                                                "image": {"url": f"{base}/img/sweater/{sweater}"}})
            assert infer.status_code == 200, infer.text
            scores = infer.json()
            assert sorted(scores) == LABELS
            assert sum(scores.values()) == pytest.approx(1.0, abs=1e-6)
            assert max(scores, key=scores.get) == "sweater"
            assert (tmp_path / "data" / "uploads" / f"{sha1}.csv").read_bytes() == csv


def test_seed_train_sha1_mismatch_names_both_hashes(tmp_path: Path, cache_dir: Path) -> None:
    server = FileServer({"/train.csv": b"http://example.com/a.jpg,a\n"})
    with server.serving() as base, running(make_settings(tmp_path, cache_dir, allow_private_urls=True)) as client:
        found = hashlib.sha1(server.files["/train.csv"]).hexdigest()
        claimed = "0" * 40
        message = assert_error(client.post("/train", json=train_request(f"{base}/train.csv", claimed)),
                               400, "sha1_mismatch")
        assert found in message and claimed in message
        assert client.get("/v1/jobs").json() == {"jobs": []}


def test_seed_train_refuses_private_urls_by_default(tmp_path: Path, cache_dir: Path) -> None:
    server = FileServer({"/train.csv": b"x"})
    with server.serving() as base, running(make_settings(tmp_path, cache_dir)) as client:
        message = assert_error(client.post("/train", json=train_request(f"{base}/train.csv", "1" * 40)),
                               422, "url_blocked")
        assert "private address" in message
        assert "/train.csv" not in server.hits
        assert_alive(client)


# --- /v1: train, inspect, predict, delete -------------------------------------------------------------


def test_v1_train_archive_to_model_details(tmp_path: Path, cache_dir: Path, small_data: Path) -> None:
    archive = tar_gz(small_data)
    with running(make_settings(tmp_path, cache_dir)) as client:
        form = {"seed": "7", "classes": "blouse, halter sweater", "valid_fraction": "0.2"}
        started = client.post("/v1/train", files={"data": ("fashion.tar.gz", archive, "application/gzip")}, data=form)
        assert started.status_code == 202, started.text
        job_id = started.json()["job_id"]
        assert started.json()["model_sha1"] == job_id and started.json()["status"] in ("queued", "in_progress")
        assert any(p.name.endswith(".tar.gz") for p in (tmp_path / "data" / "uploads").iterdir())

        same = client.post("/v1/train", files={"data": ("renamed.tgz", archive, "application/gzip")}, data=form)
        assert same.status_code == 200 and same.json()["job_id"] == job_id

        job = wait_for_job(client, job_id)
        assert job["status"] == "ready", job
        assert job["progress"] == 1.0 and job["error"] is None

        details = client.get(f"/v1/models/{job_id}")
        assert details.status_code == 200, details.text
        model = details.json()
        assert model["model_id"] == job["model_id"] and model["job_id"] == job_id
        assert model["labels"] == LABELS
        assert model["config"]["seed"] == 7 and model["config"]["valid_fraction"] == 0.2
        validation = model["metrics"]["validation"]
        assert len(validation["confusion_matrix"]) == 3 and all(len(row) == 3 for row in validation["confusion_matrix"])
        assert sum(map(sum, validation["confusion_matrix"])) == validation["n"] == 12
        assert set(validation["per_class"]) == set(LABELS)
        assert "images" not in model["lineage"] and model["lineage"]["n_images"] == 60
        assert client.get(f"/v1/models/{model['model_id'][:10]}").json()["model_id"] == model["model_id"]

        listed = client.get("/v1/models").json()["models"]
        assert [m["model_id"] for m in listed] == [model["model_id"]]
        assert listed[0]["validation_accuracy"] == validation["accuracy"]
        assert listed[0]["labels"] == LABELS and listed[0]["backbone"] == "efficientnet-lite1"
        assert [j["job_id"] for j in client.get("/v1/jobs").json()["jobs"]] == [job_id]


def test_predict_multipart_json_and_raw(tmp_path: Path, cache_dir: Path, trained_model: Path,
                                        small_data: Path) -> None:
    settings = make_settings(tmp_path, cache_dir, allow_private_urls=True)
    model_id = register_model(settings.data_dir, trained_model)
    blouse, halter = image_files(small_data, "blouse")[0], image_files(small_data, "halter")[0]
    server = image_server(small_data)
    with server.serving() as base, running(settings) as client:
        files = [("images", (blouse.name, blouse.read_bytes(), "image/jpeg")),
                 ("images", (halter.name, halter.read_bytes(), "image/jpeg"))]
        multipart = client.post(f"/v1/models/{model_id}/predict", files=files)
        assert multipart.status_code == 200, multipart.text
        body = multipart.json()
        assert body["model_id"] == model_id
        assert [p["image"] for p in body["predictions"]] == [blouse.name, halter.name]
        assert [p["label"] for p in body["predictions"]] == ["blouse", "halter"]
        assert body["predictions"][0]["sha256"] == hashlib.sha256(blouse.read_bytes()).hexdigest()
        assert sum(body["predictions"][1]["scores"].values()) == pytest.approx(1.0, abs=1e-6)

        urls = [f"{base}/img/blouse/{blouse.name}", f"{base}/img/nothing.jpg"]
        by_url = client.post(f"/v1/models/{model_id}/predict", json={"urls": urls})
        assert by_url.status_code == 200, by_url.text
        first, missing = by_url.json()["predictions"]
        assert first["label"] == "blouse"
        # Batches of other sizes may change the last bits (BLAS), never more.
        assert first["scores"] == pytest.approx(body["predictions"][0]["scores"], abs=1e-9)
        assert missing["image"] == urls[1] and missing["error"]["code"] == "fetch_failed"
        assert "404" in missing["error"]["message"]

        raw = client.post(f"/v1/models/{model_id}/predict", content=halter.read_bytes(),
                          headers={"Content-Type": "image/jpeg"})
        assert raw.status_code == 200, raw.text
        assert raw.json()["predictions"][0]["label"] == "halter"
        assert raw.json()["predictions"][0]["scores"] == pytest.approx(body["predictions"][1]["scores"], abs=1e-9)


def test_predict_object_from_bucket_and_uri(tmp_path: Path, cache_dir: Path, trained_model: Path,
                                            small_data: Path) -> None:
    settings = make_settings(tmp_path, cache_dir)
    model_id = register_model(settings.data_dir, trained_model)
    sweater = image_files(small_data, "sweater")[1]
    bucket = settings.storage_path / "cmpsc445-uploads"
    (bucket / "2024").mkdir(parents=True)
    shutil.copyfile(sweater, bucket / "2024" / "3001-BBA14BB7.jpeg")
    (tmp_path / "secret.jpg").write_bytes(sweater.read_bytes())
    with running(settings) as client:
        url = f"/v1/models/{model_id}/predict-object"
        answer = client.post(url, json={"bucket": "cmpsc445-uploads", "filename": "2024/3001-BBA14BB7.jpeg"})
        assert answer.status_code == 200, answer.text
        (prediction,) = answer.json()["predictions"]
        assert prediction["image"] == "cmpsc445-uploads/2024/3001-BBA14BB7.jpeg"
        assert prediction["label"] == "sweater"

        for body in ({"bucket": "cmpsc445-uploads", "filename": "../../../secret.jpg"},
                     {"bucket": "cmpsc445-uploads", "filename": "2024/../../secret.jpg"},
                     {"bucket": "..", "filename": "secret.jpg"},
                     {"bucket": "cmpsc445-uploads", "filename": "/etc/passwd"}):
            assert_error(client.post(url, json=body), 422, "invalid_request")
        # A symbolic link inside the bucket that leads out of it is refused too.
        (bucket / "link.jpg").symlink_to(tmp_path / "secret.jpg")
        assert_error(client.post(url, json={"bucket": "cmpsc445-uploads", "filename": "link.jpg"}), 422, "bad_path")
        assert_error(client.post(url, json={"bucket": "cmpsc445-uploads", "filename": "none.jpg"}), 404, "not_found")
        assert_error(client.post(url, json={"uri": f"file://{tmp_path}/secret.jpg"}), 422, "bad_uri")
        assert_error(client.post(url, json={"uri": str(tmp_path / "secret.jpg")}), 422, "bad_uri")
        assert_error(client.post(url, json={"uri": "ftp://host/x.jpg"}), 422, "bad_uri")

        fsspec = pytest.importorskip("fsspec", reason="fsspec is optional; the {uri} form needs it")
        with fsspec.open("memory://photolabel-test/sweater.jpg", "wb") as handle:
            handle.write(sweater.read_bytes())
        by_uri = client.post(url, json={"uri": "memory://photolabel-test/sweater.jpg"})
        assert by_uri.status_code == 200, by_uri.text
        assert by_uri.json()["predictions"][0]["scores"] == pytest.approx(prediction["scores"], abs=1e-9)


def test_delete_model_then_404(tmp_path: Path, cache_dir: Path, trained_model: Path, small_data: Path) -> None:
    settings = make_settings(tmp_path, cache_dir)
    model_id = register_model(settings.data_dir, trained_model)
    folder = Path(Registry(settings.data_dir / "photolabel.sqlite3").get_model(model_id).path)
    image = image_files(small_data, "blouse")[0].read_bytes()
    with running(settings) as client:
        predicted = client.post(f"/v1/models/{model_id}/predict", content=image, headers={"Content-Type": "image/jpeg"})
        assert predicted.status_code == 200  # loaded into the predictor cache
        deleted = client.delete(f"/v1/models/{model_id}")
        assert deleted.status_code == 204 and deleted.content == b""
        assert not folder.exists()
        assert trained_model.is_dir()  # the original, outside DATA_DIR, is untouched
        assert_error(client.get(f"/v1/models/{model_id}"), 404, "not_found")
        assert_error(client.post(f"/v1/models/{model_id}/predict", content=image,
                                 headers={"Content-Type": "image/jpeg"}), 404, "not_found")
        assert_error(client.delete(f"/v1/models/{model_id}"), 404, "not_found")
        assert client.get("/v1/models").json() == {"models": []}


def test_predict_answers_while_a_model_trains(tmp_path: Path, cache_dir: Path, trained_model: Path,
                                              small_data: Path) -> None:
    settings = make_settings(tmp_path, cache_dir, allow_private_urls=True)
    model_id = register_model(settings.data_dir, trained_model)
    server = image_server(small_data)
    image = image_files(small_data, "halter")[2].read_bytes()
    with server.serving() as base, running(settings) as client:
        server.gate.clear()
        started = client.post("/v1/train", files={"data": ("urls.csv", url_csv(server, base), "text/csv")},
                              data={"seed": "3"})
        assert started.status_code == 202, started.text
        job_id = started.json()["job_id"]
        assert wait_for_job(client, job_id, ("in_progress", "ready", "error"))["status"] == "in_progress"
        for _ in range(3):
            answer = client.post(f"/v1/models/{model_id}/predict", content=image,
                                 headers={"Content-Type": "image/jpeg"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["predictions"][0]["label"] == "halter"
        assert client.get(f"/v1/jobs/{job_id}").json()["status"] == "in_progress"
        assert_error(client.get(f"/v1/models/{job_id}"), 409, "model_not_ready")
        server.gate.set()
        assert wait_for_job(client, job_id)["status"] == "ready"


# --- health, docs, the web page ---------------------------------------------------------------------


def test_health_docs_and_page(tmp_path: Path, cache_dir: Path) -> None:
    with running(make_settings(tmp_path, cache_dir)) as client:
        assert client.get("/livez").json() == {"status": "ok"}
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json() == {"status": "ready"}

        doc = client.get("/api/doc")
        assert doc.status_code == 200 and "text/html" in doc.headers["content-type"]
        assert "swagger" in doc.text.lower() and "/api/openapi.json" in doc.text
        schema = client.get("/api/openapi.json").json()
        for path in ("/train", "/infer", "/v1/train", "/v1/jobs/{job_id}", "/v1/models/{key}",
                     "/v1/models/{key}/predict", "/v1/models/{key}/predict-object", "/livez", "/readyz"):
            assert path in schema["paths"], path
        train_schema = schema["components"]["schemas"]["TrainRequest"]
        assert train_schema["examples"][0]["csv"]["sha1"] == "9abcd53b4bdd2f20cbf6f3ad3b17ee05b58c0fc9"
        predict_body = schema["paths"]["/v1/models/{key}/predict"]["post"]["requestBody"]["content"]
        assert {"multipart/form-data", "application/json", "image/*"} <= set(predict_body)

        page = client.get("/")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "<title>photolabel" in page.text
        assert client.get("/static/index.html").status_code == 200


# --- a real server ------------------------------------------------------------------------------------


def test_real_server_predicts_over_http(tmp_path: Path, cache_dir: Path, trained_model: Path,
                                        small_data: Path) -> None:
    data_dir = tmp_path / "data"
    model_id = register_model(data_dir, trained_model)
    port = closed_port()
    photolabel = shutil.which("photolabel", path=str(Path(sys.executable).parent)) or "photolabel"
    env = {**os.environ, "DATA_DIR": str(data_dir), "PHOTOLABEL_CACHE_DIR": str(cache_dir), "API_PORT": "1",
           "API_HOST": "127.0.0.1", "ALLOW_PRIVATE_URLS": "0"}
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen([photolabel, "serve", "--port", str(port)], env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_live(server, base, tmp_path / "server.log", 30)
        image = image_files(small_data, "sweater")[3].read_bytes()
        answer = httpx.post(f"{base}/v1/models/{model_id}/predict", content=image,
                            headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["label"] == "sweater"
        assert_error(httpx.post(f"{base}/infer", content=b"{", headers={"Content-Type": "application/json"}),
                     400, "bad_json")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            code = server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            code = server.wait()
        log.close()
    assert code == 0, (tmp_path / "server.log").read_text()


def test_concurrent_requests_share_one_batch(tmp_path: Path, cache_dir: Path, trained_model: Path,
                                             small_data: Path) -> None:
    settings = make_settings(tmp_path, cache_dir, infer_max_batch=8, infer_max_wait_ms=1000)
    model_id = register_model(settings.data_dir, trained_model)
    images = [path.read_bytes() for label in LABELS for path in image_files(small_data, label)[:2]]
    with running(settings) as client:
        def predict(image: bytes) -> httpx.Response:
            return client.post(f"/v1/models/{model_id}/predict", content=image,
                               headers={"Content-Type": "image/jpeg"})

        assert predict(images[0]).status_code == 200  # loads the model
        batcher = client.app.state.service.predictors.loaded(model_id)
        before = batcher.batches_run
        barrier = threading.Barrier(len(images))

        def together(image: bytes) -> httpx.Response:
            barrier.wait()
            return predict(image)

        with ThreadPoolExecutor(len(images)) as pool:
            answers = list(pool.map(together, images))
        assert [a.json()["predictions"][0]["best"] for a in answers] == [label for label in LABELS for _ in (0, 1)]
        assert batcher.batches_run - before == 1  # six requests, one predict_batch call


# --- calibration and the answer "unknown" -------------------------------------------------------------


def test_predict_answers_unknown_with_scores_and_infer_keeps_the_seed_shape(
        tmp_path: Path, cache_dir: Path, trained_model: Path, small_data: Path) -> None:
    from foreign_images import generated_images, png_bytes

    settings = make_settings(tmp_path, cache_dir, allow_private_urls=True)
    model_id = register_model(settings.data_dir, trained_model)
    blouse, noise = image_files(small_data, "blouse")[0], png_bytes(generated_images()["noise"])
    server = FileServer({"/noise.png": noise})
    with server.serving() as base, running(settings) as client:
        files = [("images", ("noise.png", noise, "image/png")),
                 ("images", (blouse.name, blouse.read_bytes(), "image/jpeg"))]
        response = client.post(f"/v1/models/{model_id}/predict", files=files)
        assert response.status_code == 200, response.text
        foreign, own = response.json()["predictions"]
        assert (foreign["label"], foreign["unknown"]) == ("unknown", True) and foreign["best"] in LABELS
        assert sorted(foreign["scores"]) == LABELS and sum(foreign["scores"].values()) == pytest.approx(1.0)
        assert foreign["best"] == max(foreign["scores"], key=foreign["scores"].get)
        assert (own["label"], own["best"], own["unknown"]) == ("blouse", "blouse", False)

        infer = client.post("/infer", json={"model": {"sha1": model_id}, "image": {"url": f"{base}/noise.png"}})
        assert infer.status_code == 200, infer.text
        assert infer.json() == pytest.approx(foreign["scores"], abs=1e-9)  # {label: probability} only

        details = client.get(f"/v1/models/{model_id}").json()
        assert details["calibration"]["temperature"] == details["metrics"]["calibration"]["temperature"]
        assert details["unknown"]["distance_threshold"] == details["metrics"]["unknown"]["distance_threshold"]
        assert details["metrics"]["validation"]["unknown"]["n"] == details["metrics"]["validation"]["n"]


def test_v1_train_form_switches_calibration_and_unknown_off(tmp_path: Path, cache_dir: Path,
                                                            small_data: Path) -> None:
    archive = tar_gz(small_data)
    with running(make_settings(tmp_path, cache_dir)) as client:
        started = client.post("/v1/train", files={"data": ("fashion.tar.gz", archive, "application/gzip")},
                              data={"calibrate": "false", "unknown": "false"})
        assert started.status_code == 202, started.text
        job = wait_for_job(client, started.json()["job_id"])
        assert job["status"] == "ready", job
        model = client.get(f"/v1/models/{job['model_id']}").json()
        assert (model["config"]["calibrate"], model["config"]["unknown"]) == (False, False)
        assert model["calibration"] is None and model["unknown"] is None
        assert "calibration" not in model["metrics"] and "unknown" not in model["metrics"]["validation"]
        bad = client.post("/v1/train", files={"data": ("fashion.tar.gz", archive, "application/gzip")},
                          data={"unknown": "perhaps"})
        assert bad.status_code == 422


def test_data_limit_and_the_search_fields_reach_the_training_jobs(tmp_path: Path, cache_dir: Path,
                                                                  small_data: Path) -> None:
    server = image_server(small_data)
    settings = make_settings(tmp_path, cache_dir, allow_private_urls=True, data_limit=5)
    with server.serving() as base, running(settings) as client:
        # /train (the static-transfer-learning API) trains on at most DATA_LIMIT images per label
        csv = url_csv(server, base)
        server.files["/train.csv"] = csv
        seed_job = client.post("/train", json=train_request(f"{base}/train.csv", hashlib.sha1(csv).hexdigest()))
        assert seed_job.status_code == 200, seed_job.text
        job = wait_for_job(client, seed_job.json()["model_sha1"])
        assert job["status"] == "ready", job
        model = client.get(f"/v1/models/{job['model_id']}").json()
        assert model["config"]["max_per_label"] == 5 and model["lineage"]["counts"]["train"] == 15

        # /v1/train: DATA_LIMIT unless the form says otherwise; balance, tune and preset from the form
        archive = tar_gz(small_data)
        started = client.post("/v1/train", files={"data": ("fashion.tar.gz", archive, "application/gzip")},
                              data={"max_per_label": "all", "balance": "true", "tune": "true"})
        assert started.status_code == 202, started.text
        job = wait_for_job(client, started.json()["job_id"])
        assert job["status"] == "ready", job
        model = client.get(f"/v1/models/{job['model_id']}").json()
        config = model["config"]
        assert (config["max_per_label"], config["balance"], config["tune"]) == (None, True, True)
        assert model["metrics"]["tuning"]["weighted"] is True and model["lineage"]["counts"]["train"] == 54
        registry = Registry(tmp_path / "data" / "photolabel.sqlite3")
        for form, expected in (({}, 5), ({"max_per_label": "min"}, 0), ({"max_per_label": "7"}, 7)):
            queued = client.post("/v1/train", files={"data": ("fashion.tar.gz", archive, "application/gzip")},
                                 data={**form, "preset": "best", "seed": "99"})
            assert queued.status_code == 202, queued.text
            spec = registry.get_job(queued.json()["job_id"]).spec
            assert (spec["config"]["max_per_label"], spec["config"]["preset"]) == (expected, "best")
        for form in ({"max_per_label": "lots"}, {"preset": "fastest"}):
            bad = client.post("/v1/train", files={"data": ("fashion.tar.gz", archive, "application/gzip")}, data=form)
            assert_error(bad, 422, "invalid_config")
