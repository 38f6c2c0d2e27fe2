"""Class balance: how many training images of each label are used, and how much each one weighs.

* :func:`limit_per_label` (``TrainConfig.max_per_label``) keeps at most N training images of
  each label, chosen by hash and seed (:data:`SELECTION_RULE`); the others stay in the
  model's lineage with split ``"unused"``. The validation split is made first and is never
  capped, so models trained with different limits are measured on the same images.
* :func:`balanced_weights` (``TrainConfig.balance``) gives each training row the weight
  ``n / (n_classes * n_label)``: every label weighs the same in the fit, and the weights
  average 1, so a head's regularisation means what it means without them.

Both are pure functions of hashes, labels and the seed: the same images give the same choice
on every machine, and ``photolabel train --from`` (which rebuilds the base model's images,
unused ones included, from its lineage) chooses exactly as training once on the union does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from photolabel.dataset import ImageRecord
from photolabel.errors import DataError
from photolabel.hashing import sha256_bytes

UNUSED = "unused"
SELECTION_RULE = (
    "after the validation split, per label, training images are ordered by sha256(f'{seed}:{image_sha256}') "
    "and the first max_per_label are used (0: as many as the label with the fewest training images has); "
    "the rest are listed with split 'unused'"
)


def limit_per_label(records: Sequence[ImageRecord], labels: Sequence[str], seed: int,
                    max_per_label: int | None) -> list[ImageRecord]:
    """``records`` (split into "train" and "valid") with the training images past the limit marked
    ``"unused"``; see :data:`SELECTION_RULE`. ``max_per_label`` None keeps every image; 0 means the
    smallest label's training count. Order is kept.

    Raises:
        DataError: a label has no training images (then no limit of 0 is meaningful).
    """
    if max_per_label is None:
        return list(records)
    by_label: dict[str, list[int]] = {label: [] for label in labels}
    for index, record in enumerate(records):
        if record.split == "train":
            by_label[record.label].append(index)
    if max_per_label == 0:
        empty = [label for label in labels if not by_label[label]]
        if empty:
            raise DataError(f"label {empty[0]!r} has no training images, so the smallest label's count is 0")
        max_per_label = min(len(group) for group in by_label.values())
    unused: set[int] = set()
    for group in by_label.values():
        group.sort(key=lambda i: (sha256_bytes(f"{seed}:{records[i].sha256}".encode()), i))
        unused.update(group[max_per_label:])
    return [ImageRecord(r.source, r.path, r.sha256, r.label, UNUSED) if i in unused else r
            for i, r in enumerate(records)]


def balanced_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """One weight per row of label indices ``y``: ``len(y) / (n_classes_present * count[y])``
    (scikit-learn's "balanced"), so every label present weighs the same and the mean weight is 1."""
    y = np.asarray(y, dtype=np.int64)
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = int(np.count_nonzero(counts))
    per_class = np.zeros(n_classes, dtype=np.float64)
    per_class[counts > 0] = len(y) / (present * counts[counts > 0])
    return per_class[y]
