"""`LabdSpawner` against ``labd dev``, without a hub: what the end-to-end tests cannot reach.

The spawner is built as the hub builds it (`tests.support.spawners`);
``test_hub.py`` runs ``start`` inside a real hub.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

pytest.importorskip(
    "jupyterhub", reason="JupyterHub is not installed: pip install -e '.[jupyterhub]'"
)

from labd.spawner import LabdSpawner, LabEvent, LabSpawnError, read_events
from tests.support.dev import LabdDev
from tests.support.processes import free_port
from tests.support.spawners import hubless_spawner

pytestmark = pytest.mark.slow

WITHIN = 60.0
"""Seconds labd may take to reach a state on a loaded machine."""


def _spawner(labd: LabdDev, name: str, **traits: Any) -> LabdSpawner:
    return hubless_spawner(labd.url, labd.token, name, **traits)


async def _create(labd: LabdDev, name: str) -> None:
    body = {
        "options": {"image_class": ["recommended"], "size": ["small"]},
        "env": {"JUPYTERHUB_SERVICE_PREFIX": f"/user/{name}/"},
    }
    async with httpx.AsyncClient(base_url=labd.url, headers=labd.headers) as client:
        response = await client.post(f"/spawner/v1/labs/{name}/create", json=body)
        assert response.status_code == 201, response.text


async def _status(labd: LabdDev, name: str) -> str | None:
    async with httpx.AsyncClient(base_url=labd.url, headers=labd.headers) as client:
        response = await client.get(f"/spawner/v1/labs/{name}")
    if response.status_code == 404:
        return None
    status: str = response.json()["status"]
    return status


async def _reach(labd: LabdDev, name: str, status: str) -> None:
    deadline = asyncio.get_running_loop().time() + WITHIN
    while (current := await _status(labd, name)) != status:
        assert asyncio.get_running_loop().time() < deadline, f"{name} is {current}, not {status}"
        await asyncio.sleep(0.1)


async def _lines(*lines: str) -> AsyncIterator[str]:
    for line in lines:
        yield line


async def test_read_events_parses_labds_stream() -> None:
    lines = _lines(
        ": keep-alive",
        "id: 7",
        "event: info",
        'data: {"message": "Created Kubernetes objects for user lab", "progress": 30}',
        "",
        "",
        "id: 8",
        "event: error",
        "data: not json",
        "data: on two lines",
        "",
        "event: complete",
        'data: {"message": "done"}',
        "",
        # A stream cut in the middle of an event: the half is not an event.
        "id: 9",
        "event: info",
        'data: {"message": "cut sh',
    )
    events = [event async for event in read_events(lines)]
    assert events == [
        LabEvent("7", "info", "Created Kubernetes objects for user lab", 30),
        LabEvent("8", "error", "not json\non two lines", None),
        LabEvent(None, "complete", "done", None),
    ]


async def test_poll_follows_labds_status(labd_dev: LabdDev) -> None:
    labd_dev.add_rule("labd-poll-failed", "pending:ErrImagePull")
    labd_dev.add_rule("labd-poll-exited", "exit:0")
    for name in ("poll-running", "poll-failed", "poll-exited"):
        await _create(labd_dev, name)

    assert await _spawner(labd_dev, "poll-never").poll() == 0
    await _reach(labd_dev, "poll-running", "running")
    assert await _spawner(labd_dev, "poll-running").poll() is None
    await _reach(labd_dev, "poll-exited", "terminated")
    assert await _spawner(labd_dev, "poll-exited").poll() == 0
    # The first read that sees "failed" must be the spawner's own: labd
    # cleans a failed lab up once it has been reported (docs/api.md).
    spawner = _spawner(labd_dev, "poll-failed")
    deadline = asyncio.get_running_loop().time() + WITHIN
    while (exit_status := await spawner.poll()) is None:
        assert asyncio.get_running_loop().time() < deadline, "poll-failed never ended"
        await asyncio.sleep(0.1)
    assert exit_status == 1


async def test_stop_deletes_the_lab_and_a_second_stop_is_fine(labd_dev: LabdDev) -> None:
    await _create(labd_dev, "stopper")
    await _reach(labd_dev, "stopper", "running")
    spawner = _spawner(labd_dev, "stopper")
    await spawner.stop()
    assert await _status(labd_dev, "stopper") is None
    await spawner.stop()


async def test_the_options_form_is_labds(labd_dev: LabdDev) -> None:
    form = await _spawner(labd_dev, "former").get_options_form()
    assert 'name="size"' in form
    assert "w_2026_47" in form


async def test_an_unreachable_labd_is_not_a_stopped_lab(
    caplog: pytest.LogCaptureFixture,
) -> None:
    spawner = LabdSpawner(
        user=SimpleNamespace(name="alone"),
        labd_url=f"http://127.0.0.1:{free_port()}",
        labd_token="secret-hub-token",
    )
    with caplog.at_level(logging.WARNING):
        assert await spawner.poll() is None
    assert "could not poll labd for alone" in caplog.text
    assert "secret-hub-token" not in caplog.text


async def test_progress_says_why_labd_refused_it(
    labd_dev: LabdDev, caplog: pytest.LogCaptureFixture
) -> None:
    # As after start's create: the stream is opened, and labd refuses it.
    # Progress does not raise (the hub's page would break off) and does not
    # end quietly: its last message says why it ends.
    spawner = _spawner(labd_dev, "refused", labd_token="not-a-token-labd-knows")
    spawner._created.set()
    with caplog.at_level(logging.WARNING):
        events = [event async for event in spawner.progress()]
    assert events == [
        {
            "message": "No more progress from labd: labd refused the event stream: HTTP 401: "
            "Invalid bearer token"
        }
    ]
    assert "no more progress from labd for refused" in caplog.text
    assert "not-a-token-labd-knows" not in caplog.text


async def test_start_returns_the_url_where_the_lab_answers(labd_dev: LabdDev) -> None:
    url = await _spawner(labd_dev, "starter").start()
    async with httpx.AsyncClient() as client:
        lab = (
            await client.get(f"{labd_dev.url}/spawner/v1/labs/starter", headers=labd_dev.headers)
        ).json()
        assert url == lab["internal_url"]
        assert url.endswith("/user/starter/")
        assert (await client.get(f"{url}api")).status_code == 200
    labs_url = url.removesuffix("/user/starter/")
    assert f"single-user servers at {labs_url}/user/<name>/" in labd_dev.log.read_text()


async def test_start_resumes_streams_that_go_silent(
    labd_dev: LabdDev, caplog: pytest.LogCaptureFixture
) -> None:
    # The pull fails, so labd sends nothing for seconds until its spawn
    # timeout: far longer than this read timeout.
    labd_dev.add_rule("labd-resumer", "pending:ErrImagePull")
    spawner = _spawner(labd_dev, "resumer", stream_read_timeout=0.5)
    with (
        caplog.at_level(logging.WARNING),
        pytest.raises(LabSpawnError, match=r"^Lab spawn timed out after 10 s$"),
    ):
        await spawner.start()
    assert "labd event stream for resumer broke" in caplog.text
