"""Training: data set -> embeddings -> head -> model directory, reproducibly.

The steps after embedding are exact: rows are ordered by image sha256, the
validation split is derived from each image's hash and the seed, and heads are
fitted in float64 on one BLAS thread. The backbone gives bit-identical vectors
whatever the thread count or batch size (ONNX Runtime on CPU; checked by tests),
so the same images, config and seed give byte-identical model files.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from photolabel import __version__, storage
from photolabel.artifact import BackboneCard, HeadCard, ModelCard, compute_model_id, write_model_dir
from photolabel.backbones import get_backbone
from photolabel.cache import EmbeddingCache, resolve_cache_dir
from photolabel.config import RUNTIME_DEFAULTS, TRAIN_DEFAULTS, Runtime, TrainConfig, merge_overrides
from photolabel.dataset import BadInput, Dataset, ImageRecord, manifest_rows, manifest_sha256
from photolabel.embedding import embed_records
from photolabel.errors import DataError
from photolabel.evaluation import classification_metrics
from photolabel.fetch import FetchOptions
from photolabel.hashing import sha256_bytes
from photolabel.heads import get_head_class, make_head
from photolabel.model import Model

# Kept for callers of earlier versions; the defaults themselves are written in photolabel.config.
DEFAULT_SEED = TRAIN_DEFAULTS.seed
DEFAULT_VALID_FRACTION = TRAIN_DEFAULTS.valid_fraction
DEFAULT_BACKBONE = TRAIN_DEFAULTS.backbone
DEFAULT_HEAD = TRAIN_DEFAULTS.head
SPLIT_RULE = (
    "records from a valid/ folder are validation; otherwise, per label, images are ordered by "
    "sha256(f'{seed}:{image_sha256}') and the first round(n * valid_fraction) (at most n - 1) are validation"
)


@dataclass
class TrainResult:
    model: Model
    model_id: str
    path: Path | str  # a local folder, or the storage URI it was written to
    metrics: dict[str, Any]
    skipped: list[BadInput] = field(default_factory=list)
    embeddings_computed: int = 0
    embeddings_cached: int = 0
    n_train: int = 0
    n_valid: int = 0

    def summary(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "model_dir": str(self.path),
            "labels": list(self.model.labels),
            "backbone": self.model.card.backbone.name,
            "head": self.model.card.head.name,
            "head_params": dict(self.model.card.head.params),
            "n_train": self.n_train,
            "n_valid": self.n_valid,
            "validation": self.metrics.get("validation"),
            "embeddings": {"computed": self.embeddings_computed, "cached": self.embeddings_cached},
            "skipped": [{"image": b.source, "reason": b.reason} for b in self.skipped],
        }


def assign_splits(records: Sequence[ImageRecord], labels: Sequence[str], seed: int,
                  valid_fraction: float) -> list[ImageRecord]:
    """Records with split "train" or "valid"; see :data:`SPLIT_RULE`. Sorted by sha256."""
    explicit = any(r.split == "valid" for r in records)
    result: list[ImageRecord] = []
    by_label: dict[str, list[ImageRecord]] = {label: [] for label in labels}
    for record in records:
        if record.split in ("train", "valid") and explicit:
            result.append(record)
        else:
            by_label[record.label].append(record)
    for label in labels:
        group = by_label[label]
        if not group:
            continue
        if explicit:
            result.extend(_with_split(r, "train") for r in group)
            continue
        group.sort(key=lambda r: sha256_bytes(f"{seed}:{r.sha256}".encode()))
        n_valid = min(int(np.floor(len(group) * valid_fraction + 0.5)), len(group) - 1)
        result.extend(_with_split(r, "valid") for r in group[:n_valid])
        result.extend(_with_split(r, "train") for r in group[n_valid:])
    result.sort(key=lambda r: (r.sha256, r.label))
    return result


def _with_split(record: ImageRecord, split: str) -> ImageRecord:
    return ImageRecord(record.source, record.path, record.sha256, record.label, split)


def base_records(model: Model) -> list[ImageRecord]:
    """The training images of an existing model, rebuilt from its lineage (no bytes: cache only)."""
    rows = model.lineage.get("images", [])
    return [
        ImageRecord(f"{storage.basename(str(model.path))}:{row['sha256'][:12]}", None, row["sha256"],  # type: ignore[arg-type]
                    row["label"],
                    row.get("declared", "auto"))
        for row in rows
    ]


def union_labels(base: Sequence[str], new: Sequence[str], classes: Sequence[str] | None) -> tuple[str, ...]:
    """Labels of an incremental model: the base's order first, new labels appended (sorted)."""
    if classes:
        if tuple(classes[: len(base)]) != tuple(base):
            raise DataError(
                f"the base model's labels are {', '.join(base)} in that order; the classes must start with them",
                remedy="classes",
            )
        unknown = sorted(set(new) - set(classes))
        if unknown:
            raise DataError(f"label '{unknown[0]}' is not one of the classes {', '.join(classes)}")
        return tuple(classes)
    return tuple(base) + tuple(sorted(set(new) - set(base)))


