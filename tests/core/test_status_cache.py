"""Status reads from memory, coherent with every writer.

On both databases a lab's status is served from `StatusCache` and follows
the writes of this process at once.  On PostgreSQL it also follows the
writes of other replicas (through LISTEN/NOTIFY), and turns itself off
while it cannot hear them.
"""

from __future__ import annotations

import asyncio

import pytest

from labd.daemon.factory import Labd
from labd.db.changes import APPLICATION
from labd.db.database import Database
from labd.db.status import LabStatus, StatusCache
from labd.db.store import LabStore
from labd.lab.errors import UnknownUserError
from labd.lab.machine import LabState, Trigger
from labd.lab.records import Actor, LabRecord
from labd.lab.spec import LabSpec
from tests.support.core import LabdFactory, spec, wait_state
from tests.support.databases import terminate_sessions
from tests.support.waiting import eventually


async def status_of(labd: Labd, username: str) -> str | None:
    try:
        return (await labd.service.get_state(username)).status
    except UnknownUserError:
        return None


async def listening(labd: Labd) -> None:
    if labd.change_listener is not None:
        await asyncio.wait_for(labd.change_listener.listening.wait(), 10)


async def test_reads_are_served_from_memory_and_follow_writes(labd: Labd) -> None:
    await listening(labd)
    assert await status_of(labd, "alice") is None
    await labd.service.create("alice", spec(), actor=Actor.HUB)
    assert await status_of(labd, "alice") == "pending"  # The create dropped the None.
    await wait_state(labd, "alice", LabState.RUNNING)
    assert await status_of(labd, "alice") == "running"
    hits = labd.status.hits
    for _ in range(5):
        assert await status_of(labd, "alice") == "running"
    assert labd.status.hits == hits + 5
    metrics = (await labd.metrics.render(labd.store)).decode()
    assert f'labd_status_reads_total{{source="memory"}} {float(labd.status.hits)}' in metrics
    assert "labd_status_cache_enabled 1.0" in metrics
    await labd.service.request_delete("alice", actor=Actor.HUB)
    assert await status_of(labd, "alice") == "terminating"
    await wait_state(labd, "alice", LabState.DELETED)
    assert await status_of(labd, "alice") is None


async def test_a_write_during_a_missed_read_is_not_hidden(database: Database) -> None:
    """A read that began before a write and ends after it caches nothing."""
    store = SlowStore(database)
    cache = StatusCache(store, enabled=True)
    store.on_write.append(cache.invalidate)
    lab = await create(store, "bob")
    reading = asyncio.create_task(cache.get("bob"))
    await store.reading.wait()
    await store.transition(lab.id, Trigger.START, actor=Actor.SCHEDULER)
    store.proceed.set()
    stale = await reading
    assert stale is not None and stale.state is LabState.REQUESTED
    fresh = await cache.get("bob")
    assert fresh is not None and fresh.state is LabState.CREATING


async def test_cache_size_is_bounded(database: Database) -> None:
    store = LabStore(database)
    cache = StatusCache(store, enabled=True, size=3)
    for name in ("u1", "u2", "u3", "u4", "u5"):
        await create(store, name)
        assert (await cache.get(name)) is not None
    assert len(cache) == 3
    status = await cache.get("u5")
    assert isinstance(status, LabStatus) and status.model().user.username == "u5"


async def test_the_cache_is_warm_after_a_start(
    labd_factory: LabdFactory, database_url: str
) -> None:
    other = Database(database_url)
    try:
        for name in ("w1", "w2", "w3"):
            await create(LabStore(other), name)
    finally:
        await other.dispose()
    labd: Labd = await labd_factory()

    async def warm() -> bool:
        return len(labd.status) == 3

    await eventually(warm, within=10, what="the cache to be preloaded")
    misses = labd.status.misses
    assert [await status_of(labd, name) for name in ("w1", "w2", "w3")] == ["pending"] * 3
    assert labd.status.misses == misses


async def test_warming_skips_users_written_meanwhile(database: Database) -> None:
    store = SlowListStore(database)
    cache = StatusCache(store, enabled=True)
    store.on_write.append(cache.invalidate)
    first, _ = await create(store, "x1"), await create(store, "x2")
    warming = asyncio.create_task(cache.warm())
    await store.reading.wait()
    await store.transition(first.id, Trigger.START, actor=Actor.SCHEDULER)
    store.proceed.set()
    assert await warming == 1
    fresh = await cache.get("x1")
    assert fresh is not None and fresh.state is LabState.CREATING


