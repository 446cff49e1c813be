"""Create, read, update, patch and delete, with Kubernetes' errors."""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable

import httpx
import pytest
from kubernetes_asyncio.client import CoreV1Api, NetworkingV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from labd.sim import SimCluster
from tests.support.kubeapi import manifest, pod, status_of


async def test_create_get_and_list_report_versions(core: CoreV1Api, namespace: str) -> None:
    created = await core.create_namespaced_config_map(
        namespace,
        manifest({"metadata": {"name": "env", "labels": {"app": "lab"}}, "data": {"A": "1"}}),
    )
    meta = created.metadata
    assert meta.uid
    assert meta.creation_timestamp
    assert meta.generation == 1
    fetched = await core.read_namespaced_config_map("env", namespace)
    assert fetched.data == {"A": "1"}
    assert fetched.metadata.resource_version == meta.resource_version
    listing = await core.list_namespaced_config_map(namespace, label_selector="app=lab")
    assert [c.metadata.name for c in listing.items] == ["env"]
    assert int(listing.metadata.resource_version) >= int(meta.resource_version)


async def test_create_twice_is_already_exists(core: CoreV1Api, namespace: str) -> None:
    body = manifest({"metadata": {"name": "env"}})
    await core.create_namespaced_config_map(namespace, body)
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_config_map(namespace, body)
    assert caught.value.status == 409
    status = status_of(caught.value)
    assert (status["kind"], status["apiVersion"]) == ("Status", "v1")
    assert status["status"] == "Failure"
    assert status["reason"] == "AlreadyExists"
    assert status["message"] == 'configmaps "env" already exists'
    assert status["details"] == {"name": "env", "kind": "configmaps"}
    assert status["code"] == 409


async def test_get_missing_is_not_found(core: CoreV1Api, namespace: str) -> None:
    with pytest.raises(ApiException) as caught:
        await core.read_namespaced_pod("nope", namespace)
    assert caught.value.status == 404
    assert status_of(caught.value)["reason"] == "NotFound"
    assert status_of(caught.value)["message"] == 'pods "nope" not found'


async def test_namespaced_create_needs_the_namespace(core: CoreV1Api) -> None:
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_config_map("missing", manifest({"metadata": {"name": "x"}}))
    assert caught.value.status == 404
    assert status_of(caught.value)["message"] == 'namespaces "missing" not found'


@pytest.mark.parametrize(
    ("kind", "name"),
    [("namespace", "Lab_1"), ("namespace", "a.b"), ("service", "1lab"), ("configmap", "-x")],
)
async def test_invalid_names_are_refused(
    core: CoreV1Api, namespace: str, kind: str, name: str
) -> None:
    body = manifest({"metadata": {"name": name}, "spec": {"ports": []}})
    creators: dict[str, Callable[[], Awaitable[object]]] = {
        "namespace": lambda: core.create_namespace(body),
        "service": lambda: core.create_namespaced_service(namespace, body),
        "configmap": lambda: core.create_namespaced_config_map(namespace, body),
    }
    with pytest.raises(ApiException) as caught:
        await creators[kind]()
    assert caught.value.status == 422
    status = status_of(caught.value)
    assert status["reason"] == "Invalid"
    assert status["details"]["causes"][0]["field"] == "metadata.name"


async def test_subdomain_names_are_accepted_where_kubernetes_accepts_them(
    core: CoreV1Api, namespace: str
) -> None:
    created = await core.create_namespaced_config_map(
        namespace, manifest({"metadata": {"name": "a.b-c"}})
    )
    assert created.metadata.name == "a.b-c"


async def test_invalid_label_value_is_refused(core: CoreV1Api, namespace: str) -> None:
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_config_map(
            namespace, manifest({"metadata": {"name": "x", "labels": {"app": "no spaces"}}})
        )
    assert caught.value.status == 422


async def test_pod_without_containers_is_invalid(core: CoreV1Api, namespace: str) -> None:
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_pod(
            namespace, manifest({"metadata": {"name": "p"}, "spec": {}})
        )
    assert caught.value.status == 422
    assert "spec.containers" in status_of(caught.value)["message"]


async def test_generate_name(core: CoreV1Api, namespace: str) -> None:
    body = manifest({"metadata": {"generateName": "env-"}})
    first = await core.create_namespaced_config_map(namespace, body)
    second = await core.create_namespaced_config_map(namespace, body)
    assert first.metadata.name.startswith("env-")
    assert len(first.metadata.name) == len("env-") + 5
    assert first.metadata.name != second.metadata.name


