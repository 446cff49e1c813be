"""Spawn, delete and failure paths of the core loop, on the simulated cluster."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from labd.daemon import factory
from labd.daemon.factory import Labd
from labd.lab import signals
from labd.lab.errors import (
    LabExistsConflictError,
    NotReadyError,
    OperationInProgressError,
    UnknownUserError,
)
from labd.lab.machine import LabState, Trigger
from labd.lab.progress import Step
from labd.lab.records import Actor, EventRecord, EventType, LabRecord, utcnow
from labd.sim import SimCluster
from tests.support.core import LabdFactory, make_config, spec, stream, wait_state
from tests.support.waiting import eventually

OBJECT_KINDS = ["configmaps", "secrets", "networkpolicies", "services", "pods"]


async def current(labd: Labd, username: str) -> LabRecord:
    lab = await labd.store.get_current_lab(username)
    assert lab is not None
    return lab


def kube_calls(labd: Labd) -> Counter[tuple[str, str]]:
    """labd's own count of its Kubernetes calls but watches, by verb and kind.

    From its metrics, so that it counts the same on the sim and on a real
    API server (tests/realk8s runs these tests there too).
    """
    return Counter(
        {
            (sample.labels["verb"], sample.labels["kind"]): int(sample.value)
            for metric in labd.metrics.kube_calls.collect()
            for sample in metric.samples
            if sample.name.endswith("_total") and sample.labels["verb"] != "watch"
        }
    )


def messages(events: list[EventRecord]) -> list[tuple[str, int | None, str]]:
    return [(e.type.value, e.progress, e.message) for e in events]


async def test_spawn_to_running(labd: Labd, sim: SimCluster) -> None:
    lab = await labd.service.create("alice", spec(), actor=Actor.HUB)
    assert lab.state is LabState.REQUESTED
    events = await asyncio.wait_for(stream(labd, "alice"), 10)
    kinds = [e.type for e in events]
    assert kinds[0] is EventType.INFO and kinds[-1] is EventType.COMPLETE
    assert events[0].progress == 1 and events[0].message == "Starting lab creation for alice"
    assert (events[1].progress, events[1].message) == (
        30,
        "Created Kubernetes objects for user lab",
    )
    progress = [e.progress for e in events[2:-1]]
    assert progress[:3] == [35, 48, 57][: len(progress[:3])]
    assert all(p is not None and p < 75 for p in progress)
    assert events[-1].message == "Lab Kubernetes pod started for alice"
    state = await labd.service.get_state("alice")
    assert state.status == "running"
    assert state.internal_url == "http://lab.labd-alice:8888/user/alice/"
    assert state.options.image == "registry.example/sciplat/lab:w_2026_47"
    assert state.resources.limits.cpu == 1.0
    assert await labd.service.running_users() == ["alice"]
    row = await current(labd, "alice")
    assert row.secret_env is None, "secret values must leave SQL once the Secret exists"
    assert sim.objects("namespaces", None) and any(
        ns["metadata"]["name"] == "labd-alice" for ns in sim.objects("namespaces")
    )
    for kind in OBJECT_KINDS:
        assert sim.objects(kind, "labd-alice"), kind
    history = [(t.from_state, t.to_state, t.actor) for t in await labd.store.lab_history(row.id)]
    assert history == [
        ("new", "requested", "hub"),
        ("requested", "creating", "scheduler"),
        ("creating", "starting", "scheduler"),
        ("starting", "running", "watcher"),
    ]


async def test_delete_to_gone(labd: Labd, sim: SimCluster) -> None:
    await labd.service.create("bob", spec(), actor=Actor.HUB)
    await wait_state(labd, "bob", LabState.RUNNING)
    calls = kube_calls(labd)
    await asyncio.wait_for(labd.service.delete("bob", actor=Actor.HUB), 15)
    assert not [ns for ns in sim.objects("namespaces") if ns["metadata"]["name"] == "labd-bob"]
    # Delete the pod (with grace 0 its answer says it is gone), delete the
    # namespace: the namespace watch says when it is gone, and the pod
    # watch's word that the pod went, come after the namespace's delete,
    # moves nothing.  No read of the pod.
    assert kube_calls(labd) - calls == Counter({("delete", "Pod"): 1, ("delete", "Namespace"): 1})
    with pytest.raises(UnknownUserError):
        await labd.service.get_state("bob")
    with pytest.raises(UnknownUserError):
        await labd.service.delete("bob", actor=Actor.HUB)
    events = await stream(labd, "bob")
    assert messages(events) == [
        ("info", 25, "Shutting down Kubernetes pod"),
        ("info", 62, "Deleting user namespace"),
        ("info", 100, "Lab for bob deleted"),
    ]
    assert events[-1].terminal


async def test_a_quick_delete_writes_its_steps_with_its_end(labd: Labd) -> None:
    # Where labd's own watches say when the namespace is gone (on SQLite, and
    # on the leader on PostgreSQL), the steps of a delete whose namespace
    # goes within a second are written with ``deleted``: two writes of the
    # lab in all, not three.  Each step keeps the time it was taken.
    await labd.service.create("bob", spec(), actor=Actor.HUB)
    await wait_state(labd, "bob", LabState.RUNNING)
    lab = await current(labd, "bob")
    updates: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        # On PostgreSQL an update goes with its audit row and events (one ``WITH``).
        statement = " ".join(statement.split())
        writes = statement.startswith(("UPDATE labs", "WITH lab AS (UPDATE labs"))
        if writes and lab.id in str(parameters):
            updates.append(statement)

    for engine in labd.database.sync_engines:
        event.listen(engine, "before_cursor_execute", seen)
    try:
        await asyncio.wait_for(labd.service.delete("bob", actor=Actor.HUB), 15)
    finally:
        for engine in labd.database.sync_engines:
            event.remove(engine, "before_cursor_execute", seen)
    assert len(updates) == 2, updates
    events = await labd.store.events(lab.id, lab.operation + 1)
    assert [e.step for e in events] == [Step.POD_STOPPING, Step.NAMESPACE_DELETING, Step.DELETED]
    assert [e.created_at for e in events] == sorted(e.created_at for e in events)


async def test_a_delete_that_lasts_has_its_steps_written_meanwhile(
    database_url: str, tmp_path: Path
) -> None:
    # A step kept in memory is written within a second, with the recheck,
    # when the delete goes on longer: here the pod takes two seconds to stop.
    async with running_bob_slow_to_stop(database_url, tmp_path, stop_delay=2.0) as (labd, _sim):
        lab = await current(labd, "bob")
        deleting = asyncio.create_task(labd.service.delete("bob", actor=Actor.HUB))

        async def stopping_written() -> bool:
            events = await labd.store.events(lab.id, lab.operation + 1)
            return Step.POD_STOPPING in {e.step for e in events}

        await eventually(stopping_written, within=1.8)
        assert not deleting.done()
        written_at = utcnow()
        row = await labd.store.get_lab(lab.id)
        assert row.state is LabState.DELETING
        assert row.next_attempt_at is not None
        assert row.next_attempt_at > written_at + timedelta(seconds=8), "the recheck"
        await asyncio.wait_for(deleting, 10)
        events = await labd.store.events(lab.id, lab.operation + 1)
        assert [e.step for e in events] == [
            Step.POD_STOPPING,
            Step.NAMESPACE_DELETING,
            Step.DELETED,
        ]
        assert events[0].created_at < events[-1].created_at - timedelta(seconds=1)


async def test_kept_steps_are_not_written_onto_a_delete_ended_elsewhere(
    database_url: str, tmp_path: Path
) -> None:
    # Steps kept in memory are written a second later only onto the row they
    # were taken on: here the delete ends behind the steps' back (as another
    # replica would end it on PostgreSQL) while the pod takes two seconds to
    # stop, and nothing is written after its end.
    async with running_bob_slow_to_stop(database_url, tmp_path, stop_delay=2.0) as (labd, _sim):
        lab = await current(labd, "bob")
        deleting = asyncio.create_task(labd.service.delete("bob", actor=Actor.HUB))

        def kept() -> bool:
            steps = labd.control.delete_steps.get(lab.id)
            return steps is not None and bool(steps.kept)

        await eventually(kept, within=1.0, what="the delete's steps kept")
        row = await labd.store.get_lab(lab.id)
        assert row.state is LabState.DELETING
        ended = await labd.store.transition(
            lab.id, Trigger.DELETED, actor=Actor.OPERATOR, reason="ended elsewhere", expected=row
        )
        await asyncio.wait_for(deleting, 5)
        await eventually(lambda: lab.id not in labd.control.delete_steps, within=3.0)
        events = await labd.store.events(lab.id, ended.operation)
        assert Step.POD_STOPPING not in {e.step for e in events}, events
        assert (await labd.store.get_lab(lab.id)).version == ended.version


@contextlib.asynccontextmanager
async def running_bob_slow_to_stop(
    database_url: str, tmp_path: Path, *, stop_delay: float = 1.0
) -> AsyncIterator[tuple[Labd, SimCluster]]:
    """labd with bob's lab running; the lab takes ``stop_delay`` s to stop after its SIGTERM."""
    async with SimCluster(pod_start_delay=0.05, pod_stop_delay=stop_delay, seed=7) as sim:
        config = make_config(
            database_url,
            sim.write_kubeconfig(tmp_path / "kubeconfig"),
            lab={"pod_delete_grace": 2},
        )
        labd = await Labd.create(config)
        await labd.start()
        try:
            await labd.service.create("bob", spec(), actor=Actor.HUB)
            await wait_state(labd, "bob", LabState.RUNNING)
            yield labd, sim
        finally:
            await labd.stop()


