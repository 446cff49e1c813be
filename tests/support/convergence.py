"""End-of-run checks: labs converged, no orphaned objects, complete history."""

from __future__ import annotations

import asyncio
import itertools
import time

from kubernetes_asyncio.client import CoreV1Api

from labd.config import Config
from labd.db.store import LabStore
from labd.kube.builder import MANAGED_SELECTOR
from labd.kube.client import create_api_client
from labd.lab.machine import LabState

__all__ = ["converged", "history_complete", "no_orphans"]


async def converged(store: LabStore, wanted: dict[str, bool], *, within: float = 90) -> None:
    """Wait until each lab is running (True) or gone (False), as last asked."""
    deadline = time.monotonic() + within
    pending: dict[str, str] = {}
    while time.monotonic() < deadline:
        pending = {}
        for username, running in wanted.items():
            lab = await store.get_current_lab(username)
            state = lab.state if lab else None
            if running and state is not LabState.RUNNING:
                pending[username] = f"wanted running, is {state}"
            if not running and state is not None:
                pending[username] = f"wanted gone, is {state}"
        if not pending:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"labs did not converge: {pending}")


async def no_orphans(store: LabStore, config: Config) -> int:
    """Check that labd's objects in the cluster are exactly the running labs'.

    Returns the number of running labs.
    """
    running = {lab.namespace for lab in await store.list_labs([LabState.RUNNING])}
    api_client = await create_api_client(config.kubernetes)
    try:
        core = CoreV1Api(api_client)
        namespaces = await core.list_namespace(label_selector=MANAGED_SELECTOR)
        pods = await core.list_pod_for_all_namespaces(label_selector=MANAGED_SELECTOR)
    finally:
        await api_client.close()
    live = {ns.metadata.name for ns in namespaces.items if ns.status.phase != "Terminating"}
    assert live == running
    assert {
        pod.metadata.namespace for pod in pods.items if not pod.metadata.deletion_timestamp
    } == running
    return len(running)


async def history_complete(store: LabStore) -> int:
    """Check every lab's history: versions 1..N, one row each, chained states.

    Returns the number of audit rows checked.
    """
    labs = await store.list_labs()
    assert labs
    rows = 0
    for lab in labs:
        history = await store.lab_history(lab.id)
        assert [row.version for row in history] == list(range(1, lab.version + 1)), lab.id
        assert history[-1].to_state == lab.state.value
        for earlier, later in itertools.pairwise(history):
            assert earlier.to_state == later.from_state
        rows += len(history)
    return rows
