"""Safe extraction of ``.tar.gz`` / ``.tgz`` / ``.tar`` / ``.zip`` data sets.

Tar archives (plain, or compressed with gzip, bzip2 or xz, whatever their name says) are read
by the parser below, not by :mod:`tarfile`: tarfile's own parsing hangs on a crafted pax header
(CVE-2024-6232) or loops on a negative size (CVE-2025-8194) on some Python versions. Every
512-byte header is checked before what it describes is used: its checksum, sizes that are
non-negative whole numbers, pax records that are well formed, extended headers no larger than
``max_header_bytes``. Parsing takes time linear in the archive. Zip archives are read with
:mod:`zipfile` once their central directory has been checked: member count, declared sizes,
members that overlap (the trick of some zip bombs).

Members are written one by one and only as plain folders and files: absolute paths, ``..``
components, links and special files are refused. Backslashes in member names are read as
folder separators (zip tools on Windows write them), so ``..\\x`` is refused too.
:class:`~photolabel.limits.ArchiveLimits` caps the members, the bytes once extracted, the
compression ratio and the time the extraction takes; a member that would break a cap is refused
before any of it is written. On any error, what was written is removed again.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
import shutil
import stat
import struct
import time
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import pairwise
from pathlib import Path
from typing import IO

from photolabel.errors import (
    ArchiveTooLargeError,
    DataError,
    PhotolabelError,
    SourceNotFoundError,
    UnsafeArchiveError,
)
from photolabel.limits import DEFAULT_ARCHIVE_LIMITS, ArchiveLimits

try:  # both are optional parts of a Python build
    import bz2
except ImportError:  # pragma: no cover
    bz2 = None  # type: ignore[assignment]
try:
    import lzma
except ImportError:  # pragma: no cover
    lzma = None  # type: ignore[assignment]

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")

_COPY_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")

_BLOCK = 512
_ZERO_BLOCK = bytes(_BLOCK)
_OCTAL = re.compile(rb"[0-7]+")
_POSIX_MAGIC = b"ustar\x00"
_REGULAR_TYPES = frozenset({b"0", b"\x00", b"7"})  # "7": contiguous file, read as a regular one
_DIR_TYPE = b"5"
_LINK_TYPES = {b"1": "hard", b"2": "symbolic"}
_SPECIAL_TYPES = frozenset({b"3", b"4", b"6"})  # character and block devices, fifos
_EXTENDED_TYPES = {b"x": "pax", b"g": "global pax", b"L": "GNU long name", b"K": "GNU long link name"}
_MAX_EXTENDED_IN_A_ROW = 8  # extended headers before one member (writers use one or two)
_GLOBAL_KEYWORDS_REFUSED = ("path", "linkpath", "size")
_MAX_PAX_LENGTH_DIGITS = 20
_ZIP_LOCAL_HEADER = 30  # bytes of a zip local file header before its name

# What a corrupt, truncated, encrypted or unsupported archive (or a full disk) raises.
_READ_ERRORS: tuple[type[BaseException], ...] = (
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    RuntimeError,
    NotImplementedError,
    ValueError,
    struct.error,
    IndexError,
    KeyError,
    OverflowError,
    MemoryError,
    *((lzma.LZMAError,) if lzma is not None else ()),
)


def is_archive(path: str | os.PathLike[str]) -> bool:
    """True when the name ends in one of :data:`ARCHIVE_SUFFIXES` (any case)."""
    return os.fspath(path).lower().endswith(ARCHIVE_SUFFIXES)


def extract_archive(
    path: Path,
    dest: Path,
    *,
    limits: ArchiveLimits | None = None,
    max_total_bytes: int | None = None,
    max_members: int | None = None,
) -> Path:
    """Extract the archive at ``path`` into ``dest`` and return the data root.

    The data root is the single folder inside ``dest`` when the archive has one wrapping
    folder (hidden entries aside), else ``dest`` itself. ``__MACOSX/`` and AppleDouble
    ``._*`` members are skipped. ``limits`` (default :data:`~photolabel.limits.DEFAULT_ARCHIVE_LIMITS`)
    caps the archive; ``max_total_bytes`` and ``max_members`` override single fields of it.
    On any error, what was extracted is removed again.

    Raises :class:`UnsafeArchiveError` for a member with an absolute path, a ``..``
    component, a link or a special file; :class:`ArchiveTooLargeError` for an archive over a
    cap (members, bytes once extracted, compression ratio, header size, time);
    :class:`DataError` for one that cannot be read (corrupt, truncated, a malformed header);
    :class:`SourceNotFoundError` when ``path`` does not exist. Every other failure of the
    underlying readers becomes a :class:`DataError` too.
    """
    limits = limits or DEFAULT_ARCHIVE_LIMITS
    overrides = {"max_total_bytes": max_total_bytes, "max_members": max_members}
    if any(value is not None for value in overrides.values()):
        limits = dataclasses.replace(limits, **{k: v for k, v in overrides.items() if v is not None})
    path, dest = Path(path), Path(dest)
    if not path.is_file():
        raise SourceNotFoundError(f"{path}: no such archive")
    if not is_archive(path):
        raise DataError(f"{path}: not an archive; expected a name ending in {', '.join(ARCHIVE_SUFFIXES)}")
    dest.mkdir(parents=True, exist_ok=True)
    shown = _printable(str(path))
    budget = _Budget(shown, limits, path.stat().st_size)
    writer = _MemberWriter(shown, dest, budget)
    try:
        if path.name.lower().endswith(".zip"):
            _extract_zip(path, writer)
        else:
            _extract_tar(path, writer)
    except BaseException as exc:
        writer.undo()
        if isinstance(exc, PhotolabelError) or not isinstance(exc, _READ_ERRORS):
            raise
        cause = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        cause = _printable(" ".join(cause.split())) or type(exc).__name__
        member = f"member '{writer.current}': " if writer.current is not None else ""
        raise DataError(f"{shown}: cannot extract the archive ({member}{cause})") from exc
    return _data_root(dest)


# --- the caps ---------------------------------------------------------------------------------------


class _Budget:
    """Keeps an extraction within its :class:`ArchiveLimits`: members, bytes, ratio, time."""

    def __init__(self, shown: str, limits: ArchiveLimits, compressed_size: int) -> None:
        self.shown = shown
        self.limits = limits
        self.deadline = time.monotonic() + limits.deadline_s
        # decompressed bytes allowed: the ratio's share of the file, but never less than the floor
        self.expand_cap = max(limits.ratio_floor_bytes, int(limits.max_ratio * max(compressed_size, 1)))
        self.expanded = 0  # bytes decompressed so far (a tar's headers and padding included)
        self.claimed = 0  # the members' sizes so far
        self.members = 0

    def tick(self) -> None:
        if time.monotonic() > self.deadline:
            raise ArchiveTooLargeError(
                f"{self.shown}: extracting took longer than {self.limits.deadline_s:g} s, the limit; refused")

    def count_member(self) -> None:
        self.members += 1
        if self.members > self.limits.max_members:
            self.too_many_members()

    def too_many_members(self) -> None:
        raise ArchiveTooLargeError(f"{self.shown}: more than {self.limits.max_members} members; refused")

    def expand(self, size: int) -> None:
        """``size`` more bytes were decompressed."""
        self.expanded += size
        if self.expanded > self.expand_cap:
            self.too_compressed()
        self.tick()

    def claim(self, size: int) -> None:
        """A member of ``size`` bytes is next: refused here, before any of it is written, if it breaks a cap."""
        self.claimed += size
        if self.claimed > self.limits.max_total_bytes:
            self.too_big()
        if self.expanded + size > self.expand_cap:
            self.too_compressed()

    def check_declared(self, total: int) -> None:
        """The sum of every member's declared size (a zip's central directory), before anything is written."""
        if total > self.limits.max_total_bytes:
            self.too_big()
        if total > self.expand_cap:
            self.too_compressed()

    def too_big(self) -> None:
        raise ArchiveTooLargeError(
            f"{self.shown}: more than {self.limits.max_total_bytes} bytes once extracted; refused")

    def too_compressed(self) -> None:
        raise ArchiveTooLargeError(
            f"{self.shown}: expands to more than {self.limits.max_ratio:g} times its own size "
            f"({self.expand_cap} bytes) once decompressed, as a compression bomb does; refused")


# --- tar --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _TarMember:
    name: str
    kind: bytes  # the header's type flag
    size: int
    offset: int  # of its header in the decompressed stream


def _extract_tar(path: Path, writer: _MemberWriter) -> None:
    budget = writer.budget
    with _decompressed(path, writer.shown) as stream:
        source = _Source(stream, budget, writer.shown)
        for member in _tar_members(source, writer.shown, budget.limits):
            budget.count_member()
            writer.current = _printable(member.name)
            has_data = member.kind not in (_DIR_TYPE, *_LINK_TYPES, *_SPECIAL_TYPES)  # as tarfile reads them
            parts = writer.member_parts(member.name)
            if parts is None:
                if has_data:
                    budget.claim(member.size)
                    source.skip(member.size + _padding(member.size), f"member '{writer.current}'")
                writer.current = None
                continue
            if member.kind in _LINK_TYPES:
                raise UnsafeArchiveError(f"{writer.shown}: member '{writer.current}' is a "
                                         f"{_LINK_TYPES[member.kind]} link; links are refused")
            if member.kind == _DIR_TYPE:
                writer.make_dir(parts)
            elif member.kind in _REGULAR_TYPES:
                what = f"member '{writer.current}'"
                writer.write_file(parts, member.size, source.chunks(member.size, what))
                source.skip(_padding(member.size), what)
            else:
                raise UnsafeArchiveError(
                    f"{writer.shown}: member '{writer.current}' is a device, fifo or other special file "
                    f"(type {member.kind.decode('latin-1')!r}); refused")
            writer.current = None


def _tar_members(source: _Source, shown: str, limits: ArchiveLimits) -> Iterator[_TarMember]:
    """The members of the tar stream, each header checked; the caller reads (or skips) each one's data."""
    pax: dict[str, bytes] = {}
    long_name: str | None = None
    extended = 0
    while True:
        offset = source.position
        block = source.read(_BLOCK)
        if len(block) < _BLOCK or block == _ZERO_BLOCK:
            if extended:
                raise DataError(f"{shown}: cannot extract the archive (it ends after an extended header, without the "
                                "member that header describes)")
            if 0 < len(block) < _BLOCK:
                raise DataError(f"{shown}: cannot extract the archive (it ends in the middle of the header at "
                                f"byte {offset})")
            if offset == 0:
                raise DataError(f"{shown}: cannot extract the archive (it is empty)")
            return  # the end-of-archive block, or the end of the file after a whole member
        name, kind, size = _parse_header(block, offset, shown)
        if kind in _EXTENDED_TYPES:
            label = _EXTENDED_TYPES[kind]
            extended += 1
            if extended > _MAX_EXTENDED_IN_A_ROW:
                raise _bad(shown, offset, f"follows {_MAX_EXTENDED_IN_A_ROW} extended headers in a row")
            if size > limits.max_header_bytes:
                raise ArchiveTooLargeError(
                    f"{shown}: the {label} header at byte {offset} holds {size} bytes, over the limit of "
                    f"{limits.max_header_bytes}; refused")
            what = f"the {label} header at byte {offset}"
            data = source.read_exact(size, what)
            source.skip(_padding(size), what)
            if kind == b"x":
                pax.update(_pax_records(data, shown, offset))
            elif kind == b"g":
                records = _pax_records(data, shown, offset)
                for keyword in _GLOBAL_KEYWORDS_REFUSED:
                    if keyword in records:
                        raise _bad(shown, offset, f"is a global pax header that sets '{keyword}' for every member")
            elif kind == b"L":
                long_name = _decode(data.split(b"\x00", 1)[0])
            continue
        if "path" in pax:
            name = _decode(pax["path"])
        elif long_name is not None:
            name = long_name
        if "size" in pax:
            size = _pax_size(pax["size"], shown, offset)
        if kind == b"S" or any(keyword.startswith("GNU.sparse.") for keyword in pax):
            raise DataError(f"{shown}: cannot extract the archive (member '{_printable(name)}' is a sparse file, "
                            "which is not supported)")
        if kind == b"\x00" and name.endswith("/"):  # old tars write a folder as a file named with a "/"
            kind = _DIR_TYPE
        yield _TarMember(name, kind, size, offset)
        pax, long_name, extended = {}, None, 0


