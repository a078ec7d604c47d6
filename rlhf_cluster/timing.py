"""Named, timed phases for driver jobs: every job logs where its time went."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def phase(name: str, timings: dict[str, float], quiet: bool = False) -> Iterator[None]:
    """Time the block; add its seconds to ``timings[name]`` (accumulates over repeated phases)."""
    if not quiet:
        print(f"[{name}] ...", flush=True)
    t0 = time.perf_counter()
    yield
    dt = time.perf_counter() - t0
    timings[name] = round(timings.get(name, 0.0) + dt, 3)
    if not quiet:
        print(f"[{name}] done in {dt:.1f}s", flush=True)
