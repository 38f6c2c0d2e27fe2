"""Training jobs in real child processes: progress, results, errors, and restarts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support import QuietHandler, serve_http

import photolabel
from photolabel.adapters.http import job_kinds
from photolabel.adapters.http.job_kinds import (
    TRAIN_KIND,
    JobContext,
    TrainSpec,
    list_job_kinds,
    model_dir_for,
    register_job_kind,
)
from photolabel.adapters.http.jobs import JobRunner, run_job
from photolabel.adapters.http.store import Job, ModelRecord, Registry, utc_now
from photolabel.config import TrainConfig
from photolabel.errors import DataError
from photolabel.fetch import FetchOptions

LABELS = ["blouse", "halter", "sweater"]
WAIT_S = 90  # generous: the machine may be busy; a healthy job takes a few seconds

# A server stand-in in its own process, so that the test can kill it like a crash would.
RUNNER_SCRIPT = """
import json, sys, time
from photolabel.adapters.http.jobs import JobRunner
from photolabel.adapters.http.store import Registry
from photolabel.fetch import FetchOptions
db, data_dir, cache_dir = sys.argv[1:4]
runner = JobRunner(Registry(db), data_dir=data_dir, cache_dir=cache_dir, fetch_options=FetchOptions())
runner.start()
while not runner.running():
    time.sleep(0.01)
print(json.dumps(runner.running()), flush=True)
time.sleep(600)
"""


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    (tmp_path / "data" / "uploads").mkdir(parents=True)
    return tmp_path / "data"


@pytest.fixture
def registry(data_dir: Path) -> Registry:
    return Registry(data_dir / "photolabel.sqlite3")


@pytest.fixture
def cold_cache(tmp_path: Path, cache_dir: Path, trained_model: Path) -> Path:
    """A cache with the exported backbone but no embeddings, so that training takes a few seconds."""
    cold = tmp_path / "cold-cache"
    cold.mkdir()
    (cold / "backbones").symlink_to(cache_dir / "backbones", target_is_directory=True)
    return cold


@pytest.fixture
def make_runner(data_dir: Path, cache_dir: Path) -> Iterator[Callable[..., JobRunner]]:
    runners: list[JobRunner] = []

    def make(registry: Registry, *, cache: Path | None = None, fetch_options: FetchOptions | None = None,
             **kwargs: int) -> JobRunner:
        runner = JobRunner(registry, data_dir=data_dir, cache_dir=cache or cache_dir,
                           fetch_options=fetch_options or FetchOptions(), **kwargs)
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        runner.stop(timeout=5)


@pytest.fixture(scope="module")
def reference_model_id(trained_model: Path) -> str:
    """The id ``photolabel.train`` gives small_data with the library defaults."""
    return photolabel.load_model(trained_model).model_id


def _published_models(data_dir: Path) -> list[str]:
    """The model folders under DATA_DIR/models (named by model id; staging folders are hidden)."""
    models = data_dir / "models"
    return sorted(p.name for p in models.iterdir() if not p.name.startswith(".")) if models.is_dir() else []


def _queue(registry: Registry, runner: JobRunner, job_id: str, spec: TrainSpec) -> Job:
    job, created = registry.create_job(job_id, "train", spec.to_dict())
    assert created
    runner.submit(job_id)
    return job


def _wait_for(registry: Registry, job_id: str, condition: Callable[[Job], bool], timeout: float = WAIT_S) -> Job:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = registry.get_job(job_id)
        if job is not None and condition(job):
            return job
        time.sleep(0.01)
    raise AssertionError(f"job {job_id} never reached the condition; last seen: {registry.get_job(job_id)}")


def _wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never became true"
        time.sleep(0.01)


def _wait_for_pid(runner: JobRunner, job_id: str) -> int:
    deadline = time.monotonic() + WAIT_S
    while job_id not in (running := runner.running()):
        assert time.monotonic() < deadline, "the runner never started a child"
        time.sleep(0.01)
    return running[job_id]


def _process_gone(pid: int, timeout: float = 10) -> bool:
    """Whether ``pid`` ends (or is a zombie nobody reaped yet) within ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return True
        except (OSError, IndexError):
            return True
        time.sleep(0.02)
    return False


def _tar_gz(folder: Path, out: Path) -> Path:
    with tarfile.open(out, "w:gz") as archive:
        archive.add(folder, arcname="small")
    return out


