"""HAProxy in front of several labd replicas, as an operator would run it.

The replica tests put a real load balancer between the hub clients and the
labd replicas: HAProxy from Debian (``apt-get install haproxy``), started on
127.0.0.1 with a generated configuration, the way docs/api.md's
"N replicas behind a load balancer" reads:

- each replica is checked with ``GET /readyz`` every 200 ms and taken out
  at the first failure, back in at the first success;
- a request that meets a dead replica (connection refused or reset, the
  connection closed before an answer, no answer in time) or a 503 (labd
  ``not_ready``) is sent again, to another replica (``retry-on`` with
  ``option redispatch``), up to ``retries`` times;
- ``timeout server`` is long enough for a delete, which answers only once
  the lab's objects are gone, and for an event stream between two of
  labd's 15 s keep-alives.

Sending a create again is safe only because labd answers a repeated create
with 409 ``lab_exists``, which a hub treats as JupyterHub's `LabdSpawner`
does (delete, create again); a repeated delete joins the running delete or
answers 404, which a hub takes as done.

Every answer carries ``X-Labd-Replica`` (the name of the replica that
answered, ``r0``, ``r1``...), so a test knows which replica served an event
stream, and the runtime API (a Unix socket) says which replicas HAProxy
sends to.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support.processes import free_port

__all__ = ["REPLICA_HEADER", "Backend", "Balancer", "haproxy_binary"]

REPLICA_HEADER = "X-Labd-Replica"
"""Response header naming the replica that answered."""


def haproxy_binary() -> str | None:
    """The HAProxy executable, or `None` when it is not installed."""
    return shutil.which("haproxy") or (
        "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
    )


@dataclass(frozen=True)
class Backend:
    """One labd replica behind the balancer."""

    name: str
    """Server name in HAProxy and in `REPLICA_HEADER`."""

    port: int
    """Its port on 127.0.0.1."""


_CONFIG = """\
global
    maxconn 4096
    stats socket {socket} mode 600 level admin

defaults
    mode http
    timeout connect 1s
    timeout client 120s
    timeout server 120s
    timeout http-request 10s
    timeout http-keep-alive 10s
    timeout queue 10s
    timeout check 2s
    retries {retries}
    option redispatch 1
    option http-buffer-request
    retry-on {retry_on}

frontend labd
    bind 127.0.0.1:{port}
    default_backend replicas

backend replicas
    balance roundrobin
    option httpchk GET /readyz
    http-check expect status 200
    http-response set-header {header} %[srv_name]
    default-server check inter 200ms fastinter 200ms downinter 200ms fall 1 rise 1
{servers}
"""


class Balancer:
    """HAProxy on 127.0.0.1 in front of ``backends``.

    Parameters
    ----------
    backends
        The labd replicas.
    directory
        Where its configuration, runtime socket and output go.
    retries
        How many times a request is sent again (to another replica).
    retry_on
        HAProxy's ``retry-on`` conditions.
    """

    def __init__(
        self,
        backends: list[Backend],
        directory: Path,
        *,
        retries: int = 3,
        retry_on: str = "conn-failure empty-response response-timeout 503",
    ) -> None:
        binary = haproxy_binary()
        if binary is None:
            raise RuntimeError("HAProxy is not installed (apt-get install haproxy)")
        self.port = free_port()
        self.backends = backends
        self._socket = directory / "haproxy.sock"
        self._config = directory / "haproxy.cfg"
        self._log = directory / "haproxy.log"
        servers = "\n".join(f"    server {b.name} 127.0.0.1:{b.port}" for b in backends)
        self._config.write_text(
            _CONFIG.format(
                socket=self._socket,
                retries=retries,
                retry_on=retry_on,
                port=self.port,
                header=REPLICA_HEADER,
                servers=servers,
            )
        )
        self._args = [binary, "-W", "-db", "-f", str(self._config)]
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """The balancer's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Check the configuration, start HAProxy, wait for its runtime socket."""
        checked = subprocess.run(
            [*self._args, "-c", "-q"], capture_output=True, text=True, check=False
        )
        if checked.returncode != 0:
            raise RuntimeError(f"HAProxy refused its configuration:\n{checked.stderr}")
        with self._log.open("ab") as log:
            self.process = subprocess.Popen(self._args, stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while not self._socket.exists():
            if self.process.poll() is not None:
                raise RuntimeError("HAProxy exited:\n" + self._log.read_text()[-2000:])
            if time.monotonic() > deadline:
                raise RuntimeError("HAProxy did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        """Stop HAProxy (SIGTERM: close at once) and wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(10)

    async def command(self, line: str) -> str:
        """Send one command to HAProxy's runtime API; return its answer."""
        reader, writer = await asyncio.open_unix_connection(str(self._socket))
        try:
            writer.write(line.encode() + b"\n")
            await writer.drain()
            return (await reader.read()).decode()
        finally:
            writer.close()
            await writer.wait_closed()

    async def states(self) -> dict[str, str]:
        """Each replica's state as HAProxy sees it (``UP``, ``DOWN``...)."""
        answer = await self.command("show stat")
        header, *rows = [line for line in answer.splitlines() if line]
        columns = header.lstrip("# ").split(",")
        names = {backend.name for backend in self.backends}
        states = {}
        for row in rows:
            record = dict(zip(columns, row.split(","), strict=False))
            if record["pxname"] == "replicas" and record["svname"] in names:
                states[record["svname"]] = record["status"]
        return states

    async def wait_up(self, name: str, *, within: float = 10) -> None:
        """Wait until HAProxy sends requests to replica ``name`` again."""
        deadline = time.monotonic() + within
        while (await self.states()).get(name) != "UP":
            if time.monotonic() > deadline:
                raise AssertionError(f"HAProxy did not take {name} back: {await self.states()}")
            await asyncio.sleep(0.05)
