"""The Kubernetes objects of a lab, built from its spec and the configuration.

`build_lab_objects` is a pure function: no I/O, no clock, no randomness.
The same lab and configuration always give the same manifests, so golden
files pin them down without a cluster, and the scheduler can rebuild a lab's
objects at any time (after a crash, for a retry) and get the same thing.

Every object carries labd's labels, which is how labd recognises what it
manages when it lists the cluster (`MANAGED_SELECTOR`) and which lab an
object belongs to (`LAB_ID_LABEL`): a create that meets an existing object
of the same name checks that label before treating the object as its own.
The original username does not fit in a label (``@``, ``+``, upper case,
255 characters), so it travels in an annotation; so does the lab's spec
(`SPEC_ANNOTATION`, written and read by `labd.lab.spec.LabSpec` alone), from
which the reconciler can rebuild a lost database row.  `parse_lab_labels`
reads all of this back.

The pod is locked down the way a multi-user platform needs: a non-root user
with the user's own UID and groups, no privilege escalation, no Linux
capabilities, the runtime's seccomp profile, a read-only root filesystem
(with a writable ``/tmp``), no service-account token and no service links.
It never restarts: a lab whose process exits is reported as exited (as
Nublado does), and JupyterHub decides what happens next.  Its node-local
disk is capped by the size's ephemeral storage limit, which also bounds
``/tmp``: a lab that fills it is evicted rather than filling the node.

The lab's NetworkPolicy admits only the hub and the lab's own namespace, on
the lab's port, and lets the lab connect only where ``lab.egress`` allows:
by default DNS and the hub's namespace (the hub API the lab calls at
``JUPYTERHUB_API_URL``), so a lab cannot reach other users' labs, the
Kubernetes API or a cloud metadata endpoint unless the operator says so.

Secrets copied from configuration (``lab.secrets``) join the hub's secret
environment in the lab's Secret, under `COPIED_KEY_PREFIX` so that no key
the hub sends can collide with them; the pod reads each as an environment
variable (``secretKeyRef``) or as a read-only file (a ``subPath`` mount of
one secret volume, so files in the same directory do not hide each other
or what the image has there).  The values themselves are read from
Kubernetes at spawn time by the scheduler and handed in through
`LabBuild`; the builder only places them.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from labd.config import (
    DEFAULT_EPHEMERAL_STORAGE_LIMIT,
    DEFAULT_EPHEMERAL_STORAGE_REQUEST,
    Config,
    EgressRuleConfig,
)
from labd.lab.records import LabRecord
from labd.lab.spec import LabSpec

__all__ = [
    "CONTAINER_NAME",
    "COPIED_KEY_PREFIX",
    "DOCKER_CONFIG_KEY",
    "LAB_ID_LABEL",
    "MANAGED_BY",
    "MANAGED_BY_LABEL",
    "MANAGED_SELECTOR",
    "NAME_LABEL",
    "NAME_VALUE",
    "OWN_ENV",
    "SERVICE_NAME",
    "SERVICE_PREFIX_VAR",
    "SPEC_ANNOTATION",
    "USERNAME_ANNOTATION",
    "USER_LABEL",
    "LabBuild",
    "LabBuildError",
    "LabIdentity",
    "LabObjects",
    "build_lab_objects",
    "config_map_name",
    "internal_url",
    "lab_build",
    "parse_lab_labels",
    "pod_name",
    "pull_secret_name",
]

MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
"""Standard label naming the controller of an object."""

MANAGED_BY: Final = "labd"
"""Value of `MANAGED_BY_LABEL` on every object labd creates."""

MANAGED_SELECTOR: Final = f"{MANAGED_BY_LABEL}={MANAGED_BY}"
"""Label selector matching every object labd manages."""

NAME_LABEL: Final = "app.kubernetes.io/name"
"""Standard label naming the application an object is part of."""

NAME_VALUE: Final = "labd-lab"
"""Value of `NAME_LABEL` on lab objects."""

USER_LABEL: Final = "labd.io/user"
"""Label holding the user's slug."""

