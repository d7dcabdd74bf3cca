"""Progress bars for long commands: rich on a terminal, nothing when output is piped or redirected."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console


@contextmanager
def progress_bar(label: str, unit: str, console: Console | None = None) -> Iterator[Callable[[int, int], None] | None]:
    """Yield an ``update(done, total)`` callback that draws a bar with time left, or None when ``console``
    is not a terminal (callers then pass no callback and pay nothing)."""
    console = console or Console(stderr=True)
    if not console.is_terminal:
        yield None
        return
    from rich.progress import (  # here: a piped or redirected run does not load it
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn(unit), TimeElapsedColumn(),
                  TextColumn("left"), TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
