"""The step of each lab state: one idempotent move toward what was asked.

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
    Delete the pod; once it is gone, the namespace; then wait for the
    namespace to be gone.  The pod and namespace watches say when (through
    `LabSteps.continue_delete`); a slow recheck covers what they miss.
    Where this process's own watches will say so (on SQLite, and on the
    leader on PostgreSQL), the steps taken are kept in memory for a second
    and written with ``deleted`` if the namespace is gone by then, each
    with its own time: one write of three.  A crash meanwhile loses nothing
    the lease does not bring back (both deletes are idempotent).
``failed``, ``exited``
    Clean up (``cleanup``), a while after the hub could see how it ended.

Where an operation has got to is kept as named steps among its progress
events (`labd.lab.progress.Step`), so a later pass, a restart or another
replica goes on from there.  The pod watch's changes apply here too
(`LabSteps.apply_pod`), under the same per-lab lock as the steps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Final, Literal

import structlog

from labd.alerts import AlertKind, Alerts
from labd.config import Config
from labd.control.state import ControlState, DeleteSteps
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
from labd.lab.machine import SPAWNING_STATES, LabState, Trigger
from labd.lab.metrics import Metrics
from labd.lab.progress import Step, next_pod_event_progress
from labd.lab.records import Actor, EventType, LabChanges, LabRecord, NewEvent, utcnow
from labd.lab.signals import LabSignals

__all__ = ["LabSteps"]

_logger = structlog.get_logger()

_REPORT_GRACE: Final = 60.0
"""Seconds a failed or exited lab stays visible before labd cleans it up.

The hub's poll sees it as failed or terminated within this time; a poll
cleans it up at once (see `LabService.get_state`)."""

_DELETE_RECHECK: Final = 10.0
"""Seconds after which a delete the watches did not move along is looked at again."""

_STEPS_KEPT: Final = 1.0
"""Seconds a delete's steps wait to be written with its end (SQLite)."""

_POD_GONE_WAIT: Final = 60.0
"""Seconds past its grace period that a deleted pod may hold its namespace's deletion."""

_WAIT_PREVIOUS: Final = 0.5
"""Pause between checks that a user's previous lab is gone."""


