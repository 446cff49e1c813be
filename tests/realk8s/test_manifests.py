"""The builder's manifests on a real API server: validated, stored as built.

The golden labs of tests/kube (the plain one with labd's defaults, the full
one with every NetworkPolicy egress form ``lab.egress`` can produce and a
size with its own ephemeral storage) are created with labd's own
credentials.  kube-apiserver validates each object as it would in a real
cluster (ipBlock ``except`` inside ``cidr``, ports, label selectors,
quantities), and what it stores must be what labd built.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from kubernetes_asyncio.client import ApiClient

from labd.config import KubernetesConfig
from labd.kube.builder import build_lab_objects
from labd.kube.client import RetryPolicy, create_api_client
from labd.kube.storage import LabKube
from labd.lab.quantity import parse_quantity
from tests.support.labs import CASES
from tests.support.realcluster import RealCluster


def _quantities(resources: dict[str, dict[str, str]]) -> dict[str, dict[str, float]]:
    """Resources with each quantity as a number (the server renders ``8Gi``)."""
    return {
        side: {name: parse_quantity(value) for name, value in values.items()}
        for side, values in resources.items()
    }


@pytest.mark.parametrize("case", sorted(CASES))
async def test_lab_objects_validate_and_are_stored_as_built(
    sim: RealCluster, tmp_path: Path, case: str
) -> None:
    lab, case_config = CASES[case]
    kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")
    config = case_config.model_copy(
        update={"kubernetes": KubernetesConfig(kubeconfig=kubeconfig, request_timeout=10)}
    )
    objects = build_lab_objects(lab, config)
    api_client: ApiClient = await create_api_client(config.kubernetes)
    try:
        await LabKube(api_client, config, retry=RetryPolicy(attempts=1)).create_lab_objects(
            objects
        )
    finally:
        await api_client.close()
        await asyncio.sleep(0.25)  # let the TLS connections finish closing

    (policy,) = sim.objects("networkpolicies", lab.namespace)
    assert policy["spec"] == objects.network_policy["spec"]
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]

    (pod,) = sim.objects("pods", lab.namespace)
    (built,) = objects.pod["spec"]["containers"]
    (stored,) = pod["spec"]["containers"]
    assert _quantities(stored["resources"]) == _quantities(built["resources"])
    assert "ephemeral-storage" in stored["resources"]["limits"]
    tmp: dict[str, Any] = next(v for v in pod["spec"]["volumes"] if v["name"] == "tmp")
    built_tmp = objects.pod["spec"]["volumes"][0]
    assert parse_quantity(tmp["emptyDir"]["sizeLimit"]) == parse_quantity(
        built_tmp["emptyDir"]["sizeLimit"]
    )
