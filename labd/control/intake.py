"""The watch intake: pod, namespace and Event changes, turned into lab changes.

One cluster-wide pod watch, one namespace watch and one Event watch feed
every lab: pod phases move spawns and running labs along, a pod or a
namespace gone moves a delete along, and Events become spawn progress.  Each change
is applied in a task of its own under its lab's lock, the same lock the
steps take, so a lab is never worked on twice at once in this process;
changes of one lab still apply in the order they arrived, queued on that
lock.  Writes that lose a race with another process fail their version
check and are re-decided by the next step.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from labd.control.state import ControlState
from labd.control.steps import LabSteps
from labd.db.store import LabStore, StaleLabError
from labd.kube.watching import PodEvent, PodUpdate
from labd.lab.machine import InvalidTransitionError, LabState
from labd.lab.signals import LabSignals

__all__ = ["WatchIntake"]


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
                self._continue_delete(update.lab_id, update.namespace)
                continue
            self._state.track(self.apply_pod_update(update), name=f"pod-{update.lab_id}")

    async def watch_namespaces(self, gone: AsyncIterator[str]) -> None:
        """Finish the deletes of labs whose namespace the watch reports gone."""
        async for namespace in gone:
            lab_id = self._state.deleting.get(namespace)
            if lab_id is not None:
                self._continue_delete(lab_id, namespace)

    def _continue_delete(self, lab_id: str, namespace: str) -> None:
        async def under_lock() -> None:
            async with self._state.locks.hold(lab_id):
                try:
                    await self._steps.continue_delete(lab_id, namespace)
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
            try:
                await self._steps.apply_pod(lab, update)
            except (StaleLabError, InvalidTransitionError):
                self._signals.wake_scheduler()
                return False
        self._signals.notify(update.lab_id)
        return True

    async def watch_pod_events(self, events: AsyncIterator[PodEvent]) -> None:
        """Turn Kubernetes Events of spawning pods into progress events.

        Events of one lab that arrive while its previous ones are being
        written wait in ``queued`` and are written together, in one
        transaction (a pod's first events come in a burst).
        """
        async for event in events:
            lab_id = self._state.spawning.get(event.namespace)
            if lab_id is None:
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
            if lab.state is LabState.CREATING:
                # Keep progress in order: after "Created Kubernetes objects".
                state.early[lab.id].extend(events)
            elif lab.state is LabState.STARTING:
                await self._steps.record_pod_events(lab_id, events, operation_of=lab)
