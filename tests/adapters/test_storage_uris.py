"""Models and data on any storage URI, through every surface, against a real S3 server (moto).

The same commands a user runs against AWS or MinIO: ``AWS_ENDPOINT_URL`` and the
standard credentials variables point them at the test server on 127.0.0.1.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from photolabel import storage
from photolabel.adapters.cli import main

EXAMPLES = Path(__file__).parents[2] / "examples" / "fashion-tiny"
LABELS = ("blouse", "halter", "sweater")


def invoke(*args: str | Path) -> Result:
    try:
        runner = CliRunner(mix_stderr=False)  # type: ignore[call-arg]  # click 8.1
    except TypeError:  # click >= 8.2 always keeps stderr apart
        runner = CliRunner()
    return runner.invoke(main, [str(arg) for arg in args])


def ok(result: Result) -> Result:
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result


def upload_folder(folder: Path, uri: str) -> None:
    for file in sorted(folder.rglob("*")):
        if file.is_file():
            storage.write_bytes(storage.join(uri, file.relative_to(folder).as_posix()), file.read_bytes())


@pytest.fixture
def bucket_data(s3_bucket: str, small_data: Path, monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> str:
    """small_data under s3://BUCKET/data/; the CLI's cache is the session's."""
    monkeypatch.setenv("PHOTOLABEL_CACHE_DIR", str(cache_dir))
    for name in ("RANDOM_SEED", "TRAIN_PERCENTAGE", "BATCH_SIZE"):
        monkeypatch.delenv(name, raising=False)
    upload_folder(small_data, f"s3://{s3_bucket}/data")
    return f"s3://{s3_bucket}/data/"


def test_train_from_a_bucket_into_a_bucket_then_predict_evaluate_and_info(
        bucket_data: str, s3_bucket: str, small_data: Path, trained_model: Path, tmp_path: Path) -> None:
    out = f"s3://{s3_bucket}/models/fashion"
    summary = json.loads(ok(invoke("train", bucket_data, "--out", out, "--json", "-q")).stdout)
    local = json.loads(ok(invoke("train", small_data, "--out", tmp_path / "local", "--json", "-q")).stdout)
    assert summary["model_id"] == local["model_id"]  # where the bytes live never changes the model
    assert summary["model_dir"] == out
    stored = sorted(name for name, _ in storage.list_tree(out))
    assert stored == sorted(p.relative_to(tmp_path / "local").as_posix()
                            for p in (tmp_path / "local").rglob("*") if p.is_file())
    for name in ("model.json", "lineage.json", "metrics.json", "head/coef.npy"):
        assert storage.read_bytes(storage.join(out, name)) == (tmp_path / "local" / name).read_bytes()

    image = f"{bucket_data}sweater/{min((small_data / 'sweater').iterdir()).name}"
    lines = ok(invoke("predict", out, image, "--json", "-q")).stdout.splitlines()
    (answer,) = [json.loads(line) for line in lines]
    assert answer["image"] == image and answer["model_id"] == summary["model_id"]
    assert answer["best"] == "sweater"

    info = json.loads(ok(invoke("info", out, "--json")).stdout)
    assert info["model_id"] == summary["model_id"] and info["labels"] == list(LABELS)
    metrics = json.loads(ok(invoke("evaluate", out, bucket_data, "--json", "-q")).stdout)
    assert metrics["n"] == 60 and metrics["model_id"] == summary["model_id"]

    # a CSV of s3:// rows gives the same model as the prefix
    rows = [f"{bucket_data}{p.relative_to(small_data).as_posix()},{p.parent.name}"
            for p in sorted(small_data.rglob("*.jpg"))]
    storage.write_bytes(f"s3://{s3_bucket}/lists/train.csv", ("\n".join(rows) + "\n").encode())
    from_csv = json.loads(ok(invoke("train", f"s3://{s3_bucket}/lists/train.csv", "--out", tmp_path / "csv",
                                    "--json", "-q")).stdout)
    assert from_csv["model_id"] == summary["model_id"]


def test_a_half_uploaded_or_tampered_model_does_not_load(bucket_data: str, s3_bucket: str, trained_model: Path
                                                          ) -> None:
    half = f"s3://{s3_bucket}/models/half"
    upload_folder(trained_model, half)
    storage.write_bytes(f"{half}/head/coef.npy", b"not the trained weights")
    result = invoke("predict", half, str(EXAMPLES / "blouse" / "1042.jpg"))
    assert result.exit_code == 1 and "head/coef.npy: sha256" in result.stderr and "Traceback" not in result.output

    missing = invoke("info", f"s3://{s3_bucket}/models/never-written")
    assert missing.exit_code == 1
    expected = f"error: s3://{s3_bucket}/models/never-written: no such model (nothing stored there)"
    assert missing.stderr.strip() == expected


