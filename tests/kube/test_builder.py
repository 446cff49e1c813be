"""The object builder: golden manifests and the invariants every lab keeps.

The golden files under ``golden/`` are the exact manifests of two labs; any
change to what labd creates shows up as a failing diff.  After an intended
change, regenerate them with ``UPDATE_GOLDEN=1 pytest tests/kube/test_builder.py``
and review the diff.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import pytest

from labd.config import (
    Config,
    EgressConfig,
    LabConfig,
    Resources,
    SizeConfig,
)
from labd.kube.builder import (
    LAB_ID_LABEL,
    MANAGED_BY,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    NAME_VALUE,
    SPEC_ANNOTATION,
    USER_LABEL,
    USERNAME_ANNOTATION,
    LabObjects,
    build_lab_objects,
    internal_url,
    parse_lab_labels,
)
from tests.support.labs import CASES, full_egress, plain_config, with_spec

GOLDEN = Path(__file__).parent / "golden"
UPDATE = os.environ.get("UPDATE_GOLDEN") == "1"


GiB = 2**30
MiB = 2**20


def as_json(objects: LabObjects) -> str:
    return json.dumps(dataclasses.asdict(objects), indent=2, sort_keys=True) + "\n"


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str) -> None:
    lab, config = CASES[case]
    built = as_json(build_lab_objects(lab, config))
    path = GOLDEN / f"{case}.json"
    if UPDATE:
        path.write_text(built)
    assert path.exists(), f"{path} is missing: run with UPDATE_GOLDEN=1 to create it"
    assert built == path.read_text(), f"{case} differs from {path}"


def test_build_is_deterministic() -> None:
    lab, config = CASES["full"]
    assert build_lab_objects(lab, config) == build_lab_objects(lab, config)


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_object_carries_labels_and_username(case: str) -> None:
    lab, config = CASES[case]
    objects = build_lab_objects(lab, config).in_creation_order()
    assert len(objects) == (9 if case == "full" else 6)
    for obj in objects:
        meta = obj["metadata"]
        assert meta["labels"] == {
            MANAGED_BY_LABEL: MANAGED_BY,
            NAME_LABEL: NAME_VALUE,
            USER_LABEL: lab.slug,
            LAB_ID_LABEL: lab.lab_id,
        }, obj["kind"]
        assert meta["annotations"][USERNAME_ANNOTATION] == lab.username
        assert obj["apiVersion"] in ("v1", "networking.k8s.io/v1")
        if obj["kind"] != "Namespace":
            assert meta["namespace"] == lab.namespace
        identity = parse_lab_labels(meta)
        assert identity is not None
        assert (identity.lab_id, identity.slug, identity.username) == (
            lab.lab_id,
            lab.slug,
            lab.username,
        )


def test_creation_order_and_names() -> None:
    lab, config = CASES["full"]
    objects = build_lab_objects(lab, config).in_creation_order()
    assert [(o["kind"], o["metadata"]["name"]) for o in objects] == [
        ("Namespace", lab.namespace),
        ("ConfigMap", f"{lab.slug}-nb-env"),
        ("Secret", f"{lab.slug}-nb"),
        ("NetworkPolicy", f"{lab.slug}-nb"),
        ("ResourceQuota", f"{lab.slug}-nb"),
        ("PersistentVolumeClaim", f"{lab.slug}-nb-home"),
        ("PersistentVolumeClaim", f"{lab.slug}-nb-datasets"),
        ("Service", "lab"),
        ("Pod", f"{lab.slug}-nb"),
    ]


def test_spec_annotation_on_namespace_and_pod_only() -> None:
    lab, config = CASES["plain"]
    objects = build_lab_objects(lab, config)
    for obj in objects.in_creation_order():
        annotations = obj["metadata"]["annotations"]
        if obj["kind"] in ("Namespace", "Pod"):
            assert annotations[SPEC_ANNOTATION] == lab.spec.annotation()
        else:
            assert SPEC_ANNOTATION not in annotations


def test_pod_is_locked_down() -> None:
    lab, config = CASES["full"]
    pod = build_lab_objects(lab, config).pod
    spec = pod["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert spec["enableServiceLinks"] is False
    assert spec["restartPolicy"] == "Never"
    security = spec["securityContext"]
    assert security["runAsNonRoot"] is True
    assert (security["runAsUser"], security["runAsGroup"]) == (
        lab.spec.user.uid,
        lab.spec.user.gid,
    )
    assert security["supplementalGroups"] == [1101, 2000]
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = spec["containers"]
    assert container["name"] == "notebook"
    assert container["image"] == lab.spec.options.image
    assert container["imagePullPolicy"] == "Always"
    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert container["resources"] == {
        "limits": {
            "cpu": "2500m",
            "memory": str(8 * 2**30),
            "ephemeral-storage": str(20 * GiB),
        },
        "requests": {
            "cpu": "500m",
            "memory": str(2 * 2**30),
            "ephemeral-storage": str(2 * GiB),
        },
    }
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert set(mounts) == {"/tmp", "/home", "/datasets"}
    assert mounts["/datasets"]["readOnly"] is True
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes[mounts["/tmp"]["name"]] == {
        "name": "tmp",
        "emptyDir": {"sizeLimit": str(20 * GiB)},
    }
    claim = volumes[mounts["/home"]["name"]]["persistentVolumeClaim"]
    assert claim == {"claimName": f"{lab.slug}-nb-home"}


def test_environment_split_between_config_map_and_secret() -> None:
    lab, config = CASES["full"]
    objects = build_lab_objects(lab, config)
    data = objects.config_map["data"]
    assert data["JUPYTERHUB_USER"] == lab.username, "the configured env must not override it"
    assert data["SITE"] == "example"
    assert data["JUPYTERHUB_SERVICE_PREFIX"] == lab.spec.env["JUPYTERHUB_SERVICE_PREFIX"]
    assert data["EXTERNAL_UID"] == "1101"
    assert data["EXTERNAL_GROUPS"] == f"{lab.username}:1101,science:2000"
    assert data["ENABLE_DEBUG"] == "TRUE"
    assert data["RESET_USER_ENV"] == "TRUE"
    assert "JUPYTERHUB_API_TOKEN" not in data
    secret = objects.secret["data"]
    assert base64.b64decode(secret["JUPYTERHUB_API_TOKEN"]).decode() == "token-of-" + lab.username
    (container,) = objects.pod["spec"]["containers"]
    assert container["envFrom"] == [{"configMapRef": {"name": f"{lab.slug}-nb-env"}}]
    assert container["env"] == [
        {
            "name": "JUPYTERHUB_API_TOKEN",
            "valueFrom": {
                "secretKeyRef": {"name": f"{lab.slug}-nb", "key": "JUPYTERHUB_API_TOKEN"}
            },
        }
    ]


def test_debug_flags_absent_when_off() -> None:
    lab, config = CASES["plain"]
    data = build_lab_objects(lab, config).config_map["data"]
    assert "ENABLE_DEBUG" not in data
    assert "RESET_USER_ENV" not in data


def test_network_policy_admits_hub_and_own_namespace_on_the_lab_port() -> None:
    lab, config = CASES["full"]
    policy = build_lab_objects(lab, config).network_policy["spec"]
    assert policy["podSelector"] == {"matchLabels": {LAB_ID_LABEL: lab.lab_id}}
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    (rule,) = policy["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8890}]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "hub"}}},
        {"podSelector": {}},
    ]


DNS_PORTS = [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]


def egress_of(config: Config) -> list[dict[str, Any]]:
    lab, _ = CASES["plain"]
    spec = build_lab_objects(lab, config).network_policy["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    rules: list[dict[str, Any]] = spec["egress"]
    return rules


def test_egress_by_default_allows_dns_anywhere_and_the_hub_namespace() -> None:
    assert egress_of(plain_config()) == [
        {"ports": DNS_PORTS},
        {
            "to": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "jupyterhub"}
                    }
                }
            ]
        },
    ]


def test_egress_allow_all_is_one_empty_rule() -> None:
    config = Config(lab=LabConfig(egress=full_egress().model_copy(update={"allow_all": True})))
    assert egress_of(config) == [{}]


def test_egress_with_everything_off_allows_nothing() -> None:
    config = Config(lab=LabConfig(egress=EgressConfig(dns=False, hub=False)))
    assert egress_of(config) == []


def test_egress_dns_selector_and_operator_entries() -> None:
    lab, config = CASES["full"]
    rules = build_lab_objects(lab, config).network_policy["spec"]["egress"]
    assert rules == [
        {
            "ports": DNS_PORTS,
            "to": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "kube-system"}
                    },
                    "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}},
                }
            ],
        },
        {"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "hub"}}}]},
        {
            "to": [
                {"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "169.254.169.254/32"]}}
            ],
            "ports": [{"protocol": "TCP", "port": 80}, {"protocol": "TCP", "port": 443}],
        },
        {
            "to": [
                {
                    "namespaceSelector": {
                        "matchLabels": {"kubernetes.io/metadata.name": "mirrors"}
                    },
                    "podSelector": {"matchLabels": {"app": "devpi"}},
                }
            ],
            "ports": [{"protocol": "TCP", "port": 3141}],
        },
        {"to": [{"ipBlock": {"cidr": "2001:db8::/32"}}]},
        {
            "to": [{"ipBlock": {"cidr": "192.0.2.7/32"}}],
            "ports": [{"protocol": "UDP", "port": 123}],
        },
    ]


def storage_of(objects: LabObjects) -> tuple[str, str, str]:
    """The pod's ephemeral storage limit and request, and its /tmp sizeLimit."""
    spec = objects.pod["spec"]
    (container,) = spec["containers"]
    (tmp,) = [v for v in spec["volumes"] if v["name"] == "tmp"]
    resources = container["resources"]
    return (
        resources["limits"]["ephemeral-storage"],
        resources["requests"]["ephemeral-storage"],
        tmp["emptyDir"]["sizeLimit"],
    )


