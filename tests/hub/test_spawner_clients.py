"""The spawners' shared HTTP clients are closed when the hub shuts down.

JupyterHub has no shutdown hook for spawners: its shutdown runs its
cleanup, then cancels every other task of its event loop and waits for
them. These tests run that very code (``JupyterHub.shutdown_cancel_tasks``)
in the test's event loop, with a hub that has nothing of its own to clean
up, and count the process's sockets to the stand-in labd: a closed client
object is not enough, its connections must be gone. ``test_hub.py`` checks
the same at a real hub's exit.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

pytest.importorskip(
    "jupyterhub", reason="JupyterHub is not installed: pip install -e '.[jupyterhub]'"
)

from jupyterhub.app import JupyterHub

from labd.spawner import LabdSpawner
from tests.support.breakingstream import Break, StreamEvent, breaking_labd
from tests.support.sockets import connections_to, has_proc
from tests.support.spawners import hubless_spawner
from tests.support.streams import collecting, wait_for

pytestmark = pytest.mark.skipif(not has_proc(), reason="counting sockets needs Linux's /proc")

EVENTS = [
    StreamEvent(1, "info", "Starting lab creation for ada", 1),
    StreamEvent(2, "complete", "Lab Kubernetes pod started for ada"),
]


class _ShutdownOnlyHub(JupyterHub):  # type: ignore[misc]  # jupyterhub is untyped
    """JupyterHub's shutdown path alone: no servers, no proxy, and the loop goes on."""

    async def cleanup(self) -> None:
        pass

    def _stop_event_loop(self) -> None:
        pass


async def test_the_hubs_shutdown_closes_the_clients_and_their_connections() -> None:
    # One connection kept alive after a poll, one held by a progress stream
    # that is still open when the hub shuts down.
    async with breaking_labd(EVENTS, [Break(1, "silence")]) as labd:
        port = urlsplit(labd.url).port
        assert port is not None
        polling = hubless_spawner(labd.url, "hub-token", "ada")
        watching = hubless_spawner(labd.url, "hub-token", "ada")
        watching._created.set()
        async with collecting(watching.progress()) as updates:
            await wait_for(updates, lambda update: update.get("progress") == 1)
            assert await polling.poll() is None
            client = polling._client()
            assert watching._client() is client
            assert connections_to(port) == 2

            await _ShutdownOnlyHub().shutdown_cancel_tasks()

            assert client.is_closed
            assert connections_to(port) == 0
            # A request after the shutdown would open a connection no one closes.
            with pytest.raises(RuntimeError, match="the hub is shutting down"):
                await polling.poll()


async def test_close_clients_closes_them_now_and_later_requests_open_new_ones() -> None:
    async with breaking_labd(EVENTS, []) as labd:
        port = urlsplit(labd.url).port
        assert port is not None
        spawner = hubless_spawner(labd.url, "hub-token", "ada")
        assert await spawner.poll() is None
        client = spawner._client()
        assert connections_to(port) == 1

        await LabdSpawner.close_clients()

        assert client.is_closed
        assert connections_to(port) == 0
        assert await spawner.poll() is None
        assert spawner._client() is not client
