"""Kill the real server while a job trains: on restart the job resumes and no half model ever loads."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import httpx
from support import closed_port, wait_until_live


def _start(data_dir: Path, cache_dir: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "DATA_DIR": str(data_dir), "PHOTOLABEL_CACHE_DIR": str(cache_dir),
           "API_HOST": "127.0.0.1", "TRAIN_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "photolabel.adapters.cli", "serve", "--port", str(port)],
                              env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True)
    wait_until_live(server, f"http://127.0.0.1:{port}", log, 30)
    return server


def _archive(small_data: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(small_data, arcname="data")
    return buffer.getvalue()


def test_server_killed_mid_training_resumes_the_job_on_restart(tmp_path: Path, cache_dir: Path,
                                                                small_data: Path) -> None:
    # A cache with the exported backbone but no embeddings, so training takes long enough to be killed.
    from photolabel.backbones import get_backbone

    get_backbone("efficientnet-lite0", cache_dir=cache_dir).onnx_path()  # exported once per session
    cold = tmp_path / "cache"
    shutil.copytree(cache_dir / "backbones", cold / "backbones")
    data_dir, port, log = tmp_path / "data", closed_port(), tmp_path / "server.log"
    base = f"http://127.0.0.1:{port}"
    server = _start(data_dir, cold, port, log)
    try:
        answer = httpx.post(f"{base}/v1/train", files={"data": ("d.tar.gz", _archive(small_data))}, timeout=30)
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job_id"]
        deadline = time.monotonic() + 30
        while httpx.get(f"{base}/v1/jobs/{job_id}", timeout=5).json()["status"] != "in_progress":
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.05)
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # the server and anything it started, at once
        server.wait(10)
    assert not (data_dir / "models" / job_id / "model.json").exists()  # nothing half-written that loads

    server = _start(data_dir, cold, port, log)
    try:
        deadline = time.monotonic() + 120
        while True:
            job = httpx.get(f"{base}/v1/jobs/{job_id}", timeout=5).json()
            if job["status"] in ("ready", "error"):
                break
            assert time.monotonic() < deadline, f"the job was left {job['status']}"
            time.sleep(0.2)
        assert job["status"] == "ready", job
        assert job["attempts"] == 2
        image = min((small_data / "sweater").iterdir()).read_bytes()
        predicted = httpx.post(f"{base}/v1/models/{job['model_id']}/predict", content=image,
                               headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert predicted.status_code == 200, predicted.text
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
