"""Jobs, run outside the request path in child processes.

A :class:`JobRunner` owns one dispatcher thread. It claims queued jobs from the
:class:`~photolabel.adapters.http.store.Registry` and runs each in a child process
(``python -m photolabel.adapters.http.jobs JOB_ID DB_PATH ...``), at most ``workers``
at a time. The child lowers its priority, asks the kernel to kill it if the server
dies, and runs :func:`run_job`: the handler of the job's kind (see :mod:`.job_kinds`)
does the work, and its progress and its result go into the job row itself. The parent
only watches exit codes: a child that exits without recording a result leaves its job
in error ("training process died").

A job still ``in_progress`` when the server stops (or crashes) is requeued by the
next :meth:`JobRunner.start` (see :meth:`Registry.recover_interrupted`); an orderly stop
(``stop(requeue=True)``, the service's drain) requeues it at once. Model
directories are written atomically by :func:`photolabel.train`, so a killed child
never leaves half a model.

Each child keeps its temporary files in a folder of its own, ``DATA_DIR/tmp/job-<host>-<pid>-...``,
removed when it ends, SIGTERM included; :meth:`JobRunner.start` removes those of children
that were killed outright (SIGKILL, a crash), and the staging folders they left beside models.
A job that runs out of disk space fails with the code ``insufficient_storage``; the model it
was replacing, if any, is left as it was.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from photolabel.adapters.http.job_kinds import JobContext, get_job_kind, sweep_staging
from photolabel.adapters.http.store import Job, Registry
from photolabel.artifact import sweep_leftovers
from photolabel.errors import DataError, InsufficientStorageError, PhotolabelError
from photolabel.fetch import FetchOptions
from photolabel.fsutil import is_storage_full, owner_gone, process_tag

log = logging.getLogger("photolabel.http.jobs")

PROGRESS_INTERVAL_S = 0.2  # at most 5 progress writes a second (plus one per stage change)
DEFAULT_MAX_ATTEMPTS = 3
_POLL_S = 0.1  # how often the dispatcher looks at its children
_RESCAN_S = 2.0  # how often it looks for queued jobs nobody told it about
_PR_SET_PDEATHSIG = 1
TEMP_DIR_NAME = "tmp"  # DATA_DIR/tmp: the children's temporary folders
_CHILD_TEMP = re.compile(r"^job-(?P<host>[A-Za-z0-9.]+)-(?P<pid>[0-9]+)-")
REQUEUED_STAGE = "queued again: the service stopped"


def temp_root(data_dir: str | Path) -> Path:
    """``DATA_DIR/tmp``, where each job's child keeps its temporary folder."""
    return Path(data_dir) / TEMP_DIR_NAME


def sweep_stale_files(data_dir: str | Path) -> list[Path]:
    """Remove what killed children left: their temporary folders under ``DATA_DIR/tmp``, the staging
    folders beside ``DATA_DIR/models/*`` (a model left aside half-way through publishing is restored) and the
    ``DATA_DIR/models/.job-<host>-<pid>-*`` folders a model was trained or imported into before it got its id.
    Only leftovers of processes that no longer run are touched. Returns the paths removed or restored."""
    swept: list[Path] = []
    root = temp_root(data_dir)
    with contextlib.suppress(OSError):
        for entry in sorted(root.iterdir()):
            match = _CHILD_TEMP.match(entry.name)
            if match is None or not owner_gone(match["host"], match["pid"]):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            if not os.path.lexists(entry):
                swept.append(entry)
    swept += sweep_leftovers(Path(data_dir) / "models")
    swept += sweep_staging(data_dir)  # models being trained or imported by a process that died
    return swept


# --- the parent: dispatcher thread ------------------------------------------------------------


@dataclass
class _Child:
    job_id: str
    attempt: int
    process: subprocess.Popen[bytes]


