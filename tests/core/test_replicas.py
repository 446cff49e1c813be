"""Several labd replicas on one PostgreSQL database, in one process.

One replica leads (it alone watches and reconciles); every replica claims
and steps labs.  These tests start two `Labd` on one database and one
simulated cluster and check that labs stepped by the replica that does not
lead still move along on the leader's watches, that leadership moves when
the leader's lock connection is cut, and that a former leader's term no
longer lets it act.  SQLite serves one labd process: there the only labd
leads, and the replica tests skip.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text

from labd.control import steps as steps_module
from labd.daemon.factory import Labd
from labd.db.changes import ChangeListener
from labd.db.database import Database
from labd.db.leadership import LEADER_LOCK_KEY, LeadershipLostError
from labd.db.status import StatusCache
from labd.db.store import LabStore
from labd.lab.machine import LabState, Trigger
from labd.lab.progress import Step
from labd.lab.records import Actor, utcnow
from labd.lab.signals import LabSignals
from labd.lab.spec import LabSpec
from labd.sim import SimCluster
from tests.support.core import LabdFactory, spec, wait_state
from tests.support.databases import terminate_sessions
from tests.support.waiting import eventually

SQLITE_HAS_NO_REPLICAS = "SQLite serves one labd process: no replicas"


async def _listening(labd: Labd) -> None:
    if labd.change_listener is not None:
        await asyncio.wait_for(labd.change_listener.listening.wait(), 10)


@pytest.fixture
async def pair(labd_factory: LabdFactory, database_url: str) -> tuple[Labd, Labd]:
    """Two replicas on one database: (the leader, the other)."""
    if database_url.startswith("sqlite"):
        pytest.skip(SQLITE_HAS_NO_REPLICAS)
    first: Labd = await labd_factory()
    second: Labd = await labd_factory()
    for labd in (first, second):
        await _listening(labd)
    assert first.leader.leading != second.leader.leading
    return (first, second) if first.leader.leading else (second, first)


async def _term(database_url: str) -> int:
    database = Database(database_url)
    try:
        async with database.read() as conn:
            term: int = (await conn.execute(text("SELECT term FROM labd_leader"))).scalar_one()
    finally:
        await database.dispose()
    return term


def _gauge(labd: Labd) -> float | None:
    return labd.metrics.registry.get_sample_value("labd_leader")


async def _steps_nothing(labd: Labd) -> None:
    """Stop the scheduler of ``labd``: labs are stepped by the other replica alone."""
    labd.scheduler.request_stop()
    assert labd._loop is not None
    await asyncio.wait_for(labd._loop, 10)


def _namespaces(sim: SimCluster) -> set[str]:
    return {namespace["metadata"]["name"] for namespace in sim.objects("namespaces")}


def _tasks_named(name: str) -> int:
    return sum(1 for task in asyncio.all_tasks() if task.get_name() == name)


async def test_the_only_labd_leads(labd: Labd, database_url: str) -> None:
    assert labd.leader.leading
    assert labd.leader.on_duty_since is not None
    assert _gauge(labd) == 1
    assert labd.leader.term == await _term(database_url)
    assert await labd.leader.confirm() == labd.leader.term


async def test_one_of_two_replicas_leads(pair: tuple[Labd, Labd], database_url: str) -> None:
    leader, other = pair
    assert (_gauge(leader), _gauge(other)) == (1, 0)
    assert other.leader.term is None and other.leader.on_duty_since is None
    assert leader.leader.term == await _term(database_url)
    assert _tasks_named("watches") == 1
    with pytest.raises(LeadershipLostError):
        await other.leader.confirm()


async def test_a_spawn_stepped_by_another_replica_runs_with_its_progress(
    pair: tuple[Labd, Labd],
) -> None:
    leader, other = pair
    await _steps_nothing(leader)
    await other.service.create("ann", spec(), actor=Actor.HUB)
    lab = await wait_state(other, "ann", LabState.RUNNING)
    # The spawn was stepped by the replica that does not lead; the leader's
    # watches moved it to running and wrote its pod's Events as progress.
    history = await other.store.lab_history(lab.id)
    by_trigger = {row.trigger: row.actor for row in history}
    assert by_trigger["pod_running"] == Actor.WATCHER
    events = await other.store.events(lab.id, lab.operation)
    steps = [event.step for event in events]
    assert Step.POD_EVENT in steps
    assert steps.index(Step.OBJECTS_CREATED) < steps.index(Step.POD_EVENT)
    assert steps[-1] is Step.STARTED
    progress = [event.progress for event in events if event.progress is not None]
    assert progress == sorted(progress)
    assert lab.id not in leader.control.spawning.values()


async def test_a_pod_that_runs_before_another_replica_wrote_objects_created(
    pair: tuple[Labd, Labd], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The leader sees the pod run while the lab is still ``creating`` elsewhere."""
    leader, other = pair
    await _steps_nothing(leader)
    transition = other.store.transition
    seen_running = asyncio.Event()

    async def after_the_pod_runs(lab_id: str, trigger: Trigger, **kwargs: Any) -> Any:
        if trigger is Trigger.OBJECTS_READY:
            # Hold "objects created" back until the leader has seen the pod run.
            await asyncio.wait_for(seen_running.wait(), 10)
        return await transition(lab_id, trigger, **kwargs)

    monkeypatch.setattr(other.store, "transition", after_the_pod_runs)
    await other.service.create("bea", spec(), actor=Actor.HUB)

    async def pod_running_seen() -> bool:
        lab = await other.store.get_current_lab("bea")
        seen = leader.control.pods.get(lab.id) if lab is not None else None
        return seen is not None and seen.phase == "Running"

    await eventually(pod_running_seen, what="the leader to see the pod run")
    lab = await other.store.get_current_lab("bea")
    assert lab is not None and lab.state is LabState.CREATING
    seen_running.set()
    # The spawn deadline is 20 s away: only the leader's second look moves it.
    await wait_state(other, "bea", LabState.RUNNING)


