"""Image pulls on the real node: by digest with a pull secret, and pulls that fail.

A pull that fails leaves the pod Pending (``ErrImagePull``, then
``ImagePullBackOff``); labd keeps waiting until its spawn timeout, passing
the kubelet's Events on as progress messages, so the user reads why.  The
spawn timeout here is 30 s instead of 180 s to keep the tests short.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from labd.lab.naming import lab_namespace
from tests.realnode.checks import first_ok, nothing_left, pod_url
from tests.realnode.conftest import AuthRegistry, LabdFactory, LabRegistry
from tests.realnode.node import Node
from tests.support.api import HUB, read_events
from tests.support.registry import REPOSITORY

USER = "alice"
PREFIX = f"/user/{USER}/"
SPAWN_TIMEOUT = 30
PULL_NAMESPACE = "labd-pull-secrets"
PULL_SECRET = "lab-pull"


async def _spawn(labd_url: str, options: dict[str, Any]) -> tuple[str, list[str]]:
    """Create the lab and follow its spawn to the end: the last event's type, every message."""
    body = {
        "options": {"size": ["small"], **options},
        "env": {"JUPYTERHUB_SERVICE_PREFIX": PREFIX},
    }
    async with httpx.AsyncClient(base_url=labd_url, headers=HUB, timeout=30) as client:
        created = await client.post(f"/spawner/v1/labs/{USER}/create", json=body)
        assert created.status_code == 201, created.text
    events, _ = await read_events(labd_url, USER, within=SPAWN_TIMEOUT + 60)
    return events[-1].type, [str(event.data.get("message", "")) for event in events]


async def _failure(labd_url: str) -> tuple[str, str]:
    """The trigger and reason of the lab's one failure in its history."""
    async with httpx.AsyncClient(base_url=labd_url, headers=HUB, timeout=30) as client:
        history = (await client.get(f"/spawner/v1/labs/{USER}/history")).json()
    (failure,) = [e for e in history if e["to"] == "failed"]
    return failure["trigger"], failure["reason"]


async def _delete(labd_url: str, real_node: Node) -> None:
    async with httpx.AsyncClient(base_url=labd_url, headers=HUB, timeout=180) as client:
        deleted = await client.delete(f"/spawner/v1/labs/{USER}")
        assert deleted.status_code == 204, deleted.text
    await nothing_left(real_node, lab_namespace("labd", USER)[1])


async def test_tag_gone_from_the_registry(
    labd_factory: LabdFactory, real_node: Node, lab_registry: LabRegistry
) -> None:
    registry = lab_registry.registry
    digest = await registry.push("d_2026_11_25")
    labd_url = await labd_factory(timeouts={"spawn": SPAWN_TIMEOUT})
    # labd listed the tag when it started; now the registry forgets it.
    await registry.delete(digest)

    last, messages = await _spawn(labd_url, {"image_tag": "d_2026_11_25"})
    assert last == "failed", messages
    print(f"\nreal node: a tag gone from the registry: {messages}")
    assert any("Failed to pull image" in m and "not found" in m for m in messages), messages
    assert await _failure(labd_url) == ("timeout", f"Lab spawn timed out after {SPAWN_TIMEOUT} s")
    await _delete(labd_url, real_node)


def _pull_secret(real_node: Node, auth: AuthRegistry, password: str) -> None:
    """Create the pull Secret labd copies into each lab namespace (as the admin)."""
    api = real_node.control_plane.request
    status, body = api("POST", "/api/v1/namespaces", {"metadata": {"name": PULL_NAMESPACE}})
    assert status in (201, 409), body
    host = f"127.0.0.1:{auth.registry.port}"
    credentials = base64.b64encode(f"{auth.username}:{password}".encode()).decode()
    config = json.dumps({"auths": {host: {"auth": credentials}}})
    secret = {
        "metadata": {"name": PULL_SECRET},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(config.encode()).decode()},
    }
    path = f"/api/v1/namespaces/{PULL_NAMESPACE}/secrets"
    status, body = api("DELETE", f"{path}/{PULL_SECRET}")
    assert status in (200, 404), body
    status, body = api("POST", path, secret)
    assert status == 201, body


async def _labd_on(
    labd_factory: LabdFactory, auth: AuthRegistry, tmp_path: Path, *, pull_policy: str
) -> str:
    """labd reading the auth registry (with the right password) and copying the pull Secret."""
    password_file = tmp_path / "registry-password"
    password_file.write_text(auth.password)
    return await labd_factory(
        registry=auth.registry,
        images={
            "registry": {
                "url": auth.registry.url,
                "repository": REPOSITORY,
                "username": auth.username,
                "password_file": str(password_file),
            }
        },
        lab={
            "pull_secret": PULL_SECRET,
            "secrets_namespace": PULL_NAMESPACE,
            "pull_policy": pull_policy,
        },
        timeouts={"spawn": SPAWN_TIMEOUT},
    )


@pytest.mark.parametrize("right", [True, False], ids=["right-password", "wrong-password"])
async def test_pull_secret(
    labd_factory: LabdFactory,
    real_node: Node,
    auth_registry: AuthRegistry,
    tmp_path: Path,
    right: bool,
) -> None:
    auth = auth_registry
    _pull_secret(real_node, auth, auth.password if right else "not-the-password")
    # Always: with IfNotPresent, an image already on the node runs whatever
    # the pull secret says (the next test).
    labd_url = await _labd_on(labd_factory, auth, tmp_path, pull_policy="Always")

    last, messages = await _spawn(labd_url, {"image_class": "recommended"})
    if right:
        assert last == "complete", messages
        _, namespace = lab_namespace("labd", USER)
        status, pods = real_node.control_plane.request(
            "GET", f"/api/v1/namespaces/{namespace}/pods"
        )
        assert status == 200, pods
        (pod,) = pods["items"]
        assert pod["spec"]["imagePullSecrets"] == [{"name": f"{pod['metadata']['name']}-pull"}]
        assert pod["spec"]["containers"][0]["image"].endswith(auth.digests["w_2026_47"])
        await first_ok(pod_url(pod, f"{PREFIX}api"), within=60)
    else:
        print(f"\nreal node: a wrong pull secret: {messages}")
        assert last == "failed", messages
        assert any("401 Unauthorized" in m for m in messages), messages
        assert (await _failure(labd_url))[0] == "timeout"
    await _delete(labd_url, real_node)


async def test_image_on_the_node_runs_without_the_pull_secret(
    labd_factory: LabdFactory, real_node: Node, auth_registry: AuthRegistry, tmp_path: Path
) -> None:
    """With ``IfNotPresent`` (labd's default), only the pull checks credentials.

    Once one lab has pulled a private image onto the node, a lab whose pull
    Secret is wrong runs it too: the kubelet finds the image present and
    never asks the registry.  Kubernetes' ``AlwaysPullImages`` admission
    plugin, or ``lab.pull_policy: Always``, closes that gap.
    """
    auth = auth_registry
    labd_url = await _labd_on(labd_factory, auth, tmp_path, pull_policy="IfNotPresent")
    _pull_secret(real_node, auth, auth.password)
    last, messages = await _spawn(labd_url, {"image_class": "recommended"})
    assert last == "complete", messages
    await _delete(labd_url, real_node)

    _pull_secret(real_node, auth, "not-the-password")
    last, messages = await _spawn(labd_url, {"image_class": "recommended"})
    assert last == "complete", messages
    assert any("already present on machine" in m for m in messages), messages
    await _delete(labd_url, real_node)
