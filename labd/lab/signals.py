"""In-process wake-ups when a lab changes.

Writers call `LabSignals.notify` after committing a change to a lab (its row
or its events); readers that wait for a change (event streams, deletes that
return only when the lab is gone) take a waiter *before* they read, so a
change committed between their read and their wait still wakes them::

    waiter = signals.waiter(lab_id)
    ...read the lab...
    await signals.wait(waiter, within=5)

Waiting always has a timeout and readers re-read after it, so a missed
signal costs latency, never correctness.  How long a reader may wait
(`LabSignals.follow_interval`) depends on whether every change is heard:
on SQLite this process is the only writer, and the store signals each of
its writes (`labd.db.store.LabStore.on_change`); on PostgreSQL other replicas'
writes are heard only while the change listener listens (`labd.db.changes`).
While every change is heard, a waiting reader costs nothing until its lab
changes; otherwise readers fall back to re-reading every two seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Final

__all__ = ["LabSignals"]

_POLL: Final = 2.0
"""Seconds between re-reads while changes of other processes may go unheard."""

_SAFETY: Final = 300.0
"""Seconds between re-reads while every change is heard: a backstop only."""

_SCHEDULE_POLL: Final = 1.0
"""Seconds between the scheduler's looks for due labs while changes may go unheard."""

_SCHEDULE_BACKSTOP: Final = 5.0
"""Seconds between them while every change is heard (then every lab that
falls due wakes the scheduler): a backstop only, for a claimer that died."""


class LabSignals:
    """Per-lab wake-ups, plus one for the scheduler."""

    def __init__(self, *, complete: bool = False) -> None:
        self._waiters: dict[str, asyncio.Event] = {}
        self.scheduler = asyncio.Event()
        """Set when there may be new work for the scheduler."""
        self.complete = complete
        """Whether every change of every lab reaches `notify` (see the module docstring)."""

    @property
    def follow_interval(self) -> float:
        """Seconds a reader following a lab may wait before it reads again."""
        return _SAFETY if self.complete else _POLL

    @property
    def schedule_interval(self) -> float:
        """Seconds the scheduler may wait for a wake-up before it looks for due labs."""
        return _SCHEDULE_BACKSTOP if self.complete else _SCHEDULE_POLL

    def hearing(self, complete: bool) -> None:
        """Say whether every change is heard from now on; wake every reader.

        Readers wake either way: when hearing stops, they may have missed a
        change and must fall back to polling; when it starts, they may have
        missed one while deaf.
        """
        self.complete = complete
        waiters, self._waiters = self._waiters, {}
        for event in waiters.values():
            event.set()

    def waiter(self, lab_id: str) -> asyncio.Event:
        """Return the event that the next change of ``lab_id`` sets."""
        event = self._waiters.get(lab_id)
        if event is None:
            event = self._waiters[lab_id] = asyncio.Event()
        return event

    def notify(self, lab_id: str) -> None:
        """Wake everything waiting for a change of ``lab_id``."""
        event = self._waiters.pop(lab_id, None)
        if event is not None:
            event.set()

    def wake_scheduler(self) -> None:
        """Tell the scheduler to look for due work now."""
        self.scheduler.set()

    @staticmethod
    async def wait(waiter: asyncio.Event, *, within: float) -> bool:
        """Wait for ``waiter`` at most ``within`` seconds; say whether it fired."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter.wait(), within)
        return waiter.is_set()
