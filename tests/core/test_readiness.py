"""A lab is ``running`` only once it answers, and its URL may name the pod.

A pod runs a few seconds before JupyterLab listens; its readiness probe
tells when.  labd keeps the lab ``starting`` (``pending`` for the hub) until
the pod is Ready, so the hub never sends a user to a lab that does not
answer yet.  Where the hub cannot resolve Service names (no cluster DNS),
``lab.internal_url_template`` may use ``{pod_ip}``, filled in once the pod
runs.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from labd.daemon.factory import Labd
from labd.lab.machine import LabState
from labd.lab.records import Actor
from labd.sim import SimCluster
from tests.support.core import LabdFactory, make_config, spec, wait_state
from tests.support.waiting import eventually


async def pod_is_running_unready(sim: SimCluster, namespace: str) -> bool:
    for pod in sim.objects("pods", namespace):
        status = pod.get("status") or {}
        ready = {c["type"]: c["status"] for c in status.get("conditions") or []}.get("Ready")
        if status.get("phase") == "Running" and ready == "False":
            return True
    return False


async def test_a_lab_is_running_only_once_its_pod_is_ready(labd: Labd, sim: SimCluster) -> None:
    sim.rules.add("unready:2", namespace="labd-alice")
    await labd.service.create("alice", spec(), actor=Actor.HUB)
    for _ in range(200):
        if await pod_is_running_unready(sim, "labd-alice"):
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the pod never ran unready")
    # Give the watch time to see it: the lab must still be starting.
    await asyncio.sleep(0.5)
    assert (await labd.service.get_state("alice")).status == "pending"
    lab = await labd.store.get_current_lab("alice")
    assert lab is not None
    assert lab.state is LabState.STARTING
    await wait_state(labd, "alice", LabState.RUNNING)
    events = [event.message for event in await labd.store.events(lab.id, lab.operation)]
    assert "Readiness probe failed: connection refused" in events
    assert events[-1] == "Lab Kubernetes pod started for alice"


async def test_an_internal_url_can_name_the_pod(
    labd_factory: LabdFactory, sim: SimCluster
) -> None:
    labd: Labd = await labd_factory(
        lab={"internal_url_template": "http://{pod_ip}:{port}{service_prefix}"}
    )
    await labd.service.create("alice", spec(), actor=Actor.HUB)
    await wait_state(labd, "alice", LabState.STARTING, LabState.RUNNING)
    lab = await wait_state(labd, "alice", LabState.RUNNING)
    (pod,) = sim.objects("pods", "labd-alice")
    pod_ip = pod["status"]["podIP"]
    assert lab.internal_url == f"http://{pod_ip}:8888/user/alice/"
    assert (await labd.service.get_state("alice")).internal_url == lab.internal_url


async def test_labd_serves_from_its_rows_while_its_first_reconcile_runs(
    labd_factory: LabdFactory, sim: SimCluster, database_url: str, tmp_path: Path
) -> None:
    first = await labd_factory()
    await first.service.create("alice", spec(), actor=Actor.HUB)
    await wait_state(first, "alice", LabState.RUNNING)
    await first.stop()

    # The restarted labd's LISTs take 2 s: its first reconcile is far from
    # done when the hub comes.
    sim.faults.add_latency("list", seconds=2)
    config = make_config(database_url, sim.write_kubeconfig(tmp_path / "kubeconfig"))
    labd = await Labd.create(config)
    await labd.start()
    try:
        assert await labd.readiness() is None
        assert (await labd.service.get_state("alice")).status == "running"
        await labd.service.create("bob", spec(), actor=Actor.HUB)
        assert _on_duty_since(labd) is None, "the checks above came too late"

        # alice's namespace goes before the LISTs answer, and bob's pod runs:
        # the watches that start from those LISTs never see either change,
        # and the reconcile read its rows before both.  The delete returns
        # once the namespace is gone, without waiting for its 10 s recheck.
        await labd.service.delete("alice", actor=Actor.HUB)
        on_duty = _on_duty_since(labd)
        assert on_duty is not None
        deleted = await labd.store.get_latest_lab("alice")
        assert deleted is not None and deleted.state is LabState.DELETED
        assert deleted.updated_at.timestamp() - on_duty < 5
        await wait_state(labd, "bob", LabState.RUNNING)
    finally:
        await labd.stop()


async def test_a_lone_labd_whose_reconcile_failed_says_why_it_is_not_ready(
    database_url: str, tmp_path: Path
) -> None:
    # On SQLite labd is the only process: once its first reconcile failed,
    # no pod change moves a lab along until one succeeds, so /readyz says why
    # (and labd keeps trying). On PostgreSQL another replica may lead: a
    # replica serves either way.
    async with SimCluster(pod_start_delay=0.05, seed=7) as sim:
        sim.faults.add_error("list", "namespaces", rate=1.0, status=403)
        config = make_config(database_url, sim.write_kubeconfig(tmp_path / "kubeconfig"))
        labd = await Labd.create(config)
        await labd.start()
        try:
            await labd.wait_settled()
            assert labd.leader.on_duty_since is None
            why = await labd.readiness()
            if labd.database.is_sqlite:
                assert why is not None and "reconcile has not succeeded" in why
            else:
                assert why is None
            sim.faults.clear()
            await eventually(lambda: labd.leader.on_duty_since is not None, within=10)
            assert await labd.readiness() is None
        finally:
            await labd.stop()


def _on_duty_since(labd: Labd) -> float | None:
    """When the leader's duties started (a call, so that checks are not narrowed)."""
    return labd.leader.on_duty_since
