"""The ``Idempotency-Key`` header of the requests that create jobs (POST /v1/train, POST /train): the same key with
the same request finds the job it made; with another request it is a 422 ``idempotency_key_reused``."""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from test_api import FileServer, assert_alive, assert_error, make_settings, running, train_request

from photolabel.adapters.http.store import IdempotencyKey, IdempotencyKeyReused, Registry

CSV = b"image_url,label\nhttps://example.com/a.jpg,cat\nhttps://example.com/b.jpg,dog\n"
OTHER_CSV = CSV + b"https://example.com/c.jpg,dog\n"


@pytest.fixture
def client(tmp_path: Path, cache_dir: Path) -> Iterator[TestClient]:
    with running(make_settings(tmp_path, cache_dir)) as client:
        yield client


def train(client: TestClient, key: str | None, body: bytes = CSV, **form: str) -> httpx.Response:
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post("/v1/train", files={"data": ("urls.csv", body, "text/csv")}, data=form, headers=headers)


def jobs(client: TestClient) -> list[dict[str, Any]]:
    return client.get("/v1/jobs").json()["jobs"]


def test_same_key_and_same_request_give_the_same_job(client: TestClient) -> None:
    first = train(client, "order-1", seed="7")
    assert first.status_code == 202, first.text
    again = train(client, "order-1", seed="7")
    assert again.status_code == 200, again.text
    assert again.json()["job_id"] == first.json()["job_id"]
    # the key's quoted form (a structured-field string, as the draft writes it) is the same key
    quoted = train(client, '"order-1"', seed="7")
    assert quoted.status_code == 200 and quoted.json()["job_id"] == first.json()["job_id"]
    assert len(jobs(client)) == 1


@pytest.mark.parametrize(("body", "form"), [(CSV, {"seed": "8"}), (OTHER_CSV, {"seed": "7"}),
                                            (CSV, {"seed": "7", "skip_bad": "true"})],
                         ids=["other-field", "other-upload", "extra-field"])
def test_same_key_with_another_request_is_refused(client: TestClient, body: bytes, form: dict[str, str]) -> None:
    first = train(client, "order-2", seed="7").json()["job_id"]
    message = assert_error(train(client, "order-2", body, **form), 422, "idempotency_key_reused")
    assert "'order-2'" in message and first in message and "POST /v1/train" in message
    assert [job["job_id"] for job in jobs(client)] == [first]
    # the same request under a new key is a new job
    fresh = train(client, "order-3", body, **form)
    assert fresh.status_code == 202, fresh.text
    assert len(jobs(client)) == 2
    assert_alive(client)


def test_without_a_key_identical_requests_still_share_a_job(client: TestClient) -> None:
    first = train(client, None)
    second = train(client, None)
    assert (first.status_code, second.status_code) == (202, 200)
    assert first.json()["job_id"] == second.json()["job_id"]
    # a key sent later with the same request binds to that job
    keyed = train(client, "late-key")
    assert keyed.status_code == 200 and keyed.json()["job_id"] == first.json()["job_id"]
    assert_error(train(client, "late-key", seed="99"), 422, "idempotency_key_reused")


@pytest.mark.parametrize("key", ["", '""', "k" * 256, "tab\tinside"], ids=["empty", "empty-quoted", "long", "tab"])
def test_malformed_keys_are_refused(client: TestClient, key: str) -> None:
    message = assert_error(train(client, key), 400, "bad_idempotency_key")
    assert "Idempotency-Key: expected 1 to 255 printable ASCII characters" in message
    assert jobs(client) == []


def test_concurrent_requests_with_one_key_make_one_job(client: TestClient) -> None:
    barrier = threading.Barrier(6)

    def post(_: int) -> httpx.Response:
        barrier.wait()
        return train(client, "race", seed="5")

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(post, range(6)))
    assert sorted(answer.status_code for answer in answers) == [200] * 5 + [202]
    assert len({answer.json()["job_id"] for answer in answers}) == 1
    assert len(jobs(client)) == 1


def test_seed_train_takes_the_key_too(tmp_path: Path, cache_dir: Path) -> None:
    server = FileServer({})
    with server.serving() as base, running(make_settings(tmp_path, cache_dir, allow_private_urls=True)) as client:
        csv = f"{base}/img/a.jpg,cat\n{base}/img/b.jpg,dog\n".encode()
        server.files["/t.csv"] = csv
        request = train_request(f"{base}/t.csv", hashlib.sha1(csv).hexdigest())
        first = client.post("/train", json=request, headers={"Idempotency-Key": "seed-1"})
        assert first.status_code == 200 and first.json()["status"] == "new", first.text
        again = client.post("/train", json=request, headers={"Idempotency-Key": "seed-1"})
        assert again.json()["model_sha1"] == first.json()["model_sha1"]
        assert server.hits["/t.csv"] == 1
        other = train_request(f"{base}/t.csv", hashlib.sha1(csv).hexdigest(), seed=99)
        message = assert_error(client.post("/train", json=other, headers={"Idempotency-Key": "seed-1"}), 422,
                               "idempotency_key_reused")
        assert "POST /train" in message
        # keys are per route: the same key on POST /v1/train is another key
        assert train(client, "seed-1").status_code == 202
        assert len(jobs(client)) == 2


OLD_SCHEMA = """
CREATE TABLE jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL UNIQUE, kind TEXT NOT NULL, status TEXT NOT NULL,
    stage TEXT NOT NULL, progress REAL NOT NULL, error_code TEXT, error TEXT, spec TEXT NOT NULL, model_id TEXT,
    attempts INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
CREATE INDEX jobs_by_status ON jobs (status, seq);
CREATE TABLE models (
    model_id TEXT PRIMARY KEY, job_id TEXT, path TEXT NOT NULL, labels TEXT NOT NULL, backbone TEXT NOT NULL,
    head TEXT NOT NULL, uri TEXT, created_at TEXT NOT NULL
);
INSERT INTO jobs (job_id, kind, status, stage, progress, spec, attempts, created_at, updated_at)
VALUES ('old-job', 'train', 'ready', 'done', 1.0, '{"data": "x.csv"}', 1, '2024-01-01T00:00:00Z',
        '2024-01-01T00:00:00Z');
"""


def test_a_database_from_before_idempotency_keys_gains_them(tmp_path: Path) -> None:
    db = tmp_path / "photolabel.sqlite3"
    with sqlite3.connect(db) as conn:
        conn.executescript(OLD_SCHEMA)
    registry = Registry(db)
    old = registry.get_job("old-job")
    assert old is not None and old.status == "ready"
    key = IdempotencyKey(scope="POST /v1/train", key="k", fingerprint="f" * 64)
    job, created = registry.create_job("new-job", "train", {"data": "y.csv"}, idempotency=key)
    assert created and job.job_id == "new-job"
    assert registry.create_job("other-id", "train", {}, idempotency=key) == (job, False)
    with pytest.raises(IdempotencyKeyReused) as caught:
        registry.create_job("new-job", "train", {}, idempotency=IdempotencyKey("POST /v1/train", "k", "0" * 64))
    assert caught.value.job_id == "new-job"
    assert [j.job_id for j in registry.list_jobs()] == ["new-job", "old-job"]
    registry.close()
    assert Registry(db).find_idempotent_job(key) == job  # kept across opens
