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
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from photolabel import storage
from photolabel.config import TrainConfig
from photolabel.errors import ModelError, OutputError, PhotolabelError, SourceNotFoundError
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
            raise ModelError(f"{where}: not a photolabel model file")
        if doc.get("format_version") != FORMAT_VERSION:
            raise ModelError(
                f"{where}: format version {doc.get('format_version')} is not supported "
                f"(this photolabel reads version {FORMAT_VERSION})"
            )
        try:
            head = doc["head"]
            backbone = doc["backbone"]
            config = dict(doc["config"])
            # ids are recomputed only for cards that hold every setting the id covers now
            checkable = "version" in head and set(TrainConfig().to_dict()) <= set(config)
            if not config.get("head_params"):
                config["head_params"] = head.get("params") or {}
            return cls(
                model_id=str(doc["model_id"]),
                labels=tuple(doc["labels"]),
                backbone=BackboneCard(str(backbone["name"]), str(backbone["hash"]), int(backbone["embedding_dim"]),
                                      dict(backbone["preprocessing"])),
                head=HeadCard(str(head["name"]), dict(head.get("params") or {}), int(head.get("seed", 0)),
                              int(head.get("version", 1))),
                config=TrainConfig.from_dict(config),
                manifest_sha256=str(doc.get("manifest_sha256", "")),
                photolabel_version=str(doc.get("photolabel_version", "")),
                files=dict(doc.get("files", {})),
                calibration=doc.get("calibration"),
                unknown=doc.get("unknown"),
                finetune=doc.get("finetune"),
                augment=doc.get("augment"),
                tuning=doc.get("tuning"),
                id_checkable=checkable,
            )
        except PhotolabelError as exc:
            raise ModelError(f"{where}: {exc}") from None
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            missing = f"missing field {exc}" if isinstance(exc, KeyError) else f"malformed ({exc})"
            raise ModelError(f"{where}: {missing}") from None


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
        raise ModelError(f"{where}: manifest_sha256 differs from lineage.json's")
    if "labels" in lineage and tuple(lineage["labels"]) != card.labels:
        raise ModelError(f"{where}: labels {list(card.labels)} differ from lineage.json's {lineage['labels']}")
    if not card.id_checkable:
        return
    if card.tuning is not None:  # a search chose the head: the config holds what was given, not what was chosen
        searched = [entry.get("head") for entry in card.tuning.get("heads", [])]
        if card.config.classes != card.labels or card.head.name not in searched:
            raise ModelError(f"{where}: labels or head differ from the config and search recorded beside them")
    elif card.config.classes != card.labels or dict(card.head.params) != dict(card.config.head_params):
        raise ModelError(f"{where}: labels or head parameters differ from the config recorded beside them")
    expected = compute_model_id(card.manifest_sha256, card.config,
                                None if card.tuning is not None else card.head.version, card.backbone.hash,
                                augment_version=(card.augment or {}).get("version"), search=card.tuning)
    if expected != card.model_id:
        raise ModelError(f"{where}: model_id {card.model_id} is not the hash of the model's own description "
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
    temporary name beside ``out`` and renamed into place, so a crash never leaves a half model that loads. An
    existing ``out`` is replaced only if it is a photolabel model (or empty).

    ``out`` may also be a storage URI (``s3://bucket/models/x``, see :mod:`photolabel.storage`):
    the directory is staged locally, then uploaded with ``model.json`` last, so a reader
    never loads a half-written model (it finds no model.json, or one whose hashes fail).
    Returns ``out`` as a Path for a local directory, as the URI string otherwise.
    """
    if not storage.is_local(out):
        return _upload_model_dir(str(out), card=card, metrics=metrics, lineage=lineage, write_head=write_head,
                                 run=run, extra_files=extra_files)
    out = storage.local_path(out)
    try:
        return _write_model_dir(out, card=card, metrics=metrics, lineage=lineage, write_head=write_head, run=run,
                                extra_files=extra_files)
    except OSError as exc:
        if isinstance(exc, OutputError):
            raise
        raise OutputError(f"{out}: cannot write the model ({exc.strerror or exc})") from None


def _upload_model_dir(out: str, **parts: Any) -> str:
    existing = {name for name, _ in storage.list_tree(out)}
    if existing and MODEL_JSON not in existing:
        raise OutputError(f"{out}: holds files and no photolabel model", remedy="out")
    with tempfile.TemporaryDirectory(prefix="photolabel-model-") as folder:
        staged = _write_model_dir(Path(folder) / "model", **parts)
        storage.upload_tree(staged, out, last=MODEL_JSON)
    return out


def _write_model_dir(out: Path, *, card: ModelCard, metrics: dict[str, Any], lineage: dict[str, Any],
                     write_head: Any, run: dict[str, Any] | None, extra_files: Mapping[str, bytes] | None) -> Path:
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
        for name, data in sorted((extra_files or {}).items()):
            if name in files or name in (MODEL_JSON, RUN_JSON, "metrics.json", "lineage.json") or ".." in name:
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
            raise ModelError(f"{uri}: no such model (nothing stored there)") from None
        files = _read_local_model_dir(Path(folder), verify=verify, shown=uri)
        yield files
    files.path = uri


def _read_local_model_dir(path: Path, *, verify: bool, shown: str | None = None) -> ModelFiles:
    name = shown or str(path)
    if not path.exists():
        raise ModelError(f"{name}: no such model directory")
    document_path = path / MODEL_JSON
    if not document_path.is_file():
        raise ModelError(f"{name}: not a photolabel model (no {MODEL_JSON})")
    where = f"{name}/{MODEL_JSON}" if shown else str(document_path)
    card = ModelCard.from_dict(_read_json(document_path, where), where=where)
    for file_name, expected in sorted(card.files.items()):
        file_path = path / file_name
        if not file_path.is_file():
            raise ModelError(f"{name}: missing file {file_name}")
        if verify:
            found = sha256_file(file_path)
            if found != expected:
                shown_file = f"{name}/{file_name}" if shown else str(file_path)
                raise ModelError(f"{shown_file}: sha256 {found} does not match {expected} recorded in model.json")
    run = _read_json(path / RUN_JSON, f"{name}/{RUN_JSON}") if (path / RUN_JSON).is_file() else None
    lineage = _read_json(path / "lineage.json", f"{name}/lineage.json")
    if verify:
        check_card(card, lineage, where)
    return ModelFiles(path, card, _read_json(path / "metrics.json", f"{name}/metrics.json"),
                      lineage, run)


def _read_json(path: Path, shown: str | None = None) -> dict[str, Any]:
    name = shown or str(path)
    try:
        with open(path, encoding="utf-8") as handle:
            value = json.load(handle)
    except FileNotFoundError:
        raise ModelError(f"{name}: missing") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"{name}: unreadable JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ModelError(f"{name}: expected a JSON object")
    return value