class JobRunner:
    """Runs queued jobs of ``registry`` in child processes, ``workers`` at a time.

    ``threads`` is the number of threads each child gives the backbone. Jobs that were
    interrupted ``max_attempts`` times become errors instead of being run again. With
    ``tensorboard``, each job writes TensorBoard curves under ``DATA_DIR/tensorboard/<job_id>``.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        data_dir: str | Path,
        cache_dir: str | Path | None,
        fetch_options: FetchOptions,
        workers: int = 1,
        threads: int = 1,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        tensorboard: bool = False,
        upload_retention_s: float | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        self.registry = registry
        self.data_dir = Path(data_dir)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.fetch_options = fetch_options
        self.workers = workers
        self.threads = threads
        self.tensorboard = tensorboard
        # uploads: None keeps them all (KEEP_UPLOADS); else see sweep_uploads (UPLOAD_RETENTION_S)
        self.upload_retention_s = upload_retention_s
        self._last_upload_sweep = float("-inf")
        self.max_attempts = max_attempts
        self._children: dict[str, _Child] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._stop_timeout = 10.0
        self._thread: threading.Thread | None = None

    def start(self) -> list[Job]:
        """Requeue (or fail) jobs a previous run left in progress, then start dispatching.

        Returns the jobs recovered. Calling it on a running runner only returns [].
        """
        if self._thread is not None and self._thread.is_alive():
            return []
        for path in sweep_stale_files(self.data_dir):
            log.info("removed %s, left by a training process that was killed", path.name)
        recovered = self.registry.recover_interrupted(self.max_attempts)
        for job in recovered:
            log.info("job %s: %s", job.job_id, job.stage if job.status == "queued" else job.error)
        self._stopping.clear()
        # The children's "kill me when my parent dies" signal follows the thread that
        # started them, so this one thread starts them and outlives them.
        self._thread = threading.Thread(target=self._dispatch, name="photolabel-jobs", daemon=True)
        self._thread.start()
        return recovered

    def submit(self, job_id: str) -> None:
        """Wake the dispatcher: job ``job_id`` has been queued in the registry."""
        self._wake.set()

    def stop(self, timeout: float = 10, *, requeue: bool = False) -> list[str]:
        """Stop dispatching and end running children (SIGTERM, then SIGKILL after ``timeout`` s); each
        child removes its temporary files on SIGTERM.

        Their jobs stay in_progress, and the next :meth:`start` requeues them; with ``requeue`` they
        are queued again now, the attempt not counted (an orderly stop is not the job's failure).
        Returns the ids of the jobs that were running.
        """
        thread = self._thread
        if thread is None:
            return []
        with self._lock:
            running = {job_id: child.attempt for job_id, child in self._children.items()}
        self._stop_timeout = timeout
        self._stopping.set()
        self._wake.set()
        thread.join(timeout + 5)
        self._thread = None
        if requeue:
            for job_id, attempt in running.items():
                if self.registry.update_job(job_id, expect_status="in_progress", status="queued",
                                            stage=REQUEUED_STAGE, progress=0.0, attempts=max(attempt - 1, 0)):
                    log.info("job %s: queued again (the service is stopping)", job_id)
        return sorted(running)

    def running(self) -> dict[str, int]:
        """``{job_id: pid}`` of the children running now."""
        with self._lock:
            return {job_id: child.process.pid for job_id, child in self._children.items()}

    def is_alive(self) -> bool:
        """Whether the dispatcher thread runs (for a readiness check)."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self, job_id: str, timeout: float) -> Job:
        """Poll until job ``job_id`` is ready or in error and return it.

        Raises ``KeyError`` for an unknown job and ``TimeoutError`` after ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        while True:
            job = self.registry.get_job(job_id)
            if job is None:
                raise KeyError(job_id)
            if job.status in ("ready", "error"):
                return job
            if time.monotonic() >= deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} ({job.stage}) after {timeout:g} s")
            time.sleep(0.05)

    # -- the dispatcher thread -------------------------------------------------------------------

    def _dispatch(self) -> None:
        last_scan = 0.0
        try:
            while not self._stopping.is_set():
                woken = self._wake.wait(_POLL_S)
                self._wake.clear()
                try:
                    finished = self._reap()
                    now = time.monotonic()
                    if woken or finished or now - last_scan >= _RESCAN_S:
                        last_scan = now
                        self._launch_queued()
                    self._sweep_uploads_when_due(finished)
                except Exception:  # keep dispatching: one bad database moment must not end the service's jobs
                    log.exception("job dispatcher: unexpected error")
        finally:
            self._end_children()

    def _sweep_uploads_when_due(self, finished: int) -> None:
        """Remove the uploads no job needs (:func:`sweep_uploads`) when a job has ended, and every minute."""
        if self.upload_retention_s is None:
            return
        now = time.monotonic()
        if not finished and now - self._last_upload_sweep < SWEEP_UPLOADS_EVERY_S:
            return
        self._last_upload_sweep = now
        for path in sweep_uploads(self.registry, self.data_dir, self.upload_retention_s):
            log.info("removed the upload %s: no job needs it any more", path.name)

    def _launch_queued(self) -> None:
        while len(self._children) < self.workers and not self._stopping.is_set():
            job = self.registry.claim_next_job()
            if job is None:
                return
            try:
                process = subprocess.Popen(
                    self._child_command(job.job_id),
                    stdin=subprocess.DEVNULL,
                    # its own session: a Ctrl-C meant for the server does not kill the child first
                    start_new_session=True,
                )
            except OSError as exc:
                self.registry.update_job(job.job_id, status="error", stage="failed", error_code="internal",
                                         error=f"cannot start the training process: {exc}")
                continue
            log.info("job %s: attempt %d started in process %d", job.job_id, job.attempts, process.pid)
            with self._lock:
                self._children[job.job_id] = _Child(job.job_id, job.attempts, process)

    def _child_command(self, job_id: str) -> list[str]:
        command = [
            sys.executable, "-m", "photolabel.adapters.http.jobs", job_id, str(self.registry.db_path),
            "--data-dir", str(self.data_dir),
            "--threads", str(self.threads),
            "--fetch-options", json.dumps(asdict(self.fetch_options)),
            "--parent-pid", str(os.getpid()),
        ]
        if self.cache_dir is not None:
            command += ["--cache-dir", str(self.cache_dir)]
        if self.tensorboard:
            command.append("--tensorboard")
        return command

    def _reap(self) -> int:
        """Forget children that exited; fail the jobs of those that left no result. Returns how many."""
        with self._lock:
            done = [child for child in self._children.values() if child.process.poll() is not None]
            for child in done:
                del self._children[child.job_id]
        for child in done:
            code = child.process.returncode
            job = self.registry.get_job(child.job_id)
            if job is None or job.status != "in_progress" or job.attempts != child.attempt:
                continue
            how = f"exit code {code}"
            if code < 0:
                with contextlib.suppress(ValueError):
                    how += f", {signal.Signals(-code).name}"
            log.error("job %s: training process %d died (%s)", child.job_id, child.process.pid, how)
            self.registry.update_job(child.job_id, expect_status="in_progress", status="error", stage="failed",
                                     error_code="process_died", error=f"training process died ({how})")
        return len(done)

    def _end_children(self) -> None:
        with self._lock:
            children = list(self._children.values())
        for child in children:
            if child.process.poll() is None:
                child.process.terminate()
        deadline = time.monotonic() + self._stop_timeout
        for child in children:
            try:
                child.process.wait(max(deadline - time.monotonic(), 0))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()
        with self._lock:
            self._children.clear()


# --- uploads: removed once no job needs them (UPLOAD_RETENTION_S, KEEP_UPLOADS) ------------------------

UPLOADS_DIR_NAME = "uploads"  # DATA_DIR/uploads: training files uploaded to the service or fetched by POST /train
UPLOAD_GRACE_S = 60.0  # a file written this recently may belong to a job being created this moment
STALE_PARTIAL_UPLOAD_S = 3600.0  # a half-written upload (".<name>.tmp") untouched this long was abandoned
SWEEP_UPLOADS_EVERY_S = 60.0


class UploadRemovedError(DataError):
    """A job run again after its uploaded data was removed (the job ended and the retention passed)."""

    code = "upload_removed"


def sweep_uploads(registry: Registry, data_dir: str | Path, retention_s: float, *,
                  now: float | None = None) -> list[Path]:
    """Remove the files of ``DATA_DIR/uploads`` that no job needs any more; returns those removed.

    A file stays while a queued or running job uses it, for ``retention_s`` seconds after a job
    that uses it failed (so that a retry can run), and for :data:`UPLOAD_GRACE_S` after it was
    written (its job may be being created). The file of a job that succeeded goes when the job
    ends, and a file no job names (a refused upload) once the grace has passed; half-written
    ones (``.<name>.tmp``) go once untouched for :data:`STALE_PARTIAL_UPLOAD_S`.
    """
    folder = Path(data_dir) / UPLOADS_DIR_NAME
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    now = time.time() if now is None else now
    keep_until: dict[Path, float] = {}
    for job in registry.list_jobs(limit=2**62):
        data = job.spec.get("data") if isinstance(job.spec, dict) else None
        if not isinstance(data, str):
            continue
        path = Path(data).absolute()
        if job.status in ("queued", "in_progress"):
            until = float("inf")
        else:
            until = _epoch(job.updated_at) + (retention_s if job.status == "error" else 0.0)
        keep_until[path] = max(keep_until.get(path, float("-inf")), until)
    removed: list[Path] = []
    for entry in entries:
        try:
            info = entry.lstat()
        except OSError:
            continue
        if not (entry.is_file() or entry.is_symlink()):
            continue
        if entry.name.startswith("."):
            if now - info.st_mtime < STALE_PARTIAL_UPLOAD_S:
                continue
        elif now - info.st_mtime < UPLOAD_GRACE_S or now < keep_until.get(entry.absolute(), float("-inf")):
            continue
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()
            removed.append(entry)
    return removed


def _epoch(stamp: str) -> float:
    """Seconds since the epoch of a registry time (``2024-05-01T12:00:00.123456Z``); 0 if unreadable."""
    try:
        return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc).timestamp()
    except (TypeError, ValueError):
        return 0.0


def _check_upload(job: Job, data_dir: str | Path) -> None:
    """Refuse, with a message that says what to do, to run a job whose upload was removed after it ended."""
    data = job.spec.get("data") if isinstance(job.spec, dict) else None
    if not isinstance(data, str):
        return
    path = Path(data).absolute()
    if path.parent != (Path(data_dir) / UPLOADS_DIR_NAME).absolute() or path.exists():
        return
    raise UploadRemovedError(
        f"the data this job trains on (DATA_DIR/{UPLOADS_DIR_NAME}/{path.name}) was removed after the job ended: "
        "the service keeps the data of a failed job for UPLOAD_RETENTION_S seconds (KEEP_UPLOADS=true keeps it "
        f"always). Upload the same file again with the same fields to POST /v1/train, then POST "
        f"/v1/jobs/{job.job_id}/retry")


# --- the child: one job run --------------------------------------------------------------------


class _ProgressWriter:
    """``on_progress`` for :func:`photolabel.train`: writes into the job row, throttled."""

    def __init__(self, registry: Registry, job_id: str) -> None:
        self.registry = registry
        self.job_id = job_id
        self._stage: str | None = None
        self._last = 0.0

    def __call__(self, stage: str, fraction: float) -> None:
        now = time.monotonic()
        if stage == self._stage and now - self._last < PROGRESS_INTERVAL_S:
            return
        self._stage, self._last = stage, now
        self.registry.update_job(self.job_id, expect_status="in_progress", stage=stage, progress=float(fraction))


def _public_message(message: str, data_dir: str | Path) -> str:
    """Job errors are shown to API clients: name files relative to DATA_DIR, not by server paths."""
    for root in sorted({str(Path(data_dir).resolve()), str(Path(data_dir).absolute()), str(data_dir)},
                       key=len, reverse=True):
        message = message.replace(root.rstrip("/") + "/", "DATA_DIR/")
    return message


def run_job(
    registry: Registry,
    job_id: str,
    *,
    data_dir: str | Path,
    cache_dir: str | Path | None,
    fetch_options: FetchOptions,
    threads: int = 1,
    tensorboard: bool = False,
) -> Job:
    """Run job ``job_id`` here and now with the handler of its kind; record progress and the result in its row.

    Returns the job. A model the handler returns is added to the registry and named
    in the job. Every failure is recorded, none raised: a :class:`PhotolabelError`
    with its code and one-line message (an unknown kind is an ``unknown_name``
    error listing the kinds this server runs), anything else as code "internal"
    (traceback on stderr). Raises ``KeyError`` only for an unknown job.
    """
    job = registry.get_job(job_id)
    if job is None:
        raise KeyError(job_id)
    context = JobContext(registry=registry, job=job, data_dir=Path(data_dir),
                         cache_dir=Path(cache_dir) if cache_dir is not None else None,
                         fetch_options=fetch_options, threads=threads, progress=_ProgressWriter(registry, job_id),
                         tensorboard=tensorboard)
    try:
        _check_upload(job, data_dir)
        handler = get_job_kind(job.kind)
        record = handler(context)
    except Exception as exc:
        if is_storage_full(exc):  # ENOSPC, EDQUOT or EFBIG, whichever layer wrapped it
            print(f"photolabel: job {job_id}: out of storage space: {exc}", file=sys.stderr)
            registry.update_job(job_id, status="error", stage="failed", error_code=InsufficientStorageError.code,
                                error=f"the server ran out of storage space while running the job; the model it "
                                      f"would replace, if any, is unchanged. Free some space, then "
                                      f"POST /v1/jobs/{job_id}/retry")
        elif isinstance(exc, PhotolabelError):
            registry.update_job(job_id, status="error", stage="failed", error_code=exc.code,
                                error=_public_message(str(exc), data_dir))
        else:
            print(f"photolabel: job {job_id} failed unexpectedly:", file=sys.stderr)
            traceback.print_exc()
            registry.update_job(job_id, status="error", stage="failed", error_code="internal",
                                error=_public_message(f"internal error: {type(exc).__name__}: {exc}", data_dir))
    else:
        if record is not None:
            registry.add_model(record)
        registry.update_job(job_id, status="ready", stage="done", progress=1.0, error_code=None, error=None,
                            model_id=record.model_id if record is not None else None)
    final = registry.get_job(job_id)
    return final if final is not None else job


def _become_background_child(parent_pid: int | None) -> None:
    """Lower our priority and die with the server (Linux), so no training outlives it."""
    with contextlib.suppress(OSError, AttributeError):
        os.nice(10)
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        except (OSError, AttributeError):
            pass
    # The server may have died before the line above took effect.
    if parent_pid is not None and os.getppid() != parent_pid:
        sys.exit(3)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m photolabel.adapters.http.jobs",
                                     description="Run one queued job of the photolabel service.")
    parser.add_argument("job_id")
    parser.add_argument("db_path", type=Path)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tensorboard", action="store_true", help="write TensorBoard curves (DATA_DIR/tensorboard)")
    parser.add_argument("--fetch-options", default="{}", help="FetchOptions as a JSON object")
    parser.add_argument("--parent-pid", type=int, default=None, help="exit at once if this is not our parent")
    args = parser.parse_args(argv)
    _become_background_child(args.parent_pid)
    temp = _own_temp_dir(args.data_dir)
    signal.signal(signal.SIGTERM, _end_on_sigterm)
    registry: Registry | None = None
    try:
        registry = Registry(args.db_path)
        run_job(registry, args.job_id, data_dir=args.data_dir, cache_dir=args.cache_dir,
                fetch_options=FetchOptions(**json.loads(args.fetch_options)), threads=args.threads,
                tensorboard=args.tensorboard)
    except KeyError:
        print(f"photolabel: no job {args.job_id} in {args.db_path}", file=sys.stderr)
        return 2
    finally:
        if registry is not None:
            registry.close()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    return 0


def _own_temp_dir(data_dir: Path) -> Path | None:
    """A temporary folder for this child under ``DATA_DIR/tmp`` (named with our host and pid, so that the server
    can tell a killed child's), made the default of :mod:`tempfile` and of what we start. None if it cannot be
    made: the system's temporary folder is used then."""
    try:
        root = temp_root(data_dir)
        root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(dir=root, prefix=f"job-{process_tag()}-"))
    except OSError as exc:
        print(f"photolabel: cannot make a temporary folder under {temp_root(data_dir)}: {exc}", file=sys.stderr)
        return None
    tempfile.tempdir = str(folder)
    os.environ["TMPDIR"] = str(folder)
    return folder


def _end_on_sigterm(signum: int, frame: object) -> None:
    """SIGTERM (the server stops): unwind, so that every ``finally`` removes what it made; a second one is ignored."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


if __name__ == "__main__":
    sys.exit(main())
