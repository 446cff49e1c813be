"""Running pods answer HTTP as single-user servers (``SimCluster(serve_labs=True)``)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from kubernetes_asyncio.client import CoreV1Api

from labd.sim import SimCluster
from tests.support.kubeapi import manifest, pod
from tests.support.waiting import eventually


def _with_env(name: str, *, env: list[dict[str, Any]], config_map: str | None = None) -> Any:
    body = pod(name)
    container = body["spec"]["containers"][0]
    container["env"] = env
    if config_map is not None:
        container["envFrom"] = [{"configMapRef": {"name": config_map}}]
    return body


async def _status(client: httpx.AsyncClient, path: str) -> int:
    return (await client.get(path)).status_code


@pytest.mark.sim(serve_labs=True, pod_start_delay=0.3)
async def test_a_running_pod_answers_under_its_service_prefix(
    sim: SimCluster, core: CoreV1Api, namespace: str
) -> None:
    await core.create_namespaced_config_map(
        namespace,
        manifest(
            {
                "metadata": {"name": "alice-env"},
                "data": {"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/"},
            }
        ),
    )
    async with httpx.AsyncClient(base_url=sim.labs_url) as client:
        await core.create_namespaced_pod(
            namespace,
            _with_env("alice-nb", env=[{"name": "OTHER", "value": "x"}], config_map="alice-env"),
        )
        # Pending: the hub must keep waiting, so a 5xx.
        assert await _status(client, "/user/alice/api") == 503

        async def answers() -> bool:
            return await _status(client, "/user/alice/api") == 200

        await eventually(answers)
        response = await client.get("/user/alice/api")
        assert response.json()["prefix"] == "/user/alice/"
        assert await _status(client, "/user/bob/api") == 503
        assert await _status(client, "/user/alice") == 503

        await core.delete_namespaced_pod("alice-nb", namespace, grace_period_seconds=0)

        async def refuses() -> bool:
            return await _status(client, "/user/alice/api") == 503

        await eventually(refuses)


@pytest.mark.sim(serve_labs=True)
async def test_plain_env_and_the_longest_prefix_win(
    sim: SimCluster, core: CoreV1Api, namespace: str
) -> None:
    for name, prefix in (("outer", "/user/a/"), ("inner", "/user/a/servers/b/")):
        await core.create_namespaced_pod(
            namespace,
            _with_env(name, env=[{"name": "JUPYTERHUB_SERVICE_PREFIX", "value": prefix}]),
        )
    async with httpx.AsyncClient(base_url=sim.labs_url) as client:

        async def both_answer() -> bool:
            # The outer lab answers under /user/a/servers/b/ too until the
            # inner one runs: wait for the inner one's own answer.
            if await _status(client, "/user/a/api") != 200:
                return False
            inner = await client.get("/user/a/servers/b/lab")
            return inner.status_code == 200 and inner.json()["prefix"] == "/user/a/servers/b/"

        await eventually(both_answer)
        assert (await client.get("/user/a/servers/b/lab")).json()["prefix"] == (
            "/user/a/servers/b/"
        )
        assert (await client.get("/user/a/lab")).json()["prefix"] == "/user/a/"


async def test_labs_are_not_served_unless_asked(sim: SimCluster) -> None:
    with pytest.raises(RuntimeError, match="serve_labs"):
        _ = sim.labs_url
