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

A reader need not even re-read when its lab's newest row was written
here: the store hands every row it commits to `LabSignals.seen`, and a
reader that follows the lab (`LabSignals.following`) takes the newest row
from `LabSignals.latest`.  Where this process is the only writer (SQLite)
every row it wrote is the newest until its next.  With other writers about
(PostgreSQL), a row written here is kept only while every change is heard,
and only if no change of the lab by another process was heard since the
write began (`LabSignals.changed_elsewhere`): a later write elsewhere
wakes the reader, which then reads.  A row in ``deleted``, from which no
transition leads, is kept in any case.

The service also hands the labs whose intent it has just recorded to this
process's scheduler (`LabSignals.hand_over`), which steps them at once
instead of claiming them back from SQL.  The recording write leases the lab
(`STEP_LEASE`), as a claim would, so a lab handed over to a process that dies
is claimed by another once the lease runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Final

from labd.lab.machine import LabState
from labd.lab.records import LabRecord, utcnow

__all__ = ["STEP_LEASE", "LabSignals"]

STEP_LEASE: Final = timedelta(seconds=30)
"""How long a claim (or a hand-over) holds a lab against other claimers.

A step that finishes reschedules its lab itself, so the lease only matters
when the claimer died: it is how long a lab waits before a restarted labd
(or another replica) takes its step up again."""

_POLL: Final = 2.0
"""Seconds between re-reads while changes of other processes may go unheard."""

_SAFETY: Final = 300.0
"""Seconds between re-reads while every change is heard: a backstop only."""

_SCHEDULE_POLL: Final = 1.0
"""Seconds between the scheduler's looks for due labs while changes may go unheard."""

_SCHEDULE_BACKSTOP: Final = 5.0
"""Seconds between them while every change is heard (then every lab that
falls due wakes the scheduler): a backstop only, for a claimer that died."""


_ELSEWHERE_KEPT: Final = timedelta(seconds=30)
"""How long a change heard of another process's is remembered (`LabSignals.seen`)."""

_BEGUN_KEPT: Final = 10_000
"""Operations begun here that are remembered until their first step."""


