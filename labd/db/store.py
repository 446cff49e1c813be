"""Persistence of labs, their audit history and their progress events.

Every change of a lab's state goes through `LabStore.transition`, which in
one write transaction:

1. reads the lab row under a row lock (``SELECT ... FOR UPDATE`` on
   PostgreSQL; on SQLite ``BEGIN IMMEDIATE`` already holds the write lock),
   unless the caller passes the row it read and that row is still current,
2. asks the state machine whether the trigger is legal and where it leads,
3. updates the row with ``WHERE id = :id AND version = :version`` and bumps
   the version (an update of no row sends a caller's row to step 1),
4. appends one ``lab_transitions`` row carrying that new version, and any
   progress events.

On PostgreSQL, steps 3 and 4 are one statement, a data-modifying ``WITH``
(`_with_record`), and so is an update with its events: each statement is
a round trip to the server, which the group writer waits for in turn.
Transitions that commit in one group are written together (a `Batch`):
on PostgreSQL one statement per shape for all of them (`_batched_moves`),
on SQLite an ``UPDATE`` per lab, then one ``INSERT`` of all their audit
rows and one of all their events.

So a trigger either happens with its audit row or not at all, and because
``(lab_id, version)`` is unique in ``lab_transitions``, the history of a lab
has exactly one row per version: no gap, no duplicate.

Optimistic concurrency: a caller that decided what to do from an earlier read
passes the row it read (``expected``; ``expected_version`` for `LabStore.update`).
If another writer got there first, the versions differ and `StaleLabError` is
raised with nothing written; the caller re-reads and decides again.  While the
caller's row is still the lab's, the transition is a single ``UPDATE``
conditional on it, which takes the row lock itself.  Two writers racing on
one lab cannot both win: the second one either finds a new version (stale) or
a new state (the trigger may now be illegal).

Bookkeeping that is not a state change (retry counters, the last pod phase
seen, deadlines) goes through `LabStore.update`, which leaves the version
alone: the version counts transitions, so it always equals the length of the
lab's history.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import (
    JSON,
    Boolean,
    Integer,
    Row,
    Select,
    SmallInteger,
    String,
    Text,
    Update,
    bindparam,
    cast,
    column,
    func,
    insert,
    null,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.dml import UpdateBase

from labd.db.database import UNBATCHED, Batch, Database
from labd.db.leadership import LeadershipLostError
from labd.db.schema import UTCDateTime, lab_events, lab_transitions, labd_leader, labs
from labd.lab.machine import (
    LIVE_STATES,
    SECRET_STATES,
    InvalidTransitionError,
    LabState,
    Trigger,
    next_state,
)
from labd.lab.progress import Step
from labd.lab.records import (
    Actor,
    EventRecord,
    EventType,
    LabChanges,
    LabRecord,
    LabSummary,
    NewEvent,
    TransitionRecord,
    utcnow,
)
from labd.lab.spec import LabSpec

__all__ = [
    "LabExistsError",
    "LabNotFoundError",
    "LabStore",
    "StaleLabError",
]


class LabExistsError(Exception):
    """The user already has a current lab."""

    def __init__(self, username: str) -> None:
        super().__init__(f"User {username} already has a lab")
        self.username = username


class LabNotFoundError(Exception):
    """No lab with that id."""

    def __init__(self, lab_id: str) -> None:
        super().__init__(f"No lab with id {lab_id}")
        self.lab_id = lab_id


class StaleLabError(Exception):
    """Another writer changed the lab since the caller read it."""

    def __init__(self, lab_id: str, expected: int, actual: int) -> None:
        super().__init__(f"Lab {lab_id} is at version {actual}, not {expected}")
        self.lab_id = lab_id
        self.expected = expected
        self.actual = actual


_LIVE = [state.value for state in LIVE_STATES]

_LAB = (
    *(each for each in labs.c if each.name != "spec"),
    cast(labs.c.spec, Text).label("spec"),
)
"""The columns of a lab row as the store reads them: ``spec`` as text, which
neither SQLAlchemy nor asyncpg parses.  A lab's spec never changes, and
`_Specs` keeps the specs of the labs at work, so most reads need not parse
it at all."""

_CURRENT_FIRST = (labs.c.state.in_(_LIVE).desc(), labs.c.created_at.desc())
"""Of one user's labs not deleted, the current one first: live, then newest."""

# Statements of the hot paths, built once: SQLAlchemy then skips building
# and hashing them again on every call (its compiled cache still applies).
_SELECT_LAB = select(*_LAB).where(labs.c.id == bindparam("lab_id"))
_NEXT_DUE = select(func.min(labs.c.next_attempt_at))
_LOCK_LAB = _SELECT_LAB.with_for_update()
_LOCK_TERM = select(labd_leader.c.term).where(labd_leader.c.id == 1).with_for_update(read=True)
_INSERT_TRANSITION = insert(lab_transitions)
_INSERT_EVENT = insert(lab_events)
_SELECT_CURRENT = (
    select(*_LAB)
    .where(labs.c.username == bindparam("username"), labs.c.state != LabState.DELETED.value)
    .order_by(*_CURRENT_FIRST)
    .limit(1)
)
_LOCK_CURRENT = _SELECT_CURRENT.with_for_update()
_WANTED = (
    func.unnest(bindparam("usernames", type_=ARRAY(String())))
    .table_valued(column("username", String()))
    .render_derived(name="wanted")
)
_LOCKED_CURRENT = (
    select(*_LAB)
    .where(labs.c.username == _WANTED.c.username, labs.c.state != LabState.DELETED.value)
    .order_by(*_CURRENT_FIRST)
    .limit(1)
    .with_for_update()
    .lateral("current")
)
_LOCK_CURRENTS = select(_LOCKED_CURRENT).select_from(_WANTED.join(_LOCKED_CURRENT, true()))
"""`_LOCK_CURRENT` for many users at once (``usernames``), PostgreSQL only."""
_SELECT_USERS_LABS = (
    select(*_LAB)
    .where(
        labs.c.username.in_(bindparam("usernames", expanding=True)),
        labs.c.state != LabState.DELETED.value,
    )
    .order_by(labs.c.username, *_CURRENT_FIRST)
)
"""The labs of ``usernames`` not deleted, each user's current lab first."""


