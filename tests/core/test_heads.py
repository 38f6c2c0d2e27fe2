"""Heads: registry, determinism, no pickle, and ONNX graphs that match predict_proba."""

from __future__ import annotations

import hashlib

import numpy as np
import onnxruntime as ort
import pytest

from photolabel.errors import UnknownNameError
from photolabel.heads import LogisticHead, get_head_class, list_heads, make_head


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(7)
    centres = rng.normal(scale=3.0, size=(3, 16))
    y = np.repeat(np.arange(3), 30)
    X = centres[y] + rng.normal(size=(90, 16))
    return X, y


def _files_digest(folder, names):
    return hashlib.sha256(b"".join((folder / n).read_bytes() for n in names)).hexdigest()


def test_registry_has_seed_001_family():
    assert set(list_heads()) >= {"logistic", "rf", "lda", "knn", "cart", "svm", "nb", "mlp"}
    with pytest.raises(UnknownNameError, match="known heads: .*logistic"):
        get_head_class("xgboost")


@pytest.mark.parametrize("name", ["logistic", "rf", "lda", "knn", "cart", "svm", "nb", "mlp"])
def test_each_head_is_deterministic_round_trips_and_exports(name, blobs, tmp_path):
    X, y = blobs
    first = make_head(name, seed=5).fit(X, y, 3)
    second = make_head(name, seed=5).fit(X, y, 3)
    names = first.save(tmp_path / "a")
    second.save(tmp_path / "b")
    assert _files_digest(tmp_path / "a", names) == _files_digest(tmp_path / "b", names)
    assert all(not n.endswith((".pkl", ".pickle", ".joblib")) for n in names)

    probs = first.predict_proba(X)
    assert probs.shape == (90, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (first.predict(X) == y).mean() > 0.9  # separable blobs

    loaded = type(first).load(tmp_path / "a", {"seed": 5, "params": first.get_params()})
    np.testing.assert_array_equal(loaded.predict_proba(X), probs)

    session = ort.InferenceSession(first.to_onnx().SerializeToString(), providers=["CPUExecutionProvider"])
    (onnx_probs,) = session.run(["probabilities"], {"embedding": X.astype(np.float32)})
    np.testing.assert_allclose(onnx_probs, probs, atol=1e-4)


def test_logistic_with_known_weights_gives_known_probabilities():
    head = LogisticHead()
    head.coef_ = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    head.intercept_ = np.array([0.0, 0.0, np.log(2.0)])
    probs = head.predict_proba(np.array([[0.0, 0.0], [np.log(3.0), 0.0]]))
    np.testing.assert_allclose(probs[0], [0.25, 0.25, 0.5])
    np.testing.assert_allclose(probs[1], [3 / 6, 1 / 6, 2 / 6])


def test_binary_logistic_is_stored_as_two_rows(blobs):
    X, y = blobs
    mask = y < 2
    head = LogisticHead(seed=1).fit(X[mask], y[mask], 2)
    assert head.coef_.shape == (2, 16)
    assert (head.predict(X[mask]) == y[mask]).mean() > 0.9


def test_logistic_rows_do_not_depend_on_their_batch(blobs):
    X, y = blobs
    head = LogisticHead(seed=2).fit(X, y, 3)
    full = head.predict_proba(X)
    for i in range(0, 90, 7):
        assert head.predict_proba(X[i : i + 1]).tobytes() == full[i : i + 1].tobytes()


@pytest.mark.parametrize("name", ["logistic", "rf", "lda", "knn", "cart", "svm", "nb", "mlp"])
def test_parameters_come_from_the_signature_and_each_has_a_constraint(name):
    cls = get_head_class(name)
    head = make_head(name, seed=3)
    assert list(head.get_params()) == cls.param_names() == list(cls.default_params())
    assert head.get_params() == cls.default_params()
    assert set(cls.constraints) == set(cls.param_names())
    assert isinstance(cls.version, int)
    assert "seed" not in head.get_params()


def test_parameters_reach_the_estimator(blobs):
    X, y = blobs
    few = make_head("rf", seed=1, params={"n_estimators": "3", "max_depth": 2}).fit(X, y, 3)
    many = make_head("rf", seed=1).fit(X, y, 3)
    assert few.get_params() == {"n_estimators": 3, "max_depth": 2, "min_samples_leaf": 1}
    assert len(few.onnx_bytes_) < len(many.onnx_bytes_)  # 3 shallow trees are a smaller graph than 100
    loose = make_head("logistic", seed=1, params={"C": 1e-4}).fit(X, y, 3)
    tight = make_head("logistic", seed=1).fit(X, y, 3)
    assert np.abs(loose.coef_).sum() < np.abs(tight.coef_).sum()  # stronger regularisation, smaller weights


def test_a_head_without_a_constraint_cannot_register():
    from photolabel.heads import register_head

    class Unchecked(LogisticHead):
        name = "unchecked"

        def __init__(self, *, seed: int = 1234, C: float = 1.0, max_iter: int = 2000, tol: float = 1e-4) -> None:
            super().__init__(seed=seed, C=C, max_iter=max_iter)
            self.tol = tol

    with pytest.raises(ValueError, match="no Param in constraints for tol"):
        register_head(Unchecked)
    assert "unchecked" not in list_heads()


def test_knn_with_more_neighbours_than_images_is_a_clear_error(blobs):
    from photolabel.errors import DataError

    X, y = blobs
    with pytest.raises(DataError, match="n_neighbors=200 but only 90 training images"):
        make_head("knn", seed=1, params={"n_neighbors": 200}).fit(X, y, 3)


# --- mlp --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def noisy():
    """Overlapping classes in many dimensions: a network overfits them within a few epochs."""
    rng = np.random.default_rng(11)
    y = np.repeat(np.arange(3), 40)
    X = rng.normal(size=(120, 64))
    X[:, :3] += 0.8 * np.eye(3)[y]  # a weak signal in three dimensions, noise in the rest
    return X, y


def _mlp(**params):
    return make_head("mlp", seed=3, params=params)


def test_mlp_onnx_graph_is_the_layers_and_matches_predict_proba(blobs):
    X, y = blobs
    head = _mlp().fit(X, y, 3)
    model = head.to_onnx()
    assert [node.op_type for node in model.graph.node] == ["MatMul", "Add", "Relu", "MatMul", "Add", "Softmax"]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    (onnx_probs,) = session.run(["probabilities"], {"embedding": X.astype(np.float32)})
    np.testing.assert_allclose(onnx_probs, head.predict_proba(X), atol=1e-5)


def test_mlp_rows_do_not_depend_on_their_batch(blobs):
    X, y = blobs
    head = _mlp().fit(X, y, 3)
    full = head.predict_proba(X)
    for i in range(0, 90, 7):
        assert head.predict_proba(X[i : i + 1]).tobytes() == full[i : i + 1].tobytes()


def test_mlp_round_trip_keeps_the_training_curve(blobs, tmp_path):
    X, y = blobs
    head = _mlp(epochs=7, validation_fraction=0.2).fit(X, y, 3)
    names = head.save(tmp_path)
    assert sorted(names) == ["b1.npy", "b2.npy", "history.npy", "w1.npy", "w2.npy"]
    loaded = get_head_class("mlp").load(tmp_path, {"seed": 3, "params": head.get_params()})
    np.testing.assert_array_equal(loaded.history_, head.history_)
    assert loaded.best_epoch_ == head.best_epoch_
    np.testing.assert_array_equal(loaded.predict_proba(X), head.predict_proba(X))


def test_mlp_early_stopping_keeps_the_best_epoch(noisy):
    X, y = noisy
    head = _mlp(learning_rate=0.01, epochs=200, patience=4, dropout=0.0).fit(X, y, 3)
    held_loss = head.history_[:, 2]
    best = head.best_epoch_
    assert len(head.history_) == best + 4 < 200  # stopped 4 epochs after the best one
    assert held_loss[best - 1] == held_loss.min() and held_loss[-1] > held_loss[best - 1]
    # The kept weights are those after epoch `best`: a run of exactly that many epochs ends with the same ones.
    same_start = _mlp(learning_rate=0.01, epochs=best, patience=1000, dropout=0.0).fit(X, y, 3)
    np.testing.assert_array_equal(head.w1_, same_start.w1_)
    np.testing.assert_array_equal(head.w2_, same_start.w2_)
    last_epoch = _mlp(learning_rate=0.01, epochs=len(head.history_), validation_fraction=0.0, dropout=0.0)
    assert not np.array_equal(last_epoch.fit(X, y, 3).w2_, head.w2_)


def test_mlp_without_holdout_trains_every_epoch_on_every_row(noisy):
    X, y = noisy
    head = _mlp(epochs=6, validation_fraction=0.0).fit(X, y, 3)
    assert head.history_.shape == (6, 4) and head.best_epoch_ == 6
    assert np.isnan(head.history_[:, 2:]).all() and not np.isnan(head.history_[:, :2]).any()


def test_mlp_holdout_is_stratified_seeded_and_leaves_every_label_a_row():
    from photolabel.mlp import holdout_rows

    y = np.array([0] * 20 + [1] * 10 + [2] * 1)
    fit_rows, held = holdout_rows(y, 3, 0.1, np.random.default_rng(1))
    assert np.bincount(y[held], minlength=3).tolist() == [2, 1, 0]
    assert sorted(np.concatenate([fit_rows, held]).tolist()) == list(range(31))
    again, _ = holdout_rows(y, 3, 0.1, np.random.default_rng(1))
    assert again.tolist() == fit_rows.tolist()
    _, most = holdout_rows(y, 3, 0.5, np.random.default_rng(1))
    assert set(np.unique(y[np.setdiff1d(np.arange(31), most)])) == {0, 1, 2}


def test_mlp_sample_weight_changes_the_fit_but_not_its_scale(noisy):
    X, y = noisy
    plain = _mlp().fit(X, y, 3)
    doubled = _mlp().fit(X, y, 3, sample_weight=np.full(len(y), 2.0))
    np.testing.assert_array_equal(doubled.w2_, plain.w2_)  # weights are relative: all equal is no weighting
    favour_first = np.where(y == 0, 5.0, 1.0)
    weighted = _mlp().fit(X, y, 3, sample_weight=favour_first)
    assert weighted.predict_proba(X)[:, 0].mean() > plain.predict_proba(X)[:, 0].mean()
    from photolabel.errors import DataError

    with pytest.raises(DataError, match="sample_weight"):
        _mlp().fit(X, y, 3, sample_weight=np.zeros(len(y)))


def test_mlp_reports_its_curve_without_changing_what_it_learns(noisy):
    X, y = noisy
    points: list[tuple[str, float, int]] = []
    logged = _mlp(epochs=5, patience=100)
    logged.log = lambda tag, value, step: points.append((tag, value, step))
    logged.fit(X, y, 3)
    silent = _mlp(epochs=5, patience=100).fit(X, y, 3)
    assert logged.w1_.tobytes() == silent.w1_.tobytes() and logged.history_.tobytes() == silent.history_.tobytes()
    tags = ["loss/train", "accuracy/train", "loss/early_stopping", "accuracy/early_stopping"]
    assert [(tag, step) for tag, _, step in points] == [(tag, epoch) for epoch in range(1, 6) for tag in tags]
    assert [value for tag, value, _ in points if tag == "loss/train"] == silent.history_[:, 0].tolist()


def test_mlp_parameters_are_checked():
    from photolabel.errors import ConfigError

    head = make_head("mlp", seed=1, params={"hidden_units": "64", "dropout": "0.5", "epochs": 3.0})
    assert (head.hidden_units, head.dropout, head.epochs) == (64, 0.5, 3)
    for name, value, expected in [("dropout", 1.0, r"dropout=1.0: expected float in \[0, 1\)"),
                                  ("hidden_units", 0, "hidden_units=0"), ("learning_rate", 0, "learning_rate=0"),
                                  ("validation_fraction", 0.6, "validation_fraction=0.6"),
                                  ("epochs", 2.5, "epochs=2.5"), ("patience", 0, "patience=0")]:
        with pytest.raises(ConfigError, match=expected):
            make_head("mlp", seed=1, params={name: value})


def test_a_head_that_cannot_fit_these_rows_is_a_data_error_not_a_crash(blobs):
    from photolabel.errors import DataError

    X, y = blobs
    with pytest.raises(DataError, match="head lda cannot be fitted on these 3 training images"):
        make_head("lda", seed=1).fit(X[[0, 30, 60]], y[[0, 30, 60]], 3)
