"""Choosing a head and its parameters by k-fold cross-validation: deterministic, on training rows only."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import photolabel
from photolabel.backbones import get_backbone
from photolabel.balance import balanced_weights
from photolabel.cache import EmbeddingCache
from photolabel.config import TrainConfig
from photolabel.errors import ConfigError, DataError
from photolabel.heads import get_head_class, list_heads, make_head
from photolabel.tuning import (
    FOLDS,
    cross_validate,
    fold_assignment,
    grid_candidates,
    search,
    search_candidates,
    search_plan,
    searched_grid,
    tune_head,
)


def _model_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "run.json"}


def _blobs(n_per_class: int = 20, dim: int = 8, spread: float = 3.0, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=spread, size=(3, dim))
    y = np.repeat(np.arange(3), n_per_class)
    return centres[y] + rng.normal(size=(len(y), dim)), y


def test_every_head_declares_a_valid_grid_or_none():
    for name in list_heads():
        cls = get_head_class(name)
        for param, values in cls.tune_grid.items():
            assert param in cls.param_names() and values, (name, param)
    assert get_head_class("logistic").tune_grid["C"][0] < get_head_class("logistic").tune_grid["C"][-1]


def test_folds_are_stratified_seeded_and_keep_an_images_rows_together():
    y = np.array([0] * 12 + [1] * 7)
    keys = [f"{i:064x}" for i in range(19)]
    fold, k = fold_assignment(y, keys, seed=1)
    assert k == FOLDS
    for label in (0, 1):
        sizes = np.bincount(fold[y == label], minlength=k)
        assert sizes.max() - sizes.min() <= 1  # each label spread evenly over the folds
    again, _ = fold_assignment(y, keys, seed=1)
    np.testing.assert_array_equal(fold, again)
    assert not np.array_equal(fold_assignment(y, keys, seed=2)[0], fold)
    repeated, _ = fold_assignment(np.repeat(y, 3), [key for key in keys for _ in range(3)], seed=1)
    np.testing.assert_array_equal(repeated, np.repeat(fold, 3))  # augmented views stay with their image
    assert fold_assignment(np.array([0, 0, 0, 1, 1, 1]), list("abcdef"), seed=1)[1] == 3  # k <= fewest per label
    with pytest.raises(DataError, match="at least 2 training images"):
        fold_assignment(np.array([0, 0, 1]), ["a", "b", "c"], seed=1)


def test_tuning_picks_the_known_better_regularisation():
    rng = np.random.default_rng(3)
    # labels unrelated to the features: the most regularised model (near-uniform answers) scores best
    noise = rng.normal(size=(60, 30))
    random_labels = np.repeat(np.arange(3), 20)
    params, table = tune_head("logistic", 1, None, noise, random_labels, 3)
    assert params["C"] == min(get_head_class("logistic").tune_grid["C"])
    # clean, well-separated labels: the least regularised model is the most confidently right
    X, y = _blobs(spread=6.0)
    params, table = tune_head("logistic", 1, None, X, y, 3)
    assert params["C"] == max(get_head_class("logistic").tune_grid["C"])
    losses = [row["mean_log_loss"] for row in table["candidates"]]
    assert table["candidates"][table["chosen"]["index"]]["mean_log_loss"] == min(losses)
    assert all(len(row["log_loss"]) == len(row["accuracy"]) == FOLDS for row in table["candidates"])


def test_tuning_is_deterministic_whatever_the_thread_count():
    X, y = _blobs(spread=1.0)
    candidates = grid_candidates("logistic", {})
    one = cross_validate(candidates, 5, X, y, 3, threads=1)
    three = cross_validate(candidates, 5, X, y, 3, threads=3)
    assert json.dumps(one[1], sort_keys=True) == json.dumps(three[1], sort_keys=True)
    assert one[0] == three[0]


def test_a_grid_parameter_given_a_non_default_value_is_held_fixed():
    assert set(searched_grid("svm", get_head_class("svm").default_params())) == {"C", "gamma"}
    fixed = get_head_class("svm").check_params({"gamma": 0.001})
    assert set(searched_grid("svm", fixed)) == {"C"}
    assert {c.params["gamma"] for c in grid_candidates("svm", fixed)} == {0.001}
    # a head without a grid has one candidate: the parameters given
    assert grid_candidates("logistic", {"C": 0.5})[0].params["C"] == 0.5  # given: not searched
    assert len(grid_candidates("logistic", {"C": 0.5})) == 1


def test_preset_best_searches_every_head_on_the_same_folds_and_picks_one():
    X, y = _blobs(n_per_class=12, dim=6, spread=2.0)
    config = TrainConfig(preset="best", seed=3)
    candidates = search_candidates(config)
    assert candidates[0].head == config.head  # the configured head first, then the others by name
    assert [c.head for c in candidates] == sorted((c.head for c in candidates),
                                                 key=lambda h: (h != config.head, h))
    assert {c.head for c in candidates} == set(list_heads())
    chosen, table = search(config, X, y, 3, threads=2)
    assert chosen.head in list_heads()
    row = table["candidates"][table["chosen"]["index"]]
    assert (row["head"], row["params"]) == (chosen.head, dict(chosen.params))
    fitted = [r for r in table["candidates"] if "mean_log_loss" in r]
    assert row["mean_log_loss"] == min(r["mean_log_loss"] for r in fitted)
    assert len(fitted) == len(candidates)  # every head could be fitted on these folds


def test_with_class_weights_heads_that_cannot_weight_are_skipped_or_refused():
    X, y = _blobs(n_per_class=10, dim=4)
    X, y = X[:-5], y[:-5]  # 10, 10, 5
    weights = balanced_weights(y, 3)
    chosen, table = search(TrainConfig(preset="best"), X, y, 3, weights)
    skipped = {row["head"] for row in table["candidates"] if "cannot weight" in row.get("skipped", "")}
    assert {"knn", "lda"} <= skipped and chosen.head not in skipped
    assert table["weighted"] is True
    with pytest.raises(ConfigError, match="cannot weight") as caught:
        tune_head("knn", 1, None, X, y, 3, weights)
    assert caught.value.field == "balance"


def test_the_search_plan_enters_the_model_id_and_lists_every_candidate_heads_version():
    assert search_plan(TrainConfig()) is None
    plan = search_plan(TrainConfig(tune=True))
    assert [entry["head"] for entry in plan["heads"]] == ["logistic"]
    assert plan["heads"][0]["version"] == get_head_class("logistic").version
    assert plan["heads"][0]["grid"]["C"] == list(get_head_class("logistic").tune_grid["C"])
    best = search_plan(TrainConfig(preset="best"))
    assert {entry["head"] for entry in best["heads"]} == set(list_heads())


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory, small_data: Path, cache_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("tuned") / "model"
    photolabel.train(small_data, out, cache_dir=cache_dir, tune=True, threads=1)
    return out


def test_tuned_training_is_byte_identical_whatever_the_thread_count(tuned, small_data, tmp_path, cache_dir):
    again = photolabel.train(small_data, tmp_path / "again", cache_dir=cache_dir, tune=True, threads=2)
    assert _model_bytes(tmp_path / "again") == _model_bytes(tuned)
    model = photolabel.load_model(tuned)  # the card's id check accepts a head chosen by a search
    assert again.model_id == model.model_id
    metrics = json.loads((tuned / "metrics.json").read_text())
    table = metrics["tuning"]
    assert len(table["candidates"]) == len(get_head_class("logistic").tune_grid["C"])
    assert all(len(row["log_loss"]) == FOLDS and "mean_log_loss" in row for row in table["candidates"])
    assert dict(model.card.head.params) == table["chosen"]["params"]
    # the config keeps what was given; the card's head holds what was chosen
    assert model.card.config.tune and model.card.config.head_params == get_head_class("logistic").default_params()
    assert model.card.tuning == search_plan(model.card.config)
    plain = photolabel.train(small_data, tmp_path / "plain", cache_dir=cache_dir)
    assert plain.model_id != model.model_id


def test_tuning_never_looks_at_validation_images(tuned, small_data, tmp_path, cache_dir):
    private = tmp_path / "cache"
    shutil.copytree(cache_dir, private)
    model = photolabel.load_model(tuned)
    backbone = get_backbone(model.card.backbone.name, cache_dir=private)
    cache = EmbeddingCache(private, backbone.hash, backbone.embedding_dim)
    valid = [row["sha256"] for row in model.lineage["images"] if row["split"] == "valid"]
    for sha in valid:
        cache.put(sha, -3.0 * cache.get(sha))  # the validation images now look like nothing seen before
    changed = photolabel.train(small_data, tmp_path / "changed", cache_dir=private, tune=True)
    before = json.loads((tuned / "metrics.json").read_text())
    assert changed.metrics["tuning"] == before["tuning"]
    assert changed.metrics["validation"] != before["validation"]  # validation did see the change
    assert (tmp_path / "changed" / "head" / "coef.npy").read_bytes() == (tuned / "head" / "coef.npy").read_bytes()


def test_incremental_training_of_a_tuned_model_equals_tuning_on_the_union(tuned, small_data, tmp_path, cache_dir):
    part = tmp_path / "part"
    rest = tmp_path / "rest"
    for label_dir in sorted(small_data.iterdir()):
        files = sorted(label_dir.iterdir())
        (part / label_dir.name).mkdir(parents=True)
        (rest / label_dir.name).mkdir(parents=True)
        for i, image in enumerate(files):
            shutil.copyfile(image, (part if i < 14 else rest) / label_dir.name / image.name)
    photolabel.train(part, tmp_path / "base", cache_dir=cache_dir, tune=True)
    grown = photolabel.train(rest, tmp_path / "grown", cache_dir=cache_dir, base_model=tmp_path / "base")
    assert grown.model_id == photolabel.load_model(tuned).model_id
    assert _model_bytes(tmp_path / "grown") == _model_bytes(tuned)


@pytest.mark.parametrize("name", list_heads())
def test_search_scores_agree_with_the_stored_heads_answers(name):
    X, y = _blobs(n_per_class=15, dim=5, spread=1.5)
    cls = get_head_class(name)
    params = grid_candidates(name, cls.default_params())[-1].params
    scorer = make_head(name, seed=2, params=params).fit_for_search(X[:36], y[:36], 3)
    stored = make_head(name, seed=2, params=params).fit(X[:36], y[:36], 3)
    np.testing.assert_allclose(scorer(X[36:]), stored.predict_proba(X[36:]), atol=1e-4)


def test_candidates_a_fold_is_too_small_for_are_skipped_not_fatal():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(3), 2)
    X = rng.normal(size=(6, 5)) + y[:, None]
    chosen, table = search(TrainConfig(preset="best"), X, y, 3)
    assert table["folds"] == 2
    skipped = {row["head"]: row["skipped"] for row in table["candidates"] if "skipped" in row}
    assert "only 3 training images" in skipped["knn"]  # knn: more neighbours than rows
    assert "samples" in skipped["lda"]  # lda: scikit-learn refuses fewer rows than labels
    assert chosen.head not in skipped


def test_tuning_needs_two_training_images_of_every_label(small_data, tmp_path, cache_dir):
    with pytest.raises(DataError, match="at least 2 training images of every label; label 'blouse' has 1"):
        photolabel.train(small_data, tmp_path / "m", cache_dir=cache_dir, tune=True, max_per_label=1)


# --- preset best: the fine-tuned variant ---------------------------------------------------------


def test_preset_best_plans_a_fine_tuned_variant_with_the_configured_heads_grid():
    from photolabel.tuning import feature_variants, variant_candidates

    variants = feature_variants(TrainConfig(preset="best"))
    assert [(v["augment"], v["finetune"]) for v in variants] == [(0, False), (2, False), (0, True)]
    tuned_variant = variants[2]
    assert tuned_variant["heads"] == ["logistic"] and tuned_variant["tail_tuned"] == "once per fold"
    assert {c.head for c in variant_candidates(TrainConfig(preset="best"), tuned_variant)} == {"logistic"}
    assert search_plan(TrainConfig(preset="best"))["features"] == variants  # so the model id covers it
    # nothing to tune on the handcrafted backbone, and fine-tuning asked for is not searched again
    assert all(not v["finetune"] for v in feature_variants(TrainConfig(preset="best", backbone="classic")))
    assert len(feature_variants(TrainConfig(preset="best", finetune=True))) == 2


def test_each_folds_tail_is_tuned_without_its_held_out_images(small_data, cache_dir):
    """The features a held-out fold is scored on come from a tail that never saw that fold: changing the
    held-out images' activations changes nothing for the other rows."""
    from photolabel.dataset import ImageRecord
    from photolabel.finetune import trunk_for
    from photolabel.training import _fold_tuned_features
    from photolabel.tuning import fold_assignment

    backbone = get_backbone("efficientnet-lite0", cache_dir=cache_dir)
    trunk = trunk_for(backbone)
    rng = np.random.default_rng(0)
    labels = ("a", "b", "c")
    rows = [ImageRecord(source=f"{i}.jpg", path=None, sha256=f"{i:064x}", label=labels[i % 3]) for i in range(30)]
    y = np.array([i % 3 for i in range(30)])
    activations = {r.sha256: rng.normal(size=trunk.embedding_dim).astype(np.float32) + 0.3 * (i % 3)
                   for i, r in enumerate(rows)}
    fold, _ = fold_assignment(y, [r.sha256 for r in rows], 5, labels=labels)
    first = _fold_tuned_features(backbone, activations, rows, y, labels, 5)(0)
    changed = {sha: (-5 * vector if f == 0 else vector) for (sha, vector), f in zip(activations.items(), fold)}
    second = _fold_tuned_features(backbone, changed, rows, y, labels, 5)(0)
    np.testing.assert_array_equal(first[fold != 0], second[fold != 0])
    assert not np.allclose(first[fold == 0], second[fold == 0])


