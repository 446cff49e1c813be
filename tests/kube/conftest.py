"""Fixtures for the Kubernetes layer's tests.

Everything runs against a real `SimCluster` on 127.0.0.1 through
kubernetes-asyncio, configured by `create_api_client` from the kubeconfig
the sim writes: the same code path as a real cluster.  Options for the
cluster come from the ``sim`` marker (registered by ``tests/sim``'s
conftest only for its own directory, so registered again here), e.g.
``@pytest.mark.sim(namespace_sa_delay=0.3)``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from labd.config import Config, KubernetesConfig
from labd.kube.client import RetryPolicy, create_api_client
from labd.kube.storage import LabKube
from labd.sim import SimCluster

#: Small delays keep the suite fast while keeping every step asynchronous.
SIM_DEFAULTS: dict[str, Any] = {
    "pod_start_delay": 0.05,
    "pod_stop_delay": 0.05,
    "namespace_sa_delay": 0.0,
    "bookmark_interval": 0.2,
    "seed": 7,
}

#: Retries fast enough for tests, with the default number of attempts.
FAST_RETRY = RetryPolicy(attempts=3, initial=0.01, maximum=0.05)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sim(**options): SimCluster options for the test")


@pytest.fixture
async def sim(request: pytest.FixtureRequest) -> AsyncIterator[SimCluster]:
    marker = request.node.get_closest_marker("sim")
    options = {**SIM_DEFAULTS, **(marker.kwargs if marker else {})}
    async with SimCluster(**options) as cluster:
        yield cluster


@pytest.fixture
def config(sim: SimCluster, tmp_path: Path) -> Config:
    path = sim.write_kubeconfig(tmp_path / "kubeconfig")
    return Config(
        kubernetes=KubernetesConfig(kubeconfig=path, request_timeout=5.0, watch_timeout=2.0)
    )


@pytest.fixture
async def api_client(config: Config) -> AsyncIterator[ApiClient]:
    client = await create_api_client(config.kubernetes)
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def calls() -> list[tuple[str, str, bool]]:
    """Every call the code under test reported to its hook."""
    return []


@pytest.fixture
def kube(api_client: ApiClient, config: Config, calls: list[tuple[str, str, bool]]) -> LabKube:
    return LabKube(
        api_client,
        config,
        retry=FAST_RETRY,
        on_call=lambda verb, kind, error: calls.append((verb, kind, error)),
    )
