"""A lab spawned through labd's REST API really runs JupyterLab on a real kubelet.

The hub's part is played by the test: it creates the lab as JupyterHub's
spawner does, follows the event stream, and then talks to the lab itself.
No hub runs, so the lab gets no ``JUPYTERHUB_API_URL`` and the image's
``start-lab`` runs plain ``jupyter lab`` under the service prefix, guarded
by the ``JUPYTER_TOKEN`` the test sends (``jupyterhub-singleuser`` would
exit after failing to reach a hub API).

There is no cluster DNS and no kube-proxy on the node, so labd names each
lab by its pod IP (``lab.internal_url_template`` with ``{pod_ip}``), and
the test reaches JupyterLab at exactly the internal URL labd reports, once
it has checked that the address is one of this run's pods (10.88.0.0/16):
nothing else is ever contacted.  labd says ``running`` only once the pod is
Ready (its readiness probe GETs ``<prefix>api``), so the lab must answer at
once.

The timings (spawn request to ``running``, to the first HTTP 200, delete to
namespace gone) are printed (``pytest -s``) and quoted in docs/real-node.md.
"""

from __future__ import annotations

import secrets
import time

import httpx

from labd.lab.naming import lab_namespace
from tests.realnode.checks import LAB_PORT, first_ok, nothing_left, pod_url
from tests.realnode.conftest import LabRegistry
from tests.realnode.node import Node
from tests.support.api import HUB, read_events

USER = "alice"
PREFIX = f"/user/{USER}/"


async def test_lab_runs_jupyterlab(
    labd_url: str, real_node: Node, lab_registry: LabRegistry
) -> None:
    api = real_node.control_plane.request
    slug, namespace = lab_namespace("labd", USER)
    token = secrets.token_hex(16)
    body = {
        "options": {"image_class": "recommended", "size": ["small"]},
        "env": {"JUPYTERHUB_SERVICE_PREFIX": PREFIX, "JUPYTER_TOKEN": token},
    }
    async with httpx.AsyncClient(base_url=labd_url, headers=HUB, timeout=180) as client:
        began = time.monotonic()
        created = await client.post(f"/spawner/v1/labs/{USER}/create", json=body)
        assert created.status_code == 201, created.text

        events, _ = await read_events(labd_url, USER, within=180)
        spawned = time.monotonic()
        messages = [event.data.get("message", "") for event in events]
        assert events[-1].type == "complete", messages
        assert any(m.startswith("Started container") for m in messages), messages
        state = (await client.get(f"/spawner/v1/labs/{USER}")).json()
        assert state["status"] == "running", state

        # Pulled by digest from the session's registry: the weekly, which
        # `recommended` aliases.
        weekly = lab_registry.digests["w_2026_47"]
        assert lab_registry.digests["recommended"] == weekly
        status, pod = api("GET", f"/api/v1/namespaces/{namespace}/pods/{slug}-nb")
        assert status == 200, pod
        image = pod["spec"]["containers"][0]["image"]
        assert image == f"{lab_registry.registry.image_base}:w_2026_47@{weekly}"
        container = pod["status"]["containerStatuses"][0]
        assert container["imageID"].endswith(weekly), container
        assert container["ready"], container
        internal = state["internal_url"]
        assert internal == pod_url(pod, PREFIX), state
        assert internal.startswith(f"http://{pod['status']['podIP']}:{LAB_PORT}/")

        # JupyterLab answers at the internal URL at once, and only with its token.
        answered = await first_ok(f"{internal}api", within=1)
        async with httpx.AsyncClient(timeout=10) as lab:
            refused = await lab.get(f"{internal}api/contents")
            assert refused.status_code == 403, "the lab must refuse requests without its token"
            page = await lab.get(f"{internal}lab", params={"token": token})
            assert page.status_code == 200
            assert "JupyterLab" in page.text

        deleting = time.monotonic()
        deleted = await client.delete(f"/spawner/v1/labs/{USER}")
        assert deleted.status_code == 204, deleted.text
        answered_delete = time.monotonic()
        assert (await client.get(f"/spawner/v1/labs/{USER}")).status_code == 404

    gone = await nothing_left(real_node, namespace)
    print(
        f"\nreal node: spawn request to running {spawned - began:.1f} s, "
        f"to first HTTP 200 {answered - began:.1f} s; delete answered in "
        f"{answered_delete - deleting:.1f} s, namespace gone after "
        f"{gone['namespace'] - deleting:.1f} s, containers stopped after "
        f"{gone['containers'] - deleting:.1f} s; events: {messages}"
    )
