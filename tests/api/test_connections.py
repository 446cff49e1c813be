"""Bounded connections on a real uvicorn: head deadline, head size, connection cap.

Each test runs on every uvicorn HTTP protocol labd can use: h11, and
httptools where it is installed.  Clients are raw sockets, so that a test
can send exactly the bytes a slow or hostile client sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from labd.api.connections import H11_BACKSTOP, bounded_protocol
from labd.api.limits import MAX_HEADER_SIZE, RequestLimits
from labd.config import HttpConfig
from tests.support.api import HUB, Stack, serve

PROTOCOLS = {
    "h11": "uvicorn.protocols.http.h11_impl:H11Protocol",
    "httptools": "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol",
}


@pytest.fixture(params=sorted(PROTOCOLS))
def protocol(request: pytest.FixtureRequest) -> type[asyncio.Protocol]:
    """One of uvicorn's HTTP protocol classes (httptools skips if not installed)."""
    name: str = request.param
    pytest.importorskip(name)
    module, _, attribute = PROTOCOLS[name].partition(":")
    cls: type[asyncio.Protocol] = getattr(importlib.import_module(module), attribute)
    return cls


async def _hello_route(request: Request) -> Response:
    return PlainTextResponse("hello")


async def _hello(scope: Scope, receive: Receive, send: Send) -> None:
    await PlainTextResponse("hello")(scope, receive, send)


