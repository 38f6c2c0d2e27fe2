"""POST /v1/train's ``finetune`` form field reaches the TrainConfig, checked like every setting."""

from __future__ import annotations

from pathlib import Path

from test_api import assert_error, make_settings, running, tar_gz


def test_finetune_with_a_backbone_without_layers_is_a_422_naming_it(tmp_path: Path, cache_dir: Path,
                                                                     small_data: Path) -> None:
    with running(make_settings(tmp_path, cache_dir)) as client:
        response = client.post("/v1/train", files={"data": ("data.tar.gz", tar_gz(small_data), "application/gzip")},
                               data={"backbone": "classic", "finetune": "true"})
        message = assert_error(response, 422, "invalid_config")
        assert "fine-tuning needs a network backbone" in message and "classic" in message
        assert client.get("/v1/jobs").json()["jobs"] == []  # nothing queued
