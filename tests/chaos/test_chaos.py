"""A short chaos run in the test suite (the long one is ``tests/chaos/run.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.chaos import run_chaos

pytestmark = pytest.mark.slow


async def test_chaos_loses_nothing(database_url: str, tmp_path: Path) -> None:
    """Faults, SIGKILLs and (on PostgreSQL) a server restart; everything converges."""
    report = await run_chaos(
        database_url=database_url,
        workdir=tmp_path,
        seconds=25,
        users=10,
        restart_postgres=database_url.startswith("postgresql"),
        say=lambda _: None,
    )
    assert report.kills >= 1
    assert report.faults
    assert sum(report.requests.values()) > 20
    print("\n".join(report.lines()))
