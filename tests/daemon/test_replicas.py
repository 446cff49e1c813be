"""Two ``labd serve`` on one PostgreSQL database: one leads, another takes over.

The replicas are real processes on one simulated cluster (a process of its
own).  Exactly one of them leads (``/readyz`` and the ``labd_leader``
gauge say which); a lab spawned through the other runs; SIGKILL the
leader and the other runs the watches and the reconciler within 5 s (the
bound the replica issue sets; ``tests/bench/failover.py`` measures the
spread); the lab is then deleted through the new leader.  Last, the new
leader's lock session is terminated in PostgreSQL: it steps down (and says
why) and the restarted replica leads.  SQLite serves one
labd process, so the test skips there.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.engine import make_url

from labd.api import hash_token
from labd.db.leadership import LEADER_LOCK_KEY
from tests.daemon.conftest import Daemon, write_config
from tests.support.fleet import leader_gauge

HUB = {"Authorization": "Bearer hub-token"}

FAILOVER_BOUND = 5.0
"""Seconds from the leader's SIGKILL to another replica's watches running."""

LAB = "/spawner/v1/labs/rita"


@pytest.fixture
def config_files(
    tmp_path: Path, database_url: str, sim_process: Callable[..., Path]
) -> list[Path]:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite serves one labd process: no replicas")
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{hash_token('hub-token')} hub\n")
    kubeconfig = sim_process()
    return [
        write_config(
            tmp_path / f"labd-{index}.yaml",
            database_url=database_url,
            kubeconfig=kubeconfig,
            token_file=str(tokens),
        )
        for index in range(2)
    ]


async def _ready(client: httpx.AsyncClient, daemon: Daemon) -> dict[str, Any]:
    reply = await client.get(f"{daemon.url}/readyz")
    assert reply.status_code == 200, reply.text
    body: dict[str, Any] = reply.json()
    return body


async def _gauge(client: httpx.AsyncClient, daemon: Daemon) -> float | None:
    return leader_gauge((await client.get(f"{daemon.url}/metrics")).text)


async def _status(client: httpx.AsyncClient, daemon: Daemon) -> str | None:
    reply = await client.get(f"{daemon.url}{LAB}", headers=HUB)
    if reply.status_code == 404:
        return None
    assert reply.status_code == 200, reply.text
    status: str = reply.json()["status"]
    return status


def _log(daemon: Daemon) -> list[dict[str, Any]]:
    lines = []
    for line in daemon.log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


async def _terminate_lock_session(database_url: str) -> None:
    """``pg_terminate_backend`` of the session that holds the leader lock."""
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    connection = await asyncpg.connect(dsn)
    try:
        terminated = await connection.fetchval(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory'"
            " AND granted AND database = (SELECT oid FROM pg_database"
            " WHERE datname = current_database())"
            " AND ((classid::bigint << 32) | objid::bigint) = $1",
            LEADER_LOCK_KEY,
        )
    finally:
        await connection.close()
    assert terminated


async def _until(check: Callable[[], Any], *, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await check():
        assert time.monotonic() < deadline, f"{what} not within {within:g} s"
        await asyncio.sleep(0.02)


async def test_one_replica_leads_and_another_takes_over_after_its_sigkill(
    config_files: list[Path], tmp_path: Path, daemons: list[Daemon], database_url: str
) -> None:
    first, second = (
        Daemon(config, tmp_path / f"labd-{index}.log") for index, config in enumerate(config_files)
    )
    daemons += [first, second]
    await first.start()
    await second.start()
    async with httpx.AsyncClient(timeout=10) as client:
        bodies = [await _ready(client, daemon) for daemon in (first, second)]
        assert [body["status"] for body in bodies] == ["ok", "ok"]
        assert sorted(body["leader"] for body in bodies) == [False, True]
        leader, other = (first, second) if bodies[0]["leader"] else (second, first)
        assert (await _gauge(client, leader), await _gauge(client, other)) == (1, 0)
        assert (await _ready(client, other))["leader_since"] is None

        # A lab spawned through the replica that does not lead runs.
        body = {
            "options": {"image_class": "recommended", "size": "small"},
            "env": {"JUPYTERHUB_SERVICE_PREFIX": "/user/rita/"},
        }
        created = await client.post(f"{other.url}{LAB}/create", json=body, headers=HUB)
        assert created.status_code == 201, created.text

        async def running() -> bool:
            return await _status(client, other) == "running"

        await _until(running, within=30, what="the lab running")

        assert leader.process is not None
        leader.process.kill()
        killed_at = time.time()
        await leader.process.wait()

        async def on_duty() -> bool:
            return (await _ready(client, other))["leader_since"] is not None

        await _until(on_duty, within=30, what="another leader")
        taken_over = (await _ready(client, other))["leader_since"] - killed_at
        assert taken_over < FAILOVER_BOUND, f"watches ran {taken_over:.2f} s after the SIGKILL"
        assert await _gauge(client, other) == 1
        assert "leadership acquired" in other.log_events()

        # The killed leader comes back as a replica that does not lead.
        await leader.start()
        assert (await _ready(client, leader))["leader"] is False
        assert await _gauge(client, leader) == 0

        # The lab is deleted through the new leader.
        deleted = await client.delete(f"{other.url}{LAB}", headers=HUB, timeout=60)
        assert deleted.status_code == 204, deleted.text
        assert await _status(client, leader) is None

        # The new leader's lock session is cut: it steps down, the other leads.
        await _terminate_lock_session(database_url)

        async def stepped_down() -> bool:
            return (await _ready(client, other))["leader"] is False

        await _until(stepped_down, within=10, what="the cut leader stepping down")
        assert await _gauge(client, other) == 0
        lost = [line for line in _log(other) if line.get("event") == "leadership lost"]
        # asyncpg's close callback or the next ping, whichever comes first,
        # notices the cut; the ping adds the driver's error to the reason.
        assert lost[-1]["reason"].startswith("connection lost"), lost

        async def back() -> bool:
            return (await _ready(client, leader))["leader_since"] is not None

        await _until(back, within=10, what="the other replica leading")
    for daemon in (first, second):
        assert await daemon.terminate() == 0, daemon.tail()
