"""Micro-batching for the service: images from concurrent requests share one backbone run.

A :class:`MicroBatcher` per loaded model collects the images that requests hand it,
waits at most ``max_wait_ms`` after the first one for others (up to ``max_batch``),
and runs each group with one ``Model.predict_batch`` call in its own worker thread, so the
event loop never blocks on ONNX Runtime. A :class:`PredictorCache` keeps a few loaded
models, each with its batcher, and forgets the least recently used.

One image never fails another, and a slow one holds up only itself:

* Images are decoded before they join a batch, in a :class:`DecodePool` of child processes,
  concurrently, each decode under its own deadline; an image past it is answered
  ``deadline_exceeded`` and the process decoding it is killed and replaced.
* Each batch runs under a deadline; past it, its images are answered ``deadline_exceeded`` and the
  batcher's worker thread is replaced (the late one is abandoned), so later batches start at once.
* A batch whose inference raises is run again one image at a time, so each image gets its own
  outcome.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import multiprocessing
import queue
import signal
import threading
import time
import warnings
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import numpy as np

from photolabel.dataset import BadInput
from photolabel.embedding import DEFAULT_BATCH_SIZE, ImageInput
from photolabel.errors import ImageError, ImageTooLargeError, PhotolabelError
from photolabel.hashing import sha256_bytes
from photolabel.images import decode_image
from photolabel.model import Model, Prediction

logger = logging.getLogger(__name__)


class QueueFullError(PhotolabelError):
    """Too many images are waiting for this model; the client should retry shortly."""

    code = "queue_full"


class DeadlineExceededError(PhotolabelError):
    """An image took longer than the service allows to decode, or its batch to run through the model."""

    code = "deadline_exceeded"


Decoder = Callable[[list[ImageInput]], Awaitable[list["ImageInput | BadInput"]]]


@dataclass
class _Pending:
    item: ImageInput
    future: asyncio.Future[Prediction | BadInput]
    arrived: float
    timeout: float | None = None


class _LateBatch(Exception):
    """A batch that passed its deadline (internal to :class:`MicroBatcher`)."""


class MicroBatcher:
    """Groups single-image requests into batches for one model.

    ``max_batch`` caps a group; ``max_wait_ms`` is how long the first image of a group
    waits for others; ``max_queue`` caps the images accepted and not yet answered, past
    which :meth:`predict` raises :class:`QueueFullError` at once. ``batch_size`` is the
    backbone batch inside ``predict_batch``. Batches run one at a time on ``executor``
    (default: a thread of the batcher's own); a batch past its deadline leaves that thread
    behind and the next batch runs on a new one.
    """

    def __init__(self, model: Model, *, max_batch: int, max_wait_ms: float, max_queue: int,
                 batch_size: int = DEFAULT_BATCH_SIZE, executor: Executor | None = None) -> None:
        if max_batch < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and max_queue must be >= 1 and max_wait_ms >= 0")
        self.model = model
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.max_queue = max_queue
        self.batch_size = batch_size
        self._own_executor = executor is None
        self._executor: Executor = executor or _inference_thread()
        self._queue: deque[_Pending] = deque()
        self._unanswered = 0
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        self._draft_size: tuple[tuple[int, int] | None] | None = None
        self._closed = False
        self._retiring = False
        #: batches run so far and the images in them (for tests and metrics)
        self.batches_run = 0
        self.images_run = 0
        #: worker threads left behind by a batch past its deadline
        self.workers_replaced = 0

    @property
    def pending(self) -> int:
        """Images accepted and not answered yet (being decoded, queued or in the running batch)."""
        return self._unanswered

    def check_room(self, count: int) -> None:
        """Raise :class:`QueueFullError` unless ``count`` more images fit in the queue now."""
        if self._unanswered + count > self.max_queue:
            raise QueueFullError(
                f"{self._unanswered} images are waiting for model {self.model.model_id[:12]}, "
                f"the most this server queues is {self.max_queue}; retry shortly"
            )

    async def draft_size(self) -> tuple[int, int] | None:
        """The size JPEGs may be drafted at for this model's backbone (see :func:`~photolabel.images.decode_image`).

        Loads the backbone on the batcher's thread the first time; None while it cannot be loaded (the
        batch then says why)."""
        if self._draft_size is None:
            def read() -> tuple[tuple[int, int] | None] | None:
                try:
                    return (getattr(self.model.backbone, "draft_size", None),)
                except Exception:
                    return None
            self._draft_size = await asyncio.get_running_loop().run_in_executor(self._executor, read)
        return self._draft_size[0] if self._draft_size is not None else None

    async def predict(self, item: ImageInput, *, timeout_s: float | None = None) -> Prediction | BadInput:
        """The prediction for one image, or the :class:`BadInput` that says why there is none.

        Raises :class:`QueueFullError` when ``max_queue`` images are already pending.
        """
        (result,) = await self.predict_many([item], timeout_s=timeout_s)
        return result

    async def predict_many(self, items: Sequence[ImageInput], *, timeout_s: float | None = None,
                           decode: Decoder | None = None) -> list[Prediction | BadInput]:
        """One result per item, in order; all are admitted to the queue or none is.

        ``decode`` (e.g. :meth:`DecodePool.decode_many`) turns the items into decoded ones or
        :class:`BadInput`\\ s first; they count as pending meanwhile. ``timeout_s`` is the deadline
        of the batch each item runs in (the shortest of its items'), past which the item is answered
        with a ``deadline_exceeded`` :class:`BadInput`.
        """
        self.check_room(len(items))
        self._unanswered += len(items)
        try:
            ready: Sequence[ImageInput | BadInput] = await decode(list(items)) if decode is not None else items
        except BaseException:
            self._unanswered -= len(items)
            raise
        live = [item for item in ready if isinstance(item, ImageInput)]
        self._unanswered -= len(ready) - len(live)
        if not live and self._retiring and self._unanswered == 0 and not self._queue:
            self.close()
        if self._closed:  # closed while the images decoded (the service is stopping)
            self._unanswered -= len(live)
            raise QueueFullError(f"model {self.model.model_id[:12]} was unloaded while its images decoded; "
                                 "retry shortly")
        loop = asyncio.get_running_loop()
        pending = [_Pending(item, loop.create_future(), time.monotonic(), timeout_s) for item in live]
        self._queue.extend(pending)
        if pending:
            self._wake()
        answers = iter(await asyncio.gather(*(p.future for p in pending)))
        return [item if isinstance(item, BadInput) else next(answers) for item in ready]

    def close(self) -> None:
        """Stop the worker; images still queued are answered with ``CancelledError``."""
        self._closed = True
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        while self._queue:
            self._queue.popleft().future.cancel()
        self._stop_thread()

    def retire(self) -> None:
        """Close now if nothing is pending, else once the pending images are answered (an evicted model)."""
        self._retiring = True
        if self._unanswered == 0:
            self.close()

    def _stop_thread(self) -> None:
        if self._own_executor:
            self._executor.shutdown(wait=False, cancel_futures=True)

    # -- the worker -----------------------------------------------------------------------------

    def _wake(self) -> None:
        if self._arrived is None:
            self._arrived = asyncio.Event()
        self._arrived.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._run(), name="photolabel-batcher")

    async def _run(self) -> None:
        """Run groups while images are queued, then end (the next image starts a new worker)."""
        assert self._arrived is not None
        while self._queue:
            deadline = self._queue[0].arrived + self.max_wait
            while len(self._queue) < self.max_batch and (left := deadline - time.monotonic()) > 0:
                self._arrived.clear()
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._arrived.wait(), timeout=left)
            group: list[_Pending] = []
            while self._queue and len(group) < self.max_batch:
                entry = self._queue.popleft()
                if entry.future.done():  # the request went away
                    self._unanswered -= 1
                    continue
                group.append(entry)
            if group:
                await self._run_group(group)
        if self._retiring and self._unanswered == 0:
            self._closed = True
            self._stop_thread()

    async def _run_group(self, group: list[_Pending]) -> None:
        timeouts = [entry.timeout for entry in group if entry.timeout is not None]
        timeout = min(timeouts) if timeouts else None
        outcomes: list[Prediction | BadInput | BaseException]
        try:
            try:
                outcomes = list(await self._infer([entry.item for entry in group], timeout))
            except _LateBatch:
                outcomes = [self._late(entry.item, timeout) for entry in group]
            except Exception as exc:
                if len(group) == 1:
                    logger.error("predict_batch failed for model %s", self.model.model_id, exc_info=exc)
                    outcomes = [exc]
                else:  # one image may have broken the batch: each gets its own outcome
                    logger.warning("a batch of %d images failed for model %s (%s: %s); running them one by one",
                                   len(group), self.model.model_id, type(exc).__name__, exc)
                    outcomes = [await self._infer_alone(entry.item, timeout) for entry in group]
            else:
                self.batches_run += 1
                self.images_run += len(group)
        except asyncio.CancelledError:
            for entry in group:
                entry.future.cancel()
            raise
        finally:
            self._unanswered -= len(group)
        for entry, outcome in zip(group, outcomes):
            if entry.future.done():
                continue
            if isinstance(outcome, BaseException):
                entry.future.set_exception(outcome)
            else:
                entry.future.set_result(outcome)

    async def _infer_alone(self, item: ImageInput, timeout: float | None) -> Prediction | BadInput | BaseException:
        try:
            (result,) = await self._infer([item], timeout)
        except _LateBatch:
            return self._late(item, timeout)
        except Exception as exc:  # a broken model, not a bad image: the request gets it
            logger.error("predict_batch failed for model %s on %s", self.model.model_id, item.source, exc_info=exc)
            return exc
        self.batches_run += 1
        self.images_run += 1
        return result

    async def _infer(self, items: list[ImageInput], timeout: float | None) -> list[Prediction | BadInput]:
        run = functools.partial(self.model.predict_batch, items, batch_size=self.batch_size)
        future = asyncio.get_running_loop().run_in_executor(self._executor, run)
        done, _ = await asyncio.wait({future}, timeout=timeout)
        if not done:  # the thread cannot be stopped: it is left to finish alone, and replaced
            future.cancel()
            self._replace_worker(timeout)
            raise _LateBatch
        return future.result()

    def _replace_worker(self, timeout: float | None) -> None:
        old, owned = self._executor, self._own_executor
        self._executor, self._own_executor = _inference_thread(), True
        self.workers_replaced += 1
        if owned:
            old.shutdown(wait=False, cancel_futures=True)
        logger.warning("a batch for model %s ran past its deadline of %g s; its worker thread was replaced",
                       self.model.model_id, timeout or 0)

    @staticmethod
    def _late(item: ImageInput, timeout: float | None) -> BadInput:
        return BadInput(item.source, f"{item.source}: labelling this image took longer than the server's limit of "
                                     f"{timeout or 0:g} s; try again later", DeadlineExceededError.code)


def _inference_thread() -> Executor:
    return _DaemonThread("photolabel-infer")


class _DaemonThread(Executor):
    """One daemon thread that runs the calls submitted to it in order. Unlike a ThreadPoolExecutor's
    threads it is not joined at exit, so a batch left behind past its deadline never keeps the
    service from stopping."""

    def __init__(self, name: str) -> None:
        self._calls: queue.SimpleQueue[tuple[Future[Any], Callable[..., Any], tuple[Any, ...],
                                             dict[str, Any]] | None] = queue.SimpleQueue()
        self._shut = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            if self._shut:
                raise RuntimeError("cannot schedule new calls after shutdown")
            future: Future[Any] = Future()
            self._calls.put((future, fn, args, kwargs))
            return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            if not self._shut:
                self._shut = True
                self._calls.put(None)
        if cancel_futures:
            with contextlib.suppress(queue.Empty):
                while True:
                    call = self._calls.get_nowait()
                    if call is None:
                        self._calls.put(None)
                        break
                    call[0].cancel()
        if wait:
            self._thread.join()

    def _loop(self) -> None:
        while (call := self._calls.get()) is not None:
            future, fn, args, kwargs = call
            if not future.set_running_or_notify_cancel():
                continue
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)
            else:
                future.set_result(result)


# --- decoding in child processes ------------------------------------------------------------------


class DecoderUnavailableError(PhotolabelError):
    """A decoding process could not be started (the server's fault, not the image's)."""

    code = "decoder_unavailable"


@dataclass(eq=False)
class _DecodeChild:
    process: Any  # multiprocessing's Process of the spawn context
    connection: Connection


class DecodePool:
    """Decodes image bytes in ``workers`` child processes, concurrently, each image under a deadline.

    Each child decodes one image at a time with ``decode`` (:func:`~photolabel.images.decode_image`
    by default; a module-level function, as it is handed to the child by name). An image past its
    deadline is answered ``deadline_exceeded`` and its child is killed and replaced; one that crashes
    its child is answered ``bad_image``; either way the other images are not affected. Children are
    spawned (never forked from the service's threads), all at once by :meth:`start` or as needed,
    each within ``start_timeout_s``.
    """

    def __init__(self, workers: int, *, decode: Callable[..., np.ndarray] = decode_image,
                 start_timeout_s: float = 120.0) -> None:
        if workers < 1:
            raise ValueError(f"DecodePool needs at least one worker, got {workers}")
        self.workers = workers
        self._decode = decode
        self._start_timeout = start_timeout_s
        self._threads = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="photolabel-decode")
        self._idle: queue.SimpleQueue[_DecodeChild] = queue.SimpleQueue()
        self._children: set[_DecodeChild] = set()  # started or starting, idle or busy
        self._starting = 0
        self._lock = threading.Lock()
        self._closed = False
        #: children killed at a deadline or lost (for tests and metrics)
        self.replaced = 0

    def start(self) -> None:
        """Start every child now, in the background (the first images then need not wait for one)."""
        for _ in range(self.workers):
            self._threads.submit(self._warm)

    async def decode_many(self, items: list[ImageInput], *, timeout_s: float | None, max_pixels: int,
                          max_frames: int, draft_size: tuple[int, int] | None = None) -> list[ImageInput | BadInput]:
        """Each item decoded (its ``pixels`` set, ``sha256`` that of its bytes), or the :class:`BadInput`
        saying why not; items without bytes (paths, arrays) are returned as they are."""
        options = {"max_pixels": max_pixels, "max_frames": max_frames, "draft_size": draft_size}
        loop = asyncio.get_running_loop()
        return list(await asyncio.gather(*(
            loop.run_in_executor(self._threads, self._decode_one, item, timeout_s, options)
            if item.data is not None else _returning(item)
            for item in items
        )))

    def close(self) -> None:
        """Kill every child; decodes in progress are answered as lost."""
        self._closed = True
        with self._lock:
            children, self._children = list(self._children), set()
        for child in children:
            _stop(child)
        self._threads.shutdown(wait=False, cancel_futures=True)

    # -- in the pool's threads (as many as children): each holds at most one child at a time -------------

    def _decode_one(self, item: ImageInput, timeout: float | None, options: dict[str, Any]) -> ImageInput | BadInput:
        assert item.data is not None
        digest = sha256_bytes(item.data)
        child = self._acquire()
        try:
            child.connection.send((item.data, item.source, options))
        except (OSError, ValueError):  # the child died while it waited: one more try on a fresh one
            self._discard(child)
            child = self._acquire()
            child.connection.send((item.data, item.source, options))
        if not child.connection.poll(timeout):
            self._discard(child)
            logger.warning("decoding %s ran past its deadline of %g s; its process was replaced", item.source,
                           timeout or 0)
            return BadInput(item.source, f"{item.source}: decoding this image took longer than the server's limit "
                                         f"of {timeout or 0:g} s; send a smaller or simpler image",
                            DeadlineExceededError.code)
        try:
            status, payload = child.connection.recv()
        except (EOFError, OSError):  # the decoder crashed on this image (or was killed for its memory)
            self._discard(child)
            logger.warning("the decoding process stopped on %s; it was replaced", item.source)
            return BadInput(item.source, f"{item.source}: cannot decode image: the decoder stopped on it",
                            ImageError.code)
        self._idle.put(child)
        if status == "ok":
            return ImageInput(item.source, pixels=payload, sha256=digest)
        code, message = payload
        return BadInput(item.source, message, code)

    def _warm(self) -> None:
        with contextlib.suppress(Exception):
            child = self._spawn_if_room()
            if child is not None:
                self._idle.put(child)

    def _acquire(self) -> _DecodeChild:
        """An idle child, a new one while fewer than ``workers`` exist, or the next one another thread frees."""
        deadline = time.monotonic() + self._start_timeout
        while True:
            if self._closed:
                raise DecoderUnavailableError("the service is stopping; retry shortly")
            child: _DecodeChild | None
            try:
                child = self._idle.get_nowait()
            except queue.Empty:
                child = self._spawn_if_room()
            if child is None:  # all exist: one is starting or busy elsewhere and comes back soon
                if time.monotonic() > deadline:
                    raise DecoderUnavailableError("no image decoding process became free; retry shortly")
                with contextlib.suppress(queue.Empty):
                    child = self._idle.get(timeout=0.5)
            if child is None:
                continue
            if child.process.is_alive():
                return child
            self._discard(child)  # it died while idle (killed from outside): replaced by the next loop

    def _spawn_if_room(self) -> _DecodeChild | None:
        with self._lock:
            if len(self._children) + self._starting >= self.workers:
                return None
            self._starting += 1
        try:
            child = self._spawn()
        finally:
            with self._lock:
                self._starting -= 1
        with self._lock:
            self._children.add(child)
        if self._closed:
            self._discard(child)
            raise DecoderUnavailableError("the service is stopping; retry shortly")
        return child

    def _spawn(self) -> _DecodeChild:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(target=_decode_child_main, args=(theirs, self._decode),
                                  name="photolabel-decode", daemon=True)
        process.start()
        theirs.close()
        child = _DecodeChild(process, ours)
        try:
            ready = ours.poll(self._start_timeout) and ours.recv() == "ready"
        except (EOFError, OSError):
            ready = False
        if not ready:
            _stop(child)
            logger.error("an image decoding process did not start (exit code %s)", process.exitcode)
            raise DecoderUnavailableError("cannot start an image decoding process; the server log has the details")
        return child

    def _discard(self, child: _DecodeChild) -> None:
        """Kill ``child`` and start its replacement in the background."""
        with self._lock:
            known = child in self._children
            self._children.discard(child)
        _stop(child)
        if known and not self._closed:
            self.replaced += 1
            with contextlib.suppress(RuntimeError):  # the pool closed meanwhile
                self._threads.submit(self._warm)


async def _returning(item: ImageInput) -> ImageInput:
    return item


def _stop(child: _DecodeChild) -> None:
    with contextlib.suppress(Exception):
        child.process.kill()
        child.process.join(5)
    with contextlib.suppress(Exception):
        child.connection.close()


def _decode_child_main(connection: Connection, decode: Callable[..., np.ndarray]) -> None:
    """A decoding process: answers ``(data, source, options)`` with ``("ok", rgb)`` or ``("error", (code,
    message))`` until its connection closes. It ignores Ctrl-C (the service stops it) and warnings."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    warnings.simplefilter("ignore")
    connection.send("ready")
    while True:
        try:
            data, source, options = connection.recv()
        except (EOFError, OSError):
            return
        answer: tuple[str, Any]
        try:
            answer = ("ok", decode(data, source=source, **options))
        except PhotolabelError as exc:
            answer = ("error", (exc.code, str(exc)))
        except MemoryError:
            answer = ("error", (ImageTooLargeError.code, f"{source}: not enough memory to decode this image"))
        except Exception as exc:
            detail = str(exc).strip() or type(exc).__name__
            answer = ("error", (ImageError.code, f"{source}: cannot decode image ({detail})"))
        try:
            connection.send(answer)
        except (OSError, ValueError):
            return


ModelLoader = Callable[[str, str], Model]


class PredictorCache:
    """Loaded models, each with its :class:`MicroBatcher`; at most ``size``, least recently used go first.

    ``loader(model_id, path)`` loads a model (it runs in a worker thread); the other
    keyword arguments configure each batcher. Each batcher runs its batches on a thread of its
    own, so slow work elsewhere in the process (URL downloads, another model) never holds
    predictions up. The cache also holds the service's :class:`DecodePool` (:meth:`decode_pool`).
    """

    def __init__(self, size: int, *, loader: ModelLoader | None = None, max_batch: int = 32,
                 max_wait_ms: float = 5.0, max_queue: int = 256, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if size < 1:
            raise ValueError(f"PredictorCache size must be >= 1, got {size}")
        self.size = size
        self._loader = loader or (lambda _model_id, path: Model.load(path))
        self._options = {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_queue": max_queue,
                         "batch_size": batch_size}
        self._entries: OrderedDict[str, MicroBatcher] = OrderedDict()
        self._loading: dict[str, asyncio.Future[MicroBatcher]] = {}
        #: the pool that decodes the images of every model (made by :meth:`decode_pool`, or set)
        self.decoder: DecodePool | None = None

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, model_id: str, path: str) -> MicroBatcher:
        """The batcher of ``model_id``, loading the model from ``path`` first if needed.

        Concurrent calls for a model not loaded yet share one load. Errors of the
        loader (e.g. :class:`~photolabel.errors.ModelError`) propagate.
        """
        batcher = self._entries.get(model_id)
        if batcher is not None:
            self._entries.move_to_end(model_id)
            return batcher
        loading = self._loading.get(model_id)
        if loading is not None:
            return await asyncio.shield(loading)
        future: asyncio.Future[MicroBatcher] = asyncio.get_running_loop().create_future()
        self._loading[model_id] = future
        try:
            model = await asyncio.to_thread(self._loader, model_id, path)
            batcher = MicroBatcher(model, **self._options)  # type: ignore[arg-type]
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # marks it retrieved when nobody else waits on it
            raise
        finally:
            self._loading.pop(model_id, None)
        future.set_result(batcher)
        self._entries[model_id] = batcher
        while len(self._entries) > self.size:
            _, oldest = self._entries.popitem(last=False)
            self._retire(oldest)
        return batcher

    def loaded(self, model_id: str) -> MicroBatcher | None:
        """The batcher of ``model_id`` if it is loaded now (no load, no change of order)."""
        return self._entries.get(model_id)

    def evict(self, model_id: str) -> bool:
        """Forget ``model_id``; returns whether it was loaded."""
        batcher = self._entries.pop(model_id, None)
        if batcher is None:
            return False
        self._retire(batcher)
        return True

    def decode_pool(self, workers: int) -> DecodePool:
        """The pool that decodes images before they reach a batcher; made with ``workers`` processes
        the first time."""
        if self.decoder is None:
            self.decoder = DecodePool(workers)
            self.decoder.start()
        return self.decoder

    def close(self) -> None:
        """Forget every model, stop every batcher and the decoding processes (at shutdown)."""
        while self._entries:
            _, batcher = self._entries.popitem(last=False)
            batcher.close()
        if self.decoder is not None:
            self.decoder.close()

    @staticmethod
    def _retire(batcher: MicroBatcher) -> None:
        # Requests that already hold this batcher finish on it; it closes once they are answered.
        batcher.retire()