def _parse_header(block: bytes, offset: int, shown: str) -> tuple[str, bytes, int]:
    """(name, type flag, size) of one header block, its checksum and numbers checked."""
    stored_text = block[148:156].split(b"\x00", 1)[0].strip()
    stored = int(stored_text, 8) if _OCTAL.fullmatch(stored_text) else -1
    unsigned = sum(block[:148]) + sum(block[156:]) + 8 * 0x20  # the checksum field counts as spaces
    signed = sum(struct.unpack_from("148b8x356b", block)) + 8 * 0x20  # what some old writers computed
    if stored not in (unsigned, signed):
        raise _bad(shown, offset, "has a wrong checksum: this is not a tar archive, or it is damaged")
    name = _decode(block[:100].split(b"\x00", 1)[0])
    if block[257:263] == _POSIX_MAGIC:
        prefix = block[345:500].split(b"\x00", 1)[0]
        if prefix:
            name = f"{_decode(prefix)}/{name}"
    size = _number(block[124:136], shown, offset, "size")
    if size < 0:
        raise _bad(shown, offset, "gives a negative size", name)
    return name, block[156:157], size


def _number(field: bytes, shown: str, offset: int, what: str) -> int:
    """A numeric header field: octal digits (NUL or space ended), or GNU's base-256 (first byte 0x80 or 0xff)."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        if field[0] == 0xFF:  # two's complement: negative
            value -= 1 << (8 * (len(field) - 1))
        return value
    text = field.split(b"\x00", 1)[0].strip()
    if not text:
        return 0
    if not _OCTAL.fullmatch(text):
        raise _bad(shown, offset, f"has a {what} field that is not an octal number")
    return int(text, 8)


def _pax_records(data: bytes, shown: str, offset: int) -> dict[str, bytes]:
    """The records ``"<length> <keyword>=<value>\\n"`` of a pax header, in one pass (no regular expression)."""
    records: dict[str, bytes] = {}
    position, end = 0, len(data)
    while position < end:
        if data[position] == 0 and not data[position:].strip(b"\x00"):
            break  # NUL padding after the last record
        space = data.find(b" ", position, position + _MAX_PAX_LENGTH_DIGITS + 1)
        digits = data[position:space] if space > position else b""
        if not digits.isdigit():
            raise _bad(shown, offset, f"has a malformed pax record at byte {position} of its data (no length)")
        stop = position + int(digits)
        if stop > end or stop <= space + 2 or data[stop - 1] != 0x0A:
            raise _bad(shown, offset, f"has a pax record at byte {position} of its data whose length is wrong")
        body = data[space + 1:stop - 1]
        equals = body.find(b"=")
        if equals <= 0:
            raise _bad(shown, offset, f"has a pax record without a keyword at byte {position} of its data")
        try:
            keyword = body[:equals].decode("utf-8")
        except UnicodeDecodeError:
            raise _bad(shown, offset, f"has a pax keyword that is not UTF-8 at byte {position} of its data") from None
        records[keyword] = body[equals + 1:]
        position = stop
    return records


def _pax_size(value: bytes, shown: str, offset: int) -> int:
    if not value.isdigit() or len(value) > _MAX_PAX_LENGTH_DIGITS:
        raise _bad(shown, offset, "has a pax size that is not a non-negative whole number")
    return int(value)


def _padding(size: int) -> int:
    return -size % _BLOCK


def _bad(shown: str, offset: int, problem: str, name: str | None = None) -> DataError:
    member = f"member '{_printable(name)}': " if name else ""
    return DataError(f"{shown}: cannot extract the archive ({member}the header at byte {offset} {problem})")


@contextmanager
def _decompressed(path: Path, shown: str) -> Iterator[IO[bytes]]:
    """The archive's tar stream: the file itself, or its gzip, bzip2 or xz content (found by magic number)."""
    with open(path, "rb") as raw:
        magic = raw.read(6)
        raw.seek(0)
        if magic.startswith(b"\x1f\x8b"):
            stream: IO[bytes] = gzip.GzipFile(fileobj=raw, mode="rb")
        elif magic.startswith(b"BZh"):
            if bz2 is None:
                raise DataError(f"{shown}: cannot extract the archive (bzip2 is not supported by this Python)")
            stream = bz2.BZ2File(raw)
        elif magic.startswith(b"\xfd7zXZ\x00"):
            if lzma is None:
                raise DataError(f"{shown}: cannot extract the archive (xz is not supported by this Python)")
            stream = lzma.LZMAFile(raw)
        else:
            yield raw
            return
        with stream:
            yield stream


