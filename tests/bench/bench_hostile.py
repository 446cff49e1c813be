"""Status reads of a real ``labd serve`` under hostile load: stalled heads, idle streams.

Two loads any client can put on labd, the first without a token:

* **stalled heads** ("slowloris"): ``--stalled`` raw connections that each
  send part of a request head and then nothing.  labd closes each one
  ``http.header_timeout`` (10 s by default) after it connected; until then
  the hub's status reads must stay quick, and afterwards a new client must
  get through.
* **idle event streams**: ``--streams`` event streams
  (``GET /spawner/v1/labs/alice/events``) on one lab whose pod stays
  pending, so no stream ever ends.  An idle stream should cost labd
  nothing until its lab changes; when followers polled the database every
  2 s, 500 of them took 0.84 of a core.  The settings raise
  ``http.max_streams_per_user`` to ``--streams`` so that they can all be
  on one lab.

labd runs as ``labd serve`` in a subprocess, next to the simulated cluster
in another (pods start after an hour, so alice's lab stays ``starting``,
status ``pending``); this process is the only client, and all traffic is
on 127.0.0.1.  Status reads are ``GET /spawner/v1/labs/alice`` with the
hub's token, one after another on one kept-alive connection.  Phases, in
order:

1. **no load**: 100 warm-up reads, then ``--reads`` reads.
2. **stalled heads**: the ``--stalled`` connections are opened, then
   ``--reads`` reads (which should end well before labd's deadline) and
   one read on a new connection; then the time until labd has closed every
   stalled connection, and one read from a new client.
3. **idle, paced**: for ``--window`` seconds, one read every ``--pace``
   seconds, and labd's CPU time (utime + stime of ``/proc/<pid>/stat``)
   over the window, as a fraction of one core: what the paced reads and
   labd's background work cost.
4. **idle streams, paced**: the ``--streams`` streams are opened and read
   in the background (their bytes drained), and after two seconds the
   window of phase 3 is repeated.  The difference to phase 3 is what the
   idle streams cost.

Run::

    .venv/bin/python tests/bench/bench_hostile.py
    .venv/bin/python tests/bench/bench_hostile.py \\
        --database-url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres

With ``--database-url`` labd runs on a throw-away database created on that
PostgreSQL server (the URL's database is used only to create and drop it);
without it, on SQLite in a temporary directory.  It prints a table and
writes ``bench-results/hostile-<backend>.json``.  The soft open-file limit
is raised (to at most the hard limit) to fit the connections; labd
inherits it, unless ``--labd-open-files`` gives it another (1024 is
systemd's default).  labd and the sim are stopped, and the database
dropped, however the run ends (Ctrl-C included).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from labd.api import hash_token
from labd.config import HttpConfig
from tests.support.databases import scratch_database
from tests.support.processes import Daemon, SimProcess, free_port

TOKEN = "bench-hub-token"
USER = "alice"
STATUS = f"/spawner/v1/labs/{USER}"
EVENTS = f"/spawner/v1/labs/{USER}/events"
IMAGE = "registry.example/sciplat/lab:w_2026_47"
BODY = {
    "options": {"image_class": ["recommended"], "size": ["small"]},
    "env": {"JUPYTERHUB_SERVICE_PREFIX": f"/user/{USER}/", "JUPYTERHUB_API_TOKEN": "t"},
}
WARMUP = 100
SETTLE = 2.0
"""Seconds between the last stream opening and the measured window."""
HEADER_TIMEOUT = HttpConfig().header_timeout
RESERVED_FILES = 512
"""Open files this process needs besides its stalled connections and streams."""


# Databases ---------------------------------------------------------------------


# Processes ---------------------------------------------------------------------


def write_settings(
    path: Path, *, database_url: str, kubeconfig: Path, token_file: Path, streams: int
) -> str:
    """Write labd's settings file; return the base URL it will listen on."""
    address = f"127.0.0.1:{free_port()}"
    settings: dict[str, Any] = {
        "database_url": database_url,
        "bind_address": address,
        "token_file": str(token_file),
        "kubernetes": {"kubeconfig": str(kubeconfig), "request_timeout": 30},
        "images": {"available": [{"reference": IMAGE}], "recommended": "w_2026_47"},
        "timeouts": {"spawn": 3600},
        "reconcile_interval": 3600,
        "http": {"max_streams_per_user": streams, "max_streams": max(streams, 2000)},
        "log_level": "warning",
        "log_format": "json",
    }
    path.write_text(yaml.safe_dump(settings))
    return f"http://{address}"


