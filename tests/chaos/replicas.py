"""The replica chaos run: the chaos run of `tests.chaos.chaos`, against three replicas.

What changes from the single-process run:

- **labd** is ``replicas`` ``labd serve`` processes on one PostgreSQL
  database, behind HAProxy (`tests.support.fleet`): each replica checked on
  ``/readyz``, a request that meets a dead replica or a 503 sent again to
  another.  The hub talks to the balancer only.
- **hub clients** drive labd as JupyterHub's `LabdSpawner` does: a create
  answered 201 is followed by the spawn's event stream to its last event
  (a stream that breaks is reopened with ``Last-Event-ID``, through the
  balancer, so on another replica when its own died), then a status poll.
  A create answered 409 (a lab the hub did not know of: the balancer sent
  the hub's own create again after its replica died having made the lab)
  is met as `LabdSpawner.start` meets it: delete, then create again.
- **pods** stay unready for a while before they run (the sim's outcome
  ``unready``), so a spawn, and its event stream, lasts seconds.
- **the killer** SIGKILLs one replica at a time and starts it again: the
  leader (the replica whose ``labd_leader`` gauge is 1) most of all, then
  a replica that is serving an open event stream, else any.  After a
  leader's death it times how long until another replica leads.

The end checks are the single-process run's (convergence, no orphans, no
duplicate objects, gap-free histories, the 5xx contract) plus the streams:
every followed stream got exactly its operation's stored events, in order,
each once, up to the terminal one, however often it was cut and resumed.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from sqlalchemy import select

from labd.api import hash_token
from labd.config import Config
from labd.db.database import Database
from labd.db.schema import lab_events
from labd.db.store import LabStore
from labd.spawner import LabEvent, read_events
from tests.chaos.chaos import (
    ALLOWED_5XX,
    HUB_TOKEN,
    NOT_LABD,
    ChaosReport,
    Hub,
    SimControl,
    drive_user,
    labd_settings,
    logged_errors,
    restart_postgres_halfway,
    run_faults,
    settle,
    start_daemon,
    verify,
)
from tests.support.balancer import REPLICA_HEADER
from tests.support.fleet import Fleet, Replica
from tests.support.processes import SimProcess

__all__ = [
    "FollowedStream",
    "ReplicaChaosReport",
    "ReplicaHub",
    "StreamConnection",
    "check_streams",
    "run_replica_chaos",
]

UNREADY = "unready:2"
"""The pods' outcome: Ready only 2 s after they run, so spawns last seconds."""

_TERMINAL = frozenset({"complete", "failed"})


@dataclass
class StreamConnection:
    """One request of a followed event stream."""

    last_event_id: str | None
    """The ``Last-Event-ID`` it sent."""

    opened: float
    """When it was sent (monotonic seconds)."""

    replica: str = "?"
    """The replica that answered (`REPLICA_HEADER`)."""

    status: int = 0
    """The answer's status; 0 when there was none."""

    received: int = 0
    """Events it delivered."""

    closed: float = 0.0
    """When it ended."""

    end: str = ""
    """``terminal``, ``ended early`` (a clean end before the last event),
    ``broken: <error>`` or ``refused``."""


@dataclass
class FollowedStream:
    """A spawn's event stream as one hub client followed it."""

    username: str
    """Whose lab."""

    events: list[LabEvent] = field(default_factory=list)
    """Every event received, in order, across reconnections."""

    connections: list[StreamConnection] = field(default_factory=list)
    """Each request, the first without ``Last-Event-ID``."""

    failure: str | None = None
    """Why it was given up, if it was."""


