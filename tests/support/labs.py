"""Sample labs and configurations, for the builder's tests and those of the kube layer.

`CASES` are the golden labs; tests/realk8s creates them on a real API server.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from labd.config import (
    Config,
    EgressConfig,
    EgressRuleConfig,
    LabConfig,
    Resources,
    SizeConfig,
    VolumeConfig,
)
from labd.kube.builder import LabBuild
from labd.lab.naming import lab_namespace
from labd.lab.spec import LabSpec

__all__ = [
    "CASES",
    "full_config",
    "full_egress",
    "full_lab",
    "full_sizes",
    "lab_build",
    "plain_config",
    "with_spec",
]

GiB = 2**30


def lab_build(username: str, *, lab_id: str | None = None, prefix: str = "labd") -> LabBuild:
    """Return a small lab for ``username``; the id is derived from the name unless given."""
    slug, namespace = lab_namespace(prefix, username)
    lab_id = lab_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"labd:{username}"))
    spec = {
        "options": {"image": "ghcr.io/labd/sciplat-lab:w_2026_47", "size": "small"},
        "resources": {
            "limits": {"cpu": 1.0, "memory": 4 * 2**30},
            "requests": {"cpu": 0.25, "memory": 2**30},
        },
        "user": {
            "username": username,
            "uid": 1101,
            "gid": 1101,
            "groups": [
                {"name": username, "id": 1101},
                {"name": "science", "id": 2000},
                {"name": "nogid", "id": None},
            ],
        },
        "env": {"JUPYTERHUB_SERVICE_PREFIX": f"/user/{username}/", "JUPYTERHUB_HOST": ""},
    }
    return LabBuild(
        lab_id=lab_id,
        username=username,
        slug=slug,
        namespace=namespace,
        spec=LabSpec.from_row(spec),
        secret_env={"JUPYTERHUB_API_TOKEN": f"token-of-{username}"},
    )


def with_spec(lab: LabBuild, **parts: dict[str, Any]) -> LabBuild:
    """Return ``lab`` with parts of its spec changed: ``with_spec(lab, user={"uid": 0})``."""
    row = lab.spec.to_row()
    for key, values in parts.items():
        row[key] = {**row.get(key, {}), **values}
    return dataclasses.replace(lab, spec=LabSpec.from_row(row))


def plain_config() -> Config:
    return Config(namespace_prefix="labd")


def full_egress() -> EgressConfig:
    """DNS to the cluster DNS pods, the hub, the internet but the cluster, a mirror."""
    return EgressConfig(
        dns_namespace="kube-system",
        dns_pod_labels={"k8s-app": "kube-dns"},
        allow=[
            EgressRuleConfig.model_validate(
                {
                    "cidr": "0.0.0.0/0",
                    "except": ["10.0.0.0/8", "169.254.169.254/32"],
                    "ports": [80, 443],
                }
            ),
            EgressRuleConfig(namespace="mirrors", pod_labels={"app": "devpi"}, ports=[3141]),
            EgressRuleConfig(cidr="2001:db8::/32"),
            EgressRuleConfig(cidr="192.0.2.7", ports=[123], protocol="UDP"),
        ],
    )


def full_sizes() -> dict[str, SizeConfig]:
    """The lab's ``medium`` size with its own ephemeral storage."""
    return {
        "medium": SizeConfig(
            limits=Resources(cpu=2.5, memory=8 * GiB, ephemeral_storage=20 * GiB),
            requests=Resources(cpu=0.5, memory=2 * GiB, ephemeral_storage=2 * GiB),
        )
    }


def full_config() -> Config:
    return Config(
        namespace_prefix="labd",
        sizes=full_sizes(),
        lab=LabConfig(
            port=8890,
            env={"SITE": "example", "JUPYTERHUB_USER": "spoofed"},
            hub_namespace="hub",
            egress=full_egress(),
            pull_policy="Always",
            resource_quota=True,
            volumes=[
                VolumeConfig(name="home", mount_path="/home", storage=10 * 2**30),
                VolumeConfig(
                    name="datasets",
                    mount_path="/datasets",
                    storage=2**40,
                    storage_class="shared",
                    access_mode="ReadOnlyMany",
                    read_only=True,
                ),
            ],
        ),
    )


def full_lab() -> LabBuild:
    lab = lab_build("Bob.Smith+test@example.org", lab_id="0b9e8a3c-6d1f-4f53-9c8e-2a7d5b4c3e21")
    return with_spec(
        lab,
        options={"size": "medium", "enable_debug": True, "reset_user_env": True},
        resources={
            "limits": {"cpu": 2.5, "memory": 8 * 2**30},
            "requests": {"cpu": 0.5, "memory": 2 * 2**30},
        },
    )


CASES: dict[str, tuple[LabBuild, Config]] = {
    "plain": (lab_build("alice", lab_id="5d1f9a52-3c4e-4b7a-8f21-6e0c9d8b7a65"), plain_config()),
    "full": (full_lab(), full_config()),
}
"""The golden labs (tests/kube/golden): the plain one with labd's defaults, the full
one with every egress form and a size with its own ephemeral storage."""
