"""The model directory: small, hashed, no pickle, written atomically.

Layout::

    MODEL_DIR/
      model.json     labels, backbone (name, hash, preprocessing), head, config,
                     model_id, and the sha256 of every other file below
      head/          the head's learned state (.npy arrays or head.onnx)
      metrics.json   validation metrics
      lineage.json   manifest hash and every training image's sha256, label, split
      run.json       optional: what varies between runs (times, host, paths);
                     not hashed, not covered by the reproducibility promise

Everything but run.json is a pure function of (images, labels, config, seed,
backbone hash): training twice gives the same bytes.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from photolabel.errors import ModelError, OutputError
from photolabel.fsutil import DIR_MODE
from photolabel.hashing import pretty_json, sha256_file

FORMAT = "photolabel-model"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
RUN_JSON = "run.json"


@dataclass
class ModelFiles:
    """The parsed JSON documents of a model directory."""

    path: Path
    model: dict[str, Any]
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    run: dict[str, Any] | None


def write_model_dir(
    out: str | Path,
    *,
    model: dict[str, Any],
    metrics: dict[str, Any],
    lineage: dict[str, Any],
    write_head: Any,
    run: dict[str, Any] | None = None,
) -> Path:
    """Write a model directory at ``out`` atomically.

    ``write_head(folder)`` writes the head's files into ``folder`` and returns their
    names. The directory is assembled under a temporary name beside ``out`` and
    renamed into place, so a crash never leaves a half model that loads. An
    existing ``out`` is replaced only if it is a photolabel model (or empty).
    """
    out = Path(out)
    try:
        return _write_model_dir(out, model=model, metrics=metrics, lineage=lineage, write_head=write_head, run=run)
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"{out}: cannot write the model ({exc.strerror or exc})") from None


def _write_model_dir(out: Path, *, model: dict[str, Any], metrics: dict[str, Any], lineage: dict[str, Any],
                     write_head: Any, run: dict[str, Any] | None) -> Path:
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        _check_replaceable(out)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=f".{out.name}.tmp-"))
    os.chmod(staging, DIR_MODE)
    try:
        head_names = write_head(staging / "head")
        (staging / "metrics.json").write_bytes(pretty_json(metrics))
        (staging / "lineage.json").write_bytes(pretty_json(lineage))
        files = {f"head/{name}": sha256_file(staging / "head" / name) for name in sorted(head_names)}
        files["metrics.json"] = sha256_file(staging / "metrics.json")
        files["lineage.json"] = sha256_file(staging / "lineage.json")
        document = dict(model, format=FORMAT, format_version=FORMAT_VERSION, files=files)
        (staging / MODEL_JSON).write_bytes(pretty_json(document))
        if run is not None:
            (staging / RUN_JSON).write_bytes(pretty_json(run))
        _fsync_tree(staging)
        _swap_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def _check_replaceable(out: Path) -> None:
    if not out.is_dir():
        raise ModelError(f"{out}: exists and is not a directory; choose another --out")
    if any(out.iterdir()) and not (out / MODEL_JSON).is_file():
        raise ModelError(f"{out}: exists, is not empty and holds no photolabel model; choose another --out")


def _swap_into_place(staging: Path, out: Path) -> None:
    if not out.exists():
        os.replace(staging, out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    old.rmdir()
    os.replace(out, old)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def read_model_dir(path: str | Path, *, verify: bool = True) -> ModelFiles:
    """Read and check a model directory.

    Raises:
        ModelError: missing or malformed files, an unknown format version, or a file
            whose sha256 differs from the one model.json records.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: no such model directory")
    document_path = path / MODEL_JSON
    if not document_path.is_file():
        raise ModelError(f"{path}: not a photolabel model (no {MODEL_JSON})")
    model = _read_json(document_path)
    if model.get("format") != FORMAT:
        raise ModelError(f"{document_path}: not a photolabel model file")
    if model.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{document_path}: format version {model.get('format_version')} is not supported "
            f"(this photolabel reads version {FORMAT_VERSION})"
        )
    files = model.get("files", {})
    for name, expected in sorted(files.items()):
        file_path = path / name
        if not file_path.is_file():
            raise ModelError(f"{path}: missing file {name}")
        if verify:
            found = sha256_file(file_path)
            if found != expected:
                raise ModelError(f"{file_path}: sha256 {found} does not match {expected} recorded in model.json")
    run = _read_json(path / RUN_JSON) if (path / RUN_JSON).is_file() else None
    return ModelFiles(path, model, _read_json(path / "metrics.json"), _read_json(path / "lineage.json"), run)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except FileNotFoundError:
        raise ModelError(f"{path}: missing") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{path}: unreadable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ModelError(f"{path}: expected a JSON object")
    return value
