"""photolabel.sources: every form of DATA becomes the same Dataset, or a one-line error."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

import pytest
from PIL import Image
from support import closed_port, serve_http

from photolabel.errors import (
    ArchiveTooLargeError,
    CsvLimitError,
    DataError,
    FetchError,
    HashMismatchError,
    SourceNotFoundError,
    UnsafeArchiveError,
)
from photolabel.fetch import FetchOptions
from photolabel.limits import ArchiveLimits, CsvLimits
from photolabel.sources import IMAGE_SUFFIXES, check_manifest, expand_image_args, load_dataset, read_image_source

FASHION_TINY = Path("/work/shared/datasets/fashion-tiny")
_counter = iter(range(1, 1_000_000))


def image_bytes(fmt: str = "PNG") -> bytes:
    """A small image whose bytes differ from every other one made here."""
    n = next(_counter)
    image = Image.new("RGB", (8, 8), (n % 256, (n // 256) % 256, 77))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write_image(path: Path, data: bytes | None = None) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = (
        data
        if data is not None
        else image_bytes("JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else "PNG")
    )
    path.write_bytes(data)
    return data


def make_label_folders(root: Path, labels: dict[str, int]) -> dict[str, bytes]:
    """root/<label>/<i>.png for each label; returns {relative source: bytes}."""
    written = {}
    for label, count in labels.items():
        for i in range(count):
            relative = f"{label}/{i}.png"
            written[relative] = write_image(root / relative)
    return written


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha1(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()  # the manifests' hash


@pytest.fixture
def temp_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Where load_dataset's temporary folders go, so tests can see them come and go."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def photolabel_temp_dirs(temp_root: Path) -> list[Path]:
    return sorted(temp_root.glob("photolabel-*"))


# --- folders -----------------------------------------------------------------------------


def test_folder_per_label(tmp_path: Path) -> None:
    written = make_label_folders(tmp_path / "data", {"cat": 2, "dog": 3})
    write_image(tmp_path / "data" / "dog" / "nested" / "deep" / "x.JPG")
    (tmp_path / "data" / "dog" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "data" / "dog" / ".hidden.png")
    write_image(tmp_path / "data" / "dog" / ".thumbs" / "t.png")
    write_image(tmp_path / "data" / "top-level-image.png")  # in no label folder: not used

    with load_dataset(tmp_path / "data") as dataset:
        assert dataset.labels == ("cat", "dog")
        sources = [r.source for r in dataset.records]
        assert sources == [
            "cat/0.png",
            "cat/1.png",
            "dog/0.png",
            "dog/1.png",
            "dog/2.png",
            "dog/nested/deep/x.JPG",
        ]
        assert {r.split for r in dataset.records} == {"auto"}
        assert dataset.label_counts() == {"cat": 2, "dog": 4}
        for record in dataset.records:
            assert record.path.is_absolute()
            assert record.sha256 == sha256(record.path.read_bytes())
            if record.source in written:
                assert record.path.read_bytes() == written[record.source]
        assert dataset.temp_dirs == []
        assert dataset.skipped == []


def test_folder_order_is_deterministic(tmp_path: Path) -> None:
    make_label_folders(tmp_path / "data", {"b": 3, "a": 3})
    first = load_dataset(tmp_path / "data").records
    second = load_dataset(str(tmp_path / "data")).records
    assert first == second
    assert [r.label for r in first] == ["a"] * 3 + ["b"] * 3


def test_all_image_suffixes_any_case(tmp_path: Path) -> None:
    for i, suffix in enumerate(sorted(IMAGE_SUFFIXES)):
        write_image(tmp_path / "d" / "a" / f"{i}{suffix.upper()}", image_bytes())
        write_image(tmp_path / "d" / "b" / f"{i}{suffix}", image_bytes())
    dataset = load_dataset(tmp_path / "d")
    assert dataset.label_counts() == {"a": len(IMAGE_SUFFIXES), "b": len(IMAGE_SUFFIXES)}


def test_split_folders(tmp_path: Path) -> None:
    root = tmp_path / "data"
    make_label_folders(root / "train", {"cat": 2, "dog": 2})
    make_label_folders(root / "valid", {"cat": 1, "dog": 1})
    make_label_folders(root / "test", {"cat": 1, "bird": 1})  # ignored
    dataset = load_dataset(root)
    assert dataset.labels == ("cat", "dog")
    assert [(r.source, r.split) for r in dataset.records] == [
        ("train/cat/0.png", "train"),
        ("train/cat/1.png", "train"),
        ("train/dog/0.png", "train"),
        ("train/dog/1.png", "train"),
        ("valid/cat/0.png", "valid"),
        ("valid/dog/0.png", "valid"),
    ]


def test_split_folders_accept_validation_and_train_alone(tmp_path: Path) -> None:
    make_label_folders(tmp_path / "a" / "train", {"cat": 1, "dog": 1})
    make_label_folders(tmp_path / "a" / "validation", {"cat": 1})
    dataset = load_dataset(tmp_path / "a")
    assert [r.split for r in dataset.records] == ["train", "train", "valid"]
    assert dataset.records[-1].source == "validation/cat/0.png"

    make_label_folders(tmp_path / "b" / "train", {"cat": 1, "dog": 1})
    assert {r.split for r in load_dataset(tmp_path / "b").records} == {"train"}


def test_train_beside_a_label_folder_is_just_a_label(tmp_path: Path) -> None:
    make_label_folders(tmp_path / "d", {"train": 1, "dog": 1})
    dataset = load_dataset(tmp_path / "d")
    assert dataset.labels == ("dog", "train")
    assert {r.split for r in dataset.records} == {"auto"}


def test_both_valid_and_validation_is_an_error(tmp_path: Path) -> None:
    make_label_folders(tmp_path / "d" / "train", {"cat": 1, "dog": 1})
    make_label_folders(tmp_path / "d" / "valid", {"cat": 1})
    make_label_folders(tmp_path / "d" / "validation", {"dog": 1})
    with pytest.raises(DataError, match="both valid/ and validation/"):
        load_dataset(tmp_path / "d")


def test_label_only_in_valid_is_an_error(tmp_path: Path) -> None:
    make_label_folders(tmp_path / "d" / "train", {"cat": 1, "dog": 1})
    make_label_folders(tmp_path / "d" / "valid", {"cat": 1, "bird": 1})
    with pytest.raises(DataError, match="label 'bird' has images in valid/ but none in train/"):
        load_dataset(tmp_path / "d")
    assert load_dataset(tmp_path / "d", require_labels=False).labels == ("bird", "cat", "dog")


def test_empty_label_folder(tmp_path: Path) -> None:
    make_label_folders(tmp_path / "d", {"cat": 1, "dog": 1})
    (tmp_path / "d" / "fish" / "sub").mkdir(parents=True)
    with pytest.raises(DataError, match="label 'fish' has no images") as caught:
        load_dataset(tmp_path / "d")
    assert "fish/" in str(caught.value)


def test_folder_of_other_files_is_not_a_label(tmp_path: Path) -> None:
    make_label_folders(tmp_path / "d", {"cat": 1, "dog": 1})
    (tmp_path / "d" / "docs").mkdir()
    (tmp_path / "d" / "docs" / "README.md").write_text("hi")
    dataset = load_dataset(tmp_path / "d")
    assert dataset.labels == ("cat", "dog")
    assert [(b.source, b.code) for b in dataset.skipped] == [("docs/", "not_a_label")]


def test_no_label_folders(tmp_path: Path) -> None:
    write_image(tmp_path / "flat" / "1.png")
    with pytest.raises(DataError, match="no label folders"):
        load_dataset(tmp_path / "flat")


def test_single_label(tmp_path: Path) -> None:
    make_label_folders(tmp_path / "d", {"cat": 2})
    with pytest.raises(DataError, match="needs at least two labels, found only 'cat'"):
        load_dataset(tmp_path / "d")
    dataset = load_dataset(tmp_path / "d", require_labels=False)
    assert dataset.labels == ("cat",)
    assert len(dataset.records) == 2


def test_fashion_tiny_folder() -> None:
    if not FASHION_TINY.is_dir():
        pytest.skip(f"sample data not found at {FASHION_TINY}")
    dataset = load_dataset(FASHION_TINY)
    assert dataset.labels == ("blouse", "halter", "sweater")
    assert dataset.label_counts() == {"blouse": 100, "halter": 100, "sweater": 100}
    assert dataset.records[0].source == "blouse/1000.jpg"
    assert [b.source for b in dataset.skipped] == ["requests/"]  # json request bodies, not a label


# --- classes ------------------------------------------------------------------------------


def test_classes_fix_the_label_order(tmp_path: Path) -> None:
    make_label_folders(tmp_path / "d", {"a": 1, "b": 1, "c": 1})
    dataset = load_dataset(tmp_path / "d", classes=["c", "a", "b"])
    assert dataset.labels == ("c", "a", "b")


def test_label_outside_classes(tmp_path: Path) -> None:
    make_label_folders(tmp_path / "d", {"a": 1, "b": 1, "c": 1})
    with pytest.raises(DataError) as caught:
        load_dataset(tmp_path / "d", classes=["a", "b"])
    message = str(caught.value)
    assert "label 'c'" in message and "'a', 'b'" in message and "c/" in message


def test_class_without_images(tmp_path: Path) -> None:
    make_label_folders(tmp_path / "d", {"a": 1, "b": 1})
    with pytest.raises(DataError, match="class 'z' has no images"):
        load_dataset(tmp_path / "d", classes=["a", "b", "z"])
    dataset = load_dataset(tmp_path / "d", classes=["a", "b", "z"], require_labels=False)
    assert dataset.labels == ("a", "b", "z")


def test_bad_classes_argument(tmp_path: Path) -> None:
    make_label_folders(tmp_path / "d", {"a": 1, "b": 1})
    with pytest.raises(DataError, match="listed twice"):
        load_dataset(tmp_path / "d", classes=["a", "b", "a"])
    with pytest.raises(TypeError):
        load_dataset(tmp_path / "d", classes="ab")


# --- duplicates ----------------------------------------------------------------------------


def test_duplicate_with_the_same_label_is_dropped(tmp_path: Path) -> None:
    data = image_bytes()
    write_image(tmp_path / "d" / "a" / "1.png", data)
    write_image(tmp_path / "d" / "a" / "2.png", data)
    write_image(tmp_path / "d" / "b" / "1.png")
    dataset = load_dataset(tmp_path / "d")
    assert [r.source for r in dataset.records] == ["a/1.png", "b/1.png"]
    assert dataset.skipped == []


def test_duplicate_with_another_label_is_an_error(tmp_path: Path) -> None:
    data = image_bytes()
    write_image(tmp_path / "d" / "a" / "1.png", data)
    write_image(tmp_path / "d" / "b" / "copy.png", data)
    with pytest.raises(DataError) as caught:
        load_dataset(tmp_path / "d")
    message = str(caught.value)
    assert "a/1.png" in message and "b/copy.png" in message
    assert "'a'" in message and "'b'" in message


# --- archives ----------------------------------------------------------------------------


def pack(folder: Path, archive: Path, wrapper: str | None) -> Path:
    """Pack the files under ``folder`` into ``archive``, optionally inside a wrapping folder."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    names = [(f"{wrapper}/" if wrapper else "") + p.relative_to(folder).as_posix() for p in files]
    if archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive, "w") as out:
            for path, name in zip(files, names):
                out.write(path, name)
    else:
        mode = "w" if archive.name.endswith(".tar") else "w:gz"
        with tarfile.open(archive, mode) as out:
            for path, name in zip(files, names):
                out.add(path, name)
    return archive


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar", ".zip"])
@pytest.mark.parametrize("wrapper", [None, "my-data"])
@pytest.mark.parametrize("layout", ["labels", "splits"])
def test_archives(tmp_path: Path, temp_root: Path, suffix: str, wrapper: str | None, layout: str) -> None:
    folder = tmp_path / "src"
    if layout == "labels":
        make_label_folders(folder, {"cat": 2, "dog": 1})
        expected = [("cat/0.png", "auto"), ("cat/1.png", "auto"), ("dog/0.png", "auto")]
    else:
        make_label_folders(folder / "train", {"cat": 1, "dog": 1})
        make_label_folders(folder / "valid", {"dog": 1})
        expected = [("train/cat/0.png", "train"), ("train/dog/0.png", "train"), ("valid/dog/0.png", "valid")]
    archive = pack(folder, tmp_path / f"data{suffix}", wrapper)

    dataset = load_dataset(archive)
    assert dataset.labels == ("cat", "dog")
    assert [(r.source, r.split) for r in dataset.records] == expected
    for record in dataset.records:
        assert record.path.read_bytes() == (folder / record.source).read_bytes()
        assert record.sha256 == sha256(record.path.read_bytes())
    assert len(dataset.temp_dirs) == 1
    assert dataset.temp_dirs == photolabel_temp_dirs(temp_root)
    assert all(r.path.is_relative_to(dataset.temp_dirs[0]) for r in dataset.records)
    dataset.close()
    assert photolabel_temp_dirs(temp_root) == []
    assert not any(r.path.exists() for r in dataset.records)