@functools.cache
def _update_lab(
    columns: tuple[str, ...], nulls: tuple[str, ...], *, held: tuple[str, ...] = ()
) -> Update:
    """``UPDATE labs`` of one lab, setting ``columns`` and ``nulls`` to SQL NULL, returning it.

    Built once per shape, as the statements above (a write's shape is one of
    a few dozen).  Parameters: ``lab_id``, ``set_<column>`` for each of
    ``columns`` and ``was_<column>`` for each of ``held``, the columns
    (``version``, ``pod_phase``) that the row must still hold.
    """
    where = [labs.c.id == bindparam("lab_id")]
    for name in held:
        column = labs.c[name]
        was = bindparam(f"was_{name}", type_=column.type)
        where.append(column.is_not_distinct_from(was) if column.nullable else column == was)
    values: dict[str, Any] = {
        column: bindparam(f"set_{column}", type_=labs.c[column].type) for column in columns
    }
    # SQL NULL, not JSON null: `secret_env IS NULL` finds them all.
    values.update(dict.fromkeys(nulls, null()))
    return update(labs).where(*where).values(values).returning(*_LAB)


def _update_params(lab_id: str, values: Mapping[str, Any], **where: Any) -> dict[str, Any]:
    """The parameters of an `_update_lab` statement."""
    return {"lab_id": lab_id, **where, **{f"set_{column}": v for column, v in values.items()}}


_EVENT_FIELDS: Final = (
    ("operation", SmallInteger()),
    ("type", String()),
    ("message", Text()),
    ("progress", SmallInteger()),
    ("terminal", Boolean()),
    ("step", String()),
    ("created_at", UTCDateTime()),
)
"""The columns of `_with_record`'s events, each passed as an array."""

_EVENT_COLUMNS: Final = ("lab_id", *(name for name, _ in _EVENT_FIELDS))
_TRANSITION_COLUMNS: Final = (
    "lab_id",
    "username",
    "version",
    "from_state",
    "to_state",
    "trigger",
    "actor",
    "reason",
    "details",
    "created_at",
)


def _with_record(write: UpdateBase, *, audit: bool, events: bool) -> Select[Any]:
    """``write`` with its audit row and its events, as one statement (PostgreSQL).

    ``write`` is an ``UPDATE`` or ``INSERT`` of one lab ``RETURNING`` it; the
    statement returns that row.  The audit row and the events are inserted
    from the written row, so nothing is inserted when ``write`` matched no
    row (a stale conditional update).  One round trip instead of one per
    statement: on the same two cores as the server, each costs labd about
    a quarter of a millisecond, and the group writer waits for each in turn.

    Parameters besides ``write``'s: with ``audit``, ``from_state``,
    ``trigger``, ``actor``, ``reason`` and ``details``; with ``events``, one
    array per `_EVENT_FIELDS` (``event_<name>``), in list order, where a
    null operation is the written row's.  The events are inserted in
    ordinality order, which is the order PostgreSQL draws their ids in (an
    ``INSERT ... SELECT ... ORDER BY`` takes its sequence values in that
    order; SQLAlchemy's "insertmanyvalues" relies on the same).
    """
    lab = write.cte("lab")
    statement = select(lab)
    if audit:
        transition = select(
            lab.c.id,
            lab.c.username,
            lab.c.version,
            bindparam("from_state", type_=String()),
            lab.c.state,
            bindparam("trigger", type_=String()),
            bindparam("actor", type_=String()),
            bindparam("reason", type_=Text()),
            bindparam("details", type_=lab_transitions.c.details.type),
            lab.c.updated_at,
        )
        record = insert(lab_transitions).from_select(_TRANSITION_COLUMNS, transition)
        statement = statement.add_cte(record.cte("audit"))
    if events:
        new = _unnest("event", _EVENT_FIELDS, prefix="event_")
        statement = statement.add_cte(_events_inserted(lab, new, true()))
    return statement


def _events_inserted(lab: Any, new: Any, onclause: Any) -> Any:
    """The ``INSERT`` of events ``new`` (`_unnest` of `_EVENT_FIELDS`) of the written
    rows ``lab`` they join on, in their order, as a ``WITH`` clause."""
    rows = (
        select(
            lab.c.id,
            func.coalesce(new.c.operation, lab.c.operation),
            *(new.c[name] for name, _ in _EVENT_FIELDS[1:]),
        )
        .select_from(lab)
        .join(new, onclause)
        .order_by(new.c.ord)
    )
    return insert(lab_events).from_select(_EVENT_COLUMNS, rows).cte("events")


@functools.cache
def _recorded_update(
    columns: tuple[str, ...],
    nulls: tuple[str, ...],
    *,
    held: tuple[str, ...] = (),
    audit: bool,
    events: bool,
) -> Select[Any]:
    """`_update_lab` with its audit row and events (`_with_record`), built once per shape."""
    return _with_record(_update_lab(columns, nulls, held=held), audit=audit, events=events)


@dataclasses.dataclass(frozen=True, slots=True)
class _Record:
    """What a write records beside the row: its audit row and its events."""

    trigger: Trigger
    actor: Actor
    reason: str | None = None
    details: dict[str, Any] | None = None
    events: Sequence[NewEvent] = ()
    final_events: Sequence[NewEvent] = ()
    """Events that end the operation being replaced (of the lab's operation before)."""

    def audit_params(self, from_state: LabState) -> dict[str, Any]:
        """The audit row's columns that the written row does not give."""
        return {
            "from_state": from_state.value,
            "trigger": self.trigger.value,
            "actor": self.actor.value,
            "reason": self.reason,
            "details": self.details,
        }


def _new_event_params(events: Sequence[NewEvent]) -> dict[str, Any]:
    """`_with_record`'s event arrays for ``events`` of the written row's operation."""
    return _event_params([(event, None) for event in events])


def _event_params(events: Sequence[tuple[NewEvent, int | None]]) -> dict[str, Any]:
    """`_with_record`'s event arrays: each event with its operation (`None`: the row's)."""
    now = utcnow()
    rows = [_event_values(event, operation, now) for event, operation in events]
    return {f"event_{name}": [row[name] for row in rows] for name, _ in _EVENT_FIELDS}


