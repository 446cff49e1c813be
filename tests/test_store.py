"""The lab record in SQL: transitions, audit history, events, concurrency.

Every test here runs on SQLite and on PostgreSQL (the ``database`` fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import bindparam, event, func, select, text
from sqlalchemy.engine import Connection

from labd.db.database import Batch, Database, database_unreachable
from labd.db.schema import UTCDateTime, lab_events, lab_transitions, labs
from labd.db.status import lab_state_model
from labd.db.store import LabExistsError, LabNotFoundError, LabStore, StaleLabError
from labd.lab.machine import InvalidTransitionError, LabState, Trigger
from labd.lab.records import Actor, EventType, LabRecord, NewEvent
from labd.lab.spec import LabSpec, SpecOptions
from tests.support.databases import terminate_sessions
from tests.support.specs import ROWS
from tests.support.transitions import LEGAL

S = LabState
T = Trigger

# The shortest trigger sequence from a fresh request to each state.
PATHS: dict[LabState, list[Trigger]] = {
    S.REQUESTED: [],
    S.CREATING: [T.START],
    S.STARTING: [T.START, T.OBJECTS_READY],
    S.RUNNING: [T.START, T.OBJECTS_READY, T.POD_RUNNING],
    S.EXITED: [T.START, T.OBJECTS_READY, T.POD_RUNNING, T.POD_EXITED],
    S.FAILED: [T.FAIL],
    S.DELETING: [T.DELETE],
    S.DELETED: [T.DELETE, T.DELETED],
}

_names = itertools.count()


async def new_lab(store: LabStore, username: str | None = None) -> LabRecord:
    username = username or f"user{next(_names)}"
    return await store.create_lab(
        username=username,
        slug=username.lower(),
        namespace=f"labd-{username.lower()}",
        spec=LabSpec(options=SpecOptions(size="small")),
        actor=Actor.HUB,
        reason="create",
        events=[NewEvent(EventType.INFO, f"Starting lab creation for {username}", 1)],
    )


async def lab_in(store: LabStore, state: LabState) -> LabRecord:
    lab = await new_lab(store)
    for trigger in PATHS[state]:
        lab = await store.transition(lab.id, trigger, actor=Actor.SCHEDULER)
    assert lab.state is state
    return lab


async def count(database: Database, table: object) -> int:
    async with database.read() as conn:
        return int((await conn.scalar(select(func.count()).select_from(table))) or 0)  # type: ignore[arg-type]


async def test_create_records_the_first_transition_and_events(database: Database) -> None:
    store = LabStore(database)
    lab = await new_lab(store, "alice")
    assert lab.state is S.REQUESTED
    assert lab.version == 1
    assert lab.operation == 1
    assert lab.created_at.tzinfo is UTC
    assert await store.get_lab(lab.id) == lab
    [row] = await store.lab_history(lab.id)
    assert (row.from_state, row.to_state, row.trigger, row.actor) == (
        "new",
        "requested",
        "request",
        "hub",
    )
    assert row.version == 1
    assert row.username == "alice"
    [event] = await store.events(lab.id, 1)
    assert (event.type, event.message, event.progress) == (
        EventType.INFO,
        "Starting lab creation for alice",
        1,
    )


@pytest.mark.parametrize("source", [s for s in LabState if s is not S.NEW])
async def test_every_trigger_from_every_persisted_state(
    database: Database, source: LabState
) -> None:
    store = LabStore(database)
    for trigger in Trigger:
        lab = await lab_in(store, source)
        before = await store.lab_history(lab.id)
        expected = LEGAL.get((source, trigger))
        if expected is None:
            with pytest.raises(InvalidTransitionError):
                await store.transition(
                    lab.id,
                    trigger,
                    actor=Actor.SCHEDULER,
                    changes={"last_error": "must not be written"},
                    events=[NewEvent(EventType.ERROR, "must not be written")],
                )
            after = await store.get_lab(lab.id)
            assert after == lab, f"{trigger} from {source} wrote to the lab"
            assert await store.lab_history(lab.id) == before
            continue
        moved = await store.transition(
            lab.id,
            trigger,
            actor=Actor.WATCHER,
            reason=f"test {trigger}",
            details={"source": source.value},
        )
        assert moved.state is expected
        assert moved.version == lab.version + 1
        history = await store.lab_history(lab.id)
        assert len(history) == moved.version
        last = history[-1]
        assert (last.from_state, last.to_state, last.trigger) == (source, expected, trigger)
        assert (last.actor, last.reason, last.details) == (
            "watcher",
            f"test {trigger}",
            {"source": source.value},
        )
        assert (moved.deleted_at is not None) == (expected is S.DELETED)


async def test_history_has_one_row_per_version_without_gaps(database: Database) -> None:
    store = LabStore(database)
    lab = await lab_in(store, S.DELETED)
    history = await store.lab_history(lab.id)
    assert [row.version for row in history] == list(range(1, lab.version + 1))
    assert [row.to_state for row in history] == ["requested", "deleting", "deleted"]
    for earlier, later in itertools.pairwise(history):
        assert earlier.to_state == later.from_state
        assert earlier.created_at <= later.created_at


async def test_stale_version_is_refused_and_nothing_written(database: Database) -> None:
    store = LabStore(database)
    lab = await lab_in(store, S.RUNNING)
    await store.update(lab.id, {"pod_phase": "Running"})
    moved = await store.transition(lab.id, T.DELETE, actor=Actor.HUB, expected=lab)
    with pytest.raises(StaleLabError) as info:
        await store.transition(lab.id, T.POD_EXITED, actor=Actor.WATCHER, expected=lab)
    assert (info.value.expected, info.value.actual) == (lab.version, moved.version)
    assert await store.get_lab(lab.id) == moved
    with pytest.raises(StaleLabError):
        await store.update(lab.id, {"attempts": 3}, expected_version=lab.version)
    assert (await store.get_lab(lab.id)).attempts == 0


async def test_an_update_is_one_statement_that_reads_no_row_first(database: Database) -> None:
    store = LabStore(database)
    lab = await lab_in(store, S.RUNNING)
    event = NewEvent(EventType.INFO, "Still here")
    with statements_run(database) as statements:
        updated = await store.update(lab.id, {"attempts": 2}, events=[event])
    assert not [s for s in statements if s.startswith("SELECT")], statements
    assert sum(map(updates_labs, statements)) == 1, statements
    # On PostgreSQL the events go in the same statement (one round trip).
    assert database.is_sqlite or len(statements) == 2, statements  # SET LOCAL, then it.
    assert [e.message for e in await store.events(lab.id, lab.operation)][-1] == "Still here"
    assert (updated.attempts, updated.version) == (2, lab.version)
    assert (await store.get_lab(lab.id)).attempts == 2
    with pytest.raises(LabNotFoundError):
        await store.update("no-such-lab", {"attempts": 1})
    with pytest.raises(LabNotFoundError):
        await store.update("no-such-lab", {"attempts": 1}, expected_version=1)


async def test_a_transition_is_one_write_with_its_audit_row_and_events_in_order(
    database: Database,
) -> None:
    # On PostgreSQL the update, its audit row and its events (those ending
    # the operation before, then the new operation's) are one statement:
    # one round trip.  Their ids follow the lists on both databases.
    store = LabStore(database)
    lab = await lab_in(store, S.STARTING)
    ending = [NewEvent(EventType.INFO, f"end {n}") for n in range(4)]
    ending.append(NewEvent(EventType.FAILED, "Operation cancelled", terminal=True))
    starting = [NewEvent(EventType.INFO, f"start {n}", progress=10 * n + 5) for n in range(5)]
    with statements_run(database) as statements:
        moved = await store.transition(
            lab.id,
            T.DELETE,
            actor=Actor.HUB,
            reason="Delete requested",
            details={"why": "test"},
            expected=lab,
            new_operation=True,
            changes={"attempts": 0},
            events=starting,
            final_events=ending,
        )
    writes = [s for s in statements if not s.startswith("SET LOCAL")]
    assert database.is_sqlite or len(writes) == 1, statements
    assert (moved.state, moved.version, moved.operation) == (S.DELETING, lab.version + 1, 2)
    before = await store.events(lab.id, lab.operation)
    assert [e.message for e in before[-len(ending) :]] == [e.message for e in ending]
    after = await store.events(lab.id, moved.operation)
    assert [(e.message, e.progress) for e in after] == [(e.message, e.progress) for e in starting]
    ids = [e.id for e in [*before, *after]]
    assert ids == sorted(ids)
    audit = (await store.lab_history(lab.id))[-1]
    assert (audit.from_state, audit.to_state) == ("starting", "deleting")
    assert audit.version == moved.version
    assert (audit.trigger, audit.actor, audit.reason) == ("delete", "hub", "Delete requested")
    assert audit.details == {"why": "test"} and audit.created_at == moved.updated_at

    # A write from a stale row (legal from its state) writes nothing: no
    # row, no audit row, no events.
    with pytest.raises(StaleLabError):
        await store.transition(
            lab.id, T.DELETE, actor=Actor.HUB, expected=lab, events=starting, final_events=ending
        )
    assert await store.events(lab.id, lab.operation) == before
    assert len(await store.lab_history(lab.id)) == moved.version
    assert await store.events(lab.id, moved.operation) == after


async def test_events_are_one_statement_and_keep_their_order(database: Database) -> None:
    store = LabStore(database)
    lab = await lab_in(store, S.RUNNING)
    messages = [f"step {n}" for n in range(5)]
    with statements_run(database) as statements:
        appended = await store.add_events(lab.id, [NewEvent(EventType.INFO, m) for m in messages])
    assert appended
    assert sum(s.startswith("INSERT INTO lab_events") for s in statements) == 1, statements
    stored = await store.events(lab.id, lab.operation)
    assert [e.message for e in stored[-len(messages) :]] == messages
    assert [e.id for e in stored] == sorted(e.id for e in stored)
    elsewhere = [NewEvent(EventType.INFO, "not while running")]
    assert not await store.add_events(lab.id, elsewhere, in_state=S.DELETING)
    assert await store.events(lab.id, lab.operation) == stored


async def test_a_fetch_is_its_one_statement(database: Database) -> None:
    store = LabStore(database)
    lab = await lab_in(store, S.RUNNING)
    with statements_run(database) as statements:
        assert (await store.get_lab(lab.id)).id == lab.id
    assert [s.split()[0] for s in statements] == ["SELECT"], statements


async def test_a_transition_of_the_current_lab_reads_it_in_its_write(database: Database) -> None:
    store = LabStore(database)
    spawning = await lab_in(store, S.STARTING)
    cancelled = NewEvent(EventType.FAILED, "Operation cancelled", terminal=True)

    def deleting(lab: LabRecord) -> bool:
        return lab.state is S.DELETING

    def final(lab: LabRecord) -> list[NewEvent]:
        return [cancelled] if lab.state is S.STARTING else []

    with statements_run(database) as statements:
        found = await store.transition_current(
            spawning.username,
            T.DELETE,
            actor=Actor.HUB,
            new_operation=True,
            unless=deleting,
            final_events=final,
        )
    assert found is not None
    moved, did = found
    assert did and moved.state is S.DELETING and moved.operation == spawning.operation + 1
    # One write: the lab is read in it, under its lock, and never before it.
    selects = [i for i, s in enumerate(statements) if s.startswith("SELECT")]
    updates = [i for i, s in enumerate(statements) if updates_labs(s)]
    assert len(selects) == 1 and len(updates) == 1 and selects[0] < updates[0], statements
    assert database.is_sqlite or statements[selects[0]].endswith("FOR UPDATE"), statements
    ended = await store.events(spawning.id, spawning.operation)
    assert ended[-1].message == "Operation cancelled" and ended[-1].terminal
    history = await store.lab_history(spawning.id)
    assert (history[-1].from_state, history[-1].to_state) == ("starting", "deleting")

    again = await store.transition_current(
        spawning.username, T.DELETE, actor=Actor.HUB, unless=deleting, final_events=final
    )
    assert again is not None
    assert again[0].version == moved.version and not again[1]
    assert len(await store.lab_history(spawning.id)) == len(history)
    assert await store.transition_current("nobody", T.DELETE, actor=Actor.HUB) is None


async def test_transitions_queued_together_are_written_together(database: Database) -> None:
    # Transitions from the callers' rows that commit in one group are
    # written together, each lab with its audit row and its events in
    # order: on PostgreSQL as one statement, on SQLite as an UPDATE per lab
    # and one INSERT of all audit rows and one of all events.
    store = LabStore(database)
    labs_ = [await lab_in(store, S.STARTING) for _ in range(5)]
    with statements_run(database) as statements:
        moved = await asyncio.gather(*(delete(store, lab, n) for n, lab in enumerate(labs_)))
    writes = Counter(
        " ".join(s.split()[:3]) for s in statements if not s.startswith(("SET LOCAL", "BEGIN"))
    )
    if database.is_sqlite:
        assert writes == {
            "UPDATE labs SET": 5,
            "INSERT INTO lab_transitions": 1,
            "INSERT INTO lab_events": 1,
        }, statements
    else:
        assert writes == {"WITH lab AS": 1}, statements
    for number, (lab, after) in enumerate(zip(labs_, moved, strict=True)):
        assert (after.state, after.operation) == (S.DELETING, lab.operation + 1)
        history = await store.lab_history(lab.id)
        assert after.version == len(history) == lab.version + 1
        audit = history[-1]
        assert (audit.from_state, audit.to_state, audit.reason) == (
            "starting",
            "deleting",
            f"delete {number}",
        )
        assert audit.details == ({"number": number} if number % 2 else None)
        assert audit.created_at == after.updated_at
        ended = await store.events(lab.id, lab.operation)
        assert ended[-1].message == f"end {number}"
        started = await store.events(lab.id, after.operation)
        assert [e.message for e in started] == [f"{number}.{n}" for n in range(number)]
        ids = [e.id for e in [*ended, *started]]
        assert ids == sorted(ids)


async def test_a_stale_or_illegal_transition_in_a_batch_fails_alone(database: Database) -> None:
    store = LabStore(database)
    labs_ = [await lab_in(store, S.STARTING) for _ in range(4)]
    stale = labs_[1]
    await store.transition(stale.id, T.POD_RUNNING, actor=Actor.SCHEDULER)
    wrong = await lab_in(store, S.DELETING)
    moved = await asyncio.gather(
        *(delete(store, lab, n) for n, lab in enumerate(labs_)),
        store.transition(wrong.id, T.OBJECTS_READY, actor=Actor.HUB, expected=wrong),
        return_exceptions=True,
    )
    assert isinstance(moved.pop(), InvalidTransitionError)
    assert isinstance(moved.pop(1), StaleLabError)
    assert len(await store.lab_history(stale.id)) == stale.version + 1
    assert (await store.get_lab(wrong.id)).version == wrong.version
    for lab, after in zip([labs_[0], *labs_[2:]], moved, strict=True):
        assert isinstance(after, LabRecord), after
        assert after.state is S.DELETING
        assert len(await store.lab_history(lab.id)) == after.version == lab.version + 1


def delete(store: LabStore, lab: LabRecord, number: int) -> Awaitable[LabRecord]:
    """A delete of ``lab`` from its row: ``number`` events, and details if it is odd."""
    return store.transition(
        lab.id,
        T.DELETE,
        actor=Actor.HUB,
        reason=f"delete {number}",
        details={"number": number} if number % 2 else None,
        expected=lab,
        new_operation=True,
        events=[NewEvent(EventType.INFO, f"{number}.{n}") for n in range(number)],
        final_events=[NewEvent(EventType.FAILED, f"end {number}", terminal=True)],
    )


async def test_transitions_of_current_labs_queued_together_are_written_together(
    database: Database,
) -> None:
    store = LabStore(database)
    starting = [await lab_in(store, S.STARTING) for _ in range(4)]
    deleting = await lab_in(store, S.DELETING)
    deleted = await lab_in(store, S.DELETED)
    cancelled = NewEvent(EventType.FAILED, "Operation cancelled", terminal=True)

    def delete(username: str) -> Awaitable[tuple[LabRecord, bool] | None]:
        return store.transition_current(
            username,
            T.DELETE,
            actor=Actor.HUB,
            new_operation=True,
            unless=lambda lab: lab.state is S.DELETING,
            final_events=lambda lab: [cancelled],
        )

    usernames = [lab.username for lab in [*starting, deleting, deleted]]
    with statements_run(database) as statements:
        found = await asyncio.gather(*(delete(username) for username in [*usernames, "nobody"]))
    if database.is_sqlite:
        # One read of every user's labs, an UPDATE per lab moved, one INSERT
        # of all audit rows and one of all events.
        assert sum(s.startswith("SELECT") for s in statements) == 1, statements
        assert sum(updates_labs(s) for s in statements) == 4, statements
        assert sum(s.startswith("INSERT INTO lab_") for s in statements) == 2, statements
    else:
        # One locked read of every user's lab, one write of those it moves.
        reads = [s for s in statements if s.startswith("SELECT") and s.endswith("ON true")]
        assert len(reads) == 1 and sum(updates_labs(s) for s in statements) == 1, statements
    for lab, outcome in zip(starting, found, strict=False):
        assert isinstance(outcome, tuple), outcome
        after, did = outcome
        assert did and (after.state, after.version) == (S.DELETING, lab.version + 1)
        last = (await store.events(lab.id, lab.operation))[-1]
        assert (last.message, last.terminal) == (cancelled.message, True)
        history = await store.lab_history(lab.id)
        assert (history[-1].version, history[-1].to_state) == (after.version, "deleting")
    assert found[4] == (deleting, False)
    assert found[5] is None and found[6] is None  # A deleted lab is no one's current lab.

    # A trigger that is not legal fails alone.
    fresh = await lab_in(store, S.STARTING)
    again = await asyncio.gather(
        delete(fresh.username),
        store.transition_current(deleting.username, T.POD_RUNNING, actor=Actor.HUB),
        return_exceptions=True,
    )
    assert isinstance(again[0], tuple) and again[0][0].state is S.DELETING
    assert isinstance(again[1], InvalidTransitionError)
    assert len(await store.lab_history(deleting.id)) == deleting.version


def updates_labs(statement: str) -> bool:
    """Whether ``statement`` updates a lab: on PostgreSQL with its audit row
    and events, in one data-modifying ``WITH``."""
    return statement.startswith(("UPDATE labs", "WITH lab AS (UPDATE labs"))


@contextlib.contextmanager
def statements_run(database: Database) -> Iterator[list[str]]:
    """Every statement run on the database's engines in the block, whitespace folded."""
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_: object) -> None:
        statements.append(" ".join(statement.split()))

    for engine in database.sync_engines:
        event.listen(engine, "before_cursor_execute", seen)
    try:
        yield statements
    finally:
        for engine in database.sync_engines:
            event.remove(engine, "before_cursor_execute", seen)


