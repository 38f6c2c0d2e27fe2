"""Class balance: at most N training images per label, chosen by hash and seed, and class weights."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import photolabel
from photolabel.balance import UNUSED, balanced_weights, limit_per_label
from photolabel.dataset import ImageRecord
from photolabel.errors import ConfigError
from photolabel.heads import make_head
from photolabel.training import assign_splits

COUNTS = {"blouse": 20, "halter": 7, "sweater": 12}


def _records(counts: dict[str, int]) -> list[ImageRecord]:
    return [ImageRecord(f"{label}/{i}", Path("x"), f"{label[:2]}{i:062d}", label)
            for label, n in counts.items() for i in range(n)]


def _model_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "run.json"}


@pytest.fixture(scope="module")
def imbalanced_data(tmp_path_factory: pytest.TempPathFactory, small_data: Path) -> Path:
    """small_data with 20 blouse, 7 halter and 12 sweater images."""
    root = tmp_path_factory.mktemp("imbalanced")
    for label, n in COUNTS.items():
        (root / label).mkdir()
        for image in sorted((small_data / label).iterdir())[:n]:
            shutil.copyfile(image, root / label / image.name)
    return root


def test_limit_keeps_the_same_images_every_run_per_label_and_never_touches_validation():
    labels = tuple(COUNTS)
    split = assign_splits(_records(COUNTS), labels, seed=3, valid_fraction=0.2)
    limited = limit_per_label(split, labels, seed=3, max_per_label=5)
    assert limit_per_label(split, labels, seed=3, max_per_label=5) == limited
    assert [r.sha256 for r in limited] == [r.sha256 for r in split]  # order and rows kept, only splits change
    for label in labels:
        used = [r for r in limited if r.label == label and r.split == "train"]
        assert len(used) == 5
    assert [r for r in limited if r.split == "valid"] == [r for r in split if r.split == "valid"]
    assert sum(r.split == UNUSED for r in limited) == sum(r.split == "train" for r in split) - 15
    other_seed = limit_per_label(split, labels, seed=4, max_per_label=5)
    assert {r.sha256 for r in other_seed if r.split == "train"} != {r.sha256 for r in limited if r.split == "train"}
    # a label with fewer images than the limit keeps all of them; None keeps everything
    assert sum(r.split == "train" for r in limit_per_label(split, labels, 3, 100)) == sum(
        r.split == "train" for r in split)
    assert limit_per_label(split, labels, 3, None) == split


def test_zero_means_the_smallest_labels_training_count():
    labels = tuple(COUNTS)
    split = assign_splits(_records(COUNTS), labels, seed=1, valid_fraction=0.1)
    smallest = min(sum(r.label == label and r.split == "train" for r in split) for label in labels)
    assert smallest == 6  # halter: 7 images, 1 held out
    limited = limit_per_label(split, labels, seed=1, max_per_label=0)
    assert {label: sum(r.label == label and r.split == "train" for r in limited) for label in labels} == dict.fromkeys(
        labels, smallest)


def test_balanced_weights_make_every_label_weigh_the_same_and_average_one():
    y = np.array([0] * 6 + [1] * 2 + [2] * 4)
    weights = balanced_weights(y, 3)
    assert weights.mean() == pytest.approx(1.0)
    assert [weights[y == k].sum() for k in range(3)] == pytest.approx([4.0, 4.0, 4.0])
    assert balanced_weights(np.array([0, 0, 1, 1]), 3).tolist() == [1.0, 1.0, 1.0, 1.0]


def test_balance_changes_a_fitted_head_on_imbalanced_data_and_stays_deterministic(tmp_path):
    rng = np.random.default_rng(0)
    y = np.array([0] * 40 + [1] * 8)
    X = rng.normal(size=(48, 4)) + y[:, None] * 0.8
    weights = balanced_weights(y, 2)
    plain = make_head("logistic", seed=1).fit(X, y, 2)
    balanced = make_head("logistic", seed=1).fit(X, y, 2, sample_weight=weights)
    again = make_head("logistic", seed=1).fit(X, y, 2, sample_weight=weights)
    assert not np.array_equal(plain.coef_, balanced.coef_)
    np.testing.assert_array_equal(balanced.coef_, again.coef_)
    # the minority label gains probability mass everywhere
    assert balanced.predict_proba(X)[:, 1].mean() > plain.predict_proba(X)[:, 1].mean()
    with pytest.raises(ConfigError, match="cannot weight classes") as caught:
        make_head("knn", seed=1).fit(X, y, 2, sample_weight=weights)
    assert caught.value.field == "balance"


def test_training_with_a_limit_and_balance_is_reproducible_and_lists_unused_images(imbalanced_data, tmp_path,
                                                                                  cache_dir):
    first = photolabel.train(imbalanced_data, tmp_path / "a", cache_dir=cache_dir, max_per_label=0, balance=True)
    photolabel.train(imbalanced_data, tmp_path / "b", cache_dir=cache_dir, max_per_label=0, balance=True, threads=1)
    assert _model_bytes(tmp_path / "a") == _model_bytes(tmp_path / "b")
    lineage = first.model.lineage
    assert first.n_train == 3 * 6  # halter: 7 images, 1 validation, so 6 of each label train
    assert lineage["counts"]["unused"] == 39 - first.n_valid - 18
    assert sum(row["split"] == UNUSED for row in lineage["images"]) == lineage["counts"]["unused"]
    assert "max_per_label" in lineage["selection_rule"]
    assert first.model.card.config.max_per_label == 0 and first.model.card.config.balance
    plain = photolabel.train(imbalanced_data, tmp_path / "c", cache_dir=cache_dir)
    assert plain.n_train == 39 - plain.n_valid and "unused" not in plain.model.lineage["counts"]
    assert plain.n_valid == first.n_valid  # the same validation images whatever the limit
    assert len({plain.model_id, first.model_id}) == 2
    weighted = photolabel.train(imbalanced_data, tmp_path / "d", cache_dir=cache_dir, balance=True)
    assert (tmp_path / "d" / "head" / "coef.npy").read_bytes() != (tmp_path / "c" / "head" / "coef.npy").read_bytes()
    assert weighted.model_id != plain.model_id


def test_incremental_training_with_a_limit_equals_training_on_the_union(imbalanced_data, small_data, tmp_path,
                                                                        cache_dir):
    base = photolabel.train(imbalanced_data, tmp_path / "base", cache_dir=cache_dir, max_per_label=0)
    added = tmp_path / "added" / "halter"
    added.mkdir(parents=True)
    for image in sorted((small_data / "halter").iterdir())[COUNTS["halter"]:]:
        shutil.copyfile(image, added / image.name)
    grown = photolabel.train(tmp_path / "added", tmp_path / "grown", cache_dir=cache_dir, base_model=tmp_path / "base")
    union = tmp_path / "union"
    shutil.copytree(imbalanced_data, union)
    for image in added.iterdir():
        shutil.copyfile(image, union / "halter" / image.name)
    once = photolabel.train(union, tmp_path / "once", cache_dir=cache_dir, max_per_label=0)
    assert grown.model_id == once.model_id != base.model_id
    assert _model_bytes(tmp_path / "grown") == _model_bytes(tmp_path / "once")
    assert grown.n_train > base.n_train  # halter is no longer the smallest label: more images of each are used


def test_a_head_that_cannot_weight_refuses_balance(imbalanced_data, tmp_path, cache_dir):
    with pytest.raises(ConfigError, match="head knn cannot weight classes"):
        photolabel.train(imbalanced_data, tmp_path / "m", cache_dir=cache_dir, head="knn", balance=True)
    assert not (tmp_path / "m").exists()
