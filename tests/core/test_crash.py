"""Crash safety: labd killed with SIGKILL at random points loses nothing.

The simulated cluster runs in a process of its own (it outlives labd), labd
runs as ``labd serve`` in another, and this test plays the hub: it records
creates and deletes through the lab service (the same code the API calls),
so every intent it makes is committed before labd may be killed.  labd is
killed at random moments while labs spawn and delete, then restarted; at the
end every lab must be where it was last asked to be, the cluster must hold
no orphaned objects, and each lab's history must have one row per version.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import yaml

from labd.api.service import LabService
from labd.config import Config, load_config
from labd.db.database import Database
from labd.db.store import LabStore
from labd.images.catalog import ImageCatalog
from labd.lab.errors import LabdError
from labd.lab.records import Actor
from labd.lab.signals import LabSignals
from tests.support.convergence import converged, history_complete, no_orphans
from tests.support.core import IMAGE, spec
from tests.support.processes import Daemon, SimProcess, free_port

USERS = [f"crash{i}" for i in range(12)]
KILLS = 6


@pytest.fixture
def sim_process(tmp_path: Path) -> Iterator[Path]:
    """The simulated cluster as a separate process; yields its kubeconfig."""
    sim = SimProcess(tmp_path / "kubeconfig", args=["--pod-start-delay", "0.3"])
    sim.start()
    try:
        yield sim.kubeconfig
    finally:
        sim.stop()


@pytest.fixture
def config_file(tmp_path: Path, database_url: str, sim_process: Path) -> Path:
    path = tmp_path / "labd.yaml"
    settings = {
        "database_url": database_url,
        "bind_address": f"127.0.0.1:{free_port()}",
        "kubernetes": {"kubeconfig": str(sim_process), "request_timeout": 5},
        "images": {"available": [{"reference": IMAGE}], "recommended": "w_2026_47"},
        "timeouts": {"spawn": 60, "delete": 60},
        "retry": {"initial": 0.1, "maximum": 1.0},
        "reconcile_interval": 5,
        "lab": {"pod_delete_grace": 0},
        "log_format": "json",
    }
    path.write_text(yaml.safe_dump(settings))
    return path


@pytest.fixture
async def hub(config_file: Path) -> AsyncIterator[tuple[LabService, LabStore, Config]]:
    """The lab service as the API uses it, on labd's database."""
    config = load_config(config_file)
    database = Database(config.database_url)
    store = LabStore(database)
    service = LabService(
        config=config, store=store, signals=LabSignals(), images=ImageCatalog(config.images)
    )
    yield service, store, config
    await database.dispose()


async def _ask(service: LabService, rng: random.Random, wanted: dict[str, bool]) -> None:
    """Make one random create or delete, remembering what was last asked."""
    username = rng.choice(USERS)
    try:
        if wanted.get(username):
            await service.request_delete(username, actor=Actor.HUB)
            wanted[username] = False
        else:
            await service.create(username, spec(), actor=Actor.HUB)
            wanted[username] = True
    except LabdError:
        pass  # 409 while a delete runs, 404 on a lab already gone: no new intent.


async def test_sigkill_at_random_points_loses_nothing(
    config_file: Path, hub: tuple[LabService, LabStore, Config], tmp_path: Path
) -> None:
    service, store, config = hub
    daemon = Daemon(config_file, f"http://{config.bind_address}/readyz", tmp_path / "labd.log")
    rng = random.Random(20261125)
    wanted: dict[str, bool] = {}
    for _ in range(KILLS):
        await daemon.start()
        for _ in range(rng.randint(4, 12)):
            await _ask(service, rng, wanted)
            await asyncio.sleep(rng.uniform(0, 0.15))
        await asyncio.sleep(rng.uniform(0, 1.0))
        await daemon.kill()
        for _ in range(rng.randint(0, 4)):
            await _ask(service, rng, wanted)  # Intents recorded while labd is down.

    await daemon.start()
    try:
        await converged(store, wanted)
    finally:
        assert await daemon.terminate() == 0
    await no_orphans(store, config)
    await history_complete(store)
