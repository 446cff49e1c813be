"""Benchmark: requests per second the simulated cluster serves with 2,000 pods.

The sim runs as its own process (``python -m labd.sim``), as under
``labd dev``, so the load generator does not share its event loop or GIL.
The cluster is filled with 2,000 pods (100 namespaces of 20, each pod
labelled ``labd.io/user``), brought to Running by the kubelet; then
concurrent workers send a mix for a fixed time:

- 40 % GET one pod,
- 30 % LIST pods by label across all namespaces (each matches one pod, so
  the server scans all 2,000),
- 15 % create a ConfigMap, 15 % delete one.

Two clients are measured: raw HTTP (aiohttp, with JSON decoding only: close
to what the server can take) and kubernetes-asyncio (what labd's own client
reaches; it also decodes every answer into model objects). Client and server
share the machine's cores, so both figures are lower bounds.

Run::

    .venv/bin/python tests/bench/bench_sim.py [--pods 2000] [--seconds 10] [--workers 16]

It prints a table and writes ``bench-results/sim.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio.client import ApiClient, Configuration, CoreV1Api
from kubernetes_asyncio.config import load_kube_config

NAMESPACE_SIZE = 20
Operation = Callable[[int], Awaitable[None]]


async def start_sim(
    kubeconfig: Path, profile: Path | None
) -> tuple[asyncio.subprocess.Process, str, str]:
    """Start the sim process (under cProfile if asked); return it, its URL and token."""
    profiler = ["-m", "cProfile", "-o", str(profile)] if profile else []
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *profiler,
        "-m",
        "labd.sim",
        "--port",
        "0",
        "--kubeconfig",
        str(kubeconfig),
        "--pod-start-delay",
        "0",
        "--watch-window",
        "10000",
        "--no-tls",  # Measured over plain HTTP, as the published figures were.
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdout is not None
    url = ""
    while True:
        line = (await asyncio.wait_for(process.stdout.readline(), 30)).decode()
        if not line:
            raise RuntimeError("the sim process ended while starting")
        if line.startswith("sim API server: "):
            url = line.split(": ", 1)[1].strip()
        if line.startswith("kubeconfig: "):
            break
    configuration = Configuration()
    await load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return process, url, configuration.api_key["BearerToken"]


async def in_parallel(count: int, workers: int, job: Callable[[int], Awaitable[None]]) -> None:
    """Run ``job(i)`` for i in range(count) with ``workers`` at a time."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)

    async def worker() -> None:
        while not queue.empty():
            await job(queue.get_nowait())

    await asyncio.gather(*(worker() for _ in range(workers)))


