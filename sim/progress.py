"""Progress bars for long runs (rich, on stderr, only when stderr is a terminal)."""

from __future__ import annotations

import sys
from typing import Callable, Iterable, Iterator, TypeVar

__all__ = ["Track", "track", "no_track"]

T = TypeVar("T")
#: ``track(items, total, description)``: the items, unchanged, counted on a progress bar.
Track = Callable[[Iterable[T], "int | None", str], Iterable[T]]

#: The bar moves every this many items (rich's bookkeeping per item would cost more than the item).
_STEP = 4096


def no_track(items: Iterable[T], total: int | None = None, description: str = "") -> Iterable[T]:
    """A :data:`Track` that shows nothing."""
    return items


def track(items: Iterable[T], total: int | None = None, description: str = "") -> Iterator[T]:
    """``items``, with a rich progress bar on stderr while they are consumed (``total`` None: a
    counter without a bar). Without a terminal on stderr, or without rich, just ``items``."""
    if not sys.stderr.isatty():
        yield from items
        return
    try:
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)
    except ImportError:
        yield from items
        return
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn()]
    if total is not None:
        columns.append(TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total)
        done = 0
        for item in items:
            yield item
            done += 1
            if done % _STEP == 0:
                bar.update(task, completed=done)
        bar.update(task, completed=done, total=total if total is not None else done)
