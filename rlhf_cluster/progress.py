"""Progress output that suits where it goes: a tqdm bar on a terminal, plain periodic lines in a log.

A tqdm bar redraws in place on a terminal; written to a file or a pipe (``make demo > log``, ``ray job
logs``, CI) every redraw becomes a line of its own. ``progress`` gives a bar when stderr is a terminal and
otherwise prints one line every ``max(1, total // lines)`` items and at the end, with the rate.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def is_terminal(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    return bool(getattr(stream, "isatty", lambda: False)())


def progress(
    items: Iterable[T],
    desc: str,
    unit: str = "it",
    total: int | None = None,
    disable: bool = False,
    lines: int = 10,
    leave: bool = True,
    stream=None,
):
    """``items`` wrapped with progress: a tqdm bar on a terminal, about ``lines`` plain lines otherwise.
    Both support ``set_postfix(**values)`` (shown on the bar / appended to the next line)."""
    stream = sys.stderr if stream is None else stream
    total = total if total is not None else (len(items) if hasattr(items, "__len__") else None)
    if not disable and is_terminal(stream):
        from tqdm import tqdm

        return tqdm(items, desc=desc, unit=unit, total=total, leave=leave, file=stream)
    return PlainProgress(items, desc, unit, total, 0 if disable else lines, stream)


class PlainProgress:
    """Iterates ``items``; every ``total // lines`` items (100 when the total is unknown) and at the end,
    one line ``desc: done/total unit (elapsed, rate) key=value ...``. ``lines=0``: silent."""

    def __init__(self, items: Iterable[T], desc: str, unit: str, total: int | None, lines: int, stream):
        self.items, self.desc, self.unit, self.total, self.lines, self.stream = items, desc, unit, total, lines, stream
        self.every = max(1, total // lines) if total and lines else 100
        self.postfix: dict = {}

    def set_postfix(self, **values) -> None:
        self.postfix = values

    def __iter__(self) -> Iterator[T]:
        t0, done = time.perf_counter(), 0
        for item in self.items:
            yield item
            done += 1
            if self.lines and (done % self.every == 0 or done == self.total):
                self._line(done, time.perf_counter() - t0)

    def _line(self, done: int, elapsed: float) -> None:
        of = f"/{self.total}" if self.total else ""
        rate = f", {done / elapsed:.2f} {self.unit}/s" if elapsed > 0 else ""
        extra = "".join(f" {k}={v}" for k, v in self.postfix.items())
        print(f"{self.desc}: {done}{of} {self.unit} ({elapsed:.1f}s{rate}){extra}", file=self.stream, flush=True)


def note(message: str) -> None:
    """A line of output that does not break a progress bar (tqdm.write on a terminal, print otherwise)."""
    if is_terminal():
        from tqdm import tqdm

        tqdm.write(message)
    else:
        print(message, flush=True)
