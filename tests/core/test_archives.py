"""photolabel.archives: safe, capped, member-by-member extraction."""

from __future__ import annotations

import io
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from photolabel import archives
from photolabel.archives import ARCHIVE_SUFFIXES, extract_archive, is_archive
from photolabel.errors import DataError, SourceNotFoundError, UnsafeArchiveError

Members = list[tuple[str, bytes | None]]  # (name, data); data None means a folder


def write_tar(path: Path, members: Members, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                archive.addfile(info)
            else:
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return path


def write_zip(path: Path, members: Members) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members:
            if data is None:
                archive.writestr(name.rstrip("/") + "/", b"")
            else:
                archive.writestr(name, data)
    return path


def add_tar_special(path: Path, before: Members, info: tarfile.TarInfo) -> Path:
    """A tar.gz with the plain ``before`` members followed by one special member."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in before:
            plain = tarfile.TarInfo(name)
            plain.size = len(data or b"")
            archive.addfile(plain, io.BytesIO(data or b""))
        archive.addfile(info)
    return path


def listing(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*"))


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    folder = tmp_path / "sandbox" / "dest"
    folder.mkdir(parents=True)
    return folder


def test_is_archive() -> None:
    for name in ["a.tar.gz", "a.TGZ", "x/y/a.tar", "a.Zip"]:
        assert is_archive(name)
        assert is_archive(Path(name))
    for name in ["a.gz", "a.csv", "folder", "a.tar.bz2", "tar"]:
        assert not is_archive(name)
    assert ARCHIVE_SUFFIXES == (".tar.gz", ".tgz", ".tar", ".zip")


FORMATS = [
    ("data.tar.gz", lambda p, m: write_tar(p, m, "w:gz")),
    ("data.tgz", lambda p, m: write_tar(p, m, "w:gz")),
    ("data.tar", lambda p, m: write_tar(p, m, "w")),
    ("data.zip", write_zip),
]


@pytest.mark.parametrize(("name", "writer"), FORMATS)
def test_extracts_files_and_returns_dest_without_wrapper(tmp_path: Path, dest: Path, name, writer) -> None:
    archive = writer(tmp_path / name, [("a/1.jpg", b"one"), ("b/", None), ("b/2.jpg", b"two")])
    root = extract_archive(archive, dest)
    assert root == dest
    assert (dest / "a" / "1.jpg").read_bytes() == b"one"
    assert (dest / "b" / "2.jpg").read_bytes() == b"two"


@pytest.mark.parametrize(("name", "writer"), FORMATS)
def test_one_wrapping_folder_is_the_root(tmp_path: Path, dest: Path, name, writer) -> None:
    archive = writer(
        tmp_path / name,
        [
            ("./wrap/a/1.jpg", b"one"),
            ("wrap/b/2.jpg", b"two"),
            (".hidden", b"ignored when finding the root"),
            ("__MACOSX/wrap/._1.jpg", b"apple double"),
            ("wrap/a/._1.jpg", b"apple double"),
        ],
    )
    root = extract_archive(archive, dest)
    assert root == dest / "wrap"
    assert listing(root) == ["a", "a/1.jpg", "b", "b/2.jpg"]
    assert not (dest / "__MACOSX").exists()


def test_a_single_file_at_the_top_is_not_a_wrapper(tmp_path: Path, dest: Path) -> None:
    archive = write_zip(tmp_path / "a.zip", [("only.jpg", b"x")])
    assert extract_archive(archive, dest) == dest


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "..\\evil.txt", "a/b/../../../evil.txt"])
@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_dotdot_member_is_refused(tmp_path: Path, dest: Path, name: str, kind: str) -> None:
    members: Members = [("good/1.jpg", b"fine"), (name, b"evil")]
    path = tmp_path / f"bad.{kind}"
    archive = write_zip(path, members) if kind == "zip" else write_tar(path, members)
    with pytest.raises(UnsafeArchiveError) as caught:
        extract_archive(archive, dest)
    message = str(caught.value)
    assert str(archive) in message and name in message
    assert list(dest.iterdir()) == []  # the good member written first was removed again
    assert not any(p.name == "evil.txt" for p in tmp_path.rglob("*"))


@pytest.mark.parametrize("name", ["/tmp/evil.txt", "C:/evil.txt", "C:\\evil.txt"])
@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_absolute_member_is_refused(tmp_path: Path, dest: Path, name: str, kind: str) -> None:
    path = tmp_path / f"bad.{kind}"
    if kind == "zip":
        # ZipInfo strips a leading "/" on write, so put the raw name in by hand
        with zipfile.ZipFile(path, "w") as archive:
            info = zipfile.ZipInfo("placeholder")
            info.filename = name
            archive.writestr(info, b"evil")
    else:
        write_tar(path, [(name, b"evil")])
    with pytest.raises(UnsafeArchiveError, match="absolute path") as caught:
        extract_archive(path, dest)
    assert name in str(caught.value)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize(("kind", "target", "words"), [
    (tarfile.SYMTYPE, "/etc/passwd", "symbolic link"),
    (tarfile.LNKTYPE, "good/1.jpg", "hard link"),
], ids=["symlink", "hardlink"])
def test_tar_links_are_refused(tmp_path: Path, dest: Path, kind: bytes, target: str, words: str) -> None:
    link = tarfile.TarInfo("good/link.jpg")
    link.type = kind
    link.linkname = target
    archive = add_tar_special(tmp_path / "link.tar.gz", [("good/1.jpg", b"x")], link)
    with pytest.raises(UnsafeArchiveError, match=words) as caught:
        extract_archive(archive, dest)
    assert "good/link.jpg" in str(caught.value) and str(archive) in str(caught.value)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize("kind", [tarfile.FIFOTYPE, tarfile.CHRTYPE, tarfile.BLKTYPE])
def test_tar_special_files_are_refused(tmp_path: Path, dest: Path, kind: bytes) -> None:
    special = tarfile.TarInfo("dev/thing")
    special.type = kind
    archive = add_tar_special(tmp_path / "dev.tar.gz", [], special)
    with pytest.raises(UnsafeArchiveError, match="device, fifo") as caught:
        extract_archive(archive, dest)
    assert "dev/thing" in str(caught.value)
    assert list(dest.iterdir()) == []


def test_zip_symlink_is_refused(tmp_path: Path, dest: Path) -> None:
    path = tmp_path / "link.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("good/1.jpg", b"x")
        info = zipfile.ZipInfo("good/link.jpg")
        info.create_system = 3
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(info, "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="symbolic link") as caught:
        extract_archive(path, dest)
    assert "good/link.jpg" in str(caught.value)
    assert list(dest.iterdir()) == []


def test_zip_fifo_is_refused(tmp_path: Path, dest: Path) -> None:
    path = tmp_path / "fifo.zip"
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo("pipe")
        info.create_system = 3
        info.external_attr = (stat.S_IFIFO | 0o644) << 16
        archive.writestr(info, b"")
    with pytest.raises(UnsafeArchiveError, match="fifo"):
        extract_archive(path, dest)


def test_zip_with_regular_unix_modes_is_fine(tmp_path: Path, dest: Path) -> None:
    path = tmp_path / "modes.zip"
    with zipfile.ZipFile(path, "w") as archive:
        info = zipfile.ZipInfo("a/1.jpg")
        info.create_system = 3
        info.external_attr = (stat.S_IFREG | 0o644) << 16
        archive.writestr(info, b"one")
    extract_archive(path, dest)
    assert (dest / "a" / "1.jpg").read_bytes() == b"one"


@pytest.mark.parametrize(("name", "writer"), [FORMATS[0], FORMATS[3]])
def test_member_cap(tmp_path: Path, dest: Path, name, writer) -> None:
    archive = writer(tmp_path / name, [("a/1.jpg", b"1"), ("a/2.jpg", b"2"), ("a/3.jpg", b"3")])
    with pytest.raises(DataError, match="more than 2 members") as caught:
        extract_archive(archive, dest, max_members=2)
    assert str(archive) in str(caught.value)
    assert list(dest.iterdir()) == []
    assert extract_archive(archive, dest, max_members=3) == dest / "a"


@pytest.mark.parametrize(("name", "writer"), [FORMATS[0], FORMATS[3]])
def test_size_cap(tmp_path: Path, dest: Path, name, writer) -> None:
    archive = writer(tmp_path / name, [("a/1.jpg", b"x" * 60), ("a/2.jpg", b"y" * 60)])
    with pytest.raises(DataError, match="more than 100 bytes once extracted") as caught:
        extract_archive(archive, dest, max_total_bytes=100)
    assert str(archive) in str(caught.value)
    assert list(dest.iterdir()) == []
    extract_archive(archive, dest, max_total_bytes=120)


def test_size_cap_counts_the_bytes_written_not_the_declared_size(dest: Path) -> None:
    # A member whose header understates its size is still stopped at the cap.
    writer = archives._MemberWriter(Path("liar.zip"), dest, max_total_bytes=100, max_members=10)
    with pytest.raises(DataError, match="liar.zip: more than 100 bytes"):
        writer.write_file(("a", "1.jpg"), 10, lambda: io.BytesIO(b"z" * 500))


@pytest.mark.parametrize("name", ["junk.zip", "junk.tar.gz", "junk.tar", "junk.tgz"])
def test_unreadable_archive(tmp_path: Path, dest: Path, name: str) -> None:
    archive = tmp_path / name
    archive.write_bytes(b"this is not an archive at all" * 20)
    with pytest.raises(DataError, match="cannot extract") as caught:
        extract_archive(archive, dest)
    assert str(archive) in str(caught.value)


def test_truncated_archive(tmp_path: Path, dest: Path) -> None:
    whole = write_tar(tmp_path / "whole.tar.gz", [(f"a/{i}.jpg", bytes([i]) * 5000) for i in range(20)])
    truncated = tmp_path / "truncated.tar.gz"
    truncated.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(DataError, match="cannot extract") as caught:
        extract_archive(truncated, dest)
    assert "truncated.tar.gz" in str(caught.value)
    assert list(dest.iterdir()) == []


def test_missing_archive(tmp_path: Path, dest: Path) -> None:
    with pytest.raises(SourceNotFoundError, match="nope.zip"):
        extract_archive(tmp_path / "nope.zip", dest)


def test_not_an_archive_name(tmp_path: Path, dest: Path) -> None:
    path = tmp_path / "data.rar"
    path.write_bytes(b"x")
    with pytest.raises(DataError, match="not an archive"):
        extract_archive(path, dest)


def test_existing_content_of_dest_is_left_alone_on_error(tmp_path: Path, dest: Path) -> None:
    (dest / "keep.txt").write_text("mine")
    archive = write_tar(tmp_path / "bad.tar.gz", [("x/1.jpg", b"1"), ("../evil", b"2")])
    with pytest.raises(UnsafeArchiveError):
        extract_archive(archive, dest)
    assert listing(dest) == ["keep.txt"]