@dataclass
class ReplicaChaosReport(ChaosReport):
    """The chaos report, plus what the replicas and the event streams went through."""

    replicas: int = 0
    """How many labd replicas served."""

    kills_by_target: Counter[str] = field(default_factory=Counter)
    """SIGKILLs by why their replica was picked: ``leader``, ``stream``, ``any``."""

    kill_log: list[tuple[str, float]] = field(default_factory=list)
    """Each SIGKILL: the replica and when (monotonic seconds)."""

    failovers: list[float] = field(default_factory=list)
    """Seconds from a leader's SIGKILL until another replica led."""

    leaderless: int = 0
    """Leader SIGKILLs after which no replica led within 30 s."""

    most_leaders: int = 0
    """The most replicas seen leading in one reading of the gauges (for the record:
    a reading of three replicas is not one instant)."""

    leadership: str = "no labd_leader gauge: every replica runs its own watches"
    """What the replicas said about leadership."""

    streams: list[FollowedStream] = field(default_factory=list)
    """Every spawn's event stream the hub followed."""

    conflicts: Counter[str] = field(default_factory=Counter)
    """Creates answered 409, by type (met by a delete and a new create)."""

    def lines(self) -> list[str]:
        """The report as text."""
        out = super().lines()
        verified = out.index("verified:")
        cut, by_death, resumed = stream_cuts(self)
        connections = [c for s in self.streams for c in s.connections]
        extra = [
            f"replicas: {self.replicas} behind HAProxy; {self.leadership}",
            f"SIGKILLs by target: {dict(self.kills_by_target) or 'none'}",
            f"failovers after a leader's SIGKILL: {_spread(self.failovers)};"
            f" none within 30 s: {self.leaderless};"
            f" most replicas leading in one reading: {self.most_leaders}",
            f"creates answered 409 (then deleted and created again): "
            f"{dict(self.conflicts) or 'none'}",
            f"event streams followed: {len(self.streams)}, "
            f"{sum(len(s.events) for s in self.streams)} events, "
            f"{len(connections)} requests "
            f"({dict(Counter(c.end.partition(':')[0] for c in connections))})",
            f"  cut before their last event: {cut}; by their replica's death: {by_death}; "
            f"of those resumed with Last-Event-ID on another replica: {resumed}",
        ]
        return out[:verified] + extra + out[verified:]


def _spread(values: list[float]) -> str:
    if not values:
        return "none"
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (
        f"{len(values)}, p50 {statistics.median(ordered):.2f} s, p99 {p99:.2f} s,"
        f" max {ordered[-1]:.2f} s"
    )


def stream_cuts(report: ReplicaChaosReport) -> tuple[int, int, int]:
    """Count stream requests cut before the last event; by their replica's death; and
    of those, the ones the next request resumed with ``Last-Event-ID`` on another replica."""
    cut = by_death = resumed = 0
    for stream in report.streams:
        for this, following in zip(stream.connections, stream.connections[1:], strict=False):
            if this.status != 200:
                continue
            cut += 1
            died = any(
                name == this.replica and this.opened <= when <= this.closed
                for name, when in report.kill_log
            )
            if died and this.end.startswith("broken"):
                by_death += 1
                if following.last_event_id is not None and following.replica != this.replica:
                    resumed += 1
    return cut, by_death, resumed


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[str]:
    async for raw in content:
        yield raw.decode().rstrip("\r\n")