def test_out_refuses_a_prefix_that_holds_something_else(bucket_data: str, s3_bucket: str, small_data: Path) -> None:
    storage.write_bytes(f"s3://{s3_bucket}/reports/summary.txt", b"a user's file")
    result = invoke("train", bucket_data, "--out", f"s3://{s3_bucket}/reports", "-q")
    assert result.exit_code == 1
    assert "holds files and no photolabel model; choose another --out" in result.stderr
    assert storage.list_files(f"s3://{s3_bucket}/reports") == [f"s3://{s3_bucket}/reports/summary.txt"]


def test_missing_keys_and_denied_requests_are_one_clear_line(bucket_data: str, s3_bucket: str, s3_server,
                                                             monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    gone = invoke("train", f"s3://{s3_bucket}/nothing-here/", "--out", tmp_path / "m", "-q")
    assert gone.exit_code == 1 and f"s3://{s3_bucket}/nothing-here/" in gone.stderr
    assert len(gone.stderr.strip().splitlines()) == 1
    key, secret = s3_server.create_user(f"lister-{s3_bucket}", ["s3:ListBucket"], s3_bucket)
    with s3_server.authentication():
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        denied = invoke("train", bucket_data, "--out", tmp_path / "m", "-q")
    assert denied.exit_code == 1 and "Traceback" not in denied.output
    (line,) = denied.stderr.strip().splitlines()
    assert line.startswith("error: ") and "access denied" in line.lower() and f"s3://{s3_bucket}/data/" in line
    assert not (tmp_path / "m").exists()


def test_a_missing_backend_names_the_extra(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed here: the missing-extra message cannot be shown")
    result = invoke("train", "gs://bucket/data/", "--out", tmp_path / "m", "-q")
    assert result.exit_code == 1
    assert "pip install 'photolabel[cloud]'" in result.stderr and "gcsfs" in result.stderr


def test_the_service_loads_and_serves_a_model_by_uri(s3_bucket: str, trained_model: Path, tmp_path: Path,
                                                     cache_dir: Path) -> None:
    from fastapi.testclient import TestClient

    from photolabel.adapters.http.app import create_app
    from photolabel.adapters.http.settings import ServiceSettings
    from photolabel.adapters.http.store import ModelRecord, Registry, utc_now
    from photolabel.artifact import read_model_dir

    uri = f"s3://{s3_bucket}/models/served"
    upload_folder(trained_model, uri)
    card = read_model_dir(uri).card
    settings = ServiceSettings(data_dir=tmp_path / "data", photolabel_cache_dir=cache_dir, threads=2)
    (tmp_path / "data").mkdir()
    Registry(tmp_path / "data" / "photolabel.sqlite3").add_model(ModelRecord(
        model_id=card.model_id, job_id=None, path=uri, labels=list(card.labels), backbone=card.backbone.name,
        head=card.head.name, uri=uri, created_at=utc_now()))
    image = EXAMPLES / "halter" / "1042.jpg"
    with TestClient(create_app(settings)) as client:
        details = client.get(f"/v1/models/{card.model_id}")
        assert details.status_code == 200 and details.json()["labels"] == list(LABELS)
        answer = client.post(f"/v1/models/{card.model_id}/predict",
                             files={"images": ("h.jpg", image.read_bytes(), "image/jpeg")})
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"][0]["best"] == "halter"
        storage.write_bytes(f"s3://{s3_bucket}/photos/h.jpg", image.read_bytes())
        by_uri = client.post(f"/v1/models/{card.model_id}/predict-object", json={"uri": f"s3://{s3_bucket}/photos/h.jpg"})
        assert by_uri.status_code == 200, by_uri.text
        missing = client.post(f"/v1/models/{card.model_id}/predict-object", json={"uri": f"s3://{s3_bucket}/photos/x.jpg"})
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    shutil.rmtree(tmp_path / "data")


def test_the_worker_starts_from_and_predicts_images_in_a_bucket(bucket_data: str, s3_bucket: str, small_data: Path,
                                                                 trained_model: Path, tmp_path: Path) -> None:
    from photolabel.adapters.worker import WorkerSession, WorkerSettings

    session = WorkerSession(WorkerSettings(dataset=bucket_data, classes=(), work_dir=tmp_path / "w"))
    ready = session.start()
    assert ready["ok"] and ready["labels"] == list(LABELS)
    assert ready["model_id"] == json.loads((trained_model / "model.json").read_text())["model_id"]
    image = f"{bucket_data}halter/{min((small_data / 'halter').iterdir()).name}"
    answer = session.handle(f"predict {image}")
    assert answer is not None and answer["ok"] and answer["image"] == image
    missing = session.handle(f"predict {bucket_data}halter/none.jpg")
    assert missing is not None and missing["ok"] is False and "none.jpg" in missing["error"]["message"]
