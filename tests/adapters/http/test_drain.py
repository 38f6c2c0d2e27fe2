"""Graceful drain: on SIGTERM ``photolabel serve`` answers /readyz with 503 ``draining`` at once, refuses new
training jobs, lets the requests in progress finish (up to DRAIN_TIMEOUT_S), queues a running job again
and exits. /readyz is 200 only when the service can answer; /livez and /healthz stay 200."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from pathlib import Path

import httpx
import pytest
from support import closed_port
from test_api import FileServer, assert_alive, assert_error, image_files, make_settings, register_model, running

from photolabel.adapters.http.jobs import REQUEUED_STAGE
from photolabel.adapters.http.lifecycle import Drain
from photolabel.adapters.http.store import Registry

WAIT_S = 120  # only to detect a hang


def _archive(small_data: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(small_data, arcname="data")
    return buffer.getvalue()


# --- in process ---------------------------------------------------------------------------------------

def test_readyz_is_200_only_when_the_service_can_answer_and_503_once_draining(tmp_path: Path,
                                                                              cache_dir: Path) -> None:
    with running(make_settings(tmp_path, cache_dir)) as client:
        assert client.get("/readyz").json() == {"status": "ready"}  # database answers, backbone loaded
        drain: Drain = client.app.state.drain  # type: ignore[attr-defined]
        drain.begin()
        assert_error(client.get("/readyz"), 503, "draining")
        assert client.get("/readyz").headers["retry-after"]
        assert client.get("/healthz").json() == {"status": "ok"}
        assert_alive(client)
        refused = client.post("/v1/train", files={"data": ("d.tar.gz", b"x")})
        assert_error(refused, 503, "draining")
        assert_error(client.post("/v1/jobs/abc/retry"), 503, "draining")
        assert client.get("/v1/jobs").status_code == 200  # reading goes on
        assert client.get("/v1/jobs").json() == {"jobs": []}


def test_readyz_is_503_when_the_database_does_not_answer(tmp_path: Path, cache_dir: Path) -> None:
    settings = make_settings(tmp_path, cache_dir)
    with running(settings) as client:
        client.app.state.service.registry.ping = lambda: False  # type: ignore[attr-defined]
        message = assert_error(client.get("/readyz"), 503, "not_ready")
        assert "database" in message and str(settings.data_dir) not in message


def test_drain_waits_for_requests_in_flight_up_to_its_timeout() -> None:
    drain = Drain(timeout_s=WAIT_S)
    steps: list[str] = []
    done = threading.Event()
    drain.on_begin(lambda: steps.append("callbacks"))
    drain.enter()
    thread = drain.run(then=lambda: (steps.append("then"), done.set()))
    assert thread is not None and drain.draining
    assert drain.run(then=lambda: None) is None  # once
    assert not done.wait(0.2) and steps == ["callbacks"]  # a request is still in flight
    drain.leave()
    assert done.wait(WAIT_S) and steps == ["callbacks", "then"]
    late: list[str] = []
    drain.on_begin(lambda: late.append("now"))  # registered after the start: called at once
    assert late == ["now"]

    stuck = Drain(timeout_s=0.05)
    stuck.enter()  # never leaves: the drain gives up after its timeout
    ended = threading.Event()
    stuck.run(then=ended.set)
    assert ended.wait(WAIT_S)


# --- a real server ------------------------------------------------------------------------------------

def _start(data_dir: Path, cache_dir: Path, port: int, log: Path, **env_vars: str) -> subprocess.Popen:
    env = {**os.environ, "DATA_DIR": str(data_dir), "PHOTOLABEL_CACHE_DIR": str(cache_dir),
           "API_HOST": "127.0.0.1", "TRAIN_THREADS": "1", "ALLOW_PRIVATE_URLS": "true", **env_vars}
    server = subprocess.Popen([sys.executable, "-m", "photolabel.adapters.cli", "serve", "--port", str(port)],
                              env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        assert server.poll() is None, log.read_text()
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=WAIT_S).status_code == 200:
                return server
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("the server did not become ready")


def _cold_cache(tmp_path: Path, cache_dir: Path) -> Path:
    """The exported backbone without embeddings, so that a training job runs long enough to be caught."""
    from photolabel.backbones import get_backbone

    get_backbone("efficientnet-lite0", cache_dir=cache_dir).onnx_path()
    cold = tmp_path / "cache"
    shutil.copytree(cache_dir / "backbones", cold / "backbones")
    return cold


def _stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)


def test_sigterm_drains_in_flight_requests_and_requeues_the_running_job(tmp_path: Path, cache_dir: Path,
                                                                        trained_model: Path,
                                                                        small_data: Path) -> None:
    data_dir, port, log = tmp_path / "data", closed_port(), tmp_path / "server.log"
    model_id = register_model(data_dir, trained_model)
    image = image_files(small_data, "sweater")[0].read_bytes()
    images = FileServer({"/img/slow.jpg": image})
    images.gate.clear()  # the image is served only when the test says so
    arrived = threading.Event()
    handler_get = images.handler.do_GET

    def do_get(handler: object) -> None:
        arrived.set()
        handler_get(handler)

    images.handler.do_GET = do_get  # type: ignore[method-assign]
    base = f"http://127.0.0.1:{port}"
    server = _start(data_dir, _cold_cache(tmp_path, cache_dir), port, log, DRAIN_TIMEOUT_S=str(WAIT_S))
    try:
        with images.serving() as image_base:
            created = httpx.post(f"{base}/v1/train", files={"data": ("d.tar.gz", _archive(small_data))}, timeout=30)
            assert created.status_code == 202, created.text
            job_id = created.json()["job_id"]
            deadline = time.monotonic() + WAIT_S
            while True:  # until the child itself reports progress: it runs the job, its temporary folder made
                job = httpx.get(f"{base}/v1/jobs/{job_id}", timeout=10).json()
                if job["status"] == "in_progress" and job["stage"] != "starting":
                    break
                assert job["status"] in ("queued", "in_progress"), job
                assert time.monotonic() < deadline, "the job never started"
                time.sleep(0.05)

            answers: list[httpx.Response] = []
            request = threading.Thread(target=lambda: answers.append(httpx.post(
                f"{base}/v1/models/{model_id}/predict", json={"urls": [f"{image_base}/img/slow.jpg"]},
                timeout=WAIT_S)))
            request.start()
            assert arrived.wait(WAIT_S), "the prediction request never fetched its image"

            server.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + WAIT_S
            while (ready := httpx.get(f"{base}/readyz", timeout=10)).status_code == 200:
                assert time.monotonic() < deadline, "readyz never turned 503"
                time.sleep(0.05)
            assert_error(ready, 503, "draining")
            assert httpx.get(f"{base}/healthz", timeout=10).status_code == 200
            refused = httpx.post(f"{base}/v1/train", files={"data": ("e.tar.gz", b"other")}, timeout=30)
            assert_error(refused, 503, "draining")

            images.gate.set()  # the request in progress may finish now
            request.join(WAIT_S)
            assert not request.is_alive()
        (answer,) = answers
        assert answer.status_code == 200, answer.text
        (prediction,) = answer.json()["predictions"]
        assert "error" not in prediction and set(prediction["scores"]) == {"blouse", "halter", "sweater"}
        assert server.wait(WAIT_S) == 0, log.read_text()
    finally:
        _stop(server)

    registry = Registry(data_dir / "photolabel.sqlite3")
    try:
        job = registry.get_job(job_id)
        assert job is not None
        assert (job.status, job.stage, job.attempts) == ("queued", REQUEUED_STAGE, 0)
        assert [job.job_id for job in registry.list_jobs()] == [job_id]  # the refused upload made no job
    finally:
        registry.close()
    assert (data_dir / "tmp").is_dir() and list((data_dir / "tmp").iterdir()) == []  # the child cleaned up
    assert not (data_dir / "models" / job_id).exists()


def test_a_request_that_outlasts_the_drain_time_does_not_keep_the_server_up(tmp_path: Path, cache_dir: Path,
                                                                           trained_model: Path,
                                                                           small_data: Path) -> None:
    data_dir, port, log = tmp_path / "data", closed_port(), tmp_path / "server.log"
    model_id = register_model(data_dir, trained_model)
    images = FileServer({"/img/never.jpg": image_files(small_data, "blouse")[0].read_bytes()})
    images.gate.clear()
    base = f"http://127.0.0.1:{port}"
    server = _start(data_dir, cache_dir, port, log, DRAIN_TIMEOUT_S="1")
    try:
        with images.serving() as image_base:
            answers: list[object] = []

            def predict() -> None:
                try:
                    answers.append(httpx.post(f"{base}/v1/models/{model_id}/predict",
                                              json={"urls": [f"{image_base}/img/never.jpg"]}, timeout=WAIT_S))
                except httpx.HTTPError as exc:
                    answers.append(exc)

            request = threading.Thread(target=predict)
            request.start()
            deadline = time.monotonic() + WAIT_S
            while not images.hits:
                assert time.monotonic() < deadline, "the request never fetched its image"
                time.sleep(0.02)
            server.send_signal(signal.SIGTERM)
            assert server.wait(WAIT_S) == 0, log.read_text()  # it did not wait for the image
            request.join(WAIT_S)
        assert answers and not (isinstance(answers[0], httpx.Response) and answers[0].status_code == 200)
    finally:
        _stop(server)


def test_a_second_sigterm_stops_at_once(tmp_path: Path, cache_dir: Path, trained_model: Path,
                                        small_data: Path) -> None:
    pytest.importorskip("uvicorn")
    data_dir, port, log = tmp_path / "data", closed_port(), tmp_path / "server.log"
    model_id = register_model(data_dir, trained_model)
    images = FileServer({"/img/never.jpg": image_files(small_data, "blouse")[0].read_bytes()})
    images.gate.clear()
    base = f"http://127.0.0.1:{port}"
    server = _start(data_dir, cache_dir, port, log, DRAIN_TIMEOUT_S=str(WAIT_S * 10))
    try:
        with images.serving() as image_base:
            request = threading.Thread(target=lambda: _quietly(lambda: httpx.post(
                f"{base}/v1/models/{model_id}/predict", json={"urls": [f"{image_base}/img/never.jpg"]},
                timeout=WAIT_S)))
            request.start()
            deadline = time.monotonic() + WAIT_S
            while not images.hits:
                assert time.monotonic() < deadline, "the request never fetched its image"
                time.sleep(0.02)
            server.send_signal(signal.SIGTERM)
            while httpx.get(f"{base}/readyz", timeout=10).status_code == 200:
                time.sleep(0.05)
            server.send_signal(signal.SIGTERM)
            server.wait(WAIT_S)  # far less than the drain time
            request.join(WAIT_S)
    finally:
        _stop(server)


def _quietly(call: object) -> None:
    with contextlib.suppress(httpx.HTTPError):
        call()  # type: ignore[operator]