LAB_ID_LABEL: Final = "labd.io/lab-id"
"""Label holding the lab's id: which lab an object belongs to."""

USERNAME_ANNOTATION: Final = "labd.io/username"
"""Annotation holding the original JupyterHub username."""

SPEC_ANNOTATION: Final = "labd.io/spec"
"""Annotation holding the lab's spec as JSON (namespace and pod): `LabSpec.annotation`."""

CONTAINER_NAME: Final = "notebook"
"""Name of the lab container."""

SERVICE_NAME: Final = "lab"
"""Name of the lab's Service in its namespace."""

SERVICE_PREFIX_VAR: Final = "JUPYTERHUB_SERVICE_PREFIX"
"""Environment variable with the lab's URL path, used in `internal_url`."""

OWN_ENV: Final = frozenset(
    {
        "JUPYTERHUB_USER",
        "EXTERNAL_UID",
        "EXTERNAL_GID",
        "EXTERNAL_GROUPS",
        "JUPYTER_IMAGE_SPEC",
        "LAB_SIZE",
        "CPU_LIMIT",
        "CPU_GUARANTEE",
        "MEM_LIMIT",
        "MEM_GUARANTEE",
        "ENABLE_DEBUG",
        "RESET_USER_ENV",
    }
)
"""Variables labd sets in every lab (`LabBuild.environment`) from what it
knows of the user and the spawn: a request may not set them."""

COPIED_KEY_PREFIX: Final = "copied."
"""Prefix of copied secrets' keys in the lab Secret (hub keys are variable
names, which never contain a dot)."""

DOCKER_CONFIG_KEY: Final = ".dockerconfigjson"
"""The key of an image pull Secret (type ``kubernetes.io/dockerconfigjson``)."""

_PORT_NAME: Final = "http"
_TMP_VOLUME: Final = "tmp"
_COPIED_VOLUME: Final = "copied-secrets"
_COPIED_FILE_MODE: Final = 0o440
"""Read-only for the owner (root) and the pod's ``fsGroup`` (the user's group)."""
_NAMESPACE_NAME_LABEL: Final = "kubernetes.io/metadata.name"
"""Label Kubernetes (1.21+, or an admission hook before) sets on every
namespace to its name: how a NetworkPolicy selects a namespace by name."""
_DNS_PORT: Final = 53


class LabBuildError(ValueError):
    """The lab's objects cannot be built: its spec or the configuration is at fault."""


@dataclass(frozen=True, slots=True)
class LabBuild:
    """Everything about one lab that its Kubernetes objects depend on."""

    lab_id: str
    """The lab's id; the `LAB_ID_LABEL` of every object."""

    username: str
    """The original JupyterHub username."""

    slug: str
    """Kubernetes-safe form of the username (`labd.lab.naming.slugify`)."""

    namespace: str
    """The lab's namespace (`labd.lab.naming.lab_namespace`)."""

    spec: LabSpec
    """What was asked: image, size, CPU and memory (fixed when the lab was
    requested; ephemeral storage comes from the size's configuration), the
    user's ids and groups, options, the hub's non-secret environment
    (including ``JUPYTERHUB_SERVICE_PREFIX``); also the `SPEC_ANNOTATION`."""

    secret_env: dict[str, str]
    """Secret environment (``JUPYTERHUB_API_TOKEN``), kept in the Secret."""

    copied_secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    """Values of ``lab.secrets`` by ``secret_key``, base64-encoded as read
    from their source Secrets; never stored."""

    docker_config: str | None = field(default=None, repr=False)
    """The base64 ``.dockerconfigjson`` of ``lab.pull_secret``, if configured."""


