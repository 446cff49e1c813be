"""Spawn and delete timings on the real node, cold and warm image (opt-in).

Runs only with ``LABD_REALNODE_MEASURE=1`` as well as ``LABD_REALNODE=1``:
20 spawns take about 8 minutes per database.  Each round spawns a lab
through labd's REST API, waits for JupyterLab's first HTTP 200 at the pod
IP, deletes the lab and waits for its namespace to go.  Cold rounds remove
the image from containerd first, so the kubelet pulls it again.  The
figures are printed (``pytest -s``) and quoted in docs/real-node.md.

    LABD_REALNODE=1 LABD_REALNODE_MEASURE=1 .venv/bin/pytest -s -k sqlite \\
        tests/realnode/test_timings.py
"""

from __future__ import annotations

import os
import statistics
import time

import httpx
import pytest

from labd.lab.naming import lab_namespace
from tests.realnode.checks import first_ok, nothing_left, pod_url, until
from tests.realnode.conftest import LabRegistry
from tests.realnode.node import Node
from tests.support.api import HUB

ROUNDS = 10
USER = "alice"
PREFIX = f"/user/{USER}/"


def _summary(name: str, seconds: list[float]) -> str:
    ordered = sorted(seconds)
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return (
        f"{name}: p50 {statistics.median(ordered):.1f} s, p99 {p99:.1f} s, "
        f"min {ordered[0]:.1f} s, max {ordered[-1]:.1f} s (n={len(ordered)})"
    )


async def _round(labd_url: str, real_node: Node) -> tuple[float, float, float]:
    """One spawn and delete: seconds to running, to the first HTTP 200, delete to gone."""
    slug, namespace = lab_namespace("labd", USER)
    body = {
        "options": {"image_class": "recommended", "size": ["small"]},
        "env": {"JUPYTERHUB_SERVICE_PREFIX": PREFIX},
    }
    async with httpx.AsyncClient(base_url=labd_url, headers=HUB, timeout=180) as client:
        began = time.monotonic()
        created = await client.post(f"/spawner/v1/labs/{USER}/create", json=body)
        assert created.status_code == 201, created.text

        def running() -> bool:
            state = httpx.get(f"{labd_url}/spawner/v1/labs/{USER}", headers=HUB).json()
            assert state["status"] in ("pending", "running"), state
            return bool(state["status"] == "running")

        spawned = await until(running, within=180, what="running")
        status, pod = real_node.control_plane.request(
            "GET", f"/api/v1/namespaces/{namespace}/pods/{slug}-nb"
        )
        assert status == 200, pod
        answered = await first_ok(pod_url(pod, f"{PREFIX}api"), within=60)
        deleting = time.monotonic()
        deleted = await client.delete(f"/spawner/v1/labs/{USER}")
        assert deleted.status_code == 204, deleted.text
    gone = await nothing_left(real_node, namespace)
    return spawned - began, answered - began, gone["namespace"] - deleting


@pytest.mark.skipif(
    os.environ.get("LABD_REALNODE_MEASURE") != "1",
    reason="set LABD_REALNODE_MEASURE=1 (with LABD_REALNODE=1) to measure spawn timings",
)
async def test_spawn_timings(labd_url: str, real_node: Node, lab_registry: LabRegistry) -> None:
    results: dict[str, list[tuple[float, float, float]]] = {"cold": [], "warm": []}
    for kind in ("cold", "warm"):
        for _ in range(ROUNDS):
            if kind == "cold":
                await until(
                    lambda: not real_node.containerd_tasks(), within=60, what="no containers"
                )
                real_node.forget_images()
            results[kind].append(await _round(labd_url, real_node))
    lines = ["", f"real node timings, {ROUNDS} rounds each:"]
    for kind, rounds in results.items():
        lines.append(_summary(f"{kind} spawn request to running", [r[0] for r in rounds]))
        lines.append(_summary(f"{kind} spawn request to first HTTP 200", [r[1] for r in rounds]))
        lines.append(_summary(f"{kind} delete to namespace gone", [r[2] for r in rounds]))
    print("\n".join(lines))
