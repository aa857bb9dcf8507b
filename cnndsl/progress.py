"""Progress bars for the long operations, all drawn the same way.

Bars go to stderr through tqdm and show only when stderr is a terminal
(tqdm's ``disable=None``), so piped output, logs and tests stay clean. They are
transient (``leave=False``): once an operation ends its bar is erased and what
remains on the terminal is the command's own output.

- :func:`progress` wraps an iterable: loading the zoo (``cnndsl list``), the
  steps of a long computation.
- :func:`working` wraps one long call that reports no steps of its own (the
  ONNX exporter, Graphviz's layout): it shows the task and the time elapsed.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")

REFRESH_S = 0.25  # how often :func:`working` redraws its clock


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    """``iterable``, with a bar on stderr counting its items (``total`` defaults to ``len(iterable)``).

    The bar shows only when stderr is a terminal; otherwise this costs one tqdm object and nothing is drawn.
    """
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit=unit, file=sys.stderr, leave=False, disable=None)


def counter(total: int, desc: str, unit: str = "it"):
    """A bar to advance by hand (``bar.update(1)``) for work that finishes out of order, e.g. search trials
    completed by several workers. Silent, like :func:`progress`, when stderr is not a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, disable=None, dynamic_ncols=True)


@contextmanager
def working(desc: str) -> Iterator[None]:
    """Show ``desc`` and a running clock on stderr while the ``with`` body runs (terminals only)."""
    from tqdm import tqdm

    if not _is_terminal(sys.stderr):
        yield
        return
    # The clock draws on its own handle to the terminal: the body may point file descriptor 2 elsewhere
    # for a while (the ONNX export mutes native logging that way) and the clock must keep running.
    terminal = os.fdopen(os.dup(sys.stderr.fileno()), "w", encoding=sys.stderr.encoding or "utf-8")
    bar = tqdm(total=None, desc=desc, bar_format="{desc} {elapsed}", file=terminal, leave=False)
    done = threading.Event()

    def tick() -> None:
        while not done.wait(REFRESH_S):
            bar.refresh()

    clock = threading.Thread(target=tick, name="cnndsl-progress", daemon=True)
    clock.start()
    try:
        yield
    finally:
        done.set()
        clock.join()
        bar.close()
        terminal.close()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty() and stream.fileno() >= 0
    except (AttributeError, OSError, ValueError):
        return False


__all__ = ["counter", "progress", "working"]
