"""Reading the Secrets labs get copies of, from the simulated cluster."""

from __future__ import annotations

import base64

import pytest
from kubernetes_asyncio.client import ApiClient, CoreV1Api, V1Namespace, V1ObjectMeta, V1Secret

from labd.config import LabConfig
from labd.kube.client import KubeError
from labd.kube.copying import SecretSourceError, read_copied_secrets
from labd.kube.storage import LabKube
from labd.sim import SimCluster


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
async def sources(api_client: ApiClient) -> None:
    """Namespace ``labd`` with Secrets ``lab-secrets`` (two keys) and ``pull``."""
    core = CoreV1Api(api_client)
    await core.create_namespace(V1Namespace(metadata=V1ObjectMeta(name="labd")))
    await core.create_namespaced_secret(
        "labd",
        V1Secret(
            metadata=V1ObjectMeta(name="lab-secrets"),
            data={"butler-token": b64("butler"), "aws.ini": b64("[default]\n")},
        ),
    )
    await core.create_namespaced_secret(
        "labd",
        V1Secret(
            metadata=V1ObjectMeta(name="pull"),
            type="kubernetes.io/dockerconfigjson",
            data={".dockerconfigjson": b64('{"auths": {}}')},
        ),
    )


def lab_config(*keys: tuple[str, str], pull_secret: str | None = None) -> LabConfig:
    return LabConfig.model_validate(
        {
            "secrets_namespace": "labd",
            "secrets": [{"secret_name": name, "secret_key": key} for name, key in keys],
            "pull_secret": pull_secret,
        }
    )


@pytest.mark.usefixtures("sources")
async def test_one_get_per_distinct_secret(
    kube: LabKube, calls: list[tuple[str, str, bool]]
) -> None:
    config = lab_config(
        ("lab-secrets", "butler-token"), ("lab-secrets", "aws.ini"), pull_secret="pull"
    )
    values = await read_copied_secrets(kube, config)
    assert values.secrets == {"butler-token": b64("butler"), "aws.ini": b64("[default]\n")}
    assert values.docker_config == b64('{"auths": {}}')
    assert calls == [("get", "Secret", False), ("get", "Secret", False)]
    assert b64("butler") not in repr(values)


async def test_nothing_configured_reads_nothing(
    kube: LabKube, calls: list[tuple[str, str, bool]]
) -> None:
    values = await read_copied_secrets(kube, LabConfig())
    assert (values.secrets, values.docker_config, calls) == ({}, None, [])


@pytest.mark.usefixtures("sources")
@pytest.mark.parametrize(
    ("source", "message"),
    [
        (lab_config(("absent", "k")), "Secret labd/absent does not exist"),
        (lab_config(("lab-secrets", "nope")), "Secret labd/lab-secrets has no key nope"),
        (lab_config(pull_secret="absent"), "Secret labd/absent does not exist"),
        (
            lab_config(pull_secret="lab-secrets"),
            "Secret labd/lab-secrets has no key .dockerconfigjson",
        ),
    ],
)
async def test_missing_secret_or_key_is_named(
    kube: LabKube, source: LabConfig, message: str
) -> None:
    with pytest.raises(SecretSourceError) as info:
        await read_copied_secrets(kube, source)
    assert str(info.value) == message


async def test_server_errors_stay_kubernetes_errors(kube: LabKube, sim: SimCluster) -> None:
    sim.faults.add_error("get", "secrets", status=503, rate=1.0)
    with pytest.raises(KubeError) as info:
        await read_copied_secrets(kube, lab_config(("lab-secrets", "k")))
    assert info.value.retryable
