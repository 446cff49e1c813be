"""End to end: a real JupyterHub spawns, watches, polls and stops labs through labd.

Everything goes through the hub's own REST API, as a browser or a script
would use it; labd and the simulated cluster are only looked at to check
that the hub's view matches what happened.
"""

from __future__ import annotations

import contextlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

pytest.importorskip(
    "jupyterhub", reason="JupyterHub is not installed: pip install -e '.[jupyterhub]'"
)

from tests.support.dev import LabdDev
from tests.support.hub import Hub, connections_at_exit, running_hub, wait_until
from tests.support.sockets import has_proc

pytestmark = pytest.mark.slow

READY_WITHIN = 90.0
"""Seconds a spawn may take, end to end, on a loaded 2-core machine."""


def _progress(hub: Hub, name: str) -> list[dict[str, Any]]:
    """The hub's progress stream of a user's spawn, until it ends."""
    events: list[dict[str, Any]] = []
    timeout = httpx.Timeout(10, read=READY_WITHIN)
    with httpx.stream(
        "GET", f"{hub.api}/users/{name}/server/progress", headers=hub.headers, timeout=timeout
    ) as response:
        assert response.status_code == 200, response.read()
        for line in response.iter_lines():
            if line.startswith("data:"):
                event = json.loads(line.removeprefix("data:"))
                events.append(event)
                if event.get("ready") or event.get("failed"):
                    break
    return events


def _start(hub: Hub, name: str) -> None:
    response = httpx.post(f"{hub.api}/users/{name}", headers=hub.headers)
    assert response.status_code == 201, response.text
    response = httpx.post(f"{hub.api}/users/{name}/server", headers=hub.headers)
    assert response.status_code in (201, 202), response.text


def _server(hub: Hub, name: str) -> dict[str, Any] | None:
    server: dict[str, Any] | None = hub.user(name)["servers"].get("")
    return server


def test_a_server_starts_with_labd_progress_runs_and_stops(hub: Hub, labd_dev: LabdDev) -> None:
    _start(hub, "alice")
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(_progress, [hub, hub], ["alice", "alice"])

    # Both listeners saw labd's steps, the same ones, then the hub's verdict.
    messages = [event["message"] for event in first]
    assert messages[0] == "Server requested"
    assert "Starting lab creation for alice" in messages
    assert "Created Kubernetes objects for user lab" in messages
    assert "Lab Kubernetes pod started for alice" in messages
    assert first[-1]["ready"] is True
    assert messages == [event["message"] for event in second]
    steps = [event["progress"] for event in first if "progress" in event]
    assert steps == sorted(steps)

    server = _server(hub, "alice")
    assert server is not None and server["ready"], server
    lab = labd_dev.lab("alice").json()
    assert lab["status"] == "running"
    assert lab["internal_url"].endswith("/user/alice/")

    # The hub's proxy routes the user's URL to the lab (the sim answers for it).
    through_proxy = httpx.get(f"{hub.url}/user/alice/api", timeout=10)
    assert through_proxy.status_code == 200
    assert through_proxy.json()["prefix"] == "/user/alice/"

    # Several poll intervals (1 s) later the hub still counts the lab as running.
    time.sleep(4)
    server = _server(hub, "alice")
    assert server is not None and server["ready"], server

    response = httpx.delete(f"{hub.api}/users/alice/server", headers=hub.headers, timeout=60)
    assert response.status_code in (202, 204), response.text
    wait_until(
        lambda: _server(hub, "alice") is None and labd_dev.lab("alice").status_code == 404,
        within=READY_WITHIN,
        what="the hub stopped alice's server and labd deleted the lab",
        log=hub.log,
    )


def test_a_spawn_failure_shows_labds_reason(hub: Hub, labd_dev: LabdDev) -> None:
    labd_dev.add_rule("labd-carol", "pending:ErrImagePull")
    _start(hub, "carol")
    events = _progress(hub, "carol")

    final = events[-1]
    assert final.get("failed") is True, events
    messages = [event["message"] for event in events]
    # The cluster's reason reached the hub's progress page, and labd's
    # verdict (its error event, just before "Lab spawn failed") is the
    # reason the hub gives for the failed spawn.
    assert "Error: ErrImagePull" in messages
    reason = messages[messages.index("Lab spawn failed") - 1]
    assert reason == "Lab spawn timed out after 10 s"
    assert final["message"] == f"Spawn failed: {reason}"
    assert _server(hub, "carol") is None


