"""The API over the whole of labd: real scheduler, simulated cluster, uvicorn.

Everything else in these tests moves labs through the store by hand; here
the scheduler does it, against the simulated Kubernetes API over HTTP, and
JupyterHub's calls go through the served app.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from labd.api import Authenticator, create_app
from labd.daemon.factory import Labd
from labd.sim import SimCluster
from tests.support.api import HUB, HUB_TOKEN, read_events, serve, spawn_body
from tests.support.core import make_config


@pytest.fixture
async def labd_url(database_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """labd with its scheduler on a simulated cluster, served by uvicorn."""
    async with SimCluster(pod_start_delay=0.05, seed=7) as sim:
        config = make_config(database_url, sim.write_kubeconfig(tmp_path / "kubeconfig"))
        labd = await Labd.create(config)
        await labd.start()
        try:
            app = create_app(
                config=config,
                service=labd.service,
                authenticator=Authenticator.from_tokens({HUB_TOKEN: "hub"}),
                readiness=labd.readiness,
            )
            async with serve(app) as url:
                yield url
        finally:
            await labd.stop()


async def test_spawn_and_delete(labd_url: str) -> None:
    async with httpx.AsyncClient(base_url=labd_url, headers=HUB, timeout=30) as client:
        assert (await client.get("/readyz")).status_code == 200
        created = await client.post(
            "/spawner/v1/labs/alice/create", json=spawn_body(size=["Small"])
        )
        assert created.status_code == 201

        events, _ = await read_events(labd_url, "alice")
        assert (events[0].type, events[0].data) == (
            "info",
            {"message": "Starting lab creation for alice", "progress": 1},
        )
        assert events[1].data == {
            "message": "Created Kubernetes objects for user lab",
            "progress": 30,
        }
        assert all(e.type == "info" and 30 < e.data["progress"] < 75 for e in events[2:-1])
        assert (events[-1].type, events[-1].data) == (
            "complete",
            {"message": "Lab Kubernetes pod started for alice"},
        )

        state = (await client.get("/spawner/v1/labs/alice")).json()
        assert state["status"] == "running"
        assert state["internal_url"] == "http://lab.labd-alice:8888/user/alice/"
        assert (await client.get("/spawner/v1/labs")).json() == ["alice"]

        assert (await client.delete("/spawner/v1/labs/alice")).status_code == 204
        assert (await client.get("/spawner/v1/labs/alice")).status_code == 404
        deleted, _ = await read_events(labd_url, "alice")
        assert [(e.data["message"], e.data["progress"]) for e in deleted] == [
            ("Shutting down Kubernetes pod", 25),
            ("Deleting user namespace", 62),
            ("Lab for alice deleted", 100),
        ]
        history = (await client.get("/spawner/v1/labs/alice/history")).json()
        assert [e["to"] for e in history][:2] == ["deleted", "deleting"]
