"""What the real-node tests check about a lab, the node and the network rule."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Callable
from typing import Any, Final

import httpx

from tests.realnode.node import POD_SUBNET, Node

__all__ = ["LAB_PORT", "first_ok", "nothing_left", "pod_url", "until"]

LAB_PORT: Final = 8888
"""labd's ``lab.port``, where the image's JupyterLab listens."""


def pod_url(pod: dict[str, Any], path: str) -> str:
    """The lab's URL at its pod IP, after checking the IP is one of this node's pods.

    The network rule: tests send traffic only to loopback, the bridge and
    this run's pod addresses.
    """
    ip = ipaddress.ip_address(pod["status"]["podIP"])
    assert ip in ipaddress.ip_network(POD_SUBNET), f"{ip} is not a pod address of this node"
    return f"http://{ip}:{LAB_PORT}{path}"


async def first_ok(url: str, *, within: float) -> float:
    """Wait for the first HTTP 200 from ``url``; return when it came (monotonic)."""
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=2) as client:
        while True:
            try:
                if (await client.get(url)).status_code == 200:
                    return time.monotonic()
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"no HTTP 200 from {url} within {within:g} s"
            await asyncio.sleep(0.2)


async def until(condition: Callable[[], bool], *, within: float, what: str) -> float:
    """Wait until a blocking ``condition`` holds; return when it did (monotonic)."""
    deadline = time.monotonic() + within
    while not await asyncio.to_thread(condition):
        assert time.monotonic() < deadline, f"{what} not within {within:g} s"
        await asyncio.sleep(0.2)
    return time.monotonic()


async def nothing_left(node: Node, namespace: str, *, within: float = 120) -> dict[str, float]:
    """Wait until the lab's namespace, its containers and its pod address are gone.

    Returns when each was gone (monotonic), by ``namespace`` and ``containers``.
    """
    api = node.control_plane.request
    gone = await until(
        lambda: api("GET", f"/api/v1/namespaces/{namespace}")[0] == 404,
        within=within,
        what=f"namespace {namespace} gone",
    )
    stopped = await until(
        lambda: not node.containerd_tasks(), within=60, what="every container stopped"
    )
    status, pods = api("GET", "/api/v1/pods")
    assert status == 200 and not pods["items"], pods
    assert not node.pod_addresses(), "an address of the pod is still allocated"
    return {"namespace": gone, "containers": stopped}
