"""The token file of a running ``labd serve``: re-read on SIGHUP and when it changes.

Adding a user's token must not need a restart, and a typo in the new file
must not lock anyone out: labd logs the line and keeps the tokens it had.
``systemd/labd.service`` sends SIGHUP on ``systemctl reload``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from labd.api import hash_token
from tests.daemon.conftest import Daemon, write_config

WITHIN = 10.0
"""Seconds a reload may take to show (the file is checked every second)."""


def _tokens(path: Path, *roles: tuple[str, str]) -> None:
    path.write_text("# labd tokens\n" + "".join(f"{hash_token(t)} {r}\n" for t, r in roles))


async def _status(client: httpx.AsyncClient, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    return (await client.get("/spawner/v1/user-status", headers=headers)).status_code


async def _eventually_accepted(client: httpx.AsyncClient, daemon: Daemon, token: str) -> None:
    deadline = time.monotonic() + WITHIN
    while await _status(client, token) == 401:
        assert daemon.returncode is None, daemon.tail()
        assert time.monotonic() < deadline, f"token not accepted within {WITHIN} s"
        await asyncio.sleep(0.1)


def _log_records(daemon: Daemon) -> list[dict[str, Any]]:
    records = []
    for line in daemon.log.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


async def test_token_file_reloads_on_sighup_and_on_change(
    tmp_path: Path,
    migrated_sqlite_template: Path,
    sim_process: Callable[..., Path],
    daemons: list[Daemon],
) -> None:
    database = tmp_path / "labd.db"
    shutil.copyfile(migrated_sqlite_template, database)
    tokens = tmp_path / "tokens"
    _tokens(tokens, ("hub-token", "hub"))
    config = write_config(
        tmp_path / "labd.yaml",
        database_url=f"sqlite+aiosqlite:///{database}",
        kubeconfig=sim_process(),
        token_file=str(tokens),
    )
    daemon = Daemon(config, tmp_path / "labd.log")
    daemons.append(daemon)
    await daemon.start()
    assert daemon.process is not None
    async with httpx.AsyncClient(base_url=daemon.url, timeout=10) as client:
        assert await _status(client, "alice-token") == 401

        # A user's token added, then SIGHUP (systemctl reload): labd lives on.
        _tokens(tokens, ("hub-token", "hub"), ("alice-token", "user:alice"))
        daemon.process.send_signal(signal.SIGHUP)
        await _eventually_accepted(client, daemon, "alice-token")
        assert await _status(client, "alice-token") == 404  # Alice has no lab.

        # Another one, without a signal.
        _tokens(
            tokens, ("hub-token", "hub"), ("alice-token", "user:alice"), ("bob-token", "user:bob")
        )
        await _eventually_accepted(client, daemon, "bob-token")

        # A malformed file, with and without SIGHUP: the tokens in force stay.
        tokens.write_text(
            f"{hash_token('hub-token')} hub\n{hash_token('carol-token')} user:carol\noops\n"
        )
        daemon.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + WITHIN
        while not (failed := [r for r in _log_records(daemon) if r["level"] == "error"]):
            assert time.monotonic() < deadline, daemon.tail()
            await asyncio.sleep(0.1)
        assert failed[0]["event"] == "token file not reloaded, the previous tokens stay valid"
        assert failed[0]["error"].startswith(f"{tokens}, line 3: ")
        assert daemon.returncode is None
        assert await _status(client, "bob-token") == 404
        assert await _status(client, "carol-token") == 401
        assert (await client.get("/spawner/v1/labs", headers=_hub())).status_code == 200

    assert await daemon.terminate() == 0, daemon.tail()
    log = daemon.log.read_text()
    for secret in ("alice-token", "bob-token", "carol-token", hash_token("carol-token")):
        assert secret not in log


def _hub() -> dict[str, str]:
    return {"Authorization": "Bearer hub-token"}
