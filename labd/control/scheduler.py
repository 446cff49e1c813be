"""The scheduler loop: claims the labs that are due and runs their steps.

Level-triggered, like a Kubernetes controller.  The loop wakes on a new
intent from the API, on the nearest ``next_attempt_at`` of any lab, when a
lab falls due on another replica (``labd_lab_due``, `labd.db.changes`), or
after a backstop of a few seconds (a second while other replicas' changes
may go unheard), then *claims*
the due labs (`LabStore.claim_due`: a lease in SQL, ``SKIP LOCKED`` on
PostgreSQL) and runs one idempotent step for each (`labd.control.steps`),
at most ``kubernetes.max_concurrent_operations`` at a time.  Labs whose
intent the service has just recorded here need no claim: the recording
write leased them, and the service hands them over
(`labd.lab.signals.LabSignals.hand_over`), so their first step starts at
once.

The control package has three parts over one shared state
(`labd.control.state.ControlState`): this loop, the per-state steps, and
the watch intake (`labd.control.intake`), which applies pod changes and
Kubernetes Events under the same per-lab locks as the steps.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Final

import structlog

from labd.alerts import Alerts
from labd.config import Config
from labd.control.state import ControlState
from labd.control.steps import LabSteps
from labd.db.database import database_unreachable
from labd.db.store import LabStore, StaleLabError
from labd.lab.machine import InvalidTransitionError, LabState
from labd.lab.records import LabRecord, utcnow
from labd.lab.signals import STEP_LEASE, LabSignals
from labd.tasks import describe_error

__all__ = ["Scheduler"]

_logger = structlog.get_logger()

_RELEASE_TIMEOUT: Final = 5.0
"""Seconds that releasing the leases at stop may take."""


class Scheduler:
    """Claims due labs and steps them, until asked to stop.

    Parameters
    ----------
    config
        labd's configuration.
    store
        Lab persistence.
    signals
        Wake-ups shared with the service.
    state
        What the loop, the steps and the watch intake share.
    steps
        The step of each lab state.
    alerts
        Where a failing pass is reported.
    """

    def __init__(
        self,
        *,
        config: Config,
        store: LabStore,
        signals: LabSignals,
        state: ControlState,
        steps: LabSteps,
        alerts: Alerts,
    ) -> None:
        self._config = config
        self._store = store
        self._signals = signals
        self._state = state
        self._steps = steps
        self._alerts = alerts
        self._slots = asyncio.Semaphore(config.kubernetes.max_concurrent_operations)
        self._stopping = False
        self._spawning_loaded = False
        self._leases: dict[str, datetime] = {}
        """Lab id -> until when its claim leases it, for each step not yet
        ended (a step cancelled at stop stays: `release_leases` frees it)."""
        self.heartbeat = time.monotonic()
        """When the loop last went round (the systemd watchdog reads it)."""

    async def run(self) -> None:
        """Claim and step due labs until `request_stop`.

        A pass that fails (the database restarting, say) is logged and tried
        again a second later: the loop must outlive any outage, since nothing
        else would restart it short of the systemd watchdog.
        """
        self._signals.hand_over_limit = self._config.kubernetes.max_concurrent_operations
        try:
            await self._loop()
        finally:
            # Labs handed over from now on wait for their lease to run out,
            # or for `release_leases`.
            self._signals.hand_over_limit = 0

    async def _loop(self) -> None:
        while not self._stopping:
            self.heartbeat = time.monotonic()
            self._signals.scheduler.clear()
            try:
                if not self._spawning_loaded:
                    await self._load_spawning()
                    self._spawning_loaded = True
                if self._free_slots() <= 0:
                    pause = 1.0  # A step that ends wakes the loop.
                elif await self._step_handed() or await self._claim_and_step():
                    await asyncio.sleep(0)  # More may be due: go round again.
                    continue
                else:
                    pause = await self._pause()
            except Exception as exc:
                if database_unreachable(exc):
                    _logger.warning(
                        "scheduler pass: the database is out of reach; trying again",
                        error=describe_error(exc, first_line=True),
                    )
                else:
                    _logger.exception("scheduler pass failed; trying again")
                    self._alerts.unexpected("the scheduler loop", exc)
                pause = 1.0
            await self._idle(pause)

    async def _idle(self, pause: float) -> None:
        """Wait ``pause`` seconds or a wake-up, going round once a second (the watchdog's)."""
        until = time.monotonic() + pause
        while (left := until - time.monotonic()) > 0:
            if await self._signals.wait(self._signals.scheduler, within=min(left, 1.0)):
                return
            self.heartbeat = time.monotonic()

    def request_stop(self) -> None:
        """Make `run` return after its current pass."""
        self._stopping = True
        self._signals.wake_scheduler()

    async def drain(self, *, grace: float) -> None:
        """Let in-flight steps and watch changes finish within ``grace`` seconds.

        Those still running then are cancelled.  That is safe: every step is
        idempotent and its lab's claim lease runs out, so the next start (or
        another replica) repeats it.
        """
        await self._state.drain(grace=grace)

    async def release_leases(self) -> None:
        """Free the labs leased to steps that this process will not run or finish.

        Called once the loop has stopped and in-flight steps are drained:
        labs handed over and not started, and steps cancelled, would
        otherwise wait for their lease (`STEP_LEASE`) to run out before
        another replica, or the next start, took them on.  Best effort:
        if the database cannot be reached, the leases run out as before.
        """
        leases = dict(self._leases)
        for lab in self._signals.drop_handed():
            if lab.next_attempt_at is not None:
                leases[lab.id] = lab.next_attempt_at
        if not leases:
            return
        try:
            async with asyncio.timeout(_RELEASE_TIMEOUT):
                released = await self._store.release_leases(leases)
        except Exception as exc:
            _logger.warning(
                "could not release leases; they run out instead",
                labs=len(leases),
                error=describe_error(exc),
            )
            return
        _logger.info("leases released", labs=released)

    async def _step_handed(self) -> bool:
        """Start a step for labs handed over; say whether any was, or was dropped.

        The labs dropped for waiting too long (a burst handed over more than
        the steps could start in half a lease) are made due at once: left
        leased, they waited for the lease to run out, 30 s, before a claim
        took them (the last tenth of a burst of 1,000 spawns on PostgreSQL).
        """
        handed, dropped = self._signals.take_handed(self._free_slots())
        in_flight = self._state.locks.in_flight
        for lab in handed:
            if lab.id not in in_flight:
                self._start_step(lab)
        leases = {lab.id: lab.next_attempt_at for lab in dropped if lab.next_attempt_at}
        if leases:
            released = await self._store.release_leases(leases)
            _logger.info("labs handed over waited too long; due for a claim", labs=released)
        return bool(handed or dropped)

    async def _claim_and_step(self) -> bool:
        """Claim due labs and start a step for each; say whether more may be due."""
        free = self._free_slots()
        lease = STEP_LEASE.total_seconds()
        in_flight = self._state.locks.in_flight
        claimed = await self._store.claim_due(limit=free, lease=lease, exclude=in_flight)
        for lab in claimed:
            self._start_step(lab)
        return bool(claimed) and len(claimed) == free

    def _start_step(self, lab: LabRecord) -> None:
        if lab.next_attempt_at is not None:
            self._leases[lab.id] = lab.next_attempt_at
        self._state.locks.in_flight.add(lab.id)
        self._state.track(self._run_step(lab), name=f"step-{lab.id}")

    def _free_slots(self) -> int:
        limit = self._config.kubernetes.max_concurrent_operations
        return limit - len(self._state.locks.in_flight)

    async def _pause(self) -> float:
        backstop = self._signals.schedule_interval
        due = await self._store.next_due_time()
        if due is None:
            return backstop
        return min(backstop, max(0.0, (due - utcnow()).total_seconds()))

    async def _load_spawning(self) -> None:
        for lab in await self._store.list_labs([LabState.CREATING, LabState.STARTING]):
            self._state.spawning[lab.namespace] = lab.id

    async def _run_step(self, claimed: LabRecord) -> None:
        lab_id = claimed.id
        locks = self._state.locks
        cancelled = False
        try:
            async with self._slots:
                # Step from the row as claimed, unless a pod update holds the
                # lab now and is likely to change it.  A row that is stale all
                # the same costs one retry: every transition checks versions.
                fresh = not locks.busy(lab_id)
                async with locks.hold(lab_id):
                    lab = claimed if fresh else await self._store.find_lab(lab_id)
                    await self._steps.step(lab)
        except (StaleLabError, InvalidTransitionError) as exc:
            # Another writer moved the lab while we worked: decide again.
            _logger.debug("step lost a race", lab_id=lab_id, error=str(exc))
            await self._store.update(lab_id, {"next_attempt_at": utcnow()})
        except asyncio.CancelledError:
            cancelled = True  # Stopping: the lease is released, not used.
            raise
        finally:
            if not cancelled:
                self._leases.pop(lab_id, None)
            locks.in_flight.discard(lab_id)
            self._signals.notify(lab_id)
            self._signals.wake_scheduler()
