"""Fixtures of the real-apiserver tier: one genuine control plane per session.

The tier needs kube-apiserver and kube-controller-manager v1.20.2 (built by
``scripts/kube-apiserver/build``) and etcd.  When they are missing, every
test of the tier is skipped with the reason; it never passes without them.

The ``sim`` fixture here is a `RealCluster`, not a `SimCluster`: the test
functions of tests/core that do not inject faults are imported into this
package and run unchanged on the real API server, with labd's own fixtures
(``labd``, ``labd_factory``) from `tests.support.core`.  After each test the
namespaces it made are deleted, and waited for, so the next test starts
from an empty cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.controlplane import ControlPlane, missing_binaries
from tests.support.realcluster import RealCluster

__all__ = ["real_cluster", "sim"]

_TLS_CLOSE = 0.25
"""Seconds closed TLS connections get to finish closing (aiohttp's advice)."""


def pytest_configure(config: pytest.Config) -> None:
    # The modules of tests/sim imported here use it; tests/sim registers it
    # only for its own directory.
    config.addinivalue_line("markers", "sim(**options): SimCluster options for the test")


@pytest.fixture(scope="session")
def real_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealCluster]:
    """etcd, kube-apiserver, kube-controller-manager and the sim's kubelet."""
    reason = missing_binaries()
    if reason is not None:
        pytest.skip(reason)
    control_plane = ControlPlane(tmp_path_factory.mktemp("realk8s"))
    control_plane.start()
    try:
        cluster = RealCluster(control_plane)
        cluster.start()
        try:
            yield cluster
        finally:
            cluster.stop()
    finally:
        control_plane.stop()


@pytest.fixture
async def sim(real_cluster: RealCluster) -> AsyncIterator[RealCluster]:
    """The real cluster under the name the shared tests use; emptied after each test.

    Its teardown runs in the test's event loop after labd's (labd depends on
    it): the pause lets the TLS connections labd just closed finish closing
    before the loop ends, as aiohttp's documentation advises, or they are
    reported as unclosed transports when collected.
    """
    yield real_cluster
    await asyncio.sleep(_TLS_CLOSE)
    real_cluster.reset()