def _event_values(event: NewEvent, operation: int | None, now: datetime) -> dict[str, Any]:
    """An event's `_EVENT_FIELDS`, of ``operation``, created ``now`` unless it says when."""
    return {
        "operation": operation,
        "type": event.type.value,
        "message": event.message,
        "progress": event.progress,
        "terminal": event.terminal,
        "step": event.step,
        "created_at": event.created_at or now,
    }


def _audit_values(row: Row[Any], from_state: LabState, record: _Record) -> dict[str, Any]:
    """The audit row of the transition from ``from_state`` to ``row``."""
    return {
        "lab_id": row.id,
        "username": row.username,
        "version": row.version,
        "to_state": row.state,
        "created_at": row.updated_at,
        **record.audit_params(from_state),
    }


_JSON_COLUMNS: Final = frozenset(c.name for c in labs.c if isinstance(c.type, JSON))

_HELD: Final = ("version", "pod_phase")
"""What a transition's row must still hold: the machine's answer depends on them."""


@dataclasses.dataclass(frozen=True, slots=True)
class _Move:
    """A lab's transition, worked out: what its ``UPDATE`` sets, and its events."""

    lab: LabRecord
    record: _Record
    columns: tuple[str, ...]
    nulls: tuple[str, ...]
    params: dict[str, Any]
    """`_update_lab`'s parameters, with `_HELD` as ``lab`` holds them."""
    events: list[tuple[NewEvent, int | None]]
    """The final events (of the operation before), then the row's own (`None`)."""

    @classmethod
    def of(
        cls, lab: LabRecord, changes: LabChanges, record: _Record, *, new_operation: bool
    ) -> _Move:
        """The transition from ``lab``; `InvalidTransitionError` if it is not legal."""
        pod_phase = changes.get("pod_phase", lab.pod_phase)
        state = next_state(lab.state, record.trigger, pod_phase=pod_phase)
        now = utcnow()
        values: dict[str, Any] = {
            "state": state.value,
            "version": lab.version + 1,
            "updated_at": now,
            **changes,
        }
        nulls: tuple[str, ...] = ()
        if state not in SECRET_STATES:
            values.pop("secret_env", None)
            nulls = ("secret_env",)
        if state is LabState.DELETED:
            values["deleted_at"] = now
        if new_operation:
            values["operation"] = lab.operation + 1
        params = _update_params(
            lab.id, values, was_version=lab.version, was_pod_phase=lab.pod_phase
        )
        events = [
            *((event, lab.operation) for event in record.final_events),
            *((event, None) for event in record.events),
        ]
        return cls(lab, record, tuple(values), nulls, params, events)

    @property
    def shape(self) -> tuple[tuple[str, ...], tuple[str, ...], bool] | None:
        """The `_batched_moves` statement this move can be written with, if any.

        A move that sets a JSON column is written alone: arrays of JSON
        are not worth their encoding for the few writes that set one.
        """
        if _JSON_COLUMNS.intersection(self.columns):
            return None
        return self.columns, self.nulls, bool(self.events)


_MOVE_AUDIT: Final = (
    ("from_state", String()),
    ("trigger", String()),
    ("actor", String()),
    ("reason", Text()),
    ("details", Text()),
)
"""A batched move's audit columns that its row does not give (``details`` as JSON text)."""


@functools.cache
def _batched_moves(columns: tuple[str, ...], nulls: tuple[str, ...], events: bool) -> Select[Any]:
    """Many labs' transitions of one shape, each as `_move` writes it, as one statement.

    PostgreSQL only.  Each parameter is an array with one element per move
    (`_batch_params`): ``lab_id``, ``was_<held>`` for `_HELD`,
    ``set_<column>`` for ``columns`` and the audit columns of `_MOVE_AUDIT`;
    with ``events``, one array per `_EVENT_FIELDS` over every move's
    events, and ``event_move``, the number (from 1) of each event's move.
    A move whose row no longer holds what it was worked out from updates
    nothing and records nothing.  Returns the rows written.
    """
    fields = [
        ("lab_id", labs.c.id.type),
        *((f"was_{name}", labs.c[name].type) for name in _HELD),
        *((f"set_{name}", labs.c[name].type) for name in columns),
        *_MOVE_AUDIT,
    ]
    given = _unnest("move", fields)
    values: dict[str, Any] = {name: given.c[f"set_{name}"] for name in columns}
    values.update(dict.fromkeys(nulls, null()))
    write = (
        update(labs)
        .where(
            labs.c.id == given.c.lab_id,
            labs.c.version == given.c.was_version,
            labs.c.pod_phase.is_not_distinct_from(given.c.was_pod_phase),
        )
        .values(values)
        .returning(*_LAB, given.c.ord, *(given.c[name] for name, _ in _MOVE_AUDIT))
    )
    lab = write.cte("lab")
    transition = select(
        lab.c.id,
        lab.c.username,
        lab.c.version,
        lab.c.from_state,
        lab.c.state,
        lab.c.trigger,
        lab.c.actor,
        lab.c.reason,
        cast(lab.c.details, JSONB),
        lab.c.updated_at,
    )
    statement = select(*(lab.c[each.name] for each in labs.c)).add_cte(
        insert(lab_transitions).from_select(_TRANSITION_COLUMNS, transition).cte("audit")
    )
    if events:
        new = _unnest("event", [("move", Integer()), *_EVENT_FIELDS], prefix="event_")
        statement = statement.add_cte(_events_inserted(lab, new, new.c.move == lab.c.ord))
    return statement


def _unnest(name: str, fields: Sequence[tuple[str, Any]], *, prefix: str = "") -> Any:
    """``unnest`` of one array parameter per field (``<prefix><field>``), as table
    ``name`` with a column per field, numbered (``ord``)."""
    return (
        func.unnest(*(bindparam(prefix + field, type_=ARRAY(kind)) for field, kind in fields))
        .table_valued(*(column(field, kind) for field, kind in fields), with_ordinality="ord")
        .render_derived(name=name)
    )


def _batch_params(moves: Sequence[_Move], columns: tuple[str, ...]) -> dict[str, Any]:
    """`_batched_moves`'s arrays for ``moves``, each worked out with ``columns`` set."""
    names = ["lab_id", *(f"was_{name}" for name in _HELD), *(f"set_{name}" for name in columns)]
    params: dict[str, Any] = {name: [move.params[name] for move in moves] for name in names}
    audits = [move.record.audit_params(move.lab.state) for move in moves]
    for name, _ in _MOVE_AUDIT:
        params[name] = [audit[name] for audit in audits]
    params["details"] = [None if d is None else json.dumps(d) for d in params["details"]]
    events = [(number, event) for number, move in enumerate(moves, 1) for event in move.events]
    if events:
        params.update(_event_params([event for _, event in events]))
        params["event_move"] = [number for number, _ in events]
    return params


