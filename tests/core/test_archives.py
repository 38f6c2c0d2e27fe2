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
from photolabel.errors import ArchiveTooLargeError, DataError, SourceNotFoundError, UnsafeArchiveError
from photolabel.limits import ArchiveLimits

Members = list[tuple[str, bytes | None]]  # (name, data); data None means a folder


def add_members(archive: tarfile.TarFile, members: Members) -> None:
    """Add ``(name, bytes)`` members to ``archive``; ``None`` bytes make a folder entry."""
    for name, data in members:
        info = tarfile.TarInfo(name)
        if data is None:
            info.type = tarfile.DIRTYPE
            archive.addfile(info)
        else:
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


def write_tar(path: Path, members: Members, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as archive:
        add_members(archive, members)
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


def test_a_member_holding_more_than_it_declares_is_refused(dest: Path) -> None:
    # The declared size is what the caps are checked against, so bytes beyond it are refused.
    budget = archives._Budget("liar.zip", ArchiveLimits(max_total_bytes=100), compressed_size=50)
    writer = archives._MemberWriter("liar.zip", dest, budget)
    with pytest.raises(ArchiveTooLargeError, match="liar.zip: member 'a/1.jpg' holds more than the 10 bytes"):
        writer.write_file(("a", "1.jpg"), 10, iter([b"z" * 500]))
    writer.undo()
    assert list(dest.iterdir()) == []


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


# --- what real tar writers produce is read by our own parser -------------------------------------------


@pytest.mark.parametrize("form", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT],
                         ids=["ustar", "gnu", "pax"])
def test_long_and_non_ascii_names_in_every_tar_format(tmp_path: Path, dest: Path, form: int) -> None:
    # ustar keeps a long name in its prefix field, GNU in an 'L' header, pax in a 'path' record
    deep = "d" * 90 + "/" + "e" * 90 + "/1.jpg"
    names = [deep, "a/2.jpg"] if form == tarfile.USTAR_FORMAT else [deep, "café/" + "é" * 120 + ".jpg", "a/2.jpg"]
    path = tmp_path / "names.tar.gz"
    with tarfile.open(path, "w:gz", format=form) as archive:
        for index, name in enumerate(names):
            info = tarfile.TarInfo(name)
            info.size = index + 1
            archive.addfile(info, io.BytesIO(b"x" * (index + 1)))
    extract_archive(path, dest)
    assert sorted(listing(dest)) == sorted({*names, *(str(Path(name).parent) for name in names),
                                            str(Path(deep).parents[1])})
    for index, name in enumerate(names):
        assert (dest / name).read_bytes() == b"x" * (index + 1)


def test_a_global_pax_header_as_git_archive_writes_is_fine(tmp_path: Path, dest: Path) -> None:
    path = tmp_path / "git.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "0123abcd" * 5}) as archive:
        info = tarfile.TarInfo("repo/a/1.jpg")
        info.size = 3
        archive.addfile(info, io.BytesIO(b"one"))
    assert extract_archive(path, dest) == dest / "repo"
    assert (dest / "repo" / "a" / "1.jpg").read_bytes() == b"one"


@pytest.mark.parametrize("mode", ["w:bz2", "w:xz", "w:gz", "w"])
def test_the_compression_is_found_by_content_not_by_name(tmp_path: Path, dest: Path, mode: str) -> None:
    # as tarfile's "r:*" did: a .tar may be compressed, a .tar.gz may not be
    for name in ("data.tar", "data.tar.gz"):
        archive = write_tar(tmp_path / name, [("a/1.jpg", b"one")], mode)
        extract_archive(archive, dest / name)
        assert (dest / name / "a" / "1.jpg").read_bytes() == b"one"


def test_an_old_style_folder_entry_is_a_folder(tmp_path: Path, dest: Path) -> None:
    # V7 tar wrote folders as plain entries (type NUL) whose name ends in "/"
    folder = tarfile.TarInfo("a/empty/")
    folder.type = tarfile.AREGTYPE
    archive = add_tar_special(tmp_path / "v7.tar.gz", [("a/1.jpg", b"1")], folder)
    extract_archive(archive, dest)
    assert (dest / "a" / "empty").is_dir()


def test_a_name_that_is_not_utf8_is_kept_and_messages_stay_printable(tmp_path: Path, dest: Path) -> None:
    body = io.BytesIO()
    with tarfile.open(fileobj=body, mode="w", encoding="latin-1", format=tarfile.USTAR_FORMAT) as archive:
        for name in ("a/caf\xe9.jpg", "b/caf\xe9/../../../x"):
            info = tarfile.TarInfo(name)
            info.size = 1
            archive.addfile(info, io.BytesIO(b"1"))
    path = tmp_path / "latin1.tar"
    path.write_bytes(body.getvalue())
    with pytest.raises(UnsafeArchiveError) as caught:
        extract_archive(path, dest)
    message = str(caught.value)
    assert "b/caf\\udce9/../../../x" in message
    message.encode("utf-8")  # no lone surrogate: the message can be printed, logged, stored, sent as JSON
    assert list(dest.iterdir()) == []
    path.write_bytes(body.getvalue()[:1024] + bytes(1024))  # the first member alone: extracted as named
    extract_archive(path, dest)
    assert [entry.name.encode("utf-8", "surrogateescape") for entry in (dest / "a").iterdir()] == [b"caf\xe9.jpg"]


