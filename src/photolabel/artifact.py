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

import contextlib
import dataclasses
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from photolabel import fsutil, storage
from photolabel.config import TrainConfig
from photolabel.errors import (
    InsufficientStorageError,
    ModelError,
    ModelIntegrityError,
    OutputError,
    PhotolabelError,
    SourceNotFoundError,
)
from photolabel.fsutil import DIR_MODE
from photolabel.hashing import pretty_json, sha256_file, sha256_json

FORMAT = "photolabel-model"
FORMAT_VERSION = 1
MODEL_JSON = "model.json"
RUN_JSON = "run.json"


@dataclass(frozen=True)
class BackboneCard:
    """The backbone a model was trained with: its name, the hash of its weights and preprocessing."""

    name: str
    hash: str
    embedding_dim: int
    preprocessing: Mapping[str, Any]

    @property
    def image_size(self) -> tuple[int, int]:
        height, width = self.preprocessing["image_size"]
        return int(height), int(width)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "hash": self.hash, "embedding_dim": self.embedding_dim,
                "preprocessing": dict(self.preprocessing)}


@dataclass(frozen=True)
class HeadCard:
    """The head: its registered name, its version, every hyperparameter, and the seed it was fitted with."""

    name: str
    params: Mapping[str, Any]
    seed: int
    version: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "params": dict(self.params), "seed": self.seed}


@dataclass(frozen=True)
class ModelCard:
    """``model.json``: the one typed owner of that file. Read and written only here; everyone
    else uses its attributes.

    ``files`` (the sha256 of every other file) is filled in by :func:`write_model_dir`.
    """

    model_id: str
    labels: tuple[str, ...]
    backbone: BackboneCard
    head: HeadCard
    config: TrainConfig
    manifest_sha256: str
    photolabel_version: str = ""
    files: Mapping[str, str] = field(default_factory=dict)
    #: what training derived besides the head, each a JSON object or None (then not written):
    #: "calibration" (temperature, ...), "unknown" (thresholds, files), "finetune" (tuned blocks)
    calibration: Mapping[str, Any] | None = None
    unknown: Mapping[str, Any] | None = None
    finetune: Mapping[str, Any] | None = None
    #: the augmentation recipe of a model trained with ``config.augment`` views (views, version, recipe);
    #: its version enters the model id
    augment: Mapping[str, Any] | None = None
    #: the plan of the cross-validated search that chose the head (``config.tune``, ``preset="best"``;
    #: see :func:`photolabel.tuning.search_plan`); it enters the model id in place of the head's version
    tuning: Mapping[str, Any] | None = None
    #: False for cards written before heads had versions: their ids cannot be recomputed
    id_checkable: bool = field(default=True, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "labels": list(self.labels),
            "backbone": self.backbone.to_dict(),
            "head": self.head.to_dict(),
            "config": self.config.to_dict(),
            "manifest_sha256": self.manifest_sha256,
            "photolabel_version": self.photolabel_version,
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "files": dict(sorted(self.files.items())),
            **{name: dict(value) for name, value in (("calibration", self.calibration), ("unknown", self.unknown),
                                                     ("finetune", self.finetune), ("augment", self.augment),
                                                     ("tuning", self.tuning))
               if value is not None},
        }

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any], *, where: str = "model.json") -> ModelCard:
        """Parse a model.json document, including those written before heads had versions and
        configs carried head parameters and classes.

        Raises:
            ModelError: not a photolabel model, an unsupported format version, or a missing or
                malformed field; the message names ``where``.
        """
        if doc.get("format") != FORMAT:
            raise _model_error(where, "not a photolabel model file")
        if doc.get("format_version") != FORMAT_VERSION:
            raise _model_error(where, f"format version {doc.get('format_version')} is not supported "
                                      f"(this photolabel reads version {FORMAT_VERSION})")
        try:
            head = doc["head"]
            backbone = doc["backbone"]
            config = dict(doc["config"])
            # ids are recomputed only for cards that hold every setting the id covers now
            checkable = "version" in head and set(TrainConfig().to_dict()) <= set(config)
            if not config.get("head_params"):
                config["head_params"] = head.get("params") or {}
            card = cls(
                model_id=str(doc["model_id"]),
                labels=tuple(doc["labels"]),
                backbone=BackboneCard(str(backbone["name"]), str(backbone["hash"]), int(backbone["embedding_dim"]),
                                      dict(backbone["preprocessing"])),
                head=HeadCard(str(head["name"]), dict(head.get("params") or {}), int(head.get("seed", 0)),
                              int(head.get("version", 1))),
                config=TrainConfig.from_dict(config),
                manifest_sha256=str(doc.get("manifest_sha256", "")),
                photolabel_version=str(doc.get("photolabel_version", "")),
                files=_checked_files(doc.get("files", {}), where),
                calibration=doc.get("calibration"),
                unknown=doc.get("unknown"),
                finetune=doc.get("finetune"),
                augment=doc.get("augment"),
                tuning=doc.get("tuning"),
                id_checkable=checkable,
            )
            _check_references(card, where)
            return card
        except ModelError:
            raise
        except PhotolabelError as exc:
            raise _corrupt(where, str(exc)) from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            missing = f"missing field {exc}" if isinstance(exc, KeyError) else f"malformed ({exc})"
            raise _corrupt(where, missing) from None


