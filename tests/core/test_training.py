"""Training: reproducible bytes, content-addressed ids, the cache, splits, and clean failures."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

import photolabel
from photolabel.dataset import ImageRecord
from photolabel.errors import DataError, ImageError
from photolabel.training import assign_splits


def _model_bytes(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != "run.json"
    }


def test_same_inputs_give_byte_identical_models_cold_or_warm_any_threads(small_data, tmp_path):
    cold = photolabel.train(small_data, tmp_path / "cold", cache_dir=tmp_path / "cache-a", threads=1)
    warm = photolabel.train(small_data, tmp_path / "warm", cache_dir=tmp_path / "cache-a", threads=2)
    other = photolabel.train(small_data, tmp_path / "other", cache_dir=tmp_path / "cache-b", threads=2)
    assert cold.embeddings_computed == 60 and cold.embeddings_cached == 0
    assert warm.embeddings_computed == 0 and warm.embeddings_cached == 60  # nothing embedded again
    assert other.embeddings_computed == 60
    reference = _model_bytes(tmp_path / "cold")
    assert set(reference) >= {"model.json", "metrics.json", "lineage.json", "head/coef.npy", "head/intercept.npy"}
    assert _model_bytes(tmp_path / "warm") == reference
    assert _model_bytes(tmp_path / "other") == reference
    assert cold.model_id == warm.model_id == other.model_id
    assert (tmp_path / "cold" / "run.json").exists()


def test_hashed_files_hold_no_paths_times_or_host(trained_model, small_data):
    import platform

    for name, data in _model_bytes(trained_model).items():
        text = data.decode("utf-8", errors="ignore")
        assert str(small_data) not in text and str(trained_model) not in text, name
        assert platform.node() not in text or len(platform.node()) < 3, name


def test_model_id_depends_on_seed_and_head_but_not_on_where_data_lives(small_data, tmp_path, cache_dir):
    base = photolabel.train(small_data, tmp_path / "a", cache_dir=cache_dir)
    moved = tmp_path / "elsewhere"
    shutil.copytree(small_data, moved)
    assert photolabel.train(moved, tmp_path / "b", cache_dir=cache_dir).model_id == base.model_id
    assert photolabel.train(small_data, tmp_path / "c", cache_dir=cache_dir, seed=7).model_id != base.model_id
    assert photolabel.train(small_data, tmp_path / "d", cache_dir=cache_dir, head="nb").model_id != base.model_id


def test_lineage_lists_every_image_sorted_by_sha256(trained_model):
    model = photolabel.load_model(trained_model)
    images = model.lineage["images"]
    assert len(images) == 60
    assert [row["sha256"] for row in images] == sorted(row["sha256"] for row in images)
    assert {row["split"] for row in images} == {"train", "valid"}
    assert model.card.manifest_sha256 == model.lineage["manifest_sha256"]


def test_split_is_stratified_seeded_and_never_empties_a_label():
    records = [ImageRecord(f"{label}/{i}", Path("x"), f"{label}{i:062d}", label)
               for label in ("a", "b") for i in range(10)]
    split = assign_splits(records, ("a", "b"), seed=1, valid_fraction=0.2)
    valid = [r for r in split if r.split == "valid"]
    assert sorted(r.label for r in valid) == ["a", "a", "b", "b"]
    assert assign_splits(records, ("a", "b"), 1, 0.2) == split
    assert [r.sha256 for r in assign_splits(records, ("a", "b"), 2, 0.2) if r.split == "valid"] != [
        r.sha256 for r in valid
    ]
    tiny = [ImageRecord("a/0", Path("x"), "0" * 64, "a"), ImageRecord("b/0", Path("x"), "1" * 64, "b")]
    assert all(r.split == "train" for r in assign_splits(tiny, ("a", "b"), 1, 0.5))


def test_valid_folder_is_the_validation_set(small_data, tmp_path, cache_dir):
    root = tmp_path / "split"
    for label_dir in sorted(small_data.iterdir()):
        files = sorted(label_dir.iterdir())
        (root / "train" / label_dir.name).mkdir(parents=True)
        (root / "valid" / label_dir.name).mkdir(parents=True)
        for i, f in enumerate(files):
            shutil.copy(f, root / ("valid" if i < 4 else "train") / label_dir.name / f.name)
    result = photolabel.train(root, tmp_path / "m", cache_dir=cache_dir)
    assert (result.n_train, result.n_valid) == (48, 12)
    assert result.metrics["validation"]["n"] == 12


def test_bad_image_fails_cleanly_and_skip_bad_trains_on_the_rest(small_data, tmp_path, cache_dir):
    data = tmp_path / "data"
    shutil.copytree(small_data, data)
    (data / "halter" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageError, match="broken.jpg"):
        photolabel.train(data, tmp_path / "out", cache_dir=cache_dir)
    assert not (tmp_path / "out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no staging left
    result = photolabel.train(data, tmp_path / "out", cache_dir=cache_dir, skip_bad=True)
    assert [b.source for b in result.skipped] == ["halter/broken.jpg"]
    assert result.n_train + result.n_valid == 60


def test_failed_retrain_keeps_the_previous_model(trained_model, tmp_path, cache_dir):
    out = tmp_path / "model"
    shutil.copytree(trained_model, out)
    before = _model_bytes(out)
    with pytest.raises(DataError):
        photolabel.train(_single_label(tmp_path), out, cache_dir=cache_dir)
    assert _model_bytes(out) == before


def _single_label(tmp_path: Path) -> Path:
    folder = tmp_path / "one" / "only"
    folder.mkdir(parents=True)
    from PIL import Image

    Image.new("RGB", (8, 8), "red").save(folder / "x.png")
    return tmp_path / "one"


def test_predict_api_pairs_results_with_inputs(trained_model, small_data):
    model = photolabel.load_model(trained_model)
    good = min((small_data / "sweater").iterdir())
    results = model.predict_batch([good, b"not an image", str(good)])
    assert results[0].best in model.labels and results[2].sha256 == results[0].sha256
    assert results[1].source == "<bytes>" and "not an image" in results[1].reason
    probs = model.predict_proba([good])
    assert probs.shape == (1, 3) and np.isclose(probs.sum(), 1.0)
    with pytest.raises(ImageError):
        model.predict([b"garbage"])


def test_tampered_model_file_is_refused(trained_model, tmp_path):
    out = tmp_path / "m"
    shutil.copytree(trained_model, out)
    coef = out / "head" / "coef.npy"
    data = bytearray(coef.read_bytes())
    data[-1] ^= 1
    coef.write_bytes(bytes(data))
    with pytest.raises(photolabel.ModelError, match="coef.npy"):
        photolabel.load_model(out)


def test_head_parameters_and_version_enter_the_model_id(small_data, tmp_path, cache_dir, monkeypatch):
    from photolabel.heads import LogisticHead

    base = photolabel.train(small_data, tmp_path / "base", cache_dir=cache_dir)
    card = base.model.card
    assert card.head.params == {"C": 1.0, "max_iter": 2000} and card.head.version == LogisticHead.version
    assert card.config.head_params == card.head.params
    # the defaults, given explicitly: the same model
    explicit = photolabel.train(small_data, tmp_path / "explicit", head_params={"C": 1.0}, cache_dir=cache_dir)
    assert explicit.model_id == base.model_id
    changed = photolabel.train(small_data, tmp_path / "changed", head_params={"C": 0.1}, cache_dir=cache_dir)
    assert changed.model_id != base.model_id
    assert changed.model.card.head.params["C"] == 0.1
    # a new head version (its fitting or storage changed) is a new model, even with the same parameters
    monkeypatch.setattr(LogisticHead, "version", LogisticHead.version + 1)
    bumped = photolabel.train(small_data, tmp_path / "bumped", cache_dir=cache_dir)
    assert bumped.model_id != base.model_id
    # a changed built-in default changes the id too: defaults are written into the config
    monkeypatch.setattr(LogisticHead.__init__, "__kwdefaults__", {"seed": 1234, "C": 0.5, "max_iter": 2000})
    redefault = photolabel.TrainConfig()  # as a new release would build it at import
    assert redefault.head_params["C"] == 0.5
    redefaulted = photolabel.train(small_data, tmp_path / "redefaulted", redefault, cache_dir=cache_dir)
    assert redefaulted.model_id not in (base.model_id, bumped.model_id)


def test_train_takes_config_and_runtime_objects(small_data, tmp_path, cache_dir):
    from photolabel import Runtime, TrainConfig

    config = TrainConfig(head="nb", seed=5, valid_fraction=0.2)
    by_objects = photolabel.train(small_data, tmp_path / "a", config, Runtime(cache_dir=cache_dir, threads=1))
    by_keywords = photolabel.train(small_data, tmp_path / "b", head="nb", seed=5, valid_fraction=0.2,
                                   cache_dir=cache_dir)
    assert by_objects.model_id == by_keywords.model_id
    assert by_objects.model.card.config == config.replace(classes=("blouse", "halter", "sweater"))