def test_a_lab_that_exits_is_seen_stopped_by_the_hubs_poll(hub: Hub, labd_dev: LabdDev) -> None:
    labd_dev.add_rule("labd-dave", "exit:6")
    _start(hub, "dave")
    events = _progress(hub, "dave")
    assert events[-1].get("ready") is True, events

    # The pod exits 6 s after it started; the hub polls every second.
    wait_until(
        lambda: _server(hub, "dave") is None,
        within=READY_WITHIN,
        what="the hub noticed dave's lab stopped",
        log=hub.log,
    )
    assert "User dave server stopped, with exit code: 0" in hub.log.read_text()
    wait_until(
        lambda: labd_dev.lab("dave").status_code == 404,
        within=READY_WITHIN,
        what="the hub's stop deleted dave's lab in labd",
        log=labd_dev.log,
    )


def test_a_lab_the_hub_did_not_know_is_replaced(hub: Hub, labd_dev: LabdDev) -> None:
    # As after the hub lost its database: labd still runs a lab for frank.
    body = {
        "options": {"image_class": "recommended", "size": "large"},
        "env": {"JUPYTERHUB_SERVICE_PREFIX": "/user/frank/"},
    }
    created = httpx.post(
        f"{labd_dev.url}/spawner/v1/labs/frank/create", json=body, headers=labd_dev.headers
    )
    assert created.status_code == 201, created.text
    wait_until(
        lambda: labd_dev.lab("frank").json()["status"] == "running",
        within=READY_WITHIN,
        what="frank's orphaned lab running",
        log=labd_dev.log,
    )

    _start(hub, "frank")
    events = _progress(hub, "frank")

    assert events[-1].get("ready") is True, events
    assert "labd has a lab for frank the hub did not know about" in hub.log.read_text()
    assert labd_dev.lab("frank").json()["options"]["size"] == "medium"


@pytest.mark.skipif(not has_proc(), reason="counting sockets needs Linux's /proc")
def test_the_hub_exits_holding_no_connection_to_labd(
    labd_dev: LabdDev, proxy: list[str], tmp_path: Path
) -> None:
    # A hub of its own, since the check is at its exit: it runs a lab, and
    # a spawn that is still pending, watched by a progress page, when it
    # gets SIGTERM. Its cleanup stops both through the spawner, then the
    # spawner's clients must be closed: no socket to labd left, no
    # unclosed-resource warning.
    port = urlsplit(labd_dev.url).port
    assert port is not None
    labd_dev.add_rule("labd-henry", "pending:ErrImagePull")
    with contextlib.ExitStack() as watching:
        with running_hub(
            tmp_path,
            labd_url=labd_dev.url,
            labd_token=labd_dev.token,
            proxy=proxy,
            extra=connections_at_exit(port),
        ) as hub:
            _start(hub, "grace")
            assert _progress(hub, "grace")[-1].get("ready") is True
            _start(hub, "henry")
            page = watching.enter_context(
                httpx.stream(
                    "GET",
                    f"{hub.api}/users/henry/server/progress",
                    headers=hub.headers,
                    timeout=httpx.Timeout(10, read=READY_WITHIN),
                )
            )
            for line in page.iter_lines():
                if "Starting lab creation for henry" in line:
                    break
        log = hub.log.read_text(errors="replace")

    assert f"connections to port {port} at exit: 0" in log, log[-3000:]
    assert f"Closed the HTTP client for labd at {labd_dev.url}" in log
    # (JupyterHub logs henry's spawn, cancelled by its own cleanup, with a
    # traceback: that is the hub's account of the cancelled spawn, not a leak.)
    for sign in ("ResourceWarning", "nclosed", "Task was destroyed"):
        assert sign not in log, log[log.index(sign) - 2000 :][:4000]
