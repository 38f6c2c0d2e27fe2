"""Training: data set -> embeddings -> head -> model directory, reproducibly.

The steps after embedding are exact: rows are ordered by image sha256, the
validation split is derived from each image's hash and the seed, and heads are
fitted in float64 on one BLAS thread. The backbone gives bit-identical vectors
whatever the thread count or batch size (ONNX Runtime on CPU; checked by tests),
so the same images, config and seed give byte-identical model files.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from photolabel import __version__, storage, tuning
from photolabel.artifact import BackboneCard, HeadCard, ModelCard, compute_model_id, write_model_dir
from photolabel.augment import describe_augmentation, embed_views, with_views
from photolabel.backbones import get_backbone
from photolabel.balance import SELECTION_RULE, UNUSED, balanced_weights, limit_per_label
from photolabel.cache import EmbeddingCache, resolve_cache_dir
from photolabel.config import RUNTIME_DEFAULTS, TRAIN_DEFAULTS, Runtime, TrainConfig, merge_overrides
from photolabel.dataset import (
    BadInput,
    Dataset,
    Duplicate,
    ImageRecord,
    describe_duplicates,
    manifest_rows,
    manifest_sha256,
)
from photolabel.embedding import embed_records
from photolabel.errors import DataError
from photolabel.evaluation import classification_metrics
from photolabel.fetch import FetchOptions
from photolabel.finetune import TunedTail, finetune_rows, trunk_for, tune_tail
from photolabel.hashing import sha256_bytes
from photolabel.heads import get_head_class, make_head
from photolabel.model import Model
from photolabel.openset import fit_calibration_and_unknown
from photolabel.tensorboard import scalars_to

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
    duplicates: list[Duplicate] = field(default_factory=list)  # images listed more than once, trained on once

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
            "calibration": self.metrics.get("calibration"),
            "unknown": self.metrics.get("unknown"),
            "embeddings": {"computed": self.embeddings_computed, "cached": self.embeddings_cached},
            "skipped": [{"image": b.source, "reason": b.reason} for b in self.skipped],
            "duplicates": describe_duplicates(self.duplicates, examples=5),
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
    search = tuning.search_plan(resolved)  # a searched head's candidates' versions are in the plan
    head_version = None if search is not None else get_head_class(config.head).version
    augment_version = (describe_augmentation(config.augment) or {}).get("version")  # as the card records it
    return compute_model_id(manifest_hash, resolved, head_version, backbone_hash,
                            augment_version=augment_version, search=search), manifest_hash


def train(
    data: str | Path | Dataset | Any,
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
    augment: int | None = None,
    finetune: bool | None = None,
    max_per_label: int | None = None,
    balance: bool | None = None,
    tune: bool | None = None,
    preset: str | None = None,
    calibrate: bool | None = None,
    unknown: bool | None = None,
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
    on_stage: Callable[[str, int, int], None] | None = None,
) -> TrainResult:
    """Train a model on ``data`` and write it to ``out``.

    ``data`` is a folder, an archive, a CSV manifest (see :func:`photolabel.sources.load_dataset`),
    an already loaded :class:`Dataset`, or images in memory: ``(image, label)`` pairs or a DataFrame
    with ``image`` and ``label`` columns, each image a path, URI, bytes, PIL image or RGB array (see
    :func:`photolabel.inputs.labelled_items`; the same files give the same model as their folder).
    What determines the model is ``config`` (a
    :class:`TrainConfig`); how it runs is ``runtime`` (a :class:`Runtime`). The keyword
    arguments of the same names override single fields of either, so
    ``train(data, out, head="svm", seed=7)`` works without building the objects.
    ``classes`` fixes the label order and refuses other labels. With ``skip_bad``,
    unreadable images are listed in the result's ``skipped`` instead of stopping the run.
    ``on_progress(stage, fraction)`` reports the stages "loading", "embedding", "fitting",
    "writing" and "done", with the overall fraction done in [0, 1]. ``on_stage(stage, done, total)``
    reports each step as it goes: "reading", "hashing", "embedding", "augmenting", "fitting", "writing",
    "done", with the images (or candidates) done of the total where that is known (0, 0 otherwise).

    ``max_per_label`` keeps at most N training images per label (0: the smallest label's
    count, the static-transfer-learning service's DATA_LIMIT; see
    :data:`photolabel.balance.SELECTION_RULE`); ``balance`` weights labels inversely to their
    training counts; ``tune`` chooses the head's parameters and ``preset="best"`` the head too,
    by k-fold cross-validation on the training split (see :mod:`photolabel.tuning`).
    ``calibrate`` fits a temperature on the validation images (:mod:`photolabel.calibration`);
    ``unknown`` lets the model answer "unknown" (:mod:`photolabel.openset`). Both are on by default.
    ``finetune`` also trains the backbone's last blocks on the training split (:mod:`photolabel.finetune`);
    the head is then fitted on the tuned embeddings.

    ``base_model`` (incremental training) adds ``data`` to that model's images: its
    labels keep their order and new labels are appended; its backbone, head, head
    parameters, seed, valid fraction and the other settings of its config are used (those given
    here are ignored). Only the
    new images are embedded; the base model's come from the embedding cache. The result
    is byte for byte the model that training once on the union would give.

    Raises:
        ConfigError: a setting out of range (named in ``field``).
        DataError, ImageError, FetchError, SourceNotFoundError: bad input, named in
            the message; nothing is written to ``out`` then.
    """
    started = time.time()
    config = merge_overrides(config or TRAIN_DEFAULTS, backbone=backbone, head=head, seed=seed,
                             valid_fraction=valid_fraction, classes=classes, augment=augment, finetune=finetune,
                             max_per_label=max_per_label, balance=balance, tune=tune, preset=preset,
                             calibrate=calibrate, unknown=unknown)
    if head_params is not None:
        config = config.replace(head_params=head_params)
    runtime = merge_overrides(runtime or RUNTIME_DEFAULTS, threads=threads, cache_dir=cache_dir,
                              batch_size=batch_size, max_pixels=max_pixels, fetch=fetch_options, progress=progress)

    def report(stage: str, fraction: float, done: int = 0, total: int = 0, step: str | None = None) -> None:
        if on_progress is not None:
            on_progress(stage, round(min(max(fraction, 0.0), 1.0), 4))
        if on_stage is not None:
            on_stage(step or stage, done, total)

    report("loading", 0.0, step="reading")
    base: Model | None = None
    wanted_classes = config.classes
    if base_model is not None:
        base = base_model if isinstance(base_model, Model) else Model.load(base_model, runtime=runtime)
        config = base.card.config.replace(classes=None)
    cache_root = resolve_cache_dir(runtime.cache_dir)
    if isinstance(data, Dataset):
        dataset, owned = data, False
    else:
        from photolabel.inputs import open_labelled_data

        dataset = open_labelled_data(data, classes=None if base is not None else wanted_classes, skip_bad=skip_bad,
                                     fetch_options=runtime.fetch, progress=runtime.progress,
                                     require_labels=base is None, archive_limits=runtime.archive_limits,
                                     csv_limits=runtime.csv_limits)
        owned = True
    report("loading", 0.05, len(dataset.records), len(dataset.records), step="hashing")
    try:
        extractor = get_backbone(config.backbone, threads=runtime.threads, cache_dir=cache_root)
        if config.finetune:  # what is embedded and cached is the activation at the cut (photolabel.finetune)
            extractor = trunk_for(extractor)
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
        duplicates = list(dataset.duplicates)
        report("embedding", 0.05, 0, len(records))  # shown at once: the first batch may take a while
        embedded, problems = embed_records(
            records, extractor, cache=cache, skip_bad=skip_bad, runtime=runtime,
            # with augmentation, the views (embedded after the split) take the rest of this stage
            on_progress=lambda done, total: report("embedding", 0.05 + 0.85 * done / max(total, 1)
                                                   / (1 + config.augment), done, total),
        )
        skipped.extend(problems)
        good = [records[i] for i in embedded.indices]
        vectors = {r.sha256: v for r, v in zip(good, embedded.vectors)}
        _check_labels(good, labels)
        model_id, manifest_hash = plan_model_id(good, labels, config, extractor.hash)
        config = config.replace(classes=labels)
        declared = {r.sha256: r.split for r in good}
        split_records = assign_splits(good, labels, config.seed, config.valid_fraction)
        split_records = limit_per_label(split_records, labels, config.seed, config.max_per_label)
        head_model = make_head(config.head, seed=config.seed, params=config.head_params)
        label_index = {label: k for k, label in enumerate(labels)}
        train_rows = [r for r in split_records if r.split == "train"]
        valid_rows = [r for r in split_records if r.split == "valid"]
        tuned: TunedTail | None = None
        if config.finetune:  # the tail tuned on the training rows' activations; all that follows sees its embeddings
            report("fitting", 0.9)
            tuned, vectors = finetune_rows(extractor, vectors, train_rows, labels, config.seed)  # type: ignore[arg-type]
            extractor = tuned.backbone
            cache = EmbeddingCache(cache_root, extractor.hash, extractor.embedding_dim)  # augmented views' embeddings
            model_id, manifest_hash = plan_model_id(good, labels, config, extractor.hash)
        X_train = np.stack([vectors[r.sha256] for r in train_rows]).astype(np.float64)
        y_train = np.array([label_index[r.label] for r in train_rows], dtype=np.int64)
        if config.augment:  # each training image followed by its views, with its label; validation has none
            views = embed_views(
                train_rows, extractor, views=config.augment, seed=config.seed, cache=cache, runtime=runtime,
                on_progress=lambda done, total: report(
                    "embedding", 0.05 + 0.85 * (1 + config.augment * done / max(total, 1)) / (1 + config.augment),
                    done, total, step="augmenting"),
            )
            X_train, y_train = with_views(X_train, y_train, views.vectors)
            embedded.computed += views.computed
            embedded.cached += views.cached
        missing = [label for label in labels if label not in {r.label for r in train_rows}]
        if missing:
            raise DataError(f"label {missing[0]!r} has no training images left after the validation split")
        report("fitting", 0.9)
        sample_weight = balanced_weights(y_train, len(labels)) if config.balance else None
        search_plan = tuning.search_plan(config)
        tuning_metrics: dict[str, Any] = {}
        if search_plan is not None:
            # tune / preset "best": k-fold search on the training rows only, over each feature variant
            # (preset "best" adds augmented views when none were asked for); the lowest log-loss wins
            best_search: tuple[float, int, Any, dict[str, Any], np.ndarray, np.ndarray, Any] | None = None
            activations: dict[str, np.ndarray] | None = None  # the trunk's, for a fine-tuned variant
            variants = tuning.feature_variants(config)
            for index, variant in enumerate(variants):
                X_variant, y_variant, weight_variant = X_train, y_train, sample_weight
                if variant["augment"] != config.augment:
                    extra = embed_views(train_rows, extractor, views=variant["augment"], seed=config.seed,
                                        cache=cache, runtime=runtime)
                    X_variant, y_variant = with_views(X_train, y_train, extra.vectors)
                    weight_variant = balanced_weights(y_variant, len(labels)) if config.balance else None
                    embedded.computed += extra.computed
                    embedded.cached += extra.cached
                keys, originals = _row_images(train_rows, len(X_variant))
                fold_features = None
                if variant["finetune"] and not config.finetune:  # preset best: a tail tuned per fold
                    report("fitting", 0.9)
                    activations = _trunk_activations(good, extractor, cache_root, runtime, embedded)
                    fold_features = _fold_tuned_features(extractor, activations, train_rows, y_train, labels,
                                                         config.seed)
                chosen_here, table = tuning.search(
                    config, X_variant, y_variant, len(labels), weight_variant, keys=keys, scored=originals,
                    threads=runtime.threads or os.cpu_count() or 1, variant=variant, fold_features=fold_features,
                    on_progress=lambda done, total: report("fitting", 0.9 + 0.06 * done / max(total, 1), done, total),
                )
                table["features"] = variant
                score = table["candidates"][table["chosen"]["index"]]["mean_log_loss"]
                if best_search is None or score < best_search[0]:
                    best_search = (score, index, chosen_here, table, X_variant, y_variant, weight_variant)
                tuning_metrics.setdefault("tuning_variants", []).append(table)
            assert best_search is not None
            _, chosen_index, chosen, tuning_metrics["tuning"], X_train, y_train, sample_weight = best_search
            if len(tuning_metrics["tuning_variants"]) == 1:
                del tuning_metrics["tuning_variants"]
            if variants[chosen_index]["finetune"] and not config.finetune:
                # the fine-tuned variant won: tune the tail on every training row; all that follows sees it
                assert activations is not None
                tuned, vectors = finetune_rows(trunk_for(extractor), activations, train_rows, labels, config.seed)
                extractor = tuned.backbone
                model_id, manifest_hash = plan_model_id(good, labels, config, extractor.hash)
                X_train = np.stack([vectors[r.sha256] for r in train_rows]).astype(np.float64)
            head_model = make_head(chosen.head, seed=config.seed, params=chosen.params)
        with scalars_to(runtime.tensorboard_dir, head_model):  # a head trained in epochs logs its curves
            head_model.fit(X_train, y_train, len(labels), sample_weight=sample_weight)

        X_valid = (np.stack([vectors[r.sha256] for r in valid_rows]).astype(np.float64) if valid_rows
                   else np.zeros((0, X_train.shape[1])))
        y_valid = np.array([label_index[r.label] for r in valid_rows], dtype=np.int64)
        # After the head: the temperature, then the unknown tests (centroids of the images, not augmented views).
        post, post_metrics = fit_calibration_and_unknown(
            head_model, np.stack([vectors[r.sha256] for r in train_rows]).astype(np.float64),
            np.array([label_index[r.label] for r in train_rows], dtype=np.int64), X_valid, y_valid, len(labels),
            calibrate=config.calibrate, unknown=config.unknown)
        valid_probabilities = post.predict_proba(head_model, X_valid, len(labels))
        metrics: dict[str, Any] = {
            "training": classification_metrics(y_train, post.predict_proba(head_model, X_train, len(labels)), labels),
            "validation": classification_metrics(y_valid, valid_probabilities, labels,
                                                 unknown=post.unknown_tests(X_valid, valid_probabilities))
                          if valid_rows else None,
            **post_metrics,
            **tuning_metrics,
            **({"finetune": tuned.metrics()} if tuned is not None else {}),
            # images listed twice: the count and sha256s only, so the file is the same wherever the data lies
            **({"duplicates": {
                "count": len(duplicates),
                "sha256": [example["sha256"] for example in describe_duplicates(duplicates, examples=5)["examples"]],
            }} if duplicates else {}),
        }
        if runtime.tensorboard_dir is not None:
            _log_search_and_finetune(runtime.tensorboard_dir, metrics)

        described = extractor.describe()
        card = ModelCard(
            model_id=model_id,
            labels=labels,
            backbone=BackboneCard(described["name"], described["hash"], described["embedding_dim"],
                                  described["preprocessing"]),
            head=HeadCard(head_model.name, head_model.get_params(), config.seed, type(head_model).version),
            config=config,
            manifest_sha256=manifest_hash,
            photolabel_version=__version__,
            calibration=post.calibration.to_card() if post.calibration is not None else None,
            unknown=post.unknown.to_card() if post.unknown is not None else None,
            augment=describe_augmentation(config.augment),  # a preset's chosen views are in the search plan
            finetune=tuned.section if tuned is not None else None,
            tuning=search_plan,
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
                **({"unused": sum(1 for r in split_records if r.split == UNUSED)}
                   if config.max_per_label is not None else {}),
            },
            **({"selection_rule": SELECTION_RULE} if config.max_per_label is not None else {}),
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
                "duplicates": describe_duplicates(duplicates, examples=len(duplicates))["examples"],
                "base_model": str(base.path) if base is not None else None,
            }
        report("writing", 0.97)
        path = write_model_dir(out, card=card, metrics=metrics, lineage=lineage,
                               write_head=head_model.save, run=run,
                               extra_files={**post.files(), **(tuned.files() if tuned is not None else {})})
        model = Model.load(path, runtime=runtime)
        model._backbone = extractor
        report("done", 1.0, 1, 1)
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
            duplicates=duplicates,
        )
    finally:
        if owned:
            dataset.close()


def _trunk_activations(records: Sequence[ImageRecord], backbone: Any, cache_root: Path, runtime: Runtime,
                       embedded: Any) -> dict[str, np.ndarray]:
    """The activations at the fine-tuning cut of ``backbone`` for ``records`` (cached like embeddings,
    under the trunk's hash), keyed by sha256; ``embedded``'s counts grow by what was computed."""
    trunk = trunk_for(backbone)
    result, _ = embed_records(records, trunk, cache=EmbeddingCache(cache_root, trunk.hash, trunk.embedding_dim),
                              skip_bad=False, runtime=runtime)
    embedded.computed += result.computed
    embedded.cached += result.cached
    return {records[i].sha256: vector for i, vector in zip(result.indices, result.vectors)}


def _fold_tuned_features(backbone: Any, activations: Mapping[str, np.ndarray], train_rows: Sequence[ImageRecord],
                         y_train: np.ndarray, labels: Sequence[str], seed: int) -> Callable[[int], np.ndarray]:
    """For the search's fold h: the training rows' embeddings through a tail fine-tuned on the rows of the
    other folds only (the same folds as :func:`photolabel.tuning.fold_assignment` gives the search)."""
    trunk = trunk_for(backbone)
    keys = [r.sha256 for r in train_rows]
    fold, _ = tuning.fold_assignment(y_train, keys, seed, labels=labels)
    train_activations = np.stack([activations[key] for key in keys])

    def features(held_out: int) -> np.ndarray:
        fit = fold != held_out
        tuned = tune_tail(trunk, train_activations[fit], y_train[fit], len(labels),
                          [key for key, keep in zip(keys, fit) if keep], seed)
        return tuned.backbone.embed_activations(train_activations).astype(np.float64)

    return features


def _row_images(train_rows: Sequence[ImageRecord], n_rows: int) -> tuple[list[str], np.ndarray]:
    """Each training row's image sha256, and whether the row is the image itself rather than one of its
    augmented views (``with_views`` puts an image's views right after it)."""
    per_image = n_rows // max(len(train_rows), 1)
    keys = [r.sha256 for r in train_rows for _ in range(per_image)]
    return keys, np.arange(n_rows) % per_image == 0


def _log_search_and_finetune(logdir: str | Path, metrics: dict[str, Any]) -> None:
    """TensorBoard events for what is not a head's own curve: the fine-tuned block's loss and accuracy
    per epoch, and the search table (one text summary). Never changes the model."""
    from photolabel.tensorboard import EventWriter, markdown_table

    finetune, search = metrics.get("finetune"), metrics.get("tuning")
    if finetune is None and search is None:
        return
    with EventWriter(logdir) as writer:
        for point in (finetune or {}).get("curves", []):
            for name, tag in (("train_loss", "finetune/loss/train"), ("holdout_loss", "finetune/loss/early_stopping"),
                              ("holdout_accuracy", "finetune/accuracy/early_stopping")):
                if name in point:
                    writer.scalar(tag, point[name], point["epoch"])
        if search is not None:
            rows = [(row["head"], ", ".join(f"{k}={v}" for k, v in row["params"].items()),
                     row.get("mean_log_loss", row.get("skipped", "")), row.get("mean_accuracy", ""))
                    for row in search["candidates"]]
            writer.text("search", markdown_table(("head", "params", "mean log-loss", "mean accuracy"), rows))


def _describe_data(data: str | Path | Dataset | Any) -> str | None:
    """What run.json records as the data: an absolute path, or a URI as given (None for images in memory)."""
    if not isinstance(data, (str, os.PathLike)):
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
