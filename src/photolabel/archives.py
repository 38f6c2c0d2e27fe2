"""Safe extraction of ``.tar.gz`` / ``.tgz`` / ``.tar`` / ``.zip`` data sets.

Members are written one by one (never ``extractall``) and only as plain folders and
files: absolute paths, ``..`` components, links and special files are refused, and the
number of members and the bytes written are capped. Backslashes in member names are
read as folder separators (zip tools on Windows write them), so ``..\\x`` is refused too.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO

from photolabel.errors import DataError, PhotolabelError, SourceNotFoundError, UnsafeArchiveError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")

_COPY_CHUNK = 1 << 20
_DRIVE = re.compile(r"^[A-Za-z]:")

# What a corrupt, truncated, encrypted or unsupported archive (or a full disk) raises.
_READ_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zlib.error,
    EOFError,
    OSError,
    RuntimeError,
    NotImplementedError,
    ValueError,
)


def is_archive(path: str | os.PathLike[str]) -> bool:
    """True when the name ends in one of :data:`ARCHIVE_SUFFIXES` (any case)."""
    return os.fspath(path).lower().endswith(ARCHIVE_SUFFIXES)


def extract_archive(
    path: Path, dest: Path, *, max_total_bytes: int = 4 * 1024**3, max_members: int = 200_000
) -> Path:
    """Extract the archive at ``path`` into ``dest`` and return the data root.

    The data root is the single folder inside ``dest`` when the archive has one wrapping
    folder (hidden entries aside), else ``dest`` itself. ``__MACOSX/`` and AppleDouble
    ``._*`` members are skipped. On any error, what was extracted is removed again.

    Raises :class:`UnsafeArchiveError` for a member with an absolute path, a ``..``
    component, a link or a special file; :class:`DataError` for an archive over
    ``max_members`` members or ``max_total_bytes`` bytes, or one that cannot be read;
    :class:`SourceNotFoundError` when ``path`` does not exist.
    """
    path, dest = Path(path), Path(dest)
    if not path.is_file():
        raise SourceNotFoundError(f"{path}: no such archive")
    if not is_archive(path):
        raise DataError(f"{path}: not an archive; expected a name ending in {', '.join(ARCHIVE_SUFFIXES)}")
    dest.mkdir(parents=True, exist_ok=True)
    existing = {entry.name for entry in dest.iterdir()}
    writer = _MemberWriter(path, dest, max_total_bytes, max_members)
    try:
        if path.name.lower().endswith(".zip"):
            _extract_zip(path, writer)
        else:
            _extract_tar(path, writer)
    except BaseException as exc:
        _remove_new_entries(dest, existing)
        if isinstance(exc, PhotolabelError) or not isinstance(exc, _READ_ERRORS):
            raise
        cause = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(f"{path}: cannot extract the archive ({cause})") from exc
    return _data_root(dest)


def _extract_tar(path: Path, writer: _MemberWriter) -> None:
    with tarfile.open(path, "r:*") as archive:
        while (member := archive.next()) is not None:
            writer.count_member()
            parts = writer.member_parts(member.name)
            if parts is None:
                continue
            if member.issym() or member.islnk():
                kind = "symbolic" if member.issym() else "hard"
                raise UnsafeArchiveError(
                    f"{path}: member '{member.name}' is a {kind} link; links are refused"
                )
            if member.isdir():
                writer.make_dir(parts)
            elif member.isreg():
                writer.write_file(parts, member.size, lambda m=member: archive.extractfile(m))
            else:
                raise UnsafeArchiveError(
                    f"{path}: member '{member.name}' is a device, fifo or other special file; refused"
                )


def _extract_zip(path: Path, writer: _MemberWriter) -> None:
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
        if len(members) > writer.max_members:
            writer.too_many_members()
        for info in members:
            writer.count_member()
            parts = writer.member_parts(info.filename)
            if parts is None:
                continue
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UnsafeArchiveError(
                    f"{path}: member '{info.filename}' is a symbolic link; links are refused"
                )
            if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise UnsafeArchiveError(
                    f"{path}: member '{info.filename}' is a device, fifo or other special file; refused"
                )
            if info.is_dir():
                writer.make_dir(parts)
            else:
                writer.write_file(parts, info.file_size, lambda i=info: archive.open(i))


class _MemberWriter:
    """Writes checked members under ``dest`` and keeps the caps."""

    def __init__(self, archive: Path, dest: Path, max_total_bytes: int, max_members: int) -> None:
        self.archive = archive
        self.dest = dest
        self.max_total_bytes = max_total_bytes
        self.max_members = max_members
        self.members = 0
        self.written = 0

    def too_many_members(self) -> None:
        raise DataError(f"{self.archive}: more than {self.max_members} members; refused")

    def count_member(self) -> None:
        self.members += 1
        if self.members > self.max_members:
            self.too_many_members()

    def too_big(self) -> None:
        raise DataError(f"{self.archive}: more than {self.max_total_bytes} bytes once extracted; refused")

    def member_parts(self, name: str) -> tuple[str, ...] | None:
        """The member's path components, or None for a member to skip silently."""
        normalized = name.replace("\\", "/")
        if normalized.startswith("/") or _DRIVE.match(normalized):
            raise UnsafeArchiveError(f"{self.archive}: member '{name}' has an absolute path; refused")
        parts = tuple(part for part in normalized.split("/") if part not in ("", "."))
        if ".." in parts:
            raise UnsafeArchiveError(
                f"{self.archive}: member '{name}' has a '..' component and would escape; refused"
            )
        if not parts or "__MACOSX" in parts or parts[-1].startswith("._"):
            return None
        return parts

    def make_dir(self, parts: tuple[str, ...]) -> None:
        self.dest.joinpath(*parts).mkdir(parents=True, exist_ok=True)

    def write_file(
        self, parts: tuple[str, ...], declared_size: int, open_member: Callable[[], IO[bytes] | None]
    ) -> None:
        # The declared size refuses a bomb before writing; counting the bytes catches a liar.
        if self.written + declared_size > self.max_total_bytes:
            self.too_big()
        target = self.dest.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        source = open_member()
        if source is None:
            raise UnsafeArchiveError(f"{self.archive}: member '{'/'.join(parts)}' has no data; refused")
        # No member is ever written as a link, so plain open() cannot be redirected outside dest.
        with source, open(target, "wb") as out:
            while chunk := source.read(_COPY_CHUNK):
                self.written += len(chunk)
                if self.written > self.max_total_bytes:
                    self.too_big()
                out.write(chunk)


def _remove_new_entries(dest: Path, existing: set[str]) -> None:
    for entry in dest.iterdir():
        if entry.name in existing:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _data_root(dest: Path) -> Path:
    visible = [entry for entry in dest.iterdir() if not entry.name.startswith(".")]
    if len(visible) == 1 and visible[0].is_dir():
        return visible[0]
    return dest
