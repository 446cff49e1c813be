"""Measure leader failover: SIGKILL the leading replica, time until another leads.

Three ``labd serve`` replicas (``--replicas``) run on one throw-away
PostgreSQL database and one simulated cluster (a process of its own), with
``--labs`` labs running.  Then, ``--kills`` times: the replica that leads
(the one whose ``/readyz`` says ``"leader": true``) is killed with SIGKILL;
the failover is the time from the kill to the ``leader_since`` that another
replica's ``/readyz`` reports, the moment its first reconcile was done and
its watches started (both are wall-clock times on this machine, so the
polling interval does not count).  The killed replica is started again
before the next kill, so each kill leaves the same number of candidates.

Prints each failover, then p50, p99 and max.  The issue's bound is 5 s.

    .venv/bin/python -m tests.bench.failover [--kills 20] [--labs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import yaml

from labd.api import hash_token
from tests.support.databases import scratch_database
from tests.support.processes import Daemon, SimProcess, free_port

TOKEN = "bench-token"
IMAGE = "registry.example/sciplat/lab:w_2026_47"


def settings(database_url: str, kubeconfig: Path, port: int, tokens: Path) -> dict[str, Any]:
    """One replica's settings."""
    return {
        "database_url": database_url,
        "bind_address": f"127.0.0.1:{port}",
        "token_file": str(tokens),
        "kubernetes": {"kubeconfig": str(kubeconfig), "request_timeout": 10},
        "images": {"available": [{"reference": IMAGE}], "recommended": "w_2026_47"},
        "reconcile_interval": 3600,
        "lab": {"pod_delete_grace": 0},
        "log_format": "json",
        "log_level": "info",
    }


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile ``q`` (0 to 1) of ``values``."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


class Replica:
    """One ``labd serve`` of the benchmark."""

    def __init__(self, name: str, directory: Path, data: dict[str, Any]) -> None:
        self.name = name
        self.url = f"http://{data['bind_address']}"
        config = directory / f"labd-{name}.yaml"
        config.write_text(yaml.safe_dump(data))
        self.daemon = Daemon(config, f"{self.url}/readyz", directory / f"labd-{name}.log")

    async def readyz(self, client: httpx.AsyncClient) -> dict[str, Any] | None:
        """Its readiness body, or `None` while it does not answer 200."""
        try:
            reply = await client.get(f"{self.url}/readyz", timeout=2)
        except httpx.TransportError:
            return None
        if reply.status_code != 200:
            return None
        body: dict[str, Any] = reply.json()
        return body


async def leader(client: httpx.AsyncClient, replicas: list[Replica]) -> Replica:
    """The replica on duty as leader; waits for one."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for replica in replicas:
            body = await replica.readyz(client)
            if body is not None and body.get("leader_since") is not None:
                return replica
        await asyncio.sleep(0.01)
    raise RuntimeError("no replica leads")


async def spawn(client: httpx.AsyncClient, replicas: list[Replica], labs: int) -> None:
    """Start ``labs`` labs, spread over the replicas, and wait until they run."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    for index in range(labs):
        replica = replicas[index % len(replicas)]
        body = {
            "options": {"image_class": "recommended", "size": "small"},
            "env": {"JUPYTERHUB_SERVICE_PREFIX": f"/user/u{index}/"},
        }
        reply = await client.post(
            f"{replica.url}/spawner/v1/labs/u{index}/create", json=body, headers=headers
        )
        reply.raise_for_status()
    deadline = time.monotonic() + 120
    for index in range(labs):
        status_url = f"{replicas[0].url}/spawner/v1/labs/u{index}"
        while True:
            reply = await client.get(status_url, headers=headers)
            if reply.status_code == 200 and reply.json()["status"] == "running":
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"u{index} did not run")
            await asyncio.sleep(0.05)


async def failover(client: httpx.AsyncClient, replicas: list[Replica], old: Replica) -> float:
    """Kill ``old`` (the leader); return the seconds until another's watches ran."""
    assert old.daemon.process is not None
    old.daemon.process.kill()
    killed_at = time.time()
    await old.daemon.process.wait()
    others = [replica for replica in replicas if replica is not old]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        for replica in others:
            body = await replica.readyz(client)
            since = body.get("leader_since") if body is not None else None
            if since is not None and since > killed_at - 1:
                return float(since) - killed_at
        await asyncio.sleep(0.01)
    raise RuntimeError("no replica took over within 30 s")


async def measure(*, replicas: int, kills: int, labs: int) -> list[float]:
    """Run the benchmark; return the failover of each kill."""
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        tokens = tmp / "tokens"
        tokens.write_text(f"{hash_token(TOKEN)} hub\n")
        sim = SimProcess(tmp / "kubeconfig", args=["--pod-start-delay", "0.2"])
        sim.start()
        try:
            async with scratch_database("postgresql", tmp, "labd_failover") as url:
                fleet = [
                    Replica(f"r{index}", tmp, settings(url, sim.kubeconfig, free_port(), tokens))
                    for index in range(replicas)
                ]
                for replica in fleet:
                    await replica.daemon.start()
                try:
                    async with httpx.AsyncClient(timeout=10) as client:
                        await spawn(client, fleet, labs)
                        seconds = []
                        for kill in range(kills):
                            old = await leader(client, fleet)
                            taken = await failover(client, fleet, old)
                            seconds.append(taken)
                            print(f"kill {kill + 1:2d}: {old.name} killed, {taken:.3f} s")
                            await old.daemon.start()
                finally:
                    for replica in fleet:
                        process = replica.daemon.process
                        if process is not None and process.returncode is None:
                            await replica.daemon.terminate()
        finally:
            sim.stop()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=3)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--labs", type=int, default=20)
    args = parser.parse_args()
    seconds = asyncio.run(measure(replicas=args.replicas, kills=args.kills, labs=args.labs))
    print(
        f"failover over {len(seconds)} SIGKILLs of the leader ({args.replicas} replicas,"
        f" {args.labs} labs, PostgreSQL): p50 {percentile(seconds, 0.5):.3f} s,"
        f" p99 {percentile(seconds, 0.99):.3f} s, max {max(seconds):.3f} s"
    )


if __name__ == "__main__":
    main()