@pytest.mark.parametrize(("body", "words"), [
    (b"x" * 512, "wrong checksum"),
    (b"\x00" * 1024, "it is empty"),
    (b"", "it is empty"),
], ids=["not-a-tar", "only-end-blocks", "zero-bytes"])
def test_unreadable_tars_say_why(tmp_path: Path, dest: Path, body: bytes, words: str) -> None:
    path = tmp_path / "x.tar"
    path.write_bytes(body)
    with pytest.raises(DataError, match=words):
        extract_archive(path, dest)


def test_truncated_inside_a_member_names_it(tmp_path: Path, dest: Path) -> None:
    whole = write_tar(tmp_path / "whole.tar", [("a/1.jpg", b"1" * 2000), ("a/2.jpg", b"2" * 2000)], "w")
    cut = tmp_path / "cut.tar"
    cut.write_bytes(whole.read_bytes()[:512 + 2000 + 48 + 512 + 100])
    with pytest.raises(DataError, match="it ends in the middle of member 'a/2.jpg'"):
        extract_archive(cut, dest)
    assert list(dest.iterdir()) == []


# --- caps: ratio, time, and what a refusal leaves ---------------------------------------------------


@pytest.mark.parametrize(("name", "writer"), [FORMATS[0], FORMATS[3]])
def test_compression_ratio_cap_above_its_floor(tmp_path: Path, dest: Path, name: str, writer) -> None:
    if name.endswith(".zip"):
        archive = tmp_path / name
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
            out.writestr("a/zeros.bmp", bytes(2 * 1024**2))
    else:
        archive = writer(tmp_path / name, [("a/zeros.bmp", bytes(2 * 1024**2))])
    compressed = archive.stat().st_size
    assert compressed < 20_000  # about 2 MiB / 10 KB: a ratio over 100
    tight = ArchiveLimits(ratio_floor_bytes=1024**2)
    with pytest.raises(ArchiveTooLargeError, match="expands to more than 100 times its own size") as caught:
        extract_archive(archive, dest, limits=tight)
    assert str(archive) in str(caught.value)
    assert list(dest.iterdir()) == []
    # below the floor (16 MiB by default) a very compressible archive is fine, and so is a higher ratio
    extract_archive(archive, dest / "default")
    extract_archive(archive, dest / "loose", limits=ArchiveLimits(ratio_floor_bytes=1024**2, max_ratio=10_000))
    assert (dest / "loose" / "a" / "zeros.bmp").stat().st_size == 2 * 1024**2


@pytest.mark.parametrize(("name", "writer"), [FORMATS[0], FORMATS[3]])
def test_deadline(tmp_path: Path, dest: Path, name, writer, monkeypatch: pytest.MonkeyPatch) -> None:
    archive = writer(tmp_path / name, [(f"a/{i}.jpg", bytes([i]) * 100) for i in range(20)])

    class Clock:  # every look at the clock is 10 s later
        now = 0.0

        def monotonic(self) -> float:
            self.now += 10.0
            return self.now

    monkeypatch.setattr(archives, "time", Clock())
    with pytest.raises(ArchiveTooLargeError, match="extracting took longer than 30 s, the limit") as caught:
        extract_archive(archive, dest, limits=ArchiveLimits(deadline_s=30))
    assert str(archive) in str(caught.value)
    assert list(dest.iterdir()) == []


def test_a_refusal_removes_what_it_wrote_inside_existing_folders(tmp_path: Path, dest: Path) -> None:
    (dest / "keep").mkdir()
    (dest / "keep" / "mine.txt").write_text("mine")
    archive = write_tar(tmp_path / "bad.tar.gz", [("keep/new.jpg", b"1"), ("keep/sub/2.jpg", b"2"),
                                                  ("/etc/evil", b"3")])
    with pytest.raises(UnsafeArchiveError):
        extract_archive(archive, dest)
    assert listing(dest) == ["keep", "keep/mine.txt"]


def test_limits_are_checked() -> None:
    from photolabel.errors import ConfigError

    for field, value in [("max_total_bytes", 0), ("max_members", -1), ("max_ratio", 0.5), ("deadline_s", 0),
                         ("max_ratio", float("nan")), ("max_header_bytes", True)]:
        with pytest.raises(ConfigError) as caught:
            ArchiveLimits(**{field: value})
        assert caught.value.field == field
