"""A rolling restart of three replicas under a steady spawn load: no hub call fails.

Three ``labd serve`` replicas on one PostgreSQL database behind HAProxy;
hub clients create labs, follow each spawn's events to the end, poll the
lab's status and delete it, over and over, as JupyterHub's `LabdSpawner`
does.  Meanwhile each replica in turn is stopped with SIGTERM, waited for,
started again and taken back by HAProxy before the next.  The hub makes no
retry of its own: every create is answered 201, every status 200, every
delete 204 (or 404 when the balancer sent it again after a stopping labd's
503 and the delete ended in between), no request meets a broken connection
or a 503 (the balancer's retries are allowed: that is what it is for).
An event stream that labd ends at shutdown is reopened with
``Last-Event-ID``, as `LabdSpawner` does, and every stream still gets
each of its operation's events once.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from labd.api import hash_token
from labd.config import Config
from labd.db.database import Database
from labd.db.store import LabStore
from tests.chaos.chaos import HUB_TOKEN, labd_settings
from tests.chaos.replicas import ReplicaChaosReport, ReplicaHub, check_streams
from tests.support.balancer import haproxy_binary
from tests.support.convergence import converged, history_complete, no_orphans
from tests.support.fleet import Fleet
from tests.support.processes import SimProcess

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        haproxy_binary() is None, reason="HAProxy is not installed (apt-get install haproxy)"
    ),
]

USERS = 6


async def _load(hub: ReplicaHub, username: str, rng: random.Random, done: asyncio.Event) -> None:
    """Spawn and delete the user's lab until ``done``; end with it deleted."""
    while not done.is_set() or hub.wanted.get(username):
        await hub.act(username)
        await asyncio.sleep(rng.uniform(0.0, 0.3))


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
@pytest.mark.parametrize(
    "pod_stop",
    [
        pytest.param(0.5, id="quick-stops"),
        pytest.param(8.0, id="stops-longer-than-shutdown"),
    ],
)
async def test_rolling_restart_fails_no_hub_call(
    database_url: str, pod_stop: float, tmp_path: Path
) -> None:
    """SIGTERM, restart and readiness of each replica in turn; the hub sees no failure.

    With pods that take longer to stop than labd's graceful shutdown lasts,
    deletes are always in flight, and waiting, when a replica stops.
    """
    report = ReplicaChaosReport(replicas=3)
    sim = SimProcess(
        tmp_path / "kubeconfig",
        args=[
            "--pod-start-delay",
            "0.2",
            "--pod-stop-delay",
            str(pod_stop),
            "--default-outcome",
            "unready:1",
        ],
    )
    token_file = tmp_path / "tokens"
    token_file.write_text(f"{hash_token(HUB_TOKEN)} hub\n")

    def settings(port: int) -> dict[str, Any]:
        values = labd_settings(database_url, sim.kubeconfig, port, token_file)
        values["lab"] = {"pod_delete_grace": 30}  # The sim's stop delay is capped by it.
        return values

    fleet = Fleet(settings, tmp_path, replicas=3)
    rng = random.Random(20261204)
    names = [f"roll{i}" for i in range(USERS)]
    exits: dict[str, int] = {}
    sim.start()
    try:
        await fleet.start()
        headers = {"Authorization": f"Bearer {HUB_TOKEN}"}
        async with aiohttp.ClientSession(headers=headers) as http:
            hub = ReplicaHub(http, fleet.url, report)
            done = asyncio.Event()
            load = [asyncio.create_task(_load(hub, name, rng, done)) for name in names]
            await asyncio.sleep(3)
            calls_before = report.requests.total()
            waiting_at_stops = 0
            for replica in fleet.replicas:
                waiting_at_stops += hub.in_flight
                exits[replica.name] = await replica.daemon.terminate()
                await replica.daemon.start()
                await fleet.balancer.wait_up(replica.name)
            calls_during = report.requests.total() - calls_before
            await asyncio.sleep(2)
            done.set()
            await asyncio.gather(*load)
        print("\n".join(report.lines()))
        assert exits == {"r0": 0, "r1": 0, "r2": 0}
        # With slow stops, the calls are deletes that wait through the restarts.
        busy = calls_during + waiting_at_stops
        assert busy >= 2 * USERS, "too little load while the replicas restarted"
        assert not report.retries, report.retries
        assert not report.unexpected, report.unexpected
        # A delete that a stopping labd answered 503 and the balancer sent
        # again finds it finished if it ended in between: 404, which
        # LabdSpawner takes as stopped (docs/api.md, DELETE).
        assert {"create 201", "status 200", "delete 204"} <= set(report.requests)
        assert set(report.requests) <= {
            "create 201",
            "status 200",
            "delete 204",
            "delete 404 unknown_user",
        }, report.requests
        assert not report.conflicts, report.conflicts
        ends = Counter(c.end for stream in report.streams for c in stream.connections)
        assert set(ends) <= {"terminal", "ended early"}, ends
        unfinished = [s for s in report.streams if s.events[-1].type != "complete"]
        assert not unfinished, unfinished
        await check_streams(database_url, report.streams)
        await _all_gone(
            database_url, Config.model_validate(settings(fleet.replicas[0].port)), names
        )
    finally:
        await fleet.stop()
        sim.stop()


async def _all_gone(database_url: str, config: Config, names: list[str]) -> None:
    """Every user's lab deleted, nothing left in the cluster, histories complete."""
    database = Database(database_url)
    try:
        store = LabStore(database)
        await converged(store, dict.fromkeys(names, False), within=30)
        await no_orphans(store, config)
        await history_complete(store)
    finally:
        await database.dispose()
