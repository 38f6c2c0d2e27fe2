"""A CSV manifest is checked when it arrives (POST /v1/train's upload, the CSV POST /train fetches): empty,
header only or malformed is a 400, over MAX_CSV_ROWS or MAX_CSV_FIELD_BYTES a 413, the line named, and no job
is made. The archive limits travel with a job to the process that extracts its archive."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from test_api import FileServer, assert_alive, assert_error, make_settings, running, tar_gz, train_request, wait_for_job

from photolabel.adapters.http.job_kinds import TrainSpec
from photolabel.adapters.http.routes.training import data_limits
from photolabel.limits import ArchiveLimits, CsvLimits

ROWS = "".join(f"https://example.com/img/{i}.jpg,{'cat' if i % 2 else 'dog'}\n" for i in range(4))


@pytest.fixture
def client(tmp_path: Path, cache_dir: Path) -> Iterator[TestClient]:
    with running(make_settings(tmp_path, cache_dir, max_csv_rows=3, max_csv_field_bytes=100)) as client:
        yield client


def upload(client: TestClient, body: bytes, name: str = "urls.csv"):  # type: ignore[no-untyped-def]
    return client.post("/v1/train", files={"data": (name, body, "text/csv")})


def assert_nothing_kept(client: TestClient, tmp_path: Path) -> None:
    assert client.get("/v1/jobs").json() == {"jobs": []}
    uploads = tmp_path / "data" / "uploads"
    assert not uploads.exists() or not [p for p in uploads.iterdir() if p.suffix == ".csv"]
    assert_alive(client)


@pytest.mark.parametrize(("body", "status", "code", "message"), [
    (b"", 400, "bad_csv", "data: urls.csv is empty; expected lines of image_url,label[,sha1]"),
    (b"image_url,label\n", 400, "bad_csv",
     "urls.csv: no rows after the header on line 1; expected lines of image,label[,sha1]"),
    (b"\n\n", 400, "bad_csv", "urls.csv: no rows; expected lines of image,label[,sha1]"),
    (b"image_url,label\nhttps://example.com/a.jpg\n", 400, "bad_csv",
     "urls.csv line 2: expected image,label[,sha1], got 'https://example.com/a.jpg'"),
    (b"cat/0.jpg,cat\n", 400, "bad_csv", "urls.csv line 1: cat/0.jpg: this manifest may only list http(s) URLs"),
    (b"https://example.com/a.jpg,cat\nhttps://example.com/\xff.jpg,dog\n", 400, "bad_csv",
     "urls.csv line 2: not UTF-8 text"),
    (("image_url,label\n" + ROWS).encode(), 413, "csv_over_limit",
     "urls.csv line 5: more rows than the limit of 3; split the manifest"),
    (("https://example.com/a.jpg,cat\nhttps://example.com/" + "b" * 90 + ".jpg,dog\n").encode(), 413,
     "csv_over_limit", "urls.csv line 2: the image cell holds 114 bytes, over the limit of 100"),
], ids=["empty", "header-only", "blank", "short-row", "path-row", "not-utf8", "rows", "cell"])
def test_v1_train_checks_an_uploaded_csv_at_submission(client: TestClient, tmp_path: Path, body: bytes, status: int,
                                                        code: str, message: str) -> None:
    answer = assert_error(upload(client, body), status, code)
    assert answer.startswith(message), answer
    assert_nothing_kept(client, tmp_path)


def test_v1_train_takes_a_csv_within_the_limits(client: TestClient, tmp_path: Path) -> None:
    started = upload(client, ("image_url,label\n" + "".join(ROWS.splitlines(keepends=True)[:3])).encode())
    assert started.status_code == 202, started.text
    job = client.get(f"/v1/jobs/{started.json()['job_id']}").json()
    assert job["kind"] == "train"


def test_seed_train_checks_the_fetched_csv(tmp_path: Path, cache_dir: Path) -> None:
    server = FileServer({})
    settings = make_settings(tmp_path, cache_dir, allow_private_urls=True, max_csv_rows=3)
    with server.serving() as base, running(settings) as client:
        too_many = "".join(f"{base}/img/{i}.jpg,{'cat' if i % 2 else 'dog'}\n" for i in range(4)).encode()
        header_only = b"image_url,label,sha1\n"
        for name, body, status, code, words in [
            ("/many.csv", too_many, 413, "csv_over_limit", "line 4: more rows than the limit of 3"),
            ("/header.csv", header_only, 400, "bad_csv", "no rows after the header on line 1"),
        ]:
            server.files[name] = body
            request = train_request(f"{base}{name}", hashlib.sha1(body).hexdigest())
            message = assert_error(client.post("/train", json=request), status, code)
            assert message.startswith(f"{base}{name}") and words in message, message
        assert client.get("/v1/jobs").json() == {"jobs": []}
        assert not list((tmp_path / "data" / "uploads").glob("*.csv"))
        fine = too_many.split(b"\n", 1)[1]
        server.files["/fine.csv"] = fine
        answer = client.post("/train", json=train_request(f"{base}/fine.csv", hashlib.sha1(fine).hexdigest()))
        assert answer.status_code == 200 and answer.json()["status"] == "new", answer.text


def test_the_limits_travel_with_the_job(tmp_path: Path, cache_dir: Path) -> None:
    settings = make_settings(tmp_path, cache_dir, max_archive_bytes=10_000, max_archive_members=7,
                             max_archive_ratio=5, archive_deadline_s=9, max_csv_rows=11, max_csv_field_bytes=300)
    spec = TrainSpec.from_dict(TrainSpec(data="x.csv", data_limits=data_limits(settings)).to_dict())
    archive, csv = spec.limits()
    assert archive == ArchiveLimits(max_total_bytes=10_000, max_members=7, max_ratio=5, deadline_s=9)
    assert csv == CsvLimits(max_rows=11, max_field_bytes=300)
    assert TrainSpec(data="x.csv").limits() == (ArchiveLimits(), CsvLimits())  # a job queued before limits


def test_a_job_extracts_its_archive_with_the_services_limits(tmp_path: Path, cache_dir: Path,
                                                             small_data: Path) -> None:
    settings = make_settings(tmp_path, cache_dir, max_archive_members=5)
    with running(settings) as client:
        started = client.post("/v1/train", files={"data": ("fashion.tar.gz", tar_gz(small_data), "application/gzip")})
        assert started.status_code == 202, started.text
        job = wait_for_job(client, started.json()["job_id"])
    assert job["status"] == "error", job
    assert job["error"]["code"] == "archive_too_large"
    assert "more than 5 members; refused" in job["error"]["message"]