def test_job_goes_from_queued_to_ready_with_progress_and_the_model_train_gives(
    registry: Registry, make_runner, data_dir: Path, small_data: Path, cold_cache: Path, reference_model_id: str
) -> None:
    archive = _tar_gz(small_data, data_dir / "uploads" / "small.tar.gz")
    runner = make_runner(registry, cache=cold_cache)
    assert runner.start() == []
    job_id = "1" * 40
    queued = _queue(registry, runner, job_id, TrainSpec(data=str(archive), model_uri="gs://test/1"))
    assert queued.status == "queued"

    seen: list[tuple[str, str, float]] = []
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        job = registry.get_job(job_id)
        assert job is not None
        if not seen or seen[-1] != (job.status, job.stage, job.progress):
            seen.append((job.status, job.stage, job.progress))
        if job.status in ("ready", "error"):
            break
        time.sleep(0.005)

    assert seen[-1] == ("ready", "done", 1.0), seen
    statuses = [status for status, _, _ in seen]
    assert "in_progress" in statuses and statuses.index("in_progress") < statuses.index("ready")
    assert all(status in ("queued", "in_progress") for status in statuses[:-1])
    progress = [p for status, _, p in seen if status == "in_progress"]
    assert progress == sorted(progress), "progress went backwards"
    assert len({p for p in progress if 0 < p < 1}) >= 2, seen  # observed increasing while it ran
    stages = [stage for status, stage, _ in seen if status == "in_progress"]
    assert {"loading", "embedding", "fitting"} <= set(stages), seen
    assert stages.index("loading") < stages.index("embedding") < stages.index("fitting")

    job = runner.wait(job_id, timeout=1)
    assert (job.attempts, job.error_code, job.error) == (1, None, None)
    assert job.model_id == reference_model_id  # content-addressed: same images, config and seed
    model_dir = model_dir_for(data_dir, reference_model_id)  # one folder per model, named by its id
    assert model_dir == data_dir / "models" / reference_model_id
    assert sorted(p.name for p in (data_dir / "models").iterdir()) == [reference_model_id]  # no staging left
    assert photolabel.load_model(model_dir).model_id == reference_model_id
    record = registry.get_model(job_id)
    assert record is not None
    assert (record.model_id, record.path, record.labels, record.uri) == (
        reference_model_id, str(model_dir), LABELS, "gs://test/1")
    assert registry.get_model(reference_model_id[:12]) == record
    _wait_until(lambda: runner.running() == {})  # the child exits after recording the result


def test_corrupt_image_ends_in_error_naming_the_file_and_leaves_no_model(
    registry: Registry, make_runner, data_dir: Path, small_data: Path, tmp_path: Path
) -> None:
    bad_data = tmp_path / "bad"
    shutil.copytree(small_data, bad_data)
    victim = sorted((bad_data / "halter").iterdir())[3]
    victim.write_bytes(victim.read_bytes()[:300])  # a truncated JPEG
    runner = make_runner(registry)
    runner.start()
    _queue(registry, runner, "bad", TrainSpec(data=str(bad_data)))
    job = runner.wait("bad", timeout=WAIT_S)
    assert (job.status, job.error_code) == ("error", "bad_image")
    assert job.error is not None and f"halter/{victim.name}" in job.error and "\n" not in job.error
    assert job.to_dict()["error"]["code"] == "bad_image"
    assert _published_models(data_dir) == []
    assert registry.list_models() == []


def test_urls_only_csv_listing_local_paths_ends_in_error(
    registry: Registry, make_runner, data_dir: Path, small_data: Path
) -> None:
    manifest = data_dir / "uploads" / "paths.csv"
    manifest.write_text("".join(f"{image},{image.parent.name}\n" for image in sorted(small_data.rglob("*.jpg"))))
    runner = make_runner(registry)
    runner.start()
    _queue(registry, runner, "paths", TrainSpec(data=str(manifest), urls_only="upload"))
    job = runner.wait("paths", timeout=WAIT_S)
    assert (job.status, job.error_code) == ("error", "bad_data")
    assert job.error is not None and "only list http(s) URLs" in job.error and job.error.startswith("upload line 1")
    assert _published_models(data_dir) == []


class _SmallDataFiles(QuietHandler):
    root: Path

    def do_GET(self) -> None:
        path = self.root / self.path.lstrip("/")
        if not path.is_file():
            self.send_error(404)
            return
        body = path.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_csv_of_urls_trains_the_same_model(
    registry: Registry, make_runner, data_dir: Path, small_data: Path, reference_model_id: str
) -> None:
    handler = type("Handler", (_SmallDataFiles,), {"root": small_data})
    with serve_http(handler) as base:
        manifest = data_dir / "uploads" / "train.csv"
        rows = [f"{image.relative_to(small_data).as_posix()},{image.parent.name}"
                for image in sorted(small_data.rglob("*.jpg"))]
        rows[0] = f"{base}/{rows[0]}"  # one absolute URL; the rest resolve against the CSV's URL
        manifest.write_text("image,label\n" + "\n".join(rows) + "\n")
        runner = make_runner(registry, fetch_options=FetchOptions(allow_private=True, timeout=30))
        runner.start()
        _queue(registry, runner, "urls", TrainSpec(data=str(manifest), urls_only=f"{base}/train.csv"))
        job = runner.wait("urls", timeout=WAIT_S)
    assert (job.status, job.error) == ("ready", None)
    assert job.model_id == reference_model_id


