"""Secrets copied into labs, end to end: labd on the simulated cluster.

The source Secrets are created as the cluster's admin, the way an operator
would; labd reads them with its own client and copies them into the lab.
The same test functions run on a real API server (tests/realk8s), where
labd holds only the rights of ``deploy/rbac.yaml``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import structlog
from kubernetes_asyncio.client import (
    ApiClient,
    Configuration,
    CoreV1Api,
    V1Namespace,
    V1ObjectMeta,
    V1Secret,
)
from kubernetes_asyncio.config import load_kube_config
from sqlalchemy import select

from labd.daemon.factory import Labd
from labd.daemon.logs import set_library_levels
from labd.db.schema import lab_events, lab_transitions, labs
from labd.lab.machine import LabState
from labd.lab.records import Actor, EventType
from labd.sim import SimCluster
from tests.support.core import LabdFactory, spec, stream, wait_state

SOURCE_NAMESPACE = "lab-sources"
BUTLER = "butler-value-5b1c9e"
AWS = "[default]\naws_secret_access_key = aws-value-77d0f2\n"
DOCKER_CONFIG = '{"auths": {"registry.example": {"auth": "cHVsbC12YWx1ZS0zYTll"}}}'

SECRETS_CONFIG: dict[str, Any] = {
    "secrets_namespace": SOURCE_NAMESPACE,
    "secrets": [
        {"secret_name": "lab-secrets", "secret_key": "butler-token", "env": "BUTLER_TOKEN"},
        {"secret_name": "lab-secrets", "secret_key": "aws.ini", "path": "/etc/lab/aws.ini"},
    ],
    "pull_secret": "pull",
}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


LEAKS = (
    BUTLER,
    "aws-value-77d0f2",
    "cHVsbC12YWx1ZS0zYTll",
    b64(BUTLER),
    b64(AWS),
    b64(DOCKER_CONFIG),
)
"""The secret values, plain and as Kubernetes returns them (base64)."""


@contextlib.asynccontextmanager
async def admin_api(cluster: Any) -> AsyncIterator[CoreV1Api]:
    """A client with the cluster's admin rights (a `SimCluster` or a real one)."""
    admin_kubeconfig = getattr(cluster, "admin_kubeconfig", None)
    if admin_kubeconfig is None:
        configuration = cluster.configuration()
    else:
        configuration = Configuration()
        await load_kube_config(
            config_file=str(admin_kubeconfig), client_configuration=configuration
        )
    async with ApiClient(configuration) as client:
        yield CoreV1Api(client)
    await asyncio.sleep(0.25)  # let TLS connections finish closing


async def create_sources(cluster: Any) -> None:
    """The operator's Secrets: two keys in ``lab-secrets``, a pull secret ``pull``."""
    async with admin_api(cluster) as core:
        await core.create_namespace(V1Namespace(metadata=V1ObjectMeta(name=SOURCE_NAMESPACE)))
        await core.create_namespaced_secret(
            SOURCE_NAMESPACE,
            V1Secret(
                metadata=V1ObjectMeta(name="lab-secrets"),
                data={"butler-token": b64(BUTLER), "aws.ini": b64(AWS)},
            ),
        )
        await core.create_namespaced_secret(
            SOURCE_NAMESPACE,
            V1Secret(
                metadata=V1ObjectMeta(name="pull"),
                type="kubernetes.io/dockerconfigjson",
                data={".dockerconfigjson": b64(DOCKER_CONFIG)},
            ),
        )


async def database_text(labd: Labd) -> str:
    """Every row labd keeps about labs, as one text to search."""
    async with labd.database.engine.connect() as connection:
        rows = [
            row
            for table in (labs, lab_transitions, lab_events)
            for row in (await connection.execute(select(table))).all()
        ]
    return "\n".join(repr(tuple(row)) for row in rows)


