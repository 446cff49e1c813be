"""Several ``labd serve`` replicas on one database, behind HAProxy.

`Fleet` starts N replicas (each a `Daemon` with its own port, settings file
and log) and a `Balancer` in front of them, and reads each replica's
``/metrics`` to say which one leads (the ``labd_leader`` gauge; a labd
without leadership has no such gauge and no replica is said to lead).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.support.balancer import Backend, Balancer
from tests.support.processes import Daemon, free_port

__all__ = ["Fleet", "Replica", "leader_gauge"]

LEADER_METRIC = "labd_leader"


def leader_gauge(metrics: str) -> float | None:
    """The value of the ``labd_leader`` gauge in a Prometheus text page, if any."""
    for line in metrics.splitlines():
        name, _, value = line.partition(" ")
        if name == LEADER_METRIC:
            return float(value)
    return None


@dataclass
class Replica:
    """One ``labd serve`` of the fleet."""

    name: str
    """Its server name in HAProxy (``r0``, ``r1``...)."""

    port: int
    """Its port on 127.0.0.1."""

    daemon: Daemon
    """The process."""

    log: Path
    """Its output, across restarts."""

    @property
    def url(self) -> str:
        """Its own base URL (not through the balancer)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def alive(self) -> bool:
        """Whether its process runs."""
        process = self.daemon.process
        return process is not None and process.returncode is None


class Fleet:
    """``replicas`` labd replicas behind HAProxy.

    Parameters
    ----------
    settings
        labd's settings for a replica listening on the given port (all on
        one database).
    directory
        Where settings files, logs and HAProxy's files go.
    replicas
        How many replicas.
    """

    def __init__(
        self, settings: Callable[[int], dict[str, Any]], directory: Path, *, replicas: int = 3
    ) -> None:
        self.replicas: list[Replica] = []
        for index in range(replicas):
            name, port = f"r{index}", free_port()
            config_file = directory / f"labd-{name}.yaml"
            config_file.write_text(yaml.safe_dump(settings(port)))
            log = directory / f"labd-{name}.log"
            daemon = Daemon(config_file, f"http://127.0.0.1:{port}/readyz", log, ready_timeout=60)
            self.replicas.append(Replica(name, port, daemon, log))
        self.balancer = Balancer([Backend(r.name, r.port) for r in self.replicas], directory)

    @property
    def url(self) -> str:
        """The balancer's URL: what JupyterHub's ``labd_url`` points at."""
        return self.balancer.url

    def replica(self, name: str) -> Replica:
        """The replica called ``name``."""
        return next(r for r in self.replicas if r.name == name)

    async def start(self) -> None:
        """Start every replica (one after another), then HAProxy; wait until it uses all."""
        for replica in self.replicas:
            await replica.daemon.start()
        self.balancer.start()
        for replica in self.replicas:
            await self.balancer.wait_up(replica.name)

    async def stop(self) -> dict[str, int]:
        """Stop the replicas that run (SIGTERM) and HAProxy; return their exit statuses."""
        statuses = {}
        for replica in self.replicas:
            if replica.alive:
                statuses[replica.name] = await replica.daemon.terminate()
        self.balancer.stop()
        return statuses

    async def leaders(self, http: aiohttp.ClientSession) -> list[str] | None:
        """The live replicas whose ``labd_leader`` gauge is 1; `None` without the gauge."""
        answers = await asyncio.gather(
            *(self._leader_gauge(http, r) for r in self.replicas if r.alive)
        )
        gauges = [(name, value) for name, value in answers if value is not None]
        if not gauges:
            return None
        return [name for name, value in gauges if value == 1]

    async def _leader_gauge(
        self, http: aiohttp.ClientSession, replica: Replica
    ) -> tuple[str, float | None]:
        try:
            async with http.get(
                f"{replica.url}/metrics", timeout=aiohttp.ClientTimeout(total=5)
            ) as response:
                text = await response.text() if response.status == 200 else ""
        except (aiohttp.ClientError, TimeoutError):
            text = ""
        return replica.name, leader_gauge(text)
