"""photolabel.Classifier: a scikit-learn estimator over images (paths, arrays, ...).

scikit-learn's estimator checks feed numeric 2-D arrays, which are not images; the estimator says so
in its tags (``input_tags.two_d_array = False``), which makes ``check_estimator`` skip the data checks.
The API checks that take no data run here one by one (``API_CHECKS``); the data checks that apply to
images (fit returns self, fit leaves the parameters alone, no public attribute without a trailing
underscore, unfitted estimators raise NotFittedError, a fitted one pickles) are re-done with images below.
"""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import joblib
import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError, SkipTestWarning
from sklearn.model_selection import GridSearchCV, cross_val_score
from sklearn.utils import estimator_checks

import photolabel
from photolabel import Classifier

LABELS = ("blouse", "halter", "sweater")

# The checks of scikit-learn's API that need no numeric data.
API_CHECKS = (
    "check_estimator_cloneable",
    "check_estimator_repr",
    "check_estimator_tags_renamed",
    "check_valid_tag_types",
    "check_no_attributes_set_in_init",
    "check_parameters_default_constructible",
    "check_get_params_invariance",
    "check_set_params",
    "check_do_not_raise_errors_in_init_or_set_params",
    "check_mixin_order",
    "check_estimators_unfitted",
)


@pytest.fixture(scope="module")
def data(small_data: Path) -> tuple[list[str], np.ndarray]:
    paths = [str(p) for label in LABELS for p in sorted((small_data / label).iterdir())]
    return paths, np.array([Path(p).parent.name for p in paths])


@pytest.mark.parametrize("check", API_CHECKS)
def test_scikit_learn_api_checks(check):
    getattr(estimator_checks, check)("Classifier", Classifier())


def test_check_estimator_skips_the_numeric_checks_and_says_why():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        estimator_checks.check_estimator(Classifier())
    assert any(issubclass(w.category, SkipTestWarning) and "Can't test" in str(w.message) for w in caught)


def test_fit_predict_score_on_image_paths(data, cache_dir):
    paths, labels = data
    classifier = Classifier(cache_dir=cache_dir)
    before = joblib.hash(classifier.get_params())
    with pytest.raises(NotFittedError):
        classifier.predict(paths[:1])
    assert classifier.fit(paths, labels) is classifier
    assert joblib.hash(classifier.get_params()) == before  # fit leaves the parameters alone
    public = [name for name in vars(classifier) if not name.startswith("_") and name not in classifier.get_params()]
    assert sorted(public) == ["classes_", "model_"]
    assert list(classifier.classes_) == list(LABELS) and classifier.model_.labels == LABELS
    probabilities = classifier.predict_proba(paths)
    assert probabilities.shape == (len(paths), 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-9)
    predicted = classifier.predict(paths)
    assert list(predicted) == list(classifier.classes_[probabilities.argmax(axis=1)])
    assert classifier.score(paths, labels) == np.mean(predicted == labels) > 0.5
    np.testing.assert_allclose(probabilities[:4], classifier.model_.predict_proba(paths[:4]), atol=1e-6)
    assert classifier.predict_proba([]).shape == (0, 3) and classifier.predict([]).shape == (0,)
    assert classifier.embed(paths[:2]).shape == (2, classifier.model_.backbone.embedding_dim)
    restored = pickle.loads(pickle.dumps(classifier))  # the backbone's session is loaded again on use
    np.testing.assert_array_equal(restored.predict_proba(paths[:2]), probabilities[:2])


def test_fit_trains_what_train_trains(data, cache_dir, tmp_path):
    paths, labels = data
    classifier = Classifier(cache_dir=cache_dir, seed=5).fit(paths, labels)
    expected = photolabel.train(list(zip(paths, labels)), tmp_path / "m", cache_dir=cache_dir, seed=5, unknown=False)
    assert classifier.model_.model_id == expected.model_id


def test_integer_labels_and_array_images(data, cache_dir):
    from photolabel.images import decode_image

    paths, labels = data
    chosen = [k for label in LABELS for k in np.flatnonzero(labels == label)[:5]]
    images = [decode_image(Path(paths[k]).read_bytes()) for k in chosen]
    numbers = np.array([LABELS.index(labels[k]) * 10 for k in chosen])
    classifier = Classifier(cache_dir=cache_dir, valid_fraction=0.0, calibrate=False).fit(images, numbers)
    assert list(classifier.classes_) == [0, 10, 20]
    predicted = classifier.predict(images[:3])
    assert predicted.dtype == numbers.dtype and set(predicted) <= {0, 10, 20}
    with pytest.raises(ValueError, match="one label per image"):
        clone(classifier).fit(images, numbers[:-1])


def test_cross_val_score(data, cache_dir):
    paths, labels = data
    scores = cross_val_score(Classifier(cache_dir=cache_dir), paths, labels, cv=3)
    assert scores.shape == (3,) and scores.mean() > 0.5


def test_grid_search_over_a_head_parameter(data, cache_dir):
    paths, labels = data
    grid = [{"C": 0.01}, {"C": 1.0}]
    search = GridSearchCV(Classifier(cache_dir=cache_dir), {"head_params": grid}, cv=2).fit(paths, labels)
    assert search.best_params_["head_params"] in grid
    assert search.best_estimator_.model_.card.head.params["C"] == search.best_params_["head_params"]["C"]
    assert search.predict(paths[:2]).shape == (2,)
