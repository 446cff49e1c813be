"""Servers that bound what a status read can cost, for `bench_scale.py`.

``starlette``: a bare Starlette route on the fastest stack a user could
pick (uvicorn with uvloop and httptools, whatever labd runs on) that
answers ``GET /spawner/v1/labs/{username}`` with the same JSON labd gave,
kept in memory: no token check, no database.  labd's status reads are
compared with it.

``raw``: an asyncio protocol that answers every request on a keep-alive
connection with a canned HTTP response, parsing nothing: the load
generator's own ceiling.

Run::

    .venv/bin/python tests/bench/ceiling_server.py --mode starlette --port 8090 \\
        --body state.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


def starlette_app(body: dict[str, Any]) -> Starlette:
    """The bare route, answering from memory."""

    async def status(request: Request) -> JSONResponse:
        return JSONResponse({**body, "user": {**body["user"]}})

    return Starlette(routes=[Route("/spawner/v1/labs/{username}", status)])


class _Canned(asyncio.Protocol):
    """Answers each request (each blank line ending a header block) at once."""

    def __init__(self, response: bytes) -> None:
        self._response = response
        self._transport: asyncio.Transport | None = None
        self._pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        self._pending += data
        count = self._pending.count(b"\r\n\r\n")
        if count:
            self._pending = self._pending.rsplit(b"\r\n\r\n", 1)[1]
            self._transport.write(self._response * count)


async def serve_raw(port: int, body: bytes) -> None:
    head = f"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len(body)}"
    response = head.encode() + b"\r\n\r\n" + body
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Canned(response), "127.0.0.1", port)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=["starlette", "raw"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--body", type=Path, required=True)
    args = parser.parse_args()
    text = args.body.read_text()
    if args.mode == "raw":
        asyncio.run(serve_raw(args.port, text.encode()))
        return
    config = uvicorn.Config(
        starlette_app(json.loads(text)),
        host="127.0.0.1",
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        access_log=False,
    )
    print("ready", flush=True)
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
