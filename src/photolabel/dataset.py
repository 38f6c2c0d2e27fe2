"""The data set every source produces: rows of (source, sha256, label, split).

Whatever the user pointed at (a folder, an archive, a CSV of paths or URLs), the
loaders in :mod:`photolabel.sources` turn it into a :class:`Dataset`. Training,
evaluation and the adapters only ever see this type.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from photolabel.errors import DataError
from photolabel.hashing import sha256_json


@dataclass(frozen=True)
class ImageRecord:
    """One labelled image.

    ``split`` is "train", "valid", or "auto" (derived later from the hash and the seed).
    ``source`` is the name the user gave it (a path relative to the data root, the
    CSV cell, a URL) and is what error messages show; ``path`` is a local file that
    holds the bytes (possibly in a temporary folder that lives as long as the
    :class:`Dataset`); ``sha256`` is the hash of those bytes.
    """

    source: str
    path: Path
    sha256: str
    label: str
    split: str = "auto"


@dataclass(frozen=True)
class BadInput:
    """An input that was refused, with the reason; kept when ``skip_bad`` is on."""

    source: str
    reason: str
    code: str = "bad_input"

    @property
    def message(self) -> str:
        """``source: reason``, without naming the source twice when the reason already starts with it."""
        return self.reason if self.reason.startswith(self.source) else f"{self.source}: {self.reason}"

    def __str__(self) -> str:
        return self.message


def parse_label_list(values: str | Sequence[Any] | None) -> tuple[str, ...] | None:
    """Labels given as words separated by spaces or commas, in one string or several; None if none.

    Raises:
        DataError: a label is listed twice.
    """
    if values is None:
        return None
    chunks = [values] if isinstance(values, str) else values
    names: list[str] = []
    for chunk in chunks:
        parts = chunk if isinstance(chunk, (tuple, list)) else (chunk,)
        for part in parts:
            names.extend(word for word in str(part).replace(",", " ").split() if word)
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise DataError(f"classes: '{name}' is listed twice")
        seen.add(name)
    return tuple(names) or None


@dataclass(frozen=True)
class Duplicate:
    """The same bytes listed again with the same label: kept once, as ``kept``; ``source`` is the repeat."""

    sha256: str
    label: str
    kept: str
    source: str


def describe_duplicates(duplicates: Sequence[Duplicate], examples: int = 3) -> dict[str, Any]:
    """``{"count", "examples"}``: how many listings were repeats, and the first few images (by sha256) with
    every source that names them, as the user gave them."""
    by_image: dict[str, dict[str, Any]] = {}
    for item in duplicates:
        entry = by_image.setdefault(item.sha256, {"sha256": item.sha256, "label": item.label, "sources": [item.kept]})
        entry["sources"].append(item.source)
    return {"count": len(duplicates), "examples": [by_image[key] for key in sorted(by_image)[:examples]]}


@dataclass
class Dataset:
    """Labelled images plus the label order and the inputs skipped on the way.

    A context manager: temporary folders (extracted archives, downloads) are removed
    on ``close()``.
    """

    records: list[ImageRecord]
    labels: tuple[str, ...]
    skipped: list[BadInput] = field(default_factory=list)
    temp_dirs: list[Path] = field(default_factory=list, repr=False)
    duplicates: list[Duplicate] = field(default_factory=list)  # repeats of an image, merged into its first listing

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for folder in self.temp_dirs:
            shutil.rmtree(folder, ignore_errors=True)
        self.temp_dirs.clear()

    def label_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.labels, 0)
        for record in self.records:
            counts[record.label] += 1
        return counts


def manifest_rows(records: Sequence[ImageRecord]) -> list[dict[str, str]]:
    """The hashed view of records: content and label only, sorted by sha256.

    Sources and local paths are left out on purpose, so the same images give the
    same manifest whether they came from a folder, an archive or a CSV of URLs.
    """
    rows = [{"sha256": r.sha256, "label": r.label, "split": r.split} for r in records]
    rows.sort(key=lambda row: (row["sha256"], row["label"], row["split"]))
    return rows


def manifest_sha256(records: Sequence[ImageRecord], labels: Sequence[str]) -> str:
    return sha256_json({"labels": list(labels), "rows": manifest_rows(records)})
