"""Slow clients against ``labd serve``: status reads go on, stalled connections end.

Security issue 15: a few hundred connections that send part of a request
head and stall used to stay open forever, until labd ran out of file
descriptors and the hub's status reads timed out.  Here 600 such
connections stall against a real labd (with a short head deadline) while
the hub reads a lab's status; the reads must all be answered, and labd
must close every stalled connection once the deadline has passed.

How fast the reads are is measured by a benchmark, not asserted here.
"""

from __future__ import annotations

import asyncio
import resource
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from labd.api import hash_token
from labd.api.connections import RESERVED_FILES
from tests.daemon.conftest import Daemon, write_config
from tests.support.api import HUB, HUB_TOKEN, spawn_body

STALLED = 600
"""Connections that stall, as many as in the issue's report."""

HEAD_DEADLINE = 3.0
"""``http.header_timeout`` of the labd under test, in seconds."""


@pytest.fixture
def open_files() -> Iterator[None]:
    """Enough open files for the stalled connections, here and in labd.

    Both ends of each connection are in a process of the test (labd inherits
    this process's limit), so the soft limit is raised if it is too low for
    them, and restored afterwards.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = STALLED + 2 * RESERVED_FILES
    if soft == resource.RLIM_INFINITY or soft >= needed:
        yield
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the open-file limit ({hard}) is below the {needed} this test needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def _stall(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect and send a request head that never ends."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /spawner/v1/labs/alice HTTP/1.1\r\nHost: labd\r\nX-Wait: ")
    await writer.drain()
    return reader, writer


async def test_stalled_clients_neither_starve_status_reads_nor_stay_open(
    tmp_path: Path,
    migrated_sqlite_template: Path,
    sim_process: Callable[..., Path],
    daemons: list[Daemon],
    open_files: None,
) -> None:
    database = tmp_path / "labd.db"
    shutil.copyfile(migrated_sqlite_template, database)
    tokens = tmp_path / "tokens"
    tokens.write_text(f"{hash_token(HUB_TOKEN)} hub\n")
    config = write_config(
        tmp_path / "labd.yaml",
        database_url=f"sqlite+aiosqlite:///{database}",
        kubeconfig=sim_process(),
        token_file=str(tokens),
        http={"header_timeout": HEAD_DEADLINE},
    )
    daemon = Daemon(config, tmp_path / "labd.log")
    daemons.append(daemon)
    await daemon.start()
    url = urlsplit(daemon.url)
    assert url.hostname is not None and url.port is not None

    async with httpx.AsyncClient(base_url=daemon.url, headers=HUB, timeout=10) as client:
        created = await client.post("/spawner/v1/labs/alice/create", json=spawn_body())
        assert created.status_code == 201, created.text

        stalled = [await _stall(url.hostname, url.port) for _ in range(STALLED)]
        stalled_at = time.monotonic()
        statuses = [(await client.get("/spawner/v1/labs/alice")).status_code for _ in range(50)]
        read_for = time.monotonic() - stalled_at

        assert statuses == [200] * 50, daemon.tail()
        # The reads are meant to happen while the connections stall.
        print(f"50 status reads took {read_for:.2f} s of the {HEAD_DEADLINE} s deadline")
        async with asyncio.timeout(HEAD_DEADLINE + 30):
            ends = await asyncio.gather(*(reader.read() for reader, _ in stalled))
        closed_after = time.monotonic() - stalled_at
        assert ends == [b""] * STALLED  # Closed by labd, with no response.
        print(f"labd closed the stalled connections {closed_after:.2f} s after they stalled")
        for _, writer in stalled:
            writer.close()
        # labd serves on after that.
        assert (await client.get("/spawner/v1/labs/alice")).status_code == 200

    assert await daemon.terminate() == 0, daemon.tail()
