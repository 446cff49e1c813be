"""LabKube against the simulated cluster: idempotent creates, deletes, LISTs."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from kubernetes_asyncio.client import (
    ApiClient,
    CoreV1Api,
    V1ConfigMap,
    V1Namespace,
    V1ObjectMeta,
)

from labd.config import Config, LabConfig, VolumeConfig
from labd.kube.builder import LAB_ID_LABEL, LabObjects, build_lab_objects
from labd.kube.client import KubeError
from labd.kube.storage import LabKube, NamespaceTerminatingError, _deleted_at_once, pod_status
from labd.sim import SimCluster
from tests.support.labs import lab_build
from tests.support.waiting import eventually


def alice(config: Config, *, lab_id: str | None = None) -> LabObjects:
    return build_lab_objects(lab_build("alice", lab_id=lab_id), config)


async def wait_for_namespace_gone(kube: LabKube, namespace: str) -> None:
    await eventually(lambda: kube.namespace_gone(namespace))


async def wait_for_pod_running(sim: SimCluster, namespace: str) -> None:
    """Wait until the sim's kubelet runs the pod: one not yet running stops at once."""

    def running() -> bool:
        pods = sim.objects("pods", namespace)
        return bool(pods) and pods[0].get("status", {}).get("phase") == "Running"

    await eventually(running, what=f"pod in {namespace} Running")


async def test_create_makes_every_object(kube: LabKube, config: Config, sim: SimCluster) -> None:
    objects = alice(config)
    await kube.create_lab_objects(objects)
    for resource, name in [
        ("namespaces", "labd-alice"),
        ("configmaps", "alice-nb-env"),
        ("secrets", "alice-nb"),
        ("networkpolicies", "alice-nb"),
        ("services", "lab"),
        ("pods", "alice-nb"),
    ]:
        namespace = None if resource == "namespaces" else "labd-alice"
        found = [o for o in sim.objects(resource, namespace) if o["metadata"]["name"] == name]
        assert len(found) == 1, (resource, name)
        assert (
            found[0]["metadata"]["labels"][LAB_ID_LABEL]
            == objects.pod["metadata"]["labels"][LAB_ID_LABEL]
        )


async def test_create_quota_and_claims(api_client: ApiClient, config: Config) -> None:
    config = config.model_copy(
        update={
            "lab": LabConfig(
                resource_quota=True,
                volumes=[VolumeConfig(name="home", mount_path="/home", storage=2**30)],
            )
        }
    )
    kube = LabKube(api_client, config)
    await kube.create_lab_objects(alice(config))
    await kube.create_lab_objects(alice(config))
    core = CoreV1Api(api_client)
    quota = await core.read_namespaced_resource_quota("alice-nb", "labd-alice")
    assert quota.spec.hard == {"limits.cpu": "1", "limits.memory": str(4 * 2**30)}
    claim = await core.read_namespaced_persistent_volume_claim("alice-nb-home", "labd-alice")
    assert claim.spec.resources.requests == {"storage": str(2**30)}


async def test_create_twice_is_fine(
    kube: LabKube, config: Config, sim: SimCluster, calls: list[tuple[str, str, bool]]
) -> None:
    objects = alice(config)
    await kube.create_lab_objects(objects)
    calls.clear()
    await kube.create_lab_objects(objects)
    assert len(sim.objects("pods", "labd-alice")) == 1
    # Every create met 409 and read the object back; none counts as an error.
    assert [(verb, kind) for verb, kind, _ in calls] == [
        (verb, o["kind"]) for o in objects.in_creation_order() for verb in ("create", "get")
    ]
    assert not any(error for _, _, error in calls)


async def test_create_after_partial_attempt_finishes_the_job(
    kube: LabKube, config: Config, sim: SimCluster
) -> None:
    objects = alice(config)
    sim.faults.add_error("create", "services", status=403)
    with pytest.raises(KubeError) as caught:
        await kube.create_lab_objects(objects)
    assert caught.value.kind == "Service"
    assert caught.value.status == 403
    assert sim.objects("pods", "labd-alice") == []
    sim.faults.clear()
    await kube.create_lab_objects(objects)
    assert len(sim.objects("pods", "labd-alice")) == 1