class ReplicaHub(Hub):
    """JupyterHub's `LabdSpawner` as labd sees it, through a balancer.

    Parameters
    ----------
    http
        The hub's session (hub token).
    base
        The balancer's URL.
    report
        Where answers, retries, conflicts and streams go.
    """

    def __init__(self, http: aiohttp.ClientSession, base: str, report: ReplicaChaosReport) -> None:
        super().__init__(http, base, report)
        self._replica_report = report
        # HAProxy answers 503 itself when no replica is ready (all of them
        # wait for PostgreSQL): labd's 503 not_ready, said by the balancer.
        self.allowed_5xx = ALLOWED_5XX | {(503, NOT_LABD)}
        self.open_streams: dict[int, tuple[StreamConnection, str]] = {}
        """Stream requests open right now, with their user."""

    async def act(self, username: str) -> None:
        """Flip the user's lab as `LabdSpawner` would: stop it, or start and follow it."""
        if self.wanted.get(username):
            await self.call("status", username)
            status, _ = await self.call("delete", username)
            if status in (204, 404, 500):
                self.wanted[username] = False
            return
        status, kind = await self.call("create", username)
        if status == 409:
            # LabdSpawner.start: a lab the hub did not know of is deleted and
            # asked for again.
            self._replica_report.conflicts[kind] += 1
            await self.call("delete", username)
            status, kind = await self.call("create", username)
        if status == 201 or kind == "lab_exists":
            self.wanted[username] = True
        if status == 201:
            self._replica_report.streams.append(await self.follow(username))
            await self.call("status", username)

    async def follow(self, username: str, *, within: float = 120) -> FollowedStream:
        """Follow the user's current operation's events to the last one, resuming on breaks."""
        stream = FollowedStream(username)
        last_id: str | None = None
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            connection = StreamConnection(last_id, time.monotonic())
            stream.connections.append(connection)
            self.open_streams[id(connection)] = (connection, username)
            try:
                await self._read_stream(username, stream, connection)
            except (aiohttp.ClientError, TimeoutError) as error:
                connection.end = f"broken: {type(error).__name__}"
            finally:
                connection.closed = time.monotonic()
                del self.open_streams[id(connection)]
            if connection.end == "terminal":
                return stream
            if connection.end == "refused" and connection.status not in (429, 503):
                stream.failure = f"stream refused with {connection.status}"
                return stream
            if stream.events:
                last_id = stream.events[-1].id
            await asyncio.sleep(0.2)
        stream.failure = f"no last event within {within} s"
        return stream

    async def _read_stream(
        self, username: str, stream: FollowedStream, connection: StreamConnection
    ) -> None:
        headers = {"Accept": "text/event-stream"}
        if connection.last_event_id is not None:
            headers["Last-Event-ID"] = connection.last_event_id
        async with self._http.get(
            f"{self._base}/spawner/v1/labs/{username}/events",
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5, sock_read=60),
        ) as response:
            connection.status = response.status
            connection.replica = response.headers.get(REPLICA_HEADER, "?")
            if response.status != 200:
                await response.read()
                connection.end = "refused"
                self._report.retries[f"events {response.status}"] += 1
                return
            async for event in read_events(_lines(response.content)):
                stream.events.append(event)
                connection.received += 1
                if event.type in _TERMINAL:
                    connection.end = "terminal"
                    return
            connection.end = "ended early"


async def check_streams(database_url: str, streams: list[FollowedStream]) -> int:
    """Check that each stream got its operation's stored events, each once, to the last.

    The operation is the one of the first event received (its id names
    it); returns the number of events checked.
    """
    database = Database(database_url)
    store = LabStore(database)
    checked = 0
    try:
        for stream in streams:
            assert stream.failure is None, (stream.failure, stream.connections)
            assert stream.events, stream
            first = int(stream.events[0].id or 0)
            async with database.read() as conn:
                lab_id, operation = (
                    await conn.execute(
                        select(lab_events.c.lab_id, lab_events.c.operation).where(
                            lab_events.c.id == first
                        )
                    )
                ).one()
            stored = await store.events(lab_id, operation)
            got = [(int(e.id or 0), e.type, e.message) for e in stream.events]
            assert got == [(e.id, e.type.value, e.message) for e in stored], (
                stream.username,
                got,
                stream.connections,
            )
            assert stored[-1].terminal, stored[-1]
            checked += len(got)
    finally:
        await database.dispose()
    return checked


