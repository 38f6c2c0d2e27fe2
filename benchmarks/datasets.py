"""The labelled image sets the accuracy benchmarks use, each split once into two halves.

* ``fashion-tiny``: the 300 example photos (blouse, halter, sweater) in examples/.
* ``digits``: scikit-learn's bundled handwritten digits (8x8 grey images, 10 classes),
  60 per class, written as 64x64 PNGs: another kind of image entirely.

Every set is split per label into a **selection** half and a **report** half by the
parity of each image's rank in sha256 order. Defaults are chosen on the selection
halves (``benchmarks/choose_defaults.py``); accuracy is reported on the report halves
(``benchmarks/accuracy.py``), which no choice ever looked at.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FASHION = ROOT / "examples" / "fashion-tiny"
WORK = ROOT / "benchmarks" / ".data"
DIGITS_PER_CLASS = 60


@dataclass(frozen=True)
class Item:
    path: Path
    label: str
    sha256: str


def fashion_tiny() -> list[Item]:
    return _items(sorted(FASHION.glob("*/*.jpg")))


def digits() -> list[Item]:
    """Write (once) and list 60 images per digit from scikit-learn's bundled data set."""
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = WORK / "digits"
    data = load_digits()
    counts = dict.fromkeys(range(10), 0)
    paths: list[Path] = []
    for index, (image, target) in enumerate(zip(data.images, data.target)):
        if counts[int(target)] >= DIGITS_PER_CLASS:
            continue
        counts[int(target)] += 1
        path = folder / f"digit-{target}" / f"{index:04d}.png"
        if not path.is_file():
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = (255 - image * (255 / 16)).clip(0, 255).astype(np.uint8)  # dark ink on white
            Image.fromarray(pixels, "L").resize((64, 64), Image.Resampling.NEAREST).save(path)
        paths.append(path)
    return _items(sorted(paths))


DATASETS = {"fashion-tiny": fashion_tiny, "digits": digits}


def halves(items: list[Item]) -> tuple[list[Item], list[Item]]:
    """(selection, report): per label, images in sha256 order alternate between the two."""
    selection: list[Item] = []
    report: list[Item] = []
    for label in sorted({item.label for item in items}):
        ranked = sorted((item for item in items if item.label == label), key=lambda item: item.sha256)
        selection += ranked[0::2]
        report += ranked[1::2]
    return selection, report


def _items(paths: list[Path]) -> list[Item]:
    return [Item(path, path.parent.name, hashlib.sha256(path.read_bytes()).hexdigest()) for path in paths]