async def stop(daemon: Daemon) -> int | None:
    """Stop labd with SIGTERM (SIGKILL after 30 s); return its exit status.

    It may have gone already: a Ctrl-C in a terminal reaches it too.
    """
    process = daemon.process
    if process is None:
        return None
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 30)
        except TimeoutError:
            process.kill()
            await process.wait()
    return process.returncode


def check_alive(daemon: Daemon) -> None:
    """Fail at once if labd has exited; its log's tail is printed on the way out."""
    assert daemon.process is not None
    if daemon.process.returncode is not None:
        raise RuntimeError(f"labd exited with status {daemon.process.returncode}")


def cpu_seconds(pid: int) -> float:
    """CPU time (user and system, all threads) the process has used so far."""
    # Fields after the parenthesised command name: state is field 3, utime 14, stime 15.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def raise_open_file_limit(needed: int) -> int:
    """Raise the soft open-file limit to ``needed`` if it is lower; return the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return soft
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise SystemExit(f"needs {needed} open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return needed


@contextlib.contextmanager
def open_file_limit(soft: int | None) -> Iterator[None]:
    """Lower the soft open-file limit for a while (a child started meanwhile keeps it)."""
    if soft is None:
        yield
        return
    before, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (before, hard))


def process_open_file_limit(pid: int) -> str:
    """The soft open-file limit of process ``pid``."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return line.split()[3]
    return "unknown"


# Status reads ------------------------------------------------------------------


@dataclass
class Reads:
    """Latencies and outcomes of a run of status reads."""

    latencies: list[float] = field(default_factory=list)
    """Seconds per read, in order."""

    outcomes: Counter[str] = field(default_factory=Counter)
    """HTTP status, or the exception's name."""

    def summary(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)
        return {
            "reads": len(ordered),
            "p50_ms": ms(statistics.median(ordered)),
            "p99_ms": ms(ordered[min(len(ordered) - 1, round(0.99 * len(ordered)) - 1)]),
            "max_ms": ms(ordered[-1]),
            "slowest_read": self.latencies.index(ordered[-1]) + 1,
            "outcomes": dict(self.outcomes),
        }


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


async def read_status(client: httpx.AsyncClient, reads: Reads) -> None:
    """One status read, added to ``reads``."""
    began = time.perf_counter()
    try:
        response = await client.get(STATUS)
        outcome = str(response.status_code)
    except httpx.HTTPError as exc:
        outcome = type(exc).__name__
    reads.latencies.append(time.perf_counter() - began)
    reads.outcomes[outcome] += 1


async def read_many(client: httpx.AsyncClient, count: int, *, within: float = 60) -> Reads:
    """``count`` reads one after another (fewer if ``within`` seconds run out)."""
    reads = Reads()
    deadline = time.monotonic() + within
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        await read_status(client, reads)
    return reads


async def paced_window(
    client: httpx.AsyncClient, pid: int, *, seconds: float, pace: float
) -> dict[str, Any]:
    """One read every ``pace`` seconds for ``seconds``; labd's CPU over that time."""
    reads = Reads()
    cpu_before = cpu_seconds(pid)
    began = time.monotonic()
    for tick in range(round(seconds / pace)):
        await asyncio.sleep(max(0.0, began + tick * pace - time.monotonic()))
        await read_status(client, reads)
    await asyncio.sleep(max(0.0, began + seconds - time.monotonic()))
    wall = time.monotonic() - began
    cpu = cpu_seconds(pid) - cpu_before
    return {
        **reads.summary(),
        "seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
        "cpu_of_one_core": round(cpu / wall, 4),
    }


