"""The systemd notify protocol of ``labd serve``, over a real datagram socket.

The test binds the socket systemd would bind and checks what labd promises
in the unit file: ``READY=1`` only once it really serves (``/readyz`` 200),
``WATCHDOG=1`` while the scheduler loop goes round and none while it is
wedged, ``STOPPING=1`` on SIGTERM and exit status 0.

The watchdog interval is 3 s rather than systemd's usual tens of seconds:
labd's scheduler goes round at least once a second when idle and labd pings
only while the loop went round within half the interval, so the interval must
stay well above two seconds (the unit uses 30 s).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.daemon.conftest import Daemon, NotifySocket, write_config
from tests.support.simaccess import sim_access

WATCHDOG = 3.0
"""Seconds of ``WATCHDOG_USEC`` given to labd."""


def _daemon(
    tmp_path: Path,
    sqlite_path: Path,
    kubeconfig: Path,
    notify: NotifySocket,
    daemons: list[Daemon],
) -> Daemon:
    config = write_config(
        tmp_path / "labd.yaml",
        database_url=f"sqlite+aiosqlite:///{sqlite_path}",
        kubeconfig=kubeconfig,
    )
    daemon = Daemon(
        config,
        tmp_path / "labd.log",
        env={"NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": str(int(WATCHDOG * 1e6))},
    )
    daemons.append(daemon)
    return daemon


async def test_ready_only_once_serving_then_watchdog_then_stopping(
    tmp_path: Path,
    sqlite_path: Path,
    sim_process: Callable[..., Path],
    notify_socket: NotifySocket,
    daemons: list[Daemon],
) -> None:
    # Slow LISTs keep the first reconcile running a while: labd must say
    # READY=1 once it serves, without waiting for it.
    kubeconfig = sim_process("--latency", "list:*:1.5")
    daemon = _daemon(tmp_path, sqlite_path, kubeconfig, notify_socket, daemons)
    polls: list[tuple[float, float, int | None]] = []  # (start, end, /readyz status)
    async with notify_socket, httpx.AsyncClient() as client:
        await daemon.spawn()
        deadline = time.monotonic() + 60
        while True:
            said_ready = notify_socket.with_key("READY")
            if said_ready and polls and polls[-1][0] > said_ready[0].at:
                break  # One poll started after READY=1 arrived.
            assert time.monotonic() < deadline, daemon.tail()
            assert daemon.returncode is None, daemon.tail()
            started = time.monotonic()
            status = await daemon.readyz(client)
            polls.append((started, time.monotonic(), status))
            await asyncio.sleep(0.05)
        ready = said_ready[0]

        # /readyz may turn 200 a moment before the datagram arrives (labd
        # serves, then notifies), but never may a poll fail after it.
        failed = [end for _, end, status in polls if status != 200]
        assert failed, "no failing /readyz poll before READY=1: the check proves nothing"
        assert max(failed) < ready.at, "READY=1 came while /readyz did not answer 200"
        assert [s for start, _, s in polls if start > ready.at] == [200]
        assert (await client.get(f"{daemon.url}/healthz")).status_code == 200
        assert ready.fields["STATUS"] == f"Serving on {daemon.url}"
        events = daemon.log_events()
        assert "leader duties running" not in events[: events.index("labd ready")], events

        # While healthy, pings come at least once per interval.
        deadline = time.monotonic() + 10 * WATCHDOG
        while len(pings := notify_socket.with_key("WATCHDOG")) < 4:
            assert time.monotonic() < deadline, f"too few pings: {notify_socket.received}"
            await asyncio.sleep(0.1)
        assert pings[0].at - ready.at < WATCHDOG
        gaps = [later.at - earlier.at for earlier, later in itertools.pairwise(pings)]
        assert max(gaps) < WATCHDOG, gaps

        assert await daemon.terminate() == 0, daemon.tail()
        stopping = await notify_socket.wait_for("STOPPING", within=10)
        assert stopping.fields["STATUS"] == "Shutting down"
        assert not [d for d in notify_socket.with_key("READY") if d.at > stopping.at]


async def test_abstract_socket(
    tmp_path: Path,
    sqlite_path: Path,
    sim_process: Callable[..., Path],
    daemons: list[Daemon],
) -> None:
    notify = NotifySocket(f"@labd-test-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    daemon = _daemon(tmp_path, sqlite_path, sim_process(), notify, daemons)
    async with notify:
        await daemon.spawn()
        ready = await notify.wait_for("READY", within=60)
        async with httpx.AsyncClient() as client:
            assert await daemon.readyz(client) == 200
        ping = await notify.wait_for("WATCHDOG", within=3 * WATCHDOG)
        assert ping.at > ready.at

        assert await daemon.terminate() == 0, daemon.tail()
        await notify.wait_for("STOPPING", within=10)


async def test_wedged_scheduler_loop_starves_the_watchdog(
    tmp_path: Path,
    sqlite_path: Path,
    sim_process: Callable[..., Path],
    notify_socket: NotifySocket,
    daemons: list[Daemon],
) -> None:
    daemon = _daemon(tmp_path, sqlite_path, sim_process(), notify_socket, daemons)
    async with notify_socket:
        await daemon.start()
        await notify_socket.wait_for("WATCHDOG", within=3 * WATCHDOG)

        # Hold SQLite's write lock: the loop's next claim (a write
        # transaction) waits for it, so the loop stops going round, while the
        # event loop itself, the HTTP server and the watchdog task stay free.
        lock = sqlite3.connect(sqlite_path, isolation_level=None, timeout=30)
        try:
            lock.execute("BEGIN EXCLUSIVE")
            locked_at = time.monotonic()
            silent_since = await _wait_for_silence(notify_socket, since=locked_at)
            assert "scheduler loop is stuck; not feeding the watchdog" in daemon.log_events()
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{daemon.url}/healthz")).status_code == 200
        finally:
            lock.execute("ROLLBACK")
            lock.close()
        released_at = time.monotonic()
        assert released_at - silent_since > 1.5 * WATCHDOG
        pings = notify_socket.with_key("WATCHDOG")
        assert not [p for p in pings if silent_since < p.at < released_at], "pinged while wedged"

        deadline = time.monotonic() + 3 * WATCHDOG
        while not [d for d in notify_socket.with_key("WATCHDOG") if d.at > released_at]:
            assert time.monotonic() < deadline, "pings did not resume after the lock went"
            await asyncio.sleep(0.1)

        assert await daemon.terminate() == 0, daemon.tail()
        await notify_socket.wait_for("STOPPING", within=10)


async def _wait_for_silence(notify: NotifySocket, *, since: float) -> float:
    """Wait until no ping came for 1.5 watchdog intervals; return when silence began."""
    deadline = time.monotonic() + 10 * WATCHDOG
    while True:
        pings = notify.with_key("WATCHDOG")
        last = max([since, *(ping.at for ping in pings)])
        if time.monotonic() - last > 1.5 * WATCHDOG:
            return last
        assert time.monotonic() < deadline, "pings kept coming while the loop was wedged"
        await asyncio.sleep(0.1)


async def test_sigterm_during_the_first_reconcile(
    tmp_path: Path,
    sqlite_path: Path,
    sim_process: Callable[..., Path],
    notify_socket: NotifySocket,
    daemons: list[Daemon],
) -> None:
    # Each LIST takes 20 s: the first reconcile is far from done at SIGTERM,
    # though labd already serves (READY=1 at the bind).
    kubeconfig = sim_process("--latency", "list:*:20")
    daemon = _daemon(tmp_path, sqlite_path, kubeconfig, notify_socket, daemons)
    async with notify_socket:
        await daemon.spawn()
        await _wait_for_first_list(kubeconfig, daemon)
        await notify_socket.wait_for("READY", within=30)

        started = time.monotonic()
        assert await daemon.terminate() == 0, daemon.tail()
        elapsed = time.monotonic() - started

        assert elapsed < 10, f"labd waited {elapsed:.1f} s for its reconcile to finish"
        await notify_socket.wait_for("STOPPING", within=10)
        assert "leader duties running" not in daemon.log_events()


async def _wait_for_first_list(kubeconfig: Path, daemon: Daemon) -> None:
    """Wait until labd's first LIST reached the simulated cluster."""
    deadline = time.monotonic() + 60
    async with sim_access(kubeconfig).async_client() as client:
        while True:
            stats = (await client.get("/sim/v1/stats")).json()
            if any(key.startswith("list ") for key in stats["requests"]):
                return
            assert daemon.returncode is None, daemon.tail()
            assert time.monotonic() < deadline, f"labd sent no LIST: {stats}"
            await asyncio.sleep(0.05)
