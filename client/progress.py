"""Progress display for file transfers: a rich bar on a terminal, one summary line after."""

from __future__ import annotations

import sys

from virtvol.client.sizes import format_size
from virtvol.protocol.hints import TYPE_CHECKING

if TYPE_CHECKING:
    from types import TracebackType
    from typing import Self, TextIO

    from rich.progress import Progress, ProgressColumn, Task, TaskID

    from virtvol.client.transfer import TransferResult

__all__ = ["TransferProgress", "draws_a_bar", "summary_line"]


def draws_a_bar(enabled: bool, stream: TextIO | None = None) -> bool:
    """Whether a ``TransferProgress`` made with ``enabled`` draws on ``stream`` (stderr by
    default): only on a terminal. What only the bar shows need not be asked for otherwise."""
    out = stream if stream is not None else sys.stderr
    return enabled and out.isatty()


class TransferProgress:
    """A progress bar (bytes covered, holes skipped, rate, ETA) drawn on stderr when it is
    a terminal; does nothing otherwise or when ``enabled`` is False. Sizes and rate are
    in binary units (KiB, MiB...), as in the summary line; "holes" counts only bytes
    that travelled as holes (0 on a dense stream).

    Args:
        description: the text before the bar.
        total: the bytes expected (data plus holes), or None if unknown.
        enabled: False to draw nothing (``--quiet``).
        stream: where to draw (stderr by default).
        holes: False for a stream that is dense from the start: no "holes" column.
    """

    def __init__(
        self,
        description: str,
        total: int | None,
        *,
        enabled: bool,
        stream: TextIO | None = None,
        holes: bool = True,
    ) -> None:
        out = stream if stream is not None else sys.stderr
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if draws_a_bar(enabled, out):
            # rich only when a bar is drawn: importing it costs every run of the
            # CLI more than a small transfer takes (docs/performance.md).
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            sizes, rate = _binary_columns()
            # Not read as rich's markup: a volume's name may hold brackets ("x[bold]y"),
            # and a daemon may send any name at all.
            columns = [TextColumn("{task.description}", markup=False), BarColumn(), sizes]
            if holes:
                columns.append(TextColumn("holes {task.fields[holes]}"))
            self._progress = Progress(
                *columns,
                rate,
                TimeRemainingColumn(),
                console=Console(file=out),
                transient=True,
            )
            self._task = self._progress.add_task(description, total=total, holes="0.00 B")

    def __enter__(self) -> Self:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def update(self, data_bytes: int, hole_bytes: int) -> None:
        """The progress callback of ``upload_file``/``download_file``."""
        if self._progress is not None and self._task is not None:
            self._progress.update(
                self._task, completed=data_bytes + hole_bytes, holes=format_size(hole_bytes)
            )


def _binary_columns() -> tuple[ProgressColumn, ProgressColumn]:
    """Bytes done/total and the rate, in the binary units of the summary line
    (rich's own columns print the rate in decimal units)."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class Sizes(ProgressColumn):
        def render(self, task: Task) -> Text:
            done = format_size(int(task.completed))
            return Text(done if task.total is None else f"{done}/{format_size(int(task.total))}")

    class Rate(ProgressColumn):
        def render(self, task: Task) -> Text:
            speed = task.finished_speed or task.speed
            return Text("?/s" if speed is None else f"{format_size(int(speed))}/s")

    return Sizes(), Rate()


def summary_line(verb: str, result: TransferResult) -> str:
    """One line: data bytes, hole bytes, seconds, rate and how the stream went."""
    seconds = max(result.seconds, 1e-6)
    rate = format_size(int(result.total_bytes / seconds))
    if result.sparse:
        mode = "sparse"
    elif result.fell_back:
        mode = "dense (peer has no sparse streams: fell back)"
    else:
        mode = "dense"
    zeros = f", {format_size(result.zero_bytes)} zeros left as holes" if result.zero_bytes else ""
    return (
        f"{verb} {format_size(result.data_bytes)} data, {format_size(result.hole_bytes)} holes"
        f"{zeros} in {result.seconds:.2f} s ({rate}/s), {mode}"
    )
