"""Measure one LIST of 10,000 lab pods: its time and its memory.

Run with ``.venv/bin/python -m tests.kube.bench_list [--pods N]``.  It fills
a simulated cluster with lab pods (its kubelet runs them, so each carries a
Running pod's status), then LISTs them from a process of its own, so that
the memory measured is the client's alone:

- `LabKube.list_lab_pods` (what labd does: paged, streamed, converted),
  best time of several rounds, the peak of its Python allocations
  (tracemalloc) and how much the first LIST raised the process's peak RSS;
- the same LIST as one page read whole and parsed with `json.loads`,
  without conversion;
- the same LIST deserialised into kubernetes-asyncio's ``V1Pod`` models,
  which is why `labd.kube` reads responses raw.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import cast

import aiohttp
from kubernetes_asyncio.client import CoreV1Api

from labd.config import Config, KubernetesConfig
from labd.kube.builder import MANAGED_SELECTOR, build_lab_objects
from labd.kube.client import create_api_client
from labd.kube.storage import LabKube
from labd.sim import SimCluster
from labd.sim.kinds import RESOURCES
from tests.support.labs import lab_build
from tests.support.waiting import eventually

PODS = 10_000
ROUNDS = 5


def _kib(field: str) -> int:
    """Return a ``VmRSS``/``VmHWM`` line of ``/proc/self/status``, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


async def fill(sim: SimCluster, config: Config, pods: int) -> None:
    """Store ``pods`` labs' namespaces and pods; wait until every pod runs."""
    pod_resource = next(r for r in RESOURCES if r.plural == "pods")
    namespace_resource = next(r for r in RESOURCES if r.plural == "namespaces")
    for index in range(pods):
        objects = build_lab_objects(lab_build(f"user{index}"), config)
        sim.registry.create(namespace_resource, "", objects.namespace)
        sim.registry.create(pod_resource, objects.pod["metadata"]["namespace"], objects.pod)

    def running() -> bool:
        phases = [
            (pod.get("status") or {}).get("phase") for pod in sim.registry.objects(pod_resource)
        ]
        return phases.count("Running") == pods

    await eventually(running, within=600, interval=0.5)


async def client(kubeconfig: Path, pods: int) -> None:
    """LIST the pods every way; print the figures as JSON."""
    config = Config(kubernetes=KubernetesConfig(kubeconfig=kubeconfig, request_timeout=60))
    api_client = await create_api_client(config.kubernetes)
    try:
        kube = LabKube(api_client, config)
        core = CoreV1Api(api_client)
        rss_before = _kib("VmRSS")
        listed = await kube.list_lab_pods()
        rss_growth = _kib("VmHWM") - rss_before
        assert len(listed) == pods
        del listed
        tracemalloc.start()
        listed = await kube.list_lab_pods()
        _, traced_peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        del listed
        labd, whole, models = [], [], []
        for _ in range(ROUNDS):
            start = time.perf_counter()
            listed = await kube.list_lab_pods()
            labd.append(time.perf_counter() - start)
            assert len(listed) == pods
            del listed
            start = time.perf_counter()
            response = cast(
                aiohttp.ClientResponse,
                await core.list_pod_for_all_namespaces(
                    label_selector=MANAGED_SELECTOR, _preload_content=False
                ),
            )
            body = json.loads(await response.read())
            response.release()
            whole.append(time.perf_counter() - start)
            assert len(body["items"]) == pods
            del body
        for _ in range(2):
            start = time.perf_counter()
            result = await core.list_pod_for_all_namespaces(label_selector=MANAGED_SELECTOR)
            models.append(time.perf_counter() - start)
            assert len(result.items) == pods
            del result
    finally:
        await api_client.close()
    figures = {
        "labd_ms": round(min(labd) * 1000),
        "labd_traced_peak_mib": round(traced_peak / 2**20, 1),
        "labd_first_list_rss_growth_mib": round(rss_growth / 1024, 1),
        "json_loads_one_page_ms": round(min(whole) * 1000),
        "models_one_page_ms": round(min(models) * 1000),
    }
    print(json.dumps(figures))


async def main(pods: int) -> None:
    async with SimCluster(pod_start_delay=0, service_account_admission=False) as sim:
        with tempfile.TemporaryDirectory() as directory:
            path = sim.write_kubeconfig(Path(directory) / "kubeconfig")
            await fill(sim, Config(kubernetes=KubernetesConfig(kubeconfig=path)), pods)
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "tests.kube.bench_list",
                "--pods",
                str(pods),
                "--client",
                str(path),
                stdout=asyncio.subprocess.PIPE,
            )
            output, _ = await process.communicate()
    if process.returncode:
        raise SystemExit(f"the client failed with status {process.returncode}")
    figures = json.loads(output)
    print(f"LIST of {pods} Running lab pods (best of {ROUNDS} rounds):")
    print(f"  labd (streamed, converted):     {figures['labd_ms']} ms")
    print(f"    peak of Python allocations:   {figures['labd_traced_peak_mib']} MiB")
    print(f"    peak RSS growth, first LIST:  {figures['labd_first_list_rss_growth_mib']} MiB")
    print(f"  json.loads of one whole page:   {figures['json_loads_one_page_ms']} ms")
    print(f"  V1Pod models, one page:         {figures['models_one_page_ms']} ms")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pods", type=int, default=PODS)
    parser.add_argument("--client", type=Path, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.client is not None:
        asyncio.run(client(arguments.client, arguments.pods))
    else:
        asyncio.run(main(arguments.pods))
