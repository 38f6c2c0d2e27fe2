"""TensorBoard event files: per-step scalars and markdown text, for ``tensorboard --logdir DIR``.

Written with tensorboardX (the ``tensorboard`` extra: ``pip install 'photolabel[tensorboard]'``).
Nothing written here enters a model: a head reports to an :class:`EventWriter` what it
computes anyway, so a model trained with or without logs has the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

from photolabel.errors import MissingDependencyError, OutputError

TENSORBOARD_EXTRA = "pip install 'photolabel[tensorboard]'"


def require_tensorboard() -> None:
    """Check that events can be written, before a long run that would write them.

    Raises:
        MissingDependencyError: tensorboardX is not installed; the message says how to install it.
    """
    try:
        import tensorboardX  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(
            f"writing TensorBoard logs needs tensorboardX, which is not installed: {TENSORBOARD_EXTRA}"
        ) from exc


class EventWriter:
    """Writes TensorBoard events into a new event file under ``logdir`` (created if missing).

    ``scalar(tag, value, step)`` draws one point of the curve ``tag``; ``text(tag, markdown)``
    shows markdown (a table from :func:`markdown_table`, say) in TensorBoard's Text tab.
    Close it (or use it as a context manager) to flush the file.

    Raises:
        MissingDependencyError: tensorboardX is not installed; the message says how to install it.
        OutputError: ``logdir`` cannot be created.
    """

    def __init__(self, logdir: str | Path) -> None:
        require_tensorboard()
        from tensorboardX import SummaryWriter

        self.logdir = Path(logdir)
        try:
            self.logdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{self.logdir}: cannot create the TensorBoard log folder ({exc.strerror or exc})") \
                from exc
        self._writer: Any = SummaryWriter(logdir=str(self.logdir))

    def scalar(self, tag: str, value: float, step: int) -> None:
        """One point ``(step, value)`` of the curve ``tag`` (``loss/train``: chart "train" in section "loss")."""
        self._writer.add_scalar(tag, float(value), int(step))

    def text(self, tag: str, markdown: str, step: int = 0) -> None:
        """Markdown shown under ``tag`` in the Text tab (tables, lists, emphasis)."""
        self._writer.add_text(tag, markdown, int(step))

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> EventWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()


@contextmanager
def scalars_to(logdir: str | Path | None, reporter: Any) -> Iterator[EventWriter | None]:
    """Point ``reporter.log`` (a head's) at a new :class:`EventWriter` in ``logdir`` for the ``with`` block,
    then close the writer and set ``reporter.log`` back to None. ``logdir`` None: nothing is written."""
    if logdir is None:
        yield None
        return
    with EventWriter(logdir) as writer:
        reporter.log = writer.scalar
        try:
            yield writer
        finally:
            reporter.log = None


def markdown_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """``rows`` under the header ``columns`` as a markdown table; floats shown with 6 significant digits."""

    def cell(value: Any) -> str:
        text = f"{value:.6g}" if isinstance(value, float) else str(value)
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines.extend("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)
    return "\n".join(lines)