class _Source:
    """The decompressed tar stream, read in bounded pieces, each counted against the budget."""

    def __init__(self, stream: IO[bytes], budget: _Budget, shown: str) -> None:
        self.stream = stream
        self.budget = budget
        self.shown = shown
        self.position = 0

    def read(self, size: int) -> bytes:
        data = self.stream.read(size)
        self.position += len(data)
        self.budget.expand(len(data))
        return data

    def chunks(self, size: int, what: str | None) -> Iterator[bytes]:
        """Exactly ``size`` bytes, in pieces of at most 1 MiB; the stream ending early is an error."""
        left = size
        while left:
            data = self.read(min(left, _COPY_CHUNK))
            if not data:
                raise DataError(f"{self.shown}: cannot extract the archive (it ends in the middle of {what})")
            left -= len(data)
            yield data

    def read_exact(self, size: int, what: str) -> bytes:
        return b"".join(self.chunks(size, what))

    def skip(self, size: int, what: str | None) -> None:
        for _ in self.chunks(size, what):
            pass


# --- zip --------------------------------------------------------------------------------------------


def _extract_zip(path: Path, writer: _MemberWriter) -> None:
    budget = writer.budget
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        budget.tick()
        if len(members) > budget.limits.max_members:
            budget.too_many_members()
        _check_zip_layout(archive, members, writer.shown, path.stat().st_size)
        budget.check_declared(sum(info.file_size for info in members if not info.is_dir()))
        for info in members:
            budget.count_member()
            writer.current = _printable(info.filename)
            parts = writer.member_parts(info.filename)
            if parts is None:
                writer.current = None
                continue
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UnsafeArchiveError(
                    f"{writer.shown}: member '{writer.current}' is a symbolic link; links are refused"
                )
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeArchiveError(
                    f"{writer.shown}: member '{writer.current}' is a device, fifo or other special file; refused"
                )
            if info.is_dir():
                writer.make_dir(parts)
            else:
                writer.write_file(parts, info.file_size, _zip_chunks(archive, info, budget))
            writer.current = None


