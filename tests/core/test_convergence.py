"""Convergence despite broken watches, and reconciliation after restarts."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import structlog.testing
from kubernetes_asyncio.client import ApiClient, CoreV1Api

from labd.daemon.factory import Labd
from labd.db.database import Database
from labd.db.store import LabStore
from labd.kube.builder import LabBuild, build_lab_objects
from labd.kube.client import create_api_client
from labd.kube.storage import LabKube
from labd.lab.machine import LabState, Trigger
from labd.lab.records import Actor, LabRecord, utcnow
from labd.lab.spec import LabSpec
from labd.sim import SimCluster
from tests.support.core import IMAGE, LabdFactory, spec, wait_state
from tests.support.waiting import eventually


async def test_dropped_watches_still_converge(labd: Labd, sim: SimCluster) -> None:
    sim.faults.drop_watches(after_events=1)
    for name in ("w1", "w2", "w3"):
        await labd.service.create(name, spec(), actor=Actor.HUB)
    for name in ("w1", "w2", "w3"):
        await wait_state(labd, name, LabState.RUNNING, within=15)


async def test_gone_watch_relists_and_converges(labd: Labd, sim: SimCluster) -> None:
    sim.faults.expire_next_watches(3)
    sim.faults.drop_watches(after_events=1)
    await labd.service.create("gone", spec(), actor=Actor.HUB)
    await wait_state(labd, "gone", LabState.RUNNING, within=15)


async def test_silent_watch_is_restarted(labd_factory: LabdFactory, sim: SimCluster) -> None:
    labd: Labd = await labd_factory(kubernetes={"watch_timeout": 1.5})
    sim.faults.silence_watches(True)
    await labd.service.create("quiet", spec(), actor=Actor.HUB)
    await wait_state(labd, "quiet", LabState.STARTING)
    await asyncio.sleep(0.5)
    sim.faults.silence_watches(False)
    await wait_state(labd, "quiet", LabState.RUNNING, within=10)


async def _create_behind_labds_back(sim: SimCluster, labd: Labd, username: str) -> str:
    """Create a lab's objects directly in the cluster, as another labd would."""
    lab_id = str(uuid.uuid4())
    spec_annotation: dict[str, Any] = {
        "options": {
            "image": IMAGE,
            "size": "small",
            "enable_debug": False,
            "reset_user_env": False,
        },
        "resources": {
            "limits": {"cpu": 1.0, "memory": 4294967296},
            "requests": {"cpu": 0.25, "memory": 1073741824},
        },
        "user": {"username": username, "name": None, "uid": 1000, "gid": 1000, "groups": []},
        "quota": None,
    }
    objects = build_lab_objects(
        LabBuild(
            lab_id=lab_id,
            username=username,
            slug=username,
            namespace=f"labd-{username}",
            spec=LabSpec.from_row(
                {**spec_annotation, "env": {"JUPYTERHUB_SERVICE_PREFIX": f"/user/{username}/"}}
            ),
            secret_env={"JUPYTERHUB_API_TOKEN": "x"},
        ),
        labd.config,
    )
    api_client = await create_api_client(labd.config.kubernetes)
    try:
        await LabKube(api_client, labd.config).create_lab_objects(objects)
    finally:
        await api_client.close()
    return lab_id


async def _delete_pod(labd: Labd, namespace: str, name: str) -> None:
    api_client: ApiClient = await create_api_client(labd.config.kubernetes)
    try:
        await CoreV1Api(api_client).delete_namespaced_pod(name, namespace, grace_period_seconds=0)
    finally:
        await api_client.close()


