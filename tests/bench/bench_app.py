"""Benchmark: what a status read costs in labd's application alone, against a bare route.

A status read at 16 clients (`bench_scale.py`) is bound by the server's
CPU, shared by the HTTP protocol and the application, and moves by 10 to
20 % from run to run on a shared host.  This script times the
application's part alone: ``GET /spawner/v1/labs/{username}`` called on
the ASGI application in a loop, with no server and no client, so that
changes to labd's middleware, routing, token check and handler can be
compared in microseconds.

* ``labd``: the application as ``labd serve`` builds it (the middleware
  stack, the route table, the token check, the status cache on SQLite),
  with one lab per user;
* ``bare``: the bare Starlette route of `ceiling_server.py` (no token, no
  database, the same JSON rendered from memory on each read).

Rounds alternate between the two; each result is the best round, the
least disturbed by the rest of the machine.

Run::

    .venv/bin/python tests/bench/bench_app.py [--users 100] [--reads 3000] [--rounds 40]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from starlette.types import ASGIApp, Message, Scope

from labd.daemon.logs import configure_logging
from labd.db.database import Database
from labd.db.migrate import upgrade
from tests.bench.ceiling_server import starlette_app
from tests.support.api import HUB, HUB_TOKEN, build_stack, make_config, spawn_body


def _scope(username: str) -> Scope:
    path = f"/spawner/v1/labs/{username}"
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [
            (b"host", b"127.0.0.1:8080"),
            (b"authorization", f"Bearer {HUB_TOKEN}".encode()),
            (b"user-agent", b"bench_app"),
        ],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8080),
        "state": {},
    }


async def _receive() -> Message:
    return {"type": "http.request", "body": b"", "more_body": False}


async def microseconds_per_read(app: ASGIApp, scopes: list[Scope], reads: int) -> float:
    """Time ``reads`` status reads of ``app`` over ``scopes`` in turn; µs per read."""
    statuses: list[int] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    began = time.perf_counter()
    for n in range(reads):
        # A fresh scope per read, as a server gives: the app may write to it.
        await app(dict(scopes[n % len(scopes)]), _receive, send)
    elapsed = time.perf_counter() - began
    assert set(statuses) == {200}, set(statuses)
    return elapsed / reads * 1e6


async def measure(*, users: int, reads: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as directory:
        database = Database(f"sqlite+aiosqlite:///{Path(directory) / 'labd.db'}")
        try:
            await upgrade(database)
            # The status cache on, as ``labd serve`` has it on SQLite.
            app = build_stack(database, make_config(), status_cache=True).app
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://labd") as client:
                for n in range(users):
                    response = await client.post(
                        f"/spawner/v1/labs/user{n}/create", json=spawn_body(), headers=HUB
                    )
                    assert response.status_code == 201, response.text
                body = (await client.get("/spawner/v1/labs/user0", headers=HUB)).json()
            apps: dict[str, ASGIApp] = {"labd": app, "bare": starlette_app(body)}
            scopes = [_scope(f"user{n}") for n in range(users)]
            best = dict.fromkeys(apps, float("inf"))
            for _ in range(rounds):
                for name, each in apps.items():
                    best[name] = min(best[name], await microseconds_per_read(each, scopes, reads))
        finally:
            await database.dispose()
    return {
        "users": users,
        "reads_per_round": reads,
        "rounds": rounds,
        "labd_us": round(best["labd"], 1),
        "bare_us": round(best["bare"], 1),
        "labd_over_bare_us": round(best["labd"] - best["bare"], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--reads", type=int, default=3_000, help="reads per round")
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    configure_logging(level="warning", fmt="json")
    result = asyncio.run(measure(users=args.users, reads=args.reads, rounds=args.rounds))
    print(
        f"status read in the application alone, best of {args.rounds} rounds:"
        f" labd {result['labd_us']} us, bare route {result['bare_us']} us"
        f" ({result['labd_over_bare_us']} us more)"
    )


if __name__ == "__main__":
    main()
