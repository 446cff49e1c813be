"""`LabdSpawner` follows labd's event streams across every way they break.

Against a stand-in for labd on loopback (`tests.support.breakingstream`),
which breaks each stream exactly as told and records each request's
``Last-Event-ID``; and against ``labd dev`` stopped and started again in
the middle of a spawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

pytest.importorskip(
    "jupyterhub", reason="JupyterHub is not installed: pip install -e '.[jupyterhub]'"
)

from labd.daemon.dev import sample_config
from labd.spawner import LabEvent, LabSpawnError, read_events
from tests.support.breakingstream import Break, StreamEvent, breaking_labd
from tests.support.dev import running_labd_dev, write_dev_config
from tests.support.processes import free_port
from tests.support.spawners import hubless_spawner
from tests.support.streams import collecting, wait_for

pytestmark = pytest.mark.slow

SPAWN = [
    StreamEvent(1, "info", "Starting lab creation for ada", 1),
    StreamEvent(2, "info", "Created Kubernetes objects for user lab", 30),
    StreamEvent(3, "info", "Successfully assigned labd-ada/ada-nb to sim-node", 35),
    StreamEvent(4, "info", 'Pulling image "lab:w_2026_47"', 48),
    StreamEvent(5, "info", 'Successfully pulled image "lab:w_2026_47"', 57),
    StreamEvent(6, "info", "Created container notebook", 63),
    StreamEvent(7, "complete", "Lab Kubernetes pod started for ada"),
]
"""A spawn as labd streams it."""


def _update(event: StreamEvent | LabEvent) -> dict[str, object]:
    """What progress yields for an event."""
    update: dict[str, object] = {"message": event.message}
    if event.progress is not None:
        update["progress"] = event.progress
    return update


async def test_progress_resumes_after_each_way_a_stream_breaks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    breaks = [
        Break(1, "reset"),  # connection reset after event 1
        Break(1, "cut-chunk"),  # event 2, then an incomplete chunked body
        Break(1, "half-event"),  # event 3, half of event 4, a clean end
        Break(0, "503"),  # labd not ready (restarting)
        Break(1, "silence"),  # event 4, then nothing: a read timeout
        Break(1, "end"),  # event 5, then a clean end before the last event
    ]
    async with breaking_labd(SPAWN, breaks) as labd:
        spawner = hubless_spawner(labd.url, "hub-token", "ada", stream_read_timeout=0.5)
        spawner._created.set()
        with caplog.at_level(logging.WARNING):
            updates = [update async for update in spawner.progress()]

    # Every event exactly once, in order, ending with labd's last one.
    assert updates == [_update(event) for event in SPAWN]
    # Each stream resumed after the last whole event seen.
    assert labd.last_event_ids == [None, "1", "2", "3", "3", "4", "5"]
    assert "labd event stream for ada broke" in caplog.text
    assert "hub-token" not in caplog.text


async def test_progress_closed_midway_closes_its_stream_readers_at_once() -> None:
    # A generator left to the garbage collector is closed in a task of its
    # own, which a hub shutting down destroys unfinished ("Task was destroyed
    # but it is pending!"). Closing progress ends every generator under it,
    # the spawner's and those httpx nests under the stream, there and then.
    finalized: list[str] = []
    hooks = sys.get_asyncgen_hooks()

    def finalizer(agen: Any) -> None:
        finalized.append(agen.__qualname__)
        if hooks.finalizer is not None:
            hooks.finalizer(agen)

    sys.set_asyncgen_hooks(hooks.firstiter, finalizer)
    try:
        async with breaking_labd(SPAWN, [Break(2, "silence")]) as labd:
            spawner = hubless_spawner(labd.url, "hub-token", "ada", stream_read_timeout=30)
            spawner._created.set()
            progress = spawner.progress()
            assert [await anext(progress), await anext(progress)] == [
                _update(event) for event in SPAWN[:2]
            ]
            await progress.aclose()
            gc.collect()
    finally:
        sys.set_asyncgen_hooks(*hooks)
    assert finalized == []


async def test_start_resumes_and_ends_with_labds_verdict() -> None:
    failed_spawn = [
        *SPAWN[:4],
        StreamEvent(5, "error", "Lab spawn timed out after 600 s"),
        StreamEvent(6, "failed", "Lab spawn failed"),
    ]
    async with breaking_labd(failed_spawn, [Break(2, "reset"), Break(2, "end")]) as labd:
        spawner = hubless_spawner(labd.url, "hub-token", "ada")
        with pytest.raises(LabSpawnError, match=r"^Lab spawn timed out after 600 s$"):
            await spawner.start()
    assert labd.last_event_ids == [None, "2", "4"]

    async with breaking_labd(SPAWN, [Break(3, "cut-chunk")]) as labd:
        spawner = hubless_spawner(labd.url, "hub-token", "ada")
        assert await spawner.start() == f"{labd.url}/user/lab/"
    assert labd.last_event_ids == [None, "3"]


async def test_start_fails_with_the_reason_when_labd_stays_unready() -> None:
    # labd took the create, then answers 503 not_ready to every stream.
    async with breaking_labd(SPAWN, [Break(0, "503")] * 50) as labd:
        spawner = hubless_spawner(labd.url, "hub-token", "ada", unreachable_timeout=1.5)
        with pytest.raises(
            LabSpawnError,
            match=r"^labd unreachable for \d+ s \(last: HTTP 503: stand-in says 503\)$",
        ):
            await spawner.start()
    # Back-off 0.5, 1 s: the third attempt is past the 1.5 s.
    assert labd.last_event_ids == [None, None, None]


async def test_progress_says_why_when_labd_refuses_a_resumed_stream() -> None:
    async with breaking_labd(SPAWN, [Break(2, "reset"), Break(0, "401")]) as labd:
        spawner = hubless_spawner(labd.url, "hub-token", "ada")
        spawner._created.set()
        updates = [update async for update in spawner.progress()]
    assert updates == [
        _update(SPAWN[0]),
        _update(SPAWN[1]),
        {
            "message": "No more progress from labd: labd refused the event stream: "
            "HTTP 401: stand-in says 401"
        },
    ]


async def test_progress_gives_up_on_labd_unreachable_past_unreachable_timeout() -> None:
    spawner = hubless_spawner(
        f"http://127.0.0.1:{free_port()}", "hub-token", "ada", unreachable_timeout=2
    )
    spawner._created.set()
    loop = asyncio.get_running_loop()
    began = loop.time()
    updates = [update async for update in spawner.progress()]
    assert len(updates) == 1, updates
    message = str(updates[0]["message"])
    assert message.startswith("No more progress from labd: labd unreachable for "), message
    assert "(last: ConnectError" in message
    # Back-off 0.5, 1, 2 s: the fourth attempt is past the 2 s.
    assert 2 <= loop.time() - began < 10


async def test_progress_and_start_resume_across_a_labd_restart(tmp_path: Path) -> None:
    """labd stops in the middle of a spawn and starts again: nothing is lost or repeated."""
    port = free_port()
    config = sample_config(tmp_path, port)
    config["timeouts"] = {"spawn": 60, "delete": 30}
    write_dev_config(tmp_path, config)
    first, second = contextlib.ExitStack(), contextlib.ExitStack()
    try:
        # The sim pulls images for 5 s, so the spawn is mid-way when labd
        # stops. The sim lives in labd dev's process: after the restart the
        # pod is gone, and labd ends the spawn with "Lab pod vanished".
        url = await asyncio.to_thread(
            first.enter_context,
            running_labd_dev(tmp_path, port=port, pod_start_delay=5, log=tmp_path / "first.log"),
        )
        token = (tmp_path / "hub-token").read_text().strip()
        spawner = hubless_spawner(url, token, "phoenix")
        resumed_from: list[str | None] = []

        async def record(request: httpx.Request) -> None:
            if request.url.path.endswith("/events"):
                resumed_from.append(request.headers.get("Last-Event-ID"))

        spawner._client().event_hooks["request"].append(record)
        start = asyncio.create_task(spawner.start())
        async with collecting(spawner.progress()) as updates:
            seen = await wait_for(
                updates, lambda update: str(update["message"]).startswith("Pulling"), within=60
            )
            await asyncio.to_thread(first.close)  # SIGTERM: labd ends its streams and exits.
            await asyncio.sleep(1.0)  # The spawner finds nothing listening.
            while not updates.empty():
                seen.append(updates.get_nowait())
            seen_before_restart = len(seen)
            await asyncio.to_thread(
                second.enter_context,
                running_labd_dev(
                    tmp_path, port=port, pod_start_delay=0.5, log=tmp_path / "second.log"
                ),
            )
            seen += await wait_for(
                updates, lambda update: update["message"] == "Lab spawn failed", within=60
            )
            with pytest.raises(LabSpawnError, match=r"^Lab pod vanished$"):
                await asyncio.wait_for(start, timeout=60)

        # labd's own record of the spawn, as a new subscriber gets it.
        async with (
            httpx.AsyncClient(
                base_url=url, headers={"Authorization": f"Bearer {token}"}
            ) as client,
            client.stream("GET", "/spawner/v1/labs/phoenix/events") as response,
        ):
            recorded = [event async for event in read_events(response.aiter_lines())]
    finally:
        await asyncio.to_thread(second.close)
        await asyncio.to_thread(first.close)

    assert recorded[-2:] == [
        LabEvent(recorded[-2].id, "error", "Lab pod vanished", None),
        LabEvent(recorded[-1].id, "failed", "Lab spawn failed", None),
    ]
    assert seen == [_update(event) for event in recorded]
    # start and progress each opened a stream, then resumed (while labd
    # was down, and once it was back) after the last event they had seen.
    last_before_restart = recorded[seen_before_restart - 1].id
    assert resumed_from[:2] == [None, None]
    assert len(resumed_from) >= 4
    assert set(resumed_from[2:]) == {last_before_restart}, resumed_from
