"""The model directory: the model card's JSON form, atomic writes, and hash checks on read."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import uuid
from pathlib import Path

import pytest

from photolabel import artifact, storage
from photolabel.artifact import (
    FORMAT,
    FORMAT_VERSION,
    BackboneCard,
    HeadCard,
    ModelCard,
    compute_model_id,
    read_model_dir,
    write_model_dir,
)
from photolabel.config import TrainConfig
from photolabel.errors import ModelError, ModelIntegrityError, OutputError
from photolabel.hashing import sha256_file

HEAD_PARAMS = {"C": 0.5, "max_iter": 100}


def _card(**changes: object) -> ModelCard:
    """A consistent card: its model_id is the hash of what it describes (checked on read)."""
    config = TrainConfig(head_params=HEAD_PARAMS, seed=7, classes=("cat", "dog"))
    card = ModelCard(
        model_id=compute_model_id("c" * 64, config, 1, "b" * 64),
        labels=("cat", "dog"),
        backbone=BackboneCard("efficientnet-lite0", "b" * 64, 1280,
                              {"image_size": [224, 224], "resample": "bilinear", "layout": "NHWC-uint8"}),
        head=HeadCard("logistic", dict(HEAD_PARAMS), seed=7, version=1),
        config=config,
        manifest_sha256="c" * 64,
        photolabel_version="0.1.0",
    )
    return dataclasses.replace(card, **changes)


def _write_head(folder: Path) -> list[str]:
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\x00\x01\x02")
    (folder / "bias.bin").write_bytes(b"\x03")
    return ["weights.bin", "bias.bin"]


def _write(out: Path, *, metrics: dict | None = None, run: dict | None = None, write_head=_write_head) -> Path:
    return write_model_dir(out, card=_card(), metrics=metrics or {"accuracy": 0.9},
                           lineage={"manifest_sha256": "c" * 64}, write_head=write_head, run=run)


# -- the card ----------------------------------------------------------------------------------

def test_card_round_trips_through_json():
    card = _card(files={"metrics.json": "d" * 64})
    doc = json.loads(json.dumps(card.to_dict()))
    assert doc["format"] == FORMAT and doc["format_version"] == FORMAT_VERSION
    assert doc["head"] == {"name": "logistic", "version": 1, "params": HEAD_PARAMS, "seed": 7}
    assert ModelCard.from_dict(doc) == card
    parsed = ModelCard.from_dict(doc)
    assert parsed.backbone.image_size == (224, 224)
    assert parsed.config.classes == ("cat", "dog") and parsed.labels == ("cat", "dog")


def test_older_card_without_head_version_head_params_or_classes_still_parses():
    doc = _card().to_dict()
    del doc["head"]["version"], doc["config"]["head_params"], doc["config"]["classes"]
    card = ModelCard.from_dict(doc)
    assert card.head.version == 1
    assert dict(card.config.head_params) == HEAD_PARAMS  # taken from head.params
    assert card.config.classes is None
    assert card.files == {}


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"format": "something-else"}, "not a photolabel model"),
        ({"format_version": FORMAT_VERSION + 1}, f"format version {FORMAT_VERSION + 1} is not supported"),
    ],
)
def test_card_of_another_format_is_refused_naming_the_file(change, words):
    doc = {**_card().to_dict(), **change}
    with pytest.raises(ModelError, match=words) as caught:
        ModelCard.from_dict(doc, where="/models/x/model.json")
    assert str(caught.value).startswith("/models/x/model.json: ")


@pytest.mark.parametrize("field", ["labels", "model_id", "backbone", "head", "config"])
def test_card_missing_a_field_is_refused_naming_file_and_field(field):
    doc = _card().to_dict()
    del doc[field]
    with pytest.raises(ModelError, match=f"^where.json: missing field '{field}'$"):
        ModelCard.from_dict(doc, where="where.json")


def test_card_with_a_bad_config_value_is_a_model_error_naming_the_file():
    doc = _card().to_dict()
    doc["config"]["seed"] = -1
    with pytest.raises(ModelError, match=r"^where.json: seed must be in"):
        ModelCard.from_dict(doc, where="where.json")


# -- writing -----------------------------------------------------------------------------------

def test_written_directory_reads_back_with_every_file_but_run_and_model_json_listed(tmp_path):
    out = _write(tmp_path / "model", run={"host": "here"})
    files = read_model_dir(out)
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == {"model.json", "run.json", "metrics.json", "lineage.json", "head/weights.bin", "head/bias.bin"}
    assert set(files.card.files) == on_disk - {"model.json", "run.json"}
    assert all(files.card.files[name] == sha256_file(out / name) for name in files.card.files)
    assert files.card == dataclasses.replace(_card(), files=files.card.files)
    assert files.metrics == {"accuracy": 0.9} and files.run == {"host": "here"}
    assert files.lineage == {"manifest_sha256": "c" * 64}


def test_run_json_is_optional(tmp_path):
    out = _write(tmp_path / "model")
    assert not (out / "run.json").exists()
    assert read_model_dir(out).run is None


def test_same_inputs_write_the_same_bytes(tmp_path):
    first = _write(tmp_path / "a", run={"time": 1})
    second = _write(tmp_path / "b", run={"time": 2})
    assert (first / "model.json").read_bytes() == (second / "model.json").read_bytes()


def test_failing_head_writer_leaves_no_directory_and_no_staging(tmp_path):
    parent = tmp_path / "models"

    def broken(folder: Path) -> list[str]:
        folder.mkdir()
        (folder / "half.bin").write_bytes(b"x")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        _write(parent / "model", write_head=broken)
    assert list(parent.iterdir()) == []


def test_failing_rewrite_keeps_the_previous_model(tmp_path):
    out = _write(tmp_path / "model", metrics={"accuracy": 0.5})

    def broken(folder: Path) -> list[str]:
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        _write(out, write_head=broken)
    assert read_model_dir(out).metrics == {"accuracy": 0.5}
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_replacing_an_existing_model_or_an_empty_directory_works(tmp_path):
    out = _write(tmp_path / "model", metrics={"accuracy": 0.5})
    _write(out, metrics={"accuracy": 0.75})
    assert read_model_dir(out).metrics == {"accuracy": 0.75}
    empty = tmp_path / "empty"
    empty.mkdir()
    _write(empty)
    assert read_model_dir(empty).card.model_id == _card().model_id
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "model"]  # no .old- or .tmp- leftovers


def test_refuses_to_replace_a_non_empty_directory_that_holds_no_model(tmp_path):
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"precious")
    with pytest.raises(OutputError, match="holds no photolabel model") as caught:
        _write(out)
    assert caught.value.remedy == "out"
    assert "--out" not in str(caught.value)
    assert [p.name for p in out.iterdir()] == ["holiday.jpg"]
    assert [p.name for p in tmp_path.iterdir()] == ["photos"]


def test_refuses_to_replace_a_file(tmp_path):
    out = tmp_path / "model"
    out.write_text("not a folder")
    with pytest.raises(OutputError, match="not a directory") as caught:
        _write(out)
    assert caught.value.remedy == "out"
    assert out.read_text() == "not a folder"


def test_unwritable_place_is_an_output_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="cannot write the model"):
        _write(tmp_path / "file" / "model")


# -- reading -----------------------------------------------------------------------------------

def test_tampered_file_is_refused_naming_it_and_both_hashes(tmp_path):
    out = _write(tmp_path / "model")
    expected = sha256_file(out / "head" / "weights.bin")
    (out / "head" / "weights.bin").write_bytes(b"tampered")
    found = sha256_file(out / "head" / "weights.bin")
    with pytest.raises(ModelError) as caught:
        read_model_dir(out)
    message = str(caught.value)
    assert "weights.bin" in message and expected in message and found in message


def test_verify_false_skips_the_hashes_but_not_the_listing(tmp_path):
    out = _write(tmp_path / "model")
    (out / "head" / "weights.bin").write_bytes(b"tampered")
    assert read_model_dir(out, verify=False).card.model_id == _card().model_id
    (out / "head" / "bias.bin").unlink()
    with pytest.raises(ModelError, match="missing file head/bias.bin"):
        read_model_dir(out, verify=False)


def test_missing_listed_file_is_refused(tmp_path):
    out = _write(tmp_path / "model")
    (out / "lineage.json").unlink()
    with pytest.raises(ModelError, match="missing file lineage.json"):
        read_model_dir(out)


def test_missing_directory_or_model_json_is_refused(tmp_path):
    with pytest.raises(ModelError, match="no such model directory"):
        read_model_dir(tmp_path / "nowhere")
    with pytest.raises(ModelError, match="no model.json"):
        read_model_dir(tmp_path)
    (tmp_path / "model.json").write_text("[1, 2]")
    with pytest.raises(ModelError, match="expected a JSON object"):
        read_model_dir(tmp_path)
    (tmp_path / "model.json").write_text("{not json")
    with pytest.raises(ModelError, match="unreadable JSON"):
        read_model_dir(tmp_path)


# -- model.json is checked against itself: an edited card is refused ------------------------------

@pytest.mark.parametrize(("edit", "words"), [
    (lambda doc: doc.update(labels=["dog", "cat"]), "labels"),
    (lambda doc: doc["config"].update(seed=8), "is not the hash of the model's own description"),
    (lambda doc: doc["head"]["params"].update(C=9.0), "head parameters differ"),
    (lambda doc: doc["backbone"].update(hash="0" * 64), "the file was edited"),
    (lambda doc: doc["head"].update(version=2), "the file was edited"),
    (lambda doc: doc.update(model_id="f" * 64), "model_id ffff"),
])
def test_an_edited_model_json_is_refused(tmp_path, edit, words):
    out = _write(tmp_path / "model")
    doc = json.loads((out / "model.json").read_text())
    edit(doc)
    (out / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError, match=words):
        read_model_dir(out)
    read_model_dir(out, verify=False)  # verify=False reads it as it is


def test_an_older_card_is_not_held_to_the_new_id_formula(tmp_path):
    out = _write(tmp_path / "model")
    doc = json.loads((out / "model.json").read_text())
    del doc["head"]["version"], doc["config"]["head_params"]
    doc["model_id"] = "a" * 64  # computed by the earlier formula
    (out / "model.json").write_text(json.dumps(doc))
    assert read_model_dir(out).card.model_id == "a" * 64
    doc["labels"] = ["dog", "cat"]  # still checked against the lineage's
    (out / "lineage.json").write_text(json.dumps({"manifest_sha256": "c" * 64, "labels": ["cat", "dog"]}))
    (out / "model.json").write_text(json.dumps(doc))
    with pytest.raises(ModelError):
        read_model_dir(out)


def test_extra_files_and_derived_sections_are_written_hashed_and_read_back(tmp_path):
    card = _card(calibration={"temperature": 1.5}, unknown={"threshold": 0.3, "file": "unknown/c.npy"})
    out = write_model_dir(tmp_path / "model", card=card, metrics={}, lineage={"manifest_sha256": "c" * 64},
                          write_head=_write_head, extra_files={"unknown/c.npy": b"\x01\x02"})
    files = read_model_dir(out)
    assert files.card.calibration == {"temperature": 1.5} and files.card.unknown["threshold"] == 0.3
    assert files.card.finetune is None and "finetune" not in json.loads((out / "model.json").read_text())
    assert files.card.files["unknown/c.npy"] == sha256_file(out / "unknown" / "c.npy")
    (out / "unknown" / "c.npy").write_bytes(b"\x00")
    with pytest.raises(ModelError, match=r"unknown/c\.npy: sha256"):
        read_model_dir(out)
    with pytest.raises(ValueError, match="taken or unsafe"):
        write_model_dir(tmp_path / "m2", card=card, metrics={}, lineage={}, write_head=_write_head,
                        extra_files={"../escape": b""})


# -- model.json may only name files inside the model directory -------------------------------------

def _list_in_model_json(out: Path, name: str, digest: str = "0" * 64) -> None:
    doc = json.loads((out / "model.json").read_text())
    doc["files"][name] = digest
    (out / "model.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("entry", [
    "../secret.txt", "{secret}", "head/../../secret.txt", "C:/secret.txt", "head\\..\\..\\secret.txt",
    "head/\x00weights.bin", "", "./head/weights.bin", "head//weights.bin", "model.json",
], ids=["dotdot", "absolute", "dotdot-inside", "drive", "backslash", "nul", "empty", "dot", "empty-part",
        "model-json"])
@pytest.mark.parametrize("verify", [True, False])
def test_model_json_listing_a_path_outside_its_directory_is_refused_before_any_file_is_read(
        tmp_path, monkeypatch, entry, verify):
    secret = tmp_path / "secret.txt"
    secret.write_text("not the model's")
    out = _write(tmp_path / "model")
    name = entry.format(secret=secret)
    _list_in_model_json(out, name, sha256_file(secret))
    reads: list[Path] = []
    monkeypatch.setattr(artifact, "sha256_file", lambda path: reads.append(Path(path)) or "0" * 64)
    with pytest.raises(ModelIntegrityError) as caught:
        read_model_dir(out, verify=verify)
    assert reads == []  # refused before anything listed was read: no hash of a file outside leaks
    error = caught.value
    assert error.code == "model_corrupt" and "files lists" in str(error)
    assert error.detail is not None and error.detail.startswith("model.json: files lists")
    assert str(out) not in error.detail  # the detail names the entry, never the server's folder


def test_a_listed_file_reached_through_a_link_out_of_the_directory_is_refused(tmp_path):
    out = _write(tmp_path / "model")
    outside = tmp_path / "elsewhere"
    shutil.copytree(out / "head", outside)
    shutil.rmtree(out / "head")
    (out / "head").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ModelIntegrityError, match="leads outside the model directory"):
        read_model_dir(out)


@pytest.mark.parametrize(("section", "key", "name", "words"), [
    ("unknown", "centroids", "../centroids.npy", "has an empty, '.' or '..' part"),
    ("unknown", "centroids", "/etc/hostname", "is an absolute path"),
    ("unknown", "centroids", "unknown/other.npy", "does not list"),
    ("finetune", "tail_file", "../../tail.onnx", "has an empty, '.' or '..' part"),
])
def test_a_section_naming_a_file_outside_or_unhashed_is_refused(tmp_path, section, key, name, words):
    out = _write(tmp_path / "model")
    doc = json.loads((out / "model.json").read_text())
    doc[section] = {key: name}
    (out / "model.json").write_text(json.dumps(doc))
    for verify in (True, False):
        with pytest.raises(ModelIntegrityError, match=re.escape(words)):
            read_model_dir(out, verify=verify)


def test_a_hash_that_is_not_a_sha256_is_refused(tmp_path):
    out = _write(tmp_path / "model")
    _list_in_model_json(out, "head/weights.bin", "../../etc/passwd")
    with pytest.raises(ModelIntegrityError, match="not a sha256"):
        read_model_dir(out, verify=False)


def test_integrity_errors_carry_a_detail_without_the_models_path(tmp_path):
    out = _write(tmp_path / "model")
    (out / "head" / "weights.bin").write_bytes(b"tampered")
    with pytest.raises(ModelIntegrityError) as caught:
        read_model_dir(out)
    assert str(out) in str(caught.value)  # the CLI names the file
    assert caught.value.detail.startswith("head/weights.bin: sha256 ") and str(tmp_path) not in caught.value.detail
    (out / "lineage.json").unlink()
    with pytest.raises(ModelIntegrityError) as caught:
        read_model_dir(out, verify=False)
    assert caught.value.detail == "missing file lineage.json"


def test_a_stored_model_is_confined_by_string_checks_too(tmp_path):
    uri = f"memory://photolabel-tests/model-{uuid.uuid4().hex}"
    write_model_dir(uri, card=_card(), metrics={}, lineage={"manifest_sha256": "c" * 64}, write_head=_write_head)
    doc = json.loads(storage.read_bytes(f"{uri}/model.json"))
    doc["files"]["/etc/hostname"] = "0" * 64
    storage.write_bytes(f"{uri}/model.json", json.dumps(doc).encode())
    with pytest.raises(ModelIntegrityError, match="is an absolute path") as caught:
        read_model_dir(uri)
    assert uri in str(caught.value)
