"""labd's API as ``labd serve`` wires it, and what a client of it sends and reads.

`build_stack` builds the app as ``labd serve`` does: Database -> LabStore ->
LabSignals -> ImageCatalog -> LabService -> create_app.  No scheduler runs;
`Driver` moves labs through the store exactly as the scheduler does (same
transitions, same events, same signals), so each test decides when a spawn
or a delete progresses.

The tokens and headers of the hub and of two users, a spawn body as the
hub's form sends it, `serve` (a real uvicorn on 127.0.0.1, since httpx's
ASGI transport buffers whole responses) and `read_events` (an event stream
read to its end) serve the API tests and every other tier that talks to
labd over HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette

from labd.api import Authenticator, create_app
from labd.api.service import LabService
from labd.config import Config
from labd.db.database import Database
from labd.db.status import StatusCache
from labd.db.store import LabStore
from labd.images.catalog import ImageCatalog
from labd.lab.machine import LabState, Trigger
from labd.lab.records import Actor, EventType, LabRecord, NewEvent
from labd.lab.signals import LabSignals

__all__ = [
    "ALICE",
    "ALICE_TOKEN",
    "BOB",
    "BOB_TOKEN",
    "DAILY",
    "HUB",
    "HUB_TOKEN",
    "RELEASE",
    "WEEKLY",
    "Driver",
    "Event",
    "Stack",
    "build_stack",
    "make_config",
    "read_events",
    "serve",
    "spawn_body",
]

WEEKLY = "registry.example/sciplat/lab:w_2026_47"
RELEASE = "registry.example/sciplat/lab:r28_0_1"
DAILY = "registry.example/sciplat/lab:d_2026_11_24"

HUB_TOKEN = "hub-secret-token"
ALICE_TOKEN = "alice-secret-token"
BOB_TOKEN = "bob-secret-token"

HUB = {"Authorization": f"Bearer {HUB_TOKEN}"}
ALICE = {"Authorization": f"Bearer {ALICE_TOKEN}"}
BOB = {"Authorization": f"Bearer {BOB_TOKEN}"}


def make_config(**overrides: Any) -> Config:
    """A configuration with three images and the default sizes."""
    data: dict[str, Any] = {
        "images": {
            "available": [{"reference": WEEKLY}, {"reference": RELEASE}, {"reference": DAILY}],
            "recommended": "w_2026_47",
        },
        "timeouts": {"spawn": 60, "delete": 5},
    }
    data.update(overrides)
    return Config.model_validate(data)


def spawn_body(**options: Any) -> dict[str, Any]:
    """A create body as JupyterHub's form sends it (one-element lists, strings)."""
    return {
        "options": {
            "image_list": [WEEKLY],
            "image_dropdown": [RELEASE],
            "size": ["Medium"],
            "enable_debug": ["false"],
            "reset_user_env": ["true"],
            **options,
        },
        "env": {"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/", "JUPYTERHUB_API_TOKEN": "lab-token"},
    }


@dataclass
class Driver:
    """Moves labs as the scheduler would, through the store."""

    store: LabStore
    signals: LabSignals

    async def lab(self, username: str) -> LabRecord:
        lab = await self.store.get_current_lab(username)
        assert lab is not None, f"{username} has no lab"
        return lab

    async def _step(
        self, lab: LabRecord, trigger: Trigger, events: list[NewEvent], **changes: Any
    ) -> LabRecord:
        lab = await self.store.transition(
            lab.id,
            trigger,
            actor=Actor.SCHEDULER,
            expected=lab,
            changes=changes,  # type: ignore[arg-type]
            events=events,
        )
        self.signals.notify(lab.id)
        return lab

    async def objects_ready(self, username: str) -> LabRecord:
        """``requested`` -> ``starting``, with progress 30."""
        lab = await self._step(await self.lab(username), Trigger.START, [])
        return await self._step(
            lab,
            Trigger.OBJECTS_READY,
            [NewEvent(EventType.INFO, "Created Kubernetes objects for user lab", 30)],
            internal_url=f"http://lab.labd-{lab.slug}:8888/user/{username}/",
        )

    async def pod_event(self, username: str, message: str, progress: int) -> None:
        """One Kubernetes Event on the lab pod."""
        lab = await self.lab(username)
        await self.store.add_events(lab.id, [NewEvent(EventType.INFO, message, progress)])
        self.signals.notify(lab.id)

    async def running(self, username: str) -> LabRecord:
        """``starting`` -> ``running``, with ``complete``."""
        message = f"Lab Kubernetes pod started for {username}"
        return await self._step(
            await self.lab(username),
            Trigger.POD_RUNNING,
            [NewEvent(EventType.COMPLETE, message, terminal=True)],
            pod_phase="Running",
        )

    async def spawn(self, username: str) -> LabRecord:
        """Take a requested lab all the way to running, as docs/api.md's progress goes."""
        await self.objects_ready(username)
        await self.pod_event(username, "Successfully assigned pod", 35)
        await self.pod_event(username, "Pulling image", 48)
        return await self.running(username)

    async def fail(self, username: str, reason: str) -> LabRecord:
        """Fail the spawn: ``error`` then ``failed``."""
        return await self._step(
            await self.lab(username),
            Trigger.FAIL,
            [
                NewEvent(EventType.ERROR, reason),
                NewEvent(EventType.FAILED, "Lab spawn failed", terminal=True),
            ],
            last_error=reason,
        )

    async def finish_delete(self, username: str) -> LabRecord:
        """Complete a delete in progress: 25, 62, then 100 and ``deleted``."""
        lab = await self.lab(username)
        for message, progress in (
            ("Shutting down Kubernetes pod", 25),
            ("Deleting user namespace", 62),
        ):
            await self.store.add_events(lab.id, [NewEvent(EventType.INFO, message, progress)])
            self.signals.notify(lab.id)
        return await self._step(
            lab,
            Trigger.DELETED,
            [NewEvent(EventType.INFO, f"Lab for {username} deleted", 100, terminal=True)],
            internal_url=None,
        )

    async def wait_for(self, username: str, state: LabState) -> LabRecord:
        """Wait until the user's current lab is in ``state``."""
        async with asyncio.timeout(10):
            while True:
                lab = await self.store.get_current_lab(username)
                if lab is not None and lab.state is state:
                    return lab
                await asyncio.sleep(0.02)

    async def when_deleting(self, username: str) -> LabRecord:
        """Wait until the user's lab is being deleted, then finish the delete."""
        await self.wait_for(username, LabState.DELETING)
        return await self.finish_delete(username)


