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
    assert set(list_heads()) >= {"logistic", "rf", "lda", "knn", "cart", "svm", "nb"}
    with pytest.raises(UnknownNameError, match="known heads: .*logistic"):
        get_head_class("xgboost")


@pytest.mark.parametrize("name", ["logistic", "rf", "lda", "knn", "cart", "svm", "nb"])
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


@pytest.mark.parametrize("name", ["logistic", "rf", "lda", "knn", "cart", "svm", "nb"])
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
