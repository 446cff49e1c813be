"""A person's path in a real browser: log in, pick a lab, watch it start, stop it.

Headless Chromium, driven by Selenium through `tests.support.browser`,
uses the hub's own pages exactly as a person would, against ``labd dev``:
the path ends at the simulated single-user server, which answers the lab's
URL with a small JSON document instead of JupyterLab. The helpers know
nothing of the sim, so a test on the real node can drive the same pages
and go on into JupyterLab (`tests.support.browser.run_in_notebook`).

With ``LABD_SCREENSHOTS=<directory>`` the test saves the form, the progress
page mid-spawn, the lab and the home page after the stop as PNG files there
(the README's pictures come from ``LABD_SCREENSHOTS=docs/images``);
otherwise it saves nothing.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

pytest.importorskip(
    "jupyterhub", reason="JupyterHub is not installed: pip install -e '.[jupyterhub]'"
)
pytest.importorskip("selenium", reason="Selenium is not installed: pip install -e '.[dev]'")

from selenium.webdriver.common.by import By

from tests.support.browser import HubBrowser, hub_browser, missing_browser
from tests.support.dev import LabdDev
from tests.support.hub import Hub, wait_until

MISSING = missing_browser()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(MISSING is not None, reason=MISSING or "")]

IMAGE = "ghcr.io/labd/sciplat-lab:w_2026_46"
"""Not the recommended image, so it is picked from the dropdown."""


@pytest.fixture
def browser(hub: Hub) -> Iterator[HubBrowser]:
    with hub_browser(hub.url) as person:
        yield person


def test_a_person_starts_a_lab_from_labds_form_and_stops_it(
    browser: HubBrowser, labd_dev: LabdDev
) -> None:
    # The pod runs but is not Ready for its first 3 s, as a real lab while
    # its server starts: long enough to look at the progress page mid-spawn.
    labd_dev.add_rule("labd-carol", "unready:3")

    browser.login("carol")
    form = browser.open_spawn_page()
    assert browser.path == "/hub/spawn", "the hub did not land carol on its spawn page"
    for legend in ("Image", "Size", "Options"):
        assert legend in form.text
    assert "Large (4 CPU, 16 GiB)" in form.text
    browser.choose_image_from_dropdown(IMAGE)
    browser.choose_size("large")
    browser.screenshot("browser-form")

    browser.start()
    # The first pod of IMAGE on this module's sim node, so the kubelet pulls it
    # (a second would read `Container image "..." already present on machine`).
    progress = browser.wait_for_progress(
        "Starting lab creation for carol",
        "Created Kubernetes objects for user lab",
        f'Pulling image "{IMAGE}"',
        "Started container",
    )
    assert 0 < progress.percent < 100, progress
    browser.screenshot("browser-progress")

    # When the lab is ready the page reloads and the hub sends carol to her
    # server, through the proxy: here the simulated single-user server.
    assert browser.wait_for_lab("carol") == "/user/carol/"
    answer = json.loads(browser.find(By.TAG_NAME, "pre").text)
    assert answer == {"message": "simulated single-user server", "prefix": "/user/carol/"}
    browser.screenshot("browser-lab")
    lab = labd_dev.lab("carol").json()
    assert lab["status"] == "running"
    assert (lab["options"]["image"], lab["options"]["size"]) == (IMAGE, "large")

    browser.stop_server()
    browser.screenshot("browser-stopped")
    wait_until(
        lambda: (
            labd_dev.lab("carol").status_code == 404
            and not labd_dev.namespace_exists("labd-carol")
        ),
        within=60,
        what="carol's lab and namespace gone",
        log=labd_dev.log,
    )