@dataclass(frozen=True, slots=True)
class LabObjects:
    """The manifests of one lab, as plain dicts ready for create calls."""

    namespace: dict[str, Any]
    """The Namespace."""

    config_map: dict[str, Any]
    """ConfigMap ``<slug>-nb-env``: the lab's environment."""

    secret: dict[str, Any]
    """Secret ``<slug>-nb``: the lab's secret environment."""

    network_policy: dict[str, Any]
    """NetworkPolicy letting only the hub and the namespace reach the lab, and
    the lab reach only what ``lab.egress`` allows."""

    resource_quota: dict[str, Any] | None
    """ResourceQuota capping the namespace at the size's limits, if configured."""

    pvcs: tuple[dict[str, Any], ...]
    """One PersistentVolumeClaim per configured volume."""

    service: dict[str, Any]
    """Service ``lab`` in front of the pod."""

    pod: dict[str, Any]
    """Pod ``<slug>-nb`` running the lab."""

    pull_secret: dict[str, Any] | None = None
    """Secret ``<slug>-nb-pull``: the copied image pull secret, if configured."""

    def in_creation_order(self) -> list[dict[str, Any]]:
        """Return every object in the order they must be created.

        The namespace comes first (everything else lives in it) and the pod
        last (it needs its ConfigMap, Secret and claims, and starting it is
        what the user waits for).
        """
        objects = [self.namespace, self.config_map, self.secret, self.network_policy]
        if self.pull_secret is not None:
            objects.append(self.pull_secret)
        if self.resource_quota is not None:
            objects.append(self.resource_quota)
        return [*objects, *self.pvcs, self.service, self.pod]


@dataclass(frozen=True, slots=True)
class LabIdentity:
    """Which lab an object belongs to, read back from its metadata."""

    lab_id: str
    """The `LAB_ID_LABEL`."""

    slug: str
    """The `USER_LABEL`."""

    username: str | None
    """The `USERNAME_ANNOTATION`, or `None` if someone removed it."""

    spec: str | None
    """The `SPEC_ANNOTATION` JSON text, on namespaces and pods."""


def pod_name(slug: str) -> str:
    """Return the name of a user's lab pod (``<slug>-nb``)."""
    return f"{slug}-nb"


def pull_secret_name(slug: str) -> str:
    """Return the name of a user's copied image pull Secret (``<slug>-nb-pull``)."""
    return f"{slug}-nb-pull"


def config_map_name(slug: str) -> str:
    """Return the name of a user's lab ConfigMap (``<slug>-nb-env``)."""
    return f"{slug}-nb-env"


def internal_url(
    namespace: str, env: Mapping[str, str], config: Config, *, pod_ip: str | None = None
) -> str | None:
    """Return the URL at which the hub reaches a lab inside the cluster.

    Parameters
    ----------
    namespace
        The lab's namespace.
    env
        The lab's environment; `SERVICE_PREFIX_VAR` gives the path.
    config
        Supplies ``lab.internal_url_template`` and ``lab.port``.
    pod_ip
        The pod's address, once it has one.

    Returns
    -------
    str or None
        The template filled in, e.g. ``http://lab.labd-alice:8888/user/alice/``;
        `None` while the template needs ``{pod_ip}`` and the pod has none.
    """
    template = config.lab.internal_url_template
    if "{pod_ip}" in template and not pod_ip:
        return None
    return template.format(
        namespace=namespace,
        port=config.lab.port,
        service_prefix=env.get(SERVICE_PREFIX_VAR, ""),
        pod_ip=pod_ip or "",
    )


def parse_lab_labels(metadata: Mapping[str, Any]) -> LabIdentity | None:
    """Tell which lab an object belongs to, from its metadata.

    Parameters
    ----------
    metadata
        The object's ``metadata`` (a dict with ``labels`` and
        ``annotations``).

    Returns
    -------
    LabIdentity or None
        The lab's identity, or `None` if labd does not manage the object
        (no ``managed-by: labd`` label, or no lab id or user label).
    """
    labels = metadata.get("labels") or {}
    annotations = metadata.get("annotations") or {}
    if labels.get(MANAGED_BY_LABEL) != MANAGED_BY:
        return None
    lab_id, slug = labels.get(LAB_ID_LABEL), labels.get(USER_LABEL)
    if not lab_id or not slug:
        return None
    return LabIdentity(
        lab_id=lab_id,
        slug=slug,
        username=annotations.get(USERNAME_ANNOTATION),
        spec=annotations.get(SPEC_ANNOTATION),
    )