async def test_replace_checks_the_resource_version(core: CoreV1Api, namespace: str) -> None:
    created = await core.create_namespaced_config_map(
        namespace, manifest({"metadata": {"name": "env"}, "data": {"A": "1"}})
    )
    fresh = manifest(
        {
            "metadata": {"name": "env", "resourceVersion": created.metadata.resource_version},
            "data": {"A": "2"},
        }
    )
    replaced = await core.replace_namespaced_config_map("env", namespace, fresh)
    assert replaced.data == {"A": "2"}
    assert replaced.metadata.uid == created.metadata.uid
    assert int(replaced.metadata.resource_version) > int(created.metadata.resource_version)
    with pytest.raises(ApiException) as caught:
        await core.replace_namespaced_config_map("env", namespace, fresh)
    assert caught.value.status == 409
    assert status_of(caught.value)["reason"] == "Conflict"
    assert "the object has been modified" in status_of(caught.value)["message"]


async def test_replace_missing_is_not_found(core: CoreV1Api, namespace: str) -> None:
    with pytest.raises(ApiException) as caught:
        await core.replace_namespaced_config_map(
            "env", namespace, manifest({"metadata": {"name": "env"}})
        )
    assert caught.value.status == 404


async def test_unchanged_write_keeps_the_version(core: CoreV1Api, namespace: str) -> None:
    created = await core.create_namespaced_config_map(
        namespace, manifest({"metadata": {"name": "env"}, "data": {"A": "1"}})
    )
    same = await core.patch_namespaced_config_map("env", namespace, {"data": {"A": "1"}})
    assert same.metadata.resource_version == created.metadata.resource_version


async def test_merge_patch(core: CoreV1Api, namespace: str) -> None:
    await core.create_namespaced_config_map(
        namespace,
        manifest(
            {"metadata": {"name": "env", "labels": {"a": "1"}}, "data": {"A": "1", "B": "2"}}
        ),
    )
    patched = await core.patch_namespaced_config_map(
        "env",
        namespace,
        {"metadata": {"labels": {"b": "2"}}, "data": {"A": None, "C": "3"}},
        _content_type="application/merge-patch+json",  # type: ignore[call-arg]
    )
    assert patched.metadata.labels == {"a": "1", "b": "2"}
    assert patched.data == {"B": "2", "C": "3"}


async def test_strategic_merge_patch_is_a_merge_patch(core: CoreV1Api, namespace: str) -> None:
    await core.create_namespaced_config_map(namespace, manifest({"metadata": {"name": "env"}}))
    # A dict body makes kubernetes-asyncio send a strategic merge patch.
    patched = await core.patch_namespaced_config_map(
        "env", namespace, {"metadata": {"annotations": {"x": "y"}}}
    )
    assert patched.metadata.annotations == {"x": "y"}


async def test_json_patch(core: CoreV1Api, namespace: str) -> None:
    await core.create_namespaced_config_map(
        namespace, manifest({"metadata": {"name": "env"}, "data": {"A": "1", "B": "2"}})
    )
    patched = await core.patch_namespaced_config_map(
        "env",
        namespace,
        [
            {"op": "test", "path": "/data/A", "value": "1"},
            {"op": "replace", "path": "/data/A", "value": "9"},
            {"op": "remove", "path": "/data/B"},
            {"op": "add", "path": "/metadata/labels", "value": {"k": "v"}},
            {"op": "copy", "from": "/data/A", "path": "/data/C"},
            {"op": "move", "from": "/data/C", "path": "/data/D"},
        ],
    )
    assert patched.data == {"A": "9", "D": "9"}
    assert patched.metadata.labels == {"k": "v"}
    with pytest.raises(ApiException) as caught:
        await core.patch_namespaced_config_map(
            "env", namespace, [{"op": "test", "path": "/data/A", "value": "1"}]
        )
    assert caught.value.status == 422


async def test_patch_with_a_stale_version_conflicts(core: CoreV1Api, namespace: str) -> None:
    created = await core.create_namespaced_config_map(
        namespace, manifest({"metadata": {"name": "env"}})
    )
    await core.patch_namespaced_config_map("env", namespace, {"data": {"A": "1"}})
    with pytest.raises(ApiException) as caught:
        await core.patch_namespaced_config_map(
            "env",
            namespace,
            {"metadata": {"resourceVersion": created.metadata.resource_version}, "data": {}},
        )
    assert caught.value.status == 409


