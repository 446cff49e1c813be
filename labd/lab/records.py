"""The domain records of a lab: its row, its audit rows and its progress events.

`labd.db.store` reads and writes them; everything above the database layer
(the control loop, the service, the API) works with these plain, frozen
values and never with SQL rows.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypedDict

from labd.lab.machine import API_STATUS, LIVE_STATES, ApiStatus, LabState
from labd.lab.progress import Step
from labd.lab.spec import LabSpec

__all__ = [
    "Actor",
    "EventRecord",
    "EventType",
    "LabChanges",
    "LabRecord",
    "LabSummary",
    "NewEvent",
    "TransitionRecord",
    "utcnow",
]


def utcnow() -> datetime:
    """Return the current time in UTC."""
    return datetime.now(tz=UTC)


class Actor(enum.StrEnum):
    """Who caused a transition, as recorded in the audit history."""

    HUB = "hub"
    USER = "user"
    SCHEDULER = "scheduler"
    RECONCILER = "reconciler"
    WATCHER = "watcher"
    OPERATOR = "operator"


class EventType(enum.StrEnum):
    """Types of progress events (the SSE ``event:`` field)."""

    INFO = "info"
    ERROR = "error"
    FAILED = "failed"
    COMPLETE = "complete"


class LabChanges(TypedDict, total=False):
    """Columns that may change along with, or apart from, a transition.

    The spec is not one of them: it is fixed when the row is created.
    """

    secret_env: dict[str, str] | None
    internal_url: str | None
    pod_phase: str | None
    last_error: str | None
    attempts: int
    next_attempt_at: datetime | None
    deadline_at: datetime | None


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A progress event to append to a lab's current operation."""

    type: EventType
    """What kind of event this is."""

    message: str
    """Human-readable text shown by JupyterHub."""

    progress: int | None = None
    """Percent complete, 1 to 100, when the event marks progress."""

    terminal: bool = False
    """Whether this event ends its operation (streams end after it)."""

    step: Step | None = None
    """The named step this event marks, if any (`labd.lab.progress`)."""

    created_at: datetime | None = None
    """When it happened, for an event written later than that; else when written."""

    @classmethod
    def at(
        cls,
        step: Step,
        username: str,
        *,
        type: EventType = EventType.INFO,
        terminal: bool = False,
    ) -> NewEvent:
        """The event of ``step``, with its message and progress."""
        return cls(type, step.message(username), step.progress, terminal=terminal, step=step)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """A stored progress event."""

    id: int
    """Unique, increasing per lab in commit order; the SSE event id."""

    lab_id: str
    """The lab the event belongs to."""

    operation: int
    """Number of the lab operation (spawn, delete) it belongs to."""

    type: EventType
    """What kind of event this is."""

    message: str
    """Human-readable text."""

    progress: int | None
    """Percent complete, when given."""

    terminal: bool
    """Whether this event ended its operation."""

    step: Step | None
    """The named step it marks, if any."""

    created_at: datetime
    """When it was recorded."""


@dataclass(frozen=True, slots=True)
class LabRecord:
    """One row of ``labs``."""

    id: str
    """Lab id (UUID string); also the ``labd.io/lab-id`` label."""

    username: str
    """JupyterHub username."""

    slug: str
    """Kubernetes-safe form of the username."""

    namespace: str
    """The lab's namespace."""

    state: LabState
    """State machine state."""

    spec: LabSpec
    """What was asked: options, image, size, resources, user, quota, env."""

    secret_env: dict[str, str] | None = field(repr=False)
    """Secret environment values, kept only until the lab's Secret exists."""

    internal_url: str | None
    """URL of the lab inside the cluster, once its objects exist."""

    pod_phase: str | None
    """Last pod phase seen."""

    last_error: str | None
    """Why the last operation failed, if it did."""

    operation: int
    """Number of the current operation (1 = the spawn)."""

    attempts: int
    """Failed tries of the current step."""

    next_attempt_at: datetime | None
    """When the scheduler should look at the lab again."""

    deadline_at: datetime | None
    """When the current operation times out."""

    version: int
    """Number of transitions so far (optimistic concurrency token)."""

    created_at: datetime
    """When the row was created."""

    updated_at: datetime
    """When the row last changed."""

    deleted_at: datetime | None
    """When the lab reached ``deleted``."""

    @property
    def status(self) -> ApiStatus | None:
        """The status the API reports, or `None` for a deleted lab."""
        return API_STATUS[self.state]

    @property
    def is_live(self) -> bool:
        """Whether this is the user's current lab (not deleting or deleted)."""
        return self.state in LIVE_STATES


@dataclass(frozen=True, slots=True)
class LabSummary:
    """Where a lab stands, without what was asked (cheap to list by thousands)."""

    id: str
    """The lab's id."""

    username: str
    """Its user."""

    slug: str
    """Kubernetes-safe form of the username."""

    namespace: str
    """The lab's namespace."""

    state: LabState
    """Its state."""

    pod_phase: str | None
    """The pod phase last recorded."""

    version: int
    """Its version (the number of its transitions)."""


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    """One row of the audit history."""

    id: int
    lab_id: str
    username: str
    version: int
    from_state: str
    to_state: str
    trigger: str
    actor: str
    reason: str | None
    details: dict[str, Any] | None
    created_at: datetime
