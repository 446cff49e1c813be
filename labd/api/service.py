"""The lab service: what the API asks of labd, decided and recorded.

The service validates a request against the configuration, records the
intent in SQL (a ``requested`` row, a ``delete`` transition) with its first
progress events, wakes the scheduler and returns.  It never calls
Kubernetes: the scheduler does that work from the rows, so an intent
accepted here survives a crash.

Status reads come from `labd.db.status.StatusCache`, which falls back to SQL.
Event streams replay the stored events of the lab's current operation and
then follow new ones as writers signal them.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, TypeVar

import structlog

from labd.config import Config, SizeConfig, UserConfig
from labd.db.status import LabStatus, StatusCache
from labd.db.store import LabExistsError, LabStore, StaleLabError
from labd.images.catalog import ImageCatalog, ImageChoice
from labd.kube.builder import OWN_ENV
from labd.lab.errors import (
    DeleteFailedError,
    InsufficientQuotaError,
    InvalidLabSizeError,
    InvalidRequestError,
    InvalidUsernameError,
    LabExistsConflictError,
    NotReadyError,
    OperationInProgressError,
    PermissionDeniedError,
    UnknownUserError,
)
from labd.lab.machine import SPAWNING_STATES, InvalidTransitionError, LabState, Trigger
from labd.lab.metrics import Metrics
from labd.lab.naming import lab_namespace, username_problem
from labd.lab.progress import Step
from labd.lab.protocol import LabSpecification, LabStateModel, UserInfo, UserQuota
from labd.lab.records import (
    Actor,
    EventRecord,
    EventType,
    LabRecord,
    NewEvent,
    TransitionRecord,
    utcnow,
)
from labd.lab.secrecy import is_secret_name
from labd.lab.signals import STEP_LEASE, LabSignals
from labd.lab.spec import LabSpec, SpecGroup, SpecUser

__all__ = ["FormChoices", "LabService", "spawn_cancelled_event"]

_logger = structlog.get_logger()

_PROCESS_ENV = re.compile(r"HOME|PYTHONHOME|LD_[A-Z0-9_]*")
"""Variables that steer how the lab's process starts: the image sets them."""
_HUB_PROCESS_ENV: Final = frozenset(
    {"PATH", "PYTHONPATH", "CONDA_ROOT", "CONDA_DEFAULT_ENV", "VIRTUAL_ENV"}
)
"""What JupyterHub's default ``env_keep`` copies from the hub's own process:
it describes the hub's machine, not the lab's image, so labd drops it."""
_USER_VAR: Final = "JUPYTERHUB_USER"
_T = TypeVar("_T")


def spawn_cancelled_event() -> NewEvent:
    """The event that ends a spawn cancelled by a delete (docs/api.md)."""
    return NewEvent(EventType.FAILED, "Operation cancelled", terminal=True)


def _being_deleted(lab: LabRecord) -> bool:
    return lab.state is LabState.DELETING


def _cancelled_spawn(lab: LabRecord) -> list[NewEvent]:
    """The event that ends the spawn a delete interrupts, if it does."""
    return [spawn_cancelled_event()] if lab.state in SPAWNING_STATES else []


@dataclass(frozen=True, slots=True)
class FormChoices:
    """What the spawn form offers a user."""

    username: str
    """Whose form."""

    images: ImageChoice
    """Featured images and the full list."""

    sizes: dict[str, SizeConfig]
    """Sizes within the user's quota, by name."""

    default_size: str | None
    """The size selected by default, if it fits the quota."""

    spawn_allowed: bool
    """Whether the user may spawn at all."""