@pytest.mark.parametrize("kind", ["Namespace", "ConfigMap", "Pod"])
async def test_foreign_object_with_the_same_name_is_a_conflict(
    kube: LabKube, config: Config, kind: str
) -> None:
    mine = alice(config)
    other = alice(config, lab_id="00000000-0000-4000-8000-000000000000")
    if kind != "Namespace":
        await kube._create(mine.namespace)
    # The other lab's object of this kind is in the way.
    (manifest,) = [m for m in other.in_creation_order() if m["kind"] == kind]
    await kube._create(manifest)
    with pytest.raises(KubeError) as caught:
        await kube.create_lab_objects(mine)
    error = caught.value
    assert (error.kind, error.status, error.reason) == (kind, 409, "Conflict")
    assert "belongs to lab 00000000-0000-4000-8000-000000000000" in str(error)
    assert str(error).startswith(f"create {kind} ")


async def test_object_not_made_by_labd_is_a_conflict(
    kube: LabKube, config: Config, api_client: ApiClient
) -> None:
    objects = alice(config)
    await kube._create(objects.namespace)
    core = CoreV1Api(api_client)
    await core.create_namespaced_config_map(
        "labd-alice", V1ConfigMap(metadata=V1ObjectMeta(name="alice-nb-env"))
    )
    with pytest.raises(KubeError, match="belongs to something other than labd"):
        await kube.create_lab_objects(objects)


@pytest.mark.sim(pod_stop_delay=0.5)
async def test_terminating_namespace_raises_distinct_error(
    kube: LabKube, config: Config, sim: SimCluster
) -> None:
    old = alice(config, lab_id="00000000-0000-4000-8000-000000000001")
    await kube.create_lab_objects(old)
    await wait_for_pod_running(sim, "labd-alice")
    # The namespace stays Terminating while its running pod takes 0.5 s to stop.
    await kube.delete_namespace("labd-alice")
    namespace = sim.objects("namespaces")
    assert any(
        ns["metadata"]["name"] == "labd-alice" and ns["status"]["phase"] == "Terminating"
        for ns in namespace
    )
    with pytest.raises(NamespaceTerminatingError) as caught:
        await kube.create_lab_objects(alice(config))
    assert caught.value.name == "labd-alice"
    assert "being deleted" in str(caught.value)
    await wait_for_namespace_gone(kube, "labd-alice")
    await kube.create_lab_objects(alice(config))


@pytest.mark.sim(pod_stop_delay=0.5)
async def test_objects_refused_in_terminating_namespace(
    kube: LabKube, config: Config, sim: SimCluster
) -> None:
    objects = alice(config)
    await kube.create_lab_objects(objects)
    await wait_for_pod_running(sim, "labd-alice")
    await kube.delete_namespace("labd-alice")
    fresh = dataclasses.replace(objects, config_map={**objects.config_map})
    fresh.config_map["metadata"] = {**fresh.config_map["metadata"], "name": "other-env"}
    with pytest.raises(NamespaceTerminatingError) as caught:
        await kube._create(fresh.config_map)
    assert caught.value.kind == "ConfigMap"
    assert caught.value.status == 403


@pytest.mark.sim(namespace_sa_delay=0.3)
async def test_pod_waits_for_the_service_account(
    kube: LabKube, config: Config, sim: SimCluster
) -> None:
    await kube.create_lab_objects(alice(config))
    assert len(sim.objects("pods", "labd-alice")) == 1
    assert sim.stats.errors["create pods 403"] >= 1


async def test_delete_missing_objects_is_fine(kube: LabKube) -> None:
    assert await kube.delete_pod("labd-nobody", "nobody-nb", grace_seconds=0)
    await kube.delete_namespace("labd-nobody")
    assert await kube.pod_gone("labd-nobody", "nobody-nb")
    assert await kube.namespace_gone("labd-nobody")


