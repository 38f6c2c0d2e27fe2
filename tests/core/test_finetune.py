"""--finetune: the last backbone block(s) trained on cached activations, reproducibly, inside the model."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

import photolabel
from photolabel import finetune
from photolabel.adapters.cli import main
from photolabel.backbones import get_backbone
from photolabel.backbones.efficientnet import VARIANTS as _VARIANTS
from photolabel.config import TrainConfig
from photolabel.errors import ConfigError, ModelError
from photolabel.export import export_onnx
from photolabel.images import decode_image, resize_rgb

#: two epochs at most keep the suite fast; the default recipe is measured in the report, not here
FAST = finetune.Recipe(max_epochs=2, patience=1)


#: the input size (height, width) of the backbone these tests tune
SIZE = next((v.image_size, v.image_size) for v in _VARIANTS if v.name == "efficientnet-lite0")  # these tests' backbone


@pytest.fixture(scope="module")
def fresh_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache of this module's own, so the first run below computes every activation."""
    return tmp_path_factory.mktemp("finetune-cache")


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, small_data: Path, fresh_cache: Path):
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(finetune, "RECIPE", FAST)
        return photolabel.train(small_data, tmp_path_factory.mktemp("ft") / "model", finetune=True,
                                backbone="efficientnet-lite0", cache_dir=fresh_cache, threads=2)


@pytest.fixture
def fast_recipe(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(finetune, "RECIPE", FAST)


def _hashed_files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name != "run.json"}


def test_same_inputs_give_the_same_bytes_and_the_second_run_computes_no_activation(
        first_run, small_data, fresh_cache, tmp_path, fast_recipe):
    assert first_run.embeddings_computed == 60 and first_run.embeddings_cached == 0
    # again through the CLI's flag, on one thread and in other batches: nothing computed, the same bytes
    result = CliRunner().invoke(main, ["train", str(small_data), "-o", str(tmp_path / "again"), "--finetune", "--json",
                                       "--backbone", "efficientnet-lite0",
                                       "-q", "--cache-dir", str(fresh_cache), "--threads", "1", "--batch-size", "7"])
    assert result.exit_code == 0, result.output
    again = json.loads(result.output)
    assert again["embeddings"] == {"computed": 0, "cached": 60}  # every activation from the cache
    assert again["model_id"] == first_run.model_id
    assert _hashed_files(Path(first_run.path)) == _hashed_files(tmp_path / "again")
    trunk = get_backbone("efficientnet-lite0", cache_dir=fresh_cache).trunk(FAST.tail_blocks)
    assert (fresh_cache / "embeddings" / trunk.hash[:32]).is_dir()  # activations are keyed by the trunk's hash


def test_the_card_records_the_cut_the_tail_and_a_backbone_hash_over_both(first_run):
    card = first_run.model.card
    section = card.finetune
    tail = (Path(first_run.path) / finetune.TAIL_FILE).read_bytes()
    base = get_backbone("efficientnet-lite0")
    assert card.config.finetune is True and card.backbone.name == "efficientnet-lite0"
    assert section["tail_blocks"] == FAST.tail_blocks and section["recipe"] == FAST.to_dict()
    assert section["trunk_hash"] == base.trunk(FAST.tail_blocks).hash
    assert 1 <= section["best_epoch"] <= section["epochs_run"] <= FAST.max_epochs
    assert card.files[finetune.TAIL_FILE] == section["tail_sha256"] == hashlib.sha256(tail).hexdigest()
    assert card.backbone.hash == finetune.tuned_hash(section["trunk_hash"], section["tail_sha256"]) != base.hash
    assert first_run.metrics["finetune"]["epochs_run"] == section["epochs_run"]


def test_the_tuned_tail_differs_from_imagenet_and_the_model_beats_chance(first_run, small_data):
    model = first_run.model
    files = sorted(small_data.rglob("*.jpg"))[::6]
    base = get_backbone("efficientnet-lite0")
    images = np.stack([base.prepare(decode_image(f.read_bytes())) for f in files])
    tuned = model.backbone.embed_batch(images)
    assert tuned.shape == base.embed_batch(images).shape == (len(files), 1280)
    assert np.abs(tuned - base.embed_batch(images)).max() > 1e-3  # the ImageNet tail would give the same vectors
    assert first_run.metrics["validation"]["accuracy"] > 1 / 3


