"""Manifests, raw answers and namespaces for tests that talk to a Kubernetes API.

The tests of tests/sim use them against the simulated cluster, and tests/realk8s
runs some of those tests unchanged against a real API server.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any, cast

import aiohttp
from kubernetes_asyncio.client import CoreV1Api
from kubernetes_asyncio.client.exceptions import ApiException

from tests.support.waiting import eventually

__all__ = ["make_namespace", "manifest", "pod", "raw", "status_of"]


def pod(
    name: str,
    *,
    outcome: str | None = None,
    image: str = "jupyter/lab:4.1",
    pull_policy: str | None = None,
    **labels: str,
) -> Any:
    """Return a minimal pod manifest with one ``notebook`` container.

    Without ``pull_policy`` the API server gives the container its default
    ``imagePullPolicy`` (``IfNotPresent`` for ``jupyter/lab:4.1``).
    """
    metadata: dict[str, Any] = {"name": name, "labels": labels}
    if outcome is not None:
        metadata["annotations"] = {"sim.labd.io/outcome": outcome}
    container: dict[str, Any] = {"name": "notebook", "image": image}
    if pull_policy is not None:
        container["imagePullPolicy"] = pull_policy
    return {"metadata": metadata, "spec": {"containers": [container]}}


def status_of(error: ApiException) -> dict[str, Any]:
    """Decode the Kubernetes Status body of an error response."""
    body: dict[str, Any] = json.loads(error.body or "{}")
    return body


def manifest(body: dict[str, Any]) -> Any:
    """Pass a dict manifest where kubernetes-asyncio's stubs ask for a model.

    The client serializes dicts and models alike (``sanitize_for_serialization``);
    only its type stubs insist on models.
    """
    return body


async def raw(call: Awaitable[object]) -> tuple[int, Any]:
    """Await a call made with ``_preload_content=False``; return status and JSON body.

    The stubs type such calls as returning models, but the client returns
    the aiohttp response.
    """
    response = cast(aiohttp.ClientResponse, await call)
    try:
        return response.status, await response.json()
    finally:
        response.release()


async def make_namespace(core: CoreV1Api, name: str) -> str:
    """Create a namespace and wait until its controllers have provisioned it.

    Two controllers of kube-controller-manager do that, each in its own time:
    the service account controller creates ``default`` (until then pods are
    refused) and the root CA publisher the ConfigMap ``kube-root-ca.crt``.
    """
    await core.create_namespace(manifest({"metadata": {"name": name}}))

    async def provisioned() -> bool:
        accounts = await core.list_namespaced_service_account(name)
        maps = await core.list_namespaced_config_map(
            name, field_selector="metadata.name=kube-root-ca.crt"
        )
        return any(a.metadata.name == "default" for a in accounts.items) and bool(maps.items)

    await eventually(provisioned)
    return name
