"""labd's lifecycle on a real API server: the tests of tests/core, run unchanged.

Each test function below is the one in tests/core; collected here, it gets
this package's ``sim`` fixture, a genuine kube-apiserver with RBAC (labd
holds only the rights of ``deploy/rbac.yaml``), the namespace controller
and the sim's kubelet, on SQLite and PostgreSQL.  The tests that inject
faults through the sim's fault API stay sim-only: a real API server has no
such API.
"""

from __future__ import annotations

import functools

import pytest

from tests.core import test_convergence
from tests.core.test_lifecycle import (
    test_concurrent_creates_one_wins,
    test_concurrent_deletes_share_one_operation,
    test_delete_during_spawn_cancels_it,
    test_delete_to_gone,
    test_exited_lab_is_replaced,
    test_pod_ends_while_running,
    test_spawn_timeout,
    test_spawn_to_running,
)
from tests.support.core import LabdFactory
from tests.support.realcluster import RealCluster
from tests.support.waiting import eventually

__all__ = [
    "test_concurrent_creates_one_wins",
    "test_concurrent_deletes_share_one_operation",
    "test_delete_during_spawn_cancels_it",
    "test_delete_to_gone",
    "test_exited_lab_is_replaced",
    "test_pod_ends_while_running",
    "test_spawn_timeout",
    "test_spawn_to_running",
]


async def test_restart_adopts_and_removes_orphans(
    labd_factory: LabdFactory, sim: RealCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The test of tests/core, waiting as long as a real namespace controller takes.

    labd deletes an orphaned namespace with its pod still running.  The
    namespace controller deletes the pod, then checks the namespace again
    only after half the pod's grace period plus one second (16 s for the
    default 30 s), where the sim removes the namespace as soon as it is
    empty (docs/sim.md).  Everything else is asserted unchanged.
    """
    patient = functools.partial(eventually, within=40)
    monkeypatch.setattr(test_convergence, "eventually", patient)
    await test_convergence.test_restart_adopts_and_removes_orphans(labd_factory, sim)  # type: ignore[arg-type]