@pytest.mark.sim(pod_stop_delay=0.5)
async def test_a_pod_delete_says_whether_the_pod_is_gone(
    kube: LabKube, config: Config, sim: SimCluster
) -> None:
    """Gone at once with grace 0; kept, marked, for a grace period (the watch says when)."""
    await kube.create_lab_objects(alice(config))
    await kube.create_lab_objects(build_lab_objects(lab_build("bob"), config))
    await wait_for_pod_running(sim, "labd-alice")
    await wait_for_pod_running(sim, "labd-bob")
    assert not await kube.delete_pod("labd-alice", "alice-nb", grace_seconds=30)
    (marked,) = sim.objects("pods", "labd-alice")
    assert marked["metadata"]["deletionGracePeriodSeconds"] == 30
    assert await kube.delete_pod("labd-bob", "bob-nb", grace_seconds=0)
    assert sim.objects("pods", "labd-bob") == []


@pytest.mark.parametrize(
    ("metadata", "gone"),
    [
        ({"name": "nb"}, True),  # Removed at once, answered as it was.
        ({"deletionTimestamp": "2026-12-06T00:00:00Z", "deletionGracePeriodSeconds": 0}, True),
        ({"deletionTimestamp": "2026-12-06T00:00:30Z", "deletionGracePeriodSeconds": 30}, False),
        ({"deletionTimestamp": "2026-12-06T00:00:00Z", "finalizers": ["example.com/keep"]}, False),
        ({"finalizers": ["example.com/keep"]}, False),
    ],
)
def test_what_a_delete_answers_tells_whether_the_object_is_gone(
    metadata: dict[str, Any], gone: bool
) -> None:
    assert _deleted_at_once({"kind": "Pod", "metadata": metadata}) is gone


async def test_delete_pod_then_namespace(kube: LabKube, config: Config) -> None:
    await kube.create_lab_objects(alice(config))
    assert not await kube.pod_gone("labd-alice", "alice-nb")
    await kube.delete_pod("labd-alice", "alice-nb", grace_seconds=0)
    await eventually(lambda: kube.pod_gone("labd-alice", "alice-nb"))
    await kube.delete_namespace("labd-alice")
    await kube.delete_namespace("labd-alice")
    await wait_for_namespace_gone(kube, "labd-alice")


async def test_lists_return_only_labd_objects(
    kube: LabKube, config: Config, api_client: ApiClient, sim: SimCluster
) -> None:
    users = ["alice", "bob", "Carol@example.org"]
    for user in users:
        await kube.create_lab_objects(build_lab_objects(lab_build(user), config))
    core = CoreV1Api(api_client)
    await core.create_namespace(V1Namespace(metadata=V1ObjectMeta(name="unrelated")))
    await core.create_namespaced_config_map(
        "labd-alice", V1ConfigMap(metadata=V1ObjectMeta(name="stray", labels={"app": "x"}))
    )
    sim.stats.reset()

    namespaces = await kube.list_lab_namespaces()
    pods = await kube.list_lab_pods()

    assert sim.stats.requests == {"list namespaces": 1, "list pods": 1}
    expected = {lab_build(user).lab_id: user for user in users}
    assert {ns.identity.lab_id: ns.identity.username for ns in namespaces if ns.identity} == (
        expected
    )
    assert {ns.phase for ns in namespaces} == {"Active"}
    assert all(ns.deletion_timestamp is None for ns in namespaces)
    assert {(p.namespace, p.name) for p in pods} == {
        (lab_build(user).namespace, f"{lab_build(user).slug}-nb") for user in users
    }
    assert all(p.phase in ("Pending", "Running") for p in pods)
    assert all(p.identity is not None and p.identity.spec for p in pods)


async def test_reads_a_lab_environment(kube: LabKube, config: Config, sim: SimCluster) -> None:
    await kube.create_lab_objects(build_lab_objects(lab_build("bob"), config))
    sim.stats.reset()

    env = await kube.read_lab_environment("labd-bob", "bob")

    assert env is not None
    assert env["JUPYTERHUB_USER"] == "bob"
    assert env["JUPYTERHUB_SERVICE_PREFIX"] == "/user/bob/"
    assert await kube.read_lab_environment("labd-bob", "nobody") is None
    assert sim.stats.requests == {"get configmaps": 2}


