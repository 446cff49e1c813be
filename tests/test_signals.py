"""The rows a process keeps of the labs it follows (`LabSignals.latest`)."""

from __future__ import annotations

from labd.db.database import Database
from labd.db.store import LabStore
from labd.lab.machine import LabState, Trigger
from labd.lab.records import Actor
from labd.lab.signals import LabSignals
from labd.lab.spec import LabSpec


async def test_a_followed_lab_keeps_its_rows_here_only_where_they_stay_newest(
    database: Database,
) -> None:
    # As the daemon wires them (labd.daemon.factory): on SQLite this process
    # writes every row, so each one it wrote is the newest; on PostgreSQL
    # another replica may write the lab after it, unless it is deleted.
    store = LabStore(database)
    signals = LabSignals(complete=database.is_sqlite, sole_writer=database.is_sqlite)
    store.on_row.append(signals.seen)
    lab = await store.create_lab(
        username="alice", slug="alice", namespace="labd-alice", spec=LabSpec(), actor=Actor.HUB
    )
    with signals.following(lab.id):
        deleting = await store.transition(
            lab.id, Trigger.DELETE, actor=Actor.HUB, expected=lab, new_operation=True
        )
        assert signals.latest(lab.id) == (deleting if database.is_sqlite else None)

        deleted = await store.transition(
            lab.id, Trigger.DELETED, actor=Actor.SCHEDULER, expected=deleting
        )
        assert deleted.state is LabState.DELETED
        assert signals.latest(lab.id) == deleted

        signals.seen(lab.id, None)  # A write whose outcome is unknown.
        assert signals.latest(lab.id) is None
    assert signals.latest(lab.id) is None


async def test_rows_of_labs_not_followed_are_not_kept(database: Database) -> None:
    store = LabStore(database)
    signals = LabSignals(complete=True, sole_writer=True)
    store.on_row.append(signals.seen)
    lab = await store.create_lab(
        username="bob", slug="bob", namespace="labd-bob", spec=LabSpec(), actor=Actor.HUB
    )
    await store.transition(lab.id, Trigger.DELETE, actor=Actor.HUB, expected=lab)
    assert signals.latest(lab.id) is None


async def test_rows_written_here_are_kept_while_every_change_is_heard(
    database: Database,
) -> None:
    # With other writers about (PostgreSQL), a row written here is the newest
    # while every change is heard and none of the lab by another process
    # has been since the write began: a later one would be heard, and wake
    # the reader, which reads.
    store = LabStore(database)
    signals = LabSignals(complete=False, sole_writer=False)
    store.on_row.append(signals.seen)
    lab = await store.create_lab(
        username="carol", slug="carol", namespace="labd-carol", spec=LabSpec(), actor=Actor.HUB
    )
    with signals.following(lab.id):
        lab = await store.update(lab.id, {"attempts": 1})
        assert signals.latest(lab.id) is None  # Changes elsewhere are not heard.

        signals.hearing(True)
        signals.seen(lab.id, lab)  # Written before hearing began: unknown since.
        assert signals.latest(lab.id) is None
        deleting = await store.transition(
            lab.id, Trigger.DELETE, actor=Actor.HUB, expected=lab, new_operation=True
        )
        assert signals.latest(lab.id) == deleting

        waiter = signals.waiter(lab.id)
        signals.changed_elsewhere(lab.id)
        assert waiter.is_set() and signals.latest(lab.id) is None
        signals.seen(lab.id, deleting)  # Its notice may come before the row.
        assert signals.latest(lab.id) is None
        updated = await store.update(lab.id, {"attempts": 2})  # Begun after the notice.
        assert signals.latest(lab.id) == updated

        signals.hearing(False)
        assert signals.latest(lab.id) is None
        await store.update(lab.id, {"attempts": 3})
        assert signals.latest(lab.id) is None
        deleted = await store.transition(
            lab.id, Trigger.DELETED, actor=Actor.SCHEDULER, expected=updated
        )
        assert signals.latest(lab.id) == deleted  # No transition leads from deleted.