# --- what model.json may name ---------------------------------------------------------------------

_DRIVE = re.compile(r"^[A-Za-z]:")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
#: sections of model.json that name a file of the model: (section, key, the name written by default)
FILE_REFERENCES: tuple[tuple[str, str], ...] = (("unknown", "centroids"), ("finetune", "tail_file"))


def unsafe_entry(name: object) -> str | None:
    """Why ``name`` cannot be a file of a model directory, or None when it can: it must be a relative
    POSIX path inside the directory (no absolute path, drive, backslash, NUL, empty, "." or ".." part).
    A pure string check: it reads nothing and serves local folders and storage URIs alike."""
    if not isinstance(name, str) or not name:
        return "is not a file name"
    if "\0" in name:
        return "holds a NUL character"
    if "\\" in name:
        return "holds a backslash; names inside a model use '/'"
    if name.startswith("/") or _DRIVE.match(name):
        return "is an absolute path; a model may only list files inside its directory"
    if any(part in ("", ".", "..") for part in name.split("/")):
        return "has an empty, '.' or '..' part; a model may only list files inside its directory"
    if name in (MODEL_JSON, RUN_JSON):
        return f"is {name}, which is not hashed"
    return None


def _checked_files(files: object, where: str) -> dict[str, str]:
    """model.json's ``files`` after the string checks: every name inside the directory, every hash a sha256."""
    if not isinstance(files, Mapping):
        raise _corrupt(where, "'files' is not an object of file names and their sha256")
    for name, digest in files.items():
        problem = unsafe_entry(name)
        if problem is not None:
            raise _corrupt(where, f"files lists {_shown_entry(name)}, which {problem}")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise _corrupt(where, f"files lists {_shown_entry(name)} with {digest!r}, which is not a sha256")
    return {str(name): str(digest) for name, digest in files.items()}


def _check_references(card: ModelCard, where: str) -> None:
    """Each file a section of the card names (the unknown answer's centroids, the fine-tuned tail) is a
    safe name that ``files`` lists, so it is hash-checked like the others."""
    for section_name, key in FILE_REFERENCES:
        section = getattr(card, section_name)
        if section is None or key not in section:
            continue
        if not isinstance(section, Mapping):
            raise _corrupt(where, f"'{section_name}' is not an object")
        name = section[key]
        problem = unsafe_entry(name)
        if problem is not None:
            raise _corrupt(where, f"{section_name}.{key} names {_shown_entry(name)}, which {problem}")
        if name not in card.files:
            raise _corrupt(where, f"{section_name}.{key} names {_shown_entry(name)}, which 'files' does not list")


def _shown_entry(name: object) -> str:
    text = repr(name)
    return text if len(text) <= 120 else text[:117] + "..."


def _model_error(where: str, detail: str, *, file: str = MODEL_JSON) -> ModelError:
    return ModelError(f"{where}: {detail}", detail=f"{file}: {detail}" if file else detail)


def _corrupt(where: str, detail: str, *, file: str = MODEL_JSON) -> ModelIntegrityError:
    """A failed integrity check. ``where`` names the place (a path or URI) for the message; ``detail``
    says what is wrong naming ``file`` relative to the model directory, for surfaces that show no paths."""
    return ModelIntegrityError(f"{where}: {detail}", detail=f"{file}: {detail}" if file else detail)


def compute_model_id(manifest_hash: str, config: TrainConfig, head_version: int | None, backbone_hash: str,
                     *, augment_version: int | None = None, search: Mapping[str, Any] | None = None) -> str:
    """The model id: sha256 over the manifest, the config (head parameters and label order included),
    the head's version, the backbone's hash and, for an augmented model, the augmentation recipe's
    version. A head chosen by a search has no version of its own here (None): the search's plan, which
    lists every candidate head's version, enters instead. Nothing that varies between runs enters it."""
    described = {"manifest_sha256": manifest_hash, "config": config.to_dict(), "head_version": head_version,
                 "backbone_hash": backbone_hash}
    if augment_version is not None:
        described["augment_version"] = augment_version
    if search is not None:
        described["search"] = dict(search)
    return sha256_json(described)