def build_lab_objects(lab: LabBuild, config: Config) -> LabObjects:
    """Build the Kubernetes objects of a lab.

    Parameters
    ----------
    lab
        The lab: identity, image, resources, user and environment.
    config
        labd's configuration; its ``lab`` section applies to every lab.

    Returns
    -------
    LabObjects
        Every manifest, with labd's labels and annotations.

    Raises
    ------
    LabBuildError
        If the lab's spec has no uid or gid, the lab would run as root
        (``uid`` 0), or a value of ``lab.secrets`` or ``lab.pull_secret``
        is missing from ``lab``.
    """
    builder = _Builder(lab, config)
    return LabObjects(
        namespace=builder.namespace(),
        config_map=builder.config_map(),
        secret=builder.secret(),
        network_policy=builder.network_policy(),
        resource_quota=builder.resource_quota() if config.lab.resource_quota else None,
        pvcs=tuple(builder.pvc(index) for index in range(len(config.lab.volumes))),
        service=builder.service(),
        pod=builder.pod(),
        pull_secret=builder.pull_secret() if config.lab.pull_secret is not None else None,
    )


def _cpu(cores: float) -> str:
    """Render CPU cores as a quantity: ``2`` or ``500m``."""
    millis = round(cores * 1000)
    return str(millis // 1000) if millis % 1000 == 0 else f"{millis}m"


def _namespace_peer(namespace: str, pod_labels: Mapping[str, str]) -> dict[str, Any]:
    """A NetworkPolicy peer: the pods of a namespace, or only those with these labels."""
    peer: dict[str, Any] = {
        "namespaceSelector": {"matchLabels": {_NAMESPACE_NAME_LABEL: namespace}}
    }
    if pod_labels:
        # In the same peer as the namespace selector: both must match.
        peer["podSelector"] = {"matchLabels": dict(pod_labels)}
    return peer


def _allowed_rule(allowed: EgressRuleConfig) -> dict[str, Any]:
    """The egress rule of one ``lab.egress.allow`` entry."""
    if allowed.cidr is not None:
        block: dict[str, Any] = {"cidr": allowed.cidr}
        if allowed.except_:
            block["except"] = list(allowed.except_)
        peer = {"ipBlock": block}
    else:
        assert allowed.namespace is not None  # validated: one of the two
        peer = _namespace_peer(allowed.namespace, allowed.pod_labels)
    rule: dict[str, Any] = {"to": [peer]}
    if allowed.ports:
        # Without ports the rule allows every port and protocol.
        rule["ports"] = [{"protocol": allowed.protocol, "port": port} for port in allowed.ports]
    return rule


class _Builder:
    """Builds one lab's manifests; one method per object."""

    def __init__(self, lab: LabBuild, config: Config) -> None:
        user = lab.spec.user
        if user.uid is None or user.gid is None:
            raise LabBuildError(f"the spec of lab {lab.lab_id} has no uid or gid")
        if user.uid == 0:
            raise LabBuildError(f"lab {lab.lab_id} would run as root (uid 0)")
        self.lab = lab
        self.config = config
        self.pod_name = pod_name(lab.slug)
        self.options = lab.spec.options
        self.limits = lab.spec.resources.limits
        self.requests = lab.spec.resources.requests
        self.env = lab.spec.env
        self.uid, self.gid = user.uid, user.gid
        self.groups = [(group.name, group.id) for group in user.groups]
        self.spec_annotation = lab.spec.annotation()

    def metadata(
        self, name: str, *, namespaced: bool = True, spec: bool = False
    ) -> dict[str, Any]:
        annotations = {USERNAME_ANNOTATION: self.lab.username}
        if spec:
            annotations[SPEC_ANNOTATION] = self.spec_annotation
        metadata: dict[str, Any] = {"name": name}
        if namespaced:
            metadata["namespace"] = self.lab.namespace
        metadata["labels"] = {
            MANAGED_BY_LABEL: MANAGED_BY,
            NAME_LABEL: NAME_VALUE,
            USER_LABEL: self.lab.slug,
            LAB_ID_LABEL: self.lab.lab_id,
        }
        metadata["annotations"] = annotations
        return metadata

    def namespace(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": self.metadata(self.lab.namespace, namespaced=False, spec=True),
        }

    def environment(self) -> dict[str, str]:
        """The ConfigMap's data: configured, then hub-given, then labd's own.

        Later sources win, so the hub cannot override what labd sets about
        the user; secret keys are left out (they come from the Secret).
        """
        options = self.options
        env = {**self.config.lab.env, **self.env}
        env.update(
            {
                "JUPYTERHUB_USER": self.lab.username,
                "EXTERNAL_UID": str(self.uid),
                "EXTERNAL_GID": str(self.gid),
                "EXTERNAL_GROUPS": ",".join(
                    f"{name}:{gid}" for name, gid in self.groups if gid is not None
                ),
                "JUPYTER_IMAGE_SPEC": options.image,
                "LAB_SIZE": options.size,
                "CPU_LIMIT": _cpu(self.limits.cpu),
                "CPU_GUARANTEE": _cpu(self.requests.cpu),
                "MEM_LIMIT": str(self.limits.memory),
                "MEM_GUARANTEE": str(self.requests.memory),
            }
        )
        if options.enable_debug:
            env["ENABLE_DEBUG"] = "TRUE"
        if options.reset_user_env:
            env["RESET_USER_ENV"] = "TRUE"
        return {key: env[key] for key in sorted(env) if key not in self.lab.secret_env}

    def config_map(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": self.metadata(config_map_name(self.lab.slug)),
            "data": self.environment(),
        }

    def secret_data(self) -> dict[str, str]:
        """The hub's secret environment, then the copied secrets under their prefix."""
        data = {
            key: base64.b64encode(value.encode()).decode()
            for key, value in sorted(self.lab.secret_env.items())
        }
        for copied in self.config.lab.secrets:
            key = COPIED_KEY_PREFIX + copied.secret_key
            if key in data:
                raise LabBuildError(f"the hub's secret variable {key!r} clashes with lab.secrets")
            value = self.lab.copied_secrets.get(copied.secret_key)
            if value is None:
                raise LabBuildError(f"no value was read for lab.secrets key {copied.secret_key!r}")
            data[key] = value
        return data

    def secret(self) -> dict[str, Any]:
        data = self.secret_data()
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": self.metadata(self.pod_name),
            "type": "Opaque",
            "data": data,
        }

    def pull_secret(self) -> dict[str, Any]:
        if self.lab.docker_config is None:
            raise LabBuildError("no value was read for lab.pull_secret")
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": self.metadata(pull_secret_name(self.lab.slug)),
            "type": "kubernetes.io/dockerconfigjson",
            "data": {DOCKER_CONFIG_KEY: self.lab.docker_config},
        }

    def pod_selector(self) -> dict[str, str]:
        return {LAB_ID_LABEL: self.lab.lab_id}

    def egress(self) -> list[dict[str, Any]]:
        """The egress rules: DNS, the hub, then ``lab.egress.allow`` in order.

        Any one rule matching lets a connection out; with no rule at all
        (everything switched off) the lab can open no connection.
        """
        egress = self.config.lab.egress
        if egress.allow_all:
            # An empty rule matches every destination, port and protocol.
            return [{}]
        rules: list[dict[str, Any]] = []
        if egress.dns:
            dns: dict[str, Any] = {
                "ports": [{"protocol": protocol, "port": _DNS_PORT} for protocol in ("UDP", "TCP")]
            }
            # Without "to", any address: the cluster DNS Service, a
            # node-local cache or the node's own resolver alike.
            if egress.dns_namespace is not None:
                dns["to"] = [_namespace_peer(egress.dns_namespace, egress.dns_pod_labels)]
            rules.append(dns)
        if egress.hub:
            rules.append({"to": [_namespace_peer(self.config.lab.hub_namespace, {})]})
        rules.extend(_allowed_rule(allowed) for allowed in egress.allow)
        return rules

    def network_policy(self) -> dict[str, Any]:
        hub = _namespace_peer(self.config.lab.hub_namespace, {})
        # An empty podSelector in a peer means every pod of the policy's
        # own namespace.
        own_namespace: dict[str, Any] = {"podSelector": {}}
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": self.metadata(self.pod_name),
            "spec": {
                "podSelector": {"matchLabels": self.pod_selector()},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [
                    {
                        "from": [hub, own_namespace],
                        "ports": [{"protocol": "TCP", "port": self.config.lab.port}],
                    }
                ],
                "egress": self.egress(),
            },
        }

    def resource_quota(self) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "ResourceQuota",
            "metadata": self.metadata(self.pod_name),
            "spec": {
                "hard": {
                    "limits.cpu": _cpu(self.limits.cpu),
                    "limits.memory": str(self.limits.memory),
                }
            },
        }

    def pvc_name(self, index: int) -> str:
        return f"{self.pod_name}-{self.config.lab.volumes[index].name}"

    def pvc(self, index: int) -> dict[str, Any]:
        volume = self.config.lab.volumes[index]
        spec: dict[str, Any] = {
            "accessModes": [volume.access_mode],
            "resources": {"requests": {"storage": str(volume.storage)}},
        }
        if volume.storage_class is not None:
            spec["storageClassName"] = volume.storage_class
        return {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": self.metadata(self.pvc_name(index)),
            "spec": spec,
        }

    def service(self) -> dict[str, Any]:
        port = self.config.lab.port
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": self.metadata(SERVICE_NAME),
            "spec": {
                "type": "ClusterIP",
                "selector": self.pod_selector(),
                "ports": [
                    {"name": _PORT_NAME, "protocol": "TCP", "port": port, "targetPort": port}
                ],
            },
        }

    def ephemeral_storage(self) -> tuple[int, int]:
        """The lab's ephemeral storage limit and request, in bytes, from its size.

        A size removed from the configuration since the lab was requested
        falls back to the defaults, so that its objects can still be rebuilt.
        """
        size = self.config.sizes.get(self.options.size)
        if size is None:
            return DEFAULT_EPHEMERAL_STORAGE_LIMIT, DEFAULT_EPHEMERAL_STORAGE_REQUEST
        return size.ephemeral_storage_limit, size.ephemeral_storage_request

    def volumes(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The pod's volumes and the container's mounts: ``/tmp``, then the claims.

        ``/tmp`` may grow to the whole ephemeral storage limit; the limit
        still caps ``/tmp`` and the container's logs together.
        """
        limit, _ = self.ephemeral_storage()
        volumes: list[dict[str, Any]] = [
            {"name": _TMP_VOLUME, "emptyDir": {"sizeLimit": str(limit)}}
        ]
        mounts: list[dict[str, Any]] = [{"name": _TMP_VOLUME, "mountPath": "/tmp"}]
        for index, volume in enumerate(self.config.lab.volumes):
            name = f"vol-{volume.name}"
            claim: dict[str, Any] = {"claimName": self.pvc_name(index)}
            if volume.read_only:
                claim["readOnly"] = True
            volumes.append({"name": name, "persistentVolumeClaim": claim})
            mounts.append(
                {"name": name, "mountPath": volume.mount_path, "readOnly": volume.read_only}
            )
        files = [copied for copied in self.config.lab.secrets if copied.path is not None]
        if files:
            items = [
                {"key": COPIED_KEY_PREFIX + copied.secret_key, "path": copied.secret_key}
                for copied in files
            ]
            volumes.append(
                {
                    "name": _COPIED_VOLUME,
                    "secret": {
                        "secretName": self.pod_name,
                        "items": items,
                        "defaultMode": _COPIED_FILE_MODE,
                    },
                }
            )
            mounts.extend(
                {
                    "name": _COPIED_VOLUME,
                    "mountPath": copied.path,
                    "subPath": copied.secret_key,
                    "readOnly": True,
                }
                for copied in files
            )
        return volumes, mounts

    def secret_env(self) -> list[dict[str, Any]]:
        """Variables read from the lab Secret: the hub's, then copied ones (which win)."""
        keys = {name: name for name in self.lab.secret_env}
        for copied in self.config.lab.secrets:
            if copied.env is not None:
                keys[copied.env] = COPIED_KEY_PREFIX + copied.secret_key
        return [
            {"name": name, "valueFrom": {"secretKeyRef": {"name": self.pod_name, "key": key}}}
            for name, key in sorted(keys.items())
        ]

    def readiness_probe(self) -> dict[str, Any]:
        """The container's readiness probe: an HTTP GET under the lab's prefix.

        Kubernetes calls the pod ready once the probe answers, and labd
        calls the lab ``running`` only then (`labd.kube.storage.pod_status`):
        a pod runs a few seconds before JupyterLab listens.
        """
        path = self.config.lab.readiness_path
        if path is None:
            return {}
        prefix = self.env.get(SERVICE_PREFIX_VAR, "/")
        return {
            "readinessProbe": {
                "httpGet": {"path": path.format(service_prefix=prefix), "port": _PORT_NAME},
                "periodSeconds": 2,
                "timeoutSeconds": 2,
                "failureThreshold": 3,
            }
        }

    def pod(self) -> dict[str, Any]:
        lab = self.lab
        volumes, mounts = self.volumes()
        storage_limit, storage_request = self.ephemeral_storage()
        container = {
            "name": CONTAINER_NAME,
            "image": self.options.image,
            "imagePullPolicy": self.config.lab.pull_policy,
            "envFrom": [{"configMapRef": {"name": config_map_name(lab.slug)}}],
            "env": self.secret_env(),
            "ports": [
                {"name": _PORT_NAME, "containerPort": self.config.lab.port, "protocol": "TCP"}
            ],
            "resources": {
                "limits": {
                    "cpu": _cpu(self.limits.cpu),
                    "memory": str(self.limits.memory),
                    "ephemeral-storage": str(storage_limit),
                },
                "requests": {
                    "cpu": _cpu(self.requests.cpu),
                    "memory": str(self.requests.memory),
                    "ephemeral-storage": str(storage_request),
                },
            },
            "securityContext": {
                "runAsNonRoot": True,
                "allowPrivilegeEscalation": False,
                "readOnlyRootFilesystem": True,
                "capabilities": {"drop": ["ALL"]},
            },
            "volumeMounts": mounts,
            **self.readiness_probe(),
        }
        supplemental = sorted({gid for _, gid in self.groups if gid is not None})
        pull_secrets = (
            {"imagePullSecrets": [{"name": pull_secret_name(lab.slug)}]}
            if self.config.lab.pull_secret is not None
            else {}
        )
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": self.metadata(self.pod_name, spec=True),
            "spec": {
                **pull_secrets,
                "automountServiceAccountToken": False,
                "enableServiceLinks": False,
                "restartPolicy": "Never",
                "securityContext": {
                    "runAsNonRoot": True,
                    "runAsUser": self.uid,
                    "runAsGroup": self.gid,
                    "fsGroup": self.gid,
                    "fsGroupChangePolicy": "OnRootMismatch",
                    "supplementalGroups": supplemental,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [container],
                "volumes": volumes,
            },
        }


def lab_build(lab: LabRecord) -> LabBuild:
    """Return what the object builder needs to build a lab, from its row."""
    return LabBuild(
        lab_id=lab.id,
        username=lab.username,
        slug=lab.slug,
        namespace=lab.namespace,
        spec=lab.spec,
        secret_env=lab.secret_env or {},
    )
