"""How the default preprocessing, backbone and regularisation were chosen: on the selection halves only.

For each candidate preprocessing (squash the image to the input size, as the first
release did, or resize the shorter side and take the centre crop, as ImageNet
evaluation does) and backbone, the selection halves of every data set in
``benchmarks/datasets.py`` are embedded, and a few head rules are scored by 5-fold
stratified cross-validation repeated over 3 seeds: accuracy and log-loss.

The report halves are never read here; ``benchmarks/accuracy.py`` reports on them.
Usage: python benchmarks/choose_defaults.py [--backbones efficientnet-lite0,efficientnet-lite1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import datasets

C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0)


def embed(items: list[datasets.Item], backbone_name: str, crop: float) -> tuple[np.ndarray, float]:
    """Embeddings of ``items``; ``crop`` < 1: resize the shorter side to size/crop, then centre-crop."""
    from PIL import Image

    from photolabel.backbones import get_backbone
    from photolabel.images import decode_image

    backbone = get_backbone(backbone_name)
    size = backbone.preprocessing.image_size[0]
    arrays = []
    started = time.perf_counter()
    for item in items:
        rgb = decode_image(item.path.read_bytes(), source=str(item.path))
        image = Image.fromarray(rgb)
        if crop < 1.0:
            short = round(size / crop)
            w, h = image.size
            scale = short / min(w, h)
            image = image.resize((max(short, round(w * scale)), max(short, round(h * scale))),
                                 Image.Resampling.BILINEAR)
            w, h = image.size
            left, top = (w - size) // 2, (h - size) // 2
            image = image.crop((left, top, left + size, top + size))
        else:
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        arrays.append(np.asarray(image, dtype=np.uint8))
    vectors = np.concatenate([backbone.embed_batch(np.stack(arrays[i:i + 32])) for i in range(0, len(arrays), 32)])
    return vectors.astype(np.float64), time.perf_counter() - started


def score(X: np.ndarray, y: np.ndarray, rule: str) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss
    from sklearn.model_selection import StratifiedKFold

    accuracies, losses = [], []
    for repeat in range(3):
        folds = StratifiedKFold(5, shuffle=True, random_state=repeat)
        for train, test in folds.split(X, y):
            Xtr, Xte = X[train], X[test]
            if "l2" in rule:
                Xtr = Xtr / np.linalg.norm(Xtr, axis=1, keepdims=True)
                Xte = Xte / np.linalg.norm(Xte, axis=1, keepdims=True)
            mean, scale = Xtr.mean(0), Xtr.std(0) + 1e-12
            Xtr, Xte = (Xtr - mean) / scale, (Xte - mean) / scale
            if rule.startswith("C="):
                C = float(rule[2:])
            else:  # C by inner 5-fold CV log-loss on the training fold
                inner = StratifiedKFold(5, shuffle=True, random_state=100 + repeat)
                best = None
                for C_try in C_GRID:
                    fold_losses = []
                    for itr, ite in inner.split(Xtr, y[train]):
                        m = LogisticRegression(C=C_try, max_iter=3000).fit(Xtr[itr], y[train][itr])
                        fold_losses.append(log_loss(y[train][ite], m.predict_proba(Xtr[ite]), labels=np.unique(y)))
                    if best is None or np.mean(fold_losses) < best[0]:
                        best = (float(np.mean(fold_losses)), C_try)
                C = best[1]
            model = LogisticRegression(C=C, max_iter=3000).fit(Xtr, y[train])
            probs = model.predict_proba(Xte)
            accuracies.append(float((probs.argmax(1) == y[test]).mean()))
            losses.append(float(log_loss(y[test], probs, labels=np.unique(y))))
    return float(np.mean(accuracies)), float(np.mean(losses))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="efficientnet-lite0,efficientnet-lite1,efficientnet-lite2")
    parser.add_argument("--datasets", default=",".join(datasets.DATASETS))
    parser.add_argument("--rules", default="C=1,C=0.1,C=0.03,C=0.01",
                        help="comma-separated: C=<value> (fixed), 'C by inner CV', 'l2 C by inner CV'")
    args = parser.parse_args()
    print(f"{'data (selection half)':<24}{'backbone':<20}{'resize':<10}{'head rule':<22}{'accuracy':>9}"
          f"{'log-loss':>10}{'img/s':>8}")
    for name in args.datasets.split(","):
        load = datasets.DATASETS[name]
        selection, _ = datasets.halves(load())
        labels = sorted({item.label for item in selection})
        y = np.array([labels.index(item.label) for item in selection])
        for backbone in args.backbones.split(","):
            for resize, crop in (("squash", 1.0), ("crop", 0.875)):
                X, seconds = embed(selection, backbone, crop)
                for rule in args.rules.split(","):
                    accuracy, loss = score(X, y, rule)
                    print(f"{name:<24}{backbone:<20}{resize:<10}{rule:<22}{accuracy:>9.3f}{loss:>10.3f}"
                          f"{len(selection) / seconds:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