@dataclass
class Stack:
    """The app and everything behind it."""

    config: Config
    database: Database
    store: LabStore
    signals: LabSignals
    service: LabService
    app: Starlette
    driver: Driver
    not_ready: list[str] = field(default_factory=list)


def build_stack(
    database: Database, config: Config, *, keepalive: float = 15.0, status_cache: bool = False
) -> Stack:
    """Wire the app to ``database`` as ``labd serve`` does.

    ``status_cache`` turns on the in-memory status cache, which ``labd
    serve`` keeps on SQLite; off, every status read goes to SQL.
    """
    store = LabStore(database)
    status = StatusCache(store, enabled=status_cache)
    store.on_write.append(status.invalidate)
    signals = LabSignals()
    service = LabService(
        config=config,
        store=store,
        signals=signals,
        images=ImageCatalog(config.images),
        status=status,
    )
    not_ready: list[str] = []

    async def readiness() -> str | None:
        return not_ready[0] if not_ready else None

    authenticator = Authenticator.from_tokens(
        {HUB_TOKEN: "hub", ALICE_TOKEN: "user:alice", BOB_TOKEN: "user:bob"}
    )
    app = create_app(
        config=config,
        service=service,
        authenticator=authenticator,
        readiness=readiness,
        keepalive=keepalive,
    )
    return Stack(
        config=config,
        database=database,
        store=store,
        signals=signals,
        service=service,
        app=app,
        driver=Driver(store, signals),
        not_ready=not_ready,
    )


@contextlib.asynccontextmanager
async def serve(app: Any, **settings: Any) -> AsyncIterator[str]:
    """Serve ``app`` with uvicorn on a free local port; yield its base URL.

    ``settings`` are further `uvicorn.Config` arguments (``lifespan`` is on
    unless they say otherwise).
    """
    settings.setdefault("lifespan", "on")
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None, **settings)
    )
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(10):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.01)
        port = server.servers[0].sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@dataclass(frozen=True)
class Event:
    """One event as a client reads it from the wire."""

    id: int
    type: str
    data: dict[str, Any]


async def read_events(
    base_url: str,
    username: str,
    *,
    headers: dict[str, str] | None = None,
    on_open: Callable[[], Awaitable[object]] | None = None,
    on_first: Callable[[], Awaitable[object]] | None = None,
    within: float = 10,
) -> tuple[list[Event], list[str]]:
    """Read an event stream to its end; return the events and the comment lines.

    ``on_open`` is awaited once the response has begun, ``on_first`` once
    the first event has been read.
    """
    events: list[Event] = []
    comments: list[str] = []
    fields: dict[str, str] = {}
    async with (
        asyncio.timeout(within),
        httpx.AsyncClient(base_url=base_url, timeout=within) as client,
        client.stream(
            "GET", f"/spawner/v1/labs/{username}/events", headers={**HUB, **(headers or {})}
        ) as response,
    ):
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        if on_open is not None:
            await on_open()
        async for line in response.aiter_lines():
            if line.startswith(":"):
                comments.append(line)
            elif line:
                name, _, value = line.partition(": ")
                fields[name] = value
            elif fields:
                events.append(
                    Event(int(fields["id"]), fields["event"], json.loads(fields["data"]))
                )
                fields = {}
                if on_first is not None and len(events) == 1:
                    await on_first()
    return events, comments