def test_a_fine_tuned_variant_chosen_by_preset_best_is_a_fine_tuned_model(small_data, tmp_path, cache_dir,
                                                                         monkeypatch):
    """When the search picks the fine-tuned variant, the model carries its tail: the card's finetune
    section, the tail file, the tuned backbone hash in its id; it reloads and answers as trained, and a
    second training gives the same bytes. (The plan is narrowed to that one variant so that it wins.)"""
    from photolabel import tuning

    full = tuning.feature_variants
    monkeypatch.setattr(tuning, "feature_variants", lambda config: [full(config)[-1]])
    first = photolabel.train(small_data, tmp_path / "a", cache_dir=cache_dir, preset="best", threads=1)
    model = photolabel.load_model(tmp_path / "a")  # the card's id check covers the tuned hash
    assert model.card.finetune is not None and (tmp_path / "a" / "finetune" / "tail.onnx").is_file()
    assert model.card.backbone.hash == model.backbone.hash != get_backbone(model.card.backbone.name,
                                                                            cache_dir=cache_dir).hash
    assert first.metrics["tuning"]["features"]["finetune"] is True
    assert {row["head"] for row in first.metrics["tuning"]["candidates"]} == {"logistic"}
    image = min((small_data / "blouse").iterdir())
    assert model.predict([str(image)])[0].scores == first.model.predict([str(image)])[0].scores
    photolabel.train(small_data, tmp_path / "b", cache_dir=cache_dir, preset="best", threads=2)
    assert _model_bytes(tmp_path / "b") == _model_bytes(tmp_path / "a")
