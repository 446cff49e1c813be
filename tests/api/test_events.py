"""Event streams over a real uvicorn: replay, live events, resume, shutdown."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
import structlog
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from labd.api.sse import EventStreams, parse_last_event_id
from labd.db.database import Database
from labd.lab.machine import LabState
from labd.lab.records import EventRecord, EventType, utcnow
from tests.support.api import (
    ALICE,
    BOB,
    HUB,
    Event,
    Stack,
    build_stack,
    make_config,
    read_events,
    serve,
    spawn_body,
)

SPAWN = [
    ("info", {"message": "Starting lab creation for alice", "progress": 1}),
    ("info", {"message": "Created Kubernetes objects for user lab", "progress": 30}),
    ("info", {"message": "Successfully assigned pod", "progress": 35}),
    ("info", {"message": "Pulling image", "progress": 48}),
    ("complete", {"message": "Lab Kubernetes pod started for alice"}),
]


def shapes(events: list[Event]) -> list[tuple[str, dict[str, object]]]:
    return [(event.type, event.data) for event in events]


async def create(base_url: str, username: str = "alice") -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        response = await client.post(
            f"/spawner/v1/labs/{username}/create", json=spawn_body(), headers=HUB
        )
    assert response.status_code == 201


async def test_listeners_see_the_whole_spawn(server: str, stack: Stack) -> None:
    await create(server)
    opened = asyncio.Barrier(4)

    async def listen() -> tuple[list[Event], list[str]]:
        return await read_events(server, "alice", on_open=opened.wait)

    listeners = [asyncio.create_task(listen()) for _ in range(3)]
    await opened.wait()
    await stack.driver.objects_ready("alice")
    await asyncio.sleep(0.3)  # Long enough for a keep-alive comment.
    await stack.driver.pod_event("alice", "Successfully assigned pod", 35)
    await stack.driver.pod_event("alice", "Pulling image", 48)
    await stack.driver.running("alice")
    results = await asyncio.gather(*listeners)

    for events, comments in results:
        assert shapes(events) == SPAWN
        assert events == results[0][0]
        assert ": keep-alive" in comments
    ids = [event.id for event in results[0][0]]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


async def test_late_listener_gets_replay_and_end(server: str, stack: Stack) -> None:
    await create(server)
    await stack.driver.spawn("alice")
    events, _ = await read_events(server, "alice", within=5)
    assert shapes(events) == SPAWN


async def test_resume_with_last_event_id(server: str, stack: Stack) -> None:
    await create(server)
    await stack.driver.spawn("alice")
    events, _ = await read_events(server, "alice")
    later, _ = await read_events(server, "alice", headers={"Last-Event-ID": str(events[1].id)})
    assert later == events[2:]
    # A malformed id is ignored: the whole operation is replayed.
    for malformed in ("yesterday", "-1", "", "1e3", str(2**63)):
        again, _ = await read_events(server, "alice", headers={"Last-Event-ID": malformed})
        assert again == events


async def test_resume_after_the_end_ends(server: str, stack: Stack) -> None:
    await create(server)
    await stack.driver.spawn("alice")
    events, _ = await read_events(server, "alice")
    headers = {"Last-Event-ID": str(events[-1].id)}
    assert await read_events(server, "alice", headers=headers, within=3) == ([], [])


async def test_spawn_failure(server: str, stack: Stack) -> None:
    await create(server)
    listener = asyncio.create_task(read_events(server, "alice"))
    await stack.driver.objects_ready("alice")
    await stack.driver.fail("alice", "Lab spawn timed out after 600 s")
    events, _ = await listener
    assert shapes(events)[-2:] == [
        ("error", {"message": "Lab spawn timed out after 600 s"}),
        ("failed", {"message": "Lab spawn failed"}),
    ]


async def test_delete_stream(server: str, stack: Stack) -> None:
    await create(server)
    await stack.driver.spawn("alice")
    async with httpx.AsyncClient(base_url=server, timeout=10) as client:
        deleting = asyncio.create_task(client.delete("/spawner/v1/labs/alice", headers=HUB))
        await stack.driver.wait_for("alice", LabState.DELETING)
        opened = asyncio.Event()

        async def on_open() -> None:
            opened.set()

        listener = asyncio.create_task(read_events(server, "alice", on_open=on_open))
        await opened.wait()
        await stack.driver.finish_delete("alice")
        assert (await deleting).status_code == 204
    events, _ = await listener
    assert shapes(events) == [
        ("info", {"message": "Shutting down Kubernetes pod", "progress": 25}),
        ("info", {"message": "Deleting user namespace", "progress": 62}),
        ("info", {"message": "Lab for alice deleted", "progress": 100}),
    ]
    # After the lab is gone, its last operation is still replayed.
    replay, _ = await read_events(server, "alice")
    assert replay == events


async def test_delete_cancels_spawn_stream(server: str, stack: Stack) -> None:
    await create(server)
    first = asyncio.Event()

    async def on_first() -> None:
        first.set()

    # The listener must follow the spawn before the delete starts a new
    # operation, or it would follow the delete instead.
    listener = asyncio.create_task(read_events(server, "alice", on_first=on_first))
    await first.wait()
    await stack.driver.objects_ready("alice")
    async with httpx.AsyncClient(base_url=server, timeout=10) as client:
        deleting = asyncio.create_task(client.delete("/spawner/v1/labs/alice", headers=HUB))
        events, _ = await listener
        await stack.driver.when_deleting("alice")
        assert (await deleting).status_code == 204
    assert shapes(events)[-1] == ("failed", {"message": "Operation cancelled"})


async def test_events_access(server: str, stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=server) as client:
        missing = await client.get("/spawner/v1/labs/alice/events", headers=HUB)
        assert missing.status_code == 404
        assert missing.json()["detail"][0]["type"] == "unknown_user"
        await create(server)
        await stack.driver.spawn("alice")
        own = await client.get("/spawner/v1/labs/alice/events", headers=ALICE)
        assert own.status_code == 200
        assert "event: complete" in own.text
        other = await client.get("/spawner/v1/labs/alice/events", headers=BOB)
        assert other.status_code == 403


async def test_close_ends_open_streams(server: str, stack: Stack) -> None:
    await create(server)
    first = asyncio.Event()

    async def on_first() -> None:
        first.set()

    listener = asyncio.create_task(read_events(server, "alice", on_first=on_first))
    await first.wait()
    assert stack.app.state.event_streams.open_streams == 1
    stack.app.state.event_streams.close()
    events, _ = await asyncio.wait_for(listener, 5)
    assert stack.app.state.event_streams.open_streams == 0
    assert shapes(events) == SPAWN[:1]


async def test_server_shutdown_ends_open_streams(stack: Stack) -> None:
    first = asyncio.Event()

    async def on_first() -> None:
        first.set()

    async with asyncio.timeout(10):
        async with serve(stack.app) as url:
            await create(url)
            listener = asyncio.create_task(read_events(url, "alice", on_first=on_first))
            await first.wait()
        # Leaving serve() waited for uvicorn to shut down with a stream open.
        events, _ = await listener
    assert shapes(events) == SPAWN[:1]


async def test_a_stream_whose_database_goes_away_ends_cleanly() -> None:
    # asyncpg raises a bare ConnectionRefusedError while PostgreSQL restarts.
    # The answer has begun, so the stream just ends (the client resumes with
    # Last-Event-ID) instead of dying with a traceback and a reset.
    streams = EventStreams(keepalive=5)
    sent = EventRecord(
        id=7,
        lab_id="lab",
        operation=1,
        type=EventType.INFO,
        message="Starting lab creation for alice",
        progress=1,
        terminal=False,
        step=None,
        created_at=utcnow(),
    )

    async def source() -> AsyncIterator[EventRecord]:
        yield sent
        raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")

    async def opened() -> AsyncIterator[EventRecord]:
        return source()

    async def events(request: Request) -> Response:
        return await streams.open(request.path_params["username"], opened)

    app = Starlette(routes=[Route("/spawner/v1/labs/{username}/events", events)])
    with structlog.testing.capture_logs() as logs:
        async with serve(app, lifespan="off") as url:
            received, _ = await read_events(url, "alice")
    assert shapes(received) == SPAWN[:1]
    assert [log["event"] for log in logs if log["log_level"] == "warning"] == [
        "event stream ended: the database is out of reach"
    ]
    assert streams.admitted() == 0


@contextlib.asynccontextmanager
async def capped(
    database: Database, *, per_user: int, total: int
) -> AsyncIterator[tuple[str, EventStreams]]:
    """Serve labd with these stream caps, with spawns pending for alice and bob."""
    config = make_config(http={"max_streams_per_user": per_user, "max_streams": total})
    stack = build_stack(database, config, keepalive=0.2)
    async with serve(stack.app) as url:
        await create(url, "alice")
        await create(url, "bob")
        yield url, stack.app.state.event_streams


async def open_stream(
    streams: contextlib.AsyncExitStack, client: httpx.AsyncClient, username: str
) -> httpx.Response:
    """Open ``username``'s event stream and keep it open until ``streams`` closes."""
    return await streams.enter_async_context(
        client.stream("GET", f"/spawner/v1/labs/{username}/events", headers=HUB)
    )