def _check_zip_layout(archive: zipfile.ZipFile, members: list[zipfile.ZipInfo], shown: str, file_size: int) -> None:
    """Refuse members whose data overlap (a zip bomb's trick) or lie beyond the central directory."""
    end = getattr(archive, "start_dir", file_size)
    ordered = sorted(members, key=lambda info: info.header_offset)
    for info in ordered:
        if info.header_offset < 0 or info.header_offset + _ZIP_LOCAL_HEADER + info.compress_size > end:
            raise UnsafeArchiveError(
                f"{shown}: member '{_printable(info.filename)}' claims more bytes than the file holds; refused")
    for first, second in pairwise(ordered):
        if first.header_offset + _ZIP_LOCAL_HEADER + first.compress_size > second.header_offset:
            raise UnsafeArchiveError(
                f"{shown}: members '{_printable(first.filename)}' and '{_printable(second.filename)}' overlap "
                "in the file, as in a zip bomb; refused")


def _zip_chunks(archive: zipfile.ZipFile, info: zipfile.ZipInfo, budget: _Budget) -> Iterator[bytes]:
    with archive.open(info) as source:
        while chunk := source.read(_COPY_CHUNK):
            budget.expand(len(chunk))
            yield chunk


# --- writing ----------------------------------------------------------------------------------------


