"""TensorBoard event files: written by EventWriter, read back by TensorBoard's own reader; they never change a model."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import photolabel
from photolabel.config import Runtime
from photolabel.errors import MissingDependencyError
from photolabel.tensorboard import EventWriter, markdown_table, require_tensorboard

pytest.importorskip("tensorboardX", reason="tensorboardX is not installed: pip install -e '.[test]'")
event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="tensorboard (the reader) is not installed: pip install -e '.[test]'")

EPOCH_TAGS = {"loss/train", "accuracy/train", "loss/early_stopping", "accuracy/early_stopping"}


def read_events(logdir: Path) -> event_accumulator.EventAccumulator:
    events = event_accumulator.EventAccumulator(str(logdir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def test_scalars_and_text_read_back(tmp_path: Path) -> None:
    with EventWriter(tmp_path / "run") as writer:
        for step in range(1, 4):
            writer.scalar("loss/train", 1.0 / step, step)
        writer.text("tuning/search", markdown_table(["C", "accuracy"], [[0.1, 0.8], [1.0, 0.85]]))
    assert len(list((tmp_path / "run").glob("events.out.tfevents.*"))) == 1
    events = read_events(tmp_path / "run")
    assert events.Tags()["scalars"] == ["loss/train"]
    points = events.Scalars("loss/train")
    assert [p.step for p in points] == [1, 2, 3]
    assert [p.value for p in points] == pytest.approx([1.0, 0.5, 1 / 3])
    (text,) = events.Tensors("tuning/search/text_summary")
    assert text.tensor_proto.string_val[0].decode() == "| C | accuracy |\n|---|---|\n| 0.1 | 0.8 |\n| 1 | 0.85 |"


def test_markdown_table_escapes_cells() -> None:
    assert markdown_table(["a|b"], [["x\ny"], [1.23456789]]) == "| a\\|b |\n|---|\n| x y |\n| 1.23457 |"


def test_missing_tensorboardx_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "tensorboardX", None)  # import fails as if not installed
    with pytest.raises(MissingDependencyError, match=r"pip install 'photolabel\[tensorboard\]'"):
        require_tensorboard()
    with pytest.raises(MissingDependencyError, match="tensorboardX"):
        EventWriter(tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_training_an_mlp_writes_its_curve_and_the_same_model(small_data: Path, cache_dir: Path,
                                                              tmp_path: Path) -> None:
    params = {"epochs": 8, "patience": 100}
    logged = photolabel.train(small_data, tmp_path / "logged", head="mlp", head_params=params,
                              runtime=Runtime(cache_dir=cache_dir, tensorboard_dir=tmp_path / "board"))
    plain = photolabel.train(small_data, tmp_path / "plain", head="mlp", head_params=params, cache_dir=cache_dir)
    for name in ("head/w1.npy", "head/w2.npy", "head/history.npy", "model.json", "metrics.json"):
        assert (tmp_path / "logged" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name
    assert logged.model_id == plain.model_id

    events = read_events(tmp_path / "board")
    assert set(events.Tags()["scalars"]) == EPOCH_TAGS
    for tag in EPOCH_TAGS:
        assert [p.step for p in events.Scalars(tag)] == list(range(1, 9)), tag


def test_a_head_that_is_not_trained_in_epochs_writes_no_curves(small_data: Path, cache_dir: Path,
                                                               tmp_path: Path) -> None:
    photolabel.train(small_data, tmp_path / "model", runtime=Runtime(cache_dir=cache_dir,
                                                                     tensorboard_dir=tmp_path / "board"))
    assert read_events(tmp_path / "board").Tags()["scalars"] == []


def test_tuning_writes_its_search_table_and_the_same_model(small_data: Path, cache_dir: Path, tmp_path: Path) -> None:
    logged = photolabel.train(small_data, tmp_path / "logged", tune=True,
                              runtime=Runtime(cache_dir=cache_dir, tensorboard_dir=tmp_path / "board"))
    plain = photolabel.train(small_data, tmp_path / "plain", tune=True, cache_dir=cache_dir)
    assert logged.model_id == plain.model_id
    assert (tmp_path / "logged" / "metrics.json").read_bytes() == (tmp_path / "plain" / "metrics.json").read_bytes()
    (text,) = read_events(tmp_path / "board").Tensors("search/text_summary")
    table = text.tensor_proto.string_val[0].decode()
    assert table.startswith("| head | params | mean log-loss | mean accuracy |")
    assert table.count("\n| logistic |") == len(logged.metrics["tuning"]["candidates"])