async def grouped_table(database: Database) -> None:
    """An empty table ``grouped (n INTEGER)`` for the group-commit tests."""
    await database.run_write(lambda conn: conn.execute(text("DROP TABLE IF EXISTS grouped")))
    await database.run_write(lambda conn: conn.execute(text("CREATE TABLE grouped (n INTEGER)")))


async def grouped_rows(database: Database) -> list[int]:
    """The values of ``grouped``, in order."""
    async with database.read() as conn:
        rows = await conn.execute(text("SELECT n FROM grouped ORDER BY n"))
        return list(rows.scalars())


async def test_a_transition_from_the_current_row_neither_locks_nor_reads_it_first(
    database: Database,
) -> None:
    store = LabStore(database)
    lab = await lab_in(store, S.RUNNING)
    with statements_run(database) as statements:
        moved = await store.transition(lab.id, T.DELETE, actor=Actor.HUB, expected=lab)
        quick = list(statements)
        # A row changed within its version (here its pod phase) is locked
        # and read: the machine answers from what the row holds now.
        await store.update(moved.id, {"pod_phase": "Running"})
        statements.clear()
        gone = await store.transition(moved.id, T.DELETED, actor=Actor.SCHEDULER, expected=moved)
    assert not [s for s in quick if s.startswith("SELECT labs.")], quick
    assert [s for s in quick if updates_labs(s)], quick
    assert [s for s in statements if s.startswith("SELECT labs.")], statements
    assert (gone.state, gone.version) == (S.DELETED, moved.version + 1)
    assert [t.version for t in await store.lab_history(lab.id)][-2:] == [
        lab.version + 1,
        gone.version,
    ]