@pytest.mark.sim(kubelet=False)
async def test_generation_follows_spec_not_status(core: CoreV1Api, namespace: str) -> None:
    created = await core.create_namespaced_pod(namespace, pod("nb"))
    assert created.status.phase == "Pending"
    relabelled = await core.patch_namespaced_pod(
        "nb", namespace, {"metadata": {"labels": {"a": "b"}}}
    )
    assert relabelled.metadata.generation == 1
    status = await core.patch_namespaced_pod_status(
        "nb", namespace, {"status": {"phase": "Running"}, "spec": {"hostname": "ignored"}}
    )
    assert status.status.phase == "Running"
    assert not status.spec.hostname
    assert status.metadata.generation == 1
    respecced = await core.patch_namespaced_pod(
        "nb", namespace, {"spec": {"activeDeadlineSeconds": 60}, "status": {"phase": "Failed"}}
    )
    assert respecced.metadata.generation == 2
    assert respecced.status.phase == "Running"


@pytest.mark.sim(kubelet=False)
async def test_pod_defaults(core: CoreV1Api, namespace: str) -> None:
    created = await core.create_namespaced_pod(namespace, pod("nb"))
    assert created.spec.restart_policy == "Always"
    assert created.spec.termination_grace_period_seconds == 30
    assert created.spec.service_account_name == "default"
    assert created.spec.containers[0].image_pull_policy == "IfNotPresent"
    assert created.status.qos_class == "BestEffort"


async def test_service_gets_a_cluster_ip(core: CoreV1Api, namespace: str) -> None:
    service = await core.create_namespaced_service(
        namespace, manifest({"metadata": {"name": "lab"}, "spec": {"ports": [{"port": 8888}]}})
    )
    assert service.spec.cluster_ip.startswith("10.96.")
    assert service.spec.ports[0].protocol == "TCP"
    assert service.spec.ports[0].target_port == 8888
    replaced = await core.replace_namespaced_service(
        "lab",
        namespace,
        manifest(
            {"metadata": {"name": "lab"}, "spec": {"ports": [{"port": 8888, "name": "http"}]}}
        ),
    )
    assert replaced.spec.cluster_ip == service.spec.cluster_ip


async def test_secret_string_data_is_folded_into_data(core: CoreV1Api, namespace: str) -> None:
    secret = await core.create_namespaced_secret(
        namespace, manifest({"metadata": {"name": "token"}, "stringData": {"token": "s3cret"}})
    )
    assert secret.data == {"token": base64.b64encode(b"s3cret").decode()}
    assert secret.type == "Opaque"


async def test_other_kinds_round_trip(
    core: CoreV1Api, networking: NetworkingV1Api, namespace: str
) -> None:
    await core.create_namespaced_persistent_volume_claim(
        namespace,
        manifest(
            {
                "metadata": {"name": "home"},
                "spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "1Gi"}},
                },
            }
        ),
    )
    await core.create_namespaced_resource_quota(
        namespace, manifest({"metadata": {"name": "quota"}, "spec": {"hard": {"pods": "2"}}})
    )
    await core.create_namespaced_service_account(
        namespace, manifest({"metadata": {"name": "lab"}})
    )
    policy = await networking.create_namespaced_network_policy(
        namespace,
        manifest(
            {
                "metadata": {"name": "lab"},
                "spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 8888}]}]},
            }
        ),
    )
    assert policy.api_version == "networking.k8s.io/v1"
    claim = await core.read_namespaced_persistent_volume_claim("home", namespace)
    assert claim.status.phase == "Pending"
    assert (await core.read_namespaced_resource_quota("quota", namespace)).spec.hard == {
        "pods": "2"
    }
    policies = await networking.list_network_policy_for_all_namespaces()
    assert [p.metadata.name for p in policies.items] == ["lab"]
    await networking.delete_namespaced_network_policy("lab", namespace)
    with pytest.raises(ApiException) as caught:
        await networking.read_namespaced_network_policy("lab", namespace)
    assert caught.value.status == 404
    assert status_of(caught.value)["message"] == (
        'networkpolicies.networking.k8s.io "lab" not found'
    )


