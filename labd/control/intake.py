"""The watch intake: pod, namespace and Event changes, turned into lab changes.

One cluster-wide pod watch, one namespace watch and one Event watch feed
every lab: pod phases move spawns and running labs along, a pod or a
namespace gone moves a delete along, and Events become spawn progress.  Each change
is applied in a task of its own under its lab's lock, the same lock the
steps take, so a lab is never worked on twice at once in this process;
changes of one lab still apply in the order they arrived, queued on that
lock.  Writes that lose a race with another process fail their version
check and are re-decided by the next step.

Only the leader watches (`labd.control.leading`), but every replica steps
labs, so the watches also move labs that another replica stepped, whose
namespaces this process's maps (``spawning``, ``deleting``) do not hold;
the rows in SQL say what to do:

* a pod or a namespace gone in the namespace of a ``deleting`` lab makes
  that delete due now (`LabStore.wake_deleting`), once its step recorded
  having asked for the deletion: some replica's scheduler, woken by the
  ``labd_lab_due`` notification, claims it and goes on;
* an Event in a namespace with no spawn of this process is written to the
  lab spawning there in SQL (`LabStore.find_spawning`);
* a pod update is applied to the row as read, whoever stepped it; one that
  finds its lab still ``creating`` (another replica's step has not yet
  written "objects created", and will not know what the pod watch saw) is
  applied again once the lab changes, woken by the lab's ``labd_lab_follow``
  notification.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Coroutine
from typing import Any, Final, Literal

import structlog

from labd import tasks
from labd.control.state import ControlState
from labd.control.steps import LabSteps
from labd.db.store import LabStore, StaleLabError
from labd.kube.watching import PodEvent, PodUpdate
from labd.lab.machine import InvalidTransitionError, LabState
from labd.lab.progress import Step
from labd.lab.records import LabRecord
from labd.lab.signals import LabSignals

__all__ = ["WatchIntake"]

_logger = structlog.get_logger()

_WRITE_WAIT: Final = 10.0
"""Seconds a wake-up waits for another replica's delete step to record its
progress; its own recheck comes after that."""


class WatchIntake:
    """Applies pod updates and spawn progress Events from the watches.

    Parameters
    ----------
    store
        Lab persistence.
    signals
        Wake-ups shared with the service.
    state
        What the loop, the steps and the watch intake share.
    steps
        Where a pod change moves its lab along.
    """

    def __init__(
        self, *, store: LabStore, signals: LabSignals, state: ControlState, steps: LabSteps
    ) -> None:
        self._store = store
        self._signals = signals
        self._state = state
        self._steps = steps
        self._elsewhere: dict[str, list[PodEvent]] = {}
        """Namespace -> Events of a spawn stepped elsewhere, waiting to be written."""
        self._writing: set[str] = set()
        """Namespaces whose Events stepped elsewhere a task is writing."""
        self._following: set[str] = set()
        """Ids of labs whose pod update waits for the lab to leave ``creating``."""
        self._waiting: set[asyncio.Task[Any]] = set()
        """Tasks that wait for other replicas' steps; cancelled with the watches."""

    async def run(
        self,
        *,
        pods: AsyncIterator[PodUpdate],
        events: AsyncIterator[PodEvent],
        namespaces: AsyncIterator[str],
    ) -> None:
        """Apply the three watches until cancelled: the leader's watch duty.

        What waits for other replicas' steps stops with the watches (a
        write it has begun still commits or rolls back whole).  Call
        `forget` before, at the start of each term.
        """
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.watch_pods(pods), name="pod-watch")
                group.create_task(self.watch_pod_events(events), name="event-watch")
                group.create_task(self.watch_namespaces(namespaces), name="namespace-watch")
        finally:
            waiting, self._waiting = list(self._waiting), set()
            await tasks.cancel_and_wait(waiting)
            self._elsewhere.clear()
            self._writing.clear()
            self._following.clear()

    def forget(self) -> None:
        """Forget what the watches saw and whom they report to, before a new term.

        Entries of labs that another replica finished meanwhile would
        otherwise send a later lab's changes to the wrong lab; labs still
        stepped here are found again through SQL.
        """
        self._state.pods.clear()
        self._state.spawning.clear()
        self._state.deleting.clear()

    def _wait_in(self, coro: Coroutine[Any, Any, None], *, name: str) -> None:
        task = tasks.spawn(coro, name=name)
        self._waiting.add(task)
        task.add_done_callback(self._waiting.discard)

    async def watch_pods(self, updates: AsyncIterator[PodUpdate]) -> None:
        """Apply pod updates from the watch until it ends or is cancelled.

        Stopping the watch never interrupts a half-written change: each runs
        in a tracked task, which stopping lets finish.
        """
        pods = self._state.pods
        async for update in updates:
            previous = pods.get(update.lab_id)
            if previous is not None and (previous.phase, previous.deleted) == (
                update.phase,
                update.deleted,
            ):
                continue
            if update.phase == "Pending" and not update.deleted:
                # A pending pod moves no lab along: just remember it.
                pods[update.lab_id] = update
                continue
            if update.deleted and self._state.deleting.get(update.namespace) == update.lab_id:
                # Its lab is being deleted: the namespace can go now.
                pods.pop(update.lab_id, None)
                self._continue_delete(update.lab_id, update.namespace, gone="pod")
                continue
            self._state.track(self.apply_pod_update(update), name=f"pod-{update.lab_id}")

    async def watch_namespaces(self, gone: AsyncIterator[str]) -> None:
        """Finish the deletes of labs whose namespace the watch reports gone."""
        async for namespace in gone:
            self.namespace_gone(namespace)

    def namespace_gone(self, namespace: str) -> None:
        """Finish the delete of the lab in ``namespace``, which is gone."""
        lab_id = self._state.deleting.get(namespace)
        if lab_id is not None:
            self._continue_delete(lab_id, namespace, gone="namespace")
        else:
            self._state.track(self._namespace_gone(namespace), name=f"gone-{namespace}")

    async def _namespace_gone(self, namespace: str) -> None:
        lab_ids = await self._store.deleting_in(namespace)
        if lab_ids:
            await self._wake_delete(namespace, Step.NAMESPACE_DELETING, lab_ids)

    async def _wake_delete(self, namespace: str, reached: Step, lab_ids: list[str]) -> None:
        """Make the delete another replica steps in ``namespace`` due now.

        Its step may not have recorded ``reached`` yet (the pod or the
        namespace went faster than its write): then try again once the lab
        changes, which that write makes it do, or leave it to the step's
        recheck.
        """
        waiters = {lab_id: self._signals.waiter(lab_id) for lab_id in lab_ids}
        if await self._woke(namespace, reached):
            return
        for lab_id, waiter in waiters.items():

            async def once_written(waiter: asyncio.Event = waiter) -> None:
                if await self._signals.wait(waiter, within=_WRITE_WAIT):
                    await self._woke(namespace, reached)

            self._wait_in(once_written(), name=f"wake-{lab_id}")

    async def _woke(self, namespace: str, reached: Step) -> bool:
        woken = await self._store.wake_deleting(namespace, reached=reached)
        for lab_id in woken:
            _logger.debug("woke a delete stepped elsewhere", lab_id=lab_id, reached=reached)
            self._signals.wake_scheduler()
        return bool(woken)

    def _continue_delete(
        self, lab_id: str, namespace: str, *, gone: Literal["pod", "namespace"]
    ) -> None:
        async def under_lock() -> None:
            async with self._state.locks.hold(lab_id):
                try:
                    await self._steps.continue_delete(lab_id, namespace, gone=gone)
                except (StaleLabError, InvalidTransitionError):
                    self._signals.wake_scheduler()
                    return
            self._signals.notify(lab_id)

        self._state.track(under_lock(), name=f"delete-{lab_id}")

    def remember_pod(self, update: PodUpdate) -> None:
        """Take ``update`` as what the watch saw, unless it saw something already.

        The reconciler passes the pods it listed whose labs needed nothing, so
        that the watch, which starts by replaying every pod, skips them.
        """
        self._state.pods.setdefault(update.lab_id, update)

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
            self._state.pods.pop(update.lab_id, None)
        else:
            self._state.pods[update.lab_id] = update
        locks = self._state.locks
        if expected_version is not None and update.lab_id in locks.in_flight:
            return False
        async with locks.hold(update.lab_id):
            lab = await self._store.find_lab(update.lab_id)
            if lab is None or (expected_version is not None and lab.version != expected_version):
                return False
            if lab.state is LabState.DELETING and update.deleted:
                # Not in `deleting`: another replica steps this delete.
                await self._wake_delete(lab.namespace, Step.POD_STOPPING, [lab.id])
                return True
            if lab.state is LabState.CREATING and not update.deleted:
                self._apply_once_created(lab.id)
                return True
            try:
                await self._steps.apply_pod(lab, update)
            except (StaleLabError, InvalidTransitionError):
                self._signals.wake_scheduler()
                return False
        self._signals.notify(update.lab_id)
        return True

    def _apply_once_created(self, lab_id: str) -> None:
        """Apply the pod's latest update once its lab has left ``creating``.

        The step creating the lab's objects checks what the pod watch saw
        when it is done, but a step on another replica sees nothing of this
        process's watch.
        """
        if lab_id in self._following:
            return
        self._following.add(lab_id)

        async def apply() -> None:
            try:
                lab = await self._left_creating(lab_id)
                update = self._state.pods.get(lab_id)
                if lab is not None and update is not None:
                    await self.apply_pod_update(update)
            finally:
                self._following.discard(lab_id)

        self._wait_in(apply(), name=f"created-{lab_id}")

    async def _left_creating(self, lab_id: str) -> LabRecord | None:
        """Wait until the lab is no longer ``creating``; return it then."""
        while True:
            waiter = self._signals.waiter(lab_id)
            lab = await self._store.find_lab(lab_id)
            if lab is None or lab.state is not LabState.CREATING:
                return lab
            await self._signals.wait(waiter, within=self._signals.follow_interval)

    async def watch_pod_events(self, events: AsyncIterator[PodEvent]) -> None:
        """Turn Kubernetes Events of spawning pods into progress events.

        Events of one lab that arrive while its previous ones are being
        written wait in ``queued`` and are written together, in one
        transaction (a pod's first events come in a burst).
        """
        async for event in events:
            lab_id = self._state.spawning.get(event.namespace)
            if lab_id is None:
                self._write_elsewhere([event])
                continue
            queued = self._state.queued[lab_id]
            queued.append(event)
            if len(queued) == 1:
                self._state.track(self._apply_pod_events(lab_id), name=f"event-{lab_id}")

    async def _apply_pod_events(self, lab_id: str) -> None:
        state = self._state
        async with state.locks.hold(lab_id):
            events = state.queued.pop(lab_id, [])
            if not events or state.spawning.get(events[0].namespace) != lab_id:
                return  # The spawn ended while the events waited for the lock.
            if lab_id in state.progress:
                # The objects exist, so the lab is starting, unless another
                # writer moved it meanwhile: the store checks that.
                await self._steps.record_pod_events(lab_id, events, in_state=LabState.STARTING)
                return
            lab = await self._store.find_lab(lab_id)
            if lab is None:
                return
            if lab.state is LabState.CREATING and lab.id in state.locks.in_flight:
                # Keep progress in order: after "Created Kubernetes objects",
                # which our step writes and then these.
                state.early[lab.id].extend(events)
            elif lab.state is LabState.CREATING:
                # No step of ours will write them (another replica's will
                # write "objects created", or ours after a retry's wait).
                self._write_elsewhere(events)
            elif lab.state is LabState.STARTING:
                await self._steps.record_pod_events(lab_id, events, operation_of=lab)
            else:
                # This spawn ended on another replica: the namespace may
                # hold a newer one.
                if state.spawning.get(events[0].namespace) == lab_id:
                    del state.spawning[events[0].namespace]
                self._write_elsewhere(events)

    def _write_elsewhere(self, events: list[PodEvent]) -> None:
        """Queue Events of a spawn that this process does not step, and write them."""
        namespace = events[0].namespace
        self._elsewhere.setdefault(namespace, []).extend(events)
        if namespace not in self._writing:
            self._writing.add(namespace)
            self._wait_in(self._write_queued(namespace), name=f"events-{namespace}")

    async def _write_queued(self, namespace: str) -> None:
        try:
            while events := self._elsewhere.pop(namespace, None):
                lab = await self._store.find_spawning(namespace)
                if lab is not None and lab.state is LabState.CREATING:
                    # After its "Created Kubernetes objects", as for our own.
                    lab = await self._left_creating(lab.id)
                if lab is None or lab.state is not LabState.STARTING:
                    continue  # No spawn there (any more): the Events are stale.
                async with self._state.locks.hold(lab.id):
                    await self._steps.record_pod_events(
                        lab.id, events, in_state=LabState.STARTING, operation_of=lab
                    )
                # The progress is read from SQL each time: another replica
                # may write this lab's progress too.
                self._state.progress.pop(lab.id, None)
        finally:
            self._writing.discard(namespace)
            self._elsewhere.pop(namespace, None)