def test_ephemeral_storage_and_tmp_size_limit_follow_the_size() -> None:
    small = SizeConfig(
        limits=Resources(cpu=1, memory=GiB, ephemeral_storage=3 * GiB),
        requests=Resources(cpu=1, memory=GiB, ephemeral_storage=GiB),
    )
    tiny = SizeConfig(
        limits=Resources(cpu=1, memory=GiB, ephemeral_storage=256 * MiB),
        requests=Resources(cpu=1, memory=GiB),
    )
    plain = SizeConfig(limits=Resources(cpu=1, memory=GiB), requests=Resources(cpu=1, memory=GiB))
    config = Config(sizes={"small": small, "tiny": tiny, "plain": plain}, default_size="small")
    lab, _ = CASES["plain"]
    expected = {
        "small": (str(3 * GiB), str(GiB)),
        "tiny": (str(256 * MiB), str(256 * MiB)),  # the default request, capped at the limit
        "plain": (str(8 * GiB), str(512 * MiB)),  # the defaults
        "gone": (str(8 * GiB), str(512 * MiB)),  # a size no longer configured
    }
    for size, (limit, request) in expected.items():
        objects = build_lab_objects(with_spec(lab, options={"size": size}), config)
        assert storage_of(objects) == (limit, request, limit), size


