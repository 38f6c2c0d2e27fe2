"""The answer "unknown" and calibration on fashion-tiny: how often, for what, and do probabilities improve.

1. A model trained with the defaults on all of fashion-tiny (300 photos: blouse, halter,
   sweater; 30 held out for validation). Prints the validation log-loss and expected
   calibration error before and after temperature scaling (metrics.json), the thresholds,
   and the share of images answered "unknown":
     - its own validation images (same kind, not trained on);
     - images of another kind: scikit-image's bundled pictures (camera, coins, moon,
       astronaut, coffee, chelsea, checkerboard, text, horse, ...) and drawn noise,
       gradients and shapes.
2. Three folds: each third of every label (by file name) held out in turn, a model trained
   on the rest with calibration on and off (nothing else differs). On the held-out third,
   which neither the head nor the temperature saw: log-loss, ECE and the unknown rate.

Usage: python benchmarks/unknown_rates.py [--cache-dir DIR]   (needs scikit-image for part 1's pictures)
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "examples" / "fashion-tiny"
sys.path.insert(0, str(ROOT / "tests"))  # the foreign pictures are the unknown tests' own

from foreign_images import generated_images, skimage_images  # noqa: E402

import photolabel  # noqa: E402
from photolabel.calibration import expected_calibration_error, log_loss  # noqa: E402


def share(flags: list[bool]) -> str:
    return f"{sum(flags)}/{len(flags)} = {100 * sum(flags) / max(len(flags), 1):.1f}%"


def full_model(work: Path, cache_dir: Path | None) -> None:
    result = photolabel.train(DATA, work / "full", cache_dir=cache_dir)
    model, metrics = result.model, result.metrics
    calibration = metrics["calibration"]
    print(f"fashion-tiny, all 300 photos: {result.n_train} train, {result.n_valid} validation; "
          f"validation accuracy {metrics['validation']['accuracy']:.3f}")
    print(f"  temperature {calibration['temperature']}: validation log-loss {calibration['log_loss_before']:.4f} "
          f"-> {calibration['log_loss_after']:.4f}, ECE {calibration['ece_before']:.4f} -> "
          f"{calibration['ece_after']:.4f}")
    unknown = model.card.unknown
    print(f"  unknown when the cosine distance to the nearest centroid > {unknown['distance_threshold']} "
          f"or the top probability < {unknown['confidence_threshold']}")
    wanted = {row["sha256"] for row in model.lineage["images"] if row["split"] == "valid"}
    import hashlib

    validation = [p for p in sorted(DATA.glob("*/*.jpg")) if hashlib.sha256(p.read_bytes()).hexdigest() in wanted]
    own = model.predict(validation)
    foreign_images = {**skimage_images(), **generated_images()}
    foreign = model.predict(list(foreign_images.values()))
    print(f"  unknown for its own validation images: {share([p.unknown for p in own])}")
    print(f"  unknown for images of another kind:    {share([p.unknown for p in foreign])}")
    labelled = [f"{name} ({p.label} {p.probability:.2f})" for name, p in zip(foreign_images, foreign)
                if not p.unknown]
    if labelled:
        print(f"    given a label: {', '.join(labelled)}")


def held_out_folds(work: Path, cache_dir: Path | None, folds: int = 3) -> None:
    print(f"\n{folds} folds: a third of each label held out, trained on the rest (calibration on / off)")
    totals: dict[str, list[float]] = {"before": [], "after": [], "ece_before": [], "ece_after": [], "unknown": []}
    for fold in range(folds):
        train_dir, held_out = work / f"fold-{fold}", []
        for label_dir in sorted(p for p in DATA.iterdir() if p.is_dir()):
            (train_dir / label_dir.name).mkdir(parents=True)
            for index, image in enumerate(sorted(label_dir.glob("*.jpg"))):
                if index % folds == fold:
                    held_out.append(image)
                else:
                    shutil.copyfile(image, train_dir / label_dir.name / image.name)
        on = photolabel.train(train_dir, work / f"fold-{fold}-on", cache_dir=cache_dir).model
        off = photolabel.train(train_dir, work / f"fold-{fold}-off", cache_dir=cache_dir, calibrate=False).model
        y = np.array([on.labels.index(p.parent.name) for p in held_out])
        answers = on.predict(held_out)
        calibrated = np.array([[a.scores[label] for label in on.labels] for a in answers])
        raw = off.predict_proba(held_out)
        row = {"before": log_loss(raw, y), "after": log_loss(calibrated, y),
               "ece_before": expected_calibration_error(raw, y), "ece_after": expected_calibration_error(calibrated, y),
               "unknown": float(np.mean([a.unknown for a in answers]))}
        for key, value in row.items():
            totals[key].append(value)
        print(f"  fold {fold}: {len(held_out)} held out, temperature {on.post.temperature}: log-loss "
              f"{row['before']:.4f} -> {row['after']:.4f}, ECE {row['ece_before']:.4f} -> {row['ece_after']:.4f}, "
              f"unknown {100 * row['unknown']:.1f}% (accuracy of the top label "
              f"{np.mean(calibrated.argmax(axis=1) == y):.3f})")
    mean = {key: float(np.mean(values)) for key, values in totals.items()}
    print(f"  mean:   log-loss {mean['before']:.4f} -> {mean['after']:.4f}, ECE {mean['ece_before']:.4f} -> "
          f"{mean['ece_after']:.4f}, unknown {100 * mean['unknown']:.1f}% of unseen photos of the same kind")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", type=Path, default=None, help="embedding cache (default: photolabel's)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="photolabel-unknown-") as folder:
        full_model(Path(folder), args.cache_dir)
        held_out_folds(Path(folder), args.cache_dir)


if __name__ == "__main__":
    main()