async def test_the_namespace_is_deleted_only_once_the_pod_is_gone(
    database_url: str, tmp_path: Path
) -> None:
    # A namespace deleted while its pod terminates makes a real namespace
    # controller fail and back off (docs/real-node.md): labd waits.
    async with running_bob_slow_to_stop(database_url, tmp_path) as (labd, sim):
        deleting = asyncio.create_task(labd.service.delete("bob", actor=Actor.HUB))
        terminating_pods = overlaps = 0
        while not deleting.done():
            pods = sim.objects("pods", "labd-bob")
            namespace = [
                ns for ns in sim.objects("namespaces") if ns["metadata"]["name"] == "labd-bob"
            ]
            terminating_pods += bool(pods and pods[0]["metadata"].get("deletionTimestamp"))
            overlaps += bool(
                pods and namespace and namespace[0]["metadata"].get("deletionTimestamp")
            )
            await asyncio.sleep(0.02)
        await deleting
        assert terminating_pods > 10, "the pod did not take its time to stop"
        assert not overlaps, "the namespace was deleted while its pod still terminated"
        history = await labd.store.history("bob")
        assert [entry.to_state for entry in history][:2] == ["deleted", "deleting"]


async def test_a_delete_waits_on_the_watches_not_on_polls(
    database_url: str, tmp_path: Path
) -> None:
    # The pod watch says when the pod is gone, the namespace watch when the
    # namespace is, and the steps they move along take their word for it: a
    # delete reads neither the pod (its answer says it takes its grace
    # period) nor the namespace, however long either takes. It ends long
    # before the slow recheck (10 s) would have looked again.
    async with running_bob_slow_to_stop(database_url, tmp_path) as (labd, sim):
        reads = sim.stats.requests["get pods"], sim.stats.requests["get namespaces"]
        began = time.monotonic()
        await asyncio.wait_for(labd.service.delete("bob", actor=Actor.HUB), 8)
        assert time.monotonic() - began > 1.0, "the pod did not take its time to stop"
        assert sim.stats.requests["get pods"] - reads[0] == 0
        assert sim.stats.requests["get namespaces"] - reads[1] == 0
        assert "labd-bob" not in {ns["metadata"]["name"] for ns in sim.objects("namespaces")}