class Http:
    """A thin JSON-over-HTTP client on aiohttp (httpx costs more CPU per request)."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url

    async def call(
        self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None
    ) -> Any:
        """Send one request; return the decoded body; raise on an error status."""
        async with self.session.request(
            method, self.url + path, json=json, params=params
        ) as response:
            body = await response.json()
            response.raise_for_status()
            return body


async def fill(http: Http, pods: int, workers: int) -> None:
    """Create the namespaces and pods, then wait until every pod runs."""
    namespaces = (pods + NAMESPACE_SIZE - 1) // NAMESPACE_SIZE

    async def namespace(index: int) -> None:
        body = {"metadata": {"name": f"lab-{index}"}}
        await http.call("POST", "/api/v1/namespaces", json=body)

    await in_parallel(namespaces, workers, namespace)
    while True:
        accounts = (await http.call("GET", "/api/v1/serviceaccounts"))["items"]
        if len(accounts) >= namespaces:
            break
        await asyncio.sleep(0.1)

    async def create_pod(index: int) -> None:
        body = {
            "metadata": {"name": f"user-{index}-nb", "labels": {"labd.io/user": f"user-{index}"}},
            "spec": {"containers": [{"name": "notebook", "image": "jupyter/lab:4.1"}]},
        }
        ns = f"lab-{index // NAMESPACE_SIZE}"
        await http.call("POST", f"/api/v1/namespaces/{ns}/pods", json=body)

    await in_parallel(pods, workers, create_pod)
    while True:
        listing = await http.call(
            "GET", "/api/v1/pods", params={"fieldSelector": "status.phase=Running"}
        )
        if len(listing["items"]) == pods:
            return
        await asyncio.sleep(0.5)


def http_operations(http: Http, pods: int) -> dict[str, Operation]:
    """The request mix over raw HTTP."""

    async def get_pod(index: int) -> None:
        user = index % pods
        url = f"/api/v1/namespaces/lab-{user // NAMESPACE_SIZE}/pods/user-{user}-nb"
        await http.call("GET", url)

    async def list_pods(index: int) -> None:
        selector = f"labd.io/user=user-{index % pods}"
        listing = await http.call("GET", "/api/v1/pods", params={"labelSelector": selector})
        assert len(listing["items"]) == 1

    async def create_config_map(index: int) -> None:
        body = {"metadata": {"name": f"env-{index}"}, "data": {"A": "1"}}
        url = f"/api/v1/namespaces/lab-{index % 100}/configmaps"
        await http.call("POST", url, json=body)

    async def delete_config_map(index: int) -> None:
        url = f"/api/v1/namespaces/lab-{index % 100}/configmaps/env-{index}"
        await http.call("DELETE", url)

    return {
        "get pod": get_pod,
        "list pods by label": list_pods,
        "create configmap": create_config_map,
        "delete configmap": delete_config_map,
    }


def client_operations(core: CoreV1Api, pods: int) -> dict[str, Operation]:
    """The same mix through kubernetes-asyncio."""

    async def get_pod(index: int) -> None:
        user = index % pods
        await core.read_namespaced_pod(f"user-{user}-nb", f"lab-{user // NAMESPACE_SIZE}")

    async def list_pods(index: int) -> None:
        listing = await core.list_pod_for_all_namespaces(
            label_selector=f"labd.io/user=user-{index % pods}"
        )
        assert len(listing.items) == 1

    async def create_config_map(index: int) -> None:
        body: Any = {"metadata": {"name": f"env-{index}"}, "data": {"A": "1"}}
        await core.create_namespaced_config_map(f"lab-{index % 100}", body)

    async def delete_config_map(index: int) -> None:
        await core.delete_namespaced_config_map(f"env-{index}", f"lab-{index % 100}")

    return {
        "get pod": get_pod,
        "list pods by label": list_pods,
        "create configmap": create_config_map,
        "delete configmap": delete_config_map,
    }


async def measure(
    operations: dict[str, Operation], *, seconds: float, workers: int, first_id: int
) -> dict[str, Any]:
    """Run the mix for ``seconds``; return throughput and latencies per operation."""
    latencies: dict[str, list[float]] = {name: [] for name in operations}
    errors = 0
    ids = iter(range(first_id, first_id + 10_000_000))
    pending: list[int] = []  # config maps created and not yet deleted
    deadline = time.perf_counter() + seconds
    chooser = random.Random(1)

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < deadline:
            roll = chooser.random()
            if roll < 0.40:
                name, arg = "get pod", chooser.randrange(1_000_000)
            elif roll < 0.70:
                name, arg = "list pods by label", chooser.randrange(1_000_000)
            elif roll < 0.85 or not pending:
                name, arg = "create configmap", next(ids)
            else:
                name, arg = "delete configmap", pending.pop(0)
            started = time.perf_counter()
            try:
                await operations[name](arg)
            except Exception:
                errors += 1
                continue
            latencies[name].append(time.perf_counter() - started)
            if name == "create configmap":
                pending.append(arg)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.perf_counter() - began
    total = sum(len(v) for v in latencies.values())
    result: dict[str, Any] = {
        "requests": total,
        "errors": errors,
        "seconds": round(elapsed, 2),
        "requests_per_second": round(total / elapsed, 1),
        "operations": {},
    }
    for name, values in latencies.items():
        ordered = sorted(values) or [0.0]
        result["operations"][name] = {
            "count": len(values),
            "per_second": round(len(values) / elapsed, 1),
            "p50_ms": round(statistics.median(ordered) * 1000, 2),
            "p95_ms": percentile_ms(ordered, 0.95),
            "p99_ms": percentile_ms(ordered, 0.99),
        }
    return result


def percentile_ms(ordered: list[float], share: float) -> float:
    """Return the ``share`` percentile of sorted seconds, in milliseconds."""
    index = min(len(ordered) - 1, max(0, round(len(ordered) * share) - 1))
    return round(ordered[index] * 1000, 2)


def print_table(label: str, result: dict[str, Any]) -> None:
    """Print one client's results."""
    rate, count, errors = result["requests_per_second"], result["requests"], result["errors"]
    print(f"\n{label}: {rate} requests/s ({count} in {result['seconds']} s, {errors} errors)")
    print(
        f"  {'operation':<20} {'count':>7} {'per s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8}"
    )
    for name, op in result["operations"].items():
        print(f"  {name:<20} {op['count']:>7} {op['per_second']:>8} {op['p50_ms']:>8} "
              f"{op['p95_ms']:>8} {op['p99_ms']:>8}")  # fmt: skip


async def main(pods: int, seconds: float, workers: int, profile: Path | None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as scratch:
        process, url, token = await start_sim(Path(scratch) / "kubeconfig", profile)
        try:
            async with aiohttp.ClientSession(
                headers={"Authorization": token},
                connector=aiohttp.TCPConnector(limit=workers),
                timeout=aiohttp.ClientTimeout(total=30),
            ) as session:
                http = Http(session, url)
                began = time.perf_counter()
                await fill(http, pods, workers)
                fill_seconds = round(time.perf_counter() - began, 1)
                print(f"filled: {pods} pods Running in {fill_seconds} s")
                raw = await measure(
                    http_operations(http, pods), seconds=seconds, workers=workers, first_id=0
                )
                print_table("raw HTTP (aiohttp)", raw)
            configuration = Configuration()
            await load_kube_config(
                config_file=str(Path(scratch) / "kubeconfig"), client_configuration=configuration
            )
            configuration.connection_pool_maxsize = workers
            async with ApiClient(configuration) as api:
                client = await measure(
                    client_operations(CoreV1Api(api), pods),
                    seconds=seconds,
                    workers=workers,
                    first_id=5_000_000,
                )
            print_table("kubernetes-asyncio", client)
        finally:
            process.send_signal(signal.SIGTERM)
            await process.wait()
    report = {
        "benchmark": "sim",
        "pods": pods,
        "seconds": seconds,
        "workers": workers,
        "fill_seconds": fill_seconds,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "mix": {
            "get pod": 0.40,
            "list pods by label": 0.30,
            "create configmap": 0.15,
            "delete configmap": 0.15,
        },
        "raw_http": raw,
        "kubernetes_asyncio": client,
    }
    return report


def write_report(report: dict[str, Any]) -> None:
    """Write the report to ``bench-results/sim.json``."""
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    (out / "sim.json").write_text(json.dumps(report, indent=2))
    print(f"\nwritten: {out / 'sim.json'}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pods", type=int, default=2000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--profile", type=Path, help="Write a cProfile of the sim process here.")
    arguments = parser.parse_args()
    write_report(
        asyncio.run(main(arguments.pods, arguments.seconds, arguments.workers, arguments.profile))
    )