def test_load_and_predict_through_model(first_run, small_data):
    model = photolabel.load_model(first_run.path)
    assert isinstance(model.backbone, finetune.FinetunedBackbone) and model.backbone.hash == model.card.backbone.hash
    files = sorted(small_data.rglob("*.jpg"))[::5]
    predictions = model.predict(files)
    assert [p.image for p in predictions] == [str(f) for f in files]
    assert all(p.label in (*model.labels, "unknown") for p in predictions)
    np.testing.assert_allclose(model.predict_proba(files).sum(axis=1), 1.0, atol=1e-9)
    images = np.stack([model.backbone.prepare(decode_image(f.read_bytes())) for f in files])
    together = model.backbone.embed_batch(images)
    alone = np.concatenate([model.backbone.embed_batch(images[i : i + 1]) for i in range(len(files))])
    assert together.tobytes() == alone.tobytes()  # what training fitted on is what prediction sees


def test_export_merges_trunk_tail_and_head_and_equals_predict(first_run, small_data, tmp_path):
    model = photolabel.load_model(first_run.path)
    files = sorted(small_data.rglob("*.jpg"))[::4]
    out = export_onnx(model, tmp_path / "tuned.onnx")
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    batch = np.stack([resize_rgb(decode_image(f.read_bytes(), draft_size=SIZE), SIZE) for f in files])
    outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"image": batch})))
    predictions = model.predict(files)
    np.testing.assert_allclose(outputs["probabilities"],
                               [[p.scores[label] for label in model.labels] for p in predictions], atol=1e-4)
    assert outputs["unknown"].tolist() == [p.unknown for p in predictions]


def test_a_tampered_tail_is_refused_at_load(first_run, tmp_path):
    copy = tmp_path / "model"
    shutil.copytree(first_run.path, copy)
    tail = copy / finetune.TAIL_FILE
    data = bytearray(tail.read_bytes())
    data[-10] ^= 1
    tail.write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"finetune/tail\.onnx: sha256 .* does not match"):
        photolabel.load_model(copy)


def test_classic_backbone_cannot_be_finetuned(small_data, tmp_path, cache_dir):
    with pytest.raises(ConfigError, match="fine-tuning needs a network backbone") as raised:
        TrainConfig(backbone="classic", finetune=True)
    assert raised.value.field == "finetune"
    with pytest.raises(ConfigError, match="fine-tuning needs a network backbone"):
        photolabel.train(small_data, tmp_path / "m", backbone="classic", finetune=True, cache_dir=cache_dir)
    assert not (tmp_path / "m").exists()
    result = CliRunner().invoke(main, ["train", str(small_data), "-o", str(tmp_path / "m"), "--backbone", "classic",
                                       "--finetune", "-q"])
    assert result.exit_code == 2 and "--finetune" in result.output and "classic" in result.output


def test_holdout_is_per_label_seeded_and_leaves_training_rows():
    keys = [f"{i:064x}" for i in range(40)]
    y = np.array([0] * 20 + [1] * 19 + [2])
    mask = finetune.holdout_mask(keys, y, seed=1, fraction=0.15)
    assert mask[:20].sum() == 3 and mask[20:39].sum() == 3 and not mask[39]  # a label's only image trains
    assert (finetune.holdout_mask(keys, y, seed=1, fraction=0.15) == mask).all()
    assert (finetune.holdout_mask(keys, y, seed=2, fraction=0.15) != mask).any()


def test_deterministic_torch_restores_the_process_settings():
    import torch

    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    state = torch.random.get_rng_state()
    with finetune.deterministic_torch(7):
        assert torch.get_num_threads() == 1 and torch.are_deterministic_algorithms_enabled()
        torch.rand(3)
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(torch.random.get_rng_state(), state)