async def test_a_delete_stepped_by_another_replica_finishes_on_the_leaders_watches(
    pair: tuple[Labd, Labd], monkeypatch: pytest.MonkeyPatch, sim: SimCluster
) -> None:
    leader, other = pair
    await _steps_nothing(leader)
    # No recheck: only the watches can finish the delete within the test.
    monkeypatch.setattr(steps_module, "_DELETE_RECHECK", 3600.0)
    await other.service.create("cid", spec(), actor=Actor.HUB)
    lab = await wait_state(other, "cid", LabState.RUNNING)
    await asyncio.wait_for(other.service.delete("cid", actor=Actor.HUB), 15)
    deleted = await other.store.get_lab(lab.id)
    assert deleted.state is LabState.DELETED
    assert lab.namespace not in _namespaces(sim)
    steps = [event.step for event in await other.store.events(lab.id, deleted.operation)]
    assert Step.POD_STOPPING in steps and steps[-1] is Step.DELETED


async def _leader_lock_pid(database_url: str) -> int:
    database = Database(database_url)
    try:
        async with database.read() as conn:
            pid: int = (
                await conn.execute(
                    text(
                        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
                        " AND database = (SELECT oid FROM pg_database"
                        " WHERE datname = current_database())"
                        " AND ((classid::bigint << 32) | objid::bigint) = :key"
                    ),
                    {"key": LEADER_LOCK_KEY},
                )
            ).scalar_one()
    finally:
        await database.dispose()
    return pid