def _write_moves_at_once(conn: Connection, moves: Sequence[_Move]) -> dict[str, Row[Any]]:
    """Write ``moves`` (PostgreSQL), a statement per shape: the rows written, by lab id."""
    shapes: dict[tuple[tuple[str, ...], tuple[str, ...], bool], list[_Move]] = {}
    for move in moves:
        assert move.shape is not None
        shapes.setdefault(move.shape, []).append(move)
    written: dict[str, Row[Any]] = {}
    for (columns, nulls, events), same in shapes.items():
        statement = _batched_moves(columns, nulls, events)
        for row in conn.execute(statement, _batch_params(same, columns)):
            written[row.id] = row
    return written


def _moved(written: Mapping[str, Row[Any]], move: _Move) -> Any:
    """A locked lab's result in `LabStore._move_currents`: its row written, and `True`."""
    row = written.get(move.lab.id)
    return UNBATCHED if row is None else (row, True)


@dataclasses.dataclass(slots=True)
class _CurrentMove:
    """`LabStore.transition_current`'s write, as its work and its batch take it."""

    username: str
    trigger: Trigger
    actor: Actor
    reason: str | None
    changes: LabChanges
    new_operation: bool
    unless: Callable[[LabRecord], bool]
    final_events: Callable[[LabRecord], Sequence[NewEvent]]
    current: LabRecord | None = None
    """The lab as read under its lock, once read (the caches forget it after)."""

    def record(self, current: LabRecord) -> _Record | None:
        """Take ``current`` as read: the transition's record, or `None` to leave it as it is."""
        self.current = current
        if self.unless(current):
            return None
        return _Record(
            self.trigger, self.actor, self.reason, final_events=self.final_events(current)
        )


