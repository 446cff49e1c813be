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
import itertools
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from kubernetes_asyncio.client import CoreV1Api

from labd.config import Config, load_config
from labd.database import Database
from labd.errors import LabdError
from labd.images import ImageCatalog
from labd.kube.builder import MANAGED_SELECTOR
from labd.kube.client import create_api_client
from labd.machine import LabState
from labd.service import LabService
from labd.signals import LabSignals
from labd.store import Actor, LabStore
from tests.core.conftest import IMAGE, spec

USERS = [f"crash{i}" for i in range(12)]
KILLS = 6


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def sim_process(tmp_path: Path) -> Iterator[Path]:
    """The simulated cluster as a separate process; yields its kubeconfig."""
    kubeconfig = tmp_path / "kubeconfig"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "labd.sim",
            "--port",
            "0",
            "--kubeconfig",
            str(kubeconfig),
            "--pod-start-delay",
            "0.3",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while not kubeconfig.exists():
            assert process.poll() is None, "the simulated cluster died"
            assert time.monotonic() < deadline, "the simulated cluster did not start"
            time.sleep(0.05)
        yield kubeconfig
    finally:
        process.terminate()
        process.wait(10)


@pytest.fixture
def config_file(tmp_path: Path, database_url: str, sim_process: Path) -> Path:
    path = tmp_path / "labd.yaml"
    settings = {
        "database_url": database_url,
        "bind_address": f"127.0.0.1:{_free_port()}",
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


class Daemon:
    """``labd serve`` in a subprocess."""

    def __init__(self, config_file: Path, config: Config, log: Path) -> None:
        self._args = [sys.executable, "-m", "labd", "serve", "--config", str(config_file)]
        self._url = f"http://{config.bind_address}/readyz"
        self._log = log
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self._log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self._args, stdout=log, stderr=log, env=os.environ
            )
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                assert self.process.returncode is None, self._log.read_text()[-3000:]
                try:
                    if (await client.get(self._url)).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
        raise AssertionError("labd did not become ready:\n" + self._log.read_text()[-3000:])

    async def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 30)


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
    daemon = Daemon(config_file, config, tmp_path / "labd.log")
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
        await _converged(store, wanted)
    finally:
        assert await daemon.terminate() == 0
    await _no_orphans(store, config)
    await _history_complete(store)


async def _converged(store: LabStore, wanted: dict[str, bool]) -> None:
    deadline = time.monotonic() + 90
    pending: dict[str, str] = {}
    while time.monotonic() < deadline:
        pending = {}
        for username, running in wanted.items():
            lab = await store.get_current_lab(username)
            state = lab.state if lab else None
            if running and state is not LabState.RUNNING:
                pending[username] = f"wanted running, is {state}"
            if not running and state is not None:
                pending[username] = f"wanted gone, is {state}"
        if not pending:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"labs did not converge: {pending}")


async def _no_orphans(store: LabStore, config: Config) -> None:
    running = {lab.namespace for lab in await store.list_labs([LabState.RUNNING])}
    api_client = await create_api_client(config.kubernetes)
    try:
        core = CoreV1Api(api_client)
        namespaces = await core.list_namespace(label_selector=MANAGED_SELECTOR)
        pods = await core.list_pod_for_all_namespaces(label_selector=MANAGED_SELECTOR)
    finally:
        await api_client.close()
    live = {ns.metadata.name for ns in namespaces.items if ns.status.phase != "Terminating"}
    assert live == running
    assert {
        pod.metadata.namespace for pod in pods.items if not pod.metadata.deletion_timestamp
    } == running


async def _history_complete(store: LabStore) -> None:
    labs = await store.list_labs()
    assert labs
    for lab in labs:
        history = await store.lab_history(lab.id)
        assert [row.version for row in history] == list(range(1, lab.version + 1)), lab.id
        assert history[-1].to_state == lab.state.value
        for earlier, later in itertools.pairwise(history):
            assert earlier.to_state == later.from_state
