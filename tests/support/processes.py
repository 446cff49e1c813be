"""labd and the simulated cluster as separate processes.

The crash test, the chaos suite and the benchmarks run ``labd serve`` as a
real daemon (so it can be killed with SIGKILL, and measured apart from its
clients) next to a simulated cluster that outlives it.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Final

import httpx

__all__ = ["Daemon", "SimProcess", "ephemeral_ports", "free_port", "vm_status"]


_LOWEST_PORT: Final = 10_000
_handed_out: set[int] = set()


def ephemeral_ports() -> range:
    """The ports the kernel picks from for ``bind(0)`` and for outgoing connections."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    except (OSError, ValueError):
        low, high = "32768", "60999"  # Linux's default
    return range(int(low), int(high) + 1)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing holds now and no connection will take.

    The port comes from outside the kernel's ephemeral range. A port that
    ``bind(0)`` hands out comes from the range the kernel also draws the
    source ports of outgoing connections from, so between this function's
    check and the server's own bind any client connection could take it: in
    CI, etcd once lost its port that way. Outside the range a port is taken
    only by an explicit bind. No port is handed out twice in one process.
    """
    ephemeral = ephemeral_ports()
    outside: list[int] = [
        port
        for port in (*range(_LOWEST_PORT, ephemeral.start), *range(ephemeral.stop, 65_536))
        if port >= _LOWEST_PORT and port not in _handed_out
    ]
    for port in random.sample(outside, k=min(len(outside), 1_000)):
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free TCP port on 127.0.0.1 outside the ephemeral range {ephemeral}")


class SimProcess:
    """``python -m labd.sim`` in a subprocess, with a known bearer token, over plain HTTP.

    Parameters
    ----------
    kubeconfig
        Where the sim writes its kubeconfig.
    token
        Bearer token of its API and control API.
    args
        Further ``labd sim`` options (``--pod-start-delay 0``...).
    """

    def __init__(self, kubeconfig: Path, *, token: str = "sim-token", args: list[str]) -> None:
        self.kubeconfig = kubeconfig
        self.token = token
        self.port = free_port()
        self._args = [
            sys.executable,
            "-m",
            "labd.sim",
            "--port",
            str(self.port),
            "--kubeconfig",
            str(kubeconfig),
            "--token",
            token,
            "--no-tls",  # Its control API is reached over raw HTTP (`url`).
            *args,
        ]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The API server's URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the sim and wait until it has written its kubeconfig."""
        self.kubeconfig.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            self._args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 20
        while not self.kubeconfig.exists():
            if self.process.poll() is not None:
                raise RuntimeError("the simulated cluster died")
            if time.monotonic() > deadline:
                raise RuntimeError("the simulated cluster did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop the sim (SIGTERM, then wait)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


class Daemon:
    """``labd serve`` in a subprocess.

    Parameters
    ----------
    config_file
        labd's settings file.
    ready_url
        Its ``/readyz`` URL.
    log
        File that collects its output (appended to across restarts).
    ready_timeout
        Seconds `start` waits for ``/readyz`` to answer 200.
    """

    def __init__(
        self, config_file: Path, ready_url: str, log: Path, *, ready_timeout: float = 30
    ) -> None:
        self._args = [sys.executable, "-m", "labd", "serve", "--config", str(config_file)]
        self._url = ready_url
        self._log = log
        self._ready_timeout = ready_timeout
        self.process: asyncio.subprocess.Process | None = None

    @property
    def pid(self) -> int:
        """The daemon's process id."""
        assert self.process is not None
        return self.process.pid

    async def start(self, *, poll: float = 0.05) -> float:
        """Start labd and return the seconds from process start to ``/readyz`` 200."""
        began = time.monotonic()
        with self._log.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                *self._args, stdout=log, stderr=log, env=os.environ
            )
        async with httpx.AsyncClient() as client:
            deadline = began + self._ready_timeout
            while time.monotonic() < deadline:
                if self.process.returncode is not None:
                    raise AssertionError(self.log_tail())
                try:
                    if (await client.get(self._url)).status_code == 200:
                        return time.monotonic() - began
                except httpx.TransportError:
                    pass
                await asyncio.sleep(poll)
        raise AssertionError("labd did not become ready:\n" + self.log_tail())

    def log_tail(self, size: int = 3000) -> str:
        """The end of the daemon's output."""
        return self._log.read_text()[-size:]

    async def kill(self) -> None:
        """Kill labd with SIGKILL and reap it."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        await self.process.wait()

    async def terminate(self) -> int:
        """Stop labd with SIGTERM; return its exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return await asyncio.wait_for(self.process.wait(), 30)


def vm_status(pid: int) -> dict[str, int]:
    """Return the ``Vm*`` lines of ``/proc/<pid>/status`` in kB (VmHWM: peak RSS)."""
    result: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key.startswith("Vm") and value.strip().endswith("kB"):
            result[key] = int(value.split()[0])
    return result
