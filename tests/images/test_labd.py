"""`Labd` reads the registry at start, refreshes it, and starts without it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from labd.daemon.factory import Labd
from labd.sim import SimCluster
from tests.images.conftest import push_all, sample
from tests.support.core import make_config
from tests.support.registry import REPOSITORY, LocalRegistry
from tests.support.waiting import eventually


@pytest.fixture
async def sim() -> AsyncIterator[SimCluster]:
    async with SimCluster(pod_start_delay=0.05, seed=7) as cluster:
        yield cluster


async def start_labd(
    database_url: str, sim: SimCluster, tmp_path: Path, registry: LocalRegistry
) -> Labd:
    kubeconfig = sim.write_kubeconfig(tmp_path / "kubeconfig")
    images = {
        "registry": {
            "url": registry.url,
            "repository": REPOSITORY,
            "refresh_interval": 0.2,
            "timeout": 2,
        },
        "recommended": "recommended",
    }
    labd = await Labd.create(make_config(database_url, kubeconfig, images=images))
    await labd.start()
    return labd


async def test_labd_reads_and_refreshes_the_registry(
    database_url: str, sim: SimCluster, tmp_path: Path, registry: LocalRegistry
) -> None:
    await push_all(registry)
    labd = await start_labd(database_url, sim, tmp_path, registry)
    try:
        assert await labd.readiness() is None
        recommended = labd.images.resolve("image_class", "recommended")
        assert recommended.tag == "w_2026_47"
        await registry.push("w_2026_48")
        await eventually(lambda: labd.images.current.by_tag("w_2026_48") is not None)
    finally:
        await labd.stop()


async def test_labd_starts_with_the_registry_down(
    database_url: str, sim: SimCluster, tmp_path: Path, registry: LocalRegistry
) -> None:
    await push_all(registry)
    registry.stop()
    labd = await start_labd(database_url, sim, tmp_path, registry)
    try:
        assert await labd.readiness() is None
        # The configured images of tests/core are served; the registry's are not known yet.
        assert len(labd.images.current.images) == 3
        assert labd.images.current.recommended is None
        metrics = labd.metrics
        assert (
            sample(metrics, "labd_image_refresh_failures_total", reason="unreachable") or 0
        ) >= 1
        registry.start()
        await eventually(lambda: labd.images.current.recommended is not None)
        assert sample(metrics, "labd_images_known") == 3 + 6
    finally:
        await labd.stop()
