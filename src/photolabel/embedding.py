"""Images -> embeddings: decode in threads, run the backbone in batches, use the cache."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from photolabel.backbones.base import Backbone
from photolabel.cache import EmbeddingCache
from photolabel.config import RUNTIME_DEFAULTS, Runtime
from photolabel.dataset import BadInput, ImageRecord
from photolabel.errors import ImageError
from photolabel.hashing import sha256_bytes
from photolabel.images import DEFAULT_MAX_PIXELS, decode_image
from photolabel.progress import progress_bar

DEFAULT_BATCH_SIZE = RUNTIME_DEFAULTS.batch_size  # the default is written in config.Runtime


class ImageView(Protocol):
    """A deterministic variant of an image (an augmented view, see :mod:`photolabel.augment`).

    ``key`` is its embedding-cache key (beside the images' own sha256); ``apply`` turns the
    decoded RGB image into the view's pixels.
    """

    @property
    def key(self) -> str: ...

    def apply(self, rgb: np.ndarray) -> np.ndarray: ...


@dataclass(frozen=True)
class ImageInput:
    """An image to embed: bytes in memory, a local file, or decoded RGB pixels, plus the name errors show.

    ``pixels`` is an RGB ``uint8`` array (H, W, 3) that skips decoding; its sha256 is ``sha256``
    when given (the hash of the bytes it was decoded from, as the service decodes apart), else it
    is taken over its shape and bytes (no file exists to hash).

    ``view``: embed this variant of the image instead: the bytes are decoded and checked against
    ``sha256`` as usual, then ``view.apply`` runs before the backbone's ``prepare``, and the
    vector is cached under ``view.key``.
    """

    source: str
    path: Path | None = None
    data: bytes | None = None
    sha256: str | None = None
    pixels: np.ndarray | None = field(default=None, compare=False, repr=False)
    view: ImageView | None = None

    @property
    def cache_key(self) -> str | None:
        """The embedding cache's key for this input: the view's key, else the image's sha256."""
        return self.view.key if self.view is not None else self.sha256

    def read(self) -> bytes:
        if self.data is not None:
            return self.data
        if self.path is None:
            raise ImageError(f"{self.source}: no image bytes here, and no valid cached embedding for {self.sha256}")
        try:
            return Path(self.path).read_bytes()
        except OSError as exc:
            raise ImageError(f"{self.source}: cannot read file ({exc.strerror or exc})") from None


@dataclass
class EmbeddingResult:
    """Vectors for the inputs that worked, and a reason for each that did not.

    ``vectors[k]`` belongs to ``inputs[indices[k]]``; ``sha256[i]`` is input i's hash
    (None when it could not be read).
    """

    vectors: np.ndarray
    indices: list[int]
    sha256: list[str | None]
    failures: list[tuple[int, BadInput]] = field(default_factory=list)
    computed: int = 0
    cached: int = 0


@dataclass
class _Prepared:
    index: int
    sha256: str | None
    array: np.ndarray | None
    error: BadInput | None


def embed_images(
    inputs: Sequence[ImageInput],
    backbone: Backbone,
    *,
    cache: EmbeddingCache | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 2,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    progress: bool = False,
    on_progress: Callable[[int, int], None] | None = None,
) -> EmbeddingResult:
    """Embed ``inputs`` with ``backbone``, one vector per decodable image.

    Images already in ``cache`` (looked up by their sha256) are not decoded at all.
    Undecodable images become ``failures``, whatever went wrong with them (only ``MemoryError``
    propagates); they never stop the rest.
    ``on_progress(done, total)`` is called after each batch (for job status pages).
    """
    count = len(inputs)
    vectors: list[np.ndarray | None] = [None] * count
    hashes: list[str | None] = [item.sha256 for item in inputs]
    failures: list[tuple[int, BadInput]] = []
    todo: list[int] = []
    cached = 0
    for index, item in enumerate(inputs):
        hit = cache.get(item.cache_key) if (cache is not None and item.cache_key) else None
        if hit is not None:
            vectors[index] = hit
            cached += 1
        else:
            todo.append(index)

    draft = getattr(backbone, "draft_size", None)

    def prepare(index: int) -> _Prepared:
        item = inputs[index]
        try:
            if item.pixels is not None:
                pixels = check_pixels(item.pixels, item.source)  # an ImageInput built by hand is not checked yet
                view = item.view.apply(pixels) if item.view is not None else pixels
                return _Prepared(index, item.sha256 or pixels_sha256(pixels), backbone.prepare(view), None)
            data = item.read()
            digest = sha256_bytes(data)
            if item.sha256 is not None and digest != item.sha256:
                raise ImageError(
                    f"{item.source}: file changed while in use (sha256 {item.sha256} listed, {digest} read)"
                )
            rgb = decode_image(data, source=item.source, max_pixels=max_pixels, draft_size=draft)
            if item.view is not None:
                rgb = item.view.apply(rgb)
            return _Prepared(index, digest, backbone.prepare(rgb), None)
        except ImageError as exc:
            return _Prepared(index, item.sha256, None, BadInput(item.source, str(exc), exc.code))
        except MemoryError:
            raise
        except Exception as exc:  # one input's failure is its own: never the batch's, never a traceback
            message = f"{item.source}: cannot prepare the image ({str(exc).strip() or type(exc).__name__})"
            return _Prepared(index, item.sha256, None, BadInput(item.source, message, ImageError.code))

    computed = 0
    pool = _decode_pool(max(1, workers))
    with progress_bar("embedding", len(todo), enabled=progress) as bar:
        for chunk in _prefetched_chunks(pool, prepare, todo, batch_size):
            good = [p for p in chunk if p.error is None]
            for prepared in chunk:
                hashes[prepared.index] = prepared.sha256
                if prepared.error is not None:
                    failures.append((prepared.index, prepared.error))
            if good:
                batch = np.stack([p.array for p in good])  # type: ignore[misc]
                out = backbone.embed_batch(batch)
                for prepared, vector in zip(good, out):
                    vectors[prepared.index] = vector
                    view = inputs[prepared.index].view
                    key = view.key if view is not None else prepared.sha256
                    if cache is not None and key:
                        cache.put(key, vector)
                computed += len(good)
            bar.advance(len(chunk))
            if on_progress is not None:
                on_progress(cached + computed + len(failures), count)

    indices = [i for i in range(count) if vectors[i] is not None]
    stacked = (
        np.stack([vectors[i] for i in indices]).astype(np.float32, copy=False)  # type: ignore[misc]
        if indices
        else np.zeros((0, backbone.embedding_dim), dtype=np.float32)
    )
    failures.sort(key=lambda pair: pair[0])
    return EmbeddingResult(stacked, indices, hashes, failures, computed, cached)


def pixels_sha256(pixels: np.ndarray) -> str:
    """The content hash of decoded pixels: sha256 over ``HxWx3:`` and the bytes."""
    height, width, channels = pixels.shape
    return sha256_bytes(f"{height}x{width}x{channels}:".encode() + np.ascontiguousarray(pixels).tobytes())


def check_pixels(array: object, source: str) -> np.ndarray:
    """``array`` as RGB ``uint8`` (H, W, 3), or an :class:`ImageError` saying what it is instead."""
    if not isinstance(array, np.ndarray):
        raise ImageError(f"{source}: expected a numpy array, got {type(array).__name__}")
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8 or 0 in array.shape:
        raise ImageError(f"{source}: expected an RGB uint8 array of shape (height, width, 3), "
                         f"got {array.dtype} of shape {array.shape}")
    return array


@functools.lru_cache(maxsize=8)
def _decode_pool(workers: int) -> ThreadPoolExecutor:
    """One decode pool per worker count for the process: the service embeds a batch per request,
    and starting threads for each would sit on its hot path."""
    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="photolabel-decode")