async def released(streams: EventStreams, username: str, count: int) -> None:
    """Wait until the server has noticed closed streams and ``username`` holds ``count``."""
    async with asyncio.timeout(5):
        while streams.admitted(username) != count:  # noqa: ASYNC110 - a count, no event
            await asyncio.sleep(0.01)


async def test_streams_per_user_are_capped(database: Database) -> None:
    async with (
        capped(database, per_user=2, total=10) as (url, streams),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
        contextlib.AsyncExitStack() as open_streams,
    ):
        first = await open_stream(open_streams, client, "alice")
        second = await open_stream(open_streams, client, "alice")
        assert (first.status_code, second.status_code) == (200, 200)

        refused = await client.get("/spawner/v1/labs/alice/events", headers=ALICE)
        assert refused.status_code == 429
        assert refused.json() == {
            "detail": [
                {
                    "msg": "Too many open event streams for alice (at most 2)",
                    "type": "too_many_streams",
                }
            ]
        }
        # Another user is unaffected.
        assert (await open_stream(open_streams, client, "bob")).status_code == 200
        # A refusal of the service (no lab) gives its slot back.
        assert (await client.get("/spawner/v1/labs/carol/events", headers=HUB)).status_code == 404
        assert streams.admitted("carol") == 0

        # A client closing a stream frees its slot.
        await first.aclose()
        await released(streams, "alice", 1)
        assert (await open_stream(open_streams, client, "alice")).status_code == 200


