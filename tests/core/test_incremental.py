"""Incremental training equals training once on the union, byte for byte."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import photolabel
from photolabel.errors import DataError


def _model_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "run.json"}


def _subset(small_data: Path, dest: Path, labels: dict[str, slice]) -> Path:
    for label, part in labels.items():
        (dest / label).mkdir(parents=True)
        for image in sorted((small_data / label).iterdir())[part]:
            shutil.copy(image, dest / label / image.name)
    return dest


def test_adding_images_and_a_new_label_equals_training_on_the_union(small_data, tmp_path, cache_dir):
    first = _subset(small_data, tmp_path / "first", {"sweater": slice(0, 12), "blouse": slice(0, 12)})
    more = _subset(small_data, tmp_path / "more", {"blouse": slice(12, 20), "halter": slice(0, 20)})
    union = _subset(small_data, tmp_path / "union", {"sweater": slice(0, 12), "blouse": slice(0, 20),
                                                     "halter": slice(0, 20)})
    base = photolabel.train(first, tmp_path / "base", cache_dir=cache_dir, seed=3, head="logistic")
    assert base.model.labels == ("blouse", "sweater")
    grown = photolabel.train(more, tmp_path / "grown", base_model=tmp_path / "base", cache_dir=cache_dir)
    assert grown.model.labels == ("blouse", "sweater", "halter")  # existing order kept, new label appended
    assert grown.embeddings_cached >= 24  # the base model's images were not embedded again
    once = photolabel.train(union, tmp_path / "once", cache_dir=cache_dir, seed=3,
                            classes=["blouse", "sweater", "halter"])
    assert grown.model_id == once.model_id
    assert _model_bytes(tmp_path / "grown") == _model_bytes(tmp_path / "once")


def test_incremental_needs_the_base_embeddings_and_compatible_classes(small_data, tmp_path, trained_model):
    with pytest.raises(DataError, match="not in the cache"):
        photolabel.train(small_data, tmp_path / "x", base_model=trained_model, cache_dir=tmp_path / "empty")
    assert not (tmp_path / "x").exists()
    with pytest.raises(DataError, match="must start with"):
        photolabel.train(small_data, tmp_path / "y", base_model=trained_model, classes=["sweater", "blouse"])


def test_conflicting_label_for_a_known_image_is_refused(small_data, tmp_path, trained_model, cache_dir):
    image = min((small_data / "blouse").iterdir())
    (tmp_path / "wrong" / "sweater").mkdir(parents=True)
    shutil.copy(image, tmp_path / "wrong" / "sweater" / image.name)
    with pytest.raises(DataError, match="labelled 'sweater'"):
        photolabel.train(tmp_path / "wrong", tmp_path / "z", base_model=trained_model, cache_dir=cache_dir)