async def test_each_lab_keeps_its_own_spec_through_the_spec_cache(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Specs are validated once per lab and kept by id; none is served for another lab."""
    store = LabStore(database)
    monkeypatch.setattr(type(store._specs), "kept", 2)
    sizes = ["small", "medium", "large"]
    made = []
    for size in sizes:
        made.append(
            await store.create_lab(
                username=f"spec-{size}",
                slug=f"spec-{size}",
                namespace=f"labd-spec-{size}",
                spec=LabSpec(options=SpecOptions(size=size)),
                actor=Actor.HUB,
            )
        )
    # Two rounds: by the second, each spec was dropped for the later labs'.
    for trigger in (Trigger.START, Trigger.FAIL):
        for lab, size in zip(made, sizes, strict=True):
            assert (await store.get_lab(lab.id)).spec.options.size == size
            moved = await store.transition(lab.id, trigger, actor=Actor.SCHEDULER)
            assert moved.spec.options.size == size
            listed = {each.id: each for each in await store.list_labs()}
            assert [listed[lab.id].spec.options.size for lab in made] == sizes
    assert len(store._specs._specs) == 2


async def test_unknown_lab(database: Database) -> None:
    store = LabStore(database)
    with pytest.raises(LabNotFoundError):
        await store.get_lab("no-such-lab")
    with pytest.raises(LabNotFoundError):
        await store.transition("no-such-lab", T.DELETE, actor=Actor.HUB)
    assert await store.get_current_lab("nobody") is None
    assert await store.get_latest_lab("nobody") is None


async def test_one_live_lab_per_user(database: Database) -> None:
    store = LabStore(database)
    first = await new_lab(store, "bob")
    with pytest.raises(LabExistsError):
        await new_lab(store, "bob")
    for state_path in ([T.FAIL], [T.CLEANUP]):
        for trigger in state_path:
            first = await store.transition(first.id, trigger, actor=Actor.SCHEDULER)
        if first.is_live:
            with pytest.raises(LabExistsError):
                await new_lab(store, "bob")
    # The previous lab is being deleted: the user's next lab may exist beside it.
    assert first.state is S.DELETING
    second = await new_lab(store, "bob")
    assert await store.get_current_lab("bob") == second
    # The old lab may not come back to life next to the new one.
    with pytest.raises(LabExistsError):
        await store.transition(first.id, T.DELETE_FAILED, actor=Actor.SCHEDULER)
    assert (await store.get_lab(first.id)).state is S.DELETING
    await store.transition(first.id, T.DELETED, actor=Actor.SCHEDULER)
    assert await store.get_latest_lab("bob") == second
    assert await count(database, labs) == 2


async def test_update_changes_bookkeeping_only(database: Database) -> None:
    store = LabStore(database)
    lab = await lab_in(store, S.STARTING)
    later = datetime.now(tz=UTC) + timedelta(seconds=30)
    updated = await store.update(
        lab.id,
        {"attempts": 2, "next_attempt_at": later, "pod_phase": "Pending", "last_error": "429"},
        events=[NewEvent(EventType.INFO, "Pulling image", 35)],
    )
    assert (updated.state, updated.version) == (lab.state, lab.version)
    assert updated.attempts == 2
    assert updated.next_attempt_at == later
    assert updated.next_attempt_at.tzinfo is UTC
    assert len(await store.lab_history(lab.id)) == lab.version
    assert [e.message for e in await store.events(lab.id, 1)][-1] == "Pulling image"


async def test_a_claim_leases_and_a_release_frees_only_the_lease_still_held(
    database: Database,
) -> None:
    store = LabStore(database)
    kept, moved = await new_lab(store), await new_lab(store)
    for lab in (kept, moved):
        await store.update(lab.id, {"next_attempt_at": datetime.now(tz=UTC)})
    claimed = {lab.id: lab for lab in await store.claim_due(limit=10, lease=30)}
    assert claimed.keys() == {kept.id, moved.id}
    for lab in claimed.values():  # The records say the lease, as the rows do.
        assert lab.next_attempt_at == (await store.get_lab(lab.id)).next_attempt_at
        assert lab.next_attempt_at is not None
        assert lab.next_attempt_at > datetime.now(tz=UTC) + timedelta(seconds=29)
    later = datetime.now(tz=UTC) + timedelta(seconds=10)
    await store.update(moved.id, {"next_attempt_at": later})  # Its step rescheduled it.
    leases = {lab.id: lab.next_attempt_at for lab in claimed.values() if lab.next_attempt_at}
    assert await store.release_leases(leases) == 1
    released = (await store.get_lab(kept.id)).next_attempt_at
    assert released is not None
    assert released <= datetime.now(tz=UTC)
    assert (await store.get_lab(moved.id)).next_attempt_at == later


async def test_events_follow_operations(database: Database) -> None:
    store = LabStore(database)
    lab = await lab_in(store, S.RUNNING)
    await store.add_events(lab.id, [NewEvent(EventType.COMPLETE, "Lab started", terminal=True)])
    lab = await store.transition(
        lab.id,
        T.DELETE,
        actor=Actor.HUB,
        new_operation=True,
        events=[NewEvent(EventType.INFO, "Shutting down Kubernetes pod", 25)],
    )
    assert lab.operation == 2
    spawn = await store.events(lab.id, 1)
    delete = await store.events(lab.id, 2)
    assert [e.type for e in spawn] == [EventType.INFO, EventType.COMPLETE]
    assert spawn[-1].terminal
    assert [e.message for e in delete] == ["Shutting down Kubernetes pod"]
    assert spawn[-1].id < delete[0].id
    assert await store.events(lab.id, 1, after=spawn[0].id) == spawn[1:]
    with pytest.raises(LabNotFoundError):
        await store.add_events("missing", [NewEvent(EventType.INFO, "x")])


async def test_history_pages_newest_first(database: Database) -> None:
    store = LabStore(database)
    first = await lab_in(store, S.DELETED)
    await new_lab(store, first.username)
    rows = await store.history(first.username, limit=100)
    assert [r.to_state for r in rows] == ["requested", "deleted", "deleting", "requested"]
    page = await store.history(first.username, limit=2)
    rest = await store.history(first.username, limit=2, before=page[-1].id)
    assert page + rest == rows


async def test_lists_and_counts(database: Database) -> None:
    store = LabStore(database)
    running = await lab_in(store, S.RUNNING)
    failed = await lab_in(store, S.FAILED)
    await lab_in(store, S.DELETED)
    assert [lab.id for lab in await store.list_labs([S.RUNNING])] == [running.id]
    assert {lab.id for lab in await store.list_labs([S.RUNNING, S.FAILED])} == {
        running.id,
        failed.id,
    }
    assert await store.count_by_state() == {S.RUNNING: 1, S.FAILED: 1, S.DELETED: 1}


async def test_adoption_rebuilds_a_row_with_the_given_id(database: Database) -> None:
    store = LabStore(database)
    lab = await store.create_lab(
        lab_id="5f7a3c1e-0000-4000-8000-000000000001",
        username="carol",
        slug="carol",
        namespace="labd-carol",
        spec=LabSpec(),
        actor=Actor.RECONCILER,
        trigger=T.ADOPT,
        changes={
            "pod_phase": "Running",
            "internal_url": "http://lab.labd-carol:8888/",
            "secret_env": SECRET,
        },
    )
    assert (lab.id, lab.state, lab.internal_url) == (
        "5f7a3c1e-0000-4000-8000-000000000001",
        S.RUNNING,
        "http://lab.labd-carol:8888/",
    )
    [row] = await store.lab_history(lab.id)
    assert (row.trigger, row.actor, row.to_state) == ("adopt", "reconciler", "running")
    # An adopted lab's objects exist: it holds no secret.
    assert await secret_env_in_sql(database, lab.id) is None


# Concurrency: each contender has its own engine, so these are real separate
# connections racing in the database (and, on SQLite, for the write lock).

CONTENDERS = 12


async def _contenders(url: str) -> list[LabStore]:
    return [LabStore(Database(url)) for _ in range(CONTENDERS)]


async def _dispose(stores: list[LabStore]) -> None:
    for store in stores:
        await store._db.dispose()


async def test_racing_transitions_have_one_winner(database: Database, database_url: str) -> None:
    store = LabStore(database)
    lab = await lab_in(store, S.RUNNING)
    stores = await _contenders(database_url)
    try:
        # Half decide from the version they read, half trust the machine alone.
        results = await asyncio.gather(
            *(
                s.transition(
                    lab.id,
                    T.DELETE if i % 2 else T.POD_EXITED,
                    actor=Actor.HUB,
                    expected=lab if i < CONTENDERS // 2 else None,
                )
                for i, s in enumerate(stores)
            ),
            return_exceptions=True,
        )
    finally:
        await _dispose(stores)
    winners = [r for r in results if isinstance(r, LabRecord)]
    losers = [r for r in results if not isinstance(r, LabRecord)]
    assert all(isinstance(r, StaleLabError | InvalidTransitionError) for r in losers), losers
    final = await store.get_lab(lab.id)
    history = await store.lab_history(lab.id)
    assert [row.version for row in history] == list(range(1, final.version + 1))
    assert history[-1].to_state == final.state
    # A POD_EXITED winner can be followed by a DELETE winner (exited -> deleting):
    # every winner is one audited transition, and no two claimed the same version.
    assert len(winners) == final.version - lab.version
    assert len({w.version for w in winners}) == len(winners)
    assert 1 <= len(winners) <= 2


async def test_racing_identical_transitions_have_exactly_one_winner(
    database: Database, database_url: str
) -> None:
    store = LabStore(database)
    lab = await lab_in(store, S.STARTING)
    stores = await _contenders(database_url)
    try:
        results = await asyncio.gather(
            *(s.transition(lab.id, T.POD_RUNNING, actor=Actor.WATCHER) for s in stores),
            return_exceptions=True,
        )
    finally:
        await _dispose(stores)
    assert sum(isinstance(r, LabRecord) for r in results) == 1
    assert sum(isinstance(r, InvalidTransitionError) for r in results) == CONTENDERS - 1
    final = await store.get_lab(lab.id)
    assert (final.state, final.version) == (S.RUNNING, lab.version + 1)
    assert len(await store.lab_history(lab.id)) == final.version


async def test_racing_creates_have_one_winner(database: Database, database_url: str) -> None:
    stores = await _contenders(database_url)
    try:
        results = await asyncio.gather(
            *(new_lab(s, "dave") for s in stores), return_exceptions=True
        )
    finally:
        await _dispose(stores)
    assert sum(isinstance(r, LabRecord) for r in results) == 1
    assert sum(isinstance(r, LabExistsError) for r in results) == CONTENDERS - 1
    assert await count(database, labs) == 1
    assert await count(database, lab_transitions) == 1
    assert await count(database, lab_events) == 1


async def test_concurrent_writers_on_many_labs_never_see_database_locked(
    database: Database, database_url: str
) -> None:
    store = LabStore(database)
    created = [await new_lab(store) for _ in range(CONTENDERS)]
    stores = await _contenders(database_url)

    async def drive(s: LabStore, lab: LabRecord) -> LabRecord:
        for trigger in PATHS[S.DELETED]:
            lab = await s.transition(lab.id, trigger, actor=Actor.SCHEDULER)
            await s.add_events(lab.id, [NewEvent(EventType.INFO, trigger.value)])
        return lab

    try:
        finals = await asyncio.gather(
            *(drive(s, lab) for s, lab in zip(stores, created, strict=True))
        )
    finally:
        await _dispose(stores)
    assert {lab.state for lab in finals} == {S.DELETED}
    assert await count(database, lab_transitions) == CONTENDERS * 3


def pause(conn: Connection, seconds: float) -> None:
    """Keep the write transaction of ``conn`` open a while, the event loop free."""
    if conn.dialect.name == "sqlite":
        time.sleep(seconds)  # On the writer thread.
    else:
        conn.execute(text("SELECT pg_sleep(:seconds)"), {"seconds": seconds})


async def test_a_cancelled_write_is_settled_before_the_cancellation_arrives(
    database: Database,
) -> None:
    """The writer finishes a cancelled caller's transaction before the caller goes on."""
    await database.run_write(lambda conn: conn.execute(text("CREATE TABLE probe (n INTEGER)")))
    running = threading.Event()

    def slow_insert(conn: Connection) -> None:
        running.set()
        pause(conn, 0.3)
        conn.execute(text("INSERT INTO probe VALUES (1)"))

    writing = asyncio.ensure_future(database.run_write(slow_insert))
    await asyncio.to_thread(running.wait, 5)
    writing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await writing
    async with database.read() as conn:
        count = (await conn.execute(text("SELECT count(*) FROM probe"))).scalar_one()
    assert count == 1


async def test_writes_queued_together_commit_together_and_fail_alone(
    database: Database,
) -> None:
    """Group commit: one COMMIT for writes queued at once; a failing one fails alone."""
    await grouped_table(database)
    commits = 0

    def committed(*_: object) -> None:
        nonlocal commits
        commits += 1

    for engine in database.sync_engines:
        event.listen(engine, "commit", committed)
    running = threading.Event()

    def hold(conn: Connection) -> None:
        # Keeps the writer busy while the others queue up behind it.
        running.set()
        pause(conn, 0.3)

    def insert(n: int) -> Callable[[Connection], int]:
        def work(conn: Connection) -> int:
            conn.execute(text("INSERT INTO grouped VALUES (:n)"), {"n": n})
            if n == 13:
                raise ValueError("unlucky")
            return n

        return work

    holding = asyncio.ensure_future(database.run_write(hold))
    await asyncio.to_thread(running.wait, 5)
    with statements_run(database) as statements:
        writes = [asyncio.ensure_future(database.run_write(insert(n))) for n in range(50)]
        await holding
        outcomes = await asyncio.gather(*writes, return_exceptions=True)
    assert [o for o in outcomes if isinstance(o, Exception)] == [outcomes[13]]
    assert isinstance(outcomes[13], ValueError)
    assert [o for o in outcomes if not isinstance(o, Exception)] == [
        n for n in range(50) if n != 13
    ]
    assert await grouped_rows(database) == [n for n in range(50) if n != 13]  # 13 undone alone.
    assert commits <= 3, commits  # The holder's, then the 50 in one group.
    # Done again, each in a savepoint, once 13 had failed the group.
    assert sum(s.upper().startswith("SAVEPOINT") for s in statements) == 50


async def test_a_fetch_reads_what_is_committed_without_waiting_for_a_writer(
    database: Database,
) -> None:
    """Reads run beside an open write transaction and see only what was committed."""
    await grouped_table(database)
    await database.run_write(lambda conn: conn.execute(text("INSERT INTO grouped VALUES (1)")))
    count = select(func.count()).select_from(text("grouped"))
    async with database.write() as conn:
        await conn.execute(text("INSERT INTO grouped VALUES (2)"))
        reading = asyncio.gather(*(database.fetch(count) for _ in range(8)))
        reads = await asyncio.wait_for(reading, 5)
        assert [rows[0][0] for rows in reads] == [1] * 8
    assert (await database.fetch(count))[0][0] == 2
    await database.dispose()  # Readers stop; a later read starts them again.
    assert (await database.fetch(count))[0][0] == 2


async def test_a_write_that_fails_in_a_group_of_its_own_runs_once(database: Database) -> None:
    """Nothing to undo for others: its error is its own, without running it again."""
    runs = 0

    def work(conn: Connection) -> None:
        nonlocal runs
        runs += 1
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        await database.run_write(work)
    assert runs == 1


async def test_groups_of_two_processes_that_deadlock_are_done_again(
    database: Database, database_url: str
) -> None:
    """Two replicas' groups lock two rows in opposite orders: no write is lost.

    PostgreSQL breaks the deadlock by failing one group's statement; that
    group is done again, each write in a savepoint, once the other has
    committed.  (SQLite's write lock lets one group in at a time.)
    """
    await tally(database)

    def hit(row: int, *, then_pause: bool) -> Callable[[Connection], int]:
        def work(conn: Connection) -> int:
            conn.execute(text("UPDATE tally SET hits = hits + 1 WHERE id = :id"), {"id": row})
            if then_pause:
                pause(conn, 0.3)  # Until the other group holds its first row too.
            return row

        return work

    other = Database(database_url)
    try:
        with statements_run(database) as ours, statements_run(other) as theirs:
            outcomes = await asyncio.gather(
                database.run_write(hit(1, then_pause=True)),
                database.run_write(hit(2, then_pause=False)),
                other.run_write(hit(2, then_pause=True)),
                other.run_write(hit(1, then_pause=False)),
            )
    finally:
        await other.dispose()
    assert list(outcomes) == [1, 2, 2, 1]
    assert await hits(database) == [(1, 2), (2, 2)]
    if not database.is_sqlite:
        redone = [s for s in [*ours, *theirs] if s.upper().startswith("SAVEPOINT")]
        assert len(redone) == 2  # One group of two writes lost the deadlock.


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_group_that_loses_the_database_fails_whole_and_is_not_done_again(
    database: Database,
) -> None:
    """Every write of the group gets an error that says the database is out of reach.

    Nothing of it committed, as with a transaction each; doing the others
    again, as after a failing write, would only meet the same outage.
    """
    await grouped_table(database)
    runs = Counter[int]()

    def insert(n: int) -> Callable[[Connection], int]:
        def work(conn: Connection) -> int:
            runs[n] += 1
            conn.execute(text("INSERT INTO grouped VALUES (:n)"), {"n": n})
            if n == 3:
                conn.execute(text("SELECT pg_terminate_backend(pg_backend_pid())"))
            return n

        return work

    outcomes = await asyncio.gather(
        *(database.run_write(insert(n)) for n in range(6)), return_exceptions=True
    )
    assert all(isinstance(o, Exception) and database_unreachable(o) for o in outcomes), outcomes
    assert runs == dict.fromkeys(range(4), 1)  # The group ended at 3, and was not redone.
    assert await grouped_rows(database) == []


async def tally(database: Database, rows: int = 2) -> None:
    """A table ``tally (id, hits)`` with rows 1 to ``rows`` at 0 hits."""
    await database.run_write(lambda conn: conn.execute(text("DROP TABLE IF EXISTS tally")))
    await database.run_write(
        lambda conn: conn.execute(
            text("CREATE TABLE tally (id INTEGER PRIMARY KEY, hits INTEGER NOT NULL)")
        )
    )

    def fill(conn: Connection) -> None:
        conn.execute(
            text("INSERT INTO tally VALUES (:id, 0)"), [{"id": n + 1} for n in range(rows)]
        )

    await database.run_write(fill)


def add_hit(runs: Counter[int], row: int) -> Callable[[Connection], int]:
    """A write that adds a hit to ``row`` of ``tally``, counting its runs in ``runs``."""

    def work(conn: Connection) -> int:
        runs[row] += 1
        conn.execute(text("UPDATE tally SET hits = hits + 1 WHERE id = :id"), {"id": row})
        return row

    return work


async def hits(database: Database) -> list[tuple[int, int]]:
    async with database.read() as conn:
        rows = (await conn.execute(text("SELECT id, hits FROM tally ORDER BY id"))).all()
    return [(row.id, row.hits) for row in rows]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_row_locked_elsewhere_fails_its_write_after_the_lock_timeout_alone(
    database_url: str,
) -> None:
    """A lock held outside labd holds up one write for the lock timeout, not every write.

    An operator's open ``SELECT ... FOR UPDATE`` would otherwise hold the
    writer, and so every write of the process, for as long as it stays
    open.  The write that waited gets an error callers take for the
    database being out of reach (a 503, a step retried), and is not run
    again; the write queued beside it commits.
    """
    database = Database(database_url, lock_timeout=0.2)
    runs = Counter[int]()

    try:
        await tally(database)
        async with database.engine.connect() as operator:
            await operator.execute(text("SELECT * FROM tally WHERE id = 1 FOR UPDATE"))
            outcomes = await asyncio.wait_for(
                asyncio.gather(
                    database.run_write(add_hit(runs, 1)),
                    database.run_write(add_hit(runs, 2)),
                    return_exceptions=True,
                ),
                30,
            )
            await operator.rollback()
        assert isinstance(outcomes[0], Exception)
        assert database_unreachable(outcomes[0]), outcomes[0]
        assert outcomes[1] == 2
        assert runs == {1: 1, 2: 1}  # 1 waited once, and was not run again.
        assert await hits(database) == [(1, 0), (2, 1)]
    finally:
        await database.dispose()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_batch_that_waits_out_the_lock_timeout_fails_alone_and_once(
    database_url: str,
) -> None:
    """A batch holds up the writer for one lock timeout, as a write does, not two.

    Which of its writes waited is not known, so all of them fail (each
    caller retries, as after any such failure); the rest of the group
    commits.
    """
    database = Database(database_url, lock_timeout=0.2)
    batched = Counter[int]()
    runs = Counter[int]()

    def hit_all(conn: Connection, rows: list[int]) -> list[int]:
        batched.update(rows)
        statement = text("UPDATE tally SET hits = hits + 1 WHERE id IN :ids")
        conn.execute(statement.bindparams(bindparam("ids", expanding=True)), {"ids": rows})
        return rows

    def write(row: int, *, batch: bool) -> Awaitable[int]:
        together = Batch(hit_all, row, row) if batch else None
        return database.run_write(add_hit(runs, row), batch=together)

    try:
        await tally(database, rows=3)
        async with database.engine.connect() as operator:
            await operator.execute(text("SELECT * FROM tally WHERE id = 1 FOR UPDATE"))
            outcomes = await asyncio.wait_for(
                asyncio.gather(
                    write(1, batch=True),
                    write(2, batch=True),
                    write(3, batch=False),
                    return_exceptions=True,
                ),
                30,
            )
            await operator.rollback()
        failed = [o for o in outcomes[:2] if isinstance(o, Exception) and database_unreachable(o)]
        assert len(failed) == 2, outcomes
        assert outcomes[2] == 3
        # The batch waited once and was not run again, neither whole nor write by write.
        assert batched == {1: 1, 2: 1} and runs == {3: 1}
        assert await hits(database) == [(1, 0), (2, 0), (3, 1)]
    finally:
        await database.dispose()


async def test_writes_queued_together_that_all_succeed_take_no_savepoints(
    database: Database,
) -> None:
    """A savepoint per write (two statements of a write's five or six) only when one fails."""
    await grouped_table(database)
    runs = Counter[int]()

    def insert(n: int) -> Callable[[Connection], None]:
        def work(conn: Connection) -> None:
            runs[n] += 1
            conn.execute(text("INSERT INTO grouped VALUES (:n)"), {"n": n})

        return work

    with statements_run(database) as statements:
        await asyncio.gather(*(database.run_write(insert(n)) for n in range(30)))
    assert [s for s in statements if "SAVEPOINT" in s.upper()] == []
    assert set(runs.values()) == {1}
    assert await grouped_rows(database) == list(range(30))


SECRET = {"JUPYTERHUB_API_TOKEN": "hub-token-for-the-lab"}


async def secret_env_in_sql(database: Database, lab_id: str) -> object:
    """The column as stored: SQL NULL reads as `None`, JSON null as ``'null'``."""
    async with database.read() as conn:
        return await conn.scalar(
            text("SELECT CAST(secret_env AS TEXT) FROM labs WHERE id = :id"), {"id": lab_id}
        )


@pytest.mark.parametrize(
    "triggers",
    [
        [T.START, T.OBJECTS_READY],
        [T.FAIL],
        [T.START, T.FAIL],
        [T.START, T.TIMEOUT],
        [T.DELETE],
        [T.START, T.DELETE, T.DELETED],
        [T.START, T.DELETE, T.DELETE_FAILED],
    ],
    ids=lambda triggers: "-".join(triggers),
)
async def test_the_secret_environment_leaves_sql_on_every_path(
    database: Database, triggers: list[Trigger]
) -> None:
    """Once a spawn gets past writing its Secret, or never will, SQL holds no secret."""
    store = LabStore(database)
    lab = await store.create_lab(
        username="alice",
        slug="alice",
        namespace="labd-alice",
        spec=LabSpec(),
        actor=Actor.HUB,
        changes={"secret_env": SECRET},
    )
    assert await secret_env_in_sql(database, lab.id) is not None
    for trigger in triggers:
        lab = await store.transition(lab.id, trigger, actor=Actor.SCHEDULER)
        if lab.state is S.CREATING:
            assert lab.secret_env == SECRET  # Still needed to write the Secret.
    assert lab.secret_env is None
    assert await secret_env_in_sql(database, lab.id) is None


async def test_writes_wake_the_readers_of_their_lab(database: Database) -> None:
    store = LabStore(database)
    changed: list[str] = []
    store.on_change.append(changed.append)
    lab = await new_lab(store, "alice")
    await store.add_events(lab.id, [NewEvent(EventType.INFO, "Pulling image", 35)])
    await store.update(lab.id, {"attempts": 1})
    await store.transition(lab.id, T.START, actor=Actor.SCHEDULER)
    assert changed == [lab.id] * 4


# The spec column: rows older labd versions wrote keep loading, and the rows
# written now are the layout they wrote (tests/lab/test_spec.py has the text).


@pytest.mark.parametrize("name", ["first", "bare", "hub"])
async def test_a_spec_row_written_by_an_older_labd_reads_through_the_store(
    database: Database, name: str
) -> None:
    stored = ROWS[name]
    spec_sql = "CAST(:spec AS JSONB)" if database.dialect == "postgresql" else ":spec"
    now = datetime.now(UTC)
    async with database.write() as conn:
        await conn.execute(
            text(
                "INSERT INTO labs (id, username, slug, namespace, state, spec, operation,"
                " attempts, version, created_at, updated_at, internal_url, pod_phase)"
                f" VALUES (:id, 'bob', 'bob', 'labd-bob', 'running', {spec_sql}, 1, 0, 3,"
                " :now, :now, 'http://lab.labd-bob:8888/user/bob/', 'Running')"
            ).bindparams(bindparam("now", type_=UTCDateTime())),
            {"id": f"old-{name}", "spec": stored, "now": now},
        )
    store = LabStore(database)
    lab = await store.get_lab(f"old-{name}")
    assert lab.spec == LabSpec.from_row(json.loads(stored))
    assert lab.spec.options.image == "registry.example/sciplat/lab:w_2026_47"
    assert lab.spec.env["JUPYTERHUB_SERVICE_PREFIX"].startswith("/user/")
    assert lab.spec.user.uid in (1000, 2000)
    expected_quota = None if name in ("first", "bare") else {"cpu": 4.0, "memory": 16 * 2**30}
    state = lab_state_model(lab)
    assert state.model_dump(include={"status", "internal_url"}) == {
        "status": "running",
        "internal_url": "http://lab.labd-bob:8888/user/bob/",
    }
    assert state.options.image == lab.spec.options.image
    assert (state.user.uid, state.user.gid) == (lab.spec.user.uid, lab.spec.user.gid)
    assert state.resources.limits.cpu == lab.spec.resources.limits.cpu
    quota = None if state.quota is None else state.quota.model_dump(include={"cpu", "memory"})
    assert quota == expected_quota
    assert (await store.get_current_lab("bob")) == lab


async def test_a_spec_row_written_now_is_the_layout_older_labd_reads(database: Database) -> None:
    store = LabStore(database)
    for name in ("today", "hub", "bare"):
        lab = await store.create_lab(
            username=f"user-{name}",
            slug=f"user-{name}",
            namespace=f"labd-user-{name}",
            spec=LabSpec.from_row(json.loads(ROWS[name])),
            actor=Actor.HUB,
        )
        async with database.read() as conn:
            stored = await conn.scalar(
                text("SELECT CAST(spec AS TEXT) FROM labs WHERE id = :id"), {"id": lab.id}
            )
        assert json.loads(stored) == json.loads(ROWS[name])
        assert (await store.get_lab(lab.id)).spec == lab.spec


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_pooled_connections_the_server_closed_are_replaced_before_use(
    database: Database, database_url: str
) -> None:
    """A server restart or ``pg_terminate_backend`` costs no reader or writer an error."""

    async def backend_pid() -> int:
        async with database.read() as conn:
            pid: int = (await conn.execute(text("SELECT pg_backend_pid(), pg_sleep(0.05)"))).one()[
                0
            ]
        return pid

    # Four at once leave four connections in the pool.
    closed = set(await asyncio.gather(*(backend_pid() for _ in range(4))))
    assert len(closed) == 4
    await terminate_sessions(
        database_url, "pid = ANY(CAST(:pids AS integer[]))", pids=sorted(closed)
    )
    await asyncio.sleep(0.2)  # The event loop reads each closed socket's end.

    opened = set(await asyncio.gather(*(backend_pid() for _ in range(4))))
    assert not opened & closed
    store = LabStore(database)
    lab = await new_lab(store)
    assert (await store.get_lab(lab.id)).version == lab.version


async def test_bursts_of_reads_reuse_the_pool_instead_of_opening_connections(
    database: Database,
) -> None:
    """The pool keeps every connection it opens: a burst costs no connect next time.

    Connections beyond a smaller kept pool were closed as each burst ended and
    opened again by the next one (a thread and four PRAGMAs each on SQLite,
    a server process and asyncpg's set-up on PostgreSQL).
    """
    opened: list[object] = []

    def connected(dbapi_connection: object, _record: object) -> None:
        opened.append(dbapi_connection)

    event.listen(database.engine.sync_engine, "connect", connected)

    async def read() -> None:
        async with database.read() as conn:
            await conn.execute(text("SELECT 1"))
            await asyncio.sleep(0.02)  # Held a while, so that the reads overlap.

    try:
        await asyncio.gather(*(read() for _ in range(40)))
        first = len(opened)
        assert 10 < first <= 20  # As many as the burst needed, up to the pool's size.
        for _ in range(3):
            await asyncio.gather(*(read() for _ in range(40)))
        assert len(opened) == first
    finally:
        event.remove(database.engine.sync_engine, "connect", connected)
