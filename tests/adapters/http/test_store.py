"""The service's SQLite registry: idempotent job creation, claiming, recovery, model lookup."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from photolabel.adapters.http.store import Job, ModelRecord, Registry, utc_now

SPEC = {"data": "/data/uploads/x.csv", "seed": 1234}


@pytest.fixture
def registry(tmp_path: Path) -> Registry:
    return Registry(tmp_path / "state" / "photolabel.sqlite3")


def _model(model_id: str, job_id: str | None = None) -> ModelRecord:
    return ModelRecord(model_id=model_id, job_id=job_id, path=f"/data/models/{job_id or model_id}",
                       labels=["blouse", "halter"], backbone="efficientnet-lite0", head="logistic",
                       uri="gs://test/1", created_at=utc_now())


def test_database_is_a_wal_file_created_with_its_folder(registry: Registry) -> None:
    assert registry.db_path.is_file()
    with sqlite3.connect(registry.db_path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert registry.ping() is True


def test_create_job_twice_makes_one_row(registry: Registry) -> None:
    job, created = registry.create_job("a" * 40, "train", SPEC)
    assert created is True
    assert (job.status, job.stage, job.progress, job.attempts, job.spec) == ("queued", "queued", 0.0, 0, SPEC)
    assert job.created_at.endswith("Z") and "T" in job.created_at
    again, created_again = registry.create_job("a" * 40, "train", {"data": "other"})
    assert created_again is False
    assert again == job  # the first spec stays
    assert [j.job_id for j in registry.list_jobs()] == ["a" * 40]


def test_concurrent_create_job_creates_exactly_one(registry: Registry) -> None:
    barrier = threading.Barrier(8)
    results: list[bool] = []
    errors: list[BaseException] = []

    def create() -> None:
        try:
            barrier.wait()
            results.append(registry.create_job("same", "train", SPEC)[1])
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(results) == [False] * 7 + [True]
    assert len(registry.list_jobs()) == 1


def test_a_second_registry_on_the_same_file_sees_the_same_jobs(registry: Registry) -> None:
    registry.create_job("j1", "train", SPEC)
    other = Registry(registry.db_path)
    assert other.create_job("j1", "train", SPEC)[1] is False
    other.update_job("j1", stage="embedding", progress=0.5)
    job = registry.get_job("j1")
    assert job is not None and (job.stage, job.progress) == ("embedding", 0.5)


def test_claim_next_job_takes_the_oldest_and_counts_attempts(registry: Registry) -> None:
    for job_id in ("first", "second", "third"):
        registry.create_job(job_id, "train", SPEC)
    claimed = registry.claim_next_job()
    assert claimed is not None
    assert (claimed.job_id, claimed.status, claimed.attempts) == ("first", "in_progress", 1)
    second = registry.claim_next_job()
    assert second is not None and second.job_id == "second"
    registry.update_job("first", status="ready", stage="done", progress=1.0)
    third = registry.claim_next_job()
    assert third is not None and third.job_id == "third"
    assert registry.claim_next_job() is None
    assert [j.job_id for j in registry.list_jobs()] == ["third", "second", "first"]  # newest first
    assert [j.job_id for j in registry.list_jobs(limit=1)] == ["third"]


def test_concurrent_claims_never_hand_out_a_job_twice(registry: Registry) -> None:
    for n in range(20):
        registry.create_job(f"job{n:02d}", "train", SPEC)
    claimed: list[str] = []
    lock = threading.Lock()

    def claim_all() -> None:
        while (job := registry.claim_next_job()) is not None:
            with lock:
                claimed.append(job.job_id)

    threads = [threading.Thread(target=claim_all) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(claimed) == [f"job{n:02d}" for n in range(20)]


def test_update_job_checks_its_fields_and_flattens_errors(registry: Registry) -> None:
    registry.create_job("j", "train", SPEC)
    with pytest.raises(ValueError, match="spec"):
        registry.update_job("j", spec={})
    with pytest.raises(ValueError, match="status"):
        registry.update_job("j", status="done")
    with pytest.raises(KeyError):
        registry.update_job("missing", stage="x")
    assert registry.update_job("j", expect_status="in_progress", stage="x") is False
    registry.update_job("j", status="error", error_code="bad_image", error="a.jpg:\n  truncated")
    job = registry.get_job("j")
    assert job is not None
    assert job.to_dict()["error"] == {"code": "bad_image", "message": "a.jpg: truncated"}
    assert job.to_dict()["model_sha1"] == "j" and "spec" not in job.to_dict()


def test_recover_interrupted_requeues_then_gives_up(registry: Registry) -> None:
    registry.create_job("j", "train", SPEC)
    registry.create_job("done", "train", SPEC)
    for attempt in (1, 2):
        claimed = registry.claim_next_job()
        assert claimed is not None and claimed.job_id == "j" and claimed.attempts == attempt
        recovered = registry.recover_interrupted(max_attempts=3)
        assert [(j.job_id, j.status, j.stage) for j in recovered] == [("j", "queued", "resumed after restart")]
    assert registry.claim_next_job().attempts == 3  # type: ignore[union-attr]
    (failed,) = registry.recover_interrupted(max_attempts=3)
    assert (failed.status, failed.error_code) == ("error", "interrupted")
    assert failed.error is not None and "interrupted 3 times" in failed.error
    assert registry.recover_interrupted() == []
    untouched = registry.get_job("done")
    assert untouched is not None and untouched.status == "queued"


def test_retry_job_requeues_an_error_with_attempts_reset(registry: Registry) -> None:
    registry.create_job("j", "train", SPEC)
    registry.claim_next_job()
    registry.update_job("j", status="error", error_code="fetch_failed", error="cannot fetch")
    job = registry.retry_job("j")
    assert (job.status, job.attempts, job.error_code, job.error) == ("queued", 0, None, None)
    assert registry.retry_job("j").status == "queued"  # not in error: unchanged
    with pytest.raises(KeyError):
        registry.retry_job("missing")


def test_get_model_by_id_job_id_and_unique_prefix(registry: Registry) -> None:
    model_a = "ab12cd34" + "0" * 56
    model_b = "ab12cd35" + "1" * 56
    job_a = "fe" * 20
    registry.create_job(job_a, "train", SPEC)
    record_a = _model(model_a, job_a)
    registry.add_model(record_a)
    registry.add_model(_model(model_b))
    assert registry.get_model(model_a) == record_a
    # a job id names its model only once the job is ready
    assert registry.get_model(job_a) is None
    registry.update_job(job_a, status="ready", model_id=model_a)
    found = registry.get_model(job_a)
    assert found is not None and found.model_id == model_a and found.labels == ["blouse", "halter"]
    assert registry.get_model("ab12cd34") is not None and registry.get_model("ab12cd34").model_id == model_a  # type: ignore[union-attr]
    assert registry.get_model("AB12CD35").model_id == model_b  # type: ignore[union-attr]
    assert registry.get_model("fefefefe").model_id == model_a  # type: ignore[union-attr]
    assert registry.get_model("ab12cd3") is None  # too short
    assert registry.get_model("ab12cd3_") is None  # not hex: no LIKE wildcards
    assert registry.get_model("ab12cd") is None
    assert registry.get_model("ab12cd3%") is None


def test_ambiguous_prefix_names_no_model(registry: Registry) -> None:
    registry.add_model(_model("12345678a" + "0" * 55))
    registry.add_model(_model("12345678b" + "0" * 55))
    assert registry.get_model("12345678") is None
    assert registry.get_model("12345678a").model_id.startswith("12345678a")  # type: ignore[union-attr]


def test_add_model_upserts_and_delete_model_forgets_it(registry: Registry) -> None:
    model_id = "9" * 64
    registry.create_job("j", "train", SPEC)
    registry.update_job("j", status="ready", model_id=model_id)
    registry.add_model(_model(model_id, "j"))
    registry.add_model(_model(model_id, "j"))
    assert [m.model_id for m in registry.list_models()] == [model_id]
    assert registry.get_model(model_id).to_dict()["uri"] == "gs://test/1"  # type: ignore[union-attr]
    assert registry.delete_model(model_id) is True
    assert registry.delete_model(model_id) is False
    assert registry.get_model(model_id) is None and registry.get_model("j") is None
    job = registry.get_job("j")
    assert job is not None and (job.status, job.error_code) == ("error", "model_deleted")
    assert registry.retry_job("j").status == "queued"


def test_jobs_are_plain_frozen_values(registry: Registry) -> None:
    job, _ = registry.create_job("j", "train", SPEC)
    assert isinstance(job, Job)
    with pytest.raises(AttributeError):
        job.status = "ready"  # type: ignore[misc]