def by_name(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {obj["metadata"]["name"]: obj for obj in objects}


def assert_no_values(text: str, where: str) -> None:
    leaked = [value for value in LEAKS if value in text]
    assert not leaked, f"secret values reached {where}"


async def test_spawn_copies_secrets(
    labd_factory: LabdFactory,
    sim: SimCluster,
    restore_logging: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await create_sources(sim)
    # Every logger as talkative as labd ever lets it be (log_level: debug).
    caplog.set_level(logging.DEBUG)
    set_library_levels("debug")
    logging.getLogger("labd.test").debug("standard logs are captured")
    with structlog.testing.capture_logs() as logs:
        labd: Labd = await labd_factory(lab=SECRETS_CONFIG, log_level="debug")
        await labd.service.create("alice", spec(), actor=Actor.HUB)
        lab = await wait_state(labd, "alice", LabState.RUNNING, LabState.FAILED, within=20)
        assert lab.state is LabState.RUNNING, lab.last_error

    secrets = by_name(sim.objects("secrets", "labd-alice"))
    data = secrets["alice-nb"]["data"]
    assert data["copied.butler-token"] == b64(BUTLER)
    assert data["copied.aws.ini"] == b64(AWS)
    assert data["JUPYTERHUB_API_TOKEN"] == b64("token-of-the-lab")
    pull = secrets["alice-nb-pull"]
    assert pull["type"] == "kubernetes.io/dockerconfigjson"
    assert pull["data"] == {".dockerconfigjson": b64(DOCKER_CONFIG)}

    pod = by_name(sim.objects("pods", "labd-alice"))["alice-nb"]
    assert pod["spec"]["imagePullSecrets"] == [{"name": "alice-nb-pull"}]
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env["BUTLER_TOKEN"] == {"name": "alice-nb", "key": "copied.butler-token"}
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/etc/lab/aws.ini"]
    assert (mount["subPath"], mount["readOnly"]) == ("aws.ini", True)
    (volume,) = [v for v in pod["spec"]["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "alice-nb"
    assert volume["secret"]["items"] == [{"key": "copied.aws.ini", "path": "aws.ini"}]

    assert_no_values(await database_text(labd), "the database")
    standard = caplog.text
    assert "standard logs are captured" in standard
    assert_no_values(standard, "the standard logs")
    assert "token-of-the-lab" not in standard, "the hub's token reached the standard logs"
    assert_no_values(repr(logs), "the structured logs")
    assert logs, "logs were captured"


async def test_missing_secret_or_key_fails_the_spawn(
    labd_factory: LabdFactory, sim: SimCluster
) -> None:
    await create_sources(sim)
    absent = {**SECRETS_CONFIG, "pull_secret": None}
    absent["secrets"] = [*absent["secrets"], {"secret_name": "absent", "secret_key": "k"}]
    no_key = {**SECRETS_CONFIG, "secrets": [{"secret_name": "lab-secrets", "secret_key": "k"}]}
    cases = [
        (absent, f"Secret {SOURCE_NAMESPACE}/absent does not exist"),
        (no_key, f"Secret {SOURCE_NAMESPACE}/lab-secrets has no key k"),
    ]
    for lab_config, message in cases:
        labd: Labd = await labd_factory(lab=lab_config)
        await labd.service.create("alice", spec(), actor=Actor.HUB)
        events = await asyncio.wait_for(stream(labd, "alice"), 10)
        assert [(e.type, e.message) for e in events[-2:]] == [
            (EventType.ERROR, message),
            (EventType.FAILED, "Lab spawn failed"),
        ]
        lab = await labd.store.get_latest_lab("alice")
        assert lab is not None
        assert (lab.state, lab.last_error, lab.attempts) == (LabState.FAILED, message, 0)
        history = await labd.store.lab_history(lab.id)
        assert [(t.from_state, t.to_state) for t in history][-1] == ("creating", "failed")
        assert not [n for n in sim.objects("namespaces") if n["metadata"]["name"] == "labd-alice"]
        await labd.service.delete("alice", actor=Actor.HUB)
        await labd.stop()


SECRET_ENV = {
    "api_key": "v1-apikey-0c5e",
    "DB_PASS": "v2-dbpass-81fa",
    "github_token": "v3-ghtoken-4b7d",
    "COOKIE": "v4-cookie-e93a",
}
"""Secret variables of a create request that the old, case-sensitive rule let through."""


async def test_secret_env_stays_out_of_the_database(
    labd_factory: LabdFactory, sim: SimCluster
) -> None:
    """Secret names in any case go to the lab's Secret only, never to ``labs.spec``."""
    labd: Labd = await labd_factory()
    body = spec()
    body = body.model_copy(update={"env": {**body.env, **SECRET_ENV, "LANG": "C.UTF-8"}})
    await labd.service.create("alice", body, actor=Actor.HUB)
    async with labd.database.engine.connect() as connection:
        (stored,) = (await connection.execute(select(labs.c.spec))).scalars().all()
    assert stored["env"] == {"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/", "LANG": "C.UTF-8"}
    lab = await wait_state(labd, "alice", LabState.RUNNING, LabState.FAILED, within=20)
    assert lab.state is LabState.RUNNING, lab.last_error

    data = by_name(sim.objects("secrets", "labd-alice"))["alice-nb"]["data"]
    assert {name: data[name] for name in SECRET_ENV} == {
        name: b64(value) for name, value in SECRET_ENV.items()
    }
    config_map = by_name(sim.objects("configmaps", "labd-alice"))["alice-nb-env"]
    assert config_map["data"]["LANG"] == "C.UTF-8"
    text = await database_text(labd) + repr(config_map)
    leaked = [name for name, value in SECRET_ENV.items() if value in text]
    assert not leaked, "secret variables reached the database or the ConfigMap"
