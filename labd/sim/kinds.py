"""The resource types the simulated API server knows.

Kubernetes addresses objects by group, version and plural resource name
(``/api/v1/namespaces/ns/pods/x``) while objects name their ``kind``
(``Pod``). This table joins the two and says, per resource, what the server
needs to know to treat it like Kubernetes does: whether it lives in a
namespace, which subresources it has, which name format it must follow, and
which fields a field selector may use. Discovery documents are generated from
the same table, so what a client discovers is exactly what the server serves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "RESOURCES",
    "Resource",
    "api_group_list",
    "api_resource_list",
    "api_versions",
    "find_resource",
    "resource_named",
    "version_info",
]

NameRule = Literal["label", "subdomain", "dns1035"]

_COMMON_FIELDS = ("metadata.name", "metadata.namespace")
_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


@dataclass(frozen=True, slots=True)
class Resource:
    """One resource type served by the sim.

    Parameters
    ----------
    plural
        The resource name in URLs, e.g. ``"pods"``.
    kind
        The object kind, e.g. ``"Pod"``.
    group
        API group, ``""`` for the core group.
    version
        API version within the group.
    namespaced
        Whether objects live in a namespace.
    singular
        The singular name, for discovery.
    name_rule
        Which Kubernetes name format ``metadata.name`` must follow.
    subresources
        Subresources served (``"status"``, ``"binding"``).
    fields
        Field paths usable in a ``fieldSelector``.
    short_names
        Short names for discovery (``po``, ``ns``...), used by kubectl.
    """

    plural: str
    kind: str
    group: str
    version: str
    namespaced: bool
    singular: str
    name_rule: NameRule = "subdomain"
    subresources: tuple[str, ...] = ()
    fields: tuple[str, ...] = _COMMON_FIELDS
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        """The ``apiVersion`` of objects of this resource, e.g. ``networking.k8s.io/v1``."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """The name Kubernetes uses in messages, e.g. ``networkpolicies.networking.k8s.io``."""
        return f"{self.plural}.{self.group}" if self.group else self.plural


RESOURCES: tuple[Resource, ...] = (
    Resource(
        "namespaces",
        "Namespace",
        "",
        "v1",
        namespaced=False,
        singular="namespace",
        name_rule="label",
        subresources=("status",),
        fields=("metadata.name", "status.phase"),
        short_names=("ns",),
    ),
    Resource("nodes", "Node", "", "v1", namespaced=False, singular="node",
             subresources=("status",), fields=("metadata.name", "spec.unschedulable"),
             short_names=("no",)),
    Resource(
        "pods",
        "Pod",
        "",
        "v1",
        namespaced=True,
        singular="pod",
        subresources=("status", "binding"),
        fields=(
            *_COMMON_FIELDS,
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "status.phase",
            "status.podIP",
            "status.nominatedNodeName",
        ),
        short_names=("po",),
    ),
    Resource("services", "Service", "", "v1", namespaced=True, singular="service",
             name_rule="dns1035", subresources=("status",), short_names=("svc",)),
    Resource("configmaps", "ConfigMap", "", "v1", namespaced=True, singular="configmap",
             short_names=("cm",)),
    Resource("secrets", "Secret", "", "v1", namespaced=True, singular="secret",
             fields=(*_COMMON_FIELDS, "type")),
    Resource("persistentvolumeclaims", "PersistentVolumeClaim", "", "v1", namespaced=True,
             singular="persistentvolumeclaim", subresources=("status",), short_names=("pvc",)),
    Resource("resourcequotas", "ResourceQuota", "", "v1", namespaced=True,
             singular="resourcequota", subresources=("status",), short_names=("quota",)),
    Resource("serviceaccounts", "ServiceAccount", "", "v1", namespaced=True,
             singular="serviceaccount", short_names=("sa",)),
    Resource("limitranges", "LimitRange", "", "v1", namespaced=True, singular="limitrange",
             short_names=("limits",)),
    Resource(
        "events",
        "Event",
        "",
        "v1",
        namespaced=True,
        singular="event",
        fields=(
            *_COMMON_FIELDS,
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
        ),
        short_names=("ev",),
    ),
    Resource("networkpolicies", "NetworkPolicy", "networking.k8s.io", "v1", namespaced=True,
             singular="networkpolicy", short_names=("netpol",)),
)  # fmt: skip

_BY_PATH: dict[tuple[str, str, str], Resource] = {
    (r.group, r.version, r.plural): r for r in RESOURCES
}


def find_resource(group: str, version: str, plural: str) -> Resource | None:
    """Look a resource up by its URL coordinates.

    Parameters
    ----------
    group
        API group (``""`` for core).
    version
        API version.
    plural
        Plural resource name.

    Returns
    -------
    Resource or None
        The resource, or None when the sim does not serve it.
    """
    return _BY_PATH.get((group, version, plural))


def resource_named(plural: str) -> Resource:
    """Return the served resource with this plural name (plurals are unique here).

    Raises
    ------
    KeyError
        When the sim serves no such resource.
    """
    for resource in RESOURCES:
        if resource.plural == plural:
            return resource
    raise KeyError(f"the sim serves no resource {plural!r}")


def version_info() -> dict[str, str]:
    """Return the body of ``/version``."""
    return {
        "major": "1",
        "minor": "31",
        "gitVersion": "v1.31.0-labd-sim",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2026-01-01T00:00:00Z",
        "goVersion": "go1.22.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    }


def api_versions(server_address: str) -> dict[str, Any]:
    """Return the body of ``/api``."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [
            {"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}
        ],
    }


def _groups() -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for resource in RESOURCES:
        if resource.group and resource.version not in groups.setdefault(resource.group, []):
            groups[resource.group].append(resource.version)
    return groups


def api_group(group: str) -> dict[str, Any] | None:
    """Return the body of ``/apis/<group>``, or None for an unknown group."""
    versions = _groups().get(group)
    if versions is None:
        return None
    entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": entries,
        "preferredVersion": entries[0],
    }


def api_group_list() -> dict[str, Any]:
    """Return the body of ``/apis``."""
    groups = [api_group(name) for name in _groups()]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_resource_list(group: str, version: str) -> dict[str, Any] | None:
    """Return the body of ``/api/v1`` or ``/apis/<group>/<version>``.

    Returns
    -------
    dict or None
        An ``APIResourceList``, or None when nothing is served there.
    """
    entries: list[dict[str, Any]] = []
    for r in RESOURCES:
        if (r.group, r.version) != (group, version):
            continue
        entries.append(
            {
                "name": r.plural,
                "singularName": r.singular,
                "namespaced": r.namespaced,
                "kind": r.kind,
                "verbs": _VERBS,
                "shortNames": list(r.short_names),
            }
        )
        for sub in r.subresources:
            verbs = ["create"] if sub in ("binding",) else ["get", "patch", "update"]
            kind = "Binding" if sub == "binding" else r.kind
            entries.append(
                {
                    "name": f"{r.plural}/{sub}",
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": kind,
                    "verbs": verbs,
                }
            )
    if not entries:
        return None
    group_version = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": entries,
    }