def check_card(card: ModelCard, lineage: Mapping[str, Any], where: str) -> None:
    """Check that model.json agrees with itself and with the lineage: its id is the hash of what it
    says determines the model, so an edited label list, config or backbone hash is refused.

    Cards written before heads had versions (no ``head.version``) are checked for their
    labels and manifest only: their ids were computed by an earlier formula.

    Raises:
        ModelError: naming ``where`` and what disagrees.
    """
    if lineage.get("manifest_sha256") not in (None, card.manifest_sha256):
        raise _corrupt(where, "manifest_sha256 differs from lineage.json's")
    if "labels" in lineage and tuple(lineage["labels"]) != card.labels:
        raise _corrupt(where, f"labels {list(card.labels)} differ from lineage.json's {lineage['labels']}")
    if not card.id_checkable:
        return
    if card.tuning is not None:  # a search chose the head: the config holds what was given, not what was chosen
        searched = [entry.get("head") for entry in card.tuning.get("heads", [])]
        if card.config.classes != card.labels or card.head.name not in searched:
            raise _corrupt(where, "labels or head differ from the config and search recorded beside them")
    elif card.config.classes != card.labels or dict(card.head.params) != dict(card.config.head_params):
        raise _corrupt(where, "labels or head parameters differ from the config recorded beside them")
    expected = compute_model_id(card.manifest_sha256, card.config,
                                None if card.tuning is not None else card.head.version, card.backbone.hash,
                                augment_version=(card.augment or {}).get("version"), search=card.tuning)
    if expected != card.model_id:
        raise _corrupt(where, f"model_id {card.model_id} is not the hash of the model's own description "
                              f"({expected}); the file was edited")


@dataclass
class ModelFiles:
    """The parsed documents of a model directory. ``path`` is where it is: a local folder, or a URI."""

    path: Path | str
    card: ModelCard
    metrics: dict[str, Any]
    lineage: dict[str, Any]
    run: dict[str, Any] | None


def write_model_dir(
    out: str | Path,
    *,
    card: ModelCard,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
    write_head: Any,
    run: dict[str, Any] | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> Path | str:
    """Write a model directory at ``out`` atomically.

    ``write_head(folder)`` writes the head's files into ``folder`` and returns their
    names. ``extra_files`` maps more relative names (``unknown/centroids.npy``) to bytes;
    they are hashed into model.json like the head's. The directory is assembled under a
    temporary name beside ``out`` and swapped with it in one atomic step (see "publishing" below), so that
    ``out`` holds the old model or the new one at every instant, whenever the process is killed. An
    existing ``out`` is replaced only if it is a photolabel model (or empty).

    ``out`` may also be a storage URI (``s3://bucket/models/x``, see :mod:`photolabel.storage`):
    the directory is staged locally, then uploaded with ``model.json`` last, so a reader
    never loads a half-written model (it finds no model.json, or one whose hashes fail).
    Returns ``out`` as a Path for a local directory, as the URI string otherwise.

    Raises:
        InsufficientStorageError: the disk, the quota or the file size limit is full (ENOSPC, EDQUOT,
            EFBIG); ``out`` is left as it was.
        OutputError: ``out`` cannot be written or replaced.
    """
    if not storage.is_local(out):
        try:
            return _upload_model_dir(str(out), card=card, metrics=metrics, lineage=lineage, write_head=write_head,
                                     run=run, extra_files=extra_files)
        except OSError as exc:
            if fsutil.is_storage_full(exc) and not isinstance(exc, InsufficientStorageError):
                raise _storage_full(str(out)) from None
            raise
    out = storage.local_path(out)
    try:
        return _write_model_dir(out, card=card, metrics=metrics, lineage=lineage, write_head=write_head, run=run,
                                extra_files=extra_files)
    except OSError as exc:
        if isinstance(exc, InsufficientStorageError):
            raise
        if fsutil.is_storage_full(exc):
            raise _storage_full(str(out)) from None
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"{out}: cannot write the model ({exc.strerror or exc})") from None


def _storage_full(out: str) -> InsufficientStorageError:
    return InsufficientStorageError(f"{out}: not enough storage space to write the model; free some space and "
                                    "train again (a model already there is left as it was)")


