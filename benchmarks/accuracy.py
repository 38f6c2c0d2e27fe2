"""Accuracy of photolabel's settings, cross-validated on data no default was chosen on.

For each data set of ``benchmarks/datasets.py`` (fashion-tiny's photos and scikit-learn's
handwritten digits), only the **report half** is used: defaults were chosen on the other
half (``benchmarks/choose_defaults.py``). The report half is cut into k stratified folds
(by sha256 order); each setting is trained with ``photolabel.train`` on k - 1 folds (which
holds out its own validation share for calibration and "unknown") and scored on the
k-th: accuracy of the most probable label, log-loss and expected calibration error of the
calibrated probabilities, the share answered "unknown", and the training time (embedding
cache warm after the first setting, so the time is mostly fitting and searching).

Usage: python benchmarks/accuracy.py [--folds 3] [--datasets fashion-tiny,digits] [--settings default,svm,...]
Prints one table (markdown, as in the README).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets

import photolabel
from photolabel.calibration import expected_calibration_error, log_loss
from photolabel.dataset import Dataset, ImageRecord

FIRST_WAVE = {"backbone": "efficientnet-lite0", "tune": False, "calibrate": False, "unknown": False}

#: name -> photolabel.train keyword arguments
SETTINGS: dict[str, dict[str, Any]] = {
    "first release default (Lite0 logistic C=1)": dict(FIRST_WAVE),
    "first release --head svm": {**FIRST_WAVE, "head": "svm"},
    "first release --head lda": {**FIRST_WAVE, "head": "lda"},
    "first release --head rf": {**FIRST_WAVE, "head": "rf"},
    "first release --head knn": {**FIRST_WAVE, "head": "knn"},
    "default": {},
    "--head svm": {"head": "svm"},
    "--head mlp": {"head": "mlp"},
    "--augment 2": {"augment": 2},
    "--finetune": {"finetune": True},
    "--tune --head svm": {"head": "svm", "tune": True},
    "--preset best": {"preset": "best"},
}


def folds_of(items: list[datasets.Item], k: int) -> list[list[datasets.Item]]:
    folds: list[list[datasets.Item]] = [[] for _ in range(k)]
    for label in sorted({item.label for item in items}):
        ranked = sorted((item for item in items if item.label == label), key=lambda item: item.sha256)
        for index, item in enumerate(ranked):
            folds[index % k].append(item)
    return folds


def as_dataset(items: list[datasets.Item], labels: list[str]) -> Dataset:
    records = [ImageRecord(str(item.path), item.path, item.sha256, item.label) for item in items]
    return Dataset(records=records, labels=tuple(labels))


def run(name: str, items: list[datasets.Item], setting: dict[str, Any], k: int, cache: Path) -> dict[str, float]:
    labels = sorted({item.label for item in items})
    folds = folds_of(items, k)
    correct, probs_all, y_all, unknown, seconds = 0, [], [], 0, 0.0
    for held in range(k):
        train_items = [item for f, fold in enumerate(folds) if f != held for item in fold]
        with tempfile.TemporaryDirectory() as out:
            started = time.perf_counter()
            result = photolabel.train(as_dataset(train_items, labels), Path(out) / "m", cache_dir=cache,
                                      seed=7, write_run_json=False, **setting)
            seconds += time.perf_counter() - started
            predictions = result.model.predict_batch([item.path for item in folds[held]])
        for item, prediction in zip(folds[held], predictions):
            scores = np.array([prediction.scores[label] for label in labels])
            probs_all.append(scores)
            y_all.append(labels.index(item.label))
            best = getattr(prediction, "best", "") or prediction.label
            correct += best == item.label
            unknown += bool(getattr(prediction, "unknown", False))
    probs, y = np.array(probs_all), np.array(y_all)
    return {"accuracy": correct / len(y), "log_loss": log_loss(probs, y), "ece": expected_calibration_error(probs, y),
            "unknown": unknown / len(y), "seconds": seconds / k}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--datasets", default=",".join(datasets.DATASETS))
    parser.add_argument("--settings", default=",".join(SETTINGS), help="comma-separated names from SETTINGS")
    parser.add_argument("--cache-dir", type=Path, default=datasets.WORK / "cache")
    args = parser.parse_args()
    names = [name.strip() for name in args.settings.split(",") if name.strip()]
    print(f"Cross-validated ({args.folds} folds) on the report halves; seed 7; mean training time per fold.\n")
    print("| data | setting | accuracy | log-loss | ECE | unknown | train s |")
    print("|---|---|---|---|---|---|---|")
    reports = {data_name: datasets.halves(datasets.DATASETS[data_name]())[1]
               for data_name in args.datasets.split(",")}
    for name in names:
        for data_name, report in reports.items():
            try:
                row = run(name, report, SETTINGS[name], args.folds, args.cache_dir)
            except photolabel.PhotolabelError as exc:
                print(f"| {data_name} ({len(report)}) | {name} | error: {exc} | | | | |", flush=True)
                continue
            print(f"| {data_name} ({len(report)}) | {name} | {row['accuracy']:.3f} | {row['log_loss']:.3f} | "
                  f"{row['ece']:.3f} | {row['unknown']:.2f} | {row['seconds']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