def test_archive_holding_only_train_is_the_split_layout(tmp_path: Path, temp_root: Path) -> None:
    make_label_folders(tmp_path / "src" / "train", {"cat": 1, "dog": 1})
    with load_dataset(pack(tmp_path / "src", tmp_path / "t.zip", None)) as dataset:
        assert [(r.source, r.split) for r in dataset.records] == [
            ("train/cat/0.png", "train"),
            ("train/dog/0.png", "train"),
        ]
    assert photolabel_temp_dirs(temp_root) == []


def test_archive_of_a_single_label_folder(tmp_path: Path, temp_root: Path) -> None:
    # the one top-level folder holds images, so it is a label, not a wrapper
    make_label_folders(tmp_path / "src", {"cat": 2})
    archive = pack(tmp_path / "src", tmp_path / "cat.tar.gz", None)
    with load_dataset(archive, require_labels=False) as dataset:
        assert dataset.labels == ("cat",)
        assert [r.source for r in dataset.records] == ["cat/0.png", "cat/1.png"]
    with pytest.raises(DataError, match="needs at least two labels, found only 'cat'"):
        load_dataset(archive)
    assert photolabel_temp_dirs(temp_root) == []


def test_unsafe_archive_removes_its_temp_dir(tmp_path: Path, temp_root: Path) -> None:
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as out:
        for name, data in [("cat/1.png", image_bytes()), ("../../escaped.png", image_bytes())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            out.addfile(info, io.BytesIO(data))
    with pytest.raises(UnsafeArchiveError, match=r"\.\./\.\./escaped\.png"):
        load_dataset(archive, skip_bad=True)
    assert photolabel_temp_dirs(temp_root) == []
    assert not any(p.name == "escaped.png" for p in tmp_path.rglob("*"))


def test_archive_error_after_extraction_removes_temp_dir(tmp_path: Path, temp_root: Path) -> None:
    make_label_folders(tmp_path / "src", {"cat": 1, "dog": 1})
    archive = pack(tmp_path / "src", tmp_path / "d.zip", "wrap")
    with pytest.raises(DataError, match="not one of the classes") as caught:
        load_dataset(archive, classes=["cat", "bird"])
    assert "d.zip" in str(caught.value)
    assert str(temp_root) not in str(caught.value)
    assert photolabel_temp_dirs(temp_root) == []


# --- CSV manifests -------------------------------------------------------------------------


def csv_dataset(tmp_path: Path, labels: dict[str, int]) -> tuple[Path, dict[str, bytes]]:
    images = make_label_folders(tmp_path / "imgs", labels)
    return tmp_path / "imgs", images


def test_csv_relative_absolute_and_file_urls(tmp_path: Path) -> None:
    folder, images = csv_dataset(tmp_path, {"cat": 2, "dog": 1})
    manifest = folder / "manifest.csv"
    manifest.write_text(
        "image,label,sha1\n"
        f"cat/0.png,cat,{sha1(images['cat/0.png'])}\n"
        "\n"
        f"{folder / 'cat/1.png'},cat,{sha1(images['cat/1.png']).upper()}\n"
        f"{(folder / 'dog/0.png').as_uri()},dog,\n"
    )
    dataset = load_dataset(manifest)
    assert dataset.labels == ("cat", "dog")
    assert [r.source for r in dataset.records] == [
        "cat/0.png",
        str(folder / "cat/1.png"),
        (folder / "dog/0.png").as_uri(),
    ]
    assert [r.sha256 for r in dataset.records] == [
        sha256(images["cat/0.png"]),
        sha256(images["cat/1.png"]),
        sha256(images["dog/0.png"]),
    ]
    assert all(r.path.is_absolute() and r.path.is_file() for r in dataset.records)
    assert {r.split for r in dataset.records} == {"auto"}
    assert dataset.temp_dirs == []


def test_csv_without_header_relative_to_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    csv_dataset(tmp_path, {"cat": 1, "dog": 1})
    (tmp_path / "lists").mkdir()
    manifest = tmp_path / "lists" / "m.csv"
    manifest.write_text("../imgs/dog/0.png,dog\r\n../imgs/cat/0.png,cat\r\n")
    monkeypatch.chdir(tmp_path / "imgs")  # the working folder does not matter
    dataset = load_dataset(manifest)
    assert [r.source for r in dataset.records] == ["../imgs/dog/0.png", "../imgs/cat/0.png"]
    assert dataset.labels == ("cat", "dog")


def test_csv_header_detection_is_on_the_label_cell(tmp_path: Path) -> None:
    # a first row whose second cell is not "label" is data
    folder, _ = csv_dataset(tmp_path, {"cat": 1, "dog": 1})
    manifest = folder / "m.csv"
    manifest.write_text("\ufeffcat/0.png,cat\ndog/0.png,dog\n")
    assert len(load_dataset(manifest).records) == 2
    manifest.write_text("path,Label\ncat/0.png,cat\ndog/0.png,dog\n")
    assert len(load_dataset(manifest).records) == 2


def test_csv_sha1_mismatch(tmp_path: Path) -> None:
    folder, images = csv_dataset(tmp_path, {"cat": 1, "dog": 1})
    manifest = folder / "m.csv"
    wrong = "0" * 40
    manifest.write_text(f"image,label,sha1\ncat/0.png,cat\ndog/0.png,dog,{wrong}\n")
    with pytest.raises(HashMismatchError) as caught:
        load_dataset(manifest)
    message = str(caught.value)
    assert str(manifest) in message and "line 3" in message and "dog/0.png" in message
    assert wrong in message and sha1(images["dog/0.png"]) in message
    assert isinstance(caught.value, DataError)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("", "no rows"),
        ("\n\n", "no rows"),
        ("image,label\n", "no rows"),
        ("image,label\ncat/0.png\n", "line 2: expected image,label"),
        ("cat/0.png,cat\ndog/0.png, \n", "line 2: the label cell is empty"),
        ("cat/0.png,cat\n,dog\n", "line 2: the image cell is empty"),
        ("cat/0.png,cat,nothex\n", "line 1: 'nothex' is not a sha1"),
        ("cat/0.png,cat,,extra\n", "line 1: expected image,label"),
        ("ftp://host/x.png,cat\n", "line 1: ftp://host/x.png: unsupported URL scheme 'ftp'"),
    ],
)
def test_csv_bad_rows(tmp_path: Path, content: str, match: str) -> None:
    folder, _ = csv_dataset(tmp_path, {"cat": 1, "dog": 1})
    manifest = folder / "m.csv"
    manifest.write_text(content)
    with pytest.raises(DataError, match=match) as caught:
        load_dataset(manifest)
    assert str(manifest) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_csv_trailing_empty_cell_is_fine(tmp_path: Path) -> None:
    folder, _ = csv_dataset(tmp_path, {"cat": 1, "dog": 1})
    (folder / "m.csv").write_text("cat/0.png,cat,,\ndog/0.png,dog,\n")
    assert len(load_dataset(folder / "m.csv").records) == 2