def test_private_urls_are_refused_with_the_service_fetch_options(
    registry: Registry, make_runner, data_dir: Path, small_data: Path
) -> None:
    handler = type("Handler", (_SmallDataFiles,), {"root": small_data})
    with serve_http(handler) as base:
        manifest = data_dir / "uploads" / "train.csv"
        manifest.write_text("".join(f"{base}/{image.relative_to(small_data).as_posix()},{image.parent.name}\n"
                                    for image in sorted(small_data.rglob("*.jpg"))))
        runner = make_runner(registry, fetch_options=FetchOptions(allow_private=False, timeout=30))
        runner.start()
        _queue(registry, runner, "private", TrainSpec(data=str(manifest), urls_only=f"{base}/train.csv"))
        job = runner.wait("private", timeout=WAIT_S)
    assert (job.status, job.error_code) == ("error", "url_blocked")
    assert job.error is not None and "private address refused" in job.error


def test_child_killed_from_outside_is_recorded_as_died(
    registry: Registry, make_runner, data_dir: Path, small_data: Path, cold_cache: Path
) -> None:
    runner = make_runner(registry, cache=cold_cache)
    runner.start()
    _queue(registry, runner, "victim", TrainSpec(data=str(small_data)))
    pid = _wait_for_pid(runner, "victim")
    _wait_for(registry, "victim", lambda job: job.stage == "embedding")  # the child is training
    os.kill(pid, signal.SIGKILL)
    job = runner.wait("victim", timeout=WAIT_S)
    assert (job.status, job.error_code) == ("error", "process_died")
    assert job.error == "training process died (exit code -9, SIGKILL)"
    assert _published_models(data_dir) == []
    assert runner.running() == {}


def test_stop_leaves_the_job_in_progress_and_the_next_start_resumes_it(
    registry: Registry, make_runner, data_dir: Path, small_data: Path
) -> None:
    runner = make_runner(registry)
    runner.start()
    _queue(registry, runner, "resume", TrainSpec(data=str(small_data)))
    pid = _wait_for_pid(runner, "resume")
    runner.stop(timeout=5)
    assert runner.running() == {} and _process_gone(pid)
    job = registry.get_job("resume")
    assert job is not None and (job.status, job.attempts) == ("in_progress", 1)

    again = make_runner(Registry(registry.db_path))
    recovered = again.start()
    assert [(j.job_id, j.status, j.stage) for j in recovered] == [("resume", "queued", "resumed after restart")]
    job = again.wait("resume", timeout=WAIT_S)
    assert (job.status, job.attempts) == ("ready", 2)
    assert job.model_id is not None
    assert photolabel.load_model(model_dir_for(data_dir, job.model_id)).model_id == job.model_id