async def test_a_leader_whose_lock_connection_is_cut_stops_and_another_leads(
    pair: tuple[Labd, Labd], database_url: str
) -> None:
    old, new = pair
    term = old.leader.term
    assert term is not None
    await terminate_sessions(database_url, "pid = :pid", pid=await _leader_lock_pid(database_url))
    await eventually(lambda: not old.leader.leading, within=5, what="the old leader to stop")
    # Its duties were cancelled and awaited before it said so.
    assert _gauge(old) == 0 and old.leader.on_duty_since is None
    await eventually(lambda: new.leader.on_duty_since is not None, within=5, what="takeover")
    assert _gauge(new) == 1
    assert new.leader.term is not None and new.leader.term > term
    assert _tasks_named("watches") == 1
    assert old.leader.term is None  # It tried again, and found the lock taken.
    # The old leader still serves: a lab it steps reaches running on the
    # new leader's watches.
    await old.service.create("dee", spec(), actor=Actor.HUB)
    await wait_state(old, "dee", LabState.RUNNING)


async def test_a_former_leaders_term_lets_it_act_no_more(
    pair: tuple[Labd, Labd], database_url: str, sim: SimCluster
) -> None:
    leader, _ = pair
    term = leader.leader.term
    assert term is not None
    await leader.service.create("eve", spec(), actor=Actor.HUB)
    lab = await wait_state(leader, "eve", LabState.RUNNING)
    # Its row is deleted behind labd's back: its namespace is an orphan.
    await leader.store.transition(lab.id, Trigger.DELETE, actor=Actor.OPERATOR)
    await leader.store.transition(lab.id, Trigger.DELETED, actor=Actor.OPERATOR)
    # Another replica took the term (as after a partition the old leader has
    # not yet noticed).
    database = Database(database_url)
    try:
        async with database.write() as conn:
            await conn.execute(text("UPDATE labd_leader SET term = term + 1"))
    finally:
        await database.dispose()
    with pytest.raises(LeadershipLostError):
        await leader.leader.confirm()
    with pytest.raises(LeadershipLostError):
        await leader.reconciler.reconcile()
    assert lab.namespace in _namespaces(sim)  # The orphan was left alone.
    with pytest.raises(LeadershipLostError):
        await leader.store.create_lab(
            username="frank",
            slug="frank",
            namespace="labd-frank",
            spec=LabSpec.from_row(lab.spec.to_row()),
            actor=Actor.RECONCILER,
            leader_term=term,
        )
    assert await leader.store.get_current_lab("frank") is None


async def test_a_lab_falling_due_anywhere_wakes_every_scheduler(database_url: str) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip(SQLITE_HAS_NO_REPLICAS)
    database = Database(database_url)
    store = LabStore(database)
    signals = LabSignals()
    listener = ChangeListener(
        database.url, status=StatusCache(store, enabled=False), signals=signals
    )
    listening = asyncio.create_task(listener.run())
    try:
        await asyncio.wait_for(listener.listening.wait(), 10)
        other = LabStore(database)  # As another replica writes.
        lab = await other.create_lab(
            username="gil",
            slug="gil",
            namespace="labd-gil",
            spec=LabSpec.from_row({"options": {"image": "lab:1", "size": "small"}}),
            actor=Actor.HUB,
        )
        signals.scheduler.clear()
        await other.update(lab.id, {"next_attempt_at": utcnow()})
        await eventually(signals.scheduler.is_set, within=5, what="the wake of a lab due")
        signals.scheduler.clear()
        # A claim only pushes the time later: it wakes nobody.  A marker
        # sent after it arrives after anything the claim would have sent.
        assert [claimed.id for claimed in await other.claim_due(limit=10, lease=30)] == [lab.id]
        marker = signals.waiter("marker")
        async with database.write() as conn:
            await conn.execute(text("SELECT pg_notify('labd_lab_follow', 'marker')"))
        await asyncio.wait_for(marker.wait(), 5)
        assert not signals.scheduler.is_set()
        # A time sooner than the lease wakes the scheduler when it comes.
        await other.update(lab.id, {"next_attempt_at": utcnow() + timedelta(seconds=1)})
        await eventually(signals.scheduler.is_set, within=5, what="the wake of a retry")
    finally:
        listening.cancel()
        await asyncio.gather(listening, return_exceptions=True)
        await database.dispose()
