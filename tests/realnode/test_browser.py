"""A person's path on the real node: from the hub's spawn page into JupyterLab and out.

Everything is real: JupyterHub with `labd.spawner.LabdSpawner` on the host,
``labd serve`` as its own process on SQLite or PostgreSQL, the kubelet,
containerd and the lab image, and headless Chromium driven by Selenium with
the page objects of `tests.support.browser` (the same as ``tests/hub``'s
browser test against ``labd dev``).

The hub listens on the bridge's address (10.88.0.1), so the lab's
``jupyterhub-singleuser`` reaches the hub's API there
(``JUPYTERHUB_API_URL``) for OAuth and activity; the hub and its proxy
reach the lab at the pod-IP internal URL that labd reports. Traffic stays
on loopback, the bridge and this run's pod addresses.

With ``LABD_SCREENSHOTS=<directory>`` the test saves the form, the
progress page while the kubelet pulls, the notebook with its output and
the home page after the stop.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytest.importorskip(
    "jupyterhub", reason="JupyterHub is not installed: pip install -e '.[jupyterhub]'"
)
pytest.importorskip("selenium", reason="Selenium is not installed: pip install -e '.[dev]'")

from labd.lab.naming import lab_namespace
from tests.realnode.checks import nothing_left
from tests.realnode.conftest import LabdProcess, LabdProcessFactory, LabRegistry
from tests.realnode.node import BRIDGE_IP, POD_SUBNET, Node
from tests.support.browser import (
    HubBrowser,
    hub_browser,
    missing_browser,
    run_in_notebook,
    save_notebook,
)
from tests.support.hub import Hub, missing_proxy, proxy_command, running_hub
from tests.support.waiting import eventually

MISSING = missing_browser()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

USER = "alice"
TAG = "d_2026_11_24"
"""Not the recommended image, so it is picked from the dropdown."""


@pytest.fixture
async def labd(labd_process_factory: LabdProcessFactory) -> LabdProcess:
    return await labd_process_factory()


@pytest.fixture
def hub(labd: LabdProcess, tmp_path: Path) -> Iterator[Hub]:
    """JupyterHub on the host, its API on the bridge where the pods reach it."""
    proxy = proxy_command()
    if proxy is None:
        pytest.skip(missing_proxy())
    directory = tmp_path / "hub"
    directory.mkdir()
    # A cold pull of the lab image takes 10 to 15 s; the hub's defaults are
    # made for pods that are already pulled.
    extra = f"""
c.JupyterHub.hub_ip = {BRIDGE_IP!r}
c.Spawner.start_timeout = 300
c.Spawner.http_timeout = 60
"""
    with running_hub(
        directory, labd_url=labd.url, labd_token=labd.token, proxy=proxy, extra=extra
    ) as running:
        yield running


@pytest.fixture
def browser(hub: Hub) -> Iterator[HubBrowser]:
    with hub_browser(hub.url, timeout=180) as person:
        yield person


async def test_a_person_runs_a_notebook_in_a_lab_on_the_real_node(
    browser: HubBrowser, hub: Hub, labd: LabdProcess, real_node: Node, lab_registry: LabRegistry
) -> None:
    # No image on the node: the kubelet pulls, and the person sees it do so.
    real_node.forget_images()
    image = f"{lab_registry.registry.image_base}:{TAG}"
    # labd's catalog offers each tag pinned to the digest it read from the registry.
    pinned = f"{image}@{lab_registry.digests[TAG]}"

    browser.login(USER)
    form = browser.open_spawn_page()
    assert browser.path == "/hub/spawn", f"the hub did not land {USER} on its spawn page"
    for legend in ("Image", "Size", "Options"):
        assert legend in form.text
    browser.choose_image_from_dropdown(pinned)
    browser.choose_size("small")
    browser.screenshot("realnode-form")

    browser.start()
    browser.wait_for_progress("Pulling image")
    browser.screenshot("realnode-progress")
    shown = browser.follow_progress(USER)
    # The real v1.20 kubelet's words, as labd passed them to the hub.
    for step in (
        f'Pulling image "{pinned}"',
        f'Successfully pulled image "{pinned}" in ',
        "Created container notebook",
        "Started container notebook",
    ):
        assert any(message.startswith(step) for message in shown), (step, shown)

    # The hub proxies the person to the lab at the pod address labd
    # reported, and jupyterhub-singleuser logs them in through the hub.
    async with httpx.AsyncClient(base_url=labd.url, headers=labd.headers) as client:
        state = (await client.get(f"/spawner/v1/labs/{USER}")).json()
    assert state["status"] == "running", state
    assert state["options"]["image"] == pinned, state
    host = httpx.URL(state["internal_url"]).host
    assert ipaddress.ip_address(host) in ipaddress.ip_network(POD_SUBNET), state
    server = hub.user(USER)["servers"][""]
    assert server["ready"], server
    assert server["url"] == f"/user/{USER}/"

    assert run_in_notebook(browser.driver, "1 + 1", timeout=180) == "2"
    assert browser.path.startswith(f"/user/{USER}/lab"), browser.path
    save_notebook(browser.driver)
    browser.screenshot("realnode-notebook")

    browser.stop_server()
    browser.screenshot("realnode-stopped")
    _, namespace = lab_namespace("labd", USER)
    await nothing_left(real_node, namespace)
    # labd notices the namespace is gone at its next check, up to 2 s later.
    async with httpx.AsyncClient(base_url=labd.url, headers=labd.headers) as client:

        async def forgotten() -> bool:
            return (await client.get(f"/spawner/v1/labs/{USER}")).status_code == 404

        await eventually(forgotten, within=30, what="labd forgetting the lab")
