"""Benchmark labd at scale: spawns, deletes, 10,000 labs, status reads, restarts.

Everything runs against the simulated cluster with zero pod start delay, on
one database backend per run (SQLite in a temporary directory, or a
throw-away PostgreSQL database on the local server).  The simulated cluster
runs in a process of its own, as an API server would (`remote_sim.py`);
labd runs in this process for the phases that count its SQL statements, and
as ``labd serve`` (a real uvicorn, in a subprocess) for the phases a client
sees.  The load generator (wrk, or `loadgen.py`) is another subprocess.

Phases, in order:

1. **spawn ceiling**: the cluster alone.  ``--spawns`` labs' objects (the
   manifests labd builds) are created at once through labd's Kubernetes
   layer (`LabKube`, no database, no scheduler) until every pod is
   Running; then each lab's pod and namespace are deleted until the
   namespaces are gone (the delete ceiling).  It runs again after phase 2
   with labd stopped; the ceiling is the mean of the two runs, so that a
   slow spell of a shared host falls on both sides of the share.
2. **spawn and delete** through labd (in-process `Labd`, built by
   `labd.daemon.factory` as ``labd serve`` builds it): ``--spawns`` creates through
   the lab service at once, until all are running (polled every 50 ms from
   a separate connection); then all deleted at once.  Kubernetes calls come
   from the sim's statistics, SQL statements from a
   ``before_cursor_execute`` hook on labd's engines (scheduler polling
   included).  labd is stopped after.
3. **fill** (a new in-process `Labd` on the same database) to ``--labs``
   running labs, fast and not through labd's spawn steps: each row is
   written by ``LabStore.create_lab`` (trigger ``adopt``, pod phase
   Running: one transaction with its audit row), with the spec of a lab
   labd spawned, and its objects (the manifests labd builds) go
   straight into the sim's registry; the sim's kubelet runs the pods.
4. **reconcile** of all labs, in-process: seconds and Kubernetes calls.
5. **restart to ready**: ``labd serve`` started on that database; seconds
   from process start to ``/readyz`` 200 (polled every 10 ms), and to its
   first ``leader_since`` (the first reconcile done and the watches
   started, which labd no longer waits for to say ready).
6. **after ready**: one status read every 50 ms until ten in a row take
   under 20 ms: how long the start-up work after readiness (the first
   reconcile, the watches' start) slows reads down.
7. **status reads**: ``GET /spawner/v1/labs/{user}`` over random users with
   a hub token, at 1, 16 and 128 concurrent clients, against labd and
   against the read ceiling: a bare Starlette route on the fastest stack
   (uvicorn with uvloop and httptools) answering the same JSON from
   memory, up beside labd.  At each level the two alternate for
   ``--read-rounds`` rounds of ``--seconds`` each, so that a slow spell of
   a shared host falls on both; each figure is the median of its rounds,
   with each server's CPU time per read (``/proc/<pid>/stat``).
   ``--no-read-ceiling`` reads labd alone (`curves.py` does).
8. **pod to status**: ``--latency-labs`` labs created one after another
   through the API; for each, the time from the sim storing its pod as
   Running (seen by a watch on the sim's registry, in the sim's process) to the status
   route first answering ``running`` (polled every 2 ms).
9. **memory**: the daemon's peak RSS (VmHWM) so far.
10. **load generator ceiling**: a canned-response asyncio server, at 16
   and 128 clients (skipped with ``--no-read-ceiling``).

Run::

    .venv/bin/python tests/bench/bench_scale.py --backend sqlite [--labs 10000]

It prints a table and writes ``bench-results/scale-<backend>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from sqlalchemy import event, func, select
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from labd.api import hash_token
from labd.config import Config
from labd.daemon.collector import tune_collector
from labd.daemon.factory import Labd
from labd.daemon.logs import configure_logging
from labd.db.database import Database
from labd.db.schema import lab_transitions
from labd.db.schema import labs as labs_table
from labd.kube.builder import LabBuild, build_lab_objects, internal_url
from labd.kube.builder import lab_build as scheduler_lab_build
from labd.kube.client import create_api_client
from labd.kube.storage import LabKube
from labd.lab.machine import LabState, Trigger
from labd.lab.naming import lab_namespace
from labd.lab.protocol import LabSpecification
from labd.lab.records import Actor, LabRecord, utcnow
from labd.lab.spec import LabSpec
from tests.bench.remote_sim import RemoteSim, until
from tests.support.databases import scratch_database
from tests.support.processes import Daemon, free_port, vm_status

HERE = Path(__file__).resolve().parent
IMAGE = "registry.example/sciplat/lab:w_2026_47"
TOKEN = "bench-hub-token"
SPEC = LabSpecification.model_validate(
    {
        "options": {"image_class": "recommended", "size": "small"},
        "env": {"JUPYTERHUB_SERVICE_PREFIX": "/user/x/", "JUPYTERHUB_API_TOKEN": "t"},
    }
)
BODY = {
    "options": {"image_class": ["recommended"], "size": ["small"]},
    "env": {"JUPYTERHUB_SERVICE_PREFIX": "/user/x/", "JUPYTERHUB_API_TOKEN": "t"},
}


def percentile(values: list[float], fraction: float) -> float:
    """Return the ``fraction`` quantile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


