"""Models in and out of the service: ``POST /v1/models`` (an archive of a model directory, checked by its hashes),
``GET /v1/models/{key}/archive`` (a deterministic .tar.gz), ``photolabel serve --models DIR``, and one folder per
model under ``DATA_DIR/models``, named by its model id however the model arrived."""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import httpx
import pytest
from support import closed_port, wait_until_live
from test_api import (
    assert_error,
    image_files,
    make_settings,
    register_model,
    running,
    tar_gz,
    wait_for_job,
)

import photolabel
from photolabel.artifact import read_model_dir

MiB = 1024 * 1024


def model_tar_gz(model_dir: Path, top: str | None = "model") -> bytes:
    """A .tar.gz of a model directory, as a user makes it with tar: under ``top``, or at the archive's root."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path in sorted(model_dir.rglob("*")):
            relative = path.relative_to(model_dir).as_posix()
            archive.add(path, arcname=f"{top}/{relative}" if top else relative, recursive=False)
    return buffer.getvalue()


def model_zip(model_dir: Path) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(model_dir.rglob("*")):
            if path.is_file():
                archive.write(path, path.relative_to(model_dir).as_posix())
    return buffer.getvalue()


def tamper(folder: Path) -> Path:
    """Change one byte of the model's head file in place (model.json still lists the old hash)."""
    card = read_model_dir(folder).card
    victim = folder / min(name for name in card.files if name.startswith("head"))
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    return folder


def tampered_copy(model_dir: Path, dest: Path) -> Path:
    """A copy of the model whose head file has one byte changed."""
    shutil.copytree(model_dir, dest)
    return tamper(dest)


def published(data_dir: Path) -> list[str]:
    """The model folders under DATA_DIR/models (staging folders are hidden)."""
    models = data_dir / "models"
    return sorted(p.name for p in models.iterdir() if not p.name.startswith(".")) if models.is_dir() else []


def upload(client, body: bytes, name: str = "model.tar.gz") -> httpx.Response:
    return client.post("/v1/models", files={"archive": (name, body, "application/gzip")})


def test_import_a_cli_model_then_it_is_already_there(tmp_path: Path, cache_dir: Path, trained_model: Path,
                                                     small_data: Path) -> None:
    model_id = read_model_dir(trained_model).card.model_id
    settings = make_settings(tmp_path, cache_dir)
    with running(settings) as client:
        first = upload(client, model_tar_gz(trained_model))
        assert first.status_code == 201, first.text
        body = first.json()
        assert body["model_id"] == model_id and body["job_id"] is None
        assert body["labels"] == ["blouse", "halter", "sweater"]
        # one folder, named by the model id; nothing left of the upload or its extraction
        assert published(settings.data_dir) == [model_id]
        assert [p.name for p in (settings.data_dir / "models").iterdir()] == [model_id]
        assert read_model_dir(settings.data_dir / "models" / model_id).card.model_id == model_id

        for again in (model_tar_gz(trained_model, top=None), model_zip(trained_model)):  # files at the top, a zip
            name = "m.zip" if again[:2] == b"PK" else "m.tgz"
            answer = upload(client, again, name)
            assert answer.status_code == 200, answer.text
            assert answer.json()["model_id"] == model_id
        assert [m["model_id"] for m in client.get("/v1/models").json()["models"]] == [model_id]

        image = image_files(small_data, "halter")[0].read_bytes()
        predicted = client.post(f"/v1/models/{model_id}/predict", content=image, headers={"Content-Type": "image/jpeg"})
        assert predicted.status_code == 200 and predicted.json()["predictions"][0]["label"] == "halter"


def test_an_old_row_keeps_its_folder_when_the_model_is_imported_again(tmp_path: Path, cache_dir: Path,
                                                                      trained_model: Path) -> None:
    settings = make_settings(tmp_path, cache_dir)
    model_id = register_model(settings.data_dir, trained_model)  # as an older version named it
    with running(settings) as client:
        answer = upload(client, model_tar_gz(trained_model))
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_id"] == model_id
        assert published(settings.data_dir) == [f"registered-{model_id[:12]}"]


def test_a_tampered_archive_is_refused_and_nothing_is_kept(tmp_path: Path, cache_dir: Path,
                                                           trained_model: Path) -> None:
    bad = tampered_copy(trained_model, tmp_path / "tampered")
    settings = make_settings(tmp_path, cache_dir)
    with running(settings) as client:
        message = assert_error(upload(client, model_tar_gz(bad)), 409, "model_corrupt")
        assert "sha256" in message and str(settings.data_dir) not in message
        assert client.get("/v1/models").json()["models"] == []
    assert list((settings.data_dir / "models").iterdir()) == []


