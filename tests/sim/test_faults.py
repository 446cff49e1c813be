"""Fault injection and request statistics, seen through the real client."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes_asyncio.client import CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch

from labd.sim import SimCluster
from tests.support.kubeapi import manifest, pod, status_of
from tests.support.waiting import eventually


def _config_map(name: str) -> Any:
    return manifest({"metadata": {"name": name}})


async def _version(core: CoreV1Api, namespace: str) -> str:
    return str((await core.list_namespaced_config_map(namespace)).metadata.resource_version)


async def _watch_all(core: CoreV1Api, namespace: str, **kwargs: Any) -> list[str]:
    names: list[str] = []
    async with Watch() as watch:
        async for event in watch.stream(core.list_namespaced_config_map, namespace, **kwargs):
            names.append(event["raw_object"]["metadata"].get("name", event["type"]))
    return names


@pytest.mark.parametrize(
    ("status", "reason"), [(500, "InternalError"), (503, "ServiceUnavailable")]
)
async def test_error_fault_answers_a_status(
    sim: SimCluster, core: CoreV1Api, namespace: str, status: int, reason: str
) -> None:
    sim.faults.add_error("create", "configmaps", rate=1.0, status=status)
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_config_map(namespace, _config_map("env"))
    assert caught.value.status == status
    body = status_of(caught.value)
    assert (body["kind"], body["status"], body["reason"]) == ("Status", "Failure", reason)
    assert body["code"] == status
    # Other verbs and kinds are served.
    await core.list_namespaced_config_map(namespace)
    await core.create_namespaced_secret(namespace, manifest({"metadata": {"name": "s"}}))
    assert sim.stats.errors[f"create configmaps {status}"] == 1
    sim.faults.clear()
    await core.create_namespaced_config_map(namespace, _config_map("env"))


async def test_throttling_fault_says_when_to_retry(
    sim: SimCluster, core: CoreV1Api, namespace: str
) -> None:
    sim.faults.add_error("*", "config*", status=429)
    with pytest.raises(ApiException) as caught:
        await core.list_namespaced_config_map(namespace)
    assert caught.value.status == 429
    assert caught.value.headers is not None
    assert caught.value.headers["Retry-After"] == "1"
    assert status_of(caught.value)["details"] == {"retryAfterSeconds": 1}


async def test_error_rate_fails_a_share(sim: SimCluster, core: CoreV1Api, namespace: str) -> None:
    sim.faults.add_error("create", "configmaps", rate=0.5)
    codes: list[int] = []
    for index in range(40):
        try:
            await core.create_namespaced_config_map(namespace, _config_map(f"env-{index}"))
        except ApiException as error:
            codes.append(error.status)
    failures = len(codes)
    assert set(codes) == {500}
    assert 8 <= failures <= 32
    assert len(sim.objects("configmaps", namespace)) == 40 - failures + 1  # + kube-root-ca.crt


async def test_latency_fault_delays_matching_requests(
    sim: SimCluster, core: CoreV1Api, namespace: str
) -> None:
    sim.faults.add_latency("list", "configmaps", seconds=0.5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await core.list_namespaced_config_map(namespace)
    assert loop.time() - started >= 0.5
    started = loop.time()
    await core.list_namespaced_secret(namespace)
    assert loop.time() - started < 0.5


async def test_watch_dropped_after_n_events(
    sim: SimCluster, core: CoreV1Api, namespace: str
) -> None:
    version = await _version(core, namespace)
    for index in range(5):
        await core.create_namespaced_config_map(namespace, _config_map(f"env-{index}"))
    sim.faults.drop_watches(after_events=2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    names = await _watch_all(core, namespace, resource_version=version, timeout_seconds=5)
    assert names == ["env-0", "env-1"]
    assert loop.time() - started < 2


async def test_dropped_watch_is_resumed_by_the_client(
    sim: SimCluster, core: CoreV1Api, namespace: str
) -> None:
    version = await _version(core, namespace)
    for index in range(3):
        await core.create_namespaced_config_map(namespace, _config_map(f"env-{index}"))
    sim.faults.drop_watches(after_events=1)
    sim.stats.reset()
    names: list[str] = []
    async with Watch() as watch:
        # No timeout: kubernetes-asyncio reconnects from the last version it saw.
        async for event in watch.stream(
            core.list_namespaced_config_map, namespace, resource_version=version
        ):
            names.append(event["raw_object"]["metadata"]["name"])
            if len(names) == 3:
                break
    assert names == ["env-0", "env-1", "env-2"]
    assert sim.stats.requests["watch configmaps"] >= 3


async def test_watch_drop_rate(sim: SimCluster, core: CoreV1Api, namespace: str) -> None:
    version = await _version(core, namespace)
    await core.create_namespaced_config_map(namespace, _config_map("env"))
    sim.faults.drop_watches(rate=1.0)
    assert await _watch_all(core, namespace, resource_version=version, timeout_seconds=5) == []


async def test_silent_watch_stays_open_and_sends_nothing(
    sim: SimCluster, core: CoreV1Api, namespace: str
) -> None:
    version = await _version(core, namespace)
    sim.faults.silence_watches()
    loop = asyncio.get_running_loop()
    started = loop.time()
    watching = asyncio.create_task(
        _watch_all(
            core,
            namespace,
            resource_version=version,
            allow_watch_bookmarks=True,
            timeout_seconds=1,
        )
    )
    await asyncio.sleep(0.1)
    await core.create_namespaced_config_map(namespace, _config_map("env"))
    assert await watching == []
    assert loop.time() - started >= 0.9


async def test_forced_gone(sim: SimCluster, core: CoreV1Api, namespace: str) -> None:
    version = await _version(core, namespace)
    await core.create_namespaced_config_map(namespace, _config_map("env"))
    sim.faults.expire_next_watches(1)
    with pytest.raises(ApiException) as caught:
        await _watch_all(core, namespace, resource_version=version, timeout_seconds=1)
    assert caught.value.status == 410
    names = await _watch_all(core, namespace, resource_version=version, timeout_seconds=1)
    assert names == ["env"]


async def test_faults_spare_the_kubelet(sim: SimCluster, core: CoreV1Api, namespace: str) -> None:
    await core.create_namespaced_pod(namespace, pod("nb"))
    sim.faults.add_error("*", "*", rate=1.0)
    sim.faults.silence_watches()

    async def running() -> bool:
        (current,) = sim.objects("pods", namespace)
        return bool(current["status"]["phase"] == "Running")

    await eventually(running)
    with pytest.raises(ApiException):
        await core.read_namespaced_pod("nb", namespace)


async def test_stats_count_client_calls_by_verb_and_resource(
    sim: SimCluster, core: CoreV1Api, namespace: str
) -> None:
    sim.stats.reset()
    await core.create_namespaced_pod(namespace, pod("nb"))

    async def running() -> bool:
        (current,) = sim.objects("pods", namespace)
        return bool(current["status"]["phase"] == "Running")

    await eventually(running)
    await core.read_namespaced_pod("nb", namespace)
    await core.list_pod_for_all_namespaces(label_selector="a=b")
    await core.patch_namespaced_pod("nb", namespace, {"metadata": {"labels": {"a": "b"}}})
    await core.delete_namespaced_pod("nb", namespace, grace_period_seconds=0)
    snapshot = sim.stats.snapshot()
    assert snapshot["requests"] == {
        "create pods": 1,
        "delete pods": 1,
        "get pods": 1,
        "list pods": 1,
        "patch pods": 1,
    }
    assert snapshot["total"] == 5
    # The kubelet's own calls are counted apart.
    assert sim.stats.internal["create pods/binding"] == 1
    assert sim.stats.internal["patch pods/status"] >= 2
    sim.stats.reset()
    assert sim.stats.snapshot()["total"] == 0
