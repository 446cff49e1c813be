"""Watches: resume from a version, 410 Gone, bookmarks, timeouts, selector edges."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from kubernetes_asyncio.client import CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.watch import Watch

from labd.sim import SimCluster
from tests.support.kubeapi import manifest
from tests.support.waiting import eventually


async def _collect(
    core: CoreV1Api, namespace: str, count: int, **kwargs: Any
) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    async with Watch() as watch:
        async for event in watch.stream(
            core.list_namespaced_config_map, namespace, timeout_seconds=5, **kwargs
        ):
            events.append(event)
            if len(events) == count:
                break
    return events


def _summary(events: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(e["type"], e["raw_object"]["metadata"].get("name", "")) for e in events]


async def test_watch_resumes_after_a_version(core: CoreV1Api, namespace: str) -> None:
    listing = await core.list_namespaced_config_map(namespace)
    version = listing.metadata.resource_version
    await core.create_namespaced_config_map(namespace, manifest({"metadata": {"name": "env"}}))
    await core.patch_namespaced_config_map("env", namespace, {"data": {"A": "1"}})
    await core.delete_namespaced_config_map("env", namespace)
    events = await _collect(core, namespace, 3, resource_version=version)
    assert _summary(events) == [("ADDED", "env"), ("MODIFIED", "env"), ("DELETED", "env")]
    versions = [int(e["raw_object"]["metadata"]["resourceVersion"]) for e in events]
    assert versions == sorted(versions)
    assert versions[0] > int(version)
    assert events[1]["object"].data == {"A": "1"}


async def test_watch_without_a_version_starts_with_the_current_state(
    core: CoreV1Api, namespace: str
) -> None:
    await core.create_namespaced_config_map(namespace, manifest({"metadata": {"name": "env"}}))
    events = await _collect(core, namespace, 2)
    assert sorted(_summary(events)) == [("ADDED", "env"), ("ADDED", "kube-root-ca.crt")]


async def test_watch_follows_live_changes(core: CoreV1Api, namespace: str) -> None:
    version = (await core.list_namespaced_config_map(namespace)).metadata.resource_version
    watching = asyncio.create_task(_collect(core, namespace, 2, resource_version=version))
    await asyncio.sleep(0.1)
    await core.create_namespaced_config_map(namespace, manifest({"metadata": {"name": "one"}}))
    await core.create_namespaced_config_map(namespace, manifest({"metadata": {"name": "two"}}))
    events = await asyncio.wait_for(watching, 5)
    assert _summary(events) == [("ADDED", "one"), ("ADDED", "two")]


async def test_label_selected_watch_sees_objects_enter_and_leave(
    core: CoreV1Api, namespace: str
) -> None:
    version = (await core.list_namespaced_config_map(namespace)).metadata.resource_version
    await core.create_namespaced_config_map(namespace, manifest({"metadata": {"name": "env"}}))
    await core.patch_namespaced_config_map("env", namespace, {"metadata": {"labels": {"a": "b"}}})
    await core.patch_namespaced_config_map("env", namespace, {"data": {"k": "v"}})
    await core.patch_namespaced_config_map(
        "env", namespace, {"metadata": {"labels": {"a": None}}},
        _content_type="application/merge-patch+json",  # type: ignore[call-arg]
    )  # fmt: skip
    events = await _collect(core, namespace, 3, resource_version=version, label_selector="a=b")
    assert _summary(events) == [("ADDED", "env"), ("MODIFIED", "env"), ("DELETED", "env")]


async def test_watch_across_namespaces_with_field_selector(
    core: CoreV1Api, namespace: str
) -> None:
    version = (await core.list_config_map_for_all_namespaces()).metadata.resource_version
    await core.create_namespaced_config_map(namespace, manifest({"metadata": {"name": "env"}}))
    await core.create_namespaced_config_map(namespace, manifest({"metadata": {"name": "other"}}))
    async with Watch() as watch:
        stream = watch.stream(
            core.list_config_map_for_all_namespaces,
            resource_version=version,
            field_selector="metadata.name=other",
            timeout_seconds=5,
        )
        event = await stream.__anext__()
    assert _summary([event]) == [("ADDED", "other")]


@pytest.mark.sim(watch_window=5)
async def test_too_old_version_is_gone(core: CoreV1Api, namespace: str) -> None:
    version = (await core.list_namespaced_config_map(namespace)).metadata.resource_version
    for index in range(8):
        await core.create_namespaced_config_map(
            namespace, manifest({"metadata": {"name": f"env-{index}"}})
        )
    with pytest.raises(ApiException) as caught:
        await _collect(core, namespace, 1, resource_version=version)
    assert caught.value.status == 410
    assert "Expired" in str(caught.value.reason)
    fresh = (await core.list_namespaced_config_map(namespace)).metadata.resource_version
    await core.create_namespaced_config_map(namespace, manifest({"metadata": {"name": "after"}}))
    events = await _collect(core, namespace, 1, resource_version=fresh)
    assert _summary(events) == [("ADDED", "after")]


async def test_bookmarks_carry_the_current_version(core: CoreV1Api, namespace: str) -> None:
    version = (await core.list_namespaced_config_map(namespace)).metadata.resource_version
    await core.create_namespaced_config_map(namespace, manifest({"metadata": {"name": "env"}}))
    events = await _collect(
        core, namespace, 2, resource_version=version, allow_watch_bookmarks=True
    )
    assert _summary(events) == [("ADDED", "env"), ("BOOKMARK", "")]
    bookmark = events[1]["raw_object"]
    assert bookmark["kind"] == "ConfigMap"
    # Nothing was written after the config map: the bookmark carries its version.
    assert (
        bookmark["metadata"]["resourceVersion"]
        == (events[0]["raw_object"]["metadata"]["resourceVersion"])
    )


async def test_no_bookmarks_unless_asked(core: CoreV1Api, namespace: str) -> None:
    version = (await core.list_namespaced_config_map(namespace)).metadata.resource_version
    events: list[dict[str, Any]] = []
    async with Watch() as watch:
        async for event in watch.stream(
            core.list_namespaced_config_map, namespace, resource_version=version,
            timeout_seconds=1,
        ):  # fmt: skip
            events.append(event)
    assert events == []


async def test_server_side_timeout_ends_the_stream(core: CoreV1Api, namespace: str) -> None:
    version = (await core.list_namespaced_config_map(namespace)).metadata.resource_version
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with Watch() as watch:
        async for _ in watch.stream(
            core.list_namespaced_config_map, namespace, resource_version=version,
            timeout_seconds=1,
        ):  # fmt: skip
            pass
    assert 0.9 <= loop.time() - started < 3


async def test_closed_watches_are_forgotten(
    sim: SimCluster, core: CoreV1Api, namespace: str
) -> None:
    def config_map_watches() -> int:
        return sum(w.resource.plural == "configmaps" for w in sim.registry.watchers())

    await core.create_namespaced_config_map(namespace, manifest({"metadata": {"name": "env"}}))
    # The client stops reading after one event and closes its connection.
    assert len(await _collect(core, namespace, 1)) == 1

    async def forgotten() -> bool:
        return config_map_watches() == 0

    await eventually(forgotten)


async def test_dry_run_is_refused_rather_than_persisted(core: CoreV1Api, namespace: str) -> None:
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_config_map(
            namespace, manifest({"metadata": {"name": "env"}}), dry_run="All"
        )
    assert caught.value.status == 400
    assert (
        await core.list_namespaced_config_map(namespace, field_selector="metadata.name=env")
    ).items == []