async def fresh_read(url: str) -> str:
    """One status read from a new client on a new connection."""
    reads = Reads()
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5
    ) as client:
        await read_status(client, reads)
    return next(iter(reads.outcomes))


# Stalled heads -----------------------------------------------------------------


@dataclass
class Stalled:
    """A connection that sent part of a request head and then nothing."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    opened: float
    """`time.monotonic` when it connected."""


async def stall(host: str, port: int) -> Stalled:
    reader, writer = await asyncio.open_connection(host, port)
    opened = time.monotonic()
    writer.write(f"GET {STATUS} HTTP/1.1\r\nHost: {host}\r\nX-Wait: ".encode())
    return Stalled(reader, writer, opened)


async def closed_at(connection: Stalled, *, within: float) -> tuple[float, str]:
    """Wait for labd to close ``connection``; return when, and how."""
    try:
        data = await asyncio.wait_for(connection.reader.read(), within)
        how = "closed" if not data else "answered"
    except (ConnectionError, TimeoutError) as exc:
        how = type(exc).__name__
    return time.monotonic(), how


async def stalled_heads(
    client: httpx.AsyncClient, url: str, *, count: int, reads: int
) -> dict[str, Any]:
    """Status reads while ``count`` connections stall; how long labd takes to close them."""
    host, _, port = url.removeprefix("http://").partition(":")
    await read_many(client, 10)  # the kept-alive connection is fresh for the phase
    connections: list[Stalled] = []
    try:
        first = time.monotonic()
        for _ in range(count):
            connections.append(await stall(host, int(port)))
        opened = time.monotonic()
        during = await read_many(client, reads, within=first + HEADER_TIMEOUT - opened)
        read_end = time.monotonic()
        fresh_during = await fresh_read(url)
        give_up = first + HEADER_TIMEOUT + 20
        ends = await asyncio.gather(
            *(closed_at(c, within=give_up - time.monotonic()) for c in connections)
        )
        fresh_after = await fresh_read(url)
    finally:
        for connection in connections:
            connection.writer.close()
    lifetimes = [at - c.opened for c, (at, _) in zip(connections, ends, strict=True)]
    return {
        "stalled": count,
        "open_seconds": round(opened - first, 2),
        "reads": during.summary(),
        "reads_done_after_s": round(read_end - first, 2),
        "fresh_client_during": fresh_during,
        "closed_by_labd": dict(Counter(how for _, how in ends)),
        "all_closed_after_first_s": round(max(at for at, _ in ends) - first, 2),
        "all_closed_after_last_s": round(max(at for at, _ in ends) - opened, 2),
        "lifetime_min_s": round(min(lifetimes), 2),
        "lifetime_max_s": round(max(lifetimes), 2),
        "fresh_client_after": fresh_after,
    }


# Idle event streams ------------------------------------------------------------


@dataclass
class Stream:
    """An open event stream whose bytes a task drains."""

    writer: asyncio.StreamWriter
    received: int = 0
    ended: bool = False
    task: asyncio.Task[None] | None = None

    async def drain(self, reader: asyncio.StreamReader) -> None:
        try:
            while chunk := await reader.read(65536):
                self.received += len(chunk)
        except ConnectionError:
            pass
        self.ended = True


async def open_stream(host: str, port: int) -> tuple[str, Stream | None]:
    """Open an event stream; return its status and, if 200, the stream."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET {EVENTS} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Accept: text/event-stream\r\n\r\n".encode()
    )
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    except (asyncio.IncompleteReadError, ConnectionError, TimeoutError) as exc:
        writer.close()
        return type(exc).__name__, None
    status = head.split(b" ", 2)[1].decode()
    if status != "200":
        writer.close()
        return status, None
    stream = Stream(writer, received=len(head))
    stream.task = asyncio.create_task(stream.drain(reader))
    return status, stream