class LabSteps:
    """Runs the step of a lab's state, and applies pod changes to labs.

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
    state
        What the loop, the steps and the watch intake share.
    metrics
        Where durations, failures and steps are counted.
    alerts
        Where failed spawns and deletes and vanished labs are reported.
    """

    def __init__(
        self,
        *,
        config: Config,
        store: LabStore,
        signals: LabSignals,
        kube: LabKube,
        state: ControlState,
        metrics: Metrics,
        alerts: Alerts,
    ) -> None:
        self._config = config
        self._store = store
        self._signals = signals
        self._kube = kube
        self._state = state
        self._metrics = metrics
        self._alerts = alerts

    async def step(self, lab: LabRecord | None) -> None:
        """Run the step of ``lab``'s state (a spawn past its deadline times out)."""
        if lab is None:
            return
        step = self._steps().get(lab.state)
        if step is None:
            await self._store.update(lab.id, {"next_attempt_at": None})
            return
        if lab.state in SPAWNING_STATES and lab.deadline_at and utcnow() >= lab.deadline_at:
            await self._time_out(lab)
            return
        _logger.debug("step", username=lab.username, lab_id=lab.id, state=lab.state.value)
        self._metrics.steps.labels(lab.state.value).inc()
        await step(lab)

    def _steps(self) -> dict[LabState, Callable[[LabRecord], Awaitable[None]]]:
        return {
            LabState.REQUESTED: self._requested,
            LabState.CREATING: self._creating,
            LabState.STARTING: self._starting,
            LabState.DELETING: self._deleting,
            LabState.FAILED: self._clean_up,
            LabState.EXITED: self._clean_up,
        }

    # Spawning

    async def _requested(self, lab: LabRecord) -> None:
        previous_id = lab.spec.previous_lab
        if previous_id is not None and not await self._previous_gone(lab, previous_id):
            await self._store.update(
                lab.id, {"next_attempt_at": utcnow() + timedelta(seconds=_WAIT_PREVIOUS)}
            )
            return
        lab = await self._store.transition(
            lab.id,
            Trigger.START,
            actor=Actor.SCHEDULER,
            expected=lab,
            # ``next_attempt_at`` keeps the claim's lease while this step
            # creates the objects: a lab due now would be claimed by a
            # replica woken by ``labd_lab_due``.
        )
        await self._creating(lab)

    async def _previous_gone(self, lab: LabRecord, previous_id: str) -> bool:
        """Mirror the previous lab's delete as steps of this spawn (docs/api.md)."""
        previous = await self._store.get_lab(previous_id)
        seen = {e.step for e in await self._store.events(lab.id, lab.operation)}
        reached = {e.step for e in await self._store.events(previous.id, previous.operation)}
        gone = previous.state is LabState.DELETED
        mirrored = [
            (Step.PREVIOUS_DELETING, True),
            (Step.PREVIOUS_POD_STOPPING, gone or Step.POD_STOPPING in reached),
            (Step.PREVIOUS_NAMESPACE_DELETING, gone or Step.NAMESPACE_DELETING in reached),
            (Step.PREVIOUS_DELETED, gone),
        ]
        events = [
            NewEvent.at(step, lab.username) for step, due in mirrored if due and step not in seen
        ]
        if events:
            await self._emit(lab, *events)
        return gone

    async def _creating(self, lab: LabRecord) -> None:
        self._state.spawning[lab.namespace] = lab.id
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
        env = lab.spec.env
        created = NewEvent.at(Step.OBJECTS_CREATED, lab.username)
        lab = await self._store.transition(
            lab.id,
            Trigger.OBJECTS_READY,
            actor=Actor.SCHEDULER,
            expected=lab,
            changes={
                "internal_url": internal_url(lab.namespace, env, self._config),
                "attempts": 0,
                "last_error": None,
                "next_attempt_at": lab.deadline_at,
            },
            events=[created],
        )
        self._state.progress[lab.id] = created.progress or 0
        self._signals.notify(lab.id)
        early = self._state.early.pop(lab.id, [])
        if early:
            await self.record_pod_events(lab.id, early)
        seen = self._state.pods.get(lab.id)
        if seen is not None:
            await self.apply_pod(lab, seen)

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
        if error.retryable and lab.attempts + 1 < self._config.retry.spawn_attempts:
            await self._retry_later(lab, "spawn step failed, will retry", error)
            return
        _logger.error("spawn failed", username=lab.username, lab_id=lab.id, error=str(error))
        await self._fail_spawn(lab, Trigger.FAIL, str(error), cause="kubernetes")

    async def _fail_spawn(
        self, lab: LabRecord, trigger: Trigger, reason: str, *, cause: str
    ) -> None:
        await self._store.transition(
            lab.id,
            trigger,
            actor=Actor.SCHEDULER,
            reason=reason,
            expected=lab,
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
        self._state.forget_spawn(lab)

    async def _time_out(self, lab: LabRecord) -> None:
        seconds = f"{self._config.timeouts.spawn:g}"
        reason = f"Lab spawn timed out after {seconds} s"
        await self._fail_spawn(lab, Trigger.TIMEOUT, reason, cause="timeout")

    async def _starting(self, lab: LabRecord) -> None:
        seen = self._state.pods.get(lab.id)
        if seen is not None:
            await self.apply_pod(lab, seen)
            return
        await self._store.update(lab.id, {"next_attempt_at": lab.deadline_at})

    # Pods and their events

    async def apply_pod(self, lab: LabRecord, pod: PodUpdate) -> None:
        """Move ``lab`` along with what its pod now looks like (the caller holds its lock)."""
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
                env = lab.spec.env
                changes["internal_url"] = internal_url(
                    lab.namespace, env, self._config, pod_ip=pod.pod_ip
                )
            await self._store.transition(
                lab.id,
                Trigger.POD_RUNNING,
                actor=Actor.WATCHER,
                expected=lab,
                changes=changes,
                events=[
                    NewEvent.at(Step.STARTED, lab.username, type=EventType.COMPLETE, terminal=True)
                ],
            )
            self._state.forget_spawn(lab)
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
            expected=lab,
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

    async def record_pod_events(
        self,
        lab_id: str,
        events: list[PodEvent],
        *,
        in_state: LabState | None = None,
        operation_of: LabRecord | None = None,
    ) -> None:
        """Append Kubernetes Events as progress, continuing from the last progress seen."""
        progress = self._state.progress.get(lab_id)
        if progress is None and operation_of is not None:
            stored = await self._store.events(lab_id, operation_of.operation)
            progress = max((e.progress or 0 for e in stored), default=None)
        new = []
        for event in events:
            progress = next_pod_event_progress(progress)
            new.append(NewEvent(EventType.INFO, event.message, progress, step=Step.POD_EVENT))
        if await self._store.add_events(lab_id, new, in_state=in_state):
            self._state.progress[lab_id] = new[-1].progress or 0
            self._signals.notify(lab_id)

    # Deleting

    async def _deleting(self, lab: LabRecord) -> None:
        if lab.deadline_at is not None and utcnow() >= lab.deadline_at:
            kept = self._state.delete_steps.get(lab.id)
            if kept is not None and kept.operation == lab.operation and kept.kept:
                await self._emit(lab, *kept.kept)
            self._state.forget_delete(lab.id, lab.namespace)
            await self._delete_failed(
                lab, f"Lab delete timed out after {self._config.timeouts.delete:g} s"
            )
            return
        # From now on the pod and namespace watches call `continue_delete`
        # when either goes away: no poll per lab.
        self._state.deleting[lab.namespace] = lab.id
        recorded = await self._delete_steps(lab)
        steps: list[NewEvent] = []
        try:
            # Each step is recorded once its delete was accepted (both deletes
            # are idempotent), so a later pass (or a restart) goes on from there.
            released = recorded.pod_gone
            asked = recorded.reached.get(Step.POD_STOPPING)
            if asked is None:
                # A pod that takes its grace period: the pod watch says when
                # it is gone (asking right away would only find it there).
                released = await self._kube.delete_pod(
                    lab.namespace,
                    pod_name(lab.slug),
                    grace_seconds=self._config.lab.pod_delete_grace,
                )
                steps.append(NewEvent.at(Step.POD_STOPPING, lab.username))
            if Step.NAMESPACE_DELETING in recorded.reached:
                gone = recorded.namespace_gone or await self._kube.namespace_gone(lab.namespace)
            elif released or (asked is not None and await self._pod_released(lab, asked)):
                gone = await self._kube.delete_namespace(lab.namespace)
                steps.append(NewEvent.at(Step.NAMESPACE_DELETING, lab.username))
            else:
                gone = False
        except KubeError as exc:
            if steps or recorded.kept:
                await self._emit(lab, *recorded.kept, *steps)
                recorded.kept = []
                recorded.add(steps)
            recorded.row = None  # The retry's bookkeeping is read back.
            await self._retry_later(lab, "delete step failed, will retry", exc)
            return
        if not gone and steps and (self._signals.sole_writer or self._state.watching):
            # The watches move the lab along.  Where they run in this
            # process, its steps wait here to be written with the transition
            # to deleted: one write of three, when the namespace goes within
            # `_STEPS_KEPT` (a restart meanwhile takes the steps again, from
            # the lease).  Elsewhere the leader's intake wakes the delete by
            # its recorded ``namespace_deleting`` step (`LabStore.wake_deleting`),
            # so the steps are written at once.
            recorded.keep(steps)
            recorded.row = lab
            self._state.track(
                self._write_kept_steps(lab.id, recorded), name=f"delete-steps-{lab.id}"
            )
            return
        if not gone:
            await self._record_steps(lab.id, recorded, steps)
            return
        await self._store.transition(
            lab.id,
            Trigger.DELETED,
            actor=Actor.SCHEDULER,
            expected=lab,
            changes={"next_attempt_at": None, "pod_phase": None, "internal_url": None},
            events=[
                *recorded.kept,
                *steps,
                NewEvent.at(Step.DELETED, lab.username, terminal=True),
            ],
        )
        self._state.forget_delete(lab.id, lab.namespace)
        self._state.pods.pop(lab.id, None)
        self._state.forget_spawn(lab)
        if lab.deadline_at is not None:
            started = lab.deadline_at - timedelta(seconds=self._config.timeouts.delete)
            self._metrics.delete_duration.observe((utcnow() - started).total_seconds())
        _logger.info("lab deleted", username=lab.username, lab_id=lab.id)

    async def _write_kept_steps(self, lab_id: str, recorded: DeleteSteps) -> None:
        """Write the delete's kept steps, with its recheck, unless it ended meanwhile.

        Only onto the row the steps were taken on (its version): on
        PostgreSQL another replica may have ended the delete meanwhile (this
        one lost its lease, or its leadership).
        """
        await asyncio.sleep(_STEPS_KEPT)
        async with self._state.locks.hold(lab_id):
            row = recorded.row
            if self._state.delete_steps.get(lab_id) is not recorded or not recorded.kept:
                return
            try:
                await self._record_steps(
                    lab_id, recorded, version=row.version if row is not None else None
                )
            except StaleLabError:
                if row is not None:
                    self._state.forget_delete(lab_id, row.namespace)
                self._signals.wake_scheduler()
                return
            self._signals.notify(lab_id)

    async def _record_steps(
        self,
        lab_id: str,
        recorded: DeleteSteps,
        steps: list[NewEvent] | None = None,
        *,
        version: int | None = None,
    ) -> None:
        """Write the delete's kept steps and ``steps``, with its recheck.

        The recheck is for a change the watches missed (a watch reconnecting,
        another replica's watch).  With ``version``, only onto that version.
        """
        steps = steps or []
        recheck = utcnow() + timedelta(seconds=_DELETE_RECHECK)
        recorded.row = await self._store.update(
            lab_id,
            {"next_attempt_at": recheck},
            expected_version=version,
            events=[*recorded.kept, *steps],
        )
        recorded.kept = []
        recorded.add(steps)

    async def continue_delete(
        self, lab_id: str, namespace: str, *, gone: Literal["pod", "namespace"]
    ) -> None:
        """Take the delete of ``lab_id`` on, now that its pod or namespace is ``gone``.

        The watches call this (the caller holds the lab's lock); a lab no
        longer being deleted is left alone.  The step takes the watch's word
        for what is gone rather than asking the API server again.  A lab's
        next namespace is made only once this lab is deleted (its spec's
        ``previous_lab``), and a deleted pod of a deleting lab is not made
        again, so what the watch saw gone stays gone.
        """
        kept = self._state.delete_steps.get(lab_id)
        if gone == "pod" and kept is not None and Step.NAMESPACE_DELETING in kept.reached:
            return  # Nothing waited for the pod: the namespace watch ends the delete.
        if kept is not None and kept.row is not None:
            # The row this process wrote last.  While its steps hold the lab's
            # lease no other process steps it; were the row stale all the
            # same, the version check of the next transition would say so.
            lab: LabRecord | None = kept.row
        else:
            lab = await self._store.find_lab(lab_id)
        if lab is None or lab.state is not LabState.DELETING:
            self._state.forget_delete(lab_id, namespace)
            return
        recorded = await self._delete_steps(lab)
        if gone == "pod":
            recorded.pod_gone = True
        else:
            recorded.namespace_gone = True
        await self.step(lab)

    async def _delete_steps(self, lab: LabRecord) -> DeleteSteps:
        """The steps of the lab's delete recorded so far: kept here, else read."""
        kept = self._state.delete_steps.get(lab.id)
        if kept is None or kept.operation != lab.operation:
            if self._signals.take_begun(lab):
                kept = DeleteSteps(lab.operation)  # Begun here: nothing recorded yet.
            else:
                events = await self._store.events(lab.id, lab.operation)
                reached = {e.step: e.created_at for e in events if e.step}
                kept = DeleteSteps(lab.operation, reached)
            self._state.delete_steps[lab.id] = kept
        return kept

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
                expected=lab,
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

    async def _clean_up(self, lab: LabRecord) -> None:
        changes: LabChanges = {
            "deadline_at": utcnow() + timedelta(seconds=self._config.timeouts.delete),
            "attempts": 0,
            # ``next_attempt_at`` keeps the claim's lease, as in `_requested`.
            "internal_url": None,
        }
        lab = await self._store.transition(
            lab.id,
            Trigger.CLEANUP,
            actor=Actor.SCHEDULER,
            reason=f"Cleaning up {lab.state.value} lab",
            expected=lab,
            new_operation=True,
            changes=changes,
        )
        self._state.delete_steps[lab.id] = DeleteSteps(lab.operation)
        await self._deleting(lab)

    async def _retry_later(self, lab: LabRecord, message: str, error: KubeError) -> None:
        """Count a failed attempt and schedule the next after an exponential back-off."""
        attempts = lab.attempts + 1
        _logger.warning(
            message, username=lab.username, lab_id=lab.id, error=str(error), attempts=attempts
        )
        retry = self._config.retry
        delay = min(retry.initial * 2 ** (attempts - 1), retry.maximum)
        await self._store.update(
            lab.id,
            {
                "attempts": attempts,
                "last_error": str(error),
                "next_attempt_at": utcnow() + timedelta(seconds=delay * random.uniform(0.8, 1.2)),
            },
        )


def _pod_problem(pod: PodUpdate) -> str:
    if pod.deleted:
        return "Lab pod vanished"
    detail = ": ".join(part for part in (pod.reason, pod.message) if part)
    text = f"Lab pod {pod.phase.lower()}"
    return f"{text}: {detail}" if detail else text
