"""The service's registry of jobs and models: one SQLite file.

The file is opened in WAL mode with a 10 s busy timeout, one connection per thread
(and per process), so request threads, the job dispatcher and the training child
processes that write progress can all use it at once. Every change that reads
before it writes runs in a ``BEGIN IMMEDIATE`` transaction, which makes it atomic
across threads and processes. Times are ISO-8601 UTC strings with microseconds.

Idempotency keys (the ``Idempotency-Key`` header of a request that creates a job) are kept
with a fingerprint of the request they came with and the job it made: the same key with the
same request finds that job again; with another request it is refused
(:class:`IdempotencyKeyReused`). The schema is created with ``IF NOT EXISTS``, so a database
written by an older version gains the table when it is opened.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

JOB_STATUSES = ("queued", "in_progress", "ready", "error")
BUSY_TIMEOUT_MS = 10_000
MIN_PREFIX = 8  # hex characters a model or job id prefix needs to be looked up by

_UPDATABLE = frozenset({"status", "stage", "progress", "error_code", "error", "model_id", "attempts"})
_HEX_PREFIX = re.compile(r"^[0-9a-f]+$")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id      TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,
    stage       TEXT NOT NULL,
    progress    REAL NOT NULL,
    error_code  TEXT,
    error       TEXT,
    spec        TEXT NOT NULL,
    model_id    TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    scope       TEXT NOT NULL,
    key         TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (scope, key)
);
CREATE TABLE IF NOT EXISTS models (
    model_id    TEXT PRIMARY KEY,
    job_id      TEXT,
    path        TEXT NOT NULL,
    labels      TEXT NOT NULL,
    backbone    TEXT NOT NULL,
    head        TEXT NOT NULL,
    uri         TEXT,
    created_at  TEXT NOT NULL
);
"""

_JOB_COLUMNS = ("job_id, kind, status, stage, progress, error_code, error, spec, model_id, attempts, "
                "created_at, updated_at")
_MODEL_COLUMNS = "model_id, job_id, path, labels, backbone, head, uri, created_at"
_MODEL_COLUMNS_M = "m.model_id, m.job_id, m.path, m.labels, m.backbone, m.head, m.uri, m.created_at"


