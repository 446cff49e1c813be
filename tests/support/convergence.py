"""End-of-run checks: labs converged, no orphaned or duplicate objects, complete history."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from typing import Any

from kubernetes_asyncio.client import CoreV1Api, NetworkingV1Api

from labd.config import Config
from labd.db.store import LabStore
from labd.kube.builder import LAB_ID_LABEL, MANAGED_SELECTOR, USER_LABEL
from labd.kube.client import create_api_client
from labd.lab.machine import LabState

__all__ = ["converged", "history_complete", "no_duplicates", "no_orphans"]


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


async def no_duplicates(store: LabStore, config: Config) -> int:
    """Check that each running lab has one set of objects, all of them its own.

    Every object labd manages (namespace, pod, ConfigMap, Secrets, Service,
    NetworkPolicy, ResourceQuota) that is not being deleted carries the
    lab-id label of the running lab of its namespace: none is left from an
    earlier lab of the user or made for a lab row that lost a race; each
    user has one namespace and each namespace one pod.  Run after
    `no_orphans`.  Returns the number of objects checked.
    """
    running = {lab.namespace: lab for lab in await store.list_labs([LabState.RUNNING])}
    api_client = await create_api_client(config.kubernetes)
    try:
        core, networking = CoreV1Api(api_client), NetworkingV1Api(api_client)
        listings: dict[str, Any] = {
            "Namespace": core.list_namespace,
            "Pod": core.list_pod_for_all_namespaces,
            "ConfigMap": core.list_config_map_for_all_namespaces,
            "Secret": core.list_secret_for_all_namespaces,
            "Service": core.list_service_for_all_namespaces,
            "ResourceQuota": core.list_resource_quota_for_all_namespaces,
            "NetworkPolicy": networking.list_network_policy_for_all_namespaces,
        }
        objects = {
            kind: (await method(label_selector=MANAGED_SELECTOR)).items
            for kind, method in listings.items()
        }
    finally:
        await api_client.close()
    per_lab: Counter[tuple[str, str]] = Counter()
    checked = 0
    for kind, items in objects.items():
        for item in items:
            meta = item.metadata
            namespace = meta.name if kind == "Namespace" else meta.namespace
            if meta.deletion_timestamp or namespace not in running:
                continue  # Being deleted, or in a namespace being deleted (see no_orphans).
            lab = running[namespace]
            where = f"{kind} {namespace}/{meta.name}"
            assert meta.labels.get(LAB_ID_LABEL) == lab.id, f"{where} is not lab {lab.id}'s"
            assert meta.labels.get(USER_LABEL) == lab.slug, f"{where} is not {lab.slug}'s"
            per_lab[lab.slug, kind] += 1
            checked += 1
    namespaces_or_pods = {key: n for key, n in per_lab.items() if key[1] in ("Namespace", "Pod")}
    assert all(n == 1 for n in namespaces_or_pods.values()), namespaces_or_pods
    assert len(namespaces_or_pods) == 2 * len(running), (namespaces_or_pods, sorted(running))
    return checked


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