@pytest.mark.sim(pod_stop_delay=0.5)
# The namespace stays Terminating while its pod stops: long enough for the
# four paged LISTs on a loaded machine (at the default 0.05 s it was gone
# before them once, in CI).
@pytest.mark.sim(pod_stop_delay=5.0)
async def test_list_follows_pages_and_shows_deletion(
    api_client: ApiClient, config: Config, sim: SimCluster
) -> None:
    kube = LabKube(api_client, config, page_size=2)
    for index in range(7):
        objects = build_lab_objects(lab_build(f"user{index}"), config)
        if index == 3:
            await kube.create_lab_objects(objects)
        else:
            await kube._create(objects.namespace)
    await kube.delete_namespace("labd-user3")
    sim.stats.reset()
    namespaces = await kube.list_lab_namespaces()
    assert sim.stats.requests["list namespaces"] == 4
    assert sorted(ns.name for ns in namespaces) == [f"labd-user{index}" for index in range(7)]
    (terminating,) = [ns for ns in namespaces if ns.name == "labd-user3"]
    assert terminating.phase == "Terminating"
    assert terminating.deletion_timestamp is not None
    assert all(ns.phase == "Active" for ns in namespaces if ns is not terminating)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, ("Unknown", None)),
        ({"phase": "Pending"}, ("Pending", None)),
        (
            {
                "phase": "Pending",
                "containerStatuses": [
                    {"name": "notebook", "state": {"waiting": {"reason": "ContainerCreating"}}}
                ],
            },
            ("Pending", None),
        ),
        (
            {
                "phase": "Pending",
                "containerStatuses": [
                    {
                        "name": "notebook",
                        "state": {"waiting": {"reason": "ImagePullBackOff", "message": "m"}},
                    }
                ],
            },
            ("Pending", "ImagePullBackOff"),
        ),
        (
            {
                "phase": "Pending",
                "conditions": [
                    {"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}
                ],
            },
            ("Pending", "Unschedulable"),
        ),
        (
            {
                "phase": "Failed",
                "containerStatuses": [
                    {
                        "name": "notebook",
                        "state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}},
                    }
                ],
            },
            ("Failed", "OOMKilled"),
        ),
        (
            {
                "phase": "Failed",
                "reason": "Evicted",
                "message": "The node was low on resource: memory.",
                "containerStatuses": [
                    {"name": "notebook", "state": {"terminated": {"reason": "Error"}}}
                ],
            },
            ("Failed", "Evicted"),
        ),
    ],
)
def test_pod_status_picks_the_telling_reason(
    status: dict[str, Any], expected: tuple[str, str | None]
) -> None:
    summary = pod_status({"status": status})
    assert (summary.phase, summary.reason) == expected
    if summary.reason == "OOMKilled":
        assert summary.message == "container notebook exited with code 137"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        # Running but its readiness probe has not passed: still starting for labd.
        (
            {
                "phase": "Running",
                "podIP": "10.88.0.12",
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "ContainersNotReady",
                        "message": "containers with unready status: [notebook]",
                    }
                ],
            },
            ("Pending", "ContainersNotReady", "10.88.0.12"),
        ),
        (
            {
                "phase": "Running",
                "podIP": "10.88.0.12",
                "conditions": [{"type": "Ready", "status": "True"}],
            },
            ("Running", None, "10.88.0.12"),
        ),
        # No conditions reported (an old or minimal API server): its phase counts.
        ({"phase": "Running"}, ("Running", None, None)),
    ],
)
def test_a_running_pod_counts_as_running_once_ready(
    status: dict[str, Any], expected: tuple[str, str | None, str | None]
) -> None:
    summary = pod_status({"status": status})
    assert (summary.phase, summary.reason, summary.pod_ip) == expected