async def run_replica_chaos(
    *,
    database_url: str,
    workdir: Path,
    seconds: float,
    users: int = 16,
    replicas: int = 3,
    seed: int = 20261125,
    restart_postgres: bool = True,
    say: Any = print,
) -> ReplicaChaosReport:
    """Run the replica chaos for ``seconds``, settle, verify; return the report.

    Raises
    ------
    AssertionError
        If a check fails.
    """
    rng = random.Random(seed)
    report = ReplicaChaosReport(replicas=replicas)
    sim = SimProcess(
        workdir / "kubeconfig",
        args=["--pod-start-delay", "0.2", "--seed", "7", "--default-outcome", UNREADY],
    )
    token_file = workdir / "tokens"
    token_file.write_text(f"{hash_token(HUB_TOKEN)} hub\n")

    def settings(port: int) -> dict[str, Any]:
        return labd_settings(database_url, sim.kubeconfig, port, token_file)

    fleet = Fleet(settings, workdir, replicas=replicas)
    config = Config.model_validate(settings(fleet.replicas[0].port))
    names = [f"chaos{i}" for i in range(users)]
    sim.start()
    try:
        await fleet.start()
        headers = {"Authorization": f"Bearer {HUB_TOKEN}"}
        async with (
            aiohttp.ClientSession(headers=headers) as http,
            aiohttp.ClientSession() as control_http,
        ):
            hub = ReplicaHub(http, fleet.url, report)
            control = SimControl(control_http, sim)
            stop_at = time.monotonic() + seconds
            tasks = [asyncio.create_task(drive_user(hub, name, rng, stop_at)) for name in names]
            tasks.append(
                asyncio.create_task(
                    run_faults(control, rng, names, stop_at, report, default=UNREADY)
                )
            )
            tasks.append(
                asyncio.create_task(_killer(fleet, hub, control_http, rng, stop_at, report))
            )
            if restart_postgres:
                tasks.append(asyncio.create_task(restart_postgres_halfway(seconds, report)))
            await asyncio.gather(*tasks)
            await control.clear()
            say(f"chaos over after {seconds:.0f} s; settling")
            await settle(hub, names, report)
        await verify(config, hub.wanted, report)
        events = await check_streams(database_url, report.streams)
        _, by_death, resumed = stream_cuts(report)
        report.verified.append(
            f"{len(report.streams)} event streams each got their operation's {events} stored"
            " events in all, in order, each once, to the last; "
            f"{resumed} of the {by_death} cut by their replica's death resumed on another"
        )
    finally:
        statuses = await fleet.stop()
        report.verified.append(f"replicas' exit statuses on SIGTERM: {statuses}")
        sim.stop()
    for replica in fleet.replicas:
        report.errors_logged += logged_errors(replica.log)
    assert not report.unexpected, report.unexpected
    assert not report.leaderless, f"{report.leaderless} leader deaths left no leader for 30 s"
    return report


async def _killer(
    fleet: Fleet,
    hub: ReplicaHub,
    http: aiohttp.ClientSession,
    rng: random.Random,
    stop_at: float,
    report: ReplicaChaosReport,
) -> None:
    """SIGKILL a replica every 0.5 to 5 s (the leader most of all) and start it again."""
    while (left := stop_at - time.monotonic()) > 4:
        await asyncio.sleep(rng.uniform(0.5, min(5, left - 2)))
        leaders = await fleet.leaders(http)
        if leaders is not None:
            report.leadership = "one leads (labd_leader gauge)"
            report.most_leaders = max(report.most_leaders, len(leaders))
        victim, why = _pick(fleet, hub, rng, leaders or [])
        killed_at = time.monotonic()
        await victim.daemon.kill()
        report.kills += 1
        report.kills_by_target[why] += 1
        report.kill_log.append((victim.name, killed_at))
        if why == "leader":
            failover = await _failover(fleet, http, killed_at)
            if failover is None:
                report.leaderless += 1
            else:
                report.failovers.append(failover)
        await asyncio.sleep(rng.uniform(0, 1.0))
        await start_daemon(victim.daemon, report)


def _pick(
    fleet: Fleet, hub: ReplicaHub, rng: random.Random, leaders: list[str]
) -> tuple[Replica, str]:
    """The replica to kill next, and why it was picked."""
    roll = rng.random()
    if leaders and roll < 0.75:
        return fleet.replica(rng.choice(leaders)), "leader"
    serving = sorted(
        {c.replica for c, _ in hub.open_streams.values() if c.received and c.replica != "?"}
    )
    if serving and roll < 0.95:
        return fleet.replica(rng.choice(serving)), "stream"
    return rng.choice(fleet.replicas), "any"


async def _failover(fleet: Fleet, http: aiohttp.ClientSession, killed_at: float) -> float | None:
    """Seconds from ``killed_at`` until a live replica leads; `None` if none did in 30 s."""
    while time.monotonic() - killed_at < 30:
        if await fleet.leaders(http):
            return time.monotonic() - killed_at
        await asyncio.sleep(0.05)
    return None
