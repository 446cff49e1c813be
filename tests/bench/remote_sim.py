"""The simulated cluster in a process of its own, as a real API server would be.

A benchmark that runs the sim in its own process measures labd rather than
labd and the sim sharing one event loop, one GIL and one heap (whose
collector would then walk the sim's 10,000 stored labs too).  The
benchmark keeps a few direct reads of the sim's registry (counting Running
pods, storing objects in bulk, recording when pods turn Running): those
are calls over a pipe to the child, which runs them on its event loop.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from labd.daemon.logs import configure_logging
from labd.sim import SimCluster
from labd.sim.kinds import resource_named
from labd.sim.selectors import FieldSelector, LabelSelector

__all__ = ["RemoteSim"]


class _Host:
    """The child's side: the sim and the calls the benchmark may make."""

    def __init__(self, sim: SimCluster) -> None:
        self.sim = sim
        self.running: dict[str, float] = {}
        self._follower: asyncio.Task[None] | None = None

    def reset_stats(self) -> None:
        self.sim.stats.reset()

    def stats(self) -> dict[str, int]:
        return dict(Counter(self.sim.stats.requests))

    def running_pods(self, namespaces: list[str]) -> int:
        wanted = set(namespaces)
        return sum(
            1
            for pod in self.sim.registry.objects(resource_named("pods"))
            if pod["metadata"]["namespace"] in wanted
            and pod.get("status", {}).get("phase") == "Running"
        )

    def live_namespaces(self, namespaces: list[str]) -> int:
        wanted = set(namespaces)
        found = self.sim.registry.objects(resource_named("namespaces"))
        return sum(1 for ns in found if ns["metadata"]["name"] in wanted)

    def store(self, objects: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Store (plural, namespace, manifest) straight into the registry."""
        for plural, namespace, manifest in objects:
            self.sim.registry.create(resource_named(plural), namespace, manifest)

    def follow_running(self) -> None:
        """Record from now on when each namespace's pod is first stored Running."""
        registry = self.sim.registry
        watcher = registry.watch(
            resource_named("pods"),
            None,
            str(registry.resource_version),
            LabelSelector.parse(""),
            FieldSelector.parse("", ()),
        )

        async def follow() -> None:
            try:
                while (line := await watcher.queue.get()) is not None:
                    obj = json.loads(line)["object"]
                    if obj.get("status", {}).get("phase") == "Running":
                        self.running.setdefault(obj["metadata"]["namespace"], time.monotonic())
            finally:
                registry.unwatch(watcher)

        self._follower = asyncio.ensure_future(follow())

    def running_since(self, namespace: str) -> float | None:
        """When the pod of ``namespace`` was stored Running (`time.monotonic`)."""
        return self.running.get(namespace)

    async def close(self) -> None:
        if self._follower is not None:
            self._follower.cancel()
            await asyncio.gather(self._follower, return_exceptions=True)


def _child(conn: Connection, options: dict[str, Any], kubeconfig: str) -> None:
    configure_logging(level="warning", fmt="json")
    asyncio.run(_serve(conn, options, Path(kubeconfig)))


async def _serve(conn: Connection, options: dict[str, Any], kubeconfig: Path) -> None:
    loop = asyncio.get_running_loop()
    async with SimCluster(**options) as sim:
        sim.write_kubeconfig(kubeconfig)
        host = _Host(sim)
        conn.send(sim.url)
        try:
            while (message := await loop.run_in_executor(None, conn.recv)) is not None:
                name, args = message
                try:
                    conn.send((True, getattr(host, name)(*args)))
                except Exception as exc:  # Reported to the caller, which raises it.
                    conn.send((False, repr(exc)))
        finally:
            await host.close()


class RemoteSim:
    """A `SimCluster` in a child process, and the benchmark's calls into it.

    Parameters
    ----------
    kubeconfig
        Where the child writes the kubeconfig that reaches it.
    **options
        `SimCluster` options.
    """

    def __init__(self, kubeconfig: Path, **options: Any) -> None:
        self.kubeconfig = kubeconfig
        self.url = ""
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(
            target=_child, args=(child, options, str(kubeconfig)), name="labd-sim", daemon=True
        )
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int:
        """The child's process id."""
        assert self._process.pid is not None
        return self._process.pid

    async def __aenter__(self) -> RemoteSim:
        self._process.start()
        self.url = await asyncio.to_thread(self._conn.recv)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._conn.send(None)
        await asyncio.to_thread(self._process.join, 30)
        if self._process.is_alive():
            self._process.kill()

    async def _call(self, name: str, *args: Any) -> Any:
        async with self._lock:
            self._conn.send((name, args))
            ok, value = await asyncio.to_thread(self._conn.recv)
        if not ok:
            raise RuntimeError(f"sim call {name} failed: {value}")
        return value

    async def reset_stats(self) -> None:
        """Zero the sim's request counts."""
        await self._call("reset_stats")

    async def stats(self) -> dict[str, int]:
        """Requests by ``"<verb> <plural>"`` since the last reset."""
        result: dict[str, int] = await self._call("stats")
        return result

    async def total_requests(self) -> int:
        """Requests since the last reset."""
        return sum((await self.stats()).values())

    async def running_pods(self, namespaces: set[str]) -> int:
        """Pods stored Running in ``namespaces``."""
        result: int = await self._call("running_pods", sorted(namespaces))
        return result

    async def live_namespaces(self, namespaces: set[str]) -> int:
        """How many of ``namespaces`` still exist."""
        result: int = await self._call("live_namespaces", sorted(namespaces))
        return result

    async def store(self, objects: list[tuple[str, str, dict[str, Any]]]) -> None:
        """Store (plural, namespace, manifest) straight into the registry."""
        await self._call("store", objects)

    async def follow_running(self) -> None:
        """Start recording when each pod is stored Running."""
        await self._call("follow_running")

    async def running_since(self, namespace: str) -> float | None:
        """When the pod of ``namespace`` was stored Running (`time.monotonic`)."""
        result: float | None = await self._call("running_since", namespace)
        return result


async def until(check: Callable[[], Any], *, every: float = 0.02) -> None:
    """Return once the awaitable ``check()`` answers true (asked every ``every`` s)."""
    while not await check():  # noqa: ASYNC110 - the answer comes from another process
        await asyncio.sleep(every)
