"""The lab state machine's transitions, written out independently of its table.

`LEGAL` is the specification the tests hold `labd.lab.machine` and the
store's transitions to: every (state, trigger) pair it lists is legal and
leads to the state it names; every other pair is refused.
"""

from __future__ import annotations

from labd.lab.machine import LabState, Trigger

__all__ = ["LEGAL"]

S = LabState
T = Trigger

LEGAL: dict[tuple[LabState, Trigger], LabState] = {
    (S.NEW, T.REQUEST): S.REQUESTED,
    (S.REQUESTED, T.START): S.CREATING,
    (S.CREATING, T.OBJECTS_READY): S.STARTING,
    (S.STARTING, T.POD_RUNNING): S.RUNNING,
    (S.REQUESTED, T.FAIL): S.FAILED,
    (S.CREATING, T.FAIL): S.FAILED,
    (S.STARTING, T.FAIL): S.FAILED,
    (S.REQUESTED, T.TIMEOUT): S.FAILED,
    (S.CREATING, T.TIMEOUT): S.FAILED,
    (S.STARTING, T.TIMEOUT): S.FAILED,
    (S.STARTING, T.POD_EXITED): S.EXITED,
    (S.RUNNING, T.POD_EXITED): S.EXITED,
    (S.CREATING, T.POD_LOST): S.FAILED,
    (S.STARTING, T.POD_LOST): S.FAILED,
    (S.RUNNING, T.POD_LOST): S.FAILED,
    (S.REQUESTED, T.DELETE): S.DELETING,
    (S.CREATING, T.DELETE): S.DELETING,
    (S.STARTING, T.DELETE): S.DELETING,
    (S.RUNNING, T.DELETE): S.DELETING,
    (S.EXITED, T.DELETE): S.DELETING,
    (S.FAILED, T.DELETE): S.DELETING,
    (S.EXITED, T.CLEANUP): S.DELETING,
    (S.FAILED, T.CLEANUP): S.DELETING,
    (S.DELETING, T.DELETED): S.DELETED,
    (S.DELETING, T.DELETE_FAILED): S.FAILED,
}
"""Each legal (state, trigger) pair and the state it leads to."""
