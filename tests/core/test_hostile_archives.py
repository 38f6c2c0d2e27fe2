"""Archives built to hurt: tarfile's CVE-2024-6232 and CVE-2025-8194, compression bombs, overlapping zip
members, and a property test over mutated and generated tar, tar.gz and zip bytes.

Every archive here is built by hand, byte by byte, so that it is exactly the hostile input and does not
depend on what this Python's tarfile or zipfile would write. Timings are never asserted: a generous bound
only detects a hang (the refusals measured take milliseconds).
"""

from __future__ import annotations

import builtins
import gzip
import io
import os
import struct
import tarfile
import tempfile
import threading
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_archives import add_members

from photolabel import archives
from photolabel.archives import extract_archive
from photolabel.errors import ArchiveTooLargeError, DataError
from photolabel.limits import ArchiveLimits

HANG_S = 60  # only detects a hang: each of these is refused in milliseconds
MiB = 1024**2
GiB = 1024**3


# --- hand-built tar ----------------------------------------------------------------------------------


def tar_header(name: bytes, size: int = 0, kind: bytes = b"0", *, size_field: bytes | None = None,
               prefix: bytes = b"") -> bytes:
    """One ustar header block with a correct checksum; ``size_field`` replaces the octal size as is."""
    block = bytearray(512)
    block[0:len(name)] = name
    block[100:108] = b"0000644\x00"
    block[108:116] = block[116:124] = b"0000000\x00"
    block[124:136] = size_field if size_field is not None else b"%011o\x00" % size
    block[136:148] = b"%011o\x00" % 0
    block[156:157] = kind
    block[257:263], block[263:265] = b"ustar\x00", b"00"
    block[345:345 + len(prefix)] = prefix
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    return bytes(block)


def padded(data: bytes) -> bytes:
    return data + bytes(-len(data) % 512)


def member(name: bytes, data: bytes) -> bytes:
    return tar_header(name, len(data)) + padded(data)


END = bytes(1024)


def pax_member(records: bytes, name: bytes, data: bytes) -> bytes:
    """A pax extended header holding ``records``, then the member it describes."""
    return tar_header(b"././@PaxHeader", len(records), b"x") + padded(records) + member(name, data)


def pax_record(keyword: bytes, value: bytes, error: int = 0) -> bytes:
    """``"<length> keyword=value\\n"``, its length right (``error`` 0) or off by ``error``."""
    body = b" " + keyword + b"=" + value + b"\n"
    length = len(body) + 1
    while len(str(length)) + len(body) != length:
        length += 1
    return str(length + error).encode() + body


def cve_2024_6232() -> bytes:
    """A pax header of 512 KiB of digits and no record: this Python's tarfile backtracks quadratically on
    it (about 6 s for 40 KB, so tens of minutes for this one); 8 KB once gzipped."""
    digits = b"1" * (512 * 1024) + b" x=y\n"
    return gzip.compress(pax_member(digits, b"a/1.jpg", b"one") + END)


def cve_2024_6232_keywords() -> bytes:
    """The other backtracking regex: many short records that never reach an "=" (tarfile: seconds per 40 KB)."""
    records = b"3 a" * 100_000 + b"=\n"
    return gzip.compress(pax_member(records, b"a/1.jpg", b"one") + END)


def cve_2025_8194() -> bytes:
    """A member whose size is negative (GNU base-256): tarfile jumps back to the member before and loops forever."""
    body = member(b"a/0.jpg", b"zero") + member(b"a/1.jpg", b"one")
    back = -1536  # from the end of the third header back to the second one
    field = b"\xff" + (back % (1 << 88)).to_bytes(11, "big")
    return gzip.compress(body + tar_header(b"a/2.jpg", size_field=field) + END)


