"""labd needs every right in ``deploy/rbac.yaml``, and no more than those.

"No more": the lifecycle tests of this package run labd with a token bound
to that ClusterRole only, and pass.  "Every one": for each verb of each
resource the file grants, the role is replaced by the file minus that one
verb, and the labd operation that needs it (called through `LabKube` or
with the very request labd's watchers make) must be refused with 403.  A
right the file grants and no probe below exercises fails the test too, so
the file cannot grow without a reason.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes_asyncio.client import ApiClient, CoreV1Api

from labd.config import Config
from labd.kube.builder import MANAGED_SELECTOR, build_lab_objects
from labd.kube.client import KubeError, RetryPolicy, create_api_client
from labd.kube.storage import LabKube
from tests.support.labs import lab_build
from tests.support.realcluster import RBAC_FILE, RealCluster

Probe = Callable[["Probes"], Awaitable[None]]

_EXISTING = "rbac-existing"
"""The user of a lab created with the full role, for the probes that read."""


def _granted() -> list[tuple[str, str, str]]:
    """Every (API group, resource, verb) the ClusterRole of deploy/rbac.yaml grants."""
    role = next(d for d in yaml.safe_load_all(RBAC_FILE.read_text()) if d["kind"] == "ClusterRole")
    return [
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    ]


def _role_without(group: str, resource: str, verb: str) -> dict[str, Any]:
    """The ClusterRole of deploy/rbac.yaml minus one verb on one resource."""
    documents = list(yaml.safe_load_all(RBAC_FILE.read_text()))
    role: dict[str, Any] = copy.deepcopy(next(d for d in documents if d["kind"] == "ClusterRole"))
    rules = []
    for rule in role["rules"]:
        for rule_group in rule["apiGroups"]:
            for rule_resource in rule["resources"]:
                verbs = list(rule["verbs"])
                if (rule_group, rule_resource) == (group, resource):
                    verbs.remove(verb)
                if verbs:
                    rules.append(
                        {"apiGroups": [rule_group], "resources": [rule_resource], "verbs": verbs}
                    )
    role["rules"] = rules
    return role


def _full_role() -> dict[str, Any]:
    role: dict[str, Any] = next(
        d for d in yaml.safe_load_all(RBAC_FILE.read_text()) if d["kind"] == "ClusterRole"
    )
    return role


class Probes:
    """labd's Kubernetes operations, one per right, as the ``labd`` user."""

    def __init__(self, kube: LabKube, config: Config, core: CoreV1Api) -> None:
        self.kube = kube
        self.config = config
        self.core = core

    def objects(self, username: str) -> Any:
        return build_lab_objects(lab_build(username), self.config)

    async def create_fresh_lab(self) -> None:
        """Create every object of a new lab (namespace first, pod last)."""
        await self.kube.create_lab_objects(self.objects(f"rbac-fresh-{time.time_ns()}"))

    async def create_existing_lab(self) -> None:
        """Create an existing lab again: every create answers 409 and is read back."""
        await self.kube.create_lab_objects(self.objects(_EXISTING))

    async def read_secrets(self) -> None:
        """Read a Secret labs get a copy of (``lab.secrets``), then read lab Secrets back."""
        await self.kube.read_secret("default", "rbac-never-created")
        await self.create_existing_lab()

    async def read_environment(self) -> None:
        """Read a lab's environment as an adoption does, then read lab ConfigMaps back."""
        await self.kube.read_lab_environment("labd-rbac", "rbac-never-created")
        await self.create_existing_lab()

    async def watch(self, kind: str, method: Callable[..., Awaitable[Any]], **kw: Any) -> None:
        """Open the watch labd's watchers open (ended by the server after 1 s)."""
        await self.kube.api.call("watch", kind, method, watch=True, timeout_seconds=1, **kw)


