"""What the loop, the steps and the watch intake share, in this process only.

Nothing here is durable: after a restart it is rebuilt from the lab rows
and from the watches, which start by replaying what exists.  What must
survive a crash lives in SQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import defaultdict
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import structlog

from labd import tasks
from labd.alerts import Alerts
from labd.db.database import database_unreachable
from labd.kube.watching import PodEvent, PodUpdate
from labd.lab.progress import Step
from labd.lab.records import LabRecord, NewEvent, utcnow

__all__ = ["ControlState", "DeleteSteps", "LabLocks"]

_logger = structlog.get_logger()


class LabLocks:
    """Per-lab locks and the set of labs being stepped in this process."""

    def __init__(self) -> None:
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._users: defaultdict[str, int] = defaultdict(int)
        self.in_flight: set[str] = set()
        """Ids of labs whose step is running here."""

    def busy(self, lab_id: str) -> bool:
        """Whether someone holds or waits for the lock of ``lab_id``."""
        return lab_id in self._users

    @contextlib.asynccontextmanager
    async def hold(self, lab_id: str) -> AsyncIterator[None]:
        """Hold the lock of one lab; the lock is forgotten when unused."""
        self._users[lab_id] += 1
        try:
            async with self._locks[lab_id]:
                yield
        finally:
            self._users[lab_id] -= 1
            if not self._users[lab_id]:
                del self._users[lab_id]
                del self._locks[lab_id]


@dataclass(slots=True)
class DeleteSteps:
    """The named steps recorded in one delete operation, and when."""

    operation: int
    """The lab's operation they belong to."""

    reached: dict[Step, datetime] = field(default_factory=dict)
    """Each step recorded, with the time it was."""

    row: LabRecord | None = None
    """The lab's row as the last of these steps wrote it (or, with steps
    `kept`, as the delete's step read it)."""

    kept: list[NewEvent] = field(default_factory=list)
    """Steps taken and not yet written, each with its time (SQLite only:
    see `LabSteps`)."""

    pod_gone: bool = False
    """Whether the pod watch has seen the pod gone, since it was deleted."""

    namespace_gone: bool = False
    """Whether the namespace watch has seen the namespace gone."""

    def add(self, events: list[NewEvent]) -> None:
        """Count the steps of ``events``, just recorded."""
        now = utcnow()
        for event in events:
            if event.step is not None:
                self.reached.setdefault(event.step, now)

    def keep(self, events: list[NewEvent]) -> None:
        """Count the steps of ``events``, taken now, and keep them to be written later."""
        now = utcnow()
        self.kept.extend(dataclasses.replace(event, created_at=now) for event in events)
        self.add(events)


class ControlState:
    """The in-memory state of the control loop, shared by its three parts.

    Parameters
    ----------
    locks
        Per-lab locks, shared with the reconciler too.
    alerts
        Where a step or change that dies of an unexpected exception is reported.
    """

    def __init__(self, *, locks: LabLocks, alerts: Alerts) -> None:
        self.locks = locks
        self.pods: dict[str, PodUpdate] = {}
        """Lab id -> what the pod watch last saw of its pod."""
        self.spawning: dict[str, str] = {}
        """Namespace -> id of the lab spawning there (whose Events become progress)."""
        self.progress: dict[str, int] = {}
        """Lab id -> the last progress of its spawn, once its objects exist."""
        self.early: defaultdict[str, list[PodEvent]] = defaultdict(list)
        """Lab id -> Events that arrived before "objects created" was written."""
        self.queued: defaultdict[str, list[PodEvent]] = defaultdict(list)
        """Lab id -> Events waiting for the lab's lock, written together."""
        self.deleting: dict[str, str] = {}
        """Namespace -> id of the lab being deleted there (whose pod and
        namespace the watches report gone)."""
        self.watching = False
        """Whether this process's watches run (it leads, on duty): then they
        report the pod and the namespace of a delete stepped here gone."""
        self.delete_steps: dict[str, DeleteSteps] = {}
        """Lab id -> the steps of its delete recorded so far, as this process
        recorded them (the steps read them from SQL when they are not here)."""
        self.running: set[asyncio.Task[Any]] = set()
        """Steps and watch changes under way (`drain` waits for them)."""
        self._alerts = alerts

    def track(self, coro: Coroutine[Any, Any, Any], *, name: str) -> None:
        """Run ``coro`` as a task that stopping waits for, and alert if it crashes.

        A database outage (PostgreSQL restarting, say) is not a crash: the
        work is logged as left over, and what it would have written comes
        from the lab's next step, once its lease or recheck falls due.
        """
        task = tasks.spawn(_outlasting_outages(coro, name), name=name)
        self.running.add(task)
        task.add_done_callback(self.running.discard)
        task.add_done_callback(self._report_crash)

    def forget_delete(self, lab_id: str, namespace: str) -> None:
        """Drop what was kept about the delete of ``lab_id``, which has ended."""
        if self.deleting.get(namespace) == lab_id:
            del self.deleting[namespace]
        self.delete_steps.pop(lab_id, None)

    def forget_spawn(self, lab: LabRecord) -> None:
        """Drop what was kept about the spawn of ``lab``, which has ended."""
        self.spawning.pop(lab.namespace, None)
        self.progress.pop(lab.id, None)
        self.early.pop(lab.id, None)
        self.queued.pop(lab.id, None)

    async def drain(self, *, grace: float) -> None:
        """Let tracked tasks finish within ``grace`` seconds; cancel the rest.

        That is safe: every step is idempotent and its lab's claim lease runs
        out, so the next start (or another replica) repeats it.
        """
        if self.running:
            _, pending = await asyncio.wait(set(self.running), timeout=grace)
            await tasks.cancel_and_wait(list(pending))

    def _report_crash(self, task: asyncio.Task[Any]) -> None:
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self._alerts.unexpected(f"task {task.get_name()}", error)


async def _outlasting_outages(coro: Coroutine[Any, Any, Any], name: str) -> None:
    try:
        await coro
    except Exception as exc:
        if not database_unreachable(exc):
            raise
        _logger.warning(
            "left over: the database is out of reach",
            task=name,
            error=tasks.describe_error(exc, first_line=True),
        )
