"""In-process wake-ups when a lab changes.

Writers call `LabSignals.notify` after committing a change to a lab (its row
or its events); readers that wait for a change (event streams, deletes that
return only when the lab is gone) take a waiter *before* they read, so a
change committed between their read and their wait still wakes them::

    waiter = signals.waiter(lab_id)
    ...read the lab...
    await signals.wait(waiter, within=5)

Waiting always has a timeout and readers re-read after it, so a missed
signal costs latency, never correctness.
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["LabSignals"]


class LabSignals:
    """Per-lab wake-ups, plus one for the scheduler."""

    def __init__(self) -> None:
        self._waiters: dict[str, asyncio.Event] = {}
        self.scheduler = asyncio.Event()
        """Set when there may be new work for the scheduler."""

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
