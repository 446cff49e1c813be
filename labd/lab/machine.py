"""The lab state machine.

Every lab is driven through one explicit state machine, built with
``transitions``.  The machine is pure: it decides whether a trigger is legal
from a state and where it leads, nothing else.  Persisting the new state and
its audit row is the store's job, in one SQL transaction, *after* the machine
has agreed (an exception in a ``transitions`` callback would not roll the
state back, so there are no callbacks here at all).

There is one module-level `~transitions.Machine` shared by all labs, as the
``transitions`` FAQ recommends for many models: a machine per lab costs memory
and time at thousands of labs.  A lab is attached only for the duration of one
decision and detached in a ``finally``, so the machine never keeps rows alive
and its model list stays short.

States, with the API status each is reported as:

``new``
    Virtual: the row does not exist yet.  Only ``request`` (a create from the
    hub) and ``adopt`` (the reconciler found objects with no row) leave it.
``requested`` (pending)
    A create was accepted; no Kubernetes object exists yet.
``creating`` (pending)
    The scheduler is creating the lab's Kubernetes objects.
``starting`` (pending)
    The objects exist; the pod is not running yet.
``running`` (running)
    The pod is running.
``exited`` (terminated)
    The pod stopped on its own (culled, finished, out of memory).
``failed`` (failed)
    A labd operation failed, timed out, or the lab's objects vanished.
``deleting`` (terminating)
    The lab's objects are being removed (asked for, or cleanup of a failed or
    exited lab).
``deleted``
    Gone; the row stays for history and the API answers 404.
"""

from __future__ import annotations

import enum
import functools
import threading
from dataclasses import dataclass
from typing import Any, Final

from transitions import Machine, MachineError
from transitions.extensions import GraphMachine

__all__ = [
    "API_STATUS",
    "LIVE_STATES",
    "MACHINE_STATES",
    "SECRET_STATES",
    "SPAWNING_STATES",
    "TRIGGERS",
    "ApiStatus",
    "InvalidTransitionError",
    "LabState",
    "Trigger",
    "mermaid_diagram",
    "next_state",
]


class LabState(enum.StrEnum):
    """Internal states of a lab (see the module docstring)."""

    NEW = "new"
    REQUESTED = "requested"
    CREATING = "creating"
    STARTING = "starting"
    RUNNING = "running"
    EXITED = "exited"
    FAILED = "failed"
    DELETING = "deleting"
    DELETED = "deleted"


class Trigger(enum.StrEnum):
    """Events that move a lab between states."""

    REQUEST = "request"
    """A create was accepted from the hub or the user."""

    ADOPT = "adopt"
    """The reconciler rebuilt a row for lab objects that had none."""

    START = "start"
    """The scheduler began creating the lab's objects."""

    OBJECTS_READY = "objects_ready"
    """Every Kubernetes object of the lab exists."""

    POD_RUNNING = "pod_running"
    """The lab pod reached phase Running."""

    FAIL = "fail"
    """A spawn step failed for good."""

    TIMEOUT = "timeout"
    """The spawn did not finish before its deadline."""

    POD_EXITED = "pod_exited"
    """The pod reached phase Succeeded or Failed on its own."""

    POD_LOST = "pod_lost"
    """The pod or the namespace vanished, or the pod phase is Unknown."""

    DELETE = "delete"
    """A delete was asked for."""

    CLEANUP = "cleanup"
    """labd removes a failed or exited lab on its own."""

    DELETED = "deleted"
    """Every Kubernetes object of the lab is gone."""

    DELETE_FAILED = "delete_failed"
    """The delete timed out or Kubernetes refused it."""


class ApiStatus(enum.StrEnum):
    """Lab status as the REST API reports it (as Nublado)."""

    PENDING = "pending"
    RUNNING = "running"
    TERMINATING = "terminating"
    TERMINATED = "terminated"
    FAILED = "failed"


