"""The data set type: records, refused inputs, label lists, temporary folders and the manifest hash."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from photolabel.dataset import BadInput, Dataset, ImageRecord, manifest_rows, manifest_sha256, parse_label_list
from photolabel.errors import DataError

SHA_A, SHA_B, SHA_C = "a" * 64, "b" * 64, "c" * 64


def _records() -> list[ImageRecord]:
    return [
        ImageRecord("cats/1.jpg", Path("/data/cats/1.jpg"), SHA_B, "cat"),
        ImageRecord("dogs/2.jpg", Path("/data/dogs/2.jpg"), SHA_A, "dog", "valid"),
        ImageRecord("cats/3.jpg", Path("/data/cats/3.jpg"), SHA_C, "cat", "train"),
    ]


def test_image_record_defaults_to_auto_split_and_is_frozen():
    record = ImageRecord("x.jpg", Path("x.jpg"), SHA_A, "cat")
    assert record.split == "auto"
    with pytest.raises(dataclasses.FrozenInstanceError):
        record.label = "dog"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("not an image", "photos/x.jpg: not an image"),
        ("photos/x.jpg: not an image", "photos/x.jpg: not an image"),  # the source is not repeated
    ],
)
def test_bad_input_message_names_the_source_once(reason, message):
    bad = BadInput("photos/x.jpg", reason)
    assert bad.message == message and str(bad) == message
    assert bad.code == "bad_input"


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("cat dog", ("cat", "dog")),
        ("cat,dog , bird", ("cat", "dog", "bird")),
        (" , ,, ", None),
        ("", None),
        (None, None),
        ([], None),
        (["cat,dog", "bird"], ("cat", "dog", "bird")),  # several chunks, as a repeated option gives them
        (["cat", ("dog", "bird")], ("cat", "dog", "bird")),
        (("zebra", "ant"), ("zebra", "ant")),  # the order is kept, not sorted
    ],
)
def test_parse_label_list(given, expected):
    assert parse_label_list(given) == expected


@pytest.mark.parametrize("given", ["cat dog cat", ["cat,dog", "dog"], ["cat", "cat"]])
def test_parse_label_list_refuses_a_label_listed_twice(given):
    with pytest.raises(DataError, match="'(cat|dog)' is listed twice"):
        parse_label_list(given)


def test_dataset_context_manager_removes_its_temporary_folders(tmp_path):
    folders = [tmp_path / "extracted", tmp_path / "downloads"]
    for folder in folders:
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "x.jpg").write_bytes(b"x")
    keep = tmp_path / "user-data"
    keep.mkdir()
    with Dataset(_records(), ("cat", "dog"), temp_dirs=list(folders)) as dataset:
        assert all(folder.exists() for folder in folders)
    assert not any(folder.exists() for folder in folders)
    assert dataset.temp_dirs == [] and keep.exists()
    dataset.close()  # a second close is harmless


def test_dataset_closes_even_when_the_block_fails(tmp_path):
    folder = tmp_path / "tmp"
    folder.mkdir()
    with pytest.raises(RuntimeError), Dataset([], ("cat",), temp_dirs=[folder]):
        raise RuntimeError("boom")
    assert not folder.exists()


def test_label_counts_follow_the_label_order_and_include_empty_labels():
    dataset = Dataset(_records(), ("dog", "cat", "bird"))
    counts = dataset.label_counts()
    assert counts == {"dog": 1, "cat": 2, "bird": 0}
    assert list(counts) == ["dog", "cat", "bird"]


def test_manifest_rows_hold_content_label_and_split_sorted_by_sha256():
    rows = manifest_rows(_records())
    assert rows == [
        {"sha256": SHA_A, "label": "dog", "split": "valid"},
        {"sha256": SHA_B, "label": "cat", "split": "auto"},
        {"sha256": SHA_C, "label": "cat", "split": "train"},
    ]


def test_manifest_sha256_golden_value():
    record = ImageRecord("x.jpg", Path("x.jpg"), SHA_A, "cat")
    canonical = (
        '{"labels":["cat","dog"],"rows":[{"label":"cat","sha256":"' + SHA_A + '","split":"auto"}]}\n'
    ).encode()
    assert manifest_sha256([record], ["cat", "dog"]) == hashlib.sha256(canonical).hexdigest()


def test_manifest_sha256_ignores_order_source_and_path():
    records = _records()
    reference = manifest_sha256(records, ("cat", "dog"))
    moved = [dataclasses.replace(r, source=f"https://example.org/{i}.jpg", path=Path(f"/tmp/{i}"))
             for i, r in enumerate(reversed(records))]
    assert manifest_sha256(moved, ["cat", "dog"]) == reference


@pytest.mark.parametrize(
    "change",
    [
        lambda rs: [dataclasses.replace(rs[0], label="dog"), *rs[1:]],
        lambda rs: [dataclasses.replace(rs[0], split="valid"), *rs[1:]],
        lambda rs: [dataclasses.replace(rs[0], sha256="d" * 64), *rs[1:]],
        lambda rs: rs[1:],
    ],
    ids=["label", "split", "content", "one-less"],
)
def test_manifest_sha256_changes_with_content_labels_and_splits(change):
    records = _records()
    assert manifest_sha256(change(records), ("cat", "dog")) != manifest_sha256(records, ("cat", "dog"))


def test_manifest_sha256_includes_the_label_order():
    records = _records()
    assert manifest_sha256(records, ("dog", "cat")) != manifest_sha256(records, ("cat", "dog"))