class _MemberWriter:
    """Writes checked members under ``dest``, and remembers what it made so that a refusal can undo it."""

    def __init__(self, shown: str, dest: Path, budget: _Budget) -> None:
        self.shown = shown
        self.dest = dest
        self.budget = budget
        self.created: list[Path] = []
        self.current: str | None = None  # the member being extracted, for error messages

    def member_parts(self, name: str) -> tuple[str, ...] | None:
        """The member's path components, or None for a member to skip silently."""
        shown_name = _printable(name)
        if "\x00" in name:
            raise UnsafeArchiveError(f"{self.shown}: member '{shown_name}' has a NUL character in its name; refused")
        normalized = name.replace("\\", "/")
        if normalized.startswith("/") or _DRIVE.match(normalized):
            raise UnsafeArchiveError(f"{self.shown}: member '{shown_name}' has an absolute path; refused")
        parts = tuple(part for part in normalized.split("/") if part not in ("", "."))
        if ".." in parts:
            raise UnsafeArchiveError(
                f"{self.shown}: member '{shown_name}' has a '..' component and would escape; refused"
            )
        if not parts or "__MACOSX" in parts or parts[-1].startswith("._"):
            return None
        return parts

    def make_dir(self, parts: tuple[str, ...]) -> None:
        self._make_dirs(self.dest.joinpath(*parts))

    def _make_dirs(self, folder: Path) -> None:
        missing: list[Path] = []
        while folder != self.dest and not folder.exists():
            missing.append(folder)
            folder = folder.parent
        for level in reversed(missing):
            level.mkdir()
            self.created.append(level)

    def write_file(self, parts: tuple[str, ...], declared_size: int, chunks: Iterable[bytes]) -> None:
        """Write one member of ``declared_size`` bytes; the caps are checked before its first byte is written."""
        try:
            self.budget.claim(declared_size)
            target = self.dest.joinpath(*parts)
            self._make_dirs(target.parent)
            if not target.exists():
                self.created.append(target)
            written = 0
            # No member is ever written as a link, so plain open() cannot be redirected outside dest.
            with open(target, "wb") as out:
                for chunk in chunks:
                    written += len(chunk)
                    if written > declared_size:  # the declared size refused a bomb; this catches a liar
                        raise ArchiveTooLargeError(
                            f"{self.shown}: member '{_printable('/'.join(parts))}' holds more than the "
                            f"{declared_size} bytes it declares; refused")
                    out.write(chunk)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()

    def undo(self) -> None:
        """Remove every file and folder this extraction made (what ``dest`` held before stays)."""
        for path in reversed(self.created):
            try:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
            except OSError:
                pass
        self.created.clear()


def _decode(raw: bytes) -> str:
    """A member name: UTF-8, with undecodable bytes kept (as tarfile does) so that names round-trip."""
    return raw.decode("utf-8", "surrogateescape")


def _printable(text: str) -> str:
    """``text`` safe for a one-line message (and JSON, and SQLite): undecodable bytes and control characters escaped."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else ascii(char)[1:-1] for char in text)


def _data_root(dest: Path) -> Path:
    visible = [entry for entry in dest.iterdir() if not entry.name.startswith(".")]
    if len(visible) == 1 and visible[0].is_dir():
        return visible[0]
    return dest
