"""Micro-batching for the service: images from concurrent requests share one backbone run.

A :class:`MicroBatcher` per loaded model collects the images that requests hand it,
waits at most ``max_wait_ms`` after the first one for others (up to ``max_batch``),
and runs each group with one ``Model.predict_batch`` call in a worker thread, so the
event loop never blocks on decoding or ONNX Runtime. A :class:`PredictorCache` keeps
a few loaded models, each with its batcher, and forgets the least recently used.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass

from photolabel.dataset import BadInput
from photolabel.embedding import DEFAULT_BATCH_SIZE, ImageInput
from photolabel.errors import PhotolabelError
from photolabel.model import Model, Prediction

logger = logging.getLogger(__name__)


class QueueFullError(PhotolabelError):
    """Too many images are waiting for this model; the client should retry shortly."""

    code = "queue_full"


@dataclass
class _Pending:
    item: ImageInput
    future: asyncio.Future[Prediction | BadInput]
    arrived: float


class MicroBatcher:
    """Groups single-image requests into batches for one model.

    ``max_batch`` caps a group; ``max_wait_ms`` is how long the first image of a group
    waits for others; ``max_queue`` caps the images accepted and not yet answered, past
    which :meth:`predict` raises :class:`QueueFullError` at once. ``batch_size`` is the
    backbone batch inside ``predict_batch``. Batches run on ``executor`` (default: the
    event loop's default executor), one at a time.
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
        self._executor = executor
        self._queue: deque[_Pending] = deque()
        self._unanswered = 0
        self._arrived: asyncio.Event | None = None
        self._worker: asyncio.Task[None] | None = None
        #: batches run so far and the images in them (for tests and metrics)
        self.batches_run = 0
        self.images_run = 0

    @property
    def pending(self) -> int:
        """Images accepted and not answered yet (queued or in the running batch)."""
        return self._unanswered

    async def predict(self, item: ImageInput) -> Prediction | BadInput:
        """The prediction for one image, or the :class:`BadInput` that says why there is none.

        Raises :class:`QueueFullError` when ``max_queue`` images are already pending.
        """
        (result,) = await self.predict_many([item])
        return result

    async def predict_many(self, items: Sequence[ImageInput]) -> list[Prediction | BadInput]:
        """One result per item, in order; all are admitted to the queue or none is."""
        if self._unanswered + len(items) > self.max_queue:
            raise QueueFullError(
                f"{self._unanswered} images are waiting for model {self.model.model_id[:12]}, "
                f"the most this server queues is {self.max_queue}; retry shortly"
            )
        loop = asyncio.get_running_loop()
        pending = [_Pending(item, loop.create_future(), time.monotonic()) for item in items]
        self._queue.extend(pending)
        self._unanswered += len(pending)
        self._wake()
        return list(await asyncio.gather(*(p.future for p in pending)))

    def close(self) -> None:
        """Stop the worker; images still queued are answered with ``CancelledError``."""
        if self._worker is not None:
            self._worker.cancel()
            self._worker = None
        while self._queue:
            self._queue.popleft().future.cancel()

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

    async def _run_group(self, group: list[_Pending]) -> None:
        try:
            run = functools.partial(self.model.predict_batch, [entry.item for entry in group],
                                    batch_size=self.batch_size)
            results = await asyncio.get_running_loop().run_in_executor(self._executor, run)
        except asyncio.CancelledError:
            self._unanswered -= len(group)
            for entry in group:
                entry.future.cancel()
            raise
        except Exception as exc:  # a broken model, not a bad image: every request in the group gets it
            logger.exception("predict_batch failed for model %s", self.model.model_id)
            self._unanswered -= len(group)
            for entry in group:
                if not entry.future.done():
                    entry.future.set_exception(exc)
            return
        self.batches_run += 1
        self.images_run += len(group)
        self._unanswered -= len(group)
        for entry, result in zip(group, results):
            if not entry.future.done():
                entry.future.set_result(result)


ModelLoader = Callable[[str, str], Model]


class PredictorCache:
    """Loaded models, each with its :class:`MicroBatcher`; at most ``size``, least recently used go first.

    ``loader(model_id, path)`` loads a model (it runs in a worker thread); the other
    keyword arguments configure each batcher. Batches run on the cache's own threads, so
    slow work elsewhere in the process (URL downloads, say) never holds predictions up.
    """

    def __init__(self, size: int, *, loader: ModelLoader | None = None, max_batch: int = 32,
                 max_wait_ms: float = 5.0, max_queue: int = 256, batch_size: int = DEFAULT_BATCH_SIZE) -> None:
        if size < 1:
            raise ValueError(f"PredictorCache size must be >= 1, got {size}")
        self.size = size
        self._loader = loader or (lambda _model_id, path: Model.load(path))
        # One thread per cached model (a batcher runs one batch at a time), plus one for a
        # model that was evicted while it still had work.
        self._executor = ThreadPoolExecutor(max_workers=size + 1, thread_name_prefix="photolabel-infer")
        self._options = {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_queue": max_queue,
                         "batch_size": batch_size, "executor": self._executor}
        self._entries: OrderedDict[str, MicroBatcher] = OrderedDict()
        self._loading: dict[str, asyncio.Future[MicroBatcher]] = {}

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

    def close(self) -> None:
        """Forget every model and stop every batcher (at shutdown)."""
        while self._entries:
            _, batcher = self._entries.popitem(last=False)
            batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)

    @staticmethod
    def _retire(batcher: MicroBatcher) -> None:
        # Requests that already hold this batcher finish on it; its worker ends when the queue
        # is empty, so dropping the reference is enough.
        if batcher.pending == 0:
            batcher.close()
