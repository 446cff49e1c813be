"""Server-side tables, as kubectl asks for them (``Accept: ...;as=Table;...``)."""

from __future__ import annotations

import datetime
import json
from typing import Any

import httpx
import pytest
from kubernetes_asyncio.client import CoreV1Api

from labd.sim import SimCluster
from labd.sim.tables import human_duration, negotiate, table
from tests.support.kubeapi import pod
from tests.support.waiting import eventually

#: What kubectl 1.31 sends for ``kubectl get``.
KUBECTL_ACCEPT = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,"
    "application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
)
TABLE = {"Accept": KUBECTL_ACCEPT}


def _columns(answer: dict[str, Any]) -> list[str]:
    return [column["name"] for column in answer["columnDefinitions"]]


async def _running(sim: SimCluster, namespace: str, name: str) -> None:
    def running() -> bool:
        pods = [p for p in sim.objects("pods", namespace) if p["metadata"]["name"] == name]
        return bool(pods) and pods[0].get("status", {}).get("phase") == "Running"

    await eventually(running)


async def test_pods_list_as_a_table_with_kubectls_columns(
    sim: SimCluster, core: CoreV1Api, control: httpx.AsyncClient, namespace: str
) -> None:
    await core.create_namespaced_pod(namespace, pod("nb", app="x"))
    await _running(sim, namespace, "nb")
    response = await control.get("/api/v1/pods", params={"limit": 500}, headers=TABLE)
    answer = response.json()
    assert (answer["kind"], answer["apiVersion"]) == ("Table", "meta.k8s.io/v1")
    assert answer["metadata"]["resourceVersion"] == str(sim.registry.resource_version)
    assert _columns(answer) == [
        *("Name", "Ready", "Status", "Restarts", "Age"),
        *("IP", "Node", "Nominated Node", "Readiness Gates"),
    ]
    assert [c["priority"] for c in answer["columnDefinitions"]] == [0] * 5 + [1] * 4
    [row] = answer["rows"]
    name, ready, status, restarts, age, ip, node, nominated, gates = row["cells"]
    assert (name, ready, status, restarts) == ("nb", "1/1", "Running", "0")
    assert age.endswith("s")
    assert ip.startswith("10.244.")
    assert (node, nominated, gates) == ("sim-node", "<none>", "<none>")
    # kubectl reads -A's NAMESPACE column and --show-labels from the row's metadata.
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["namespace"] == namespace
    assert row["object"]["metadata"]["labels"] == {"app": "x"}


async def test_a_get_and_the_v1beta1_table_and_include_object(
    sim: SimCluster, core: CoreV1Api, control: httpx.AsyncClient, namespace: str
) -> None:
    await core.create_namespaced_pod(namespace, pod("nb"))
    path = f"/api/v1/namespaces/{namespace}/pods/nb"
    answer = (await control.get(path, headers=TABLE)).json()
    assert answer["kind"] == "Table"
    assert [row["cells"][0] for row in answer["rows"]] == ["nb"]
    beta = {"Accept": "application/json;as=Table;v=v1beta1;g=meta.k8s.io"}
    whole = (await control.get(path, params={"includeObject": "Object"}, headers=beta)).json()
    assert whole["apiVersion"] == "meta.k8s.io/v1beta1"
    assert whole["rows"][0]["object"]["kind"] == "Pod"
    bare = (await control.get(path, params={"includeObject": "None"}, headers=TABLE)).json()
    assert "object" not in bare["rows"][0]


async def test_plain_json_unless_a_table_is_asked_first(
    core: CoreV1Api, control: httpx.AsyncClient, namespace: str
) -> None:
    await core.create_namespaced_pod(namespace, pod("nb"))
    for accept in ("application/json", "application/json, application/json;as=Table;g=x", ""):
        answer = (await control.get("/api/v1/pods", headers={"Accept": accept})).json()
        assert answer["kind"] == "PodList", accept
    # Kinds the sim prints no table for: the plain list, which kubectl also accepts.
    answer = (await control.get("/api/v1/configmaps", headers=TABLE)).json()
    assert answer["kind"] == "ConfigMapList"
    # Subresources are never tables.
    status = await control.get(f"/api/v1/namespaces/{namespace}/pods/nb/status", headers=TABLE)
    assert status.json()["kind"] == "Pod"


