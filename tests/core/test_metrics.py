"""``/metrics`` reports what labd did, through the real app and labd."""

from __future__ import annotations

import asyncio

import httpx

from labd.api import Authenticator, create_app
from labd.daemon.factory import Labd
from labd.lab.machine import LabState
from labd.lab.records import Actor
from labd.sim import SimCluster
from tests.support.core import spec, stream, wait_state


def sample(text: str, name: str) -> float:
    """The value of one sample line (``name`` with its labels) in the text format."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no sample {name!r} in:\n{text}")


async def scrape(labd: Labd) -> str:
    app = create_app(
        config=labd.config,
        service=labd.service,
        authenticator=Authenticator.from_tokens({}),
        readiness=labd.readiness,
        metrics=lambda: labd.metrics.render(labd.store),
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://labd") as client:
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return response.text


async def test_metrics_follow_a_spawn_a_failure_and_a_delete(labd: Labd, sim: SimCluster) -> None:
    await labd.service.create("mia", spec(), actor=Actor.HUB)
    await asyncio.wait_for(stream(labd, "mia"), 10)
    sim.faults.add_error("create", "pods", rate=1.0, status=403)
    await labd.service.create("max", spec(), actor=Actor.HUB)
    await wait_state(labd, "max", LabState.FAILED)
    text = await scrape(labd)
    assert sample(text, 'labd_labs{state="running"}') == 1
    assert sample(text, 'labd_labs{state="failed"}') == 1
    assert sample(text, "labd_spawn_duration_seconds_count") == 1
    assert sample(text, 'labd_spawn_failures_total{reason="kubernetes"}') == 1
    assert sample(text, 'labd_kubernetes_calls_total{kind="Namespace",verb="create"}') == 2
    assert sample(text, 'labd_kubernetes_errors_total{kind="Pod",verb="create"}') >= 1
    assert sample(text, "labd_reconcile_duration_seconds_count") >= 1
    assert sample(text, "labd_sse_subscribers") == 0
    assert sample(text, "labd_scheduler_queue_depth") >= 0
    sim.faults.clear()
    await labd.service.delete("mia", actor=Actor.HUB)
    text = await scrape(labd)
    assert sample(text, "labd_delete_duration_seconds_count") == 1
    assert sample(text, 'labd_labs{state="running"}') == 0
