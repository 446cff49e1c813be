"""The named steps of a spawn and a delete, and the progress a user sees for each.

A step is what labd checks to know how far an operation went ("was the pod
asked to stop?"); its percentage is only what JupyterHub's progress bar
shows (docs/api.md, "Progress").  Each progress event a step writes carries
the step's name in ``lab_events.step``, so labd never infers where it is from
a percentage.

A spawn goes ``requested``, then (when the user's previous lab is still
being deleted) the four ``previous_*`` steps mirroring that delete,
``objects_created``, one ``pod_event`` per Kubernetes Event about the pod
(35, then a third of the way closer to 75 each time), and ``started``.  A
delete goes ``pod_stopping``, ``namespace_deleting``, ``deleted``.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = ["POD_EVENT_FIRST", "POD_EVENT_LIMIT", "Step", "next_pod_event_progress"]


class Step(enum.StrEnum):
    """A named step of a lab operation; the value is stored in ``lab_events.step``."""

    REQUESTED = "requested"
    PREVIOUS_DELETING = "previous_deleting"
    PREVIOUS_POD_STOPPING = "previous_pod_stopping"
    PREVIOUS_NAMESPACE_DELETING = "previous_namespace_deleting"
    PREVIOUS_DELETED = "previous_deleted"
    OBJECTS_CREATED = "objects_created"
    POD_EVENT = "pod_event"
    STARTED = "started"
    POD_STOPPING = "pod_stopping"
    NAMESPACE_DELETING = "namespace_deleting"
    DELETED = "deleted"

    @property
    def progress(self) -> int | None:
        """The percentage shown for this step; `None` for ``pod_event`` and ``started``."""
        return _PROGRESS.get(self)

    def message(self, username: str) -> str:
        """The text shown for this step (``pod_event`` shows the Event's own)."""
        return _MESSAGES[self].format(username=username)


_PROGRESS: Final[dict[Step, int]] = {
    Step.REQUESTED: 1,
    Step.PREVIOUS_DELETING: 2,
    Step.PREVIOUS_POD_STOPPING: 5,
    Step.PREVIOUS_NAMESPACE_DELETING: 12,
    Step.PREVIOUS_DELETED: 20,
    Step.OBJECTS_CREATED: 30,
    Step.POD_STOPPING: 25,
    Step.NAMESPACE_DELETING: 62,
    Step.DELETED: 100,
}

_MESSAGES: Final[dict[Step, str]] = {
    Step.REQUESTED: "Starting lab creation for {username}",
    Step.PREVIOUS_DELETING: "Deleting existing lab for {username}",
    Step.PREVIOUS_POD_STOPPING: "Shutting down previous lab pod",
    Step.PREVIOUS_NAMESPACE_DELETING: "Deleting previous lab namespace",
    Step.PREVIOUS_DELETED: "Previous lab deleted",
    Step.OBJECTS_CREATED: "Created Kubernetes objects for user lab",
    Step.STARTED: "Lab Kubernetes pod started for {username}",
    Step.POD_STOPPING: "Shutting down Kubernetes pod",
    Step.NAMESPACE_DELETING: "Deleting user namespace",
    Step.DELETED: "Lab for {username} deleted",
}

POD_EVENT_FIRST: Final = 35
"""Progress of a spawn's first Kubernetes Event."""

POD_EVENT_LIMIT: Final = 75
"""Progress that a spawn's Kubernetes Events approach and never reach."""


def next_pod_event_progress(previous: int | None) -> int:
    """Progress of a spawn's next Kubernetes Event: 35, then a third closer to 75."""
    if previous is None or previous < POD_EVENT_FIRST:
        return POD_EVENT_FIRST
    return previous + (POD_EVENT_LIMIT - previous) // 3