async def test_namespaces_list_as_a_table(control: httpx.AsyncClient, namespace: str) -> None:
    answer = (await control.get("/api/v1/namespaces", headers=TABLE)).json()
    assert _columns(answer) == ["Name", "Status", "Age"]
    rows = {row["cells"][0]: row["cells"][1] for row in answer["rows"]}
    assert rows[namespace] == "Active"
    assert {"default", "kube-system"} <= set(rows)


async def test_a_watch_sends_one_row_tables_with_the_columns_once(
    sim: SimCluster, core: CoreV1Api, control: httpx.AsyncClient, namespace: str
) -> None:
    version = str(sim.registry.resource_version)
    params = {"watch": "true", "resourceVersion": version, "timeoutSeconds": "3"}
    events: list[dict[str, Any]] = []
    await core.create_namespaced_pod(namespace, pod("nb"))
    async with control.stream(
        "GET", f"/api/v1/namespaces/{namespace}/pods", params=params, headers=TABLE
    ) as response:
        async for line in response.aiter_lines():
            events.append(json.loads(line))
            if events[-1]["object"]["rows"][0]["cells"][2] == "Running":
                break
    assert events[0]["type"] == "ADDED"
    assert all(event["object"]["kind"] == "Table" for event in events)
    assert _columns(events[0]["object"])[:3] == ["Name", "Ready", "Status"]
    assert all(event["object"]["columnDefinitions"] is None for event in events[1:])
    assert events[-1]["object"]["rows"][0]["cells"][1] == "1/1"


NOW = datetime.datetime(2026, 12, 1, 12, 0, 0, tzinfo=datetime.UTC)


def _pod_status(**status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "nb", "creationTimestamp": "2026-12-01T11:57:00Z"},
        "spec": {"containers": [{"name": "notebook"}]},
        "status": status,
    }


@pytest.mark.parametrize(
    ("status", "deleting", "expected"),
    [
        ({"phase": "Pending"}, False, "Pending"),
        (
            {
                "phase": "Pending",
                "containerStatuses": [{"state": {"waiting": {"reason": "ImagePullBackOff"}}}],
            },
            False,
            "ImagePullBackOff",
        ),
        (
            {
                "phase": "Failed",
                "containerStatuses": [
                    {"state": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}}
                ],
            },
            False,
            "OOMKilled",
        ),
        (
            {"phase": "Failed", "containerStatuses": [{"state": {"terminated": {"exitCode": 3}}}]},
            False,
            "ExitCode:3",
        ),
        (
            {
                "phase": "Running",
                "containerStatuses": [{"ready": True, "state": {"running": {}}}],
            },
            True,
            "Terminating",
        ),
        ({"phase": "Succeeded", "reason": "Evicted"}, False, "Evicted"),
    ],
)
def test_pod_status_cell_follows_kubectl(
    status: dict[str, Any], deleting: bool, expected: str
) -> None:
    obj = _pod_status(**status)
    if deleting:
        obj["metadata"]["deletionTimestamp"] = "2026-12-01T12:00:00Z"
    fmt = negotiate(KUBECTL_ACCEPT, None, "pods")
    assert fmt is not None
    [row] = table(fmt, "pods", [obj], now=NOW)["rows"]
    assert row["cells"][2] == expected
    assert row["cells"][4] == "3m"
    assert ("conditions" in row) == (status["phase"] in ("Succeeded", "Failed"))


def test_restarts_show_when_the_last_one_was() -> None:
    obj = _pod_status(
        phase="Running",
        containerStatuses=[
            {
                "ready": True,
                "restartCount": 2,
                "state": {"running": {}},
                "lastState": {"terminated": {"finishedAt": "2026-12-01T11:59:30Z"}},
            }
        ],
    )
    fmt = negotiate(KUBECTL_ACCEPT, None, "pods")
    assert fmt is not None
    cells = table(fmt, "pods", [obj], now=NOW)["rows"][0]["cells"]
    assert cells[1:4] == ["1/1", "Running", "2 (30s ago)"]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "<invalid>"),
        (-1, "0s"),
        (0, "0s"),
        (119, "119s"),
        (120, "2m"),
        (125, "2m5s"),
        (600, "10m"),
        (3 * 3600 - 1, "179m"),
        (3 * 3600, "3h"),
        (3 * 3600 + 60, "3h1m"),
        (8 * 3600, "8h"),
        (48 * 3600, "2d"),
        (50 * 3600, "2d2h"),
        (8 * 86400, "8d"),
        (2 * 365 * 86400, "2y"),
        (2 * 365 * 86400 + 86400, "2y1d"),
        (9 * 365 * 86400, "9y"),
    ],
)
def test_ages_read_as_kubectl_prints_them(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text