PROBES: dict[tuple[str, str, str], tuple[str, Probe]] = {
    ("", "namespaces", "create"): ("Namespace", Probes.create_fresh_lab),
    ("", "namespaces", "get"): ("Namespace", Probes.create_existing_lab),
    ("", "namespaces", "list"): ("Namespace", lambda p: _ignore(p.kube.list_lab_namespaces())),
    ("", "namespaces", "watch"): (
        "Namespace",
        lambda p: p.watch("Namespace", p.core.list_namespace, label_selector=MANAGED_SELECTOR),
    ),
    ("", "namespaces", "delete"): (
        "Namespace",
        lambda p: _ignore(p.kube.delete_namespace("labd-rbac-never-created")),
    ),
    ("", "pods", "create"): ("Pod", Probes.create_fresh_lab),
    ("", "pods", "get"): ("Pod", lambda p: _ignore(p.kube.pod_gone("labd-rbac", "nb"))),
    ("", "pods", "list"): ("Pod", lambda p: _ignore(p.kube.list_lab_pods())),
    ("", "pods", "watch"): (
        "Pod",
        lambda p: p.watch(
            "Pod", p.core.list_pod_for_all_namespaces, label_selector=MANAGED_SELECTOR
        ),
    ),
    ("", "pods", "delete"): (
        "Pod",
        lambda p: _ignore(p.kube.delete_pod("labd-rbac", "nb", grace_seconds=0)),
    ),
    ("", "configmaps", "create"): ("ConfigMap", Probes.create_fresh_lab),
    ("", "configmaps", "get"): ("ConfigMap", Probes.read_environment),
    ("", "secrets", "create"): ("Secret", Probes.create_fresh_lab),
    ("", "secrets", "get"): ("Secret", Probes.read_secrets),
    ("", "services", "create"): ("Service", Probes.create_fresh_lab),
    ("", "services", "get"): ("Service", Probes.create_existing_lab),
    ("", "resourcequotas", "create"): ("ResourceQuota", Probes.create_fresh_lab),
    ("", "resourcequotas", "get"): ("ResourceQuota", Probes.create_existing_lab),
    ("", "persistentvolumeclaims", "create"): ("PersistentVolumeClaim", Probes.create_fresh_lab),
    ("", "persistentvolumeclaims", "get"): (
        "PersistentVolumeClaim",
        Probes.create_existing_lab,
    ),
    ("networking.k8s.io", "networkpolicies", "create"): (
        "NetworkPolicy",
        Probes.create_fresh_lab,
    ),
    ("networking.k8s.io", "networkpolicies", "get"): (
        "NetworkPolicy",
        Probes.create_existing_lab,
    ),
    ("", "events", "list"): (
        "Event",
        lambda p: _ignore(
            p.kube.api.call("list", "Event", p.core.list_event_for_all_namespaces, limit=1)
        ),
    ),
    ("", "events", "watch"): (
        "Event",
        lambda p: p.watch("Event", p.core.list_event_for_all_namespaces),
    ),
}


async def _ignore(call: Awaitable[object]) -> None:
    await call


def _allowed(cluster: RealCluster, group: str, resource: str, verb: str) -> bool:
    review = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": "labd",
            "resourceAttributes": {"group": group, "resource": resource, "verb": verb},
        },
    }
    status, body = cluster.control_plane.request(
        "POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", review
    )
    assert status == 201, body
    return bool(body["status"].get("allowed"))


def _grant(
    cluster: RealCluster, role: dict[str, Any], check: tuple[str, str, str], *, allowed: bool
) -> None:
    """Replace labd's ClusterRole; wait until the authorizer's cache agrees."""
    cluster.apply(role)
    deadline = time.monotonic() + 10
    while _allowed(cluster, *check) is not allowed:
        assert time.monotonic() < deadline, f"the authorizer never saw {check} {allowed=}"
        time.sleep(0.02)


@pytest.fixture(scope="module")
def rbac_cluster(real_cluster: RealCluster) -> Iterator[RealCluster]:
    """The session's cluster; emptied, with the full role back, after this module."""
    yield real_cluster
    real_cluster.apply(_full_role())
    real_cluster.control_plane.remove_user_namespaces()


@pytest.fixture
async def probes(rbac_cluster: RealCluster, tmp_path: Path) -> AsyncIterator[Probes]:
    kubeconfig = rbac_cluster.write_kubeconfig(tmp_path / "kubeconfig")
    config = Config.model_validate(
        {
            "kubernetes": {"kubeconfig": str(kubeconfig), "request_timeout": 5},
            "lab": {
                "resource_quota": True,
                "volumes": [{"name": "home", "mount_path": "/home", "storage": "1Gi"}],
            },
        }
    )
    api_client: ApiClient = await create_api_client(config.kubernetes)
    try:
        kube = LabKube(api_client, config, retry=RetryPolicy(attempts=1))
        probes = Probes(kube, config, CoreV1Api(api_client))
        await probes.create_existing_lab()
        yield probes
    finally:
        await api_client.close()
        await asyncio.sleep(0.25)  # let the TLS connections finish closing


async def test_every_probe_succeeds_with_the_full_role(probes: Probes) -> None:
    for _, probe in PROBES.values():
        await probe(probes)


def test_every_granted_right_has_a_probe() -> None:
    assert sorted(PROBES) == sorted(_granted())


@pytest.mark.parametrize(("group", "resource", "verb"), _granted(), ids=lambda v: v or "core")
async def test_each_right_is_needed(
    rbac_cluster: RealCluster, probes: Probes, group: str, resource: str, verb: str
) -> None:
    kind, probe = PROBES[(group, resource, verb)]
    right = (group, resource, verb)
    _grant(rbac_cluster, _role_without(*right), right, allowed=False)
    try:
        with pytest.raises(KubeError) as refused:
            await probe(probes)
        assert refused.value.status == 403, str(refused.value)
        assert refused.value.kind == kind, str(refused.value)
        assert f'cannot {verb} resource "{resource}"' in refused.value.message
    finally:
        _grant(rbac_cluster, _full_role(), right, allowed=True)