async def test_restart_adopts_and_removes_orphans(
    labd_factory: LabdFactory, sim: SimCluster
) -> None:
    first: Labd = await labd_factory()
    await first.service.create("kept", spec(), actor=Actor.HUB)
    await first.service.create("doomed", spec(), actor=Actor.HUB)
    await first.service.create("lost", spec(), actor=Actor.HUB)
    for name in ("kept", "doomed", "lost"):
        await wait_state(first, name, LabState.RUNNING)
    await first.stop()

    # While labd is down: a lab appears, one is deleted in SQL, a pod vanishes.
    adopted_id = await _create_behind_labds_back(sim, first, "newcomer")
    database = Database(first.config.database_url)
    try:
        store = LabStore(database)
        doomed = await store.get_current_lab("doomed")
        assert doomed is not None
        doomed = await store.transition(doomed.id, Trigger.DELETE, actor=Actor.OPERATOR)
        await store.transition(doomed.id, Trigger.DELETED, actor=Actor.OPERATOR)
    finally:
        await database.dispose()
    await _delete_pod(first, "labd-lost", "lost-nb")

    async def newcomer_running() -> bool:
        pods = sim.objects("pods", "labd-newcomer")
        return bool(pods) and pods[0].get("status", {}).get("phase") == "Running"

    await eventually(newcomer_running, what="the newcomer's pod to run")

    second: Labd = await labd_factory()
    report = second.last_reconcile
    assert report is not None
    assert report.adopted == [adopted_id]
    assert report.orphans == ["labd-doomed"]
    assert len(report.vanished) == 1
    adopted = await second.store.get_lab(adopted_id)
    assert (adopted.username, adopted.state) == ("newcomer", LabState.RUNNING)
    assert adopted.internal_url == "http://lab.labd-newcomer:8888/user/newcomer/"
    [row] = await second.store.lab_history(adopted_id)
    assert (row.trigger, row.actor) == ("adopt", "reconciler")
    lost = await second.store.get_current_lab("lost")
    assert lost is not None and lost.state is LabState.FAILED
    assert (await second.service.get_state("kept")).status == "running"

    async def doomed_gone() -> bool:
        return not [n for n in sim.objects("namespaces") if n["metadata"]["name"] == "labd-doomed"]

    await eventually(doomed_gone, what="the orphaned namespace to go")
    # A second pass finds nothing more to do.
    again = await second.reconciler.reconcile()
    assert (again.adopted, again.vanished, again.updated) == ([], [], [])


async def test_the_pod_watch_follows_on_from_the_first_reconcile(
    labd_factory: LabdFactory, sim: SimCluster
) -> None:
    first: Labd = await labd_factory()
    for name in ("stays", "goes"):
        await first.service.create(name, spec(), actor=Actor.HUB)
    for name in ("stays", "goes"):
        await wait_state(first, name, LabState.RUNNING)
    await first.stop()

    sim.stats.reset()
    second: Labd = await labd_factory()
    assert sim.stats.requests["list pods"] == 1  # The reconcile's; the watch follows it.
    # A change after the start still arrives, through the watch.
    await _delete_pod(second, "labd-goes", "goes-nb")
    await wait_state(second, "goes", LabState.FAILED)
    assert (await second.service.get_state("stays")).status == "running"
    assert sim.stats.requests["list pods"] == 1


async def test_a_step_that_meets_a_database_outage_is_left_over_not_a_crash(
    labd: Labd, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL restarting under a step is an outage, not a bug: a warning,
    # no "unexpected error" alert, and the lab's next step takes it on.
    transition = labd.store.transition
    failures = 1
    alerts: list[str] = []

    async def flaky_transition(*args: Any, **kwargs: Any) -> LabRecord:
        nonlocal failures
        if failures:
            failures -= 1
            raise OSError("connection to the database lost")
        return await transition(*args, **kwargs)

    monkeypatch.setattr(labd.store, "transition", flaky_transition)
    monkeypatch.setattr(labd.alerts, "unexpected", lambda where, _error: alerts.append(where))
    with structlog.testing.capture_logs() as logs:
        lab = await labd.service.create("outage", spec(), actor=Actor.HUB)
        await eventually(lambda: failures == 0, what="the step's failed write")
        await eventually(
            lambda: any(log["event"] == "left over: the database is out of reach" for log in logs),
            what="the warning",
        )
    assert alerts == []
    left_over = [log for log in logs if log["event"].startswith("left over")]
    assert left_over[0]["task"] == f"step-{lab.id}"
    assert left_over[0]["log_level"] == "warning"
    # Its lease would run out in 30 s; made due now, the lab goes on.
    await labd.store.update(lab.id, {"next_attempt_at": utcnow()})
    labd.signals.wake_scheduler()
    await wait_state(labd, "outage", LabState.RUNNING)


async def test_scheduler_outlives_database_errors(
    labd: Labd, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A database error in a scheduler pass (a PostgreSQL restart, say) is survived."""
    claim_due = labd.store.claim_due
    failures = 3

    async def flaky_claim_due(**kwargs: Any) -> list[LabRecord]:
        nonlocal failures
        if failures:
            failures -= 1
            raise OSError("connection to the database lost")
        return await claim_due(**kwargs)

    alerts: list[str] = []
    monkeypatch.setattr(labd.store, "claim_due", flaky_claim_due)
    monkeypatch.setattr(labd.alerts, "unexpected", lambda where, _error: alerts.append(where))
    labd.signals.wake_scheduler()
    # Three passes fail, a second apart; then the loop still steps labs.
    await eventually(lambda: failures == 0, within=10, what="three failed passes")
    await labd.service.create("steady", spec(), actor=Actor.HUB)
    await wait_state(labd, "steady", LabState.RUNNING, within=20)
    assert alerts == [], "an outage is no unexpected error"