def _prefetched_chunks(
    pool: ThreadPoolExecutor, prepare, todo: list[int], batch_size: int
) -> Iterator[list[_Prepared]]:
    """Yield prepared chunks in order while the next chunk decodes in the pool."""
    chunks = [todo[i : i + batch_size] for i in range(0, len(todo), batch_size)]
    pending: list[Future[_Prepared]] | None = None
    for position, chunk in enumerate(chunks):
        if pending is None:
            pending = [pool.submit(prepare, i) for i in chunk]
        following = (
            [pool.submit(prepare, i) for i in chunks[position + 1]] if position + 1 < len(chunks) else None
        )
        yield [future.result() for future in pending]
        pending = following


def embed_records(
    records: Sequence[ImageRecord],
    backbone: Backbone,
    *,
    cache: EmbeddingCache | None,
    skip_bad: bool,
    runtime: Runtime = RUNTIME_DEFAULTS,
    on_progress: Callable[[int, int], None] | None = None,
) -> tuple[EmbeddingResult, list[BadInput]]:
    """Embed a data set's records; returns the result and the images skipped.

    Raises:
        ImageError: an image could not be decoded and ``skip_bad`` is off; the message
            names it and counts the others; its ``remedy`` is "skip_bad".
    """
    embedded = embed_images(
        [ImageInput(r.source, path=r.path, sha256=r.sha256) for r in records],
        backbone, cache=cache, batch_size=runtime.batch_size, workers=runtime.workers,
        max_pixels=runtime.max_pixels, progress=runtime.progress, on_progress=on_progress,
    )
    problems = [problem for _, problem in embedded.failures]
    if problems and not skip_bad:
        more = len(problems) - 1
        tail = f" (and {more} more bad image{'s' if more > 1 else ''})" if more else ""
        raise ImageError(f"{problems[0].reason}{tail}", remedy="skip_bad")
    return embedded, problems
