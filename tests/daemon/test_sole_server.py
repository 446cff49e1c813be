"""A second ``labd serve`` on one SQLite database is refused; PostgreSQL takes replicas."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import yaml

from labd.daemon.serving import EXIT_IN_USE
from labd.db.ownership import lock_path
from tests.daemon.conftest import Daemon, write_config


async def _second_serve(config_file: Path) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "labd", "serve", "--config", str(config_file)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, stderr.decode()


async def test_a_second_serve_on_one_sqlite_file_is_refused(
    tmp_path: Path,
    sqlite_path: Path,
    sim_process: Callable[..., Path],
    daemons: list[Daemon],
) -> None:
    url = f"sqlite+aiosqlite:///{sqlite_path}"
    kubeconfig = sim_process()
    first = Daemon(
        write_config(tmp_path / "first.yaml", database_url=url, kubeconfig=kubeconfig),
        tmp_path / "first.log",
    )
    daemons.append(first)
    await first.start()
    assert first.process is not None

    # Another port, the same database: refused before it serves or reconciles.
    second = write_config(tmp_path / "second.yaml", database_url=url, kubeconfig=kubeconfig)
    status, stderr = await _second_serve(second)
    assert status == EXIT_IN_USE, stderr
    assert f"another labd (PID {first.process.pid}) already serves {sqlite_path}" in stderr
    assert "PostgreSQL" in stderr
    port = yaml.safe_load(second.read_text())["bind_address"].rsplit(":", 1)[1]
    async with httpx.AsyncClient() as client:
        assert (await client.get(f"{first.url}/readyz")).status_code == 200
        try:
            await client.get(f"http://127.0.0.1:{port}/healthz")
            raise AssertionError("the refused labd serves")
        except httpx.ConnectError:
            pass

    # Once the first has gone (SIGKILL: the lock goes with the process), the
    # next one starts.
    await first.kill()
    third = Daemon(second, tmp_path / "third.log")
    daemons.append(third)
    await third.start()
    lock = lock_path(url)
    assert lock is not None
    assert (lock.parent, lock.name) == (tmp_path, "labd.db-labd.lock")
    assert third.process is not None
    assert lock.read_bytes().decode().strip() == str(third.process.pid)
    assert await third.terminate() == 0


def test_only_sqlite_files_are_locked() -> None:
    assert lock_path("postgresql+asyncpg://labd@db/labd") is None
    assert lock_path("sqlite+aiosqlite://") is None
    assert lock_path("sqlite+aiosqlite:///:memory:") is None
    assert lock_path("sqlite+aiosqlite:////var/lib/labd/labd.db") == Path(
        "/var/lib/labd/labd.db-labd.lock"
    )


async def test_two_serves_on_one_postgresql_database_both_serve(
    tmp_path: Path,
    database_url: str,
    sim_process: Callable[..., Path],
    daemons: list[Daemon],
) -> None:
    if not database_url.startswith("postgresql"):
        pytest.skip("one labd per SQLite file: the test above")
    kubeconfig = sim_process()
    replicas = [
        Daemon(
            write_config(tmp_path / f"{n}.yaml", database_url=database_url, kubeconfig=kubeconfig),
            tmp_path / f"{n}.log",
        )
        for n in range(2)
    ]
    daemons.extend(replicas)
    await asyncio.gather(*(replica.start() for replica in replicas))
    assert [await replica.terminate() for replica in replicas] == [0, 0]