def utc_now() -> str:
    """The current time as ISO-8601 UTC, e.g. ``2024-05-01T12:00:00.123456Z``."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _one_line(text: str) -> str:
    return " ".join(text.split())


@dataclass(frozen=True)
class Job:
    """One row of the job table. ``spec`` is the JSON the job runs with (for training a TrainSpec)."""

    job_id: str
    kind: str
    status: str
    stage: str
    progress: float
    error_code: str | None
    error: str | None
    spec: dict[str, Any]
    model_id: str | None
    attempts: int
    created_at: str
    updated_at: str

    def to_dict(self) -> dict[str, Any]:
        """What the API shows: no spec; ``model_sha1`` repeats ``job_id`` (the seed's name for it)."""
        return {
            "job_id": self.job_id,
            "model_sha1": self.job_id,
            "kind": self.kind,
            "status": self.status,
            "stage": self.stage,
            "progress": self.progress,
            "error": None if self.error_code is None and self.error is None
            else {"code": self.error_code or "error", "message": self.error or ""},
            "model_id": self.model_id,
            "attempts": self.attempts,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }


@dataclass(frozen=True)
class IdempotencyKey:
    """An ``Idempotency-Key`` as stored: ``scope`` names the route (``POST /v1/train``), ``fingerprint`` is
    the sha256 of the request's canonical form."""

    scope: str
    key: str
    fingerprint: str


class IdempotencyKeyReused(Exception):
    """The key was first sent with another request (another fingerprint); ``job_id`` is the job it made then."""

    def __init__(self, key: IdempotencyKey, job_id: str) -> None:
        super().__init__(f"idempotency key {key.key!r} was used with another request for {key.scope}")
        self.key = key
        self.job_id = job_id


@dataclass(frozen=True)
class ModelRecord:
    """A trained model the service knows: its id (sha256), directory and what it predicts."""

    model_id: str
    job_id: str | None
    path: str
    labels: list[str]
    backbone: str
    head: str
    uri: str | None
    created_at: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Registry:
    """Jobs and models in the SQLite file ``db_path`` (created with its folder if missing).

    Safe to share between threads; other processes may open the same file at once.
    """

    def __init__(self, db_path: str | Path) -> None:
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        conn = self._conn()
        # WAL is a property of the file: set once, every later connection gets it.
        conn.execute("PRAGMA journal_mode=WAL")
        conn.executescript(_SCHEMA)

    # -- connections -------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # isolation_level=None: autocommit, with explicit BEGIN IMMEDIATE where we need it
            conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that takes the lock up front, so read-then-write is atomic."""
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def ping(self) -> bool:
        """True if the database answers (for a readiness check)."""
        try:
            return self._conn().execute("SELECT 1").fetchone()[0] == 1
        except sqlite3.Error:
            return False

    # -- jobs ---------------------------------------------------------------------------------

    def create_job(self, job_id: str, kind: str, spec: dict[str, Any], *,
                   idempotency: IdempotencyKey | None = None) -> tuple[Job, bool]:
        """Queue a new job, or find the one with this id: ``(job, created)``.

        With ``idempotency``, a key already stored with the same fingerprint gives the job it made
        (not created); with another fingerprint it raises :class:`IdempotencyKeyReused`. Otherwise the
        key is stored with ``job_id``, in the same transaction. Atomic: of any number of concurrent
        calls with one id (or one key), exactly one creates the job.
        """
        now = utc_now()
        with self._write() as conn:
            if idempotency is not None:
                earlier = self._idempotent_job(conn, idempotency)
                if earlier is not None:
                    return earlier, False
            cursor = conn.execute(
                "INSERT OR IGNORE INTO jobs (job_id, kind, status, stage, progress, spec, attempts, "
                "created_at, updated_at) VALUES (?, ?, 'queued', 'queued', 0.0, ?, 0, ?, ?)",
                (job_id, kind, json.dumps(spec, sort_keys=True), now, now),
            )
            created = cursor.rowcount == 1
            if idempotency is not None:
                conn.execute(
                    "INSERT OR REPLACE INTO idempotency_keys (scope, key, fingerprint, job_id, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (idempotency.scope, idempotency.key, idempotency.fingerprint, job_id, now),
                )
            job = self._get_job(conn, job_id)
        if job is None:  # cannot happen: inserted or already there, inside one transaction
            raise RuntimeError(f"job {job_id} vanished while it was being created")
        return job, created

    def get_job(self, job_id: str) -> Job | None:
        return self._get_job(self._conn(), job_id)

    def find_idempotent_job(self, idempotency: IdempotencyKey) -> Job | None:
        """The job an earlier request with this key made, or None for a new key.

        Raises :class:`IdempotencyKeyReused` when the key came with another request (fingerprint).
        """
        return self._idempotent_job(self._conn(), idempotency)

    def remember_idempotency_key(self, idempotency: IdempotencyKey, job_id: str) -> Job | None:
        """Bind a key to a job that already existed (a request that found it); returns the job the key names.

        A key already bound with the same fingerprint keeps its job; with another it raises
        :class:`IdempotencyKeyReused`.
        """
        with self._write() as conn:
            earlier = self._idempotent_job(conn, idempotency)
            if earlier is not None:
                return earlier
            conn.execute(
                "INSERT OR REPLACE INTO idempotency_keys (scope, key, fingerprint, job_id, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (idempotency.scope, idempotency.key, idempotency.fingerprint, job_id, utc_now()),
            )
            return self._get_job(conn, job_id)

    def _idempotent_job(self, conn: sqlite3.Connection, idempotency: IdempotencyKey) -> Job | None:
        row = conn.execute("SELECT fingerprint, job_id FROM idempotency_keys WHERE scope = ? AND key = ?",
                           (idempotency.scope, idempotency.key)).fetchone()
        if row is None:
            return None
        if row["fingerprint"] != idempotency.fingerprint:
            raise IdempotencyKeyReused(idempotency, row["job_id"])
        return self._get_job(conn, row["job_id"])

    def list_jobs(self, limit: int = 100) -> list[Job]:
        """The newest ``limit`` jobs, newest first."""
        rows = self._conn().execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY seq DESC LIMIT ?", (int(limit),)
        ).fetchall()
        return [_job(row) for row in rows]

    def update_job(self, job_id: str, *, expect_status: str | None = None, **fields: Any) -> bool:
        """Set some of status, stage, progress, error_code, error, model_id, attempts.

        With ``expect_status``, only a job whose status is that one changes. Returns
        whether the row changed. Raises ``KeyError`` for an unknown job (when no
        ``expect_status`` is given) and ``ValueError`` for an unknown field or status.
        """
        unknown = set(fields) - _UPDATABLE
        if unknown:
            raise ValueError(f"cannot update job field(s) {sorted(unknown)}; allowed: {sorted(_UPDATABLE)}")
        if "status" in fields and fields["status"] not in JOB_STATUSES:
            raise ValueError(f"unknown job status {fields['status']!r}; expected one of {JOB_STATUSES}")
        if fields.get("error") is not None:
            fields["error"] = _one_line(str(fields["error"]))
        fields["updated_at"] = utc_now()
        assignments = ", ".join(f"{name} = ?" for name in fields)
        sql = f"UPDATE jobs SET {assignments} WHERE job_id = ?"
        params: list[Any] = [*fields.values(), job_id]
        if expect_status is not None:
            sql += " AND status = ?"
            params.append(expect_status)
        changed = self._conn().execute(sql, params).rowcount == 1
        if not changed and expect_status is None:
            raise KeyError(job_id)
        return changed

    def claim_next_job(self) -> Job | None:
        """Atomically move the oldest queued job to in_progress (attempts + 1) and return it."""
        # A plain read first, so that an idle dispatcher polling here takes no write lock.
        if self._conn().execute("SELECT 1 FROM jobs WHERE status = 'queued' LIMIT 1").fetchone() is None:
            return None
        with self._write() as conn:
            row = conn.execute(
                "SELECT job_id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1"
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET status = 'in_progress', stage = 'starting', progress = 0.0, "
                "error_code = NULL, error = NULL, attempts = attempts + 1, updated_at = ? WHERE job_id = ?",
                (utc_now(), row["job_id"]),
            )
            return self._get_job(conn, row["job_id"])

    def recover_interrupted(self, max_attempts: int = 3) -> list[Job]:
        """At start-up: requeue every in_progress job, or fail it once it has had ``max_attempts`` tries.

        A job left in_progress was running when the service stopped or crashed. It goes
        back to queued (stage "resumed after restart") unless it has already been started
        ``max_attempts`` times: then it becomes an error with code "interrupted", so a job
        that crashes the service cannot do so forever. Returns the jobs changed.
        """
        now = utc_now()
        with self._write() as conn:
            rows = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = 'in_progress' ORDER BY seq"
            ).fetchall()
            for row in rows:
                if row["attempts"] >= max_attempts:
                    message = (f"training was interrupted {row['attempts']} times (the service stopped or "
                               f"crashed while it ran); it was not started again")
                    conn.execute(
                        "UPDATE jobs SET status = 'error', stage = 'interrupted', error_code = 'interrupted', "
                        "error = ?, updated_at = ? WHERE job_id = ?",
                        (message, now, row["job_id"]),
                    )
                else:
                    conn.execute(
                        "UPDATE jobs SET status = 'queued', stage = 'resumed after restart', progress = 0.0, "
                        "updated_at = ? WHERE job_id = ?",
                        (now, row["job_id"]),
                    )
            return [job for row in rows if (job := self._get_job(conn, row["job_id"])) is not None]

    def retry_job(self, job_id: str) -> Job:
        """Requeue a job in error with its attempts reset. A job in any other status is returned unchanged.

        Raises ``KeyError`` for an unknown job.
        """
        with self._write() as conn:
            conn.execute(
                "UPDATE jobs SET status = 'queued', stage = 'queued', progress = 0.0, error_code = NULL, "
                "error = NULL, model_id = NULL, attempts = 0, updated_at = ? WHERE job_id = ? AND status = 'error'",
                (utc_now(), job_id),
            )
            job = self._get_job(conn, job_id)
        if job is None:
            raise KeyError(job_id)
        return job

    @staticmethod
    def _get_job(conn: sqlite3.Connection, job_id: str) -> Job | None:
        row = conn.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    # -- models -------------------------------------------------------------------------------

    def add_model(self, record: ModelRecord) -> None:
        """Insert or replace the model with ``record.model_id``."""
        self._conn().execute(
            f"INSERT OR REPLACE INTO models ({_MODEL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (record.model_id, record.job_id, record.path, json.dumps(list(record.labels)), record.backbone,
             record.head, record.uri, record.created_at),
        )

    def get_model(self, key: str) -> ModelRecord | None:
        """The model that ``key`` names, or None if none or several do.

        ``key`` is a model id (sha256), the id of a ready job that trained it (the seed's
        ``model_sha1``), or a prefix of at least 8 hex characters of either that
        names one model only.
        """
        conn = self._conn()
        key = key.strip()
        row = conn.execute(f"SELECT {_MODEL_COLUMNS} FROM models WHERE model_id = ?", (key,)).fetchone()
        if row is not None:
            return _model(row)
        row = conn.execute(
            f"SELECT {_MODEL_COLUMNS_M} FROM jobs j "
            "JOIN models m ON m.model_id = j.model_id WHERE j.job_id = ? AND j.status = 'ready'",
            (key,),
        ).fetchone()
        if row is not None:
            return _model(row)
        prefix = key.lower()
        if len(prefix) < MIN_PREFIX or not _HEX_PREFIX.match(prefix):
            return None
        # hex only, so no LIKE wildcards can be in the prefix
        ids = {r[0] for r in conn.execute("SELECT model_id FROM models WHERE model_id LIKE ?", (prefix + "%",))}
        ids |= {
            r[0]
            for r in conn.execute(
                "SELECT j.model_id FROM jobs j JOIN models m ON m.model_id = j.model_id "
                "WHERE j.job_id LIKE ? AND j.status = 'ready'",
                (prefix + "%",),
            )
        }
        if len(ids) != 1:
            return None
        row = conn.execute(f"SELECT {_MODEL_COLUMNS} FROM models WHERE model_id = ?", (ids.pop(),)).fetchone()
        return None if row is None else _model(row)

    def list_models(self) -> list[ModelRecord]:
        """Every model, newest first."""
        rows = self._conn().execute(
            f"SELECT {_MODEL_COLUMNS} FROM models ORDER BY created_at DESC, model_id"
        ).fetchall()
        return [_model(row) for row in rows]

    def delete_model(self, model_id: str) -> bool:
        """Forget the model (the caller removes its files). Returns whether it existed.

        Ready jobs that produced it become errors (code "model_deleted"), so that asking
        for such a job no longer says "ready"; ``retry_job`` trains it again.
        """
        with self._write() as conn:
            deleted = conn.execute("DELETE FROM models WHERE model_id = ?", (model_id,)).rowcount == 1
            if deleted:
                conn.execute(
                    "UPDATE jobs SET status = 'error', stage = 'model deleted', error_code = 'model_deleted', "
                    "error = ?, updated_at = ? WHERE model_id = ? AND status = 'ready'",
                    (f"model {model_id} was deleted; retry the job to train it again", utc_now(), model_id),
                )
        return deleted


def _job(row: sqlite3.Row) -> Job:
    return Job(
        job_id=row["job_id"],
        kind=row["kind"],
        status=row["status"],
        stage=row["stage"],
        progress=float(row["progress"]),
        error_code=row["error_code"],
        error=row["error"],
        spec=json.loads(row["spec"]),
        model_id=row["model_id"],
        attempts=int(row["attempts"]),
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _model(row: sqlite3.Row) -> ModelRecord:
    return ModelRecord(
        model_id=row["model_id"],
        job_id=row["job_id"],
        path=row["path"],
        labels=list(json.loads(row["labels"])),
        backbone=row["backbone"],
        head=row["head"],
        uri=row["uri"],
        created_at=row["created_at"],
    )