async def test_delete_returns_a_status_or_the_object(core: CoreV1Api, namespace: str) -> None:
    await core.create_namespaced_config_map(namespace, manifest({"metadata": {"name": "env"}}))
    status = await core.delete_namespaced_config_map("env", namespace)
    assert status.status == "Success"
    assert status.details.name == "env"
    with pytest.raises(ApiException) as caught:
        await core.delete_namespaced_config_map("env", namespace)
    assert caught.value.status == 404


async def test_delete_preconditions(core: CoreV1Api, namespace: str) -> None:
    await core.create_namespaced_config_map(namespace, manifest({"metadata": {"name": "env"}}))
    with pytest.raises(ApiException) as caught:
        await core.delete_namespaced_config_map(
            "env", namespace, body=manifest({"preconditions": {"uid": "someone-else"}})
        )
    assert caught.value.status == 409
    assert "Precondition failed" in status_of(caught.value)["message"]


async def test_delete_refuses_an_unknown_propagation_policy(
    core: CoreV1Api, namespace: str
) -> None:
    await core.create_namespaced_config_map(namespace, manifest({"metadata": {"name": "env"}}))
    with pytest.raises(ApiException) as caught:
        await core.delete_namespaced_config_map("env", namespace, propagation_policy="Sideways")
    assert caught.value.status == 400
    status = await core.delete_namespaced_config_map(
        "env", namespace, propagation_policy="Foreground"
    )
    assert status.status == "Success"


async def test_finalizers_hold_an_object_until_removed(core: CoreV1Api, namespace: str) -> None:
    await core.create_namespaced_config_map(
        namespace, manifest({"metadata": {"name": "env", "finalizers": ["labd.io/keep"]}})
    )
    await core.delete_namespaced_config_map("env", namespace)
    held = await core.read_namespaced_config_map("env", namespace)
    assert held.metadata.deletion_timestamp is not None
    await core.patch_namespaced_config_map(
        "env", namespace, {"metadata": {"finalizers": None}},
        _content_type="application/merge-patch+json",  # type: ignore[call-arg]
    )  # fmt: skip
    with pytest.raises(ApiException) as caught:
        await core.read_namespaced_config_map("env", namespace)
    assert caught.value.status == 404


async def test_delete_collection(core: CoreV1Api, namespace: str) -> None:
    for name, tier in (("a", "x"), ("b", "x"), ("c", "y")):
        await core.create_namespaced_config_map(
            namespace, manifest({"metadata": {"name": name, "labels": {"tier": tier}}})
        )
    await core.delete_collection_namespaced_config_map(namespace, label_selector="tier=x")
    left = await core.list_namespaced_config_map(namespace, label_selector="tier")
    assert [c.metadata.name for c in left.items] == ["c"]


async def test_list_pages_with_limit_and_continue(core: CoreV1Api, namespace: str) -> None:
    for index in range(5):
        await core.create_namespaced_config_map(
            namespace, manifest({"metadata": {"name": f"env-{index}", "labels": {"page": "yes"}}})
        )
    names: list[str] = []
    token = ""
    while True:
        page = await core.list_namespaced_config_map(
            namespace, label_selector="page", limit=2, _continue=token
        )
        names.extend(c.metadata.name for c in page.items)
        token = page.metadata._continue
        if not token:
            break
        assert page.metadata.remaining_item_count > 0
    assert names == [f"env-{i}" for i in range(5)]


async def test_discovery(sim: SimCluster, control: httpx.AsyncClient) -> None:
    version = (await control.get("/version")).json()
    assert version["major"] == "1"
    assert (await control.get("/api")).json()["versions"] == ["v1"]
    core = (await control.get("/api/v1")).json()
    names = {r["name"] for r in core["resources"]}
    assert {"pods", "pods/status", "pods/binding", "namespaces", "events", "secrets"} <= names
    groups = (await control.get("/apis")).json()
    assert [g["name"] for g in groups["groups"]] == ["networking.k8s.io"]
    group = (await control.get("/apis/networking.k8s.io/v1")).json()
    assert [r["name"] for r in group["resources"]] == ["networkpolicies"]
    assert (await control.get("/apis/apps/v1")).status_code == 404


async def test_requests_need_the_token(sim: SimCluster) -> None:
    async with httpx.AsyncClient(base_url=sim.url) as anonymous:
        response = await anonymous.get("/api/v1/namespaces")
    assert response.status_code == 401
    assert response.json()["reason"] == "Unauthorized"