def test_archives_that_hold_no_model_are_refused_with_their_own_codes(tmp_path: Path, cache_dir: Path,
                                                                      small_data: Path, trained_model: Path) -> None:
    settings = make_settings(tmp_path, cache_dir)
    with running(settings) as client:
        assert_error(upload(client, tar_gz(small_data)), 422, "not_a_model")  # a data set, not a model
        assert_error(upload(client, b"not an archive at all"), 422, "bad_data")
        assert_error(upload(client, model_tar_gz(trained_model), "model.exe"), 422, "bad_upload")
        assert_error(upload(client, b"", "model.tar.gz"), 422, "bad_upload")
        assert client.get("/v1/models").json()["models"] == []
    assert list((settings.data_dir / "models").iterdir()) == []


def test_import_keeps_to_the_archive_limits(tmp_path: Path, cache_dir: Path, trained_model: Path) -> None:
    settings = make_settings(tmp_path, cache_dir, max_archive_bytes=4096)
    with running(settings) as client:  # the model's files together are more than 4096 bytes
        assert_error(upload(client, model_tar_gz(trained_model)), 413, "archive_too_large")

    bomb = io.BytesIO()
    with tarfile.open(fileobj=bomb, mode="w:gz") as archive:
        info = tarfile.TarInfo("model/zeros.bin")
        info.size = 64 * MiB
        archive.addfile(info, io.BytesIO(bytes(info.size)))
    assert len(bomb.getvalue()) < MiB  # over 100 bytes out per byte in
    with running(make_settings(tmp_path / "bomb", cache_dir)) as client:
        assert_error(upload(client, bomb.getvalue()), 413, "archive_too_large")
    assert list((tmp_path / "bomb" / "data" / "models").iterdir()) == []


def test_export_is_deterministic_and_round_trips(tmp_path: Path, cache_dir: Path, trained_model: Path,
                                                 small_data: Path) -> None:
    images = [("images", (p.name, p.read_bytes(), "image/jpeg"))
              for label in ("blouse", "halter", "sweater") for p in image_files(small_data, label)[:2]]
    settings = make_settings(tmp_path / "a", cache_dir)
    model_id = register_model(settings.data_dir, trained_model)
    with running(settings) as client:
        first = client.get(f"/v1/models/{model_id[:12]}/archive")
        assert first.status_code == 200, first.text
        assert first.headers["content-type"] == "application/gzip"
        assert f"photolabel-model-{model_id[:12]}.tar.gz" in first.headers["content-disposition"]
        second = client.get(f"/v1/models/{model_id}/archive")
        assert second.content == first.content  # the same bytes every time
        expected = client.post(f"/v1/models/{model_id}/predict", files=images).json()["predictions"]
        assert_error(client.get(f"/v1/models/{'0' * 64}/archive"), 404, "not_found")
    exported = first.content

    assert exported[4:8] == b"\0\0\0\0"  # the gzip header's mtime
    with tarfile.open(fileobj=io.BytesIO(exported), mode="r:gz") as archive:
        members = archive.getmembers()
        assert [m.name for m in members] == sorted(m.name for m in members)
        assert members[0].name == model_id and members[0].isdir()
        assert all(m.name.startswith(f"{model_id}") for m in members)
        assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}
        files = {m.name.split("/", 1)[1] for m in members if m.isfile()}
        assert set(read_model_dir(trained_model).card.files) | {"model.json"} <= files
        archive.extractall(tmp_path / "extracted", filter="data")
    assert photolabel.load_model(tmp_path / "extracted" / model_id).model_id == model_id  # the CLI loads it

    fresh = make_settings(tmp_path / "b", cache_dir)
    with running(fresh) as client:
        imported = upload(client, exported, "exported.tar.gz")
        assert imported.status_code == 201, imported.text
        assert imported.json()["model_id"] == model_id
        assert published(fresh.data_dir) == [model_id]
        again = client.post(f"/v1/models/{model_id}/predict", files=images).json()["predictions"]
        assert client.get(f"/v1/models/{model_id}/archive").content == exported  # and out again, unchanged
    assert [p["label"] for p in again] == [p["label"] for p in expected]
    for got, want in zip(again, expected, strict=True):
        assert got["scores"] == pytest.approx(want["scores"], abs=1e-9)


def test_export_refuses_a_tampered_model(tmp_path: Path, cache_dir: Path, trained_model: Path) -> None:
    settings = make_settings(tmp_path, cache_dir)
    model_id = register_model(settings.data_dir, trained_model)
    tamper(settings.data_dir / "models" / f"registered-{model_id[:12]}")
    with running(settings) as client:
        assert_error(client.get(f"/v1/models/{model_id}/archive"), 409, "model_corrupt")


