"""Labs that fail on the real node: the kubelet's reason reaches labd's history.

Each lab is spawned through labd's REST API as in `test_lab`, fails in the
container, and is then stopped by the hub's ``DELETE``; nothing of it may
remain on the node.  The container lives long enough for the kubelet to
report the pod Running, but JupyterLab never answers its readiness probe,
so labd never calls the lab running: the spawn fails (event ``failed``,
status ``failed``, trigger ``fail``) with the container's reason.  Before
labd waited for Ready, the same labs were reported started and then
``terminated``, which JupyterHub reads as a clean exit.

Two faults are of labd's surroundings rather than of the lab: labd killed
with SIGKILL while the kubelet pulls the lab's image (labd runs as a
process of its own here, ``labd serve``, and is started again on the same
database), and a lab whose first process ignores SIGTERM, so only the
kubelet's SIGKILL at the end of the grace period stops it.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

import httpx
import pytest

from labd.lab.naming import lab_namespace
from tests.realnode.checks import first_ok, nothing_left, until
from tests.realnode.conftest import POD_DELETE_GRACE, LabdProcessFactory
from tests.realnode.node import Node
from tests.support.api import HUB, read_events

USER = "alice"
PREFIX = f"/user/{USER}/"
MiB = 2**20


async def _spawn_and_fail(
    labd_url: str, real_node: Node, *, size: str = "small", env: dict[str, str] | None = None
) -> str:
    """Spawn a lab that will fail; return the reason labd recorded, after deleting it."""
    body = {
        "options": {"image_class": "recommended", "size": [size]},
        "env": {"JUPYTERHUB_SERVICE_PREFIX": PREFIX, **(env or {})},
    }
    _, namespace = lab_namespace("labd", USER)
    async with httpx.AsyncClient(base_url=labd_url, headers=HUB, timeout=180) as client:
        created = await client.post(f"/spawner/v1/labs/{USER}/create", json=body)
        assert created.status_code == 201, created.text
        events, _ = await read_events(labd_url, USER, within=180)
        assert events[-1].type == "failed", events

        status = ""

        def ended() -> bool:
            nonlocal status
            state = httpx.get(f"{labd_url}/spawner/v1/labs/{USER}", headers=HUB).json()
            status = str(state["status"])
            return status != "pending"

        await until(ended, within=60, what="the lab's failure")
        assert status == "failed", status
        history: list[dict[str, Any]] = (
            await client.get(f"/spawner/v1/labs/{USER}/history")
        ).json()
        failures = [e for e in history if e["to"] == "failed"]
        assert [e["trigger"] for e in failures] == ["fail"], history
        reason: str = failures[0]["reason"]
        print(f"\nreal node: spawn {events[-1].type}, status {status}: {reason}")

        deleted = await client.delete(f"/spawner/v1/labs/{USER}")
        assert deleted.status_code == 204, deleted.text
    await nothing_left(real_node, namespace)
    return reason


async def test_lab_that_crashes_at_start(labd_url: str, real_node: Node) -> None:
    # start-lab hands the port to Jupyter, which refuses it and exits with 1.
    reason = await _spawn_and_fail(labd_url, real_node, env={"JUPYTER_PORT": "not-a-port"})
    assert reason.startswith("Lab pod failed: Error"), reason
    assert "exited with code 1" in reason, reason


@pytest.mark.labd(
    sizes={
        "tiny": {
            "limits": {"cpu": 1, "memory": 40 * MiB},
            "requests": {"cpu": 0.1, "memory": 40 * MiB},
        }
    },
    default_size="tiny",
)
async def test_lab_killed_for_memory(labd_url: str, real_node: Node) -> None:
    # JupyterLab needs about 100 MB to start: the kernel kills it at 40 MiB.
    reason = await _spawn_and_fail(labd_url, real_node, size="tiny")
    assert reason.startswith("Lab pod failed: OOMKilled"), reason


def _pod_events(real_node: Node, namespace: str) -> list[dict[str, Any]]:
    status, events = real_node.control_plane.request(
        "GET", f"/api/v1/namespaces/{namespace}/events"
    )
    assert status == 200, events
    items: list[dict[str, Any]] = events["items"]
    return items


async def test_labd_killed_while_the_image_pulls(
    labd_process_factory: LabdProcessFactory, real_node: Node
) -> None:
    real_node.forget_images()
    labd = await labd_process_factory()
    slug, namespace = lab_namespace("labd", USER)
    token = secrets.token_hex(16)
    body = {
        "options": {"image_class": "recommended", "size": ["small"]},
        "env": {"JUPYTERHUB_SERVICE_PREFIX": PREFIX, "JUPYTER_TOKEN": token},
    }
    async with httpx.AsyncClient(base_url=labd.url, headers=labd.headers, timeout=60) as client:
        created = await client.post(f"/spawner/v1/labs/{USER}/create", json=body)
        assert created.status_code == 201, created.text
        await until(
            lambda: any(e["reason"] == "Pulling" for e in _pod_events(real_node, namespace)),
            within=120,
            what="the kubelet pulling the lab's image",
        )
        status, pod = real_node.control_plane.request(
            "GET", f"/api/v1/namespaces/{namespace}/pods/{slug}-nb"
        )
        assert status == 200, pod
        await labd.daemon.kill()

        # While labd is down the pull goes on (and may end, and the lab
        # start); the restarted labd takes the pod it made over, and the
        # spawn ends as it would have. The Events the kubelet wrote while
        # labd was down are not in the stream (docs/real-node.md).
        await labd.daemon.start()
        events, _ = await read_events(labd.url, USER, headers=labd.headers, within=180)
        messages = [event.data.get("message", "") for event in events]
        assert events[-1].type == "complete", messages
        assert any(message.startswith("Pulling image") for message in messages), messages
        state = (await client.get(f"/spawner/v1/labs/{USER}")).json()
        assert state["status"] == "running", state
        status, after = real_node.control_plane.request(
            "GET", f"/api/v1/namespaces/{namespace}/pods/{slug}-nb"
        )
        assert after["metadata"]["uid"] == pod["metadata"]["uid"], "the pod was made again"
        await first_ok(f"{state['internal_url']}api", within=5)

        history: list[dict[str, Any]] = (
            await client.get(f"/spawner/v1/labs/{USER}/history")
        ).json()
        assert [entry["to"] for entry in reversed(history)][-1] == "running", history
        assert not [entry for entry in history if entry["to"] == "failed"], history

        deleted = await client.delete(f"/spawner/v1/labs/{USER}")
        assert deleted.status_code == 204, deleted.text
    await nothing_left(real_node, namespace)


async def test_lab_that_ignores_sigterm(labd_url: str, real_node: Node) -> None:
    _, namespace = lab_namespace("labd", USER)
    body = {
        "options": {"image_class": "recommended", "size": ["small"]},
        "env": {"JUPYTERHUB_SERVICE_PREFIX": PREFIX, "LAB_IGNORE_SIGTERM": "1"},
    }
    async with httpx.AsyncClient(base_url=labd_url, headers=HUB, timeout=180) as client:
        created = await client.post(f"/spawner/v1/labs/{USER}/create", json=body)
        assert created.status_code == 201, created.text
        events, _ = await read_events(labd_url, USER, within=180)
        assert events[-1].type == "complete", events

        deleting = time.monotonic()
        deleted = await client.delete(f"/spawner/v1/labs/{USER}")
        assert deleted.status_code == 204, deleted.text
        gone = await nothing_left(real_node, namespace)
        # Jupyter stops within a second of SIGTERM; this lab lives on until
        # the kubelet kills it at the end of the grace period.
        assert gone["containers"] - deleting >= POD_DELETE_GRACE, gone["containers"] - deleting

        history: list[dict[str, Any]] = (
            await client.get(f"/spawner/v1/labs/{USER}/history")
        ).json()
        assert history[0]["to"] == "deleted", history
        assert not [entry for entry in history if entry["to"] == "failed"], history