async def idle_streams(
    client: httpx.AsyncClient, url: str, pid: int, *, count: int, seconds: float, pace: float
) -> dict[str, Any]:
    """Open ``count`` streams on alice's pending lab; the paced window while they idle."""
    host, _, port = url.removeprefix("http://").partition(":")
    streams: list[Stream] = []
    gate = asyncio.Semaphore(20)

    async def one() -> str:
        async with gate:
            status, stream = await open_stream(host, int(port))
        if stream is not None:
            streams.append(stream)
        return status

    try:
        began = time.monotonic()
        statuses = Counter(await asyncio.gather(*(one() for _ in range(count))))
        opened = time.monotonic() - began
        await asyncio.sleep(SETTLE)
        received = sum(s.received for s in streams)
        window = await paced_window(client, pid, seconds=seconds, pace=pace)
        return {
            "streams": count,
            "open_statuses": dict(statuses),
            "open_seconds": round(opened, 2),
            "bytes_per_stream_before_window": round(received / max(1, len(streams))),
            "bytes_in_window": sum(s.received for s in streams) - received,
            "still_open_after_window": sum(not s.ended for s in streams),
            "window": window,
        }
    finally:
        for stream in streams:
            stream.writer.close()
            if stream.task is not None:
                stream.task.cancel()
        await asyncio.gather(*(s.task for s in streams if s.task), return_exceptions=True)


# Driver ------------------------------------------------------------------------


def loadavg() -> list[str]:
    """The 1, 5 and 15 minute load averages."""
    return Path("/proc/loadavg").read_text().split()[:3]


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"cpus": os.cpu_count(), "loadavg_at_start": loadavg()}
    result["client_open_file_limit"] = raise_open_file_limit(
        args.stalled + args.streams + RESERVED_FILES
    )
    with tempfile.TemporaryDirectory(prefix="labd-hostile-") as tmpdir:
        tmp = Path(tmpdir)
        token_file = tmp / "tokens"
        token_file.write_text(f"{hash_token(TOKEN)} hub\n")
        sim = SimProcess(tmp / "kubeconfig", args=["--pod-start-delay", "3600"])
        async with (
            scratch_database("sqlite", tmp, "labd_bench_hostile")
            if args.database_url is None
            else scratch_database(
                "postgresql", tmp, "labd_bench_hostile", server_url=args.database_url
            )
        ) as database_url:
            url = write_settings(
                tmp / "labd.yaml",
                database_url=database_url,
                kubeconfig=sim.kubeconfig,
                token_file=token_file,
                streams=args.streams,
            )
            daemon = Daemon(tmp / "labd.yaml", f"{url}/readyz", tmp / "labd.log")
            try:
                sim.start()
                with open_file_limit(args.labd_open_files):
                    await daemon.start()
                result["labd_open_file_limit"] = process_open_file_limit(daemon.pid)
                result.update(await phases(args, daemon, url))
            except Exception:
                if daemon.process is not None:
                    print(daemon.log_tail(), file=sys.stderr)
                raise
            finally:
                result["labd_exit_status"] = await stop(daemon)
                sim.stop()
    result["loadavg_at_end"] = loadavg()
    return result


async def phases(args: argparse.Namespace, daemon: Daemon, url: str) -> dict[str, Any]:
    """The four phases of the module docstring."""
    result: dict[str, Any] = {}
    async with httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        limits=httpx.Limits(max_connections=1),
        timeout=5,
    ) as client:
        created = await client.post(f"{STATUS}/create", json=BODY)
        assert created.status_code == 201, created.text
        await read_many(client, WARMUP)
        result["no_load"] = (await read_many(client, args.reads)).summary()
        say("no load", result["no_load"])
        check_alive(daemon)
        result["stalled_heads"] = await stalled_heads(
            client, url, count=args.stalled, reads=args.reads
        )
        say("stalled heads", result["stalled_heads"])
        check_alive(daemon)
        result["idle_paced"] = await paced_window(
            client, daemon.pid, seconds=args.window, pace=args.pace
        )
        say("idle, paced", result["idle_paced"])
        check_alive(daemon)
        result["idle_streams"] = await idle_streams(
            client, url, daemon.pid, count=args.streams, seconds=args.window, pace=args.pace
        )
        say("idle streams", result["idle_streams"])
        status = (await client.get(STATUS)).json()["status"]
        assert status == "pending", f"alice's lab is {status}, no longer pending"
    return result