class LabSignals:
    """Per-lab wake-ups, plus one for the scheduler.

    Parameters
    ----------
    complete
        Whether every change is heard from the start.
    sole_writer
        Whether this process is the only writer of the labs (SQLite), so
        that the rows it writes are the newest there are.
    """

    def __init__(self, *, complete: bool = False, sole_writer: bool = False) -> None:
        self._waiters: dict[str, asyncio.Event] = {}
        self._followers: Counter[str] = Counter()
        self._latest: dict[str, LabRecord] = {}
        self._elsewhere: dict[str, datetime] = {}
        self._elsewhere_order: deque[tuple[datetime, str]] = deque()
        self._heard_since: datetime | None = utcnow() if complete else None
        self._handed: deque[tuple[float, LabRecord]] = deque()
        self._begun: OrderedDict[str, int] = OrderedDict()
        self._sole_writer = sole_writer
        self.scheduler = asyncio.Event()
        """Set when there may be new work for the scheduler."""
        self.complete = complete
        """Whether every change of every lab reaches `notify` (see the module docstring)."""
        self.hand_over_limit = 0
        """Labs handed over that may wait for the scheduler at once: as many
        as it steps at once, so none waits long; 0 while no scheduler runs."""

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
        self._heard_since = utcnow() if complete else None
        self._latest.clear()
        self.wake_all()

    def wake_all(self) -> None:
        """Wake every reader waiting for a change of any lab."""
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

    def changed_elsewhere(self, lab_id: str) -> None:
        """Wake the readers of ``lab_id``, which another process has changed.

        A row of it written here before now is no longer taken for the
        newest: its readers read.
        """
        now = utcnow()
        self._elsewhere[lab_id] = now
        self._elsewhere_order.append((now, lab_id))
        self._forget_elsewhere(now)
        self._latest.pop(lab_id, None)
        self.notify(lab_id)

    def _forget_elsewhere(self, now: datetime) -> None:
        """Forget the changes heard longer than `_ELSEWHERE_KEPT` ago."""
        horizon = now - _ELSEWHERE_KEPT
        while self._elsewhere_order and self._elsewhere_order[0][0] < horizon:
            at, lab_id = self._elsewhere_order.popleft()
            if self._elsewhere.get(lab_id) == at:
                del self._elsewhere[lab_id]

    @property
    def sole_writer(self) -> bool:
        """Whether this process is the only writer of the labs (SQLite)."""
        return self._sole_writer

    @contextlib.contextmanager
    def following(self, lab_id: str) -> Iterator[None]:
        """Keep the rows of ``lab_id`` written here for `latest`, while in the block."""
        self._followers[lab_id] += 1
        try:
            yield
        finally:
            self._followers[lab_id] -= 1
            if not self._followers[lab_id]:
                del self._followers[lab_id]
                self._latest.pop(lab_id, None)

    def began(self, lab: LabRecord) -> None:
        """Note that this process has just begun the current operation of ``lab``.

        Its steps then know that nothing of it is recorded yet, without
        reading its events back (`take_begun`).  Only the newest
        `_BEGUN_KEPT` are kept: an operation another replica steps is never
        taken here.
        """
        self._begun[lab.id] = lab.operation
        self._begun.move_to_end(lab.id)
        if len(self._begun) > _BEGUN_KEPT:
            self._begun.popitem(last=False)

    def take_begun(self, lab: LabRecord) -> bool:
        """Whether this process began the current operation of ``lab`` (asked once)."""
        return self._begun.pop(lab.id, None) == lab.operation

    def seen(self, lab_id: str, lab: LabRecord | None) -> None:
        """Take ``lab`` as the row of ``lab_id`` just committed here.

        `None` says a write of the lab failed and its outcome is unknown.
        """
        if lab_id not in self._followers:
            return
        known = self._latest.get(lab_id)
        if lab is None or not self._newest(lab_id, lab):
            self._latest.pop(lab_id, None)
        elif known is None or known.version <= lab.version:
            # Rows arrive in commit order; an update keeps the version.
            self._latest[lab_id] = lab

    def _newest(self, lab_id: str, lab: LabRecord) -> bool:
        """Whether ``lab``, just committed here, is the newest row until a change is heard."""
        if self._sole_writer or lab.state is LabState.DELETED:
            return True  # No other writer, or no transition from `deleted`.
        # A write of another process committed after this one is heard after
        # the write began (``updated_at`` is taken before it commits).  So
        # the row is the newest unless hearing began after that, or a change
        # elsewhere was heard since: its notice can come before this row.
        began = lab.updated_at
        heard = self._heard_since
        now = utcnow()
        if heard is None or began < heard or began < now - _ELSEWHERE_KEPT:
            return False  # Not heard throughout, or too long ago to tell.
        self._forget_elsewhere(now)
        elsewhere = self._elsewhere.get(lab_id)
        return elsewhere is None or elsewhere < began

    def latest(self, lab_id: str) -> LabRecord | None:
        """The newest row of a followed lab, if this process wrote it (else read it).

        Only this process writes SQLite, so there every row it wrote is
        kept.  On PostgreSQL a row written here is kept while every change
        is heard and none of the lab by another process has been (see the
        module docstring); a `deleted` row, the last any lab has, always.
        """
        return self._latest.get(lab_id)

    @property
    def taking_over(self) -> bool:
        """Whether this process's scheduler would take a lab handed over now.

        Decided before the write that records the lab: a burst of writes
        under way at once may all be handed over.  Steps taken from the
        queue are cheaper than claims, and a lab that waits too long in it
        is made due for a claim (`Scheduler`).
        """
        return len(self._handed) < self.hand_over_limit

    def hand_over(self, lab: LabRecord) -> None:
        """Give a lab just leased by its recording write to this process's scheduler."""
        self._handed.append((time.monotonic(), lab))
        self.scheduler.set()

    def take_handed(self, limit: int) -> tuple[list[LabRecord], list[LabRecord]]:
        """Up to ``limit`` labs handed over, oldest first, and those dropped on the way.

        A lab that waited here for half its lease is dropped: its lease may
        run out before its step could finish, and another replica's claim
        would then step it too.  The caller makes the dropped labs due at once
        (`LabStore.release_leases`), for a claim.
        """
        fresh = time.monotonic() - STEP_LEASE.total_seconds() / 2
        taken: list[LabRecord] = []
        dropped: list[LabRecord] = []
        while self._handed and len(taken) < limit:
            handed_at, lab = self._handed.popleft()
            (taken if handed_at >= fresh else dropped).append(lab)
        return taken, dropped

    def drop_handed(self) -> list[LabRecord]:
        """Take every lab handed over and not started: the scheduler has stopped."""
        dropped = [lab for _, lab in self._handed]
        self._handed.clear()
        return dropped

    def wake_scheduler(self) -> None:
        """Tell the scheduler to look for due work now."""
        self.scheduler.set()

    @staticmethod
    async def wait(waiter: asyncio.Event, *, within: float) -> bool:
        """Wait for ``waiter`` at most ``within`` seconds; say whether it fired."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(waiter.wait(), within)
        return waiter.is_set()
