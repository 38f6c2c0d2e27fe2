"""The embedding cache: one small file per (backbone hash, image sha256).

Files are written atomically (temporary name, then rename), so two processes that
embed the same image at once both write complete files and the last rename wins
with identical content. Each file carries a checksum of its payload; a file that
fails the check on read is treated as a miss, removed, and recomputed.
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path

import numpy as np

from photolabel.fsutil import atomic_write_bytes

_MAGIC = b"PLEMB001"
_HEADER = struct.Struct("<8sI32s")  # magic, dim, sha256(payload)

CACHE_ENV = "PHOTOLABEL_CACHE_DIR"


def resolve_cache_dir(cache_dir: str | Path | None = None) -> Path:
    """``cache_dir`` if given, else ``$PHOTOLABEL_CACHE_DIR``, else ``~/.cache/photolabel``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    from_env = os.environ.get(CACHE_ENV)
    if from_env:
        return Path(from_env).expanduser()
    return Path.home() / ".cache" / "photolabel"


class EmbeddingCache:
    """Content-addressed store of float32 vectors for one backbone."""

    def __init__(self, root: str | Path, backbone_hash: str, dim: int) -> None:
        self.folder = Path(root) / "embeddings" / backbone_hash[:32]
        self.dim = dim
        self.hits = 0
        self.misses = 0
        self.corrupt = 0

    def _path(self, image_sha256: str) -> Path:
        return self.folder / image_sha256[:2] / f"{image_sha256}.emb"

    def contains(self, image_sha256: str) -> bool:
        """True when an entry of the right size exists (cheap: a stat; ``get`` checks the content)."""
        try:
            return self._path(image_sha256).stat().st_size == _HEADER.size + 4 * self.dim
        except FileNotFoundError:
            return False

    def get(self, image_sha256: str) -> np.ndarray | None:
        path = self._path(image_sha256)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            self.misses += 1
            return None
        vector = self._decode(data)
        if vector is None:
            self.corrupt += 1
            self.misses += 1
            path.unlink(missing_ok=True)
            return None
        self.hits += 1
        return vector

    def put(self, image_sha256: str, vector: np.ndarray) -> None:
        vector = np.ascontiguousarray(vector, dtype="<f4").reshape(-1)
        if vector.shape[0] != self.dim or not np.all(np.isfinite(vector)):
            raise ValueError(f"refusing to cache a vector of shape {vector.shape} for {image_sha256}")
        payload = vector.tobytes()
        header = _HEADER.pack(_MAGIC, self.dim, hashlib.sha256(payload).digest())
        path = self._path(image_sha256)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, header + payload, fsync=False)

    def _decode(self, data: bytes) -> np.ndarray | None:
        if len(data) != _HEADER.size + 4 * self.dim:
            return None
        magic, dim, digest = _HEADER.unpack_from(data)
        payload = data[_HEADER.size :]
        if magic != _MAGIC or dim != self.dim or hashlib.sha256(payload).digest() != digest:
            return None
        return np.frombuffer(payload, dtype="<f4").astype(np.float32)
