"""Local files: atomic writes (a reader sees the old file or the new one, never half of one), file:// URLs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

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
