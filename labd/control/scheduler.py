"""The scheduler: drives lab rows toward what was asked, one step at a time.

Level-triggered, like a Kubernetes controller.  The loop wakes on a new
intent from the API, on the nearest ``next_attempt_at`` of any lab, or at
least once a second (which also feeds the systemd watchdog), then *claims*
the due labs (`LabStore.claim_due`: a lease in SQL, ``SKIP LOCKED`` on
PostgreSQL) and runs one idempotent step for each, at most
``kubernetes.max_concurrent_operations`` at a time:

``requested``
    Wait for the user's previous lab to be gone (a create on a failed lab
    cleans it first), then ``start``.
``creating``
    Create the lab's objects (409 means "already there", so a step repeated
    after a crash is harmless), then ``objects_ready``.
``starting``
    Nothing to do but wait for the pod watch; the step runs at the spawn
    deadline and times the spawn out.
``deleting``
    Delete the pod, then the namespace, and look again until both are gone.
``failed``, ``exited``
    Clean up (``cleanup``), a while after the hub could see how it ended.

Pod phase changes arrive through one cluster-wide pod watch, Kubernetes
Events about spawning pods through one event watch; both are applied under
the same per-lab lock as the steps, so a lab is never worked on twice at
once in this process.  Writes that lose a race with another process fail
their version check and are simply re-decided on the next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any, Final

import structlog

from labd import tasks
from labd.alerts import AlertKind, Alerts
from labd.config import Config
from labd.db.store import LabExistsError, LabStore, StaleLabError
from labd.kube.builder import (
    LabBuildError,
    LabObjects,
    build_lab_objects,
    internal_url,
    lab_build,
    pod_name,
)
from labd.kube.client import KubeError
from labd.kube.copying import SecretSourceError, read_copied_secrets
from labd.kube.storage import LabKube, NamespaceTerminatingError
from labd.kube.watching import PodEvent, PodUpdate
from labd.lab.machine import SPAWNING_STATES, InvalidTransitionError, LabState, Trigger
from labd.lab.metrics import Metrics
from labd.lab.records import Actor, EventType, LabChanges, LabRecord, NewEvent, utcnow
from labd.lab.signals import LabSignals

__all__ = ["LabLocks", "Scheduler", "next_progress"]

_logger = structlog.get_logger()

_LEASE: Final = 30.0
"""Seconds a claim holds a lab against other claimers.

A step that finishes reschedules its lab itself, so the lease only matters
when the claimer died: it is how long a lab waits before a restarted labd
(or another replica) takes its step up again."""

_REPORT_GRACE: Final = 60.0
"""Seconds a failed or exited lab stays visible before labd cleans it up.

The hub's poll sees it as failed or terminated within this time; a poll
cleans it up at once (see `LabService.get_state`)."""

_DELETE_POLL: Final = (0.2, 2.0)
"""First and longest pause between checks that a lab's pod, then its namespace, is gone."""

_POD_GONE_WAIT: Final = 60.0
"""Seconds past its grace period that a deleted pod may hold its namespace's deletion."""

_WAIT_PREVIOUS: Final = 0.5
"""Pause between checks that a user's previous lab is gone."""


def next_progress(previous: int | None) -> int:
    """Progress of the next pod event of a spawn (docs/api.md): 35, then 1/3 closer to 75."""
    if previous is None or previous < 35:
        return 35
    return previous + (75 - previous) // 3


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