def _union(base: Sequence[ImageRecord], new: Sequence[ImageRecord]) -> list[ImageRecord]:
    by_sha: dict[str, ImageRecord] = {}
    for record in [*base, *new]:
        seen = by_sha.get(record.sha256)
        if seen is None:
            by_sha[record.sha256] = record
        elif seen.label != record.label:
            raise DataError(
                f"{record.source} is labelled '{record.label}' but the same image is '{seen.label}' "
                f"in {seen.source}"
            )
    return list(by_sha.values())


def plan_model_id(records: Sequence[ImageRecord], labels: Sequence[str], config: TrainConfig,
                  backbone_hash: str) -> tuple[str, str]:
    """(model_id, manifest_sha256) of a model trained on exactly these records: no embedding needed."""
    manifest_hash = manifest_sha256(records, labels)
    resolved = config.replace(classes=tuple(labels))
    head_version = get_head_class(config.head).version
    return compute_model_id(manifest_hash, resolved, head_version, backbone_hash), manifest_hash


def train(
    data: str | Path | Dataset,
    out: str | Path,
    config: TrainConfig | None = None,
    runtime: Runtime | None = None,
    *,
    backbone: str | None = None,
    head: str | None = None,
    head_params: Mapping[str, Any] | None = None,
    seed: int | None = None,
    valid_fraction: float | None = None,
    classes: Sequence[str] | None = None,
    base_model: Model | str | Path | None = None,
    skip_bad: bool = False,
    threads: int | None = None,
    cache_dir: str | Path | None = None,
    batch_size: int | None = None,
    max_pixels: int | None = None,
    fetch_options: FetchOptions | None = None,
    progress: bool | None = None,
    write_run_json: bool = True,
    on_progress: Callable[[str, float], None] | None = None,
) -> TrainResult:
    """Train a model on ``data`` and write it to ``out``.

    ``data`` is a folder, an archive, a CSV manifest (see :func:`photolabel.sources.load_dataset`)
    or an already loaded :class:`Dataset`. What determines the model is ``config`` (a
    :class:`TrainConfig`); how it runs is ``runtime`` (a :class:`Runtime`). The keyword
    arguments of the same names override single fields of either, so
    ``train(data, out, head="svm", seed=7)`` works without building the objects.
    ``classes`` fixes the label order and refuses other labels. With ``skip_bad``,
    unreadable images are listed in the result's ``skipped`` instead of stopping the run.
    ``on_progress(stage, fraction)`` reports the stages "loading", "embedding", "fitting",
    "writing" and "done", with the overall fraction done in [0, 1].

    ``base_model`` (incremental training) adds ``data`` to that model's images: its
    labels keep their order and new labels are appended; its backbone, head, head
    parameters, seed and valid fraction are used (those given here are ignored). Only the
    new images are embedded; the base model's come from the embedding cache. The result
    is byte for byte the model that training once on the union would give.

    Raises:
        ConfigError: a setting out of range (named in ``field``).
        DataError, ImageError, FetchError, SourceNotFoundError: bad input, named in
            the message; nothing is written to ``out`` then.
    """
    started = time.time()
    config = merge_overrides(config or TRAIN_DEFAULTS, backbone=backbone, head=head, seed=seed,
                             valid_fraction=valid_fraction, classes=classes)
    if head_params is not None:
        config = config.replace(head_params=head_params)
    runtime = merge_overrides(runtime or RUNTIME_DEFAULTS, threads=threads, cache_dir=cache_dir,
                              batch_size=batch_size, max_pixels=max_pixels, fetch=fetch_options, progress=progress)

    def report(stage: str, fraction: float) -> None:
        if on_progress is not None:
            on_progress(stage, round(min(max(fraction, 0.0), 1.0), 4))

    report("loading", 0.0)
    base: Model | None = None
    wanted_classes = config.classes
    if base_model is not None:
        base = base_model if isinstance(base_model, Model) else Model.load(base_model, runtime=runtime)
        config = base.card.config.replace(classes=None)
    cache_root = resolve_cache_dir(runtime.cache_dir)
    if isinstance(data, Dataset):
        dataset, owned = data, False
    else:
        from photolabel.sources import load_dataset

        dataset = load_dataset(data, classes=None if base is not None else wanted_classes, skip_bad=skip_bad,
                               fetch_options=runtime.fetch, progress=runtime.progress, require_labels=base is None)
        owned = True
    try:
        extractor = get_backbone(config.backbone, threads=runtime.threads, cache_dir=cache_root)
        cache = EmbeddingCache(cache_root, extractor.hash, extractor.embedding_dim)
        records = list(dataset.records)
        labels = tuple(dataset.labels)
        if base is not None:
            labels = union_labels(base.labels, [r.label for r in records], wanted_classes)
            old = base_records(base)
            missing = [r for r in old if not cache.contains(r.sha256)]
            if missing:
                raise DataError(
                    f"{base.path}: the embeddings of {len(missing)} of its {len(old)} images are not in the "
                    f"cache {cache_root} (first: {missing[0].sha256}); train on the union of the data instead"
                )
            records = _union(old, records)
        skipped = list(dataset.skipped)
        embedded, problems = embed_records(
            records, extractor, cache=cache, skip_bad=skip_bad, runtime=runtime,
            on_progress=lambda done, total: report("embedding", 0.05 + 0.85 * done / max(total, 1)),
        )
        skipped.extend(problems)
        good = [records[i] for i in embedded.indices]
        vectors = {r.sha256: v for r, v in zip(good, embedded.vectors)}
        _check_labels(good, labels)
        model_id, manifest_hash = plan_model_id(good, labels, config, extractor.hash)
        config = config.replace(classes=labels)
        declared = {r.sha256: r.split for r in good}
        split_records = assign_splits(good, labels, config.seed, config.valid_fraction)
        head_model = make_head(config.head, seed=config.seed, params=config.head_params)
        label_index = {label: k for k, label in enumerate(labels)}
        train_rows = [r for r in split_records if r.split == "train"]
        valid_rows = [r for r in split_records if r.split == "valid"]
        X_train = np.stack([vectors[r.sha256] for r in train_rows]).astype(np.float64)
        y_train = np.array([label_index[r.label] for r in train_rows], dtype=np.int64)
        missing = [label for label in labels if label not in {r.label for r in train_rows}]
        if missing:
            raise DataError(f"label {missing[0]!r} has no training images left after the validation split")
        report("fitting", 0.9)
        head_model.fit(X_train, y_train, len(labels))

        metrics: dict[str, Any] = {
            "training": classification_metrics(y_train, head_model.predict_proba(X_train), labels),
            "validation": None,
        }
        if valid_rows:
            X_valid = np.stack([vectors[r.sha256] for r in valid_rows]).astype(np.float64)
            y_valid = np.array([label_index[r.label] for r in valid_rows], dtype=np.int64)
            metrics["validation"] = classification_metrics(y_valid, head_model.predict_proba(X_valid), labels)

        described = extractor.describe()
        card = ModelCard(
            model_id=model_id,
            labels=labels,
            backbone=BackboneCard(described["name"], described["hash"], described["embedding_dim"],
                                  described["preprocessing"]),
            head=HeadCard(config.head, head_model.get_params(), config.seed, type(head_model).version),
            config=config,
            manifest_sha256=manifest_hash,
            photolabel_version=__version__,
        )
        lineage = {
            "manifest_sha256": manifest_hash,
            "labels": list(labels),
            "split_rule": SPLIT_RULE,
            "row_order": "sorted by image sha256",
            "counts": {
                "train": len(train_rows),
                "valid": len(valid_rows),
                "per_label": {label: sum(1 for r in split_records if r.label == label) for label in labels},
            },
            "images": [dict(row, declared=declared[row["sha256"]]) for row in manifest_rows(split_records)],
        }
        run = None
        if write_run_json:
            run = {
                "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "duration_s": round(time.time() - started, 3),
                "host": platform.node(),
                "python": platform.python_version(),
                "data": _describe_data(data),
                "threads": runtime.threads,
                "embeddings": {"computed": embedded.computed, "cached": embedded.cached},
                "skipped": [{"image": b.source, "reason": b.reason} for b in skipped],
                "sources": {r.sha256: r.source for r in good},
                "base_model": str(base.path) if base is not None else None,
            }
        report("writing", 0.97)
        path = write_model_dir(out, card=card, metrics=metrics, lineage=lineage,
                               write_head=head_model.save, run=run)
        model = Model.load(path, runtime=runtime)
        model._backbone = extractor
        report("done", 1.0)
        return TrainResult(
            model=model,
            model_id=model_id,
            path=path,
            metrics=metrics,
            skipped=skipped,
            embeddings_computed=embedded.computed,
            embeddings_cached=embedded.cached,
            n_train=len(train_rows),
            n_valid=len(valid_rows),
        )
    finally:
        if owned:
            dataset.close()


def _describe_data(data: str | Path | Dataset) -> str | None:
    """What run.json records as the data: an absolute path, or a URI as given."""
    if isinstance(data, Dataset):
        return None
    text = str(data)
    return text if "://" in text else str(Path(text).resolve())


def _check_labels(records: Sequence[ImageRecord], labels: Sequence[str]) -> None:
    present = {r.label for r in records}
    for label in labels:
        if label not in present:
            raise DataError(f"label {label!r} has no usable images")
    if len(present) < 2:
        only = next(iter(present)) if present else "none"
        raise DataError(f"training needs at least two labels, found only {only!r}")