API_STATUS: Final[dict[LabState, ApiStatus | None]] = {
    LabState.NEW: None,
    LabState.REQUESTED: ApiStatus.PENDING,
    LabState.CREATING: ApiStatus.PENDING,
    LabState.STARTING: ApiStatus.PENDING,
    LabState.RUNNING: ApiStatus.RUNNING,
    LabState.EXITED: ApiStatus.TERMINATED,
    LabState.FAILED: ApiStatus.FAILED,
    LabState.DELETING: ApiStatus.TERMINATING,
    LabState.DELETED: None,
}
"""API status of each state; `None` where the API answers 404."""

LIVE_STATES: Final = frozenset(
    {
        LabState.REQUESTED,
        LabState.CREATING,
        LabState.STARTING,
        LabState.RUNNING,
        LabState.EXITED,
        LabState.FAILED,
    }
)
"""States of a user's current lab: at most one row per username is in one of
these, enforced by a partial unique index.  A ``deleting`` row is on its way
out and may overlap with the user's next lab, which waits for it."""

SECRET_STATES: Final = frozenset({LabState.REQUESTED, LabState.CREATING})
"""States in which a lab may still hold the hub's secret environment (its
token): until its Secret is written.  Every transition to any other state
clears it from SQL (`labd.db.store.LabStore.transition`), whichever way the
spawn ends: started, failed, timed out, cancelled or deleted."""

SPAWNING_STATES: Final = frozenset({LabState.REQUESTED, LabState.CREATING, LabState.STARTING})
"""States of a spawn in progress: the spawn timeout applies, and a delete
cancels the spawn."""

MACHINE_STATES: Final = tuple(LabState)

_SPAWNING = sorted(SPAWNING_STATES, key=MACHINE_STATES.index)
_DELETABLE = [*_SPAWNING, LabState.RUNNING, LabState.EXITED, LabState.FAILED]

_TRANSITIONS: Final[list[dict[str, Any]]] = [
    {"trigger": Trigger.REQUEST, "source": LabState.NEW, "dest": LabState.REQUESTED},
    # Adoption lands where the pod found in the cluster is: the first
    # transition whose condition holds wins.
    {
        "trigger": Trigger.ADOPT,
        "source": LabState.NEW,
        "dest": LabState.RUNNING,
        "conditions": "pod_is_running",
    },
    {
        "trigger": Trigger.ADOPT,
        "source": LabState.NEW,
        "dest": LabState.STARTING,
        "conditions": "pod_is_pending",
    },
    {
        "trigger": Trigger.ADOPT,
        "source": LabState.NEW,
        "dest": LabState.EXITED,
        "conditions": "pod_has_exited",
    },
    {"trigger": Trigger.ADOPT, "source": LabState.NEW, "dest": LabState.FAILED},
    {"trigger": Trigger.START, "source": LabState.REQUESTED, "dest": LabState.CREATING},
    {"trigger": Trigger.OBJECTS_READY, "source": LabState.CREATING, "dest": LabState.STARTING},
    {"trigger": Trigger.POD_RUNNING, "source": LabState.STARTING, "dest": LabState.RUNNING},
    {"trigger": Trigger.FAIL, "source": _SPAWNING, "dest": LabState.FAILED},
    {"trigger": Trigger.TIMEOUT, "source": _SPAWNING, "dest": LabState.FAILED},
    {
        "trigger": Trigger.POD_EXITED,
        "source": [LabState.STARTING, LabState.RUNNING],
        "dest": LabState.EXITED,
    },
    {
        "trigger": Trigger.POD_LOST,
        "source": [LabState.CREATING, LabState.STARTING, LabState.RUNNING],
        "dest": LabState.FAILED,
    },
    {"trigger": Trigger.DELETE, "source": _DELETABLE, "dest": LabState.DELETING},
    {
        "trigger": Trigger.CLEANUP,
        "source": [LabState.EXITED, LabState.FAILED],
        "dest": LabState.DELETING,
    },
    {"trigger": Trigger.DELETED, "source": LabState.DELETING, "dest": LabState.DELETED},
    {"trigger": Trigger.DELETE_FAILED, "source": LabState.DELETING, "dest": LabState.FAILED},
]

TRIGGERS: Final = frozenset(Trigger)