def test_service_and_quota() -> None:
    lab, config = CASES["full"]
    objects = build_lab_objects(lab, config)
    service = objects.service["spec"]
    assert service["selector"] == {LAB_ID_LABEL: lab.lab_id}
    assert [(p["port"], p["targetPort"]) for p in service["ports"]] == [(8890, 8890)]
    assert objects.resource_quota is not None
    assert objects.resource_quota["spec"]["hard"] == {
        "limits.cpu": "2500m",
        "limits.memory": str(8 * 2**30),
    }
    assert build_lab_objects(*CASES["plain"]).resource_quota is None


def test_root_is_refused() -> None:
    lab, config = CASES["plain"]
    with pytest.raises(ValueError, match="root"):
        build_lab_objects(with_spec(lab, user={"uid": 0}), config)


def test_internal_url() -> None:
    config = plain_config()
    env = {"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/"}
    assert internal_url("labd-alice", env, config) == "http://lab.labd-alice:8888/user/alice/"
    custom = Config(
        lab=LabConfig(internal_url_template="https://{namespace}.labs:{port}/x{service_prefix}")
    )
    assert internal_url("labd-bob", {}, custom) == "https://labd-bob.labs:8888/x"


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"labels": {LAB_ID_LABEL: "x", USER_LABEL: "alice"}},
        {"labels": {MANAGED_BY_LABEL: "helm", LAB_ID_LABEL: "x", USER_LABEL: "alice"}},
        {"labels": {MANAGED_BY_LABEL: MANAGED_BY, USER_LABEL: "alice"}},
        {"labels": {MANAGED_BY_LABEL: MANAGED_BY, LAB_ID_LABEL: "x"}},
    ],
)
def test_parse_lab_labels_ignores_foreign_objects(metadata: dict[str, Any]) -> None:
    assert parse_lab_labels(metadata) is None


def test_parse_lab_labels_without_annotations() -> None:
    identity = parse_lab_labels(
        {"labels": {MANAGED_BY_LABEL: MANAGED_BY, LAB_ID_LABEL: "x", USER_LABEL: "alice"}}
    )
    assert identity is not None
    assert (identity.username, identity.spec) == (None, None)


def test_the_lab_answers_its_readiness_probe_under_its_prefix() -> None:
    lab, config = CASES["full"]
    (container,) = build_lab_objects(lab, config).pod["spec"]["containers"]
    prefix = lab.spec.env["JUPYTERHUB_SERVICE_PREFIX"]
    assert container["readinessProbe"] == {
        "httpGet": {"path": f"{prefix}api", "port": "http"},
        "periodSeconds": 2,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
    }
    no_probe = config.model_copy(
        update={"lab": config.lab.model_copy(update={"readiness_path": None})}
    )
    (container,) = build_lab_objects(lab, no_probe).pod["spec"]["containers"]
    assert "readinessProbe" not in container


def test_an_internal_url_with_the_pod_ip_waits_for_the_address() -> None:
    _, config = CASES["full"]
    config = config.model_copy(
        update={
            "lab": config.lab.model_copy(
                update={"internal_url_template": "http://{pod_ip}:{port}{service_prefix}"}
            )
        }
    )
    env = {"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/"}
    assert internal_url("labd-alice", env, config) is None
    assert (
        internal_url("labd-alice", env, config, pod_ip="10.88.0.12")
        == f"http://10.88.0.12:{config.lab.port}/user/alice/"
    )
