"""Leading: take leadership, do the leader's duties while it holds, stop at once when lost.

The leader's duties are labd's cluster-wide work: the reconciler (a pass
first, then one every ``reconcile_interval``) and the pod, namespace and
Event watches that follow on from that pass's LISTs.  Spawns and deletes
are not duties: every replica claims and steps labs (`labd.control.scheduler`).

`Leader.run` tries to take the lock (`labd.db.leadership`) about every
second.  Once it holds it, it runs the duties in a task of their own and
pings the lock; the moment the lock is lost (its connection closed, a ping
unanswered) or the duties fail, the duties are cancelled, the
``labd_leader`` gauge drops to 0 and the loss is logged with its reason,
before anything else happens; then, after letting the other replicas try
first for a moment, it tries again.  So a replica that lost
its lock stops watching and reconciling within the ping's bounds, before
the server lets another take the lock.

Leader-only actions also check the term right before they act
(`Leader.confirm`): a check of the lock's own connection, so a replica that
lost leadership a moment ago cannot act on what it read as a leader.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any, Final

import structlog

from labd import tasks
from labd.db.leadership import LeaderLock, LeadershipLostError
from labd.lab.metrics import Metrics

__all__ = ["Leader"]

_logger = structlog.get_logger()

_RETRY: Final = 1.0
"""Seconds between tries to take leadership."""

_STAND_BACK: Final = 2.5
"""Tries of the others (``retry`` apart) that a replica lets pass after losing leadership."""

Duties = Callable[[int], Coroutine[Any, Any, None]]
"""The leader's work in one term: runs until cancelled."""


class Leader:
    """Holds leadership through a lock and runs the duties while it holds it.

    Parameters
    ----------
    lock
        How leadership is taken and checked.
    duties
        Run with the term once leadership is taken; cancelled when it is lost.
        They call `on_duty` once the watches run.
    metrics
        Its ``labd_leader`` gauge follows leadership.
    retry
        Seconds between tries to take leadership.
    """

    def __init__(
        self, lock: LeaderLock, *, duties: Duties, metrics: Metrics, retry: float = _RETRY
    ) -> None:
        self._lock = lock
        self._duties = duties
        self._metrics = metrics
        self._retry = retry
        self.term: int | None = None
        """The term this replica leads in; `None` while it does not lead."""
        self.on_duty_since: float | None = None
        """Unix time when the duties' watches started running in this term."""
        self.settled = asyncio.Event()
        """Set once the first try has ended: lost to another leader, or on duty."""
        self._reason = "shutdown"

    @property
    def leading(self) -> bool:
        """Whether this replica leads now."""
        return self.term is not None

    def on_duty(self) -> None:
        """Record that the duties run: the reconcile done, the watches started."""
        self.on_duty_since = time.time()
        self.settled.set()
        _logger.info("leader duties running", term=self.term)

    async def confirm(self) -> int:
        """Return the term after checking it is still this replica's.

        Raises
        ------
        LeadershipLostError
            If this replica does not lead in that term any more.
        """
        term = self.term
        if term is None:
            raise LeadershipLostError("not leading")
        await self._lock.confirm(term)
        return term

    async def run(self) -> None:
        """Take leadership whenever it is free, and lead, until cancelled."""
        try:
            while True:
                try:
                    term = await self._lock.acquire()
                except Exception as exc:
                    _logger.warning(
                        "could not try to take leadership",
                        error=tasks.describe_error(exc),
                    )
                    term = None
                if term is None:
                    self.settled.set()
                    await asyncio.sleep(self._retry)
                    continue
                await self._lead(term)
                # A replica that just lost leadership (its connection, most
                # likely) lets a healthy one take it first.
                await asyncio.sleep(_STAND_BACK * self._retry)
        finally:
            await self._lock.release()

    async def _lead(self, term: int) -> None:
        self.term = term
        self._metrics.leader.set(1)
        _logger.info("leadership acquired", term=term)
        duties = tasks.spawn(self._duties(term), name="leader-duties")
        holding = tasks.spawn(self._lock.held(), name="leader-lock")
        reason = "shutdown"
        try:
            await asyncio.wait({duties, holding}, return_when=asyncio.FIRST_COMPLETED)
            if holding.done() and not holding.cancelled() and holding.exception() is None:
                reason = holding.result()
            elif duties.done() and not duties.cancelled():
                error = duties.exception()
                reason = "duties ended" if error is None else f"duties failed: {error!r}"
            else:
                reason = "lock check failed"
        finally:
            # Stop acting first, then say so, then let the lock go.
            await tasks.cancel_and_wait([duties, holding])
            self.term = None
            self.on_duty_since = None
            self._metrics.leader.set(0)
            log = _logger.info if reason == "shutdown" else _logger.warning
            log("leadership lost", term=term, reason=reason)
            self.settled.set()  # The first try is over, even if it failed.
            await self._lock.release()
