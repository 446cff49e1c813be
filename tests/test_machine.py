"""The state machine decides every (state, trigger) pair as specified."""

from __future__ import annotations

import itertools

import pytest

from labd.lab.machine import (
    API_STATUS,
    LIVE_STATES,
    ApiStatus,
    InvalidTransitionError,
    LabState,
    Trigger,
    next_state,
)
from tests.support.transitions import LEGAL

S = LabState
T = Trigger

ADOPTION = {
    "Running": S.RUNNING,
    "Pending": S.STARTING,
    "Succeeded": S.EXITED,
    "Failed": S.EXITED,
    "Unknown": S.FAILED,
    None: S.FAILED,
}


@pytest.mark.parametrize(("state", "trigger"), list(itertools.product(LabState, Trigger)))
def test_every_state_and_trigger(state: LabState, trigger: Trigger) -> None:
    if trigger is T.ADOPT:
        if state is S.NEW:
            assert next_state(state, trigger) is S.FAILED
        else:
            with pytest.raises(InvalidTransitionError):
                next_state(state, trigger)
        return
    expected = LEGAL.get((state, trigger))
    if expected is None:
        with pytest.raises(InvalidTransitionError) as info:
            next_state(state, trigger)
        assert info.value.state == state
        assert info.value.trigger == trigger
        assert (
            str(info.value)
            == f"Trigger {trigger.value!r} is not allowed from state {state.value!r}"
        )
    else:
        assert next_state(state, trigger) is expected


@pytest.mark.parametrize(("phase", "expected"), list(ADOPTION.items()))
def test_adoption_follows_the_pod_phase(phase: str | None, expected: LabState) -> None:
    assert next_state(S.NEW, T.ADOPT, pod_phase=phase) is expected


@pytest.mark.parametrize("trigger", ["", "explode", "REQUEST", "to_running"])
def test_unknown_triggers_are_refused(trigger: str) -> None:
    with pytest.raises(InvalidTransitionError):
        next_state(S.REQUESTED, trigger)


def test_unknown_state_is_refused() -> None:
    with pytest.raises(InvalidTransitionError):
        next_state("sleeping", T.DELETE)


def test_deleted_is_final() -> None:
    for trigger in Trigger:
        with pytest.raises(InvalidTransitionError):
            next_state(S.DELETED, trigger)


def test_api_status_mapping() -> None:
    assert API_STATUS == {
        S.NEW: None,
        S.REQUESTED: ApiStatus.PENDING,
        S.CREATING: ApiStatus.PENDING,
        S.STARTING: ApiStatus.PENDING,
        S.RUNNING: ApiStatus.RUNNING,
        S.EXITED: ApiStatus.TERMINATED,
        S.FAILED: ApiStatus.FAILED,
        S.DELETING: ApiStatus.TERMINATING,
        S.DELETED: None,
    }
    assert S.DELETING not in LIVE_STATES
    assert S.DELETED not in LIVE_STATES
