"""Per-kind rules for new and changed objects ("strategies" in Kubernetes).

The kube-apiserver gives each kind a strategy that fills defaults, validates
and decides what a write may change. The sim keeps the part a controller
observes: names must follow the kind's format, labels must be valid, pods
need containers with names and images and get the defaults that appear in
real pod specs, services get a cluster IP, secrets fold ``stringData`` into
``data``, namespaces carry the ``kubernetes`` finalizer and their name label.
Everything else is stored as sent.
"""

from __future__ import annotations

import base64
import copy
import itertools
import re
from datetime import UTC, datetime
from typing import Any

from labd.sim.errors import ApiError, invalid
from labd.sim.kinds import Resource

__all__ = ["default_pull_policy", "now", "prepare_create", "prepare_update", "validate"]

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_LABEL_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")

_LABEL_MESSAGE = (
    "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
    "and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', "
    "regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')"
)
_DNS1035_MESSAGE = (
    "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
    "alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or "
    "'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')"
)
_SUBDOMAIN_MESSAGE = (
    "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' "
    "or '.', and must start and end with an alphanumeric character (e.g. 'example.com', "
    "regex used for validation is "
    "'[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')"
)

_cluster_ips = itertools.count(10)


def now() -> str:
    """Return the current time as Kubernetes writes timestamps (RFC 3339, UTC, seconds)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_name(resource: Resource, name: str) -> None:
    if resource.name_rule == "label":
        ok, limit, why = _LABEL.match(name), 63, _LABEL_MESSAGE
    elif resource.name_rule == "dns1035":
        ok, limit, why = _DNS1035.match(name), 63, _DNS1035_MESSAGE
    else:
        ok, limit, why = _SUBDOMAIN.match(name), 253, _SUBDOMAIN_MESSAGE
    if len(name) > limit:
        ok, why = None, f"must be no more than {limit} characters"
    if not ok:
        raise invalid(resource.kind, name, "metadata.name", name, why, resource.group)


def _check_labels(resource: Resource, name: str, labels: Any) -> None:
    if labels is None:
        return
    if not isinstance(labels, dict):
        raise invalid(resource.kind, name, "metadata.labels", labels, "must be a map")
    for key, value in labels.items():
        prefix, _, label_name = str(key).rpartition("/")
        if (
            not _LABEL_NAME.match(label_name)
            or len(label_name) > 63
            or (prefix and not _SUBDOMAIN.match(prefix))
        ):
            raise invalid(
                resource.kind, name, "metadata.labels", key, "name part must be a valid label key"
            )
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            raise invalid(
                resource.kind,
                name,
                f"metadata.labels: Invalid value: {value!r}",
                value,
                "a valid label must be an empty string or consist of alphanumeric characters, "
                "'-', '_' or '.', and must start and end with an alphanumeric character",
            )


def _check_pod(name: str, obj: dict[str, Any]) -> None:
    spec = obj.get("spec")
    containers = spec.get("containers") if isinstance(spec, dict) else None
    if not isinstance(containers, list) or not containers:
        raise ApiError(
            422,
            f'Pod "{name}" is invalid: spec.containers: Required value',
            reason="Invalid",
            details={
                "name": name,
                "kind": "Pod",
                "causes": [
                    {"reason": "FieldValueRequired", "message": "Required value",
                     "field": "spec.containers"}
                ],
            },
        )  # fmt: skip
    for index, container in enumerate(containers):
        for field in ("name", "image"):
            if not isinstance(container, dict) or not container.get(field):
                path = f"spec.containers[{index}].{field}"
                raise ApiError(
                    422,
                    f'Pod "{name}" is invalid: {path}: Required value',
                    reason="Invalid",
                    details={
                        "name": name,
                        "kind": "Pod",
                        "causes": [
                            {"reason": "FieldValueRequired", "message": "Required value",
                             "field": path}
                        ],
                    },
                )  # fmt: skip


def validate(resource: Resource, obj: dict[str, Any]) -> None:
    """Validate an object about to be stored.

    Raises
    ------
    ApiError
        422 Invalid, with Kubernetes' message for the failed field.
    """
    meta = obj["metadata"]
    name = meta["name"]
    _check_name(resource, name)
    _check_labels(resource, name, meta.get("labels"))
    if resource.plural == "pods":
        _check_pod(name, obj)


def default_pull_policy(image: str) -> str:
    """The ``imagePullPolicy`` Kubernetes gives a container that sets none.

    ``Always`` when the image's tag is ``latest``, written or implied (no tag
    and no digest), else ``IfNotPresent`` (a digest without a tag included).
    """
    name, at, _ = image.partition("@")
    _, colon, tag = name.rpartition("/")[2].partition(":")
    if not colon and not at:
        tag = "latest"
    return "Always" if tag == "latest" else "IfNotPresent"


def _default_pod(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("serviceAccountName", spec.get("serviceAccount") or "default")
    spec.setdefault("serviceAccount", spec["serviceAccountName"])
    spec.setdefault("securityContext", {})
    spec.setdefault("enableServiceLinks", True)
    spec.setdefault("priority", 0)
    for container in spec.get("containers", []):
        container.setdefault("imagePullPolicy", default_pull_policy(str(container.get("image"))))
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})
    resources = [c.get("resources") or {} for c in spec.get("containers", [])]
    if not any(r.get("requests") or r.get("limits") for r in resources):
        qos = "BestEffort"
    elif all(r.get("limits") and r.get("requests") == r.get("limits") for r in resources):
        qos = "Guaranteed"
    else:
        qos = "Burstable"
    obj["status"] = {"phase": "Pending", "qosClass": qos}


def _default_service(obj: dict[str, Any]) -> None:
    spec = obj.setdefault("spec", {})
    spec.setdefault("type", "ClusterIP")
    spec.setdefault("sessionAffinity", "None")
    if spec.get("clusterIP") != "None":
        n = next(_cluster_ips)
        spec["clusterIP"] = f"10.96.{n // 250 % 250}.{n % 250 + 2}"
    spec["clusterIPs"] = [spec["clusterIP"]]
    for port in spec.get("ports", []):
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", port.get("port"))
    obj["status"] = {"loadBalancer": {}}


def _fold_string_data(obj: dict[str, Any]) -> None:
    string_data = obj.pop("stringData", None)
    if isinstance(string_data, dict):
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
    obj.setdefault("type", "Opaque")


def prepare_create(resource: Resource, obj: dict[str, Any]) -> None:
    """Fill the defaults Kubernetes fills when ``obj`` is created (in place)."""
    plural = resource.plural
    if plural == "pods":
        _default_pod(obj)
    elif plural == "services":
        _default_service(obj)
    elif plural == "secrets":
        _fold_string_data(obj)
    elif plural == "namespaces":
        obj["spec"] = {"finalizers": ["kubernetes"]}
        obj["status"] = {"phase": "Active"}
        labels = obj["metadata"].setdefault("labels", {})
        labels["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
    elif plural == "persistentvolumeclaims":
        # No provisioner runs: a claim stays Pending, as with a
        # WaitForFirstConsumer storage class before its pod is scheduled.
        obj["status"] = {"phase": "Pending"}


def prepare_update(resource: Resource, old: dict[str, Any], new: dict[str, Any]) -> None:
    """Carry over what an update may not change or drop (in place)."""
    if resource.plural == "secrets":
        _fold_string_data(new)
    elif resource.plural == "services":
        spec = new.setdefault("spec", {})
        old_spec = old.get("spec", {})
        # The cluster IP is immutable and kept when an update leaves it out.
        spec.setdefault("clusterIP", old_spec.get("clusterIP"))
        spec["clusterIPs"] = [spec["clusterIP"]]
    elif resource.plural == "pods":
        # Binding is the only way to set a pod's node; keep it across updates.
        spec = new.setdefault("spec", {})
        node = old.get("spec", {}).get("nodeName")
        if node:
            spec["nodeName"] = node
        if "containers" in spec and "containers" in old.get("spec", {}):
            for container, before in zip(
                spec["containers"], old["spec"]["containers"], strict=False
            ):
                for key in (
                    "imagePullPolicy",
                    "terminationMessagePath",
                    "terminationMessagePolicy",
                ):
                    if key in before:
                        container.setdefault(key, before[key])
    elif resource.plural == "namespaces":
        new["spec"] = copy.deepcopy(old.get("spec", {}))
        labels = new["metadata"].setdefault("labels", {})
        labels["kubernetes.io/metadata.name"] = new["metadata"]["name"]