def _upload_model_dir(out: str, **parts: Any) -> str:
    existing = {name for name, _ in storage.list_tree(out)}
    if existing and MODEL_JSON not in existing:
        raise OutputError(f"{out}: holds files and no photolabel model", remedy="out")
    with tempfile.TemporaryDirectory(prefix="photolabel-model-") as folder:
        staged = _write_model_dir(Path(folder) / "model", **parts)
        storage.upload_tree(staged, out, last=MODEL_JSON)
    return out


# --- publishing: a model directory replaced in one step ---------------------------------------------
#
# A model is assembled in a staging folder beside OUT (".OUT.tmp-<host>-<pid>-<random>") and published by
# swapping it with OUT in one atomic step (Linux's renameat2 RENAME_EXCHANGE), so that OUT holds the
# old model or the new one at every instant; the old one, now under the staging name, is removed.
# Where no such swap exists, OUT is first renamed aside (".OUT.old-<host>-<pid>-<random>") and the new one
# renamed in: a process killed between the two leaves OUT missing and the old model aside, and the
# next write or read of OUT restores it. Leftovers of processes that died (of this host, whose pid no
# longer runs) are removed by the next write into the same parent folder.

_LEFTOVER = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<host>[A-Za-z0-9.]+)-(?P<pid>[0-9]+)-[0-9a-f]{8}$")


def _aside_name(out: Path, kind: str) -> Path:
    return out.parent / f".{out.name}.{kind}-{fsutil.process_tag()}-{secrets.token_hex(4)}"


def sweep_leftovers(parent: str | Path, *, name: str | None = None) -> list[Path]:
    """Clean ``parent`` after writers that died: restore a model left aside (``.M.old-*``) whose
    ``M`` is missing, and remove the other staging and old folders of processes that no longer run.
    With ``name``, only the leftovers of ``parent/name``. Returns the folders removed or restored."""
    folder = Path(parent)
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    touched: list[Path] = []
    for entry in entries:
        match = _LEFTOVER.match(entry.name)
        if match is None or (name is not None and match["name"] != name):
            continue
        if not fsutil.owner_gone(match["host"], match["pid"]):
            continue
        if entry.is_symlink() or not entry.is_dir():
            with contextlib.suppress(OSError):
                entry.unlink()
                touched.append(entry)
            continue
        target = folder / match["name"]
        if match["kind"] == "old" and not os.path.lexists(target) and (entry / MODEL_JSON).is_file():
            with contextlib.suppress(OSError):
                os.rename(entry, target)  # a publish that died between its two renames: the old model returns
                fsutil.fsync_dir(folder)
                touched.append(entry)
                continue
        shutil.rmtree(entry, ignore_errors=True)
        if not os.path.lexists(entry):
            touched.append(entry)
    return touched


def _write_model_dir(out: Path, *, card: ModelCard, metrics: dict[str, Any], lineage: dict[str, Any],
                     write_head: Any, run: dict[str, Any] | None, extra_files: Mapping[str, bytes] | None) -> Path:
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    sweep_leftovers(parent)
    if out.exists():
        _check_replaceable(out)
    staging = _aside_name(out, "tmp")
    staging.mkdir(mode=0o700)
    os.chmod(staging, DIR_MODE)
    try:
        head_names = write_head(staging / "head")
        (staging / "metrics.json").write_bytes(pretty_json(metrics))
        (staging / "lineage.json").write_bytes(pretty_json(lineage))
        files = {f"head/{name}": sha256_file(staging / "head" / name) for name in sorted(head_names)}
        for name, data in sorted((extra_files or {}).items()):
            if name in files or name in ("metrics.json", "lineage.json") or unsafe_entry(name) is not None:
                raise ValueError(f"extra file name {name!r} is taken or unsafe")
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_bytes(data)
            files[name] = sha256_file(staging / name)
        files["metrics.json"] = sha256_file(staging / "metrics.json")
        files["lineage.json"] = sha256_file(staging / "lineage.json")
        document = dataclasses.replace(card, files=files).to_dict()
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
        raise OutputError(f"{out}: exists and is not a directory", remedy="out")
    if any(out.iterdir()) and not (out / MODEL_JSON).is_file():
        raise OutputError(f"{out}: exists, is not empty and holds no photolabel model", remedy="out")