def test_csv_missing_image(tmp_path: Path) -> None:
    folder, _ = csv_dataset(tmp_path, {"cat": 1, "dog": 1})
    manifest = folder / "m.csv"
    manifest.write_text("cat/0.png,cat\ndog/0.png,dog\ndog/nope.png,dog\n")
    with pytest.raises(SourceNotFoundError) as caught:
        load_dataset(manifest)
    message = str(caught.value)
    assert str(manifest) in message and "line 3" in message and "dog/nope.png" in message


def test_csv_unknown_label_with_classes(tmp_path: Path) -> None:
    folder, _ = csv_dataset(tmp_path, {"cat": 1, "dog": 1, "eel": 1})
    manifest = folder / "m.csv"
    manifest.write_text("cat/0.png,cat\neel/0.png,eel\ndog/0.png,dog\n")
    with pytest.raises(DataError) as caught:
        load_dataset(manifest, classes=["dog", "cat"])
    message = str(caught.value)
    assert "line 2" in message and "'eel'" in message and "'dog', 'cat'" in message
    dataset = load_dataset(manifest, classes=["eel", "dog", "cat"])
    assert dataset.labels == ("eel", "dog", "cat")


def test_csv_duplicates(tmp_path: Path) -> None:
    folder, _ = csv_dataset(tmp_path, {"cat": 1, "dog": 1})
    manifest = folder / "m.csv"
    manifest.write_text("cat/0.png,cat\ndog/0.png,dog\ncat/0.png,cat\n")
    assert [r.source for r in load_dataset(manifest).records] == ["cat/0.png", "dog/0.png"]
    manifest.write_text("cat/0.png,cat\ndog/0.png,dog\ncat/0.png,dog\n")
    with pytest.raises(DataError) as caught:
        load_dataset(manifest)
    assert "line 1" in str(caught.value) and "line 3" in str(caught.value)