# Databases -------------------------------------------------------------------


def settings(url: str, kubeconfig: Path, port: int, token_file: Path) -> dict[str, Any]:
    """labd's settings for every phase (in-process and ``labd serve``)."""
    return {
        "database_url": url,
        "bind_address": f"127.0.0.1:{port}",
        "token_file": str(token_file),
        "kubernetes": {"kubeconfig": str(kubeconfig), "request_timeout": 30},
        "images": {"available": [{"reference": IMAGE}], "recommended": "w_2026_47"},
        "reconcile_interval": 3600,
        "lab": {"pod_delete_grace": 0},
        "log_level": "warning",
        "log_format": "json",
    }


# Phase 1: the cluster alone ---------------------------------------------------


def fake_build(config: Config, index: int) -> LabBuild:
    """A lab's build inputs as labd's scheduler derives them for a small lab."""
    username = f"ceiling{index}"
    slug, namespace = lab_namespace(config.namespace_prefix, username)
    return LabBuild(
        lab_id=str(uuid.uuid4()),
        username=username,
        slug=slug,
        namespace=namespace,
        spec=LabSpec.from_row(
            {
                "options": {"image": IMAGE, "size": "small"},
                "resources": {
                    "limits": {"cpu": 1.0, "memory": 3 * 2**30},
                    "requests": {"cpu": 0.25, "memory": 768 * 2**20},
                },
                "user": {"uid": 1000, "gid": 1000, "groups": []},
                "env": dict(SPEC.env),
            }
        ),
        secret_env={"JUPYTERHUB_API_TOKEN": "t"},
    )


async def ceiling(sim: RemoteSim, config: Config, n: int) -> dict[str, Any]:
    """Create and delete ``n`` labs' objects with no labd in between."""
    builds = [build_lab_objects(fake_build(config, i), config) for i in range(n)]
    namespaces = {objects.namespace["metadata"]["name"] for objects in builds}
    api_client = await create_api_client(config.kubernetes)
    kube = LabKube(api_client, config)
    try:
        await sim.reset_stats()
        began = time.monotonic()
        await asyncio.gather(*(kube.create_lab_objects(objects) for objects in builds))
        await until(lambda: _equals(sim.running_pods(namespaces), n))
        spawn_seconds = time.monotonic() - began
        spawn_calls = await sim.total_requests()

        await sim.reset_stats()
        began = time.monotonic()

        async def delete(objects: Any) -> None:
            namespace = objects.namespace["metadata"]["name"]
            await kube.delete_pod(namespace, objects.pod["metadata"]["name"], grace_seconds=0)
            await kube.delete_namespace(namespace)

        await asyncio.gather(*(delete(objects) for objects in builds))
        await until(lambda: _equals(sim.live_namespaces(namespaces), 0))
        delete_seconds = time.monotonic() - began
        delete_calls = await sim.total_requests()
    finally:
        await api_client.close()
    return {
        "labs": n,
        "spawn_seconds": round(spawn_seconds, 2),
        "spawns_per_second": round(n / spawn_seconds, 1),
        "spawn_calls_per_lab": round(spawn_calls / n, 2),
        "delete_seconds": round(delete_seconds, 2),
        "deletes_per_second": round(n / delete_seconds, 1),
        "delete_calls_per_lab": round(delete_calls / n, 2),
    }


async def _equals(count: Awaitable[int], expected: int) -> bool:
    found: int = await count
    return found == expected


# Phase 2 and 3: labd in-process -------------------------------------------------


class StatementCounter:
    """Counts SQL statements on an engine."""

    def __init__(self, database: Database) -> None:
        self.count = 0
        for engine in database.sync_engines:
            event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *_: Any) -> None:
        self.count += 1


async def running_since(observer: Database, began: datetime) -> int:
    """How many labs created since ``began`` are running: one row, however many labs.

    The poll shares labd's process and event loop (labd is built in this
    process), so it must cost little: reading every lab's state every 50 ms
    took 7 % of the process's samples in a burst of 1,000 spawns.
    """
    statement = (
        select(func.count())
        .select_from(labs_table)
        .where(labs_table.c.created_at >= began, labs_table.c.state == LabState.RUNNING.value)
    )
    async with observer.read() as conn:
        return int((await conn.execute(statement)).scalar_one())


