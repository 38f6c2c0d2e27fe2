"""Progress bars that show only on a terminal and never on a pipe or with --quiet."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol


class ProgressBar(Protocol):
    def advance(self, n: int = 1) -> None: ...


class _Silent:
    def advance(self, n: int = 1) -> None:
        pass


class _RichBar:
    def __init__(self, progress: object, task: object) -> None:
        self._progress = progress
        self._task = task

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)  # type: ignore[attr-defined]


def progress_enabled(quiet: bool = False) -> bool:
    """True when a bar would be seen: stderr is a terminal and the user did not ask for quiet."""
    return not quiet and sys.stderr.isatty()


@contextmanager
def progress_bar(description: str, total: int, enabled: bool) -> Iterator[ProgressBar]:
    """A bar on stderr (rich) when ``enabled``; otherwise an object that does nothing."""
    if not enabled or total <= 0:
        yield _Silent()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=total)
        yield _RichBar(progress, task)


#: words shown for each training stage (``training.train``'s ``on_stage``)
STAGE_WORDS = {
    "reading": "reading the data",
    "hashing": "hashed",
    "embedding": "embedding",
    "augmenting": "embedding augmented views",
    "fitting": "fitting the head",
    "writing": "writing the model",
    "done": "done",
}


class StageLines:
    """Training stages as lines on a stream (a pipe, CI, nohup): one when a stage starts, then its
    ``done/total`` every ``every`` seconds and when it ends."""

    def __init__(self, stream: object = None, every: float = 5.0, clock: object = None) -> None:
        import time

        self._stream = stream
        self._every = every
        self._clock = clock or time.monotonic
        self._stage: str | None = None
        self._last = 0.0
        self._last_done = -1

    def _write(self, text: str) -> None:
        stream = self._stream or sys.stderr
        stream.write(text + "\n")  # type: ignore[attr-defined]
        stream.flush()  # type: ignore[attr-defined]

    def __call__(self, stage: str, done: int, total: int) -> None:
        now = self._clock()  # type: ignore[operator]
        words = STAGE_WORDS.get(stage, stage)
        if stage == "done":
            return
        if stage == "hashing":
            self._stage = stage
            self._write(f"{words} {total} image(s)")
            return
        counted = f" {done}/{total}" if total else ""
        if stage != self._stage:
            self._stage, self._last, self._last_done = stage, now, done
            self._write(f"{words}{counted}")
            return
        if total and done != self._last_done and (done >= total or now - self._last >= self._every):
            self._last, self._last_done = now, done
            self._write(f"{words}{counted}")


class StageDisplay:
    """Training stages on a terminal or in a notebook (rich): one row per stage, a bar where the stage has
    a count. Use as a context manager; call it as ``on_stage``."""

    def __init__(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        self._progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                                  MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True),
                                  transient=True)
        self._tasks: dict[str, object] = {}
        self._totals: dict[str, int] = {}
        self._current: str | None = None

    def __enter__(self) -> StageDisplay:
        self._progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.__exit__(*exc)  # type: ignore[arg-type]

    def __call__(self, stage: str, done: int, total: int) -> None:
        if self._current is not None and self._current != stage:  # the previous stage is over
            whole = self._totals.get(self._current) or 1
            self._progress.update(self._tasks[self._current], total=whole, completed=whole)  # type: ignore[arg-type]
        if stage == "done":
            return
        started = stage != self._current
        self._current = stage
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(STAGE_WORDS.get(stage, stage), total=total or None)
        self._totals[stage] = total
        self._progress.update(self._tasks[stage], completed=done, total=total or None)  # type: ignore[arg-type]
        if started:  # drawn at once, however short the stage
            self._progress.refresh()

