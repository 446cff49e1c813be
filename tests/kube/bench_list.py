"""Measure one LIST of 2,000 lab pods: raw JSON (what labd does) against models.

Run with ``.venv/bin/python -m tests.kube.bench_list``.  It fills a simulated
cluster (no kubelet) with 2,000 lab pods, then times `LabKube.list_lab_pods`
and the same LIST deserialised into kubernetes-asyncio's ``V1Pod`` models,
which is why `labd.kube` reads responses raw.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
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

PODS = 2000
ROUNDS = 5


async def main() -> None:
    async with SimCluster(kubelet=False, service_account_admission=False) as sim:
        with tempfile.TemporaryDirectory() as directory:
            path = sim.write_kubeconfig(Path(directory) / "kubeconfig")
            config = Config(kubernetes=KubernetesConfig(kubeconfig=path))
            pods = next(r for r in RESOURCES if r.plural == "pods")
            namespaces = next(r for r in RESOURCES if r.plural == "namespaces")
            for index in range(PODS):
                objects = build_lab_objects(lab_build(f"user{index}"), config)
                sim.registry.create(namespaces, "", objects.namespace)
                sim.registry.create(pods, objects.pod["metadata"]["namespace"], objects.pod)
            client = await create_api_client(config.kubernetes)
            try:
                kube = LabKube(client, config)
                core = CoreV1Api(client)
                raw, single, models = [], [], []
                for _ in range(ROUNDS):
                    start = time.perf_counter()
                    listed = await kube.list_lab_pods()
                    raw.append(time.perf_counter() - start)
                    assert len(listed) == PODS
                    start = time.perf_counter()
                    response = cast(
                        aiohttp.ClientResponse,
                        await core.list_pod_for_all_namespaces(
                            label_selector=MANAGED_SELECTOR, _preload_content=False
                        ),
                    )
                    body = json.loads(await response.read())
                    response.release()
                    single.append(time.perf_counter() - start)
                    assert len(body["items"]) == PODS
                    start = time.perf_counter()
                    result = await core.list_pod_for_all_namespaces(
                        label_selector=MANAGED_SELECTOR
                    )
                    models.append(time.perf_counter() - start)
                    assert len(result.items) == PODS
            finally:
                await client.close()
    print(f"LIST of {PODS} pods, best of {ROUNDS}:")
    print(f"  raw JSON, paged by 500 (labd): {min(raw) * 1000:.0f} ms")
    print(f"  raw JSON, one page:            {min(single) * 1000:.0f} ms")
    print(f"  V1Pod models, one page:        {min(models) * 1000:.0f} ms")


if __name__ == "__main__":
    asyncio.run(main())
