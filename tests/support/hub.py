"""A real JupyterHub with `labd.spawner.LabdSpawner`, run as a process for the tests.

``jupyterhub`` runs with the spawner, a dummy authenticator and an API
token for the tests, and its own configurable-http-proxy. JupyterHub comes
from the ``jupyterhub`` extra, the proxy from npm (``npm ci --prefix
tests/hub``). The hub in ``tests/hub`` drives ``labd dev``; the one in
``tests/realnode`` drives labd on a real node, where the labs run
``jupyterhub-singleuser`` and call the hub back.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.dev import START_TIMEOUT, tail
from tests.support.processes import free_port

__all__ = [
    "Hub",
    "connections_at_exit",
    "missing_proxy",
    "proxy_command",
    "running_hub",
    "wait_until",
]

NPM_PREFIX = Path(__file__).resolve().parents[1] / "hub"
"""Where ``npm ci --prefix tests/hub`` installs configurable-http-proxy."""

REPOSITORY = Path(__file__).resolve().parents[2]
"""The checkout, so that the hub's configuration can import `tests.support`."""


def wait_until(check: Callable[[], bool], *, within: float, what: str, log: Path) -> None:
    """Poll ``check`` until true; fail with the end of ``log`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s\n{tail(log)}")
        time.sleep(0.1)


def proxy_command() -> list[str] | None:
    """configurable-http-proxy, from ``npm ci --prefix tests/hub`` or the PATH."""
    local = NPM_PREFIX / "node_modules" / ".bin" / "configurable-http-proxy"
    found = str(local) if local.exists() else shutil.which("configurable-http-proxy")
    return None if found is None else [found]


def missing_proxy() -> str:
    """Why the hub cannot run without its proxy, for a skip."""
    return (
        "configurable-http-proxy is not installed: run `npm ci --prefix tests/hub` "
        "(Node.js 20 or later)"
    )


@dataclass(frozen=True)
class Hub:
    """JupyterHub running as a process, with an admin API token."""

    url: str
    """The public URL (the proxy)."""
    token: str
    """An API token with admin:users and admin:servers."""
    log: Path
    """The hub's and the proxy's output."""

    @property
    def api(self) -> str:
        return f"{self.url}/hub/api"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"token {self.token}"}

    def user(self, name: str) -> dict[str, Any]:
        """The hub's model of a user, with its servers."""
        response = httpx.get(f"{self.api}/users/{name}", headers=self.headers, timeout=10)
        response.raise_for_status()
        model: dict[str, Any] = response.json()
        return model


def hub_config(
    *, labd_url: str, proxy: list[str], hub_port: int, token: str, port: int, extra: str = ""
) -> str:
    """A ``jupyterhub_config.py`` for the tests, as docs/jupyterhub.md describes.

    ``extra`` is appended: Python lines that override the defaults here.
    """
    return f"""
c = get_config()  # noqa: F821
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.command = {proxy!r}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{free_port()}"
c.JupyterHub.authenticator_class = "dummy"
c.Authenticator.allow_all = True
c.JupyterHub.spawner_class = "labd.spawner.LabdSpawner"
c.LabdSpawner.labd_url = {labd_url!r}
c.Spawner.poll_interval = 1
c.Spawner.poll_jitter = 0
c.Spawner.start_timeout = 60
c.Spawner.http_timeout = 30
# POST .../server answers 202 at once, so the tests can watch the spawn's progress.
c.JupyterHub.tornado_settings = {{"slow_spawn_timeout": 0}}
c.JupyterHub.services = [{{"name": "e2e", "api_token": {token!r}}}]
c.JupyterHub.load_roles = [
    {{"name": "e2e", "scopes": ["admin:users", "admin:servers"], "services": ["e2e"]}}
]
{extra}
"""


def connections_at_exit(port: int) -> str:
    """Configuration lines (``extra``) that make the hub account for its connections at exit.

    The last thing the hub's process does is log ``connections to port
    <port> at exit: <n>``: how many sockets to ``port`` it still holds
    (`tests.support.sockets`), after a garbage collection. ResourceWarnings
    are shown, so an unclosed socket or transport that the collection
    finds is logged too.
    """
    return f"""
import atexit, gc, sys, warnings
sys.path.insert(0, {str(REPOSITORY)!r})
from tests.support.sockets import connections_to
warnings.simplefilter("always", ResourceWarning)

def _connections_at_exit():
    gc.collect()
    count = connections_to({port})
    print(f"connections to port {port} at exit: {{count}}", file=sys.stderr, flush=True)

atexit.register(_connections_at_exit)
"""


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _stop(process: subprocess.Popen[bytes], *, within: float) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=within)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise AssertionError(f"{process.args!r} did not stop within {within} s") from None


@contextlib.contextmanager
def running_hub(
    directory: Path, *, labd_url: str, labd_token: str, proxy: list[str], extra: str = ""
) -> Iterator[Hub]:
    """Run JupyterHub in ``directory`` against labd until the block ends.

    The hub reads labd's token from its environment (``LABD_HUB_TOKEN``), as
    docs/jupyterhub.md advises; at the end its log must not show it.
    """
    port, hub_port = free_port(), free_port()
    token = secrets.token_hex(32)
    config = directory / "jupyterhub_config.py"
    config.write_text(
        hub_config(
            labd_url=labd_url,
            proxy=proxy,
            hub_port=hub_port,
            token=token,
            port=port,
            extra=extra,
        )
    )
    log = directory / "jupyterhub.log"
    environ = {**os.environ, "LABD_HUB_TOKEN": labd_token}
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config), "--debug"],
            cwd=directory,
            env=environ,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: process.poll() is None and _answers(f"{url}/hub/api/"),
            within=START_TIMEOUT,
            what="JupyterHub (through its proxy) answering",
            log=log,
        )
        yield Hub(url=url, token=token, log=log)
    finally:
        _stop(process, within=60)
        text = log.read_text(errors="replace")
        assert labd_token not in text, "the hub's log shows labd's token"
