"""The namespace controller: default service account, termination."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes_asyncio.client import CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from labd.sim import SimCluster
from tests.support.kubeapi import manifest, pod, raw, status_of
from tests.support.waiting import eventually


@pytest.mark.sim(namespace_sa_delay=0.3)
async def test_default_service_account_appears_after_the_delay(core: CoreV1Api) -> None:
    loop = asyncio.get_running_loop()
    created = await core.create_namespace(manifest({"metadata": {"name": "lab-new"}}))
    started = loop.time()
    assert created.status.phase == "Active"
    assert created.metadata.labels == {"kubernetes.io/metadata.name": "lab-new"}
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_pod("lab-new", pod("nb"))
    assert caught.value.status == 403
    assert 'serviceaccount "default" not found' in status_of(caught.value)["message"]

    async def has_account() -> bool:
        accounts = await core.list_namespaced_service_account("lab-new")
        return [a.metadata.name for a in accounts.items] == ["default"]

    await eventually(has_account)
    assert loop.time() - started >= 0.25
    await core.create_namespaced_pod("lab-new", pod("nb"))


async def test_namespace_termination_removes_everything(
    sim: SimCluster, core: CoreV1Api, namespace: str
) -> None:
    await core.create_namespaced_config_map(namespace, manifest({"metadata": {"name": "env"}}))
    await core.create_namespaced_secret(namespace, manifest({"metadata": {"name": "token"}}))
    await core.create_namespaced_service(
        namespace, manifest({"metadata": {"name": "lab"}, "spec": {"ports": [{"port": 8888}]}})
    )
    await core.create_namespaced_pod(namespace, pod("nb"))

    async def running() -> bool:
        return (await core.read_namespaced_pod("nb", namespace)).status.phase == "Running"

    await eventually(running)
    code, deleted = await raw(core.delete_namespace(namespace, _preload_content=False))
    assert code == 200
    assert deleted["status"]["phase"] == "Terminating"
    assert deleted["metadata"]["deletionTimestamp"]
    terminating = await core.read_namespace(namespace)
    assert terminating.status.phase == "Terminating"
    assert terminating.metadata.deletion_timestamp is not None
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_config_map(
            namespace, manifest({"metadata": {"name": "late"}})
        )
    assert caught.value.status == 403
    assert "because it is being terminated" in status_of(caught.value)["message"]

    async def gone() -> bool:
        try:
            await core.read_namespace(namespace)
        except ApiException as error:
            return bool(error.status == 404)
        return False

    await eventually(gone)
    for kind in ("pods", "configmaps", "secrets", "services", "serviceaccounts", "events"):
        assert sim.objects(kind, namespace) == [], kind


@pytest.mark.sim(kubelet=False)
async def test_termination_waits_for_graceful_pods(
    sim: SimCluster, core: CoreV1Api, namespace: str
) -> None:
    await core.create_namespaced_pod(namespace, pod("nb"))
    await core.create_namespaced_pod_binding(
        "nb",
        namespace,
        manifest({"metadata": {"name": "nb"}, "target": {"kind": "Node", "name": "elsewhere"}}),
        _preload_content=False,
    )
    await core.delete_namespace(namespace)
    await asyncio.sleep(0.3)
    # Without a kubelet the bound pod stays Terminating, and so does its namespace.
    held = await core.read_namespaced_pod("nb", namespace)
    assert held.metadata.deletion_timestamp is not None
    assert held.metadata.deletion_grace_period_seconds == 30
    assert (await core.read_namespace(namespace)).status.phase == "Terminating"
    code, again = await raw(core.delete_namespace(namespace, _preload_content=False))
    assert code == 200
    assert again["status"] == {"phase": "Terminating"}
    await core.delete_namespaced_pod("nb", namespace, grace_period_seconds=0)

    async def gone() -> bool:
        return not any(n["metadata"]["name"] == namespace for n in sim.objects("namespaces"))

    await eventually(gone)
