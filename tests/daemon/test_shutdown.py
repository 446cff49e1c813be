"""SIGTERM while labs spawn: labd exits 0 in time and loses nothing.

The simulated cluster answers pod creations slowly, so at SIGTERM several
spawn steps are in the middle of their Kubernetes calls.  labd must exit 0
within its shutdown bound (the unit's ``TimeoutStopSec`` is above it), leave
every lab row in place with no failure caused by the shutdown, and the spawns
must complete after the next start.  The intents are recorded through the
lab service on labd's database, as the API records them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from labd.api.service import LabService
from labd.config import load_config
from labd.db.database import Database
from labd.db.store import LabStore
from labd.images.catalog import ImageCatalog
from labd.lab.machine import LabState
from labd.lab.records import Actor, LabRecord
from labd.lab.signals import LabSignals
from tests.daemon.conftest import SHUTDOWN_BOUND, Daemon, write_config
from tests.support.core import spec

USERS = [f"term{i}" for i in range(8)]


@pytest.fixture
def config_file(tmp_path: Path, database_url: str, sim_process: Callable[..., Path]) -> Path:
    """labd on a cluster that takes 1.5 s to answer each pod creation."""
    kubeconfig = sim_process("--latency", "create:pods:1.5")
    return write_config(tmp_path / "labd.yaml", database_url=database_url, kubeconfig=kubeconfig)


@pytest.fixture
async def hub(config_file: Path) -> AsyncIterator[tuple[LabService, LabStore]]:
    """The lab service as the API uses it, on labd's database."""
    config = load_config(config_file)
    database = Database(config.database_url)
    store = LabStore(database)
    yield (
        LabService(
            config=config, store=store, signals=LabSignals(), images=ImageCatalog(config.images)
        ),
        store,
    )
    await database.dispose()


async def test_sigterm_during_spawns_loses_nothing(
    config_file: Path,
    hub: tuple[LabService, LabStore],
    tmp_path: Path,
    daemons: list[Daemon],
) -> None:
    service, store = hub
    daemon = Daemon(config_file, tmp_path / "labd.log")
    daemons.append(daemon)
    await daemon.start()
    for username in USERS:
        await service.create(username, spec(), actor=Actor.HUB)
    # Wait until spawn steps are in flight: labs in creating wait on the
    # slow pod creation.
    await _wait_for(store, lambda labs: any(lab.state is LabState.CREATING for lab in labs))

    started = time.monotonic()
    status = await daemon.terminate(within=2 * SHUTDOWN_BOUND)
    elapsed = time.monotonic() - started
    print(f"labd exited {status} {elapsed:.2f} s after SIGTERM")

    assert status == 0, daemon.tail()
    assert elapsed < SHUTDOWN_BOUND, f"shutdown took {elapsed:.1f} s"
    labs = await store.list_labs()
    assert sorted(lab.username for lab in labs) == USERS  # No lab lost...
    assert all(lab.state is not LabState.FAILED for lab in labs), labs
    for lab in labs:  # ...and none failed on the way, even briefly.
        assert "failed" not in {row.to_state for row in await store.lab_history(lab.id)}
    assert any(lab.state is not LabState.RUNNING for lab in labs), (
        "every spawn had finished before SIGTERM: the test did not test a shutdown mid-spawn"
    )

    await daemon.start()
    try:
        await _wait_for(
            store,
            lambda labs: all(lab.state is LabState.RUNNING for lab in labs),
            within=120,
        )
    finally:
        assert await daemon.terminate() == 0, daemon.tail()
    for lab in await store.list_labs():
        history = await store.lab_history(lab.id)
        assert [row.to_state for row in history] == [
            "requested",
            "creating",
            "starting",
            "running",
        ], lab.username


async def _wait_for(
    store: LabStore,
    condition: Callable[[list[LabRecord]], bool],
    *,
    within: float = 60,
) -> None:
    deadline = time.monotonic() + within
    while True:
        labs = await store.list_labs()
        if condition(labs):
            return
        states = {lab.username: lab.state.value for lab in labs}
        assert time.monotonic() < deadline, f"condition not met in {within} s: {states}"
        await asyncio.sleep(0.05)
