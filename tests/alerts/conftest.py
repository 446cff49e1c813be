"""A real HTTP server standing in for Slack and a generic webhook.

Alerts are posted over real HTTP to an aiohttp server on 127.0.0.1, which
records what it received and can be told to fail: answer 500 or 429, or
hang.  Each receiver serves a secret-looking path, as Slack's URLs have, so
tests can check that the path never shows up in logs or posts.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from aiohttp import web

from tests.support.processes import free_port

Mode = Literal["ok", "error", "hang", "throttle", "not_found"]

SECRET_PATH = "/services/T0FAKE/B0FAKE/s3cr3t-webhook-path"
"""The path of every receiver's URL: stands for the token in a Slack URL."""


@dataclass
class Post:
    """One request the receiver got."""

    path: str
    body: Any
    at: float


@dataclass
class Receiver:
    """Records posts; ``mode`` says how to answer them."""

    mode: Mode = "ok"
    posts: list[Post] = field(default_factory=list)
    attempts: list[float] = field(default_factory=list)
    retry_after: str = "1"
    fail_first: int = 0
    """Answer this many attempts per ``mode`` first, then 200."""
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts.append(time.monotonic())
        failing = self.mode != "ok" and (
            self.fail_first == 0 or len(self.attempts) <= self.fail_first
        )
        if failing and self.mode == "hang":
            await asyncio.sleep(3600)
        if failing and self.mode == "error":
            return web.Response(status=500, text="internal error")
        if failing and self.mode == "throttle":
            return web.Response(status=429, headers={"Retry-After": self.retry_after})
        if failing and self.mode == "not_found":
            return web.Response(status=404, text="no_service")
        self.posts.append(Post(request.path, await request.json(), time.monotonic()))
        return web.Response(text="ok")

    async def wait_for(self, count: int, *, within: float = 10.0) -> list[Post]:
        """Wait until ``count`` posts arrived (or fail the test)."""
        deadline = time.monotonic() + within
        while len(self.posts) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.posts)} posts arrived, expected {count}")
            await asyncio.sleep(0.01)
        return self.posts


@pytest.fixture
async def receivers() -> AsyncIterator[dict[str, Receiver]]:
    """Two receivers, ``slack`` and ``webhook``, each on a port of its own."""
    found: dict[str, Receiver] = {}
    runners = []
    for name in ("slack", "webhook"):
        receiver = Receiver()
        app = web.Application()
        app.router.add_post(SECRET_PATH, receiver.handle)
        # No access log: it would record the secret path (it is Slack's side, not labd's).
        runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1, access_log=None)
        await runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        await web.SockSite(runner, sock).start()
        receiver.url = f"http://127.0.0.1:{port}{SECRET_PATH}"
        found[name] = receiver
        runners.append(runner)
    yield found
    for runner in runners:
        await runner.cleanup()


def refused_url() -> str:
    """A URL on a port nothing listens on."""
    return f"http://127.0.0.1:{free_port()}{SECRET_PATH}"