async def test_a_delete_starts_at_once_and_reads_back_little(
    database_url: str, tmp_path: Path
) -> None:
    # The service hands the delete it recorded to the scheduler, leased: no
    # claim. The steps know the delete was begun here and keep the steps they
    # record, so they never read the delete's events back. Neither the
    # waiting delete nor the steps the watches move along read the lab: they
    # take it from the writes (on PostgreSQL while every change of other
    # processes is heard, and none of this lab's was).
    async with running_bob_slow_to_stop(database_url, tmp_path) as (labd, _sim):
        lab = await labd.store.get_current_lab("bob")
        assert lab is not None
        statements: list[str] = []
        reads: list[str] = []

        def seen(conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
            if lab.id in str(parameters):
                statement = " ".join(statement.split())
                statements.append(statement)
                writing = conn.get_execution_options().get("labd_write", False)
                if not writing and statement.startswith("SELECT"):
                    reads.append(statement)

        for engine in labd.database.sync_engines:
            event.listen(engine, "before_cursor_execute", seen)
        await asyncio.wait_for(labd.service.delete("bob", actor=Actor.HUB), 8)
        for engine in labd.database.sync_engines:
            event.remove(engine, "before_cursor_execute", seen)

        # A claim sets next_attempt_at alone (`LabStore.claim_due`).
        claim = re.compile(r"UPDATE labs SET next_attempt_at=\S+ WHERE")
        assert [s for s in statements if claim.match(s)] == []
        assert [s for s in statements if "FROM lab_events" in s] == []
        assert reads == []
        assert (await labd.store.get_lab(lab.id)).state is LabState.DELETED


async def test_a_delete_waiting_at_shutdown_is_not_ready_and_goes_on(
    database_url: str, tmp_path: Path
) -> None:
    # A server shutting down would cut a waiting delete off with a bare 500;
    # labd answers it 503 not_ready, which a balancer may send to another
    # replica (docs/api.md), and the delete itself goes on.
    async with running_bob_slow_to_stop(database_url, tmp_path) as (labd, _sim):
        deleting = asyncio.create_task(labd.service.delete("bob", actor=Actor.HUB))
        lab = await wait_state(labd, "bob", LabState.DELETING)
        labd.service.stop_waiting()
        with pytest.raises(NotReadyError, match="shutting down; the delete of the lab for bob"):
            await asyncio.wait_for(deleting, 1)
        await wait_state(labd, "bob", LabState.DELETED)
        assert (await labd.store.get_lab(lab.id)).state is LabState.DELETED


async def test_a_stop_frees_the_labs_whose_steps_it_will_not_finish(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ada's step is cut off by the stop, and bob's lab, handed over, waits
    # for a free slot. Both are leased for 30 s (STEP_LEASE): without the
    # release at stop, the next start would leave them alone that long.
    monkeypatch.setattr(factory, "_STOP_GRACE", 0.5)
    async with SimCluster(pod_start_delay=0.05, seed=7) as sim:
        config = make_config(
            database_url,
            sim.write_kubeconfig(tmp_path / "kubeconfig"),
            kubernetes={"request_timeout": 60, "max_concurrent_operations": 1},
        )
        sim.faults.add_latency("create", "namespaces", seconds=60)
        labd = await Labd.create(config)
        await labd.start()
        try:
            await labd.service.create("ada", spec(), actor=Actor.HUB)
            await labd.service.create("bob", spec(), actor=Actor.HUB)
            await eventually(
                lambda: sim.stats.requests["create namespaces"] > 0, what="ada's step under way"
            )
        finally:
            await labd.stop()
        sim.faults.clear()
        labd = await Labd.create(config)
        await labd.start()
        try:
            for username in ("ada", "bob"):
                await wait_state(labd, username, LabState.RUNNING, within=10)
        finally:
            await labd.stop()


async def test_a_lab_handed_over_that_waits_too_long_is_claimed_at_once(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bob's lab is handed over while ada's step holds the only slot for 2 s,
    # longer than half a (shortened) lease. The scheduler drops it from its
    # queue, as a claim may take it once its lease (30 s in SQL) runs out:
    # it is made due at once instead of waiting for that.
    monkeypatch.setattr(signals, "STEP_LEASE", timedelta(seconds=1))
    async with SimCluster(pod_start_delay=0.05, seed=7) as sim:
        config = make_config(
            database_url,
            sim.write_kubeconfig(tmp_path / "kubeconfig"),
            kubernetes={"max_concurrent_operations": 1},
        )
        sim.faults.add_latency("create", "namespaces", seconds=2)
        labd = await Labd.create(config)
        await labd.start()
        try:
            await labd.service.create("ada", spec(), actor=Actor.HUB)
            await eventually(
                lambda: sim.stats.requests["create namespaces"] > 0, what="ada's step under way"
            )
            bob = await labd.service.create("bob", spec(), actor=Actor.HUB)
            assert bob.next_attempt_at is not None
            assert bob.next_attempt_at - bob.created_at >= timedelta(seconds=29)  # Leased.
            await wait_state(labd, "bob", LabState.RUNNING, within=15)
        finally:
            await labd.stop()


async def test_concurrent_deletes_share_one_operation(labd: Labd) -> None:
    await labd.service.create("carol", spec(), actor=Actor.HUB)
    lab = await wait_state(labd, "carol", LabState.RUNNING)
    await asyncio.wait_for(
        asyncio.gather(*(labd.service.delete("carol", actor=Actor.HUB) for _ in range(4))), 15
    )
    triggers = [t.trigger for t in await labd.store.lab_history(lab.id)]
    assert triggers.count("delete") == 1
    assert triggers[-1] == "deleted"


async def test_a_delete_reads_its_lab_in_its_own_write(labd: Labd, sim: SimCluster) -> None:
    # Nothing is read before the delete's write, so no other writer can
    # move the lab in between: a delete whose write comes while another
    # delete is under way joins it, and one that comes after it ended finds
    # no lab.
    await labd.service.create("cleo", spec(), actor=Actor.HUB)
    lab = await wait_state(labd, "cleo", LabState.RUNNING)
    sim.faults.add_latency("delete", "namespaces", seconds=1.0)
    first = asyncio.create_task(labd.service.delete("cleo", actor=Actor.HUB))
    await wait_state(labd, "cleo", LabState.DELETING)
    await asyncio.wait_for(labd.service.delete("cleo", actor=Actor.HUB), 15)
    assert first.done() or (await labd.store.get_lab(lab.id)).state is LabState.DELETED
    await first
    history = await labd.store.lab_history(lab.id)
    assert [t.trigger for t in history].count("delete") == 1
    with pytest.raises(UnknownUserError):
        await labd.service.delete("cleo", actor=Actor.HUB)


async def test_concurrent_creates_one_wins(labd: Labd) -> None:
    results = await asyncio.gather(
        *(labd.service.create("dave", spec(), actor=Actor.HUB) for _ in range(5)),
        return_exceptions=True,
    )
    assert sum(isinstance(r, LabRecord) for r in results) == 1
    assert sum(isinstance(r, LabExistsConflictError) for r in results) == 4
    await wait_state(labd, "dave", LabState.RUNNING)


async def test_create_while_running_or_deleting_conflicts(labd: Labd, sim: SimCluster) -> None:
    await labd.service.create("erin", spec(), actor=Actor.HUB)
    await wait_state(labd, "erin", LabState.RUNNING)
    with pytest.raises(LabExistsConflictError):
        await labd.service.create("erin", spec(), actor=Actor.HUB)
    sim.faults.add_latency("delete", "namespaces", seconds=1.0)
    deleting = asyncio.ensure_future(labd.service.delete("erin", actor=Actor.HUB))
    await wait_state(labd, "erin", LabState.DELETING)
    with pytest.raises(OperationInProgressError):
        await labd.service.create("erin", spec(), actor=Actor.HUB)
    await asyncio.wait_for(deleting, 15)


async def test_create_on_failed_lab_cleans_first(labd: Labd, sim: SimCluster) -> None:
    sim.faults.add_error("create", "pods", rate=1.0, status=403)
    first = await labd.service.create("frank", spec(), actor=Actor.HUB)
    events = await asyncio.wait_for(stream(labd, "frank"), 10)
    assert [e.type for e in events[-2:]] == [EventType.ERROR, EventType.FAILED]
    assert "create Pod labd-frank/frank-nb: 403" in events[-2].message
    assert events[-1].message == "Lab spawn failed"
    assert (await labd.store.get_lab(first.id)).state is LabState.FAILED
    sim.faults.clear()
    await labd.service.create("frank", spec(), actor=Actor.HUB)
    events = await asyncio.wait_for(stream(labd, "frank"), 15)
    progress = [e.progress for e in events if e.type is EventType.INFO]
    assert progress[:6] == [1, 2, 5, 12, 20, 30]
    assert events[-1].type is EventType.COMPLETE
    assert (await labd.store.get_lab(first.id)).state is LabState.DELETED


async def test_exited_lab_is_replaced(labd: Labd, sim: SimCluster) -> None:
    sim.rules.add("crash:OOMKilled:0.2", namespace="labd-fred")
    first = await labd.service.create("fred", spec(), actor=Actor.HUB)
    lab = await wait_state(labd, "fred", LabState.EXITED)
    assert "OOMKilled" in (lab.last_error or "")
    sim.rules.clear()
    # The service began the cleanup, so its steps read none of its events back
    # (the new lab's steps read them to say how the old one's delete goes).
    read_by: list[str] = []
    read_events = labd.store.events

    async def events(lab_id: str, operation: int, **kwargs: Any) -> list[EventRecord]:
        if lab_id == first.id:
            read_by.append(sys._getframe(1).f_code.co_name)
        return await read_events(lab_id, operation, **kwargs)

    labd.store.events = events  # type: ignore[method-assign]
    await labd.service.create("fred", spec(), actor=Actor.HUB)
    await wait_state(labd, "fred", LabState.RUNNING)
    assert (await labd.store.get_lab(first.id)).state is LabState.DELETED
    assert "_previous_gone" in read_by
    assert "_delete_steps" not in read_by


async def test_spawn_timeout(labd_factory: LabdFactory, sim: SimCluster) -> None:
    labd: Labd = await labd_factory(timeouts={"spawn": 1})
    sim.rules.add("pending:ImagePullBackOff", namespace="labd-gina")
    await labd.service.create("gina", spec(), actor=Actor.HUB)
    events = await asyncio.wait_for(stream(labd, "gina"), 10)
    assert messages(events)[-2:] == [
        ("error", None, "Lab spawn timed out after 1 s"),
        ("failed", None, "Lab spawn failed"),
    ]
    lab = await wait_state(labd, "gina", LabState.FAILED)
    assert lab.last_error == "Lab spawn timed out after 1 s"
    assert any("ImagePullBackOff" in e.message or "pull" in e.message.lower() for e in events)


async def test_delete_during_spawn_cancels_it(labd: Labd, sim: SimCluster) -> None:
    sim.rules.add("pending:ContainerCreating", namespace="labd-hank")
    await labd.service.create("hank", spec(), actor=Actor.HUB)
    spawn_stream = asyncio.ensure_future(stream(labd, "hank"))
    await wait_state(labd, "hank", LabState.STARTING)
    await asyncio.wait_for(labd.service.delete("hank", actor=Actor.HUB), 15)
    spawn_events = await asyncio.wait_for(spawn_stream, 5)
    assert messages(spawn_events)[-1] == ("failed", None, "Operation cancelled")
    assert not sim.objects("pods", "labd-hank")


@pytest.mark.parametrize("resource", ["namespaces", *OBJECT_KINDS])
async def test_each_spawn_call_failing(labd: Labd, sim: SimCluster, resource: str) -> None:
    sim.faults.add_error("create", resource, rate=1.0, status=500)
    await labd.service.create("ivan", spec(), actor=Actor.HUB)
    events = await asyncio.wait_for(stream(labd, "ivan"), 15)
    error, failed = events[-2:]
    assert (error.type, failed.type) == (EventType.ERROR, EventType.FAILED)
    assert "create" in error.message and "500" in error.message
    kind = {"namespaces": "Namespace", "configmaps": "ConfigMap", "secrets": "Secret"}.get(
        resource,
        {"networkpolicies": "NetworkPolicy", "services": "Service", "pods": "Pod"}.get(resource),
    )
    assert kind is not None and kind in error.message
    sim.faults.clear()
    await asyncio.wait_for(labd.service.delete("ivan", actor=Actor.HUB), 15)
    await labd.service.create("ivan", spec(), actor=Actor.HUB)
    await wait_state(labd, "ivan", LabState.RUNNING)


@pytest.mark.parametrize(
    ("outcome", "state"),
    [
        ("exit:0.3", LabState.EXITED),
        ("crash:OOMKilled:0.3", LabState.EXITED),
        ("vanish:0.3", LabState.FAILED),
    ],
)
async def test_pod_ends_while_running(
    labd: Labd, sim: SimCluster, outcome: str, state: LabState
) -> None:
    sim.rules.add(outcome, namespace="labd-judy")
    await labd.service.create("judy", spec(), actor=Actor.HUB)
    await wait_state(labd, "judy", LabState.RUNNING)
    started = time.monotonic()
    lab = await wait_state(labd, "judy", state, within=5)
    assert time.monotonic() - started < 2.0
    report = await labd.service.get_state("judy")
    assert report.status == ("terminated" if state is LabState.EXITED else "failed")
    # The hub has seen how it ended: labd cleans up on its own.
    await wait_state(labd, "judy", LabState.DELETED, within=10)
    assert not [ns for ns in sim.objects("namespaces") if ns["metadata"]["name"] == lab.namespace]