def say(what: str, value: Any) -> None:
    print(f"  {what}: {json.dumps(value)}", file=sys.stderr, flush=True)


def table(result: dict[str, Any], args: argparse.Namespace) -> str:
    s, i = result["stalled_heads"], result["idle_streams"]
    rows = [
        ("no load", result["no_load"]),
        (f"{args.stalled} stalled heads", s["reads"]),
        (f"idle, 1 per {args.pace} s", result["idle_paced"]),
        (f"{args.streams} idle streams, 1 per {args.pace} s", i["window"]),
    ]
    lines = [f"{'status reads':<34}{'n':>6}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}  answers"]
    for name, r in rows:
        lines.append(
            f"{name:<34}{r['reads']:>6}{r['p50_ms']:>9}{r['p99_ms']:>9}{r['max_ms']:>9}"
            f"  {r['outcomes']}"
        )
    idle, busy = result["idle_paced"], i["window"]
    lines += [
        "",
        f"labd CPU over {args.window} s, of one core: paced reads alone"
        f" {idle['cpu_of_one_core']:.1%}, with {args.streams} idle streams"
        f" {busy['cpu_of_one_core']:.1%}"
        f" (streams: {busy['cpu_of_one_core'] - idle['cpu_of_one_core']:+.1%})",
        f"stalled heads: {s['stalled']} opened in {s['open_seconds']} s; reads done"
        f" {s['reads_done_after_s']} s after the first; all closed by labd"
        f" {s['all_closed_after_first_s']} s after the first opened"
        f" ({s['lifetime_min_s']}-{s['lifetime_max_s']} s each, {s['closed_by_labd']});"
        f" new client during: {s['fresh_client_during']}, after: {s['fresh_client_after']}",
        f"idle streams: {i['streams']} opened in {i['open_seconds']} s"
        f" ({i['open_statuses']}), {i['still_open_after_window']} still open after the window,"
        f" {i['bytes_in_window']} bytes received in it",
        f"labd: open-file limit {result['labd_open_file_limit']}, exit status on SIGTERM"
        f" {result['labd_exit_status']}; load"
        f" {' '.join(result['loadavg_at_start'])} at start,"
        f" {' '.join(result['loadavg_at_end'])} at end; {result['cpus']} CPUs",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        help="PostgreSQL server to create a throw-away database on"
        " (postgresql+asyncpg://user@host:port/db); default: SQLite",
    )
    parser.add_argument("--reads", type=int, default=1000, help="status reads per burst")
    parser.add_argument("--stalled", type=int, default=600, help="stalled connections")
    parser.add_argument("--streams", type=int, default=500, help="idle event streams")
    parser.add_argument("--window", type=float, default=30.0, help="seconds of CPU measurement")
    parser.add_argument("--pace", type=float, default=0.1, help="seconds between paced reads")
    parser.add_argument(
        "--labd-open-files",
        type=int,
        help="labd's soft open-file limit (e.g. 1024, systemd's default); default: this"
        " process's, raised to fit the connections",
    )
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    if args.database_url is not None and not args.database_url.startswith("postgresql+asyncpg"):
        parser.error("--database-url must be a postgresql+asyncpg:// URL")
    backend = "sqlite" if args.database_url is None else "postgresql"
    try:
        result = asyncio.run(measure(args))
    except KeyboardInterrupt:
        sys.exit(130)
    result["backend"] = backend
    print(f"labd under hostile load, {backend}")
    print(table(result, args))
    output = args.output or Path(f"bench-results/hostile-{backend}.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
