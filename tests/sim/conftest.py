"""Fixtures for the simulated cluster's tests.

Every test talks to a real `SimCluster` on 127.0.0.1 through
kubernetes-asyncio, configured from the kubeconfig the sim writes, exactly
as labd will. Options for the cluster come from the ``sim`` marker, e.g.
``@pytest.mark.sim(kubelet=False, watch_window=5)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes_asyncio.client import (
    ApiClient,
    Configuration,
    CoreV1Api,
    NetworkingV1Api,
)
from kubernetes_asyncio.config import load_kube_config

from labd.sim import SimCluster
from tests.support.kubeapi import make_namespace

#: Small delays keep the suite fast while keeping every step asynchronous.
DEFAULTS: dict[str, Any] = {
    "pod_start_delay": 0.05,
    "pod_stop_delay": 0.05,
    "namespace_sa_delay": 0.0,
    "bookmark_interval": 0.2,
    "seed": 7,
}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sim(**options): SimCluster options for the test")


@pytest.fixture
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[SimCluster]:
    marker = request.node.get_closest_marker("sim")
    options = {**DEFAULTS, **(marker.kwargs if marker else {})}
    async with SimCluster(**options) as cluster:
        yield cluster


@pytest.fixture
async def api(sim: SimCluster, tmp_path: Path) -> AsyncIterator[ApiClient]:
    path = sim.write_kubeconfig(tmp_path / "kubeconfig")
    configuration = Configuration()
    await load_kube_config(config_file=str(path), client_configuration=configuration)
    async with ApiClient(configuration) as client:
        yield client


@pytest.fixture
def core(api: ApiClient) -> CoreV1Api:
    return CoreV1Api(api)


@pytest.fixture
def networking(api: ApiClient) -> NetworkingV1Api:
    return NetworkingV1Api(api)


@pytest.fixture
async def control(sim: SimCluster) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {sim.token}"}
    verify = sim.ssl_context() or True  # Over HTTPS, the sim's own CA and nothing else.
    async with httpx.AsyncClient(base_url=sim.url, headers=headers, verify=verify) as client:
        yield client


@pytest.fixture
async def namespace(core: CoreV1Api) -> str:
    return await make_namespace(core, "lab-one")