def test_a_crashed_server_takes_its_child_along_and_the_job_resumes(
    registry: Registry, make_runner, data_dir: Path, small_data: Path, cold_cache: Path, reference_model_id: str
) -> None:
    registry.create_job("crash", "train", TrainSpec(data=str(small_data)).to_dict())
    server = subprocess.Popen(
        [sys.executable, "-c", RUNNER_SCRIPT, str(registry.db_path), str(data_dir), str(cold_cache)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert server.stdout is not None
        child_pid = json.loads(server.stdout.readline())["crash"]
        _wait_for(registry, "crash", lambda job: job.stage == "embedding")
        server.kill()  # SIGKILL: no clean-up runs in the server
        server.wait(timeout=10)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        if server.stdout is not None:
            server.stdout.close()
    assert _process_gone(child_pid), "the training child outlived its server"
    job = registry.get_job("crash")
    assert job is not None and job.status == "in_progress"
    assert _published_models(data_dir) == []

    runner = make_runner(Registry(registry.db_path), cache=cold_cache)
    assert [j.job_id for j in runner.start()] == ["crash"]
    job = runner.wait("crash", timeout=WAIT_S)
    assert (job.status, job.attempts, job.model_id) == ("ready", 2, reference_model_id)


def test_a_job_interrupted_too_often_becomes_an_error_and_is_not_run(
    registry: Registry, make_runner, small_data: Path
) -> None:
    registry.create_job("flaky", "train", TrainSpec(data=str(small_data)).to_dict())
    assert registry.claim_next_job() is not None  # started ...
    assert registry.recover_interrupted(max_attempts=2)[0].status == "queued"  # ... interrupted, requeued
    assert registry.claim_next_job() is not None  # started again, and (below) interrupted again
    job = registry.get_job("flaky")
    assert job is not None and (job.status, job.attempts) == ("in_progress", 2)
    runner = make_runner(registry, max_attempts=2)
    (recovered,) = runner.start()
    assert (recovered.status, recovered.error_code) == ("error", "interrupted")
    assert recovered.error is not None and "interrupted 2 times" in recovered.error
    time.sleep(0.3)
    assert runner.running() == {}
    assert registry.get_job("flaky").status == "error"  # type: ignore[union-attr]
    assert registry.retry_job("flaky").status == "queued"
    runner.submit("flaky")
    assert runner.wait("flaky", timeout=WAIT_S).status == "ready"


def test_train_spec_round_trips_through_json() -> None:
    config = TrainConfig(seed=7, classes=("a", "b"), head="knn", head_params={"n_neighbors": 3})
    spec = TrainSpec(data="/d/uploads/a.csv", config=config.to_dict(), urls_only="https://x/a.csv",
                     model_uri="gs://b/m", skip_bad=True)
    assert TrainSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert spec.train_config() == config
    assert TrainSpec.from_dict({"data": "x", "added_later": 1}) == TrainSpec(data="x")
    # a spec queued by the previous version (flat settings) still runs with the same settings
    older = TrainSpec.from_dict({"data": "x", "seed": 7, "head": "nb", "classes": ["a", "b"], "valid_fraction": 0.2})
    assert older.train_config() == TrainConfig(seed=7, head="nb", classes=("a", "b"), valid_fraction=0.2)


# --- job kinds: one registration each; run_job keeps the bookkeeping --------------------------


@pytest.fixture
def scratch_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kinds a test registers are gone after it."""
    monkeypatch.setattr(job_kinds, "_JOB_KINDS", dict(job_kinds._JOB_KINDS))


def _run_claimed(registry: Registry, job_id: str, kind: str, data_dir: Path) -> Job:
    """Create job ``job_id`` of ``kind``, claim it as the runner would, and run it here."""
    registry.create_job(job_id, kind, {"word": "hello"})
    claimed = registry.claim_next_job()
    assert claimed is not None and claimed.job_id == job_id
    return run_job(registry, job_id, data_dir=data_dir, cache_dir=None, fetch_options=FetchOptions(), threads=3)


def test_a_registered_kind_runs_through_run_job_and_its_model_is_recorded(
    registry: Registry, data_dir: Path, scratch_kinds: None
) -> None:
    seen: list[tuple[str, float]] = []

    def echo(context: JobContext) -> ModelRecord:
        context.progress("echoing", 0.5)
        job = context.registry.get_job(context.job.job_id)
        assert job is not None
        seen.append((job.stage, job.progress))
        assert (context.data_dir, context.threads, context.job.spec) == (data_dir, 3, {"word": "hello"})
        return ModelRecord(model_id="e" * 64, job_id=context.job.job_id, path=str(data_dir / "echo"),
                           labels=["hello"], backbone="none", head="none", uri=None, created_at=utc_now())

    register_job_kind("echo", echo)
    assert list_job_kinds() == sorted([TRAIN_KIND, "echo"])
    job = _run_claimed(registry, "echo-job", "echo", data_dir)
    assert seen == [("echoing", 0.5)]
    assert (job.status, job.stage, job.progress, job.error_code, job.model_id) == ("ready", "done", 1.0, None, "e" * 64)
    record = registry.get_model("e" * 64)
    assert record is not None and (record.job_id, record.labels) == ("echo-job", ["hello"])


def test_a_kind_without_a_model_ends_ready_and_its_errors_are_recorded_without_server_paths(
    registry: Registry, data_dir: Path, scratch_kinds: None
) -> None:
    register_job_kind("noop", lambda context: None)
    job = _run_claimed(registry, "noop-job", "noop", data_dir)
    assert (job.status, job.model_id) == ("ready", None)

    def refuse(context: JobContext) -> None:
        raise DataError(f"{context.data_dir / 'uploads' / 'x.csv'}: no rows")

    register_job_kind("refuse", refuse)
    job = _run_claimed(registry, "refuse-job", "refuse", data_dir)
    assert (job.status, job.stage, job.error_code) == ("error", "failed", DataError.code)
    assert job.error == "DATA_DIR/uploads/x.csv: no rows"
    with pytest.raises(ValueError, match="already registered"):
        register_job_kind("refuse", refuse)


def test_an_unknown_kind_is_a_job_error_naming_the_known_kinds(registry: Registry, data_dir: Path) -> None:
    job = _run_claimed(registry, "odd-job", "no-such-kind", data_dir)
    assert (job.status, job.stage, job.error_code, job.model_id) == ("error", "failed", "unknown_name", None)
    assert job.error is not None and "'no-such-kind'" in job.error and TRAIN_KIND in job.error
