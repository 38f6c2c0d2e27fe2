"""TrainConfig and Runtime: defaults written once, every value checked when built."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

import photolabel
from photolabel.config import RUNTIME_DEFAULTS, TRAIN_DEFAULTS, Runtime, TrainConfig, merge_overrides
from photolabel.errors import ConfigError, UnknownNameError


def test_defaults_are_complete_and_hold_every_head_parameter():
    assert TRAIN_DEFAULTS.to_dict() == {
        "backbone": "efficientnet-lite1", "head": "logistic", "head_params": {"C": 1.0, "max_iter": 2000},
        "seed": 1234, "valid_fraction": 0.1, "classes": None, "augment": 0, "finetune": False,
        "max_per_label": None, "balance": False, "calibrate": True, "unknown": True, "tune": False, "preset": None,
    }
    assert photolabel.TrainConfig is TrainConfig and photolabel.Runtime is Runtime


@pytest.mark.parametrize(("changes", "field", "needle"), [
    ({"seed": -1}, "seed", "0..4294967295"),
    ({"seed": 2**32}, "seed", "0..4294967295"),
    ({"seed": 1.5}, "seed", "whole number"),
    ({"seed": True}, "seed", "whole number"),
    ({"valid_fraction": 1.0}, "valid_fraction", "[0, 1)"),
    ({"valid_fraction": -0.1}, "valid_fraction", "[0, 1)"),
    ({"valid_fraction": float("nan")}, "valid_fraction", "number"),
    ({"head_params": {"C": 0}}, "C", "float in (0, inf)"),
    ({"head_params": {"C": "abc"}}, "C", "float in (0, inf)"),
    ({"head_params": {"max_iter": 2.5}}, "max_iter", "int in [1, 1e+06]"),
    ({"head_params": {"gamma": 1}}, "gamma", "has no parameter 'gamma'; its parameters: C, max_iter"),
    ({"head_params": "C=1"}, "head_params", "mapping"),
    ({"classes": "a b"}, "classes", "not one string"),
    ({"classes": ["a", "a"]}, "classes", "listed twice"),
    ({"classes": ["a", " "]}, "classes", "not a label name"),
])
def test_bad_values_are_refused_with_the_field_named(changes, field, needle):
    with pytest.raises(ConfigError) as raised:
        TrainConfig(**changes)
    assert raised.value.field == field
    assert needle in str(raised.value)
    assert isinstance(raised.value, ValueError)  # catchable as the builtin too


def test_unknown_backbone_and_head_list_the_known_ones():
    with pytest.raises(UnknownNameError, match="known backbones: classic"):
        TrainConfig(backbone="resnet")
    with pytest.raises(UnknownNameError, match="known heads: .*logistic"):
        TrainConfig(head="xgboost")


def test_head_parameters_are_typed_from_text_and_completed_with_defaults():
    config = TrainConfig(head="svm", head_params={"C": "0.5", "gamma": "auto"})
    assert config.head_params == {"C": 0.5, "kernel": "rbf", "gamma": "auto"}
    rf = TrainConfig(head="rf", head_params={"max_depth": "none", "n_estimators": "50"})
    assert rf.head_params == {"n_estimators": 50, "max_depth": None, "min_samples_leaf": 1}
    assert isinstance(rf.head_params["n_estimators"], int)


def test_replace_checks_again_and_a_new_head_starts_from_its_defaults():
    config = TrainConfig(head_params={"C": 0.1})
    with pytest.raises(ConfigError):
        config.replace(seed=-5)
    assert config.replace(head="knn").head_params == {"n_neighbors": 5}
    assert config.replace(seed=9).head_params["C"] == 0.1
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 3  # type: ignore[misc]


def test_round_trip_and_older_documents():
    config = TrainConfig(head="knn", head_params={"n_neighbors": 3}, seed=7, classes=("b", "a"))
    assert TrainConfig.from_dict(config.to_dict()) == config
    older = {"backbone": "efficientnet-lite0", "head": "logistic", "seed": 3, "valid_fraction": 0.2}
    assert TrainConfig.from_dict(older).head_params == {"C": 1.0, "max_iter": 2000}
    # features that did not exist when an older model was trained are off for it
    assert not TrainConfig.from_dict(older).calibrate and not TrainConfig.from_dict(older).unknown


def test_runtime_checks_its_ranges_and_never_enters_the_config():
    assert RUNTIME_DEFAULTS.batch_size == 32 and RUNTIME_DEFAULTS.workers == 2
    for changes, field in (({"threads": 0}, "threads"), ({"batch_size": 0}, "batch_size"),
                           ({"batch_size": 5000}, "batch_size"), ({"max_pixels": 0}, "max_pixels")):
        with pytest.raises(ConfigError) as raised:
            Runtime(**changes)
        assert raised.value.field == field
    runtime = Runtime(threads=1, cache_dir="some/dir")  # type: ignore[arg-type]
    assert runtime.cache_dir == Path("some/dir") and runtime.workers == 1
    assert not {f.name for f in dataclasses.fields(Runtime)} & set(TRAIN_DEFAULTS.to_dict())


def test_merge_overrides_applies_only_given_values():
    config = merge_overrides(TRAIN_DEFAULTS, seed=None, head="nb")
    assert config.head == "nb" and config.seed == TRAIN_DEFAULTS.seed
    assert merge_overrides(TRAIN_DEFAULTS) is TRAIN_DEFAULTS


def test_train_refuses_a_bad_value_before_reading_any_data(tmp_path):
    # The directory does not exist: the setting is refused first, with nothing written.
    with pytest.raises(ConfigError, match="seed"):
        photolabel.train(tmp_path / "missing", tmp_path / "out", head="rf", seed=-1)
    assert not (tmp_path / "out").exists()
