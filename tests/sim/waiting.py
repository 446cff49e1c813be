"""Waiting for the simulated cluster to reach a state, without fixed sleeps."""

from __future__ import annotations

import json
from collections.abc import Awaitable
from typing import Any, cast

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException

__all__ = ["manifest", "pod", "raw", "status_of"]


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