class InvalidTransitionError(Exception):
    """A trigger that is not legal from the lab's current state.

    Parameters
    ----------
    state
        The lab's state when the trigger was tried.
    trigger
        The trigger that was refused.
    """

    def __init__(self, state: str, trigger: str) -> None:
        self.state = str(state)
        self.trigger = str(trigger)
        super().__init__(f"Trigger {self.trigger!r} is not allowed from state {self.state!r}")


@dataclass
class _Lab:
    """The model attached to the machine for one decision."""

    state: str
    pod_phase: str | None

    def pod_is_running(self) -> bool:
        return self.pod_phase == "Running"

    def pod_is_pending(self) -> bool:
        return self.pod_phase == "Pending"

    def pod_has_exited(self) -> bool:
        return self.pod_phase in ("Succeeded", "Failed")


def _machine_kwargs() -> dict[str, Any]:
    transitions = [
        {
            key: [str(v) for v in value] if isinstance(value, list) else str(value)
            for key, value in transition.items()
        }
        for transition in _TRANSITIONS
    ]
    return {
        "states": [s.value for s in MACHINE_STATES],
        "transitions": transitions,
        "auto_transitions": False,
        "ignore_invalid_triggers": False,
    }


_MACHINE: Final = Machine(model=None, initial=None, **_machine_kwargs())
_MACHINE_LOCK: Final = threading.Lock()


def next_state(state: str, trigger: str, *, pod_phase: str | None = None) -> LabState:
    """Decide where ``trigger`` leads from ``state``, without side effects.

    Parameters
    ----------
    state
        The lab's current state.
    trigger
        The trigger to apply.
    pod_phase
        The Kubernetes pod phase, consulted by the conditional ``adopt``
        transitions.

    Returns
    -------
    LabState
        The state the lab moves to.

    Raises
    ------
    InvalidTransitionError
        If the trigger is unknown or not allowed from ``state``.
    """
    if trigger not in TRIGGERS or state not in _MACHINE.states:
        raise InvalidTransitionError(state, trigger)
    # transitions names Enum members by their names: hand it plain strings.
    destination = _destination(str(state), str(trigger), pod_phase)
    if destination is None:
        raise InvalidTransitionError(state, trigger)
    return LabState(destination)


@functools.cache
def _destination(state: str, trigger: str, pod_phase: str | None) -> str | None:
    """Where the machine takes ``state`` on ``trigger``; `None` if it refuses.

    The machine never changes, so each answer is worked out once (a few
    hundred at most: states by triggers by pod phases): attaching a model
    to a `transitions` machine defines a method per trigger on it, which
    bursts of transitions paid for every time.  The lock keeps the shared
    machine to one model at a time: transitions run on the SQLite writer's
    thread as well as on the event loop.
    """
    lab = _Lab(state=state, pod_phase=pod_phase)
    with _MACHINE_LOCK:
        _MACHINE.add_model(lab, initial=lab.state)
        try:
            moved = _MACHINE.events[trigger].trigger(lab)
        except MachineError:
            return None
        finally:
            _MACHINE.remove_model(lab)
    return lab.state if moved else None


def mermaid_diagram() -> str:
    """Draw the machine as a Mermaid ``stateDiagram-v2``.

    The diagram is generated from the same definitions as the machine that
    drives labs, so the README's copy cannot drift from the code (a test
    compares them).  ``GraphMachine`` is used here only: it restyles its graph
    on every transition, which is no cost for drawing once.
    """
    graph = GraphMachine(
        initial=LabState.NEW.value,
        graph_engine="mermaid",
        show_conditions=True,
        title="labd lab states",
        **_machine_kwargs(),
    )
    source: str = graph.get_graph().draw(None)
    # Drop the styling lines: they only colour the "active" state, which
    # means nothing for a machine shared by every lab.
    lines = [
        line.rstrip()
        for line in source.splitlines()
        if not line.strip().startswith(("classDef ", "Class "))
    ]
    return "\n".join(line for line in lines if line) + "\n"


if __name__ == "__main__":
    print(mermaid_diagram(), end="")