def _swap_into_place(staging: Path, out: Path) -> None:
    """Publish ``staging`` as ``out``; on return ``staging`` no longer exists."""
    parent = out.parent
    if not out.exists():
        os.rename(staging, out)  # refuses (ENOTEMPTY) to replace a folder that appeared meanwhile
        fsutil.fsync_dir(parent)
        return
    if fsutil.exchange_paths(staging, out):
        # one step: ``out`` is the new model, ``staging`` the old one (a folder, or a link to one)
        fsutil.fsync_dir(parent)
        if staging.is_symlink():
            staging.unlink()
        else:
            shutil.rmtree(staging, ignore_errors=True)
        return
    old = _aside_name(out, "old")
    os.rename(out, old)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(old, out)
        raise
    fsutil.fsync_dir(parent)
    shutil.rmtree(old, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        elif path.is_dir():
            fsutil.fsync_dir(path)
    fsutil.fsync_dir(folder)


def read_model_dir(location: str | Path, *, verify: bool = True) -> ModelFiles:
    """Read and check a model directory at a path or a storage URI.

    For a URI the files are downloaded into a temporary folder that is gone when this
    returns: ``ModelFiles.path`` is then the URI. Use :func:`open_model_dir` to work with
    the files themselves (the head's).

    Raises:
        ModelError: missing or malformed files, an unknown format version, a file whose
            sha256 differs from the one model.json records, or a model.json whose id is
            not the hash of what it describes.
    """
    with open_model_dir(location, verify=verify) as files:
        return files


@contextlib.contextmanager
def open_model_dir(location: str | Path, *, verify: bool = True) -> Iterator[ModelFiles]:
    """Like :func:`read_model_dir`, with the model's files on local disk while the block runs
    (downloaded into a temporary folder for a storage URI; then ``files.path`` is that folder
    inside the block, and the URI after it)."""
    if storage.is_local(location):
        yield _read_local_model_dir(storage.local_path(location), verify=verify)
        return
    uri = str(location)
    with tempfile.TemporaryDirectory(prefix="photolabel-model-") as folder:
        try:
            storage.download_tree(uri, folder, last=MODEL_JSON)
        except SourceNotFoundError:
            raise ModelError(f"{uri}: no such model (nothing stored there)",
                             detail="no such model (nothing stored there)") from None
        files = _read_local_model_dir(Path(folder), verify=verify, shown=uri)
        yield files
    files.path = uri


def _read_local_model_dir(path: Path, *, verify: bool, shown: str | None = None) -> ModelFiles:
    name = shown or str(path)
    if not path.exists() and shown is None:
        sweep_leftovers(path.parent, name=path.name)  # a publish that died half-way left the old model aside
    if not path.exists():
        raise _model_error(name, "no such model directory", file="")
    document_path = path / MODEL_JSON
    if not document_path.is_file():
        raise _model_error(name, f"not a photolabel model (no {MODEL_JSON})", file="")
    where = f"{name}/{MODEL_JSON}" if shown else str(document_path)
    card = ModelCard.from_dict(_read_json(document_path, where), where=where)
    # every listed name is confined to the folder (string checks in from_dict, links here) before any is read
    root = path.resolve()
    for file_name in sorted(card.files):
        if not (root / file_name).resolve().is_relative_to(root):
            raise _corrupt(where, f"files lists {file_name!r}, which leads outside the model directory")
    for file_name, expected in sorted(card.files.items()):
        file_path = path / file_name
        if not file_path.is_file():
            raise _corrupt(name, f"missing file {file_name}", file="")
        if verify:
            found = sha256_file(file_path)
            if found != expected:
                shown_file = f"{name}/{file_name}" if shown else str(file_path)
                raise ModelIntegrityError(
                    f"{shown_file}: sha256 {found} does not match {expected} recorded in model.json",
                    detail=f"{file_name}: sha256 {found} does not match {expected} recorded in model.json")
    run = _read_json(path / RUN_JSON, f"{name}/{RUN_JSON}", RUN_JSON) if (path / RUN_JSON).is_file() else None
    lineage = _read_json(path / "lineage.json", f"{name}/lineage.json", "lineage.json")
    if verify:
        check_card(card, lineage, where)
    return ModelFiles(path, card, _read_json(path / "metrics.json", f"{name}/metrics.json", "metrics.json"),
                      lineage, run)


def _read_json(path: Path, shown: str | None = None, entry: str = MODEL_JSON) -> dict[str, Any]:
    name = shown or str(path)
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except FileNotFoundError:
        raise _corrupt(name, "missing", file=entry) from None
    except OSError as exc:
        raise _corrupt(name, f"unreadable ({exc.strerror or type(exc).__name__})", file=entry) from None
    except ValueError as exc:
        raise _corrupt(name, f"unreadable JSON ({exc})", file=entry) from None
    if not isinstance(value, dict):
        raise _corrupt(name, "expected a JSON object", file=entry)
    return value