def test_csv_skip_bad_local(tmp_path: Path) -> None:
    folder, _ = csv_dataset(tmp_path, {"cat": 2, "dog": 1})
    manifest = folder / "m.csv"
    manifest.write_text(f"cat/0.png,cat\ncat/gone.png,cat\ncat/1.png,cat,{'1' * 40}\ndog/0.png,dog\n")
    dataset = load_dataset(manifest, skip_bad=True)
    assert [r.source for r in dataset.records] == ["cat/0.png", "dog/0.png"]
    assert [(b.source, b.code) for b in dataset.skipped] == [
        ("cat/gone.png", "not_found"),
        ("cat/1.png", "hash_mismatch"),
    ]
    assert "line 2" in dataset.skipped[0].reason
    assert "line 3" in dataset.skipped[1].reason


def test_csv_skip_bad_does_not_hide_label_problems(tmp_path: Path) -> None:
    folder, _ = csv_dataset(tmp_path, {"cat": 1, "dog": 1})
    manifest = folder / "m.csv"
    manifest.write_text("cat/0.png,cat\ndog/gone.png,dog\n")
    with pytest.raises(DataError, match="needs at least two labels, found only 'cat'"):
        load_dataset(manifest, skip_bad=True)
    with pytest.raises(DataError, match="not one of the classes"):
        load_dataset(manifest, skip_bad=True, classes=["dog"])


