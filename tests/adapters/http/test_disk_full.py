"""Disk full, for real: a request whose upload does not fit answers 507, and a training job whose model does
not fit fails with ``insufficient_storage`` leaving the model it would replace as it was.

Two real mechanisms, no root needed: the server runs with a file size limit (RLIMIT_FSIZE; Python ignores
SIGXFSZ, so a write past it fails with EFBIG), and a job runs in a user and mount namespace
(``unshare -rm``) where DATA_DIR/models is a tiny tmpfs (a write past it fails with ENOSPC).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest
from support import closed_port, wait_until_live

from photolabel.artifact import read_model_dir

WAIT_S = 120  # only to detect a hang
FILE_LIMIT = 1024 * 1024


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, resource.RLIM_INFINITY))


def _start_server(data_dir: Path, cache_dir: Path, port: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "DATA_DIR": str(data_dir), "PHOTOLABEL_CACHE_DIR": str(cache_dir),
           "API_HOST": "127.0.0.1", "TRAIN_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-m", "photolabel.adapters.cli", "serve", "--port", str(port)],
                              env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
                              preexec_fn=_limit_file_size)
    wait_until_live(server, f"http://127.0.0.1:{port}", log, WAIT_S)
    return server


def test_an_upload_that_does_not_fit_answers_507_and_makes_no_job(tmp_path: Path, cache_dir: Path) -> None:
    data_dir, port, log = tmp_path / "data", closed_port(), tmp_path / "server.log"
    server = _start_server(data_dir, cache_dir, port, log)
    base = f"http://127.0.0.1:{port}"
    try:
        too_big = os.urandom(3 * FILE_LIMIT)
        answer = httpx.post(f"{base}/v1/train", files={"data": ("big.tar.gz", too_big)}, timeout=WAIT_S)
        assert answer.status_code == 507, answer.text
        error = answer.json()["error"]
        assert error["code"] == "insufficient_storage"
        assert str(data_dir) not in error["message"] and str(tmp_path) not in error["message"]
        assert httpx.get(f"{base}/v1/jobs", timeout=10).json() == {"jobs": []}
        uploads = data_dir / "uploads"
        assert not uploads.exists() or [p.name for p in uploads.iterdir()] == []  # no partial upload left
        assert httpx.get(f"{base}/livez", timeout=10).status_code == 200
    finally:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait(10)


def _namespaces_work() -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null "
                            "|| mount -t tmpfs -o size=64k tmpfs \"$0\"", "/tmp"],
                           capture_output=True, timeout=30)
    return probe.returncode == 0


# Runs inside "unshare -rm": DATA_DIR/models becomes a tmpfs just larger than the old model, the old
# model is put where the job writes, and a real JobRunner runs the job in its child process.
JOB_SCRIPT = textwrap.dedent("""
    import json, math, os, shutil, subprocess, sys
    from pathlib import Path
    from photolabel.adapters.http.job_kinds import TrainSpec, model_dir_for
    from photolabel.adapters.http.jobs import JobRunner
    from photolabel.adapters.http.store import Registry
    from photolabel.artifact import read_model_dir
    from photolabel.config import TrainConfig
    from photolabel.fetch import FetchOptions

    data_dir, cache_dir, old_model, images = map(Path, sys.argv[1:5])
    models = data_dir / "models"
    models.mkdir(parents=True)
    pages = sum(math.ceil(p.stat().st_size / 4096) + 1 for p in old_model.rglob("*"))
    size = (pages + 4) * 4096  # the old model and a few pages: a second model cannot fit
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(models)], check=True)
    target = model_dir_for(data_dir, "full")
    shutil.copytree(old_model, target)
    registry = Registry(data_dir / "photolabel.sqlite3")
    spec = TrainSpec(data=str(images), config=TrainConfig(seed=99).to_dict())
    registry.create_job("full", "train", spec.to_dict())
    runner = JobRunner(registry, data_dir=data_dir, cache_dir=cache_dir, fetch_options=FetchOptions())
    runner.start()
    job = runner.wait("full", timeout=600)
    runner.stop(timeout=10)
    print(json.dumps({"status": job.status, "error_code": job.error_code, "error": job.error,
                      "model_id": read_model_dir(target).card.model_id,
                      "models": sorted(p.name for p in models.iterdir())}))
""")


def test_a_job_whose_model_does_not_fit_fails_and_keeps_the_old_model(tmp_path: Path, cache_dir: Path,
                                                                      trained_model: Path,
                                                                      small_data: Path) -> None:
    if not _namespaces_work():
        pytest.skip("unprivileged user and mount namespaces (unshare -rm) are not available here")
    old_id = read_model_dir(trained_model).card.model_id
    data_dir = tmp_path / "data"
    script = tmp_path / "job.py"
    script.write_text(JOB_SCRIPT)
    finished = subprocess.run(["unshare", "-rm", sys.executable, str(script), str(data_dir), str(cache_dir),
                               str(trained_model), str(small_data)], capture_output=True, text=True, timeout=900)
    assert finished.returncode == 0, finished.stderr[-4000:]
    result = json.loads(finished.stdout.strip().splitlines()[-1])
    assert (result["status"], result["error_code"]) == ("error", "insufficient_storage"), result
    assert "storage space" in result["error"] and str(data_dir) not in result["error"]
    assert result["model_id"] == old_id  # the model it would have replaced loads, unchanged
    assert result["models"] == ["full"]  # no staging folder left beside it
    # the child's temporary folder (DATA_DIR/tmp/job-<pid>-...) is gone too
    assert [p.name for p in (data_dir / "tmp").iterdir()] == []


def test_the_runner_sweeps_what_killed_training_children_left_at_start(tmp_path: Path, cache_dir: Path) -> None:
    from photolabel.adapters.http.jobs import JobRunner
    from photolabel.adapters.http.store import Registry
    from photolabel.fetch import FetchOptions
    from photolabel.fsutil import process_tag

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = process_tag().rsplit("-", 1)[0]
    data_dir = tmp_path / "data"
    stale = data_dir / "tmp" / f"job-{host}-{dead.pid}-abc123" / "photolabel-xyz"
    stale.mkdir(parents=True)
    (stale / "image.jpg").write_bytes(b"extracted")
    live = data_dir / "tmp" / f"job-{process_tag()}-def456"  # a child that still runs: left alone
    live.mkdir()
    staging = data_dir / "models" / f".job1.tmp-{host}-{dead.pid}-0badcafe"
    (staging / "head").mkdir(parents=True)
    (data_dir / "models" / "job1").mkdir()
    registry = Registry(data_dir / "photolabel.sqlite3")
    runner = JobRunner(registry, data_dir=data_dir, cache_dir=cache_dir, fetch_options=FetchOptions())
    try:
        runner.start()
    finally:
        runner.stop(timeout=5)
        registry.close()
    assert sorted(p.name for p in (data_dir / "tmp").iterdir()) == [live.name]
    assert sorted(p.name for p in (data_dir / "models").iterdir()) == ["job1"]