async def test_warming_reads_a_page_of_users_at_a_time(
    database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("labd.db.status._WARM_PAGE", 2)
    store = PagesStore(database)
    names = [f"p{n}" for n in range(5)]
    for name in reversed(names):
        await create(store, name)
    cache = StatusCache(store, enabled=True)
    assert await cache.warm() == 5
    assert store.pages == [("", 2), ("p1", 2), ("p3", 2), ("p4", 2)]
    assert len(cache) == 5
    misses = cache.misses
    assert all([await cache.get(name) for name in names])
    assert cache.misses == misses


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_replicas_see_each_others_writes(labd_factory: LabdFactory) -> None:
    first: Labd = await labd_factory()
    second: Labd = await labd_factory()
    await listening(first)
    await listening(second)
    assert await status_of(second, "carol") is None  # Cached as "no lab".
    await first.service.create("carol", spec(), actor=Actor.HUB)

    async def seen() -> bool:
        return await status_of(second, "carol") is not None

    await eventually(seen, within=5, what="the other replica's create")
    await wait_state(first, "carol", LabState.RUNNING)

    async def running() -> bool:
        return await status_of(second, "carol") == "running"

    await eventually(running, within=5, what="running on the other replica")
    await first.service.request_delete("carol", actor=Actor.HUB)

    async def terminating() -> bool:
        return await status_of(second, "carol") in ("terminating", None)

    await eventually(terminating, within=5, what="the other replica's delete")


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_lost_listener_turns_the_cache_off(labd: Labd, database_url: str) -> None:
    await listening(labd)
    listener = labd.change_listener
    assert listener is not None
    other = Database(database_url)
    try:
        lab = await create(LabStore(other), "dave")
        assert await status_of(labd, "dave") == "pending"
        terminated = await terminate_sessions(
            database_url, "application_name = :name", name=APPLICATION
        )
        assert terminated == 1

        async def off() -> bool:
            return not labd.status.enabled

        await eventually(off, within=10, what="the cache to turn off")
        assert "labd_status_cache_enabled 0.0" in (await labd.metrics.render(labd.store)).decode()
        # A write that no notification reports is still seen: reads go to SQL.
        await LabStore(other).transition(lab.id, Trigger.DELETE, actor=Actor.HUB)
        assert await status_of(labd, "dave") == "terminating"
        await asyncio.wait_for(listener.listening.wait(), 10)
        assert labd.status.enabled
        assert await status_of(labd, "dave") == "terminating"
    finally:
        await other.dispose()


async def create(store: LabStore, username: str) -> LabRecord:
    return await store.create_lab(
        username=username,
        slug=username,
        namespace=f"labd-{username}",
        spec=LabSpec.from_row({"options": {"image": "lab:1", "size": "small"}}),
        actor=Actor.HUB,
    )


class SlowStore(LabStore):
    """A store whose status read waits, between reading and returning, to be told."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.reading = asyncio.Event()
        self.proceed = asyncio.Event()

    async def get_current_lab(self, username: str) -> LabRecord | None:
        lab = await super().get_current_lab(username)
        self.reading.set()
        await self.proceed.wait()
        return lab


class SlowListStore(LabStore):
    """A store whose lab listing waits, between reading and returning, to be told."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.reading = asyncio.Event()
        self.proceed = asyncio.Event()

    async def list_current_labs(
        self, *, after: str = "", limit: int | None = None
    ) -> list[LabRecord]:
        labs = await super().list_current_labs(after=after, limit=limit)
        self.reading.set()
        await self.proceed.wait()
        return labs


class PagesStore(LabStore):
    """A store that notes each page of current labs asked for."""

    def __init__(self, database: Database) -> None:
        super().__init__(database)
        self.pages: list[tuple[str, int | None]] = []

    async def list_current_labs(
        self, *, after: str = "", limit: int | None = None
    ) -> list[LabRecord]:
        self.pages.append((after, limit))
        return await super().list_current_labs(after=after, limit=limit)