async def test_streams_in_all_are_capped(database: Database) -> None:
    async with (
        capped(database, per_user=10, total=2) as (url, streams),
        httpx.AsyncClient(base_url=url, timeout=10) as client,
        contextlib.AsyncExitStack() as open_streams,
    ):
        first = await open_stream(open_streams, client, "alice")
        await open_stream(open_streams, client, "alice")

        refused = await client.get("/spawner/v1/labs/bob/events", headers=HUB)
        assert refused.status_code == 429
        assert refused.json()["detail"] == [
            {
                "msg": "Too many open event streams (at most 2); retry later",
                "type": "too_many_streams",
            }
        ]
        await first.aclose()
        await released(streams, "alice", 1)
        assert (await open_stream(open_streams, client, "bob")).status_code == 200
    assert streams.admitted() == 0


@pytest.mark.parametrize(
    ("header", "after"),
    [
        (None, None),
        ("42", 42),
        (" 42 ", 42),
        ("0", 0),
        ("", None),
        ("-1", None),
        ("4.2", None),
        ("\u0663", None),  # An Arabic-Indic digit: isdigit() says yes, but ids are ASCII.
        (str(2**63 - 1), 2**63 - 1),
        (str(2**63), None),
    ],
)
def test_parse_last_event_id(header: str | None, after: int | None) -> None:
    assert parse_last_event_id(header) == after