class LabService:
    """Create, delete and report labs.

    Parameters
    ----------
    config
        labd's configuration.
    store
        Lab persistence.
    signals
        Wake-ups shared with the scheduler.
    images
        Resolves the image a request names.
    metrics
        Counts open event streams.
    status
        Answers status reads; by default straight from SQL (`labd.daemon.factory`
        builds a cache kept coherent with every writer).
    """

    def __init__(
        self,
        *,
        config: Config,
        store: LabStore,
        signals: LabSignals,
        images: ImageCatalog,
        metrics: Metrics | None = None,
        status: StatusCache | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics or Metrics()
        self._store = store
        self._signals = signals
        self._images = images
        self._status = StatusCache(store, enabled=False) if status is None else status
        self._stopping = False

    async def create(self, username: str, spec: LabSpecification, *, actor: Actor) -> LabRecord:
        """Accept a spawn: validate it and record a ``requested`` lab.

        If the user's previous lab failed or exited, it is cleaned up first,
        as part of this spawn (the scheduler waits for it).

        Raises
        ------
        LabdError
            ``invalid_username``, ``permission_denied`` (spawning not
            allowed), ``invalid_lab_size``, ``insufficient_quota``,
            ``unknown_image``, ``lab_exists``, ``operation_in_progress``.
        """
        check_username(username)
        if spec.user is not None and actor is not Actor.HUB:
            raise PermissionDeniedError(
                "Only the hub may send a user's identity and quota", loc=["body", "user"]
            )
        user, quota = self._identity(username, spec.user)
        if not quota.spawn:
            raise PermissionDeniedError(f"Spawning labs is not permitted for {username}")
        size = self._size(spec.options.size)
        _check_quota(spec.options.size, size, quota)
        env = self._lab_env(username, spec.env)
        image = self._images.resolve(*spec.options.image_choice())
        secret_env = {k: v for k, v in env.items() if is_secret_name(k)}
        previous = await self._make_room(username, actor)
        lab_spec = LabSpec.new(
            spec,
            image=image.reference,
            size=size,
            user=user,
            quota=quota,
            env=env,
            previous_lab=previous,
        )
        slug, namespace = lab_namespace(self._config.namespace_prefix, username)
        handed = self._signals.taking_over
        try:
            lab = await self._store.create_lab(
                username=username,
                slug=slug,
                namespace=namespace,
                spec=lab_spec,
                actor=actor,
                reason="Lab requested",
                changes={
                    "secret_env": secret_env,
                    "deadline_at": utcnow() + timedelta(seconds=self._config.timeouts.spawn),
                    "next_attempt_at": _first_step_at(handed=handed),
                },
                events=[NewEvent.at(Step.REQUESTED, username)],
            )
        except LabExistsError as exc:
            raise LabExistsConflictError(f"Lab already exists for {username}") from exc
        _logger.info("lab requested", username=username, lab_id=lab.id, image=image.reference)
        self._step_soon(lab, handed=handed)
        return lab

    async def delete(self, username: str, *, actor: Actor) -> None:
        """Delete the user's lab and return once its objects are gone.

        Raises
        ------
        UnknownUserError
            If the user has no lab.
        DeleteFailedError
            If the delete failed or timed out (labd keeps retrying).
        """
        with contextlib.ExitStack() as following:
            # Follow the lab from before the delete's own write, so that on
            # SQLite the waiting needs no read of it at all.
            lab = await self._request_delete(username, actor=actor, following=following)
            await self._wait_for_delete(lab)

    async def request_delete(self, username: str, *, actor: Actor) -> LabRecord:
        """Record the intent to delete the user's lab; return the lab.

        A delete already in progress is joined.  A spawn in progress is
        cancelled: its event stream ends with ``failed "Operation
        cancelled"``.

        Raises
        ------
        UnknownUserError
            If the user has no lab.
        """
        return await self._request_delete(username, actor=actor)

    async def _request_delete(
        self, username: str, *, actor: Actor, following: contextlib.ExitStack | None = None
    ) -> LabRecord:
        check_username(username)
        handed = self._signals.taking_over
        # The lab is read in the delete's own write: no read before it, and
        # no version that another writer could make stale in between.
        found = await self._store.transition_current(
            username,
            Trigger.DELETE,
            actor=actor,
            reason="Delete requested",
            new_operation=True,
            changes=self._delete_changes(handed=handed),
            unless=_being_deleted,
            final_events=_cancelled_spawn,
        )
        if found is None:
            raise UnknownUserError(f"Unknown user {username}", loc=["path", "username"])
        lab, moved = found
        if following is not None:
            # Before any other write of the lab is heard: on SQLite the
            # waiting then needs no read of it at all.
            following.enter_context(self._signals.following(lab.id))
            self._signals.seen(lab.id, lab)
        if not moved:
            return lab  # A delete in progress is joined.
        _logger.info("lab delete requested", username=username, lab_id=lab.id)
        self._signals.began(lab)
        self._step_soon(lab, handed=handed)
        return lab

    async def get_state(self, username: str) -> LabStateModel:
        """Return the user's lab as the API reports it.

        Raises
        ------
        UnknownUserError
            If the user has no lab.
        """
        return (await self.get_status(username)).model()

    async def get_status(self, username: str) -> LabStatus:
        """Return the user's lab as the API reports it, rendered.

        A lab reported as ``failed`` or ``terminated`` is then cleaned up by
        labd on its own (docs/api.md): the hub has seen how it ended.

        Raises
        ------
        UnknownUserError
            If the user has no lab.
        """
        check_username(username)
        status = await self._status.get(username)
        if status is None:
            raise UnknownUserError(f"Unknown user {username}", loc=["path", "username"])
        if status.state in (LabState.FAILED, LabState.EXITED):
            await self._clean_up_soon(status)
        return status

    async def running_users(self) -> list[str]:
        """Return the usernames whose lab is running, sorted."""
        labs = await self._store.list_labs([LabState.RUNNING])
        return sorted(lab.username for lab in labs)

    async def open_events(
        self, username: str, *, after: int | None = None
    ) -> AsyncIterator[EventRecord]:
        """Open the event stream of the user's current or latest operation.

        The stream replays the operation's stored events (those after
        ``after`` when resuming), follows new ones, and ends after the
        operation's last event.

        Raises
        ------
        UnknownUserError
            If the user has no lab and no recorded operation.
        """
        check_username(username)
        lab = await self._store.get_current_lab(username) or await self._store.get_latest_lab(
            username
        )
        if lab is None:
            raise UnknownUserError(f"Unknown user {username}", loc=["path", "username"])
        return self._follow(lab, after)

    async def history(
        self, username: str, *, limit: int = 100, before: int | None = None
    ) -> list[TransitionRecord]:
        """Return the audit trail of the user's labs, newest first."""
        check_username(username)
        return await self._store.history(username, limit=limit, before=before)

    async def form_choices(self, username: str) -> FormChoices:
        """Return the images and sizes the spawn form offers the user.

        The quota is the one the user's latest spawn was checked against
        (the hub's or the configured one); for a user never seen, the
        configured one.
        """
        check_username(username)
        latest = await self._store.get_latest_lab(username)
        recorded = latest.spec.user_quota() if latest else None
        quota = (
            recorded
            if recorded is not None
            else _configured_quota(self._config.users.identity(username))
        )
        sizes = {name: size for name, size in self._config.sizes.items() if _fits(size, quota)}
        default = self._config.default_size if self._config.default_size in sizes else None
        return FormChoices(
            username=username,
            images=self._images.choices(),
            sizes=sizes,
            default_size=default or next(iter(sizes), None),
            spawn_allowed=quota.spawn,
        )

    def _size(self, name: str) -> SizeConfig:
        size = self._config.sizes.get(name)
        if size is None:
            known = ", ".join(sorted(self._config.sizes))
            raise InvalidLabSizeError(
                f"Unknown lab size {name!r} (configured: {known})",
                loc=["body", "options", "size"],
            )
        return size

    def _identity(self, username: str, sent: UserInfo | None) -> tuple[SpecUser, UserQuota]:
        """Return who the lab runs as and the quota it is checked against.

        The hub's word (``sent``, which only the hub may send) wins field by
        field; what it leaves out, and everything for a create without it,
        comes from the operator's configuration: the user's entry, then the
        default entry, then ``lab.uid``/``lab.gid``.  The default entry
        always has a quota, so no create goes unchecked.
        """
        configured = self._config.users.identity(username)
        lab = self._config.lab
        groups = sent.groups if sent is not None and sent.groups else configured.groups or []
        user = SpecUser(
            username=username,
            name=_first(sent.name if sent else None, configured.name),
            uid=_first(sent.uid if sent else None, configured.uid, lab.uid),
            gid=_first(sent.gid if sent else None, configured.gid, lab.gid),
            groups=tuple(SpecGroup.model_validate(group.model_dump()) for group in groups),
        )
        quota = sent.quota if sent is not None else None
        return user, quota if quota is not None else _configured_quota(configured)

    def _lab_env(self, username: str, env: Mapping[str, str]) -> dict[str, str]:
        """Return the hub's variables that the lab gets.

        Raises
        ------
        InvalidRequestError
            Naming the first variable that labd or the operator sets, or
            that steers how the lab's process starts.  JupyterHub's own
            ``JUPYTERHUB_USER`` is accepted when it names the user of the
            path (labd sets it anyway).
        """
        lab = self._config.lab
        operator = set(lab.env) | {s.env for s in lab.secrets if s.env is not None}
        for name, value in env.items():
            if name == _USER_VAR and value == username:
                continue
            if name in OWN_ENV or name in operator or _PROCESS_ENV.fullmatch(name):
                raise InvalidRequestError(
                    f"{name} is set by labd, the operator or the image; a request may not set it",
                    loc=["body", "env", name],
                )
        return {
            name: value
            for name, value in env.items()
            if name not in _HUB_PROCESS_ENV and name != _USER_VAR
        }

    async def _make_room(self, username: str, actor: Actor) -> str | None:
        """Clear the way for a new lab; return the id of a lab being cleaned.

        Raises
        ------
        LabExistsConflictError
            If the user's lab is pending or running.
        OperationInProgressError
            If a delete of the user's lab is in progress.
        """
        while True:
            current = await self._store.get_current_lab(username)
            if current is None:
                return None
            if current.state is LabState.DELETING:
                history = await self._store.lab_history(current.id)
                if history and history[-1].trigger == Trigger.DELETE:
                    raise OperationInProgressError(f"Delete of the lab for {username} in progress")
                return current.id
            if current.state not in (LabState.FAILED, LabState.EXITED):
                raise LabExistsConflictError(f"Lab already exists for {username}")
            try:
                cleaning = await self._store.transition(
                    current.id,
                    Trigger.CLEANUP,
                    actor=actor,
                    reason="Replaced by a new lab",
                    expected=current,
                    new_operation=True,
                    changes=self._delete_changes(handed=False),
                )
            except (StaleLabError, InvalidTransitionError):
                continue
            self._signals.began(cleaning)
            self._signals.notify(current.id)
            return current.id

    def _delete_changes(self, *, handed: bool) -> Any:
        return {
            "deadline_at": utcnow() + timedelta(seconds=self._config.timeouts.delete),
            "attempts": 0,
            "next_attempt_at": _first_step_at(handed=handed),
            "internal_url": None,
            "last_error": None,
        }

    def _step_soon(self, lab: LabRecord, *, handed: bool) -> None:
        """Have the lab's first step run: here at once if handed over, else when claimed."""
        if handed:
            self._signals.hand_over(lab)
        else:
            self._signals.wake_scheduler()

    def stop_waiting(self) -> None:
        """Answer the deletes still waiting 503 ``not_ready``: this process is stopping.

        The deletes go on (the scheduler of this or another replica finishes
        them); a balancer sends the hub's retry to another replica, where it
        joins the delete in progress.  Without this, the server's graceful
        shutdown would cut the waiting requests off with a bare 500.
        """
        self._stopping = True
        self._signals.wake_all()

    async def _wait_for_delete(self, lab: LabRecord) -> None:
        timeout = self._config.timeouts.delete + 30
        deadline = utcnow() + timedelta(seconds=timeout)
        while True:
            if self._stopping:
                raise NotReadyError(
                    f"labd is shutting down; the delete of the lab for {lab.username} goes on"
                )
            waiter = self._signals.waiter(lab.id)
            # The rows this process writes come with the wake-up (SQLite).
            current = self._signals.latest(lab.id) or await self._store.get_lab(lab.id)
            if current.state is LabState.DELETED:
                return
            if current.state is not LabState.DELETING and current.version > lab.version:
                raise DeleteFailedError(
                    f"Deleting the lab for {lab.username} failed: {current.last_error}"
                )
            remaining = (deadline - utcnow()).total_seconds()
            if remaining <= 0:
                raise DeleteFailedError(
                    f"Deleting the lab for {lab.username} did not finish in {timeout:.0f} s"
                )
            await self._signals.wait(waiter, within=min(remaining, self._signals.follow_interval))

    async def _clean_up_soon(self, status: LabStatus) -> None:
        """Have the scheduler clean up a lab the hub has now seen ended."""
        now = utcnow()
        if status.next_attempt_at is not None and status.next_attempt_at <= now:
            return  # Already due.
        await self._store.update(status.lab_id, {"next_attempt_at": now})
        self._signals.wake_scheduler()

    async def _follow(self, lab: LabRecord, after: int | None) -> AsyncIterator[EventRecord]:
        self._metrics.sse_subscribers.inc()
        try:
            async for event in self._events_of(lab, after):
                yield event
        finally:
            self._metrics.sse_subscribers.dec()

    async def _events_of(self, lab: LabRecord, after: int | None) -> AsyncIterator[EventRecord]:
        operation = lab.operation
        if after is not None:
            # A client resuming after the operation's last event: nothing more.
            seen = await self._store.events(lab.id, operation)
            if any(event.terminal and event.id <= after for event in seen):
                return
        while True:
            waiter = self._signals.waiter(lab.id)
            # The lab is read before the events: an operation's last events
            # commit together with the state change that ends it, so once the
            # lab is seen to have moved on, the events read next include them.
            # (Read the other way round, a commit landing between the two
            # reads ended the stream without its "Operation cancelled".)
            current = await self._store.get_lab(lab.id)
            events = await self._store.events(lab.id, operation, after=after)
            for event in events:
                yield event
                after = event.id
                if event.terminal:
                    return
            if not events and (
                current.operation != operation or current.state is LabState.DELETED
            ):
                # The operation ended without a final event (superseded).
                return
            await self._signals.wait(waiter, within=self._signals.follow_interval)


def _first_step_at(*, handed: bool) -> datetime:
    """When a lab whose intent is being recorded becomes due for any claimer.

    A lab handed over to this process's scheduler is leased, as a claim
    would lease it, so no other replica steps it meanwhile (`STEP_LEASE`).
    """
    return utcnow() + STEP_LEASE if handed else utcnow()


def check_username(username: str) -> None:
    """Refuse a username that no hub allows (422 ``invalid_username``)."""
    problem = username_problem(username)
    if problem is not None:
        raise InvalidUsernameError(problem, loc=["path", "username"])


def _first(*values: _T | None) -> _T | None:
    """Return the first value that is not `None`."""
    return next((value for value in values if value is not None), None)


def _configured_quota(configured: UserConfig) -> UserQuota:
    """Return the quota of a configured user entry, as the API models it."""
    assert configured.quota is not None  # `UsersConfig` fills the default's in.
    return UserQuota.model_validate(configured.quota.model_dump())


def _check_quota(name: str, size: SizeConfig, quota: UserQuota) -> None:
    if not _fits(size, quota):
        raise InsufficientQuotaError(
            f"Lab size {name} exceeds the user's quota", loc=["body", "options", "size"]
        )


def _fits(size: SizeConfig, quota: UserQuota) -> bool:
    if quota.cpu is not None and size.limits.cpu > quota.cpu:
        return False
    return quota.memory is None or size.limits.memory <= quota.memory
