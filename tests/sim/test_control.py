"""The control API over HTTP: faults, rules, stats and objects."""

from __future__ import annotations

import httpx
import pytest
from kubernetes_asyncio.client import CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from labd.sim import SimCluster
from tests.support.kubeapi import pod
from tests.support.waiting import eventually


async def test_faults_round_trip(
    control: httpx.AsyncClient, core: CoreV1Api, namespace: str
) -> None:
    empty = (await control.get("/sim/v1/faults")).json()
    assert empty == {
        "errors": [],
        "latency": [],
        "watch": {"drop_after_events": None, "drop_rate": 0.0, "silent": False, "force_gone": 0},
    }
    spec = {
        "errors": [{"verb": "create", "resource": "pods", "rate": 1.0, "status": 429}],
        "latency": [{"verb": "get", "resource": "pods", "seconds": 0.01}],
        "watch": {"force_gone": 1},
    }
    response = await control.put("/sim/v1/faults", json=spec)
    assert response.status_code == 200
    assert response.json()["errors"][0]["status"] == 429
    with pytest.raises(ApiException) as caught:
        await core.create_namespaced_pod(namespace, pod("nb"))
    assert caught.value.status == 429
    assert (await control.delete("/sim/v1/faults")).json() == empty
    await core.create_namespaced_pod(namespace, pod("nb"))


async def test_invalid_faults_are_refused(control: httpx.AsyncClient) -> None:
    response = await control.put("/sim/v1/faults", json={"errors": [{"rate": 2}]})
    assert response.status_code == 422
    assert response.json()["kind"] == "Status"
    unknown_verb = {"latency": [{"verb": "fetch", "seconds": 1}]}
    assert (await control.put("/sim/v1/faults", json=unknown_verb)).status_code == 422
    assert (await control.put("/sim/v1/faults", content=b"{nope")).status_code == 400


async def test_rules_round_trip(
    sim: SimCluster, control: httpx.AsyncClient, core: CoreV1Api, namespace: str
) -> None:
    rule = {"namespace": "lab-*", "name": "nb", "outcome": "crash:OOMKilled"}
    response = await control.post("/sim/v1/rules", json=rule)
    assert response.status_code == 201
    assert response.json() == {"default": "run", "rules": [rule]}
    await core.create_namespaced_pod(namespace, pod("nb"))

    async def failed() -> bool:
        return str((await core.read_namespaced_pod("nb", namespace)).status.phase) == "Failed"

    await eventually(failed)
    replaced = await control.put("/sim/v1/rules", json={"default": "exit:0", "rules": []})
    assert replaced.json() == {"default": "exit:0", "rules": []}
    assert str(sim.rules.default) == "exit:0"
    assert (await control.post("/sim/v1/rules", json={"outcome": "sideways"})).status_code == 422
    assert (await control.put("/sim/v1/rules", json={"default": "nope"})).status_code == 422
    await control.post("/sim/v1/rules", json={"outcome": "run"})
    assert (await control.delete("/sim/v1/rules")).json()["rules"] == []


async def test_stats_over_http(
    control: httpx.AsyncClient, core: CoreV1Api, namespace: str
) -> None:
    await control.delete("/sim/v1/stats")
    await core.list_namespaced_pod(namespace)
    stats = (await control.get("/sim/v1/stats")).json()
    assert stats["requests"] == {"list pods": 1}
    assert stats["total"] == 1
    assert (await control.delete("/sim/v1/stats")).json()["total"] == 0


async def test_objects_over_http(control: httpx.AsyncClient, namespace: str) -> None:
    items = (await control.get("/sim/v1/objects/namespaces")).json()["items"]
    assert [n["metadata"]["name"] for n in items] == ["default", "kube-system", namespace]
    assert (await control.get("/sim/v1/objects/widgets")).status_code == 404


async def test_control_api_needs_the_token(sim: SimCluster) -> None:
    async with httpx.AsyncClient(base_url=sim.url) as anonymous:
        assert (await anonymous.get("/sim/v1/stats")).status_code == 401
