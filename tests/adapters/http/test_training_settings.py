"""The service's training settings for a head trained in epochs: EPOCHS, BATCH_SIZE, TENSORBOARD_LOGS_ENABLED."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from test_api import make_settings, running, tar_gz, wait_for_job

from photolabel.config import TRAIN_DEFAULTS


def test_epochs_and_batch_size_fill_only_what_an_mlp_request_leaves_out(tmp_path: Path, cache_dir: Path) -> None:
    settings = make_settings(tmp_path, cache_dir, epochs=3, batch_size=16)
    assert settings.epoch_params("mlp", {}) == {"epochs": 3, "batch_size": 16}
    assert settings.epoch_params("mlp", {"epochs": 5, "dropout": 0.5}) == {"epochs": 5, "batch_size": 16,
                                                                          "dropout": 0.5}
    assert settings.epoch_params("logistic", {"C": 0.1}) == {"C": 0.1}  # not trained in epochs
    assert settings.epoch_params("xgboost", {}) == {}  # unknown: left for TrainConfig to name
    assert settings.epoch_params(TRAIN_DEFAULTS.head, {}) == ({} if TRAIN_DEFAULTS.head != "mlp" else
                                                               {"epochs": 3, "batch_size": 16})


def test_epochs_must_be_positive(tmp_path: Path, cache_dir: Path) -> None:
    with pytest.raises(ValidationError, match="epochs"):
        make_settings(tmp_path, cache_dir, epochs=0)


def test_tensorboard_logs_need_tensorboardx(tmp_path: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    with pytest.raises(ValidationError, match=r"photolabel\[tensorboard\]"):
        make_settings(tmp_path, cache_dir, tensorboard_logs_enabled=True)
    assert make_settings(tmp_path, cache_dir).tensorboard_logs_enabled is False


def test_an_mlp_job_trains_for_epochs_and_writes_its_curves(tmp_path: Path, cache_dir: Path,
                                                            small_data: Path) -> None:
    pytest.importorskip("tensorboardX", reason="tensorboardX is not installed: pip install -e '.[test]'")
    settings = make_settings(tmp_path, cache_dir, epochs=3, batch_size=16, tensorboard_logs_enabled=True)
    with running(settings) as client:
        started = client.post("/v1/train", files={"data": ("fashion.tar.gz", tar_gz(small_data), "application/gzip")},
                              data={"head": "mlp", "head_params": '{"dropout": 0.5}'})
        assert started.status_code == 202, started.text
        job_id = started.json()["job_id"]
        job = wait_for_job(client, job_id)
        assert job["status"] == "ready", job
        model = client.get(f"/v1/models/{job_id}").json()
    assert model["head"]["name"] == "mlp"
    assert {name: model["head"]["params"][name] for name in ("epochs", "batch_size", "dropout")} == {
        "epochs": 3, "batch_size": 16, "dropout": 0.5}
    assert model["config"]["head_params"] == model["head"]["params"]
    assert list((tmp_path / "data" / "tensorboard" / job_id).glob("events.out.tfevents.*"))
