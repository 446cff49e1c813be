"""Event streams sleep until their lab changes, in this process or another.

An open stream costs no SQL while its lab is quiet: it wakes when the store
writes the lab's row or events (on SQLite, where labd is the only writer)
or when PostgreSQL notifies a change made by any process.  While a replica
cannot hear PostgreSQL, its streams fall back to polling.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from labd.daemon.factory import Labd
from labd.db.changes import APPLICATION
from labd.db.store import LabStore
from labd.lab.machine import LabState
from labd.lab.records import Actor, EventRecord, EventType, NewEvent
from labd.sim import SimCluster
from tests.support.core import make_config, spec
from tests.support.databases import terminate_sessions
from tests.support.waiting import eventually

STREAMS = 50


@pytest.fixture
async def slow_sim() -> AsyncIterator[SimCluster]:
    """A simulated cluster whose pods stay pending for the whole test."""
    async with SimCluster(pod_start_delay=3600, seed=7) as cluster:
        yield cluster


@pytest.fixture
async def replicas(
    database_url: str, slow_sim: SimCluster, tmp_path: Path
) -> AsyncIterator[Callable[[], Any]]:
    kubeconfig = slow_sim.write_kubeconfig(tmp_path / "kubeconfig")
    started: list[Labd] = []

    async def start() -> Labd:
        labd = await Labd.create(make_config(database_url, kubeconfig))
        await labd.start()
        started.append(labd)
        if labd.change_listener is not None:
            await asyncio.wait_for(labd.change_listener.listening.wait(), 10)
        return labd

    yield start
    for labd in started:
        await labd.stop()


def count_reads(store: LabStore) -> list[int]:
    """Count the store's reads of a followed lab (its row and its events)."""
    reads = [0]
    for name in ("get_lab", "events"):
        method = getattr(store, name)

        async def counted(*args: Any, _method: Any = method, **kwargs: Any) -> Any:
            reads[0] += 1
            return await _method(*args, **kwargs)

        setattr(store, name, counted)
    return reads


async def open_streams(
    labd: Labd, username: str
) -> tuple[list[asyncio.Queue[EventRecord]], list[asyncio.Task[None]]]:
    """Open `STREAMS` event streams on the user's lab, each feeding a queue."""
    queues: list[asyncio.Queue[EventRecord]] = []
    tasks: list[asyncio.Task[None]] = []
    for _ in range(STREAMS):
        stream = await labd.service.open_events(username)
        queue: asyncio.Queue[EventRecord] = asyncio.Queue()

        async def pump(stream: AsyncIterator[EventRecord] = stream, queue: Any = queue) -> None:
            async for event in stream:
                await queue.put(event)

        queues.append(queue)
        tasks.append(asyncio.create_task(pump()))
    return queues, tasks


async def drain_until(queue: asyncio.Queue[EventRecord], message: str) -> None:
    while (await asyncio.wait_for(queue.get(), 10)).message != message:
        pass


async def pending_lab(labd: Labd) -> str:
    await labd.service.create("alice", spec(), actor=Actor.HUB)
    for _ in range(200):
        lab = await labd.store.get_current_lab("alice")
        if lab is not None and lab.state is LabState.STARTING:
            return lab.id
        await asyncio.sleep(0.05)
    raise AssertionError("the lab did not reach starting")


async def check_quiet_then_woken(writer: Labd, reader: Labd) -> None:
    lab_id = await pending_lab(writer)
    queues, tasks = await open_streams(reader, "alice")
    try:
        for queue in queues:
            await drain_until(queue, "Created Kubernetes objects for user lab")
        reads = count_reads(reader.store)
        # Longer than the old two-second poll: a polling stream would read.
        await asyncio.sleep(2.5)
        assert reads[0] == 0, f"{reads[0]} reads while the lab was quiet"
        await writer.store.add_events(lab_id, [NewEvent(EventType.INFO, "Pulling image", 35)])
        for queue in queues:
            await drain_until(queue, "Pulling image")
        assert reads[0] > 0
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_quiet_streams_cost_no_sql_and_wake_on_a_write(
    replicas: Callable[[], Any],
) -> None:
    labd = await replicas()
    await check_quiet_then_woken(labd, labd)


async def test_streams_wake_on_another_replicas_write(
    replicas: Callable[[], Any], database_url: str
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite has one labd process")
    writer = await replicas()
    reader = await replicas()
    await check_quiet_then_woken(writer, reader)


async def test_a_replica_that_cannot_hear_polls(
    replicas: Callable[[], Any], database_url: str
) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite has no change listener")
    labd = await replicas()
    assert labd.signals.complete
    await terminate_sessions(database_url, "application_name = :name", name=APPLICATION)
    await eventually(lambda: not labd.signals.complete, what="polling")
    assert labd.signals.follow_interval == 2.0
    await eventually(lambda: labd.signals.complete, what="hearing again")


async def test_a_write_of_this_process_wakes_its_streams_once(
    replicas: Callable[[], Any],
) -> None:
    # The store wakes this process's readers itself; PostgreSQL's notification
    # of the same commit, signed by one of this process's connections, is
    # skipped rather than waking every stream a second time.
    labd = await replicas()
    lab_id = await pending_lab(labd)
    queues, tasks = await open_streams(labd, "alice")
    try:
        for queue in queues:
            await drain_until(queue, "Created Kubernetes objects for user lab")
        reads = count_reads(labd.store)
        await labd.store.add_events(lab_id, [NewEvent(EventType.INFO, "Pulling image", 35)])
        for queue in queues:
            await drain_until(queue, "Pulling image")
        await asyncio.sleep(1.0)  # Time enough for the notification to arrive.
        # Each stream read its lab and its events once, to find the new event.
        assert reads[0] == 2 * STREAMS
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
