"""The object builder with copied secrets and an image pull secret (pure, no cluster)."""

from __future__ import annotations

import base64
import dataclasses
from typing import Any

import pytest

from labd.config import Config
from labd.kube.builder import (
    COPIED_KEY_PREFIX,
    DOCKER_CONFIG_KEY,
    LabBuild,
    LabBuildError,
    build_lab_objects,
)
from tests.support.labs import lab_build

DOCKER_CONFIG = base64.b64encode(b'{"auths": {}}').decode()


def secrets_config(**lab: Any) -> Config:
    return Config.model_validate(
        {
            "lab": {
                "secrets_namespace": "labd",
                "secrets": [
                    {"secret_name": "lab-secrets", "secret_key": "butler-token", "env": "BUTLER"},
                    {
                        "secret_name": "lab-secrets",
                        "secret_key": "aws.ini",
                        "path": "/opt/lab/secrets/aws.ini",
                    },
                    {
                        "secret_name": "other",
                        "secret_key": "both",
                        "env": "BOTH",
                        "path": "/opt/lab/secrets/both",
                    },
                ],
                "pull_secret": "pull",
                "volumes": [{"name": "home", "mount_path": "/home", "storage": "1Gi"}],
                **lab,
            }
        }
    )


def copied(lab: LabBuild | None = None) -> LabBuild:
    return dataclasses.replace(
        lab or lab_build("alice"),
        copied_secrets={"butler-token": "YnV0bGVy", "aws.ini": "YXdz", "both": "Ym90aA=="},
        docker_config=DOCKER_CONFIG,
    )


def test_copied_keys_join_the_lab_secret_under_their_prefix() -> None:
    objects = build_lab_objects(copied(), secrets_config())
    assert objects.secret["data"] == {
        "JUPYTERHUB_API_TOKEN": base64.b64encode(b"token-of-alice").decode(),
        "copied.butler-token": "YnV0bGVy",
        "copied.aws.ini": "YXdz",
        "copied.both": "Ym90aA==",
    }


def test_env_copies_read_the_lab_secret() -> None:
    lab = copied()
    (container,) = build_lab_objects(lab, secrets_config()).pod["spec"]["containers"]

    def ref(key: str) -> dict[str, Any]:
        return {"secretKeyRef": {"name": "alice-nb", "key": key}}

    assert container["env"] == [
        {"name": "BOTH", "valueFrom": ref("copied.both")},
        {"name": "BUTLER", "valueFrom": ref("copied.butler-token")},
        {"name": "JUPYTERHUB_API_TOKEN", "valueFrom": ref("JUPYTERHUB_API_TOKEN")},
    ]


def test_file_copies_are_read_only_sub_path_mounts_of_one_volume() -> None:
    spec = build_lab_objects(copied(), secrets_config()).pod["spec"]
    (container,) = spec["containers"]
    mounts = [m for m in container["volumeMounts"] if m["name"] == "copied-secrets"]
    assert mounts == [
        {
            "name": "copied-secrets",
            "mountPath": "/opt/lab/secrets/aws.ini",
            "subPath": "aws.ini",
            "readOnly": True,
        },
        {
            "name": "copied-secrets",
            "mountPath": "/opt/lab/secrets/both",
            "subPath": "both",
            "readOnly": True,
        },
    ]
    (volume,) = [v for v in spec["volumes"] if v["name"] == "copied-secrets"]
    assert volume["secret"] == {
        "secretName": "alice-nb",
        "items": [
            {"key": "copied.aws.ini", "path": "aws.ini"},
            {"key": "copied.both", "path": "both"},
        ],
        "defaultMode": 0o440,
    }
    # The other mounts are untouched.
    assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/tmp", "/home"}


def test_pull_secret_is_copied_and_referenced() -> None:
    lab = copied()
    objects = build_lab_objects(lab, secrets_config())
    assert objects.pull_secret is not None
    assert objects.pull_secret["type"] == "kubernetes.io/dockerconfigjson"
    assert objects.pull_secret["data"] == {DOCKER_CONFIG_KEY: DOCKER_CONFIG}
    assert objects.pull_secret["metadata"]["name"] == "alice-nb-pull"
    assert objects.pull_secret["metadata"]["namespace"] == lab.namespace
    assert objects.pod["spec"]["imagePullSecrets"] == [{"name": "alice-nb-pull"}]
    order = [(o["kind"], o["metadata"]["name"]) for o in objects.in_creation_order()]
    assert order.index(("Secret", "alice-nb-pull")) < order.index(("Pod", "alice-nb"))


def test_nothing_copied_without_configuration() -> None:
    objects = build_lab_objects(lab_build("alice"), Config())
    assert objects.pull_secret is None
    assert "imagePullSecrets" not in objects.pod["spec"]
    assert not any(k.startswith(COPIED_KEY_PREFIX) for k in objects.secret["data"])
    assert all(v["name"] != "copied-secrets" for v in objects.pod["spec"]["volumes"])


def test_a_copied_env_wins_over_a_hub_variable_of_the_same_name() -> None:
    config = secrets_config(
        secrets=[{"secret_name": "s", "secret_key": "k", "env": "JUPYTERHUB_API_TOKEN"}],
        pull_secret=None,
    )
    lab = dataclasses.replace(lab_build("alice"), copied_secrets={"k": "dg=="})
    (container,) = build_lab_objects(lab, config).pod["spec"]["containers"]
    assert container["env"] == [
        {
            "name": "JUPYTERHUB_API_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": "alice-nb", "key": "copied.k"}},
        }
    ]


def test_missing_values_are_refused() -> None:
    config = secrets_config()
    with pytest.raises(LabBuildError, match=r"no value was read for lab\.secrets key 'both'"):
        build_lab_objects(
            dataclasses.replace(copied(), copied_secrets={"butler-token": "", "aws.ini": ""}),
            config,
        )
    with pytest.raises(LabBuildError, match=r"lab\.pull_secret"):
        build_lab_objects(dataclasses.replace(copied(), docker_config=None), config)


def test_a_hub_key_in_the_copied_namespace_is_refused_not_overwritten() -> None:
    lab = copied()
    lab = dataclasses.replace(lab, secret_env={**lab.secret_env, "copied.both": "hub value"})
    with pytest.raises(LabBuildError, match=r"clashes with lab\.secrets"):
        build_lab_objects(lab, secrets_config())


def test_values_stay_out_of_the_build_repr() -> None:
    assert "YnV0bGVy" not in repr(copied())
    assert DOCKER_CONFIG not in repr(copied())