def test_import_needs_the_token_when_one_is_set(tmp_path: Path, cache_dir: Path, trained_model: Path) -> None:
    settings = make_settings(tmp_path, cache_dir, api_token="s3cret-token-for-tests")
    with running(settings) as client:
        assert upload(client, model_tar_gz(trained_model)).status_code == 401
        answer = client.post("/v1/models", files={"archive": ("m.tar.gz", model_tar_gz(trained_model))},
                             headers={"Authorization": "Bearer s3cret-token-for-tests"})
        assert answer.status_code == 201, answer.text


def test_serve_models_registers_cli_models_and_skips_bad_ones(tmp_path: Path, cache_dir: Path, trained_model: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    from fastapi.testclient import TestClient

    from photolabel.adapters.http.app import create_app

    model_id = read_model_dir(trained_model).card.model_id
    folder = tmp_path / "cli-models"
    shutil.copytree(trained_model, folder / "good")
    tampered_copy(trained_model, folder / "tampered")
    (folder / "notes").mkdir()
    (folder / "notes" / "readme.txt").write_text("not a model")
    settings = make_settings(tmp_path, cache_dir)
    with caplog.at_level(logging.WARNING, logger="photolabel.http"), \
            TestClient(create_app(settings, import_models=folder)) as client:
        assert [m["model_id"] for m in client.get("/v1/models").json()["models"]] == [model_id]
    assert published(settings.data_dir) == [model_id]
    skipped = "\n".join(record.getMessage() for record in caplog.records)
    assert "tampered" in skipped and "notes" in skipped

    # DIR itself a model directory, given again: already there, nothing copied twice
    with TestClient(create_app(settings, import_models=trained_model)) as client:
        assert [m["model_id"] for m in client.get("/v1/models").json()["models"]] == [model_id]
    assert published(settings.data_dir) == [model_id]


def test_photolabel_serve_models_in_a_real_process(tmp_path: Path, cache_dir: Path, trained_model: Path,
                                                   small_data: Path) -> None:
    model_id = read_model_dir(trained_model).card.model_id
    data_dir = tmp_path / "data"
    port = closed_port()
    executable = shutil.which("photolabel", path=str(Path(sys.executable).parent)) or "photolabel"
    env = {**os.environ, "DATA_DIR": str(data_dir), "PHOTOLABEL_CACHE_DIR": str(cache_dir),
           "API_HOST": "127.0.0.1"}
    env.pop("API_TOKEN", None)
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        server = subprocess.Popen([executable, "serve", "--port", str(port), "--models", str(trained_model)],
                                  env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until_live(server, base, log_path, 30)
            listed = httpx.get(f"{base}/v1/models", timeout=10).json()["models"]
            assert [m["model_id"] for m in listed] == [model_id]
            image = image_files(small_data, "sweater")[3].read_bytes()
            answer = httpx.post(f"{base}/v1/models/{model_id}/predict", content=image,
                                headers={"Content-Type": "image/jpeg"}, timeout=30)
            assert answer.status_code == 200 and answer.json()["predictions"][0]["label"] == "sweater"
        finally:
            server.send_signal(signal.SIGINT)
            try:
                server.wait(15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    assert published(data_dir) == [model_id]


def test_a_trained_model_gets_a_folder_named_by_its_id(tmp_path: Path, cache_dir: Path, small_data: Path) -> None:
    settings = make_settings(tmp_path, cache_dir)
    with running(settings) as client:
        started = client.post("/v1/train", files={"data": ("d.tar.gz", tar_gz(small_data), "application/gzip")},
                              data={"seed": "3"})
        assert started.status_code == 202, started.text
        job = wait_for_job(client, started.json()["job_id"])
        assert job["status"] == "ready", job
        model_id = job["model_id"]
        assert published(settings.data_dir) == [model_id]
        assert [p.name for p in (settings.data_dir / "models").iterdir()] == [model_id]  # no staging left
        exported = client.get(f"/v1/models/{model_id}/archive").content
        again = upload(client, exported)  # the same model, however it arrives: one row, one folder
        assert again.status_code == 200 and again.json()["job_id"] == started.json()["job_id"]
        assert published(settings.data_dir) == [model_id]
        assert hashlib.sha256(exported).hexdigest() == hashlib.sha256(
            client.get(f"/v1/models/{job['job_id']}/archive").content).hexdigest()
    assert gzip.decompress(exported)  # a valid gzip stream


def test_staging_folders_of_dead_processes_are_swept_at_start(tmp_path: Path) -> None:
    from photolabel.adapters.http.jobs import sweep_stale_files
    from photolabel.fsutil import process_tag

    host = process_tag().rsplit("-", 1)[0]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    models = tmp_path / "data" / "models"
    left = models / f".job-{host}-{dead.pid}-import-abc"  # an import whose server was killed
    mine = models / f".job-{process_tag()}-0123abcd"  # a job of this (live) process, still training
    for folder in (left, mine):
        (folder / "model").mkdir(parents=True)
    swept = sweep_stale_files(tmp_path / "data")
    assert left in swept and not left.exists()
    assert mine.is_dir()