def gzip_bomb(size: int) -> bytes:
    """A .tar.gz of one member of ``size`` zero bytes, built without compressing them all: after a full flush
    deflate's state is reset, so 1 MiB of zeros compresses to the same bytes every time."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    header = tar_header(b"a/big.jpg", size)
    parts = [b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff", compressor.compress(header),
             compressor.flush(zlib.Z_FULL_FLUSH)]
    chunk = bytes(MiB)
    parts.append((compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)) * (size // MiB))
    crc = zlib.crc32(header)
    for _ in range(size // MiB):
        crc = zlib.crc32(chunk, crc)
    crc = zlib.crc32(END, crc)
    parts += [compressor.compress(END), compressor.flush(zlib.Z_FINISH),
              struct.pack("<II", crc, (len(header) + size + len(END)) % (1 << 32))]
    return b"".join(parts)


def finishes(action: Callable[[], object]) -> BaseException | None:
    """Run ``action`` in a thread; fail if it is still running after HANG_S; return what it raised."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            action()
        except BaseException as exc:  # handed to the test
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_S)
    assert not thread.is_alive(), f"still extracting after {HANG_S} s: the parser hangs"
    return outcome[0]


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    return tmp_path / "dest"


@pytest.fixture
def no_writes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file archives.py opens for writing, recorded (a refusal before writing leaves it empty)."""
    opened: list[str] = []

    def spy(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        if any(flag in mode for flag in "wax+"):
            opened.append(str(file))
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr(archives, "open", spy, raising=False)
    return opened


# --- the CVEs ------------------------------------------------------------------------------------------


def test_the_samples_are_what_they_claim() -> None:
    # The quadratic sample really is one pax header followed by a member; the looping one really loops in
    # tarfile (it sees members 1 and 2 again and again; stopped here after 50 of them).
    digits = gzip.decompress(cve_2024_6232())
    assert digits[156:157] == b"x" and int(digits[124:135], 8) == 512 * 1024 + 5
    with tarfile.open(fileobj=io.BytesIO(cve_2025_8194()), mode="r:gz") as archive:
        names = [archive.next().name for _ in range(50)]  # type: ignore[union-attr]
    assert names[:4] == ["a/0.jpg", "a/1.jpg", "a/2.jpg", "a/1.jpg"] and len(set(names)) == 3


@pytest.mark.parametrize("sample", [cve_2024_6232, cve_2024_6232_keywords], ids=["digits", "keywords"])
def test_cve_2024_6232_pax_backtracking_is_refused(tmp_path: Path, dest: Path, sample, no_writes) -> None:
    archive = tmp_path / "pax.tar.gz"
    archive.write_bytes(sample())
    error = finishes(lambda: extract_archive(archive, dest))
    assert isinstance(error, DataError) and not isinstance(error, ArchiveTooLargeError), error
    assert str(archive) in str(error) and "pax record at byte 0 of its data" in str(error)
    assert list(dest.iterdir()) == [] and no_writes == []


def test_an_oversized_pax_header_is_refused_by_its_declared_size(tmp_path: Path, dest: Path, no_writes) -> None:
    # 40 MiB of digits gzip to 40 KB; its size alone refuses it, before any of it is read.
    digits = b"1" * (40 * MiB)
    archive = tmp_path / "huge-pax.tar.gz"
    archive.write_bytes(gzip.compress(pax_member(digits + b" x=y\n", b"a/1.jpg", b"one") + END))
    assert archive.stat().st_size < 100_000
    error = finishes(lambda: extract_archive(archive, dest))
    assert isinstance(error, ArchiveTooLargeError), error
    assert "pax header at byte 0 holds 41943045 bytes, over the limit of 1048576" in str(error)
    assert list(dest.iterdir()) == [] and no_writes == []


def test_cve_2025_8194_negative_size_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "loop.tar.gz"
    archive.write_bytes(cve_2025_8194())
    error = finishes(lambda: extract_archive(archive, dest))
    assert isinstance(error, DataError), error
    assert "member 'a/2.jpg': the header at byte 2048 gives a negative size" in str(error)
    assert list(dest.iterdir()) == []  # a/0.jpg and a/1.jpg, written first, were removed again


@pytest.mark.parametrize(("records", "words"), [
    (pax_record(b"size", b"-5"), "pax size that is not a non-negative whole number"),
    (pax_record(b"size", b"1e99"), "pax size that is not a non-negative whole number"),
    (pax_record(b"path", b"x", 50), "whose length is wrong"),
    (pax_record(b"", b"abc"), "without a keyword"),
    (b"7 path\n", "without a keyword"),
    (b"x path=a\n", "malformed pax record"),
    (pax_record(b"GNU.sparse.map", b"0,1,2,3"), "sparse file"),
], ids=["negative", "float", "length", "no-keyword", "no-equals", "no-length", "sparse"])
def test_malformed_pax_records_are_refused(tmp_path: Path, dest: Path, records: bytes, words: str) -> None:
    archive = tmp_path / "pax.tar"
    archive.write_bytes(member(b"a/0.jpg", b"zero") + pax_member(records, b"a/1.jpg", b"one") + END)
    with pytest.raises(DataError, match=words) as caught:
        extract_archive(archive, dest)
    assert str(archive) in str(caught.value)
    assert list(dest.iterdir()) == []


@pytest.mark.parametrize(("field", "words"), [
    (b"-0000001000\x00", "size field that is not an octal number"),
    (b"+0000001000\x00", "size field that is not an octal number"),
    (b"0000_001000\x00", "size field that is not an octal number"),
    (b"\xff" * 12, "gives a negative size"),
], ids=["minus", "plus", "underscore", "base256-minus-one"])
def test_header_sizes_must_be_non_negative_octal_or_base256(tmp_path: Path, dest: Path, field: bytes,
                                                            words: str) -> None:
    archive = tmp_path / "size.tar"
    archive.write_bytes(member(b"a/0.jpg", b"zero") + tar_header(b"a/1.jpg", size_field=field) + END)
    with pytest.raises(DataError, match=words):
        extract_archive(archive, dest)
    assert list(dest.iterdir()) == []


def test_a_base256_size_is_read(tmp_path: Path, dest: Path) -> None:
    # GNU tar writes sizes of 8 GiB and more in base 256; a small one is valid too.
    archive = tmp_path / "b256.tar"
    archive.write_bytes(tar_header(b"a/1.jpg", size_field=b"\x80" + (3).to_bytes(11, "big")) + padded(b"one") + END)
    extract_archive(archive, dest)
    assert (dest / "a" / "1.jpg").read_bytes() == b"one"


def test_too_many_extended_headers_in_a_row_are_refused(tmp_path: Path, dest: Path) -> None:
    records = pax_record(b"path", b"a.jpg")
    chain = (tar_header(b"././@PaxHeader", len(records), b"x") + padded(records)) * 20
    archive = tmp_path / "chain.tar"
    archive.write_bytes(chain + member(b"a/1.jpg", b"one") + END)
    with pytest.raises(DataError, match="follows 8 extended headers in a row"):
        extract_archive(archive, dest)


def test_a_global_header_may_not_rename_every_member(tmp_path: Path, dest: Path) -> None:
    records = pax_record(b"path", b"evil.jpg")
    archive = tmp_path / "global.tar"
    archive.write_bytes(tar_header(b"pax_global_header", len(records), b"g") + padded(records)
                        + member(b"a/1.jpg", b"one") + END)
    with pytest.raises(DataError, match="global pax header that sets 'path'"):
        extract_archive(archive, dest)


# --- compression bombs ---------------------------------------------------------------------------------


def test_a_1_gib_gzip_bomb_is_refused_before_anything_is_written(tmp_path: Path, dest: Path, no_writes) -> None:
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(gzip_bomb(GiB))
    assert archive.stat().st_size < 1.1 * MiB
    error = finishes(lambda: extract_archive(archive, dest))
    assert isinstance(error, ArchiveTooLargeError), error
    assert "expands to more than 100 times its own size" in str(error) and str(archive) in str(error)
    assert no_writes == [] and list(dest.iterdir()) == []


def test_the_bomb_is_refused_by_max_total_bytes_too(tmp_path: Path, dest: Path, no_writes) -> None:
    archive = tmp_path / "bomb.tar.gz"
    archive.write_bytes(gzip_bomb(64 * MiB))
    limits = ArchiveLimits(max_ratio=1e9, max_total_bytes=32 * MiB)
    with pytest.raises(ArchiveTooLargeError, match=f"more than {32 * MiB} bytes once extracted"):
        extract_archive(archive, dest, limits=limits)
    assert no_writes == [] and list(dest.iterdir()) == []


def test_a_zip_bomb_is_refused_from_its_central_directory(tmp_path: Path, dest: Path, no_writes) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out, out.open("a/big.jpg", "w") as member_file:
        for _ in range(64):
            member_file.write(bytes(MiB))
    assert archive.stat().st_size < 200_000
    with pytest.raises(ArchiveTooLargeError, match="expands to more than 100 times its own size"):
        extract_archive(archive, dest)
    assert no_writes == [] and list(dest.iterdir()) == []


def test_overlapping_zip_members_are_refused(tmp_path: Path, dest: Path) -> None:
    # The "quoted overlap" bomb's trick: several central-directory entries that share one local file.
    source = io.BytesIO()
    with zipfile.ZipFile(source, "w", zipfile.ZIP_DEFLATED) as out:
        out.writestr("a/1.jpg", b"x" * 1000)
    raw = source.getvalue()
    end = raw.rindex(b"PK\x05\x06")
    central = raw.index(b"PK\x01\x02")
    entry = raw[central:end]
    entries = [entry.replace(b"a/1.jpg", f"a/{i}.jpg".encode()) for i in range(1, 4)]
    directory = b"".join(entries)
    tail = bytearray(raw[end:])
    struct.pack_into("<HHII", tail, 8, 3, 3, len(directory), central)
    archive = tmp_path / "overlap.zip"
    archive.write_bytes(raw[:central] + directory + bytes(tail))
    with zipfile.ZipFile(archive) as check:  # a valid zip to zipfile's eyes: three names
        assert len(check.infolist()) == 3
    with pytest.raises(DataError, match="overlap in the file") as caught:
        extract_archive(archive, dest)
    assert "a/1.jpg" in str(caught.value)
    assert list(dest.iterdir()) == []


# --- the property: whatever the bytes, extract inside dest or raise a DataError -------------------------

FUZZ_LIMITS = ArchiveLimits(max_total_bytes=4 * MiB, max_members=500, max_header_bytes=64 * 1024, deadline_s=60)
FUZZ_SETTINGS = settings(max_examples=200, derandomize=True, deadline=None, database=None,
                         suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def seed_tar(kind: str) -> bytes:
    """A small valid tar as tarfile writes it, in ustar, GNU or pax format (long and non-ASCII names)."""
    form = {"ustar": tarfile.USTAR_FORMAT, "gnu": tarfile.GNU_FORMAT, "pax": tarfile.PAX_FORMAT}[kind]
    buffer = io.BytesIO()
    long_dir = "d" * 60 + "/" + "e" * 60 if kind == "ustar" else "café-" + "x" * 120
    with tarfile.open(fileobj=buffer, mode="w", format=form) as archive:
        add_members(archive, [("a/", None), ("a/1.jpg", b"one"), (f"{long_dir}/2.jpg", b"two" * 200),
                              ("b/3.jpg", b"")])
    return buffer.getvalue()


def seed_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("a/", b"")
        archive.writestr("a/1.jpg", b"one" * 50)
        archive.writestr("b/2.jpg", b"two")
        archive.writestr(zipfile.ZipInfo("c/3.jpg"), b"stored", compress_type=zipfile.ZIP_STORED)
    return buffer.getvalue()


SEED_TARS = {kind: seed_tar(kind) for kind in ("ustar", "gnu", "pax")}
SEED_ZIP = seed_zip()
HEADER_FIELDS = [0, 99, 100, 124, 125, 135, 148, 156, 157, 257, 263, 345, 400, 511]


def header_blocks(data: bytes) -> list[int]:
    """Offsets of the blocks of ``data`` whose checksum is right: its headers."""
    found = []
    for offset in range(0, len(data) - 511, 512):
        block = data[offset:offset + 512]
        if any(block) and checksum_ok(block):
            found.append(offset)
    return found


def checksum_ok(block: bytes) -> bool:
    stored = block[148:156].split(b"\x00", 1)[0].strip()
    return stored.isdigit() and int(stored, 8) == sum(block[:148]) + sum(block[156:]) + 8 * 0x20



@st.composite
def mutated_tar(draw: st.DrawFn) -> bytes:
    """A seed tar with header fields overwritten (checksums fixed or not), cut, or with bytes inserted."""
    base = draw(st.sampled_from(sorted(SEED_TARS)))
    data = bytearray(SEED_TARS[base])
    headers = header_blocks(bytes(data))
    for _ in range(draw(st.integers(1, 6))):
        operation = draw(st.sampled_from(["field", "field", "field", "byte", "cut", "insert"]))
        if operation == "field":
            at = draw(st.sampled_from(headers)) + draw(st.sampled_from(HEADER_FIELDS))
            value = draw(st.one_of(
                st.binary(min_size=1, max_size=12),
                st.sampled_from([b"-1", b"\xff" * 12, b"\x80" + b"\xff" * 11, b"77777777777", b"x", b"L", b"K",
                                 b"g", b"S", b"1", b"2", b"5", b"../", b"/etc/", b"\x00", b" " * 12]),
            ))
            data[at:at + len(value)] = value
        elif operation == "byte" and data:
            at = draw(st.integers(0, len(data) - 1))
            data[at] = draw(st.integers(0, 255))
        elif operation == "cut" and data:
            del data[draw(st.integers(0, len(data) - 1)):]
        else:
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=1024))
    if draw(st.booleans()):
        data = bytearray(archives_fix_checksums(bytes(data), headers))
    return bytes(data)


def archives_fix_checksums(data: bytes, headers: list[int]) -> bytes:
    """``data`` with the checksums of the blocks at ``headers`` recomputed (so that mutations reach the fields)."""
    fixed = bytearray(data)
    for offset in headers:
        if offset + 512 <= len(fixed):
            block = fixed[offset:offset + 512]
            block[148:156] = b" " * 8
            fixed[offset + 148:offset + 156] = b"%06o\x00 " % sum(block)
    return bytes(fixed)


@st.composite
def generated_tar(draw: st.DrawFn) -> bytes:
    """A tar made of generated members: any names, type flags and sizes, pax records right or wrong."""
    body = b""
    for _ in range(draw(st.integers(1, 5))):
        name = draw(st.one_of(
            st.sampled_from([b"a/1.jpg", b"../x", b"/abs", b"a/../../x", b"a\\..\\x", b".", b"", b"__MACOSX/a",
                             b"a/._x", b"C:/x", b"a/\xff\xfe.jpg", b"a/b/c/d.jpg", b"a\x00b"]),
            st.binary(max_size=100),
        ))
        kind = draw(st.one_of(st.sampled_from([b"0", b"5"]),  # half of them plain files and folders
                              st.sampled_from([b"0", b"\x00", b"1", b"2", b"3", b"5", b"6", b"7", b"x", b"g", b"L",
                                               b"K", b"S", b"V", b"Z"])))
        data = draw(st.binary(max_size=600))
        if kind in (b"x", b"g") and draw(st.booleans()):
            keyword = draw(st.sampled_from([b"path", b"size", b"linkpath", b"comment", b"hdrcharset", b"mtime"]))
            value = draw(st.one_of(st.binary(max_size=40), st.sampled_from([b"-1", b"999999999", b"../x", b"0"])))
            data = pax_record(keyword, value, draw(st.sampled_from([0, 0, 0, -1, 1, 1000])))
        size = len(data) if draw(st.sampled_from([True, True, True, False])) else draw(st.integers(0, 5000))
        body += tar_header(name[:100], size, kind) + padded(data)
    if draw(st.booleans()):
        body += END
    return body


@st.composite
def mutated_zip(draw: st.DrawFn) -> bytes:
    data = bytearray(SEED_ZIP)
    directory = data.index(b"PK\x01\x02")
    for _ in range(draw(st.integers(1, 6))):
        if len(data) < 2:
            break
        operation = draw(st.sampled_from(["directory", "directory", "byte", "cut", "insert"]))
        if operation == "directory":  # the central directory and its end record decide what zipfile trusts
            at = draw(st.integers(min(directory, len(data) - 1), len(data) - 1))
            value = draw(st.one_of(st.binary(min_size=1, max_size=8),
                                   st.sampled_from([b"\xff\xff\xff\xff", b"\x00\x00\x00\x00", b"\x01\x00"])))
            data[at:at + len(value)] = value
        elif operation == "byte":
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif operation == "cut":
            del data[draw(st.integers(1, len(data) - 1)):]
        else:
            at = draw(st.integers(0, len(data)))
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
    return bytes(data)


def assert_safe_extraction(data: bytes, suffix: str) -> None:
    """Either every extracted entry is a plain file or folder strictly inside dest, or a DataError was raised
    and dest is empty; nothing appears beside dest; no other exception escapes."""
    with tempfile.TemporaryDirectory() as tmp:
        sandbox = Path(tmp) / "sandbox"
        dest = sandbox / "dest"
        dest.mkdir(parents=True)
        archive = Path(tmp) / f"fuzz{suffix}"
        archive.write_bytes(data)
        outside: list[str] = []  # every file or folder made outside dest, even if removed again later
        inside = dest.resolve()

        def watch(path: object) -> None:
            where = Path(os.path.realpath(os.fspath(path)))  # type: ignore[arg-type]
            if where != inside and inside not in where.parents:
                outside.append(str(where))

        def spy_open(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
            if any(flag in mode for flag in "wax+"):
                watch(file)
            return builtins.open(file, mode, *args, **kwargs)

        def spy_mkdir(path, *args, **kwargs):  # type: ignore[no-untyped-def]
            watch(path)
            return real_mkdir(path, *args, **kwargs)

        real_mkdir = os.mkdir
        archives.open = spy_open  # type: ignore[attr-defined]
        os.mkdir = spy_mkdir
        try:
            root = extract_archive(archive, dest, limits=FUZZ_LIMITS)
        except DataError as exc:
            assert list(dest.iterdir()) == [], f"a refusal left files behind: {exc}"
            str(exc).encode("utf-8")  # a message any surface can print (no lone surrogates)
        else:
            assert root == dest or root.parent == dest
            for path in dest.rglob("*"):
                assert not path.is_symlink(), path
                assert path.is_file() or path.is_dir(), path
                assert inside in path.resolve().parents, path
        finally:
            os.mkdir = real_mkdir
            del archives.open  # type: ignore[attr-defined]
        assert outside == [], f"wrote outside dest: {outside}"
        assert [entry.name for entry in sandbox.iterdir()] == ["dest"]
        assert sorted(entry.name for entry in Path(tmp).iterdir()) == sorted(["sandbox", archive.name])


@FUZZ_SETTINGS
@given(data=st.one_of(mutated_tar(), generated_tar()))
def test_fuzz_tar(data: bytes) -> None:
    assert_safe_extraction(data, ".tar")


@FUZZ_SETTINGS
@given(data=st.one_of(mutated_tar(), generated_tar()), level=st.integers(0, 9), flip=st.integers(0, 400))
def test_fuzz_tar_gz(data: bytes, level: int, flip: int) -> None:
    compressed = bytearray(gzip.compress(data, compresslevel=level, mtime=0))
    if flip < len(compressed) and flip % 3 == 0:  # now and then, damage the gzip stream itself
        compressed[flip] ^= 0x5A
    assert_safe_extraction(bytes(compressed), ".tar.gz")


@FUZZ_SETTINGS
@given(data=mutated_zip())
def test_fuzz_zip(data: bytes) -> None:
    assert_safe_extraction(data, ".zip")