def test_fashion_tiny_manifest() -> None:
    manifest = FASHION_TINY / "manifest.csv"
    if not manifest.is_file():
        pytest.skip(f"sample manifest not found at {manifest}")
    dataset = load_dataset(manifest)  # every row's sha1 is checked
    assert dataset.label_counts() == {"blouse": 100, "halter": 100, "sweater": 100}
    folder = load_dataset(FASHION_TINY)
    assert sorted(r.sha256 for r in dataset.records) == sorted(r.sha256 for r in folder.records)


# --- CSV manifests of URLs -----------------------------------------------------------------


class _Files(BaseHTTPRequestHandler):
    files: ClassVar[dict[str, bytes]] = {}

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        body = self.files.get(self.path)
        self.send_response(200 if body is not None else 404)
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")


@pytest.fixture
def http_files() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A server on 127.0.0.1 for the files put in the returned dict (path -> bytes)."""
    files: dict[str, bytes] = {}
    with serve_http(type("Handler", (_Files,), {"files": files})) as base:
        yield base, files


@pytest.fixture(name="closed_port")
def closed_port_fixture() -> int:
    return closed_port()


def test_csv_of_urls(tmp_path: Path, temp_root: Path, http_files) -> None:
    base, files = http_files
    cat, dog = image_bytes("JPEG"), image_bytes("JPEG")
    files["/img/cat.jpg"] = cat
    files["/img/dog.jpg"] = dog
    manifest = tmp_path / "urls.csv"
    manifest.write_text(f"{base}/img/cat.jpg,cat,{sha1(cat)}\n{base}/img/dog.jpg,dog\n")

    dataset = load_dataset(manifest)
    assert [r.source for r in dataset.records] == [f"{base}/img/cat.jpg", f"{base}/img/dog.jpg"]
    assert [r.sha256 for r in dataset.records] == [sha256(cat), sha256(dog)]
    assert [r.path.name for r in dataset.records] == [sha256(cat), sha256(dog)]
    assert dataset.records[0].path.read_bytes() == cat
    assert dataset.temp_dirs == photolabel_temp_dirs(temp_root) and len(dataset.temp_dirs) == 1
    dataset.close()
    assert photolabel_temp_dirs(temp_root) == []


def test_csv_url_errors(tmp_path: Path, temp_root: Path, http_files, closed_port: int) -> None:
    base, files = http_files
    cat, dog = image_bytes(), image_bytes()
    files["/cat.png"] = cat
    files["/dog.png"] = dog
    manifest = tmp_path / "urls.csv"

    manifest.write_text(f"{base}/cat.png,cat\n{base}/gone.png,dog\n{base}/dog.png,dog\n")
    with pytest.raises(FetchError) as caught:
        load_dataset(manifest)
    message = str(caught.value)
    assert str(manifest) in message and "line 2" in message and f"{base}/gone.png" in message
    assert "HTTP 404" in message
    assert photolabel_temp_dirs(temp_root) == []  # the downloads were removed

    refused = f"http://127.0.0.1:{closed_port}/cat.png"
    manifest.write_text(f"{base}/cat.png,cat\n{refused},cat\n{base}/dog.png,dog,{sha1(cat)}\n")
    with pytest.raises(FetchError, match="line 2: cannot fetch .* connection refused"):
        load_dataset(manifest)
    assert photolabel_temp_dirs(temp_root) == []

    dataset = load_dataset(manifest, skip_bad=True, require_labels=False)
    assert [r.source for r in dataset.records] == [f"{base}/cat.png"]
    assert [(b.source, b.code) for b in dataset.skipped] == [
        (refused, "fetch_failed"),
        (f"{base}/dog.png", "hash_mismatch"),
    ]
    with pytest.raises(DataError, match="needs at least two labels"):
        load_dataset(manifest, skip_bad=True)
    dataset.close()
    assert photolabel_temp_dirs(temp_root) == []


def test_csv_url_size_cap_and_private_addresses(tmp_path: Path, temp_root: Path, http_files) -> None:
    base, files = http_files
    files["/big.png"] = b"x" * 5000
    files["/dog.png"] = image_bytes()
    manifest = tmp_path / "urls.csv"
    manifest.write_text(f"{base}/big.png,cat\n{base}/dog.png,dog\n")
    with pytest.raises(FetchError, match="line 1: .*over the cap of 1000 bytes"):
        load_dataset(manifest, fetch_options=FetchOptions(max_bytes=1000))
    with pytest.raises(FetchError, match="line 1: .*private address refused"):
        load_dataset(manifest, fetch_options=FetchOptions(allow_private=False))
    assert photolabel_temp_dirs(temp_root) == []


def test_remote_csv_resolves_relative_rows_against_its_url(
    tmp_path: Path, temp_root: Path, http_files
) -> None:
    base, files = http_files
    cat, dog = image_bytes(), image_bytes()
    files["/data/img/cat.png"] = cat
    files["/other/dog.png"] = dog
    files["/data/list.csv"] = f"image,label\nimg/cat.png,cat\n{base}/other/dog.png,dog\n".encode()
    with load_dataset(f"{base}/data/list.csv") as dataset:
        assert [r.source for r in dataset.records] == ["img/cat.png", f"{base}/other/dog.png"]
        assert [r.sha256 for r in dataset.records] == [sha256(cat), sha256(dog)]

    local = tmp_path / "secret.png"
    local.write_bytes(image_bytes())
    files["/data/evil.csv"] = f"{local.as_uri()},cat\n{base}/other/dog.png,dog\n".encode()
    with pytest.raises(DataError, match="may only list http"):
        load_dataset(f"{base}/data/evil.csv")
    assert photolabel_temp_dirs(temp_root) == []


def test_remote_archive(tmp_path: Path, temp_root: Path, http_files) -> None:
    base, files = http_files
    make_label_folders(tmp_path / "src", {"cat": 1, "dog": 1})
    files["/d.tar.gz"] = pack(tmp_path / "src", tmp_path / "d.tar.gz", "wrap").read_bytes()
    with load_dataset(f"{base}/d.tar.gz") as dataset:
        assert [r.source for r in dataset.records] == ["cat/0.png", "dog/0.png"]
    assert photolabel_temp_dirs(temp_root) == []
    with pytest.raises(DataError, match="cannot tell what the URL holds"):
        load_dataset(f"{base}/d.bin")


# --- DATA that is not data -----------------------------------------------------------------


def test_missing_data_path(tmp_path: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="nowhere"):
        load_dataset(tmp_path / "nowhere")
    with pytest.raises(SourceNotFoundError, match="nowhere.csv"):
        load_dataset((tmp_path / "nowhere.csv").as_uri())


def test_data_of_another_kind(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hi")
    with pytest.raises(DataError, match="not a folder, an archive .* or a .csv manifest"):
        load_dataset(path)


def test_file_url_of_a_folder(tmp_path: Path) -> None:
    make_label_folders(tmp_path / "d", {"cat": 1, "dog": 1})
    assert len(load_dataset((tmp_path / "d").as_uri()).records) == 2


# --- predict arguments -------------------------------------------------------------------


def test_expand_image_args(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_image(tmp_path / "one.png")
    write_image(tmp_path / "dir" / "b.png")
    write_image(tmp_path / "dir" / "a.jpg")
    write_image(tmp_path / "dir" / "sub" / "c.webp")
    write_image(tmp_path / "dir" / ".hidden.png")
    (tmp_path / "dir" / "notes.txt").write_text("x")
    write_image(tmp_path / "glob" / "x2.png")
    write_image(tmp_path / "glob" / "x1.png")
    monkeypatch.chdir(tmp_path)

    args = ["one.png", "dir", "glob/x*.png", "http://example.com/a.jpg", "file:///tmp/a.png"]
    assert expand_image_args(args) == [
        "one.png",
        os.path.join("dir", "a.jpg"),
        os.path.join("dir", "b.png"),
        os.path.join("dir", "sub", "c.webp"),
        "glob/x1.png",
        "glob/x2.png",
        "http://example.com/a.jpg",
        "file:///tmp/a.png",
    ]


@pytest.mark.parametrize("arg", ["missing.png", "nothing/*.png"])
def test_expand_image_args_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, arg: str) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceNotFoundError, match=arg.replace("*", r"\*")):
        expand_image_args([arg])


def test_expand_image_args_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceNotFoundError, match="no image files"):
        expand_image_args([str(tmp_path / "empty")])


def test_read_image_source(tmp_path: Path, http_files, closed_port: int) -> None:
    base, files = http_files
    data = image_bytes()
    files["/a.png"] = data
    path = tmp_path / "a.png"
    path.write_bytes(data)
    assert read_image_source(str(path), FetchOptions()) == data
    assert read_image_source(path.as_uri(), FetchOptions()) == data
    assert read_image_source(f"{base}/a.png", FetchOptions()) == data
    with pytest.raises(SourceNotFoundError, match="nope.png"):
        read_image_source(str(tmp_path / "nope.png"), FetchOptions())
    with pytest.raises(SourceNotFoundError, match="nope.png"):
        read_image_source((tmp_path / "nope.png").as_uri(), FetchOptions())
    with pytest.raises(FetchError, match="HTTP 404"):
        read_image_source(f"{base}/nope.png", FetchOptions())
    with pytest.raises(FetchError, match="connection refused"):
        read_image_source(f"http://127.0.0.1:{closed_port}/a.png", FetchOptions())
    with pytest.raises(FetchError, match="unsupported URL scheme 'ftp'"):
        read_image_source("ftp://example.com/a.png", FetchOptions())
    with pytest.raises(DataError, match="is a folder"):
        read_image_source(str(tmp_path), FetchOptions())


# --- limits: CSV rows and cells, archive caps --------------------------------------------------------


def test_csv_row_cap_names_the_first_line_over_it(tmp_path: Path) -> None:
    folder, _ = csv_dataset(tmp_path, {"cat": 2, "dog": 1})
    manifest = folder / "m.csv"
    manifest.write_text("image,label\ncat/0.png,cat\n\ncat/1.png,cat\ndog/0.png,dog\n")
    with pytest.raises(CsvLimitError) as caught:
        load_dataset(manifest, csv_limits=CsvLimits(max_rows=2))
    assert str(caught.value) == f"{manifest} line 5: more rows than the limit of 2; split the manifest"
    assert isinstance(caught.value, DataError)
    assert len(load_dataset(manifest, csv_limits=CsvLimits(max_rows=3)).records) == 3  # header, blanks not counted


@pytest.mark.parametrize(("row", "cell"), [
    ("cat/{long}.png,cat", "image cell"), ("cat/0.png,{long}", "label cell"), ("cat/0.png,cat,{long}", "sha1 cell"),
    ('"cat/0.png","cat","","{long}"', "cell 4"), ("cat/0.png,é{long}", "label cell"),
])
def test_csv_cell_cap_names_line_and_cell(tmp_path: Path, row: str, cell: str) -> None:
    folder, _ = csv_dataset(tmp_path, {"cat": 1, "dog": 1})
    manifest = folder / "m.csv"
    manifest.write_text("dog/0.png,dog\n" + row.format(long="x" * 100) + "\n", encoding="utf-8")
    with pytest.raises(CsvLimitError, match=f"m.csv line 2: the {cell} holds 1\\d\\d bytes, over the limit of 64"):
        load_dataset(manifest, csv_limits=CsvLimits(max_field_bytes=64))


def test_csv_module_field_limit_is_our_error(tmp_path: Path) -> None:
    # a quoted cell longer than csv's own cap (131072 characters) is one of our errors, not csv.Error
    manifest = tmp_path / "m.csv"
    manifest.write_text('dog/0.png,dog\n"' + "x\n" * 70_000 + '",cat\n')
    with pytest.raises(CsvLimitError, match="m.csv line .*: a cell holds more than 8192 bytes"):
        load_dataset(manifest)


def test_csv_line_numbers_of_header_only_and_bad_bytes(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("\n\nimage,label\n\n")
    with pytest.raises(DataError, match="m.csv: no rows after the header on line 3"):
        load_dataset(manifest)
    manifest.write_bytes(b"a.png,cat\nb.png,dog\nc\xff.png,cat\n")
    with pytest.raises(DataError, match="m.csv line 3: not UTF-8 text"):
        load_dataset(manifest)


def test_csv_with_old_mac_line_ends_and_a_bom(tmp_path: Path) -> None:
    folder, _ = csv_dataset(tmp_path, {"cat": 1, "dog": 1})
    manifest = folder / "m.csv"
    manifest.write_bytes(b"\xef\xbb\xbfimage,label\rcat/0.png,cat\rdog/0.png,dog\r")
    assert [r.source for r in load_dataset(manifest).records] == ["cat/0.png", "dog/0.png"]
    manifest.write_bytes(b"image,label\rcat/0.png,cat\r\rdog/0.png\r")
    with pytest.raises(DataError, match="m.csv line 4: expected image,label"):
        load_dataset(manifest)


def test_check_manifest_reads_like_the_job_fetching_nothing(tmp_path: Path) -> None:
    manifest = tmp_path / "upload.csv"
    manifest.write_text("image_url,label\nhttps://example.com/a.jpg,cat\nhttp://example.com/b.jpg,dog\n")
    assert check_manifest(manifest, urls_only="upload") == 2
    manifest.write_text("https://example.com/a.jpg,cat\nimages/b.jpg,dog\n")
    with pytest.raises(DataError, match="^data.csv line 2: images/b.jpg: this manifest may only list http"):
        check_manifest(manifest, urls_only="upload", shown="data.csv")
    # relative rows resolve against a CSV that came from a URL
    assert check_manifest(manifest, urls_only="https://example.com/train.csv") == 2
    with pytest.raises(DataError, match="line 2: label 'dog' is not one of the classes 'cat'"):
        check_manifest(manifest, urls_only="https://example.com/train.csv", classes=["cat"])
    with pytest.raises(CsvLimitError, match="line 2: more rows than the limit of 1"):
        check_manifest(manifest, urls_only="https://example.com/train.csv", csv_limits=CsvLimits(max_rows=1))
    for content in ("", "image,label\n"):
        manifest.write_text(content)
        with pytest.raises(DataError, match="no rows"):
            check_manifest(manifest, urls_only="upload")


def test_archive_limits_reach_the_extraction(tmp_path: Path, temp_root: Path) -> None:
    make_label_folders(tmp_path / "src", {"cat": 2, "dog": 2})
    archive = pack(tmp_path / "src", tmp_path / "d.tar.gz", None)
    with pytest.raises(ArchiveTooLargeError, match="d.tar.gz: more than 3 members"):
        load_dataset(archive, archive_limits=ArchiveLimits(max_members=3))
    assert photolabel_temp_dirs(temp_root) == []
    assert len(load_dataset(archive, archive_limits=ArchiveLimits(max_members=4)).records) == 4


def test_limits_come_from_the_runtime_when_training(tmp_path: Path) -> None:
    import photolabel
    from photolabel.config import Runtime

    folder, _ = csv_dataset(tmp_path, {"cat": 2, "dog": 2})
    manifest = folder / "m.csv"
    manifest.write_text("cat/0.png,cat\ncat/1.png,cat\ndog/0.png,dog\ndog/1.png,dog\n")
    with pytest.raises(CsvLimitError, match="m.csv line 4: more rows than the limit of 3"):
        photolabel.train(manifest, tmp_path / "model", runtime=Runtime(csv_limits=CsvLimits(max_rows=3)))
    assert not (tmp_path / "model").exists()
