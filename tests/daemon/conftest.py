"""Fixtures for ``labd serve`` as systemd runs it: a subprocess and a notify socket.

The simulated cluster runs in a process of its own (``python -m labd.sim``),
labd as ``python -m labd serve`` in another, and the test plays systemd: it
binds the Unix datagram socket named by ``NOTIFY_SOCKET`` and reads what
labd sends there, with the time each datagram arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.support.processes import free_port

IMAGE = "registry.example/sciplat/lab:w_2026_47"

SHUTDOWN_BOUND = 25.0
"""Seconds labd may take to exit after SIGTERM: 5 s of HTTP graceful shutdown,
up to 10 s for the scheduler loop's last pass and 10 s for in-flight steps.
``systemd/labd.service`` must give it more (``TimeoutStopSec``)."""


@dataclass(frozen=True)
class Datagram:
    """One notification labd sent."""

    at: float
    """`time.monotonic` when the test received it."""

    fields: dict[str, str]
    """``KEY=VALUE`` lines of the datagram."""


class NotifySocket:
    """The receiving end of the sd_notify protocol, as systemd binds it.

    Parameters
    ----------
    address
        A filesystem path, or ``@name`` for an abstract socket.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        """What goes into ``NOTIFY_SOCKET``."""

        self.received: list[Datagram] = []
        """Every datagram so far, in arrival order."""

        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self._sock.setblocking(False)
        self._arrived = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> NotifySocket:
        self._reader = asyncio.get_running_loop().create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._reader is not None
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self._sock.close()

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            data = await loop.sock_recv(self._sock, 4096)
            lines = data.decode().splitlines()
            fields = dict(line.split("=", 1) for line in lines if "=" in line)
            self.received.append(Datagram(time.monotonic(), fields))
            self._arrived.set()

    def with_key(self, key: str, value: str = "1") -> list[Datagram]:
        """Datagrams carrying ``KEY=value``."""
        return [d for d in self.received if d.fields.get(key) == value]

    async def wait_for(self, key: str, value: str = "1", *, within: float) -> Datagram:
        """Wait until a datagram carries ``KEY=value`` and return the first one."""
        deadline = time.monotonic() + within
        while not (found := self.with_key(key, value)):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key}={value} within {within} s: {self.received}")
            self._arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrived.wait(), left)
        return found[0]


@pytest.fixture
def sqlite_path(tmp_path: Path, migrated_sqlite_template: Path) -> Path:
    """A migrated SQLite database file for the daemon."""
    path = tmp_path / "labd.db"
    shutil.copyfile(migrated_sqlite_template, path)
    return path


@pytest.fixture
def notify_socket(tmp_path: Path) -> NotifySocket:
    """A notify socket on a filesystem path."""
    return NotifySocket(str(tmp_path / "notify"))


@pytest.fixture
def sim_process(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Start the simulated cluster as a process; returns its kubeconfig path.

    Extra arguments (e.g. ``--latency create:pods:1``) go to ``labd.sim``.
    """
    processes: list[subprocess.Popen[bytes]] = []

    def start(*extra: str) -> Path:
        kubeconfig = tmp_path / f"kubeconfig-{len(processes)}"
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
                "0.2",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        processes.append(process)
        deadline = time.monotonic() + 30
        while not kubeconfig.exists():
            assert process.poll() is None, "the simulated cluster died"
            assert time.monotonic() < deadline, "the simulated cluster did not start"
            time.sleep(0.05)
        return kubeconfig

    yield start
    for process in processes:
        process.terminate()
        process.wait(10)


def write_config(path: Path, *, database_url: str, kubeconfig: Path, **extra: Any) -> Path:
    """Write a settings file for ``labd serve`` on the simulated cluster."""
    settings: dict[str, Any] = {
        "database_url": database_url,
        "bind_address": f"127.0.0.1:{free_port()}",
        "kubernetes": {"kubeconfig": str(kubeconfig), "request_timeout": 10},
        "images": {"available": [{"reference": IMAGE}], "recommended": "w_2026_47"},
        "timeouts": {"spawn": 120, "delete": 60},
        "retry": {"initial": 0.1, "maximum": 1.0},
        "reconcile_interval": 3600,
        "lab": {"pod_delete_grace": 0},
        "log_format": "json",
        **extra,
    }
    path.write_text(yaml.safe_dump(settings))
    return path


class Daemon:
    """``labd serve`` in a subprocess, with systemd's environment.

    Parameters
    ----------
    config_file
        Its settings file.
    log
        Where its stdout and stderr go (appended, across restarts).
    env
        Variables added to this process's environment (``NOTIFY_SOCKET``,
        ``WATCHDOG_USEC``).
    launcher
        How to start Python; ``-m labd serve ...`` is appended.
    """

    def __init__(
        self,
        config_file: Path,
        log: Path,
        env: dict[str, str] | None = None,
        launcher: Sequence[str] = (sys.executable,),
    ) -> None:
        settings = yaml.safe_load(config_file.read_text())
        self.url = f"http://{settings['bind_address']}"
        """Base URL of its API."""

        self.log = log
        self._args = [*launcher, "-m", "labd", "serve", "--config", str(config_file)]
        self._env = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("LABD_", "NOTIFY_SOCKET", "WATCHDOG_"))
        }
        self._env.update(env or {})
        self.process: asyncio.subprocess.Process | None = None

    async def spawn(self) -> None:
        """Start the process without waiting for it."""
        with self.log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self._args, stdout=log, stderr=log, env=self._env
            )

    async def start(self) -> None:
        """Start the process and wait until ``/readyz`` answers 200."""
        await self.spawn()
        deadline = time.monotonic() + 60
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                assert self.returncode is None, self.tail()
                if await self.readyz(client) == 200:
                    return
                await asyncio.sleep(0.05)
        raise AssertionError("labd did not become ready:\n" + self.tail())

    async def readyz(self, client: httpx.AsyncClient) -> int | None:
        """Status of ``/readyz``, or `None` while nothing listens."""
        try:
            return (await client.get(f"{self.url}/readyz", timeout=10)).status_code
        except httpx.TransportError:
            return None

    @property
    def returncode(self) -> int | None:
        """Exit status, once the process ended."""
        return None if self.process is None else self.process.returncode

    async def terminate(self, *, within: float = 60) -> int:
        """Send SIGTERM and wait for the exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), within)

    async def kill(self) -> None:
        """SIGKILL, if still running (clean-up after a failed test)."""
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    def tail(self, chars: int = 4000) -> str:
        """The end of its log, for assertion messages."""
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""

    def log_events(self) -> Sequence[str]:
        """The ``event`` field of each JSON log line so far."""
        events = []
        for line in self.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                events.append(str(json.loads(line).get("event")))
        return events


@pytest.fixture
async def daemons() -> AsyncIterator[list[Daemon]]:
    """Daemons registered here are killed at the end if a test left them running."""
    started: list[Daemon] = []
    yield started
    for daemon in started:
        await daemon.kill()