async def _slow(request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            await asyncio.sleep(0.1)
            yield b"."

    return StreamingResponse(chunks())


APP = Starlette(routes=[Route("/", _hello_route), Route("/slow", _slow)])
"""A bare application: these tests are about connections, not routes."""


@contextlib.asynccontextmanager
async def bounded_server(
    app: Any, protocol: type[asyncio.Protocol], **http: Any
) -> AsyncIterator[tuple[str, int]]:
    """Serve ``app`` as ``labd serve`` does, with ``http`` settings; yield host and port."""
    async with serve(
        app,
        lifespan="off",
        http=bounded_protocol(HttpConfig(**http), base=protocol),
        h11_max_incomplete_event_size=H11_BACKSTOP,
    ) as url:
        host, _, port = url.removeprefix("http://").rpartition(":")
        yield host, int(port)


async def _closed_by_server(reader: asyncio.StreamReader, *, within: float) -> bytes:
    """Read until the server closes the connection; return what it sent."""
    async with asyncio.timeout(within):
        return await reader.read()


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def _body(response: bytes) -> Any:
    return json.loads(response.partition(b"\r\n\r\n")[2])


async def test_a_stalled_request_head_is_closed_at_the_deadline(
    protocol: type[asyncio.Protocol],
) -> None:
    async with (
        bounded_server(APP, protocol, header_timeout=0.5) as (host, port),
        httpx.AsyncClient(base_url=f"http://{host}:{port}") as client,
    ):
        silent = await asyncio.open_connection(host, port)
        partial = await asyncio.open_connection(host, port)
        partial[1].write(b"GET / HTTP/1.1\r\nHost: labd\r\nX-Slow: ")
        await partial[1].drain()
        slow = asyncio.create_task(client.get("/slow"))  # One second, ten chunks.

        # Closed without a response; the deadline counts from the connection.
        assert await _closed_by_server(silent[0], within=5) == b""
        assert await _closed_by_server(partial[0], within=5) == b""
        for _, writer in (silent, partial):
            writer.close()
        # A request whose head was complete is not cut off, nor is its
        # connection's next request.
        response = await slow
        second = await client.get("/")

    assert (response.status_code, response.text) == (200, "." * 10)
    assert (second.status_code, second.text) == (200, "hello")


async def test_the_next_head_on_a_kept_alive_connection_has_a_deadline(
    protocol: type[asyncio.Protocol],
) -> None:
    # uvicorn's keep-alive timer stops at the first byte of the next request.
    async with bounded_server(APP, protocol, header_timeout=0.5, keepalive_timeout=60) as (
        host,
        port,
    ):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: labd\r\n\r\n")
        await reader.readuntil(b"hello")
        writer.write(b"GET / HTTP/1.1\r\n")

        assert await _closed_by_server(reader, within=5) == b""
        writer.close()


async def test_an_idle_kept_alive_connection_is_closed(protocol: type[asyncio.Protocol]) -> None:
    async with bounded_server(APP, protocol, header_timeout=60, keepalive_timeout=0.3) as (
        host,
        port,
    ):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: labd\r\n\r\n")
        await reader.readuntil(b"hello")

        assert await _closed_by_server(reader, within=5) == b""
        writer.close()


async def test_connections_over_the_cap_get_503_and_are_closed(
    protocol: type[asyncio.Protocol],
) -> None:
    async with bounded_server(APP, protocol, max_connections=5, header_timeout=1) as (host, port):
        stalled = [await asyncio.open_connection(host, port) for _ in range(5)]
        reader, writer = await asyncio.open_connection(host, port)
        refused = await _closed_by_server(reader, within=5)
        writer.close()

        assert _status(refused) == 503
        assert b"\r\nconnection: close\r\n" in refused
        assert _body(refused)["detail"][0]["type"] == "too_many_connections"
        # The stalled ones free their slots at their deadline.
        for stalled_reader, _ in stalled:
            assert await _closed_by_server(stalled_reader, within=5) == b""
        async with httpx.AsyncClient(base_url=f"http://{host}:{port}") as client:
            assert (await client.get("/")).status_code == 200
        for _, stalled_writer in stalled:
            stalled_writer.close()


async def test_an_incomplete_head_over_16_kib_gets_431_and_is_closed(
    protocol: type[asyncio.Protocol],
) -> None:
    async with bounded_server(APP, protocol) as (host, port):
        reader, writer = await asyncio.open_connection(host, port)
        head = b"GET / HTTP/1.1\r\nHost: labd\r\n"
        writer.write(head)
        # Header lines of 1 KiB in separate writes, never ended, until just
        # past the limit (no more: writing on would make the close a reset).
        for i in range((MAX_HEADER_SIZE - len(head)) // 1024 + 1):
            writer.write(f"X-Filler-{i:02}: ".encode() + b"a" * 1010 + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)
        refused = await _closed_by_server(reader, within=5)
        writer.close()

    assert _status(refused) == 431
    assert _body(refused)["detail"][0]["type"] == "request_header_too_large"


def _filler(size: int) -> dict[str, str]:
    """Headers of about ``size`` bytes in all."""
    return {f"X-Filler-{i:02}": "a" * 1000 for i in range(size // 1024)}


async def test_a_complete_head_over_16_kib_gets_431(
    stack: Stack, protocol: type[asyncio.Protocol]
) -> None:
    async with (
        bounded_server(stack.app, protocol) as (host, port),
        httpx.AsyncClient(base_url=f"http://{host}:{port}") as client,
    ):
        large = await client.get("/healthz", headers={**HUB, **_filler(60 * 1024)})
        fine = await client.get("/healthz", headers={**HUB, **_filler(15 * 1024)})

    assert large.status_code == 431
    assert large.headers["connection"] == "close"
    assert large.json() == {
        "detail": [
            {
                "msg": f"Request line and headers are larger than {MAX_HEADER_SIZE} bytes",
                "type": "request_header_too_large",
            }
        ]
    }
    assert fine.status_code == 200


async def _status_of(app: ASGIApp, scope: Scope) -> int:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    status: int = sent[0]["status"]
    return status


async def test_the_header_limit_counts_the_request_line_and_every_header() -> None:
    raw_head = b"GET /a%20b?x=1 HTTP/1.1\r\nhost: labd\r\nx-y: z\r\n\r\n"
    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": "/a b",
        "raw_path": b"/a%20b",
        "query_string": b"x=1",
        "headers": [(b"host", b"labd"), (b"x-y", b"z")],
    }

    fits = RequestLimits(_hello, max_body_size=0, max_header_size=len(raw_head))
    assert await _status_of(fits, scope) == 200
    too_small = RequestLimits(_hello, max_body_size=0, max_header_size=len(raw_head) - 1)
    assert await _status_of(too_small, scope) == 431
