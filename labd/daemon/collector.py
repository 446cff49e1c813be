"""How the daemon's cyclic garbage collector runs.

CPython frees almost everything by reference counting; the cyclic
collector only finds garbage in reference cycles.  With its default
thresholds, a young-generation pass runs every 700 net allocations of
container objects, and in a burst of work (1,000 spawns or deletes at
once) the objects alive at that moment (coroutines, futures, requests in
flight) are promoted, so full passes over the whole heap follow: in a
burst of 1,000 deletes, two or three full passes took 0.25 to 0.41 s of
the burst's 1.8 to 2.7 s of CPU (`tests/bench/bench_scale.py`).

A young-generation threshold of 10,000 lets a burst's short-lived objects
die by reference count before any pass looks at them: the same burst then
ran no full pass and took 1.5 s of CPU.  Garbage in cycles lives a little
longer; the daemon's peak RSS at 10,000 labs stays within its budget
(docs/performance.md).
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["THRESHOLDS", "tune_collector"]

THRESHOLDS: Final = (10_000, 10, 10)
"""``gc.set_threshold`` for the daemon: young, middle and old generations."""


def tune_collector() -> None:
    """Set the daemon's collector thresholds; keep what is loaded by now out of full passes.

    Called once the daemon's modules and configuration are loaded: they
    live as long as the process, so `gc.freeze` moves them out of the
    collector's reach for good.
    """
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