class Scheduler:
    """Runs lab steps, applies pod watch updates and spawn progress events.

    Parameters
    ----------
    config
        labd's configuration.
    store
        Lab persistence.
    signals
        Wake-ups shared with the service.
    kube
        The Kubernetes operations on lab objects.
    locks
        Per-lab locks, shared with the reconciler.
    metrics
        Where durations, failures and steps are counted.
    alerts
        Where failed spawns and deletes, vanished labs and unexpected
        errors are reported; disabled if not given.
    """

    def __init__(
        self,
        *,
        config: Config,
        store: LabStore,
        signals: LabSignals,
        kube: LabKube,
        locks: LabLocks,
        metrics: Metrics | None = None,
        alerts: Alerts | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics or Metrics()
        self._alerts = alerts or Alerts()
        self._store = store
        self._signals = signals
        self._kube = kube
        self._locks = locks
        self._slots = asyncio.Semaphore(config.kubernetes.max_concurrent_operations)
        self._pods: dict[str, PodUpdate] = {}
        self._spawning: dict[str, str] = {}  # namespace -> lab id
        self._progress: dict[str, int] = {}  # lab id -> last spawn progress
        self._early: defaultdict[str, list[PodEvent]] = defaultdict(list)
        self._queued: defaultdict[str, list[PodEvent]] = defaultdict(list)
        self._stopping = False
        self._spawning_loaded = False
        self._running: set[asyncio.Task[Any]] = set()
        self.heartbeat = time.monotonic()
        """When the loop last went round (the systemd watchdog reads it)."""

    # The loop

    async def run(self) -> None:
        """Claim and step due labs until `request_stop`.

        A pass that fails (the database restarting, say) is logged and tried
        again a second later: the loop must outlive any outage, since nothing
        else would restart it short of the systemd watchdog.
        """
        while not self._stopping:
            self.heartbeat = time.monotonic()
            self._signals.scheduler.clear()
            try:
                if not self._spawning_loaded:
                    await self._load_spawning()
                    self._spawning_loaded = True
                if self._free_slots() <= 0:
                    pause = 1.0  # A step that ends wakes the loop.
                elif await self._claim_and_step():
                    await asyncio.sleep(0)  # More may be due: go round again.
                    continue
                else:
                    pause = await self._pause()
            except Exception as exc:
                _logger.exception("scheduler pass failed; trying again")
                self._alerts.unexpected("the scheduler loop", exc)
                pause = 1.0
            await self._signals.wait(self._signals.scheduler, within=pause)

    async def _claim_and_step(self) -> bool:
        """Claim due labs and start a step for each; say whether more may be due."""
        free = self._free_slots()
        claimed = await self._store.claim_due(
            limit=free, lease=_LEASE, exclude=self._locks.in_flight
        )
        for lab in claimed:
            self._locks.in_flight.add(lab.id)
            self._track(self._run_step(lab), name=f"step-{lab.id}")
        return bool(claimed) and len(claimed) == free

    def _free_slots(self) -> int:
        return self._config.kubernetes.max_concurrent_operations - len(self._locks.in_flight)

    def request_stop(self) -> None:
        """Make `run` return after its current pass."""
        self._stopping = True
        self._signals.wake_scheduler()

    async def drain(self, *, grace: float) -> None:
        """Let in-flight steps and changes finish within ``grace`` seconds.

        Those still running then are cancelled.  That is safe: every step is
        idempotent and its lab's claim lease runs out, so the next start (or
        another replica) repeats it.
        """
        if self._running:
            _, pending = await asyncio.wait(set(self._running), timeout=grace)
            await tasks.cancel_and_wait(list(pending))

    async def _pause(self) -> float:
        due = await self._store.next_due_time()
        if due is None:
            return 1.0
        return min(1.0, max(0.0, (due - utcnow()).total_seconds()))

    async def _load_spawning(self) -> None:
        for lab in await self._store.list_labs([LabState.CREATING, LabState.STARTING]):
            self._spawning[lab.namespace] = lab.id

    async def _run_step(self, claimed: LabRecord) -> None:
        lab_id = claimed.id
        try:
            async with self._slots:
                # Step from the row as claimed, unless a pod update holds the
                # lab now and is likely to change it.  A row that is stale all
                # the same costs one retry: every transition checks versions.
                fresh = not self._locks.busy(lab_id)
                async with self._locks.hold(lab_id):
                    await self._step(claimed if fresh else await self._store.find_lab(lab_id))
        except (StaleLabError, InvalidTransitionError) as exc:
            # Another writer moved the lab while we worked: decide again.
            _logger.debug("step lost a race", lab_id=lab_id, error=str(exc))
            await self._store.update(lab_id, {"next_attempt_at": utcnow()})
        finally:
            self._locks.in_flight.discard(lab_id)
            self._signals.notify(lab_id)
            self._signals.wake_scheduler()

    async def _step(self, lab: LabRecord | None) -> None:
        if lab is None:
            return
        log = _logger.bind(username=lab.username, lab_id=lab.id, state=lab.state.value)
        step = self._steps().get(lab.state)
        if step is None:
            await self._store.update(lab.id, {"next_attempt_at": None})
            return
        if lab.state in SPAWNING_STATES and lab.deadline_at and utcnow() >= lab.deadline_at:
            await self._time_out(lab)
            return
        log.debug("step")
        self._metrics.steps.labels(lab.state.value).inc()
        await step(lab)

    def _steps(self) -> dict[LabState, Callable[[LabRecord], Awaitable[None]]]:
        return {
            LabState.REQUESTED: self._step_requested,
            LabState.CREATING: self._step_creating,
            LabState.STARTING: self._step_starting,
            LabState.DELETING: self._step_deleting,
            LabState.FAILED: self._step_clean_up,
            LabState.EXITED: self._step_clean_up,
        }

    # Spawning

    async def _step_requested(self, lab: LabRecord) -> None:
        previous_id = lab.spec.get("previous_lab")
        if previous_id is not None and not await self._previous_gone(lab, previous_id):
            await self._store.update(
                lab.id, {"next_attempt_at": utcnow() + timedelta(seconds=_WAIT_PREVIOUS)}
            )
            return
        lab = await self._store.transition(
            lab.id,
            Trigger.START,
            actor=Actor.SCHEDULER,
            expected_version=lab.version,
            changes={"next_attempt_at": utcnow()},
        )
        await self._step_creating(lab)

    async def _previous_gone(self, lab: LabRecord, previous_id: str) -> bool:
        """Mirror the previous lab's cleanup as progress 2, 5, 12, 20 (docs/api.md)."""
        previous = await self._store.get_lab(previous_id)
        seen = {e.progress for e in await self._store.events(lab.id, lab.operation)}
        reached = {
            e.progress or 0 for e in await self._store.events(previous.id, previous.operation)
        }
        gone = previous.state is LabState.DELETED
        steps = [
            (2, True, f"Deleting existing lab for {lab.username}"),
            (5, max(reached, default=0) >= 25 or gone, "Shutting down previous lab pod"),
            (12, max(reached, default=0) >= 62 or gone, "Deleting previous lab namespace"),
            (20, gone, "Previous lab deleted"),
        ]
        events = [
            NewEvent(EventType.INFO, message, progress)
            for progress, due, message in steps
            if due and progress not in seen
        ]
        if events:
            await self._store.add_events(lab.id, events)
            self._signals.notify(lab.id)
        return gone

    async def _step_creating(self, lab: LabRecord) -> None:
        self._spawning[lab.namespace] = lab.id
        try:
            await self._kube.create_lab_objects(await self._build(lab))
        except (SecretSourceError, LabBuildError) as exc:
            # Configuration (or the hub's request) is at fault: no retry helps.
            _logger.error("spawn failed", username=lab.username, lab_id=lab.id, error=str(exc))
            await self._fail_spawn(lab, Trigger.FAIL, str(exc), cause="configuration")
            return
        except NamespaceTerminatingError:
            # The previous lab's namespace is still going away.
            await self._store.update(
                lab.id, {"next_attempt_at": utcnow() + timedelta(seconds=_WAIT_PREVIOUS)}
            )
            return
        except KubeError as exc:
            await self._spawn_failed_step(lab, exc)
            return
        env = lab.spec.get("env", {})
        lab = await self._store.transition(
            lab.id,
            Trigger.OBJECTS_READY,
            actor=Actor.SCHEDULER,
            expected_version=lab.version,
            changes={
                "internal_url": internal_url(lab.namespace, env, self._config),
                "attempts": 0,
                "last_error": None,
                "next_attempt_at": lab.deadline_at,
            },
            events=[NewEvent(EventType.INFO, "Created Kubernetes objects for user lab", 30)],
        )
        self._progress[lab.id] = 30
        self._signals.notify(lab.id)
        early = self._early.pop(lab.id, [])
        if early:
            await self._record_pod_events(lab.id, early)
        seen = self._pods.get(lab.id)
        if seen is not None:
            await self._apply_pod(lab, seen)

    async def _build(self, lab: LabRecord) -> LabObjects:
        """Build the lab's objects, with the secrets configuration copies into it.

        The copied values are read afresh on every attempt and dropped with
        the objects: they are never stored.
        """
        build = lab_build(lab)
        if self._config.lab.copies_secrets:
            copied = await read_copied_secrets(self._kube, self._config.lab)
            build = dataclasses.replace(
                build, copied_secrets=copied.secrets, docker_config=copied.docker_config
            )
        return build_lab_objects(build, self._config)

    async def _spawn_failed_step(self, lab: LabRecord, error: KubeError) -> None:
        attempts = lab.attempts + 1
        log = _logger.bind(username=lab.username, lab_id=lab.id)
        if error.retryable and attempts < self._config.retry.spawn_attempts:
            log.warning("spawn step failed, will retry", error=str(error), attempts=attempts)
            await self._store.update(
                lab.id,
                {
                    "attempts": attempts,
                    "last_error": str(error),
                    "next_attempt_at": utcnow() + self._backoff(attempts),
                },
            )
            return
        log.error("spawn failed", error=str(error))
        await self._fail_spawn(lab, Trigger.FAIL, str(error), cause="kubernetes")

    async def _fail_spawn(
        self, lab: LabRecord, trigger: Trigger, reason: str, *, cause: str
    ) -> None:
        await self._store.transition(
            lab.id,
            trigger,
            actor=Actor.SCHEDULER,
            reason=reason,
            expected_version=lab.version,
            changes={
                "last_error": reason,
                "next_attempt_at": utcnow() + timedelta(seconds=_REPORT_GRACE),
            },
            events=[
                NewEvent(EventType.ERROR, reason),
                NewEvent(EventType.FAILED, "Lab spawn failed", terminal=True),
            ],
        )
        self._metrics.spawn_failures.labels(cause).inc()
        self._alerts.alert(
            AlertKind.SPAWN_FAILED,
            f"Lab spawn failed for {lab.username}",
            username=lab.username,
            lab_id=lab.id,
            detail=reason,
        )
        self._forget_spawn(lab)

    async def _time_out(self, lab: LabRecord) -> None:
        seconds = f"{self._config.timeouts.spawn:g}"
        reason = f"Lab spawn timed out after {seconds} s"
        await self._fail_spawn(lab, Trigger.TIMEOUT, reason, cause="timeout")

    async def _step_starting(self, lab: LabRecord) -> None:
        seen = self._pods.get(lab.id)
        if seen is not None:
            await self._apply_pod(lab, seen)
            return
        await self._store.update(lab.id, {"next_attempt_at": lab.deadline_at})

    def _forget_spawn(self, lab: LabRecord) -> None:
        self._spawning.pop(lab.namespace, None)
        self._progress.pop(lab.id, None)
        self._early.pop(lab.id, None)
        self._queued.pop(lab.id, None)

    # Pods and their events

    async def watch_pods(self, updates: AsyncIterator[PodUpdate]) -> None:
        """Apply pod updates from the watch until it ends or is cancelled.

        Each change is applied in a task of its own, tracked like the steps,
        so that stopping the watch never interrupts a half-written change
        (`stop` lets those tasks finish).  Changes of one lab still apply in
        order: they queue on the lab's lock in the order they arrived.
        """
        async for update in updates:
            previous = self._pods.get(update.lab_id)
            if previous is not None and (previous.phase, previous.deleted) == (
                update.phase,
                update.deleted,
            ):
                continue
            if update.phase == "Pending" and not update.deleted:
                # A pending pod moves no lab along: just remember it.
                self._pods[update.lab_id] = update
                continue
            self._track(self.apply_pod_update(update), name=f"pod-{update.lab_id}")

    def _track(self, coro: Coroutine[Any, Any, Any], *, name: str) -> None:
        task = tasks.spawn(coro, name=name)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        task.add_done_callback(self._report_crash)

    def _report_crash(self, task: asyncio.Task[Any]) -> None:
        """Alert on a step or change that died of an unexpected exception."""
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self._alerts.unexpected(f"task {task.get_name()}", error)

    def remember_pod(self, update: PodUpdate) -> None:
        """Take ``update`` as what the watch saw, unless it saw something already.

        The reconciler passes the pods it listed whose labs needed nothing, so
        that the watch, which starts by replaying every pod, skips them.
        """
        self._pods.setdefault(update.lab_id, update)

    async def apply_pod_update(
        self, update: PodUpdate, *, expected_version: int | None = None
    ) -> bool:
        """Move the lab of ``update`` along with its pod, under its lock.

        Parameters
        ----------
        update
            What the pod looks like now.
        expected_version
            Act only if the lab is still at this version (the reconciler
            passes the version it read before its LISTs).

        Returns
        -------
        bool
            Whether the lab was looked at (not skipped as stale or in flight).
        """
        if update.deleted:
            self._pods.pop(update.lab_id, None)
        else:
            self._pods[update.lab_id] = update
        if expected_version is not None and update.lab_id in self._locks.in_flight:
            return False
        async with self._locks.hold(update.lab_id):
            lab = await self._store.find_lab(update.lab_id)
            if lab is None or (expected_version is not None and lab.version != expected_version):
                return False
            try:
                await self._apply_pod(lab, update)
            except (StaleLabError, InvalidTransitionError):
                self._signals.wake_scheduler()
                return False
        self._signals.notify(update.lab_id)
        return True

    async def _apply_pod(self, lab: LabRecord, pod: PodUpdate) -> None:
        if lab.state is LabState.STARTING:
            await self._apply_to_starting(lab, pod)
        elif lab.state is LabState.RUNNING:
            await self._apply_to_running(lab, pod)

    async def _apply_to_starting(self, lab: LabRecord, pod: PodUpdate) -> None:
        if pod.deleted or pod.phase == "Unknown":
            await self._fail_spawn(lab, Trigger.POD_LOST, _pod_problem(pod), cause="pod_lost")
        elif pod.phase == "Running":
            changes: LabChanges = {"pod_phase": pod.phase, "next_attempt_at": None}
            if lab.internal_url is None:
                # The template names the pod's address, known only now.
                env = lab.spec.get("env", {})
                changes["internal_url"] = internal_url(
                    lab.namespace, env, self._config, pod_ip=pod.pod_ip
                )
            await self._store.transition(
                lab.id,
                Trigger.POD_RUNNING,
                actor=Actor.WATCHER,
                expected_version=lab.version,
                changes=changes,
                events=[
                    NewEvent(
                        EventType.COMPLETE,
                        f"Lab Kubernetes pod started for {lab.username}",
                        terminal=True,
                    )
                ],
            )
            self._forget_spawn(lab)
            self._metrics.spawn_duration.observe((utcnow() - lab.created_at).total_seconds())
            _logger.info("lab running", username=lab.username, lab_id=lab.id)
        elif pod.phase in ("Succeeded", "Failed"):
            await self._fail_spawn(lab, Trigger.FAIL, _pod_problem(pod), cause="pod_failed")

    async def _apply_to_running(self, lab: LabRecord, pod: PodUpdate) -> None:
        if pod.deleted or pod.phase == "Unknown":
            trigger = Trigger.POD_LOST
        elif pod.phase in ("Succeeded", "Failed"):
            trigger = Trigger.POD_EXITED
        else:
            return
        reason = _pod_problem(pod)
        await self._store.transition(
            lab.id,
            trigger,
            actor=Actor.WATCHER,
            reason=reason,
            expected_version=lab.version,
            changes={
                "pod_phase": None if pod.deleted else pod.phase,
                "last_error": reason,
                "next_attempt_at": utcnow() + timedelta(seconds=_REPORT_GRACE),
            },
        )
        _logger.info("lab pod ended", username=lab.username, lab_id=lab.id, reason=reason)
        if trigger is Trigger.POD_LOST:
            self._alerts.alert(
                AlertKind.LAB_VANISHED,
                f"Running lab of {lab.username} vanished",
                username=lab.username,
                lab_id=lab.id,
                detail=reason,
            )

    async def watch_pod_events(self, events: AsyncIterator[PodEvent]) -> None:
        """Turn Kubernetes Events of spawning pods into progress events.

        Events of one lab that arrive while its previous ones are being
        written wait in `_queued` and are written together, in one
        transaction (a pod's first events come in a burst).
        """
        async for event in events:
            lab_id = self._spawning.get(event.namespace)
            if lab_id is None:
                continue
            queued = self._queued[lab_id]
            queued.append(event)
            if len(queued) == 1:
                self._track(self._apply_pod_events(lab_id), name=f"event-{lab_id}")

    async def _apply_pod_events(self, lab_id: str) -> None:
        async with self._locks.hold(lab_id):
            events = self._queued.pop(lab_id, [])
            if not events or self._spawning.get(events[0].namespace) != lab_id:
                return  # The spawn ended while the events waited for the lock.
            if lab_id in self._progress:
                # The objects exist, so the lab is starting, unless another
                # writer moved it meanwhile: the store checks that.
                await self._record_pod_events(lab_id, events, in_state=LabState.STARTING)
                return
            lab = await self._store.find_lab(lab_id)
            if lab is None:
                return
            if lab.state is LabState.CREATING:
                # Keep progress in order: after "Created Kubernetes objects".
                self._early[lab.id].extend(events)
            elif lab.state is LabState.STARTING:
                await self._record_pod_events(lab_id, events, operation_of=lab)

    async def _record_pod_events(
        self,
        lab_id: str,
        events: list[PodEvent],
        *,
        in_state: LabState | None = None,
        operation_of: LabRecord | None = None,
    ) -> None:
        """Append ``events`` as progress, continuing from the last progress seen."""
        progress = self._progress.get(lab_id)
        if progress is None and operation_of is not None:
            stored = await self._store.events(lab_id, operation_of.operation)
            progress = max((e.progress or 0 for e in stored), default=None)
        new = []
        for event in events:
            progress = next_progress(progress)
            new.append(NewEvent(EventType.INFO, event.message, progress))
        if await self._store.add_events(lab_id, new, in_state=in_state):
            self._progress[lab_id] = new[-1].progress or 0
            self._signals.notify(lab_id)

    # Deleting

    async def _step_deleting(self, lab: LabRecord) -> None:
        if lab.deadline_at is not None and utcnow() >= lab.deadline_at:
            await self._delete_failed(
                lab, f"Lab delete timed out after {self._config.timeouts.delete:g} s"
            )
            return
        recorded = {e.progress: e for e in await self._store.events(lab.id, lab.operation)}
        steps: list[NewEvent] = []
        try:
            # Each progress step is recorded once its delete was accepted
            # (both deletes are idempotent), so a later pass (or a restart)
            # goes on from there.
            if 25 in recorded:
                asked = recorded[25].created_at
            else:
                await self._kube.delete_pod(
                    lab.namespace,
                    pod_name(lab.slug),
                    grace_seconds=self._config.lab.pod_delete_grace,
                )
                asked = utcnow()
                steps.append(NewEvent(EventType.INFO, "Shutting down Kubernetes pod", 25))
            if 62 in recorded:
                gone = await self._kube.namespace_gone(lab.namespace)
            elif await self._pod_released(lab, asked):
                await self._kube.delete_namespace(lab.namespace)
                steps.append(NewEvent(EventType.INFO, "Deleting user namespace", 62))
                gone = await self._kube.namespace_gone(lab.namespace)
            else:
                gone = False
        except KubeError as exc:
            if steps:
                await self._emit(lab, *steps)
            attempts = lab.attempts + 1
            _logger.warning(
                "delete step failed, will retry",
                username=lab.username,
                lab_id=lab.id,
                error=str(exc),
                attempts=attempts,
            )
            await self._store.update(
                lab.id,
                {
                    "attempts": attempts,
                    "last_error": str(exc),
                    "next_attempt_at": utcnow() + self._backoff(attempts),
                },
            )
            return
        if steps:
            await self._emit(lab, *steps)
        if not gone:
            polls = lab.attempts + 1
            pause = min(_DELETE_POLL[0] * 1.5**polls, _DELETE_POLL[1])
            await self._store.update(
                lab.id,
                {"attempts": polls, "next_attempt_at": utcnow() + timedelta(seconds=pause)},
            )
            return
        await self._store.transition(
            lab.id,
            Trigger.DELETED,
            actor=Actor.SCHEDULER,
            expected_version=lab.version,
            changes={"next_attempt_at": None, "pod_phase": None, "internal_url": None},
            events=[
                NewEvent(EventType.INFO, f"Lab for {lab.username} deleted", 100, terminal=True)
            ],
        )
        self._pods.pop(lab.id, None)
        self._forget_spawn(lab)
        if lab.deadline_at is not None:
            started = lab.deadline_at - timedelta(seconds=self._config.timeouts.delete)
            self._metrics.delete_duration.observe((utcnow() - started).total_seconds())
        _logger.info("lab deleted", username=lab.username, lab_id=lab.id)

    async def _pod_released(self, lab: LabRecord, asked: datetime) -> bool:
        """Whether the lab's namespace may be deleted: its pod is gone, or overdue.

        A namespace deleted while its pod still terminates makes the
        namespace controller fail and retry with a back-off per namespace
        name, which every lab of the user reuses: deletes of 88 s instead of
        6 were seen on a real node. A pod that outlives its grace period by
        far (its node is gone, say) no longer holds the namespace back.
        """
        waited = (utcnow() - asked).total_seconds()
        if waited > self._config.lab.pod_delete_grace + _POD_GONE_WAIT:
            return True
        return await self._kube.pod_gone(lab.namespace, pod_name(lab.slug))

    async def _emit(self, lab: LabRecord, *events: NewEvent) -> None:
        await self._store.add_events(lab.id, events)
        self._signals.notify(lab.id)

    async def _delete_failed(self, lab: LabRecord, reason: str) -> None:
        retry = utcnow() + timedelta(seconds=self._config.retry.maximum)
        try:
            await self._store.transition(
                lab.id,
                Trigger.DELETE_FAILED,
                actor=Actor.SCHEDULER,
                reason=reason,
                expected_version=lab.version,
                changes={"last_error": reason, "next_attempt_at": retry},
                events=[
                    NewEvent(EventType.ERROR, reason),
                    NewEvent(EventType.FAILED, "Lab delete failed", terminal=True),
                ],
            )
        except LabExistsError:
            # The user already has a new lab: this one stays "deleting" (it
            # may not become the user's current lab again) and keeps trying.
            await self._store.update(lab.id, {"last_error": reason, "next_attempt_at": retry})
        self._metrics.delete_failures.inc()
        self._alerts.alert(
            AlertKind.DELETE_FAILED,
            f"Lab delete failed for {lab.username}",
            username=lab.username,
            lab_id=lab.id,
            detail=reason,
        )
        _logger.error("lab delete failed", username=lab.username, lab_id=lab.id, reason=reason)

    async def _step_clean_up(self, lab: LabRecord) -> None:
        changes: LabChanges = {
            "deadline_at": utcnow() + timedelta(seconds=self._config.timeouts.delete),
            "attempts": 0,
            "next_attempt_at": utcnow(),
            "internal_url": None,
        }
        lab = await self._store.transition(
            lab.id,
            Trigger.CLEANUP,
            actor=Actor.SCHEDULER,
            reason=f"Cleaning up {lab.state.value} lab",
            expected_version=lab.version,
            new_operation=True,
            changes=changes,
        )
        await self._step_deleting(lab)

    def _backoff(self, attempts: int) -> timedelta:
        retry = self._config.retry
        delay = min(retry.initial * 2 ** (attempts - 1), retry.maximum)
        return timedelta(seconds=delay * random.uniform(0.8, 1.2))


def _pod_problem(pod: PodUpdate) -> str:
    if pod.deleted:
        return "Lab pod vanished"
    detail = ": ".join(part for part in (pod.reason, pod.message) if part)
    text = f"Lab pod {pod.phase.lower()}"
    return f"{text}: {detail}" if detail else text
