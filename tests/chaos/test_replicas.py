"""A short replica chaos run in the test suite (the long one: ``run.py --replicas 3``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.replicas import run_replica_chaos, stream_cuts
from tests.support.balancer import haproxy_binary

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        haproxy_binary() is None, reason="HAProxy is not installed (apt-get install haproxy)"
    ),
]


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_replica_chaos_loses_nothing(database_url: str, tmp_path: Path) -> None:
    """Three replicas behind HAProxy, SIGKILLed in turn, one PostgreSQL restart.

    Everything converges, and event streams cut by their replica's death
    resume on another replica without losing an event.
    """
    report = await run_replica_chaos(
        database_url=database_url,
        workdir=tmp_path,
        seconds=15,
        users=8,
        say=lambda _: None,
    )
    print("\n".join(report.lines()))
    assert report.kills >= 2
    assert len(report.streams) > 5
    _, by_death, resumed = stream_cuts(report)
    assert resumed >= 1, "no event stream was cut by its replica's death and resumed"
    assert resumed == by_death
