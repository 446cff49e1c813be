"""labd in process on the simulated cluster: configuration, spawn bodies, fixtures, waits.

labd is built through `Labd` exactly as ``labd serve`` builds it, and talks
to the simulated cluster through the real kubernetes-asyncio client over
HTTP.  Every test runs on SQLite and on PostgreSQL.

The fixtures (``sim``, ``labd_factory``, ``labd``) are registered for the
whole suite by ``tests/conftest.py``; tests/realk8s runs the same tests on
a real API server by overriding ``sim``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from labd.config import Config
from labd.daemon.factory import Labd
from labd.lab.machine import LabState
from labd.lab.protocol import LabSpecification
from labd.lab.records import EventRecord, LabRecord
from labd.sim import SimCluster
from tests.support.waiting import eventually

__all__ = [
    "IMAGE",
    "LabdFactory",
    "labd",
    "labd_factory",
    "make_config",
    "sim",
    "spec",
    "stream",
    "wait_state",
]

IMAGE = "registry.example/sciplat/lab:w_2026_47"


def make_config(database_url: str, kubeconfig: Path, **overrides: Any) -> Config:
    """A configuration with short timeouts, for tests."""
    data: dict[str, Any] = {
        "database_url": database_url,
        "kubernetes": {"kubeconfig": str(kubeconfig), "request_timeout": 5},
        "images": {
            "available": [
                {"reference": IMAGE},
                {"reference": "registry.example/sciplat/lab:r28_0_1"},
                {"reference": "registry.example/sciplat/lab:d_2026_11_24"},
            ],
            "recommended": "w_2026_47",
        },
        "timeouts": {"spawn": 20, "delete": 20},
        "retry": {"initial": 0.05, "maximum": 0.5, "spawn_attempts": 2},
        "reconcile_interval": 3600,
        "lab": {"pod_delete_grace": 0},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    return Config.model_validate(data)


def spec(size: str = "small", **options: Any) -> LabSpecification:
    """A create body as JupyterHub sends it."""
    return LabSpecification.model_validate(
        {
            "options": {"image_class": "recommended", "size": [size], **options},
            "env": {
                "JUPYTERHUB_SERVICE_PREFIX": "/user/alice/",
                "JUPYTERHUB_API_TOKEN": "token-of-the-lab",
            },
        }
    )


@pytest.fixture
async def sim() -> AsyncIterator[SimCluster]:
    """A simulated cluster whose pods start almost at once."""
    async with SimCluster(pod_start_delay=0.05, seed=7) as cluster:
        yield cluster


LabdFactory = Callable[..., Any]


@pytest.fixture
async def labd_factory(
    database_url: str, sim: SimCluster, tmp_path: Path
) -> AsyncIterator[LabdFactory]:
    """Start labd instances (each stopped at the end of the test).

    Each is returned once its first try at leadership has ended: it leads,
    with its first reconcile done and its watches started, or another does.
    """
    kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")
    started: list[Labd] = []

    async def start(**overrides: Any) -> Labd:
        labd = await Labd.create(make_config(database_url, kubeconfig, **overrides))
        await labd.start()
        started.append(labd)
        await labd.wait_settled()
        return labd

    yield start
    for labd in started:
        await labd.stop()


@pytest.fixture
async def labd(labd_factory: LabdFactory) -> Labd:
    """A started labd on the simulated cluster."""
    result: Labd = await labd_factory()
    return result


async def wait_state(
    labd: Labd, username: str, *states: LabState, within: float = 10
) -> LabRecord:
    async def reached() -> bool:
        lab = await labd.store.get_latest_lab(username)
        return lab is not None and lab.state in states

    await eventually(reached, within=within, what=f"{username} in {states}")
    lab = await labd.store.get_latest_lab(username)
    assert lab is not None
    return lab


async def stream(labd: Labd, username: str, after: int | None = None) -> list[EventRecord]:
    events = await labd.service.open_events(username, after=after)
    return [event async for event in events]