async def seconds_to_running(observer: Database, began: datetime) -> list[float]:
    """Seconds from ``began`` to each lab's ``running`` audit row, for labs created since."""
    reached = func.min(lab_transitions.c.created_at)
    statement = (
        select(reached)
        .select_from(lab_transitions.join(labs_table, labs_table.c.id == lab_transitions.c.lab_id))
        .where(
            labs_table.c.created_at >= began,
            lab_transitions.c.to_state == LabState.RUNNING.value,
        )
        .group_by(lab_transitions.c.lab_id)
    )
    async with observer.read() as conn:
        times = (await conn.execute(statement)).scalars().all()
    return [(when - began).total_seconds() for when in times]


async def spawn_batch(
    labd: Labd, sim: RemoteSim, observer: Database, sql: StatementCounter, names: list[str]
) -> dict[str, Any]:
    """Create ``names`` at once; wait until all are running."""
    await sim.reset_stats()
    statements = sql.count
    began_at = utcnow()
    began = time.monotonic()
    creates = asyncio.gather(*(labd.service.create(n, SPEC, actor=Actor.HUB) for n in names))
    create_task = asyncio.ensure_future(creates)
    while await running_since(observer, began_at) < len(names):
        await asyncio.sleep(0.05)
        if create_task.done() and create_task.exception() is not None:
            raise create_task.exception()  # type: ignore[misc]
        if time.monotonic() - began > 600:
            raise RuntimeError(f"not all of {len(names)} labs running after 600 s")
    await create_task
    wall = time.monotonic() - began
    times = await seconds_to_running(observer, began_at)
    n = len(names)
    calls = await sim.stats()
    return {
        "labs": n,
        "wall_seconds": round(wall, 2),
        "spawns_per_second": round(n / wall, 1),
        "p50_to_running_s": round(percentile(times, 0.5), 2),
        "p99_to_running_s": round(percentile(times, 0.99), 2),
        "kube_calls_per_spawn": round(sum(calls.values()) / n, 2),
        "kube_calls": dict(sorted(calls.items())),
        "sql_statements_per_spawn": round((sql.count - statements) / n, 1),
    }


async def delete_batch(
    labd: Labd, sim: RemoteSim, sql: StatementCounter, names: list[str]
) -> dict[str, Any]:
    """Delete ``names`` at once; each delete returns once its objects are gone."""
    await sim.reset_stats()
    statements = sql.count
    began = time.monotonic()

    async def one(username: str) -> float:
        await labd.service.delete(username, actor=Actor.HUB)
        return time.monotonic() - began

    times = await asyncio.gather(*(one(n) for n in names))
    wall = time.monotonic() - began
    n = len(names)
    return {
        "labs": n,
        "wall_seconds": round(wall, 2),
        "deletes_per_second": round(n / wall, 1),
        "p50_s": round(percentile(list(times), 0.5), 2),
        "p99_s": round(percentile(list(times), 0.99), 2),
        "kube_calls_per_delete": round(await sim.total_requests() / n, 2),
        "sql_statements_per_delete": round((sql.count - statements) / n, 1),
    }


_PLURALS = {
    "Namespace": "namespaces",
    "ConfigMap": "configmaps",
    "Secret": "secrets",
    "NetworkPolicy": "networkpolicies",
    "ResourceQuota": "resourcequotas",
    "PersistentVolumeClaim": "persistentvolumeclaims",
    "Service": "services",
    "Pod": "pods",
}


def lab_build(lab: LabRecord) -> LabBuild:
    """A lab's build inputs, derived from its row as labd's scheduler does."""
    return dataclasses.replace(scheduler_lab_build(lab), secret_env={"JUPYTERHUB_API_TOKEN": "t"})


async def fill(
    labd: Labd, sim: RemoteSim, config: Config, template: LabRecord, labs: int
) -> dict[str, Any]:
    """Make ``labs`` running labs fast, without labd's spawn steps.

    Each row is written by `LabStore.create_lab` with the ``adopt`` trigger
    and pod phase Running (one transaction with its audit row, as when the
    reconciler adopts a lab), with the spec of a lab labd spawned; its
    objects are the manifests labd builds, stored straight into the sim's
    registry, and the sim's kubelet brings the pods to Running.
    """
    began = time.monotonic()
    namespaces: set[str] = set()

    async def one(index: int) -> list[tuple[str, str, dict[str, Any]]]:
        username = f"user{index}"
        slug, namespace = lab_namespace(config.namespace_prefix, username)
        user = template.spec.user.model_copy(update={"username": username})
        spec = template.spec.model_copy(update={"user": user})
        lab = await labd.store.create_lab(
            username=username,
            slug=slug,
            namespace=namespace,
            spec=spec,
            actor=Actor.OPERATOR,
            trigger=Trigger.ADOPT,
            reason="benchmark fill",
            changes={
                "pod_phase": "Running",
                "internal_url": internal_url(namespace, spec.env, config),
            },
        )
        namespaces.add(namespace)
        objects = build_lab_objects(lab_build(lab), config).in_creation_order()
        return [
            (_PLURALS[obj["kind"]], "" if obj["kind"] == "Namespace" else namespace, obj)
            for obj in objects
        ]

    for start in range(0, labs, 50):
        made = await asyncio.gather(*(one(i) for i in range(start, min(labs, start + 50))))
        await sim.store([obj for objects in made for obj in objects])
    rows = time.monotonic() - began
    await until(lambda: _equals(sim.running_pods(namespaces), labs), every=0.5)
    return {
        "labs": labs,
        "how": "rows via LabStore.create_lab (adopt, Running); objects into the sim registry",
        "rows_seconds": round(rows, 1),
        "all_running_seconds": round(time.monotonic() - began, 1),
    }


