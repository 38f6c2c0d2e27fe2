"""Local files: atomic writes (a reader sees the old file or the new one, never half of one), atomic
swaps of folders, "storage is full" errors, file:// URLs."""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any

# mkstemp/mkdtemp create private (0600/0700) entries; results should get the usual modes.
_UMASK = os.umask(0)
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK
DIR_MODE = 0o777 & ~_UMASK


def atomic_write_bytes(target: str | Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to a temporary file beside ``target`` and rename it into place."""
    target = Path(target)
    handle, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            if fsync:
                out.flush()
                os.fsync(out.fileno())
        os.chmod(temp, FILE_MODE)
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def file_url_path(url: str) -> Path:
    """The local path a ``file://`` URL names (``file:///x``, ``file://localhost/x``).

    Raises:
        DataError: the URL names a host, so it is not a local file.
    """
    import urllib.parse
    import urllib.request

    from photolabel.errors import DataError

    parts = urllib.parse.urlsplit(url)
    if parts.netloc not in ("", "localhost"):
        raise DataError(f"{url}: a file:// URL must name a local file (no host)")
    return Path(urllib.request.url2pathname(parts.path))


# --- disk full ---------------------------------------------------------------------------------

#: what a write fails with when there is no room: the disk (ENOSPC), the quota (EDQUOT) or the
#: process's file size limit (EFBIG, RLIMIT_FSIZE); each means "storage is full" to the user
STORAGE_FULL_ERRNOS = frozenset(
    code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EFBIG) if code is not None
)


def is_storage_full(error: BaseException | None) -> bool:
    """Whether ``error``, or an error it was raised from, is an OSError saying the storage is full."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in STORAGE_FULL_ERRNOS:
            return True
        error = error.__cause__ or error.__context__
    return False


# --- renames -----------------------------------------------------------------------------------

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_renameat2: Any = None


def exchange_paths(first: str | Path, second: str | Path) -> bool:
    """Swap two existing paths (folders or files) in one atomic step: Linux's
    ``renameat2(RENAME_EXCHANGE)``. Returns False, having changed nothing, where that is not
    available (another system, an old kernel or C library, a file system without it).

    Raises:
        OSError: the swap was possible but failed (a missing path, no permission, ...).
    """
    global _renameat2
    if not sys.platform.startswith("linux"):
        return False
    if _renameat2 is None:
        try:
            function = ctypes.CDLL(None, use_errno=True).renameat2
        except (OSError, AttributeError):
            _renameat2 = False
            return False
        function.argtypes = (ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint)
        function.restype = ctypes.c_int
        _renameat2 = function
    if _renameat2 is False:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", errno.EOPNOTSUPP)):
        return False
    raise OSError(code, os.strerror(code), os.fspath(first), None, os.fspath(second))


def fsync_dir(folder: str | Path) -> None:
    """Make the entries of ``folder`` (a rename into it) durable; a no-op where folders cannot be opened."""
    try:
        handle = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def process_tag() -> str:
    """``<host>-<pid>`` of this process, for names of temporary entries that a later process may sweep once
    their owner is gone (the host, without dashes, keeps two machines sharing a folder apart)."""
    return f"{_host()}-{os.getpid()}"


def owner_gone(host: str, pid: int | str) -> bool:
    """Whether the process a :func:`process_tag` names has ended: it ran on this host, and runs no more.
    A tag of another host is never judged gone (its processes cannot be seen from here)."""
    return host == _host() and not pid_alive(int(pid))


def _host() -> str:
    return "".join(char for char in socket.gethostname() if char.isalnum() or char == ".")[:40] or "host"


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (one we may not signal counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True