class LabStore:
    """Queries and transactional writes on the lab tables.

    Parameters
    ----------
    database
        Where the tables live.
    """

    def __init__(self, database: Database) -> None:
        self._db = database
        self._one_statement = not database.is_sqlite
        """Whether a write goes with its audit row and events as one statement
        (`_with_record`): on PostgreSQL, where each statement is a round trip
        to the server.  SQLite has no data-modifying ``WITH``, and no round
        trips."""
        self.on_write: list[Callable[[str], None]] = []
        """Called with the username after every write of a lab row (commit
        or not: a write whose outcome is unknown counts as a change)."""
        self.on_change: list[Callable[[str], None]] = []
        """Called with the lab id after every write of a lab row or of its
        events, likewise: what wakes the readers that follow a lab."""
        self.on_row: list[Callable[[str, LabRecord | None], None]] = []
        """Called, before ``on_change``, with the lab id and the row as committed
        after every write of a lab row, or `None` if the write failed (and
        may or may not have committed)."""
        self._specs = _Specs()

    def _lab(self, row: Row[Any], *, keep: bool = True) -> LabRecord:
        """The row as a record; ``keep=False`` for the rows of lists, whose
        specs would push out those of the labs being worked on."""
        spec = self._specs.of(row, keep=keep)
        return LabRecord(**{**row._mapping, "state": LabState(row.state), "spec": spec})

    def _written(self, username: str, lab_id: str, lab: LabRecord | None) -> None:
        for callback in self.on_write:
            callback(username)
        for seen in self.on_row:
            seen(lab_id, lab)
        self._changed(lab_id)

    def _changed(self, lab_id: str) -> None:
        for callback in self.on_change:
            callback(lab_id)

    async def create_lab(
        self,
        *,
        username: str,
        slug: str,
        namespace: str,
        spec: LabSpec,
        actor: Actor,
        trigger: Trigger = Trigger.REQUEST,
        lab_id: str | None = None,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        changes: LabChanges | None = None,
        events: Sequence[NewEvent] = (),
        leader_term: int | None = None,
    ) -> LabRecord:
        """Create a lab row with its first transition out of ``new``.

        Parameters
        ----------
        username, slug, namespace, spec
            The lab's identity and what was asked.
        actor
            Who asked.
        trigger
            ``request`` for a create, ``adopt`` for objects found in the
            cluster without a row (then ``changes["pod_phase"]`` decides the
            state).
        lab_id
            The id to use; a new UUID if not given (adoption keeps the id from
            the objects' labels).
        reason, details
            Recorded in the audit row.
        changes
            Other columns to set.
        events
            Progress events of the first operation.
        leader_term
            Write only while this is the leader's term (an adoption): the
            term row is read-locked in the same transaction, so a new
            leader's bump waits for it (`labd.db.leadership`).

        Raises
        ------
        LabExistsError
            If the user already has a current lab.
        LeadershipLostError
            If ``leader_term`` is given and no longer current.
        """
        changes = changes or {}
        state = next_state(LabState.NEW, trigger, pod_phase=changes.get("pod_phase"))
        now = utcnow()
        lab_id = lab_id or str(uuid.uuid4())
        values: dict[str, Any] = {
            "id": lab_id,
            "username": username,
            "slug": slug,
            "namespace": namespace,
            "state": state.value,
            "spec": spec.to_row(),
            "operation": 1,
            "attempts": 0,
            "version": 1,
            "created_at": now,
            "updated_at": now,
            **changes,
        }
        if state not in SECRET_STATES:
            values["secret_env"] = null()

        record = _Record(trigger, actor, reason, details, events)

        def work(conn: Connection) -> Row[Any]:
            if leader_term is not None:
                _check_term(conn, leader_term)
            write = insert(labs).values(values).returning(*_LAB)
            if not self._one_statement:
                row = conn.execute(write).one()
                self._record(conn, row, LabState.NEW, record)
                return row
            params = record.audit_params(LabState.NEW)
            if events:
                params.update(_new_event_params(events))
            statement = _with_record(write, audit=True, events=bool(events))
            return conn.execute(statement, params).one()

        created: LabRecord | None = None
        try:
            created = self._lab(await self._db.run_write(work))
        except IntegrityError as exc:
            if _is_live_username_violation(exc):
                raise LabExistsError(username) from exc
            raise
        finally:
            self._written(username, lab_id, created)
        return created

    async def transition(
        self,
        lab_id: str,
        trigger: Trigger,
        *,
        actor: Actor,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        expected: LabRecord | None = None,
        changes: LabChanges | None = None,
        events: Sequence[NewEvent] = (),
        new_operation: bool = False,
        final_events: Sequence[NewEvent] = (),
    ) -> LabRecord:
        """Apply ``trigger`` to a lab, atomically with its audit row.

        Parameters
        ----------
        lab_id
            The lab.
        trigger
            What happened.
        actor, reason, details
            Recorded in the audit row.
        expected
            The row the caller based its decision on; `StaleLabError` if the
            lab has moved on since (a newer version).  While it is current,
            the transition is one ``UPDATE`` conditional on it, without
            locking and reading the row first.
        changes
            Other columns to set in the same transaction.
        events
            Progress events to append, to the new operation if one starts.
        new_operation
            Whether the transition starts a new operation (a delete, or a
            cleanup), whose events form a new stream.
        final_events
            Events that end the operation being replaced (e.g. "Operation
            cancelled" when a delete interrupts a spawn).

        Returns
        -------
        LabRecord
            The lab after the transition.

        Raises
        ------
        InvalidTransitionError
            If the trigger is not legal from the lab's state; nothing is
            written.
        LabNotFoundError
            If there is no such lab.
        StaleLabError
            If ``expected`` is given and not current.
        LabExistsError
            If the transition would give the user two current labs.
        """
        changes = changes or {}
        current: LabRecord | None = expected
        record = _Record(trigger, actor, reason, details, events, final_events)

        def work(conn: Connection) -> Row[Any]:
            nonlocal current
            row = None
            if expected is not None:
                # The caller's row is usually still the lab's: then one
                # write does, and takes the row lock the events need.
                with contextlib.suppress(InvalidTransitionError):
                    row = self._move(conn, expected, changes, record, new_operation=new_operation)
            if row is None:
                current = self._lock(conn, lab_id, expected.version if expected else None)
                row = self._move(conn, current, changes, record, new_operation=new_operation)
                if row is None:
                    # Unreachable while the row lock holds; kept so that a
                    # change of isolation can never let two writers win.
                    raise StaleLabError(lab_id, current.version, current.version + 1)
            return row

        moved: LabRecord | None = None
        try:
            batch = self._batch(lab_id, expected, changes, record, new_operation)
            moved = self._lab(await self._db.run_write(work, batch=batch))
        except IntegrityError as exc:
            if current is not None and _is_live_username_violation(exc):
                raise LabExistsError(current.username) from exc
            raise
        finally:
            if current is not None:
                self._written(current.username, lab_id, moved)
        return moved

    async def transition_current(
        self,
        username: str,
        trigger: Trigger,
        *,
        actor: Actor,
        reason: str | None = None,
        changes: LabChanges | None = None,
        new_operation: bool = False,
        unless: Callable[[LabRecord], bool] = lambda _: False,
        final_events: Callable[[LabRecord], Sequence[NewEvent]] = lambda _: (),
    ) -> tuple[LabRecord, bool] | None:
        """Apply ``trigger`` to the user's current lab, read in the same write.

        The lab is the one `get_current_lab` would return, locked; no read
        before the write, and no version to go stale in between.

        Parameters
        ----------
        username
            The user.
        trigger, actor, reason, changes, new_operation
            As for `transition`.
        unless
            Leave a lab for which this is true as it is.
        final_events
            The events that end the operation being replaced, by the lab
            as read (as `transition`'s ``final_events``).

        Returns
        -------
        tuple of LabRecord and bool, or None
            `None` if the user has no lab; else the lab after the
            transition and `True`, or the lab as read and `False` where
            ``unless`` left it.

        Raises
        ------
        InvalidTransitionError
            If the trigger is not legal from the lab's state; nothing is
            written.
        """
        wanted = _CurrentMove(
            username, trigger, actor, reason, changes or {}, new_operation, unless, final_events
        )

        def work(conn: Connection) -> tuple[Row[Any], bool] | None:
            found = conn.execute(_LOCK_CURRENT, {"username": username}).one_or_none()
            if found is None:
                return None
            current = self._lab(found)
            record = wanted.record(current)
            if record is None:
                return found, False
            row = self._move(conn, current, wanted.changes, record, new_operation=new_operation)
            assert row is not None  # The row is locked.
            return row, True

        batch = Batch(self._move_currents, username, wanted)
        outcome: tuple[Row[Any], bool] | None = None
        try:
            outcome = await self._db.run_write(work, batch=batch)
        finally:
            # Unless the lab was left as it was (a failed write may have
            # been written: the caches forget the lab).
            current = wanted.current
            if current is not None and (outcome is None or outcome[1]):
                moved = self._lab(outcome[0]) if outcome is not None else None
                self._written(username, current.id, moved)
        if outcome is None:
            return None
        row, did = outcome
        return self._lab(row), did

    async def update(
        self,
        lab_id: str,
        changes: LabChanges,
        *,
        expected_version: int | None = None,
        events: Sequence[NewEvent] = (),
    ) -> LabRecord:
        """Change bookkeeping columns without a state change.

        Raises
        ------
        LabNotFoundError
            If there is no such lab.
        StaleLabError
            If ``expected_version`` is given and not current.
        """
        held: tuple[str, ...] = ()
        where: dict[str, Any] = {}
        if expected_version is not None:
            held, where = ("version",), {"was_version": expected_version}
        columns = (*changes, "updated_at")
        with_events = self._one_statement and bool(events)
        statement: Update | Select[Any] = (
            _recorded_update(columns, (), held=held, audit=False, events=True)
            if with_events
            else _update_lab(columns, (), held=held)
        )
        username: str | None = None

        def work(conn: Connection) -> Row[Any]:
            nonlocal username
            values = {**changes, "updated_at": utcnow()}
            params = _update_params(lab_id, values, **where)
            if with_events:
                params.update(_new_event_params(events))
            # One statement, which takes the row lock the events need; the
            # row is read only to say why nothing was updated.
            row = conn.execute(statement, params).one_or_none()
            if row is None:
                current = self._lock(conn, lab_id, expected_version)
                raise StaleLabError(lab_id, expected_version or 0, current.version)
            username = row.username
            if not with_events:
                self._insert_events(conn, row, events)
            return row

        updated: LabRecord | None = None
        try:
            updated = self._lab(await self._db.run_write(work))
        finally:
            if username is not None:
                self._written(username, lab_id, updated)
        return updated

    async def add_events(
        self, lab_id: str, events: Sequence[NewEvent], *, in_state: LabState | None = None
    ) -> bool:
        """Append progress events to the lab's current operation.

        The lab row is locked while the events are inserted, so the events of
        one lab are committed in id order and a reader that follows ids never
        skips one.

        Parameters
        ----------
        lab_id
            The lab.
        events
            What to append.
        in_state
            Append only if the lab is in this state (checked under the lock);
            otherwise append nothing.

        Returns
        -------
        bool
            Whether the events were appended.
        """

        def work(conn: Connection) -> bool:
            current = self._lock(conn, lab_id)
            if in_state is not None and current.state is not in_state:
                return False
            self._insert_events(conn, current, events)
            return True

        try:
            return await self._db.run_write(work)
        finally:
            self._changed(lab_id)

    async def claim_due(
        self, *, limit: int, lease: float, exclude: Collection[str] = ()
    ) -> list[LabRecord]:
        """Claim labs whose ``next_attempt_at`` has come, for one step each.

        Claiming pushes ``next_attempt_at`` one lease into the future, so
        another replica (or this one after a crash) retries the lab only if
        the step neither finishes nor reschedules within the lease.  On
        PostgreSQL, ``FOR UPDATE SKIP LOCKED`` lets replicas claim side by
        side without waiting on each other's rows.

        Parameters
        ----------
        limit
            Claim at most this many labs.
        lease
            Seconds the claim holds.
        exclude
            Ids of labs this process is stepping already.
        """
        now = utcnow()
        statement = (
            select(*_LAB)
            .where(labs.c.next_attempt_at <= now)
            .order_by(labs.c.next_attempt_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        if exclude:
            statement = statement.where(labs.c.id.not_in(list(exclude)))

        leased = now + timedelta(seconds=lease)

        def work(conn: Connection) -> list[Row[Any]]:
            rows = conn.execute(statement).all()
            if rows:
                conn.execute(
                    update(labs)
                    .where(labs.c.id.in_([row.id for row in rows]))
                    .values(next_attempt_at=leased)
                )
            return list(rows)

        # Each record as it now stands: leased until ``leased``.
        return [
            dataclasses.replace(self._lab(row), next_attempt_at=leased)
            for row in await self._db.run_write(work)
        ]

    async def release_leases(self, leases: Mapping[str, datetime]) -> int:
        """Make due now the labs still leased until the given times; return how many.

        For a process that stops with leases it will not use (steps handed
        over or cancelled): the next claimer, on this replica or another,
        need not wait for them to run out.  A lab whose ``next_attempt_at``
        moved since (its step rescheduled it, another claim took it after
        the lease ran out) is left alone.
        """
        now = utcnow()

        def work(conn: Connection) -> int:
            released = 0
            for lab_id, lease in leases.items():
                result = conn.execute(
                    update(labs)
                    .where(labs.c.id == lab_id, labs.c.next_attempt_at == lease)
                    .values(next_attempt_at=now)
                )
                released += result.rowcount
            return released

        return await self._db.run_write(work)

    async def due_summary(self) -> tuple[int, datetime | None]:
        """Return how many labs are due now and the oldest due time."""
        statement = select(func.count(), func.min(labs.c.next_attempt_at)).where(
            labs.c.next_attempt_at <= utcnow()
        )
        async with self._db.read() as conn:
            count, oldest = (await conn.execute(statement)).one()
        return int(count), oldest

    async def next_due_time(self) -> datetime | None:
        """Return the earliest ``next_attempt_at`` of any lab, if one is set."""
        ((earliest,),) = await self._db.fetch(_NEXT_DUE)
        due: datetime | None = earliest
        return due

    async def get_lab(self, lab_id: str) -> LabRecord:
        """Return one lab by id.

        Raises
        ------
        LabNotFoundError
            If there is no such lab.
        """
        rows = await self._db.fetch(_SELECT_LAB, {"lab_id": lab_id})
        if not rows:
            raise LabNotFoundError(lab_id)
        return self._lab(rows[0])

    async def find_lab(self, lab_id: str) -> LabRecord | None:
        """Return one lab by id, or `None` if there is no such lab."""
        try:
            return await self.get_lab(lab_id)
        except LabNotFoundError:
            return None

    async def get_current_lab(self, username: str) -> LabRecord | None:
        """Return the user's current lab, or the one being deleted, if any.

        A live lab wins over a deleting one (a new spawn may wait for the
        previous lab's cleanup).
        """
        rows = await self._db.fetch(_SELECT_CURRENT, {"username": username})
        return self._lab(rows[0]) if rows else None

    async def list_current_labs(
        self, *, after: str = "", limit: int | None = None
    ) -> list[LabRecord]:
        """Return users' current labs (as `get_current_lab`), by username, in one query.

        Parameters
        ----------
        after
            Only users whose name sorts after this one (the last of the
            previous page).
        limit
            Read at most this many rows (a page may hold fewer labs: a user
            with several live rows counts each).
        """
        statement = (
            select(*_LAB)
            .where(labs.c.state != LabState.DELETED.value, labs.c.username > after)
            .order_by(labs.c.username, *_CURRENT_FIRST)
            .limit(limit)
        )
        rows = await self._db.fetch(statement)
        current: dict[str, LabRecord] = {}
        for row in rows:
            if row.username not in current:
                current[row.username] = self._lab(row, keep=False)
        return list(current.values())

    async def get_latest_lab(self, username: str) -> LabRecord | None:
        """Return the user's most recent lab, deleted or not."""
        statement = (
            select(*_LAB)
            .where(labs.c.username == username)
            .order_by(labs.c.created_at.desc(), labs.c.id.desc())
            .limit(1)
        )
        rows = await self._db.fetch(statement)
        return self._lab(rows[0]) if rows else None

    async def list_labs(self, states: Iterable[LabState] | None = None) -> list[LabRecord]:
        """Return labs, optionally only those in some states, by username."""
        statement = select(*_LAB).order_by(labs.c.username, labs.c.created_at)
        if states is not None:
            statement = statement.where(labs.c.state.in_([s.value for s in states]))
        rows = await self._db.fetch(statement)
        return [self._lab(row, keep=False) for row in rows]

    async def list_lab_summaries(self, states: Iterable[LabState]) -> list[LabSummary]:
        """Return where the labs in ``states`` stand, without their specs."""
        statement = select(
            labs.c.id,
            labs.c.username,
            labs.c.slug,
            labs.c.namespace,
            labs.c.state,
            labs.c.pod_phase,
            labs.c.version,
        ).where(labs.c.state.in_([s.value for s in states]))
        rows = await self._db.fetch(statement)
        return [LabSummary(**{**row._mapping, "state": LabState(row.state)}) for row in rows]

    async def find_spawning(self, namespace: str) -> LabRecord | None:
        """Return the lab spawning (``creating`` or ``starting``) in ``namespace``, if any.

        The leader's Event watch uses it for spawns that another replica steps.
        """
        statement = (
            select(*_LAB)
            .where(
                labs.c.state.in_([LabState.CREATING.value, LabState.STARTING.value]),
                labs.c.namespace == namespace,
            )
            .order_by(labs.c.created_at.desc())
            .limit(1)
        )
        rows = await self._db.fetch(statement)
        return self._lab(rows[0]) if rows else None

    async def deleting_in(self, namespace: str) -> list[str]:
        """Return the ids of the labs being deleted in ``namespace``."""
        statement = select(labs.c.id).where(
            labs.c.namespace == namespace, labs.c.state == LabState.DELETING.value
        )
        return [str(lab_id) for (lab_id,) in await self._db.fetch(statement)]

    async def wake_deleting(self, namespace: str, *, reached: Step) -> list[str]:
        """Make the delete in ``namespace`` due now, if it has ``reached`` that step.

        The leader's watches call this when a lab's pod or namespace is gone
        and another replica steps its delete.  Only a delete that has
        recorded ``reached`` (pod stopping, namespace deleting) is woken:
        that record is its step's last write, so the step is over and its
        claim is not broken.  Returns the ids of the labs made due.
        """
        done = (
            select(lab_events.c.id)
            .where(
                lab_events.c.lab_id == labs.c.id,
                lab_events.c.operation == labs.c.operation,
                lab_events.c.step == reached.value,
            )
            .exists()
        )
        statement = (
            update(labs)
            .where(labs.c.namespace == namespace, labs.c.state == LabState.DELETING.value, done)
            .values(next_attempt_at=utcnow())
            .returning(labs.c.id)
        )

        def work(conn: Connection) -> list[str]:
            return [str(lab_id) for lab_id in conn.execute(statement).scalars()]

        return await self._db.run_write(work)

    async def count_by_state(self) -> dict[LabState, int]:
        """Return how many labs are in each state (deleted ones included)."""
        statement = select(labs.c.state, func.count().label("labs")).group_by(labs.c.state)
        rows = await self._db.fetch(statement)
        return {LabState(row.state): row.labs for row in rows}

    async def history(
        self, username: str, *, limit: int = 100, before: int | None = None
    ) -> list[TransitionRecord]:
        """Return a user's audit trail over all their labs, newest first.

        Parameters
        ----------
        username
            Whose history.
        limit
            At most this many rows.
        before
            Only rows with a smaller id (for paging).
        """
        statement = (
            select(lab_transitions)
            .where(lab_transitions.c.username == username)
            .order_by(lab_transitions.c.id.desc())
            .limit(limit)
        )
        if before is not None:
            statement = statement.where(lab_transitions.c.id < before)
        rows = await self._db.fetch(statement)
        return [_transition(row) for row in rows]

    async def lab_history(self, lab_id: str) -> list[TransitionRecord]:
        """Return every transition of one lab, oldest first."""
        statement = (
            select(lab_transitions)
            .where(lab_transitions.c.lab_id == lab_id)
            .order_by(lab_transitions.c.version)
        )
        rows = await self._db.fetch(statement)
        return [_transition(row) for row in rows]

    async def events(
        self, lab_id: str, operation: int, *, after: int | None = None
    ) -> list[EventRecord]:
        """Return the events of one operation of a lab, in order.

        Parameters
        ----------
        lab_id
            The lab.
        operation
            Which of its operations.
        after
            Only events with a larger id (``Last-Event-ID`` resume).
        """
        statement = (
            select(lab_events)
            .where(lab_events.c.lab_id == lab_id, lab_events.c.operation == operation)
            .order_by(lab_events.c.id)
        )
        if after is not None:
            statement = statement.where(lab_events.c.id > after)
        rows = await self._db.fetch(statement)
        return [_event(row) for row in rows]

    def _move(
        self,
        conn: Connection,
        lab: LabRecord,
        changes: LabChanges,
        record: _Record,
        *,
        new_operation: bool,
    ) -> Row[Any] | None:
        """Write the transition from ``lab``, recorded; `None` if the row is no longer ``lab``.

        The row must still hold what the machine's answer depends on: the
        state (a new state is a new version) and the pod phase (an update
        may change it within a version).  The events are inserted after the
        ``UPDATE``, under its row lock: a lab's events commit in id order
        (see `add_events`).
        """
        move = _Move.of(lab, changes, record, new_operation=new_operation)
        if not self._one_statement:
            return self._write_moves(conn, [move]).get(lab.id)
        params = {**move.params, **record.audit_params(lab.state)}
        if move.events:
            params.update(_event_params(move.events))
        statement = _recorded_update(
            move.columns, move.nulls, held=_HELD, audit=True, events=bool(move.events)
        )
        return conn.execute(statement, params).one_or_none()

    def _batch(
        self,
        lab_id: str,
        expected: LabRecord | None,
        changes: LabChanges,
        record: _Record,
        new_operation: bool,
    ) -> Batch | None:
        """How `transition`'s write may join others: as the move from ``expected``."""
        if expected is None:
            return None
        try:
            move = _Move.of(expected, changes, record, new_operation=new_operation)
        except InvalidTransitionError:
            return None  # Its work reads the lab again.
        return Batch(self._moves_batch, lab_id, move) if self._batchable(move) else None

    def _batchable(self, move: _Move) -> bool:
        return move.shape is not None or not self._one_statement

    def _moves_batch(self, conn: Connection, moves: list[_Move]) -> list[Any]:
        """`Batcher` of `transition`: each row written, or `UNBATCHED` where the lab moved on."""
        written = self._write_moves(conn, moves)
        return [written.get(move.lab.id, UNBATCHED) for move in moves]

    def _write_moves(self, conn: Connection, moves: Sequence[_Move]) -> dict[str, Row[Any]]:
        """Write ``moves`` together: the rows written, by lab id.

        On PostgreSQL a statement per shape (`_batched_moves`).  On SQLite,
        which has no round trips but costs SQLAlchemy's work per statement,
        each lab's ``UPDATE``, then every audit row in one statement and
        every event in another (the driver's executemany).
        """
        if self._one_statement:
            return _write_moves_at_once(conn, moves)
        written: dict[str, Row[Any]] = {}
        audits: list[dict[str, Any]] = []
        events: list[dict[str, Any]] = []
        now = utcnow()
        for move in moves:
            update = _update_lab(move.columns, move.nulls, held=_HELD)
            row = conn.execute(update, move.params).one_or_none()
            if row is None:
                continue
            written[row.id] = row
            audits.append(_audit_values(row, move.lab.state, move.record))
            for event, operation in move.events:
                operation = row.operation if operation is None else operation
                events.append({"lab_id": row.id, **_event_values(event, operation, now)})
        if audits:
            conn.execute(_INSERT_TRANSITION, audits)
        if events:
            conn.execute(_INSERT_EVENT, events)
        return written

    def _move_currents(self, conn: Connection, wanted: list[_CurrentMove]) -> list[Any]:
        """`Batcher` of `transition_current`: the users' current labs locked and moved together."""
        usernames = [each.username for each in wanted]
        found: dict[str, Row[Any]]
        if self._one_statement:
            found = {
                row.username: row for row in conn.execute(_LOCK_CURRENTS, {"usernames": usernames})
            }
        else:
            # Every lab of the users not deleted, the current one first
            # (the writer's lock is the whole database).
            found = {}
            for each_lab in conn.execute(_SELECT_USERS_LABS, {"usernames": usernames}):
                found.setdefault(each_lab.username, each_lab)
        results: list[Any] = []
        for each in wanted:
            row = found.get(each.username)
            if row is None:
                results.append(None)
                continue
            current = self._lab(row)
            record = each.record(current)
            if record is None:
                results.append((row, False))
                continue
            try:
                move = _Move.of(current, each.changes, record, new_operation=each.new_operation)
            except InvalidTransitionError:
                results.append(UNBATCHED)  # Its work raises it, alone.
                continue
            results.append(move if self._batchable(move) else UNBATCHED)
        written = self._write_moves(conn, [r for r in results if isinstance(r, _Move)])
        return [
            _moved(written, result) if isinstance(result, _Move) else result for result in results
        ]

    def _lock(
        self, conn: Connection, lab_id: str, expected_version: int | None = None
    ) -> LabRecord:
        """Lock the lab's row; `StaleLabError` if it is not at ``expected_version``."""
        row = conn.execute(_LOCK_LAB, {"lab_id": lab_id}).one_or_none()
        if row is None:
            raise LabNotFoundError(lab_id)
        current = self._lab(row)
        if expected_version is not None and current.version != expected_version:
            raise StaleLabError(lab_id, expected_version, current.version)
        return current

    def _record(
        self, conn: Connection, row: Row[Any], from_state: LabState, record: _Record
    ) -> None:
        """Insert the audit row of the transition to ``row``, and its events (SQLite)."""
        conn.execute(_INSERT_TRANSITION, _audit_values(row, from_state, record))
        self._insert_events(conn, row, record.events)

    def _insert_events(
        self, conn: Connection, lab: LabRecord | Row[Any], events: Sequence[NewEvent]
    ) -> None:
        if not events:
            return
        now = utcnow()
        # One statement, run once per event in list order (the driver's
        # executemany), so ids follow the list on every database; nothing
        # is read back: the followers read events by id (docs/api.md).
        conn.execute(
            _INSERT_EVENT,
            [{"lab_id": lab.id, **_event_values(event, lab.operation, now)} for event in events],
        )


def _check_term(conn: Connection, term: int) -> None:
    current = conn.execute(_LOCK_TERM).scalar_one_or_none()
    if current != term:
        raise LeadershipLostError(f"term {term} is over: the current term is {current}")


def _is_live_username_violation(exc: IntegrityError) -> bool:
    text = str(exc.orig)
    return "uq_labs_username_live" in text or "labs.username" in text


class _Specs:
    """Lab specs as validated from rows, kept by lab id: a lab's spec never changes.

    Validation was a fifth of the work of making a row a `LabRecord`, done
    on every read and write of a lab (five times in a delete).  Used from
    the event loop and from SQLite's writer thread.
    """

    kept: Final = 1024
    """Specs kept, the most recently used: the labs in flight in a burst of
    1,000 spawns or deletes.  A spec takes about 3.7 KB: 4 MB in all."""

    def __init__(self) -> None:
        self._specs: OrderedDict[str, LabSpec] = OrderedDict()
        self._lock = threading.Lock()

    def of(self, row: Row[Any], *, keep: bool = True) -> LabSpec:
        """The spec of ``row``, a row of ``labs``; kept for next time if ``keep``."""
        with self._lock:
            spec = self._specs.get(row.id)
            if spec is not None:
                self._specs.move_to_end(row.id)
                return spec
        spec = LabSpec.from_row_text(row.spec)  # The text, as `_LAB` reads it.
        if not keep:
            return spec
        with self._lock:
            self._specs[row.id] = spec
            if len(self._specs) > self.kept:
                self._specs.popitem(last=False)
        return spec


def _transition(row: Row[Any]) -> TransitionRecord:
    return TransitionRecord(**row._mapping)


def _event(row: Row[Any]) -> EventRecord:
    return EventRecord(**{**row._mapping, "type": EventType(row.type), "step": _step(row.step)})


def _step(name: str | None) -> Step | None:
    """The step of an event; one a newer labd wrote and this one does not know is none."""
    try:
        return None if name is None else Step(name)
    except ValueError:
        return None