async def py_spy(pid: int, seconds: float, output: Path) -> asyncio.subprocess.Process:
    """Start sampling ``pid`` with py-spy for ``seconds`` (collapsed stacks)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    return await asyncio.create_subprocess_exec(
        *("py-spy", "record", "--pid", str(pid), "--rate", "250"),
        *("--duration", str(round(seconds)), "--format", "raw"),
        *("--output", str(output), "--nonblocking"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def spawn_and_delete(
    sim: RemoteSim, config: Config, *, spawns: int, progress: bool, profile: Path | None
) -> tuple[dict[str, Any], LabRecord]:
    """Phase 2: ``spawns`` labs at once through labd, then all deleted.

    Returns the figures and a lab spawned (the fill's template). labd is
    stopped after, so that the cluster's second ceiling runs alone.
    """
    labd = await Labd.create(config)
    sql = StatementCounter(labd.database)
    observer = Database(config.database_url, pool_size=1)
    await labd.start()
    result: dict[str, Any] = {}
    try:
        names = [f"spawn{i}" for i in range(spawns)]
        backend = make_url(config.database_url).get_backend_name()
        if profile is not None:
            await py_spy(os.getpid(), 15, profile / f"spawn-{backend}.txt")
        result["spawn"] = await spawn_batch(labd, sim, observer, sql, names)
        template = await labd.store.get_current_lab(names[0])
        assert template is not None
        say(progress, "spawn", result["spawn"])
        if profile is not None:
            await py_spy(os.getpid(), 3, profile / f"delete-{backend}.txt")
        result["delete"] = await delete_batch(labd, sim, sql, names)
        say(progress, "delete", result["delete"])
    finally:
        await observer.dispose()
        await labd.stop()
    return result, template


async def fill_and_reconcile(
    sim: RemoteSim, config: Config, template: LabRecord, *, labs: int, progress: bool
) -> dict[str, Any]:
    """Phases 3 and 4: ``labs`` running labs, then one reconcile of them all."""
    labd = await Labd.create(config)
    await labd.start()
    result: dict[str, Any] = {}
    try:
        result["fill"] = await fill(labd, sim, config, template, labs)
        say(progress, "fill", result["fill"])

        await sim.reset_stats()
        report = await labd.reconciler.reconcile()
        result["reconcile"] = {
            "labs": report.labs,
            "seconds": round(report.seconds, 3),
            "kube_calls": dict(sorted((await sim.stats()).items())),
            "changes": len(report.adopted)
            + len(report.orphans)
            + len(report.vanished)
            + len(report.updated),
        }
        say(progress, "reconcile", result["reconcile"])
    finally:
        await labd.stop()
    return result


def bracket(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The cluster's own rates, as the mean of its runs before and after labd's.

    A shared host's speed drifts within a run; the cluster measured on both
    sides of labd's spawns and deletes takes its share of a slow spell.
    """
    return {
        "labs": before["labs"],
        **{
            key: round((before[key] + after[key]) / 2, 1)
            for key in ("spawns_per_second", "deletes_per_second")
        },
        "runs": [before, after],
    }


# Phases 5 to 9: labd serve and the load generator -------------------------------


def say(progress: bool, what: str, value: Any) -> None:
    if progress:
        print(f"  {what}: {json.dumps(value)}", file=sys.stderr, flush=True)


def load(url: str, *, users: int, prefix: str, concurrency: int, seconds: float) -> Any:
    """Run the load generator in its own process; return its result.

    wrk (Debian package ``wrk``) when installed: one thread, written in C,
    so the client takes as little of the machine's CPU as possible; else
    `loadgen.py` (aiohttp).
    """
    if shutil.which("wrk") is None:
        output = subprocess.run(
            [
                sys.executable,
                str(HERE / "loadgen.py"),
                *("--url", url, "--users", str(users), "--prefix", prefix),
                *("--concurrency", str(concurrency), "--seconds", str(seconds)),
                *("--token", TOKEN),
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        result: dict[str, Any] = json.loads(output)
        result["client"] = "loadgen.py (aiohttp)"
        return result
    environment = {**os.environ, "WRK_USERS": str(users), "WRK_PREFIX": prefix, "WRK_TOKEN": TOKEN}
    output = subprocess.run(
        [
            "wrk",
            *(
                "-t1",
                f"-c{concurrency}",
                f"-d{max(1, round(seconds))}s",
                "--latency",
                "--timeout",
                "10s",
            ),
            *("-s", str(HERE / "status.lua"), url),
        ],
        check=True,
        capture_output=True,
        text=True,
        env=environment,
    ).stdout
    line = next(line for line in output.splitlines() if line.startswith("JSON "))
    raw = json.loads(line.removeprefix("JSON "))
    return {
        "client": "wrk -t1",
        "concurrency": concurrency,
        "seconds": round(raw["duration_us"] / 1e6, 2),
        "requests": raw["requests"],
        "rps": round(raw["requests"] / (raw["duration_us"] / 1e6), 1),
        "p50_ms": round(raw["p50_us"] / 1000, 2),
        "p99_ms": round(raw["p99_us"] / 1000, 2),
        "non_2xx": raw["non_2xx"],
        "socket_errors": raw["socket_errors"],
    }


async def run_load(url: str, **kwargs: Any) -> Any:
    return await asyncio.to_thread(load, url, **kwargs)


async def pod_to_status(sim: RemoteSim, config: Config, url: str, n: int) -> dict[str, Any]:
    """Per lab: pod stored Running in the sim -> status route says running."""
    await sim.follow_running()
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with aiohttp.ClientSession(base_url=url, headers=headers) as http:
        for i in range(n):
            username = f"latency{i}"
            _, namespace = lab_namespace(config.namespace_prefix, username)
            async with http.post(f"/spawner/v1/labs/{username}/create", json=BODY) as r:
                assert r.status == 201, await r.text()
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                async with http.get(f"/spawner/v1/labs/{username}") as r:
                    status = (await r.json())["status"]
                if status == "running":
                    seen = time.monotonic()
                    break
                await asyncio.sleep(0.002)
            else:
                raise RuntimeError(f"{username} did not run within 30 s")
            running = await sim.running_since(namespace)
            assert running is not None, f"the sim never stored {namespace}'s pod Running"
            latencies.append(seen - running)
    return {
        "labs": n,
        "p50_ms": ms(percentile(latencies, 0.5)),
        "p99_ms": ms(percentile(latencies, 0.99)),
        "max_ms": ms(max(latencies)),
    }


async def served(
    sim: RemoteSim,
    config: Config,
    config_file: Path,
    log: Path,
    *,
    labs: int,
    seconds: float,
    latency_labs: int,
    progress: bool,
    profile: Path | None,
    read_rounds: int,
    read_ceiling: bool,
) -> dict[str, Any]:
    url = f"http://{config.bind_address}"
    backend = make_url(config.database_url).get_backend_name()
    daemon = Daemon(config_file, f"{url}/readyz", log, ready_timeout=300)
    result: dict[str, Any] = {}
    await sim.reset_stats()
    ready = await daemon.start(poll=0.01)
    reconciled = asyncio.create_task(until_on_duty(url, time.monotonic() - ready))
    result["restart_to_ready_s"] = round(ready, 2)
    at_ready = vm_status(daemon.pid)
    result["rss_at_ready_mb"] = round(at_ready["VmRSS"] / 1024, 1)
    result["rss_peak_at_ready_mb"] = round(at_ready["VmHWM"] / 1024, 1)
    say(progress, "restart to ready", result["restart_to_ready_s"])
    try:
        result["after_ready"] = await after_ready(url)
        say(progress, "after ready", result["after_ready"])
        result["restart_to_reconciled_s"] = await reconciled
        result["startup_kube_calls"] = dict(sorted((await sim.stats()).items()))
        say(progress, "restart to reconciled", result["restart_to_reconciled_s"])
        async with aiohttp.ClientSession() as http:
            headers = {"Authorization": f"Bearer {TOKEN}"}
            async with http.get(f"{url}/spawner/v1/labs/user0", headers=headers) as response:
                assert response.status == 200
                body = await response.text()
        bare_server: contextlib.AbstractAsyncContextManager[Server | None] = (
            ceiling_server("starlette", body) if read_ceiling else contextlib.nullcontext()
        )
        async with bare_server as bare:
            reads, ceilings = await alternating_reads(
                url,
                daemon.pid,
                bare,
                labs=labs,
                seconds=seconds,
                rounds=read_rounds,
                sim=sim,
                profile=profile / f"status-{backend}.txt" if profile else None,
                progress=progress,
            )
        result["status_reads"] = reads
        if read_ceiling:
            result["read_ceiling"] = {"starlette": ceilings}
        result["pod_to_status"] = await pod_to_status(sim, config, url, latency_labs)
        say(progress, "pod to status", result["pod_to_status"])
        memory = vm_status(daemon.pid)
        result["rss_peak_mb"] = round(memory["VmHWM"] / 1024, 1)
        result["rss_now_mb"] = round(memory["VmRSS"] / 1024, 1)
    finally:
        result["exit_status"] = await daemon.terminate()
    result["status_body"] = body
    return result


async def until_on_duty(url: str, began: float) -> float:
    """Seconds from ``began`` (the process start) until labd is on duty.

    That is when ``/readyz`` first names a ``leader_since``: the first
    reconcile done and the watches started (polled every 10 ms, at most
    300 s).
    """
    async with aiohttp.ClientSession() as http:
        while time.monotonic() - began < 300:
            async with http.get(f"{url}/readyz") as response:
                if (await response.json()).get("leader_since") is not None:
                    return round(time.monotonic() - began, 2)
            await asyncio.sleep(0.01)
    raise RuntimeError("labd was not on duty within 300 s")


async def after_ready(url: str) -> dict[str, Any]:
    """Watch status reads right after ``/readyz`` turned 200, until they are quick.

    labd is ready once it serves, while its first reconcile runs; its
    watches then start: status reads meanwhile show what a hub sees just
    after a restart.  One read every 50 ms, until ten in a row
    answer within 20 ms (at most 120 s).
    """
    headers = {"Authorization": f"Bearer {TOKEN}"}
    began = time.monotonic()
    slowest = 0.0
    quick = 0
    reads = 0
    async with aiohttp.ClientSession(base_url=url, headers=headers) as http:
        while quick < 10 and time.monotonic() - began < 120:
            sent = time.monotonic()
            async with http.get(f"/spawner/v1/labs/user{reads}") as response:
                assert response.status == 200
                await response.read()
            took = time.monotonic() - sent
            reads += 1
            slowest = max(slowest, took)
            quick = quick + 1 if took < 0.02 else 0
            await asyncio.sleep(0.05)
    return {
        "seconds_until_quick": round(time.monotonic() - began, 2),
        "slowest_read_ms": ms(slowest),
        "reads": reads,
    }


def cpu_seconds(pid: int) -> float:
    """The user and system CPU time ``pid`` has used so far (``/proc/<pid>/stat``)."""
    # The fields after the command name, which is in parentheses and may hold spaces.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class Server:
    """A server under read load: its base URL and process."""

    url: str
    pid: int


async def timed_load(server: Server, **kwargs: Any) -> Any:
    """`run_load` against ``server``, with the server's CPU time per read."""
    before = cpu_seconds(server.pid)
    result = await run_load(server.url, **kwargs)
    used = cpu_seconds(server.pid) - before
    result["cpu_us_per_read"] = (
        round(used / result["requests"] * 1e6, 1) if result["requests"] else None
    )
    return result


def median_round(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One level's figures: the median of its rounds, each round kept under ``rounds``."""
    medians = {
        key: round(statistics.median(r[key] for r in rounds), 2)
        for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_read")
        if all(r[key] is not None for r in rounds)
    }
    sums = {
        key: round(sum(r[key] for r in rounds), 2)
        for key in ("seconds", "requests", "non_2xx", "socket_errors", "kube_calls")
        if all(key in r for r in rounds)
    }
    return {**rounds[0], **medians, **sums, "rounds": rounds}


async def alternating_reads(
    url: str,
    pid: int,
    bare: Server | None,
    *,
    labs: int,
    seconds: float,
    rounds: int,
    sim: RemoteSim,
    profile: Path | None,
    progress: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Status reads at 1, 16 and 128 clients: labd's, and the bare route's.

    Both servers stay up; at each level, rounds alternate between them
    (labd, bare, labd, ...), so that a slow spell of a shared host falls on
    both, and each figure is the median of its rounds.
    """
    labd = Server(url, pid)
    reads: list[dict[str, Any]] = []
    ceilings: list[dict[str, Any]] = []
    for concurrency in (1, 16, 128):
        ours: list[dict[str, Any]] = []
        theirs: list[dict[str, Any]] = []
        for n in range(rounds):
            await sim.reset_stats()
            spy = None
            if profile is not None and concurrency == 16 and n == 0:
                spy = await py_spy(pid, seconds, profile)
            load = {
                "users": labs,
                "prefix": "user",
                "concurrency": concurrency,
                "seconds": seconds,
            }
            ours.append(await timed_load(labd, **load))
            ours[-1]["kube_calls"] = await sim.total_requests()
            if spy is not None:
                await spy.wait()
            if bare is not None:
                theirs.append(await timed_load(bare, **load))
        reads.append(median_round(ours))
        say(progress, f"status reads x{concurrency}", _brief(reads[-1]))
        if theirs:
            ceilings.append(median_round(theirs))
            say(progress, f"bare route x{concurrency}", _brief(ceilings[-1]))
    return reads, ceilings


def _brief(level: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in level.items() if key != "rounds"}


@contextlib.asynccontextmanager
async def ceiling_server(mode: str, body: str) -> AsyncIterator[Server]:
    """Run `ceiling_server.py` in ``mode`` answering ``body``, and yield it."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as file:
        file.write(body)
        file.flush()
        port = free_port()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HERE / "ceiling_server.py"),
            *("--mode", mode, "--port", str(port), "--body", file.name),
            stdout=subprocess.DEVNULL,
        )
        try:
            await wait_for_port(port)
            yield Server(f"http://127.0.0.1:{port}", process.pid)
        finally:
            process.terminate()
            await process.wait()


async def generator_ceiling(body: str, *, seconds: float, progress: bool) -> list[dict[str, Any]]:
    """Status reads against the canned server: the load generator's own limit."""
    result: list[dict[str, Any]] = []
    async with ceiling_server("raw", body) as raw:
        for concurrency in (16, 128):
            result.append(
                await run_load(
                    raw.url, users=10_000, prefix="user", concurrency=concurrency, seconds=seconds
                )
            )
            say(progress, f"raw x{concurrency}", result[-1])
    return result


async def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError(f"nothing listens on port {port}")


# Driver -----------------------------------------------------------------------------


def loadavg() -> list[str]:
    """The 1, 5 and 15 minute load averages."""
    return Path("/proc/loadavg").read_text().split()[:3]


def python_speed() -> float:
    """Seconds this host takes for 10 million additions in a Python loop.

    A shared host's speed drifts (a neighbour's load, CPU steal): the same
    host gave 0.8 s and 1.6 s an hour apart.  Taken at the start and the
    end of a run, it says whether the run's absolute figures are comparable
    with another's.
    """
    began = time.perf_counter()
    total = 0
    for n in range(10_000_000):
        total += n
    return round(time.perf_counter() - began, 2)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    load = loadavg()
    return {
        "python_loop_s_at_start": python_speed(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "cpu": next(
            (
                line.split(":", 1)[1].strip()
                for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")
            ),
            "unknown",
        ),
        "loadavg_at_start": load,
    }


async def measure(
    backend: str,
    *,
    labs: int,
    spawns: int,
    seconds: float,
    latency_labs: int,
    progress: bool,
    profile: Path | None = None,
    read_ceiling: bool = True,
    read_rounds: int = 3,
) -> dict[str, Any]:
    configure_logging(level="warning", fmt="json")
    tune_collector()  # as `labd serve` does: labd runs in this process for phases 2 to 4
    result: dict[str, Any] = {"backend": backend, "machine": machine()}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        token_file = tmp / "tokens"
        token_file.write_text(f"{hash_token(TOKEN)} hub\n")
        kubeconfig = tmp / "kubeconfig"
        async with (
            scratch_database(backend, tmp, "labd_bench") as url,
            RemoteSim(
                kubeconfig, pod_start_delay=0.0, token="", service_account_admission=False
            ) as sim,
        ):
            data = settings(url, kubeconfig, free_port(), token_file)
            config_file = tmp / "labd.yaml"
            config_file.write_text(yaml.safe_dump(data))
            config = Config.model_validate(data)
            before = await ceiling(sim, config, spawns)
            say(progress, "ceiling", before)
            figures, template = await spawn_and_delete(
                sim, config, spawns=spawns, progress=progress, profile=profile
            )
            result.update(figures)
            after = await ceiling(sim, config, spawns)
            say(progress, "ceiling again", after)
            result["ceiling"] = bracket(before, after)
            result.update(
                await fill_and_reconcile(sim, config, template, labs=labs, progress=progress)
            )
            result.update(
                await served(
                    sim,
                    config,
                    config_file,
                    tmp / "labd.log",
                    labs=labs,
                    seconds=seconds,
                    latency_labs=latency_labs,
                    progress=progress,
                    profile=profile,
                    read_rounds=read_rounds,
                    read_ceiling=read_ceiling,
                )
            )
        body = result.pop("status_body")
        if read_ceiling:
            result["read_ceiling"]["raw"] = await generator_ceiling(
                body, seconds=seconds, progress=progress
            )
    result["machine"]["loadavg_at_end"] = loadavg()
    result["machine"]["python_loop_s_at_end"] = python_speed()
    return result


def summary(result: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """The table's rows: (what, figure)."""
    reads = {r["concurrency"]: r for r in result["status_reads"]}
    ceilings = result.get("read_ceiling")  # absent with --no-read-ceiling
    bare = {r["concurrency"]: r for r in ceilings["starlette"]} if ceilings else {}
    for c in (1, 16, 128):
        r = reads[c]
        of_bare = (
            f" ({r['rps'] / bare[c]['rps']:.2f} of bare {bare[c]['rps']:.0f}/s;"
            f" CPU {r.get('cpu_us_per_read')} vs {bare[c].get('cpu_us_per_read')} us/read)"
            if bare
            else ""
        )
        yield (
            f"status reads, {c} clients",
            f"{r['rps']:.0f}/s p50 {r['p50_ms']} ms p99 {r['p99_ms']} ms{of_bare}",
        )
    if ceilings:
        raw = {r["concurrency"]: r for r in ceilings["raw"]}
        yield (
            "load generator ceiling (canned, 16/128)",
            f"{raw[16]['rps']:.0f}/s / {raw[128]['rps']:.0f}/s",
        )
    s, c, d = result["spawn"], result["ceiling"], result["delete"]
    ratio = s["spawns_per_second"] / c["spawns_per_second"]
    yield (
        f"{s['labs']} spawns at once",
        f"{s['wall_seconds']} s ({s['spawns_per_second']}/s, {ratio:.2f}"
        f" of sim {c['spawns_per_second']}/s{_runs(c, 'spawns_per_second')}),"
        f" to running p50 {s['p50_to_running_s']} s"
        f" p99 {s['p99_to_running_s']} s",
    )
    yield (
        "  per spawn",
        f"{s['kube_calls_per_spawn']} Kubernetes calls, {s['sql_statements_per_spawn']} SQL",
    )
    ratio = d["deletes_per_second"] / c["deletes_per_second"]
    yield (
        f"{d['labs']} deletes at once",
        f"{d['wall_seconds']} s ({d['deletes_per_second']}/s, {ratio:.2f}"
        f" of sim {c['deletes_per_second']}/s{_runs(c, 'deletes_per_second')}),"
        f" p50 {d['p50_s']} s p99 {d['p99_s']} s",
    )
    yield (
        "  per delete",
        f"{d['kube_calls_per_delete']} Kubernetes calls, {d['sql_statements_per_delete']} SQL",
    )
    rc = result["reconcile"]
    yield f"reconcile {rc['labs']} labs", f"{rc['seconds']} s, calls {rc['kube_calls']}"
    yield "restart to ready", f"{result['restart_to_ready_s']} s"
    yield "restart to reconciled (on duty)", f"{result['restart_to_reconciled_s']} s"
    a = result["after_ready"]
    yield (
        "after ready: reads quick again after",
        f"{a['seconds_until_quick']} s (slowest read {a['slowest_read_ms']} ms)",
    )
    p = result["pod_to_status"]
    yield f"pod Running -> status ({p['labs']} labs)", f"p50 {p['p50_ms']} ms p99 {p['p99_ms']} ms"
    yield (
        "RSS",
        f"peak {result['rss_peak_mb']} MB (peak {result['rss_peak_at_ready_mb']} MB at ready,"
        f" {result['rss_now_mb']} MB at the end)",
    )


def _runs(ceiling: dict[str, Any], key: str) -> str:
    """The cluster's rate before and after labd's run, as `` = mean of A / B``."""
    runs = ceiling.get("runs")  # absent from results before the ceiling ran twice
    return f" = mean of {runs[0][key]} / {runs[1][key]}" if runs else ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--labs", type=int, default=10_000)
    parser.add_argument("--spawns", type=int, default=1_000)
    parser.add_argument("--seconds", type=float, default=5.0, help="per load level")
    parser.add_argument("--latency-labs", type=int, default=200)
    parser.add_argument(
        "--no-read-ceiling",
        action="store_true",
        help="skip the status-read ceilings (bare Starlette route, canned server)",
    )
    parser.add_argument(
        "--read-rounds",
        type=int,
        default=3,
        help="rounds per status-read level, alternating with the bare route; medians reported",
    )
    parser.add_argument("--output", type=Path)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument(
        "--profile",
        type=Path,
        help="directory for py-spy profiles (collapsed stacks) of the daemon's 16-client"
        " status reads and of this process during the spawns and the deletes",
    )
    args = parser.parse_args()
    result = asyncio.run(
        measure(
            args.backend,
            labs=args.labs,
            spawns=args.spawns,
            seconds=args.seconds,
            latency_labs=args.latency_labs,
            progress=not args.quiet,
            profile=args.profile,
            read_ceiling=not args.no_read_ceiling,
            read_rounds=args.read_rounds,
        )
    )
    host = result["machine"]
    print(
        f"labd at scale, {args.backend}, load {' '.join(host['loadavg_at_start'])};"
        f" 10 million additions in {host['python_loop_s_at_start']} s at start,"
        f" {host['python_loop_s_at_end']} s at end"
    )
    for what, figure in summary(result):
        print(f"  {what:<42}{figure}")
    output = args.output or Path(f"bench-results/scale-{args.backend}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
