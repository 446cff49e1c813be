"""A real JupyterHub driving ``labd dev`` through `labd.spawner.LabdSpawner`.

Three processes, as an operator would run them on one machine: ``labd dev``
(labd on SQLite and the simulated cluster, whose running lab pods answer
HTTP as single-user servers), ``jupyterhub`` configured with the spawner, a
dummy authenticator and an API token for the tests, and the hub's own
configurable-http-proxy. JupyterHub comes from the ``jupyterhub`` extra,
the proxy from npm (``npm ci --prefix tests/hub``); without either the
tests skip and say why.

Both daemons are started once per module: a hub takes seconds to start on
a loaded machine, and every test uses its own user.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from labd.dev import sample_config
from tests.support.dev import START_TIMEOUT, running_labd_dev, tail, write_dev_config

HERE = Path(__file__).parent


def free_port() -> int:
    """A TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(check: Callable[[], bool], *, within: float, what: str, log: Path) -> None:
    """Poll ``check`` until true; fail with the end of ``log`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within} s\n{tail(log)}")
        time.sleep(0.1)


def _answers(url: str, headers: dict[str, str] | None = None) -> bool:
    try:
        return httpx.get(url, headers=headers, timeout=5).status_code == 200
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


@dataclass(frozen=True)
class LabdDev:
    """``labd dev`` running as a process."""

    url: str
    """labd's base URL."""
    token: str
    """The hub token."""
    sim_url: str
    """The simulated cluster's API server."""
    sim_token: str
    """Its bearer token (the control API takes it too)."""
    log: Path
    """labd's output."""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def lab(self, username: str) -> httpx.Response:
        """labd's ``GET /spawner/v1/labs/{username}``."""
        return httpx.get(f"{self.url}/spawner/v1/labs/{username}", headers=self.headers)

    def namespace_exists(self, namespace: str) -> bool:
        """Whether the simulated cluster still has a namespace (terminating counts)."""
        response = httpx.get(
            f"{self.sim_url}/api/v1/namespaces/{namespace}",
            headers={"Authorization": f"Bearer {self.sim_token}"},
        )
        if response.status_code == 404:
            return False
        response.raise_for_status()
        return True

    def add_rule(self, namespace: str, outcome: str) -> None:
        """Give the pods of a namespace an outcome, through the sim's control API."""
        response = httpx.post(
            f"{self.sim_url}/sim/v1/rules",
            json={"namespace": namespace, "name": "*", "outcome": outcome},
            headers={"Authorization": f"Bearer {self.sim_token}"},
        )
        response.raise_for_status()


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


@pytest.fixture(scope="module")
def proxy_command() -> list[str]:
    """configurable-http-proxy, from ``npm ci --prefix tests/hub`` or the PATH."""
    local = HERE / "node_modules" / ".bin" / "configurable-http-proxy"
    found = str(local) if local.exists() else shutil.which("configurable-http-proxy")
    if found is None:
        pytest.skip(
            "configurable-http-proxy is not installed: run `npm ci --prefix tests/hub` "
            "(Node.js 20 or later)"
        )
    return [found]


@pytest.fixture(scope="module")
def labd_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabdDev]:
    """``labd dev`` with short timeouts; pods start in half a second."""
    state_dir = tmp_path_factory.mktemp("labd-dev")
    port = free_port()
    config = sample_config(state_dir, port)
    config["timeouts"] = {"spawn": 10, "delete": 30}
    config["lab"] = {"pod_delete_grace": 0}
    write_dev_config(state_dir, config)
    log = state_dir / "labd.log"
    with running_labd_dev(state_dir, port=port, pod_start_delay=0.5, log=log) as url:
        kubeconfig = yaml.safe_load((state_dir / "kubeconfig").read_text())
        yield LabdDev(
            url=url,
            token=(state_dir / "hub-token").read_text().strip(),
            sim_url=kubeconfig["clusters"][0]["cluster"]["server"],
            sim_token=kubeconfig["users"][0]["user"].get("token", ""),
            log=log,
        )


def hub_config(*, labd: LabdDev, proxy: list[str], hub_port: int, token: str, port: int) -> str:
    """A ``jupyterhub_config.py`` for the tests, as docs/jupyterhub.md describes."""
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
c.LabdSpawner.labd_url = {labd.url!r}
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
"""


@pytest.fixture(scope="module")
def hub(
    labd_dev: LabdDev, proxy_command: list[str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Hub]:
    """JupyterHub with LabdSpawner against ``labd dev``; the hub token comes from the env."""
    directory = tmp_path_factory.mktemp("hub")
    port, hub_port = free_port(), free_port()
    token = secrets.token_hex(32)
    config = directory / "jupyterhub_config.py"
    config.write_text(
        hub_config(labd=labd_dev, proxy=proxy_command, hub_port=hub_port, token=token, port=port)
    )
    log = directory / "jupyterhub.log"
    environ = {**os.environ, "LABD_HUB_TOKEN": labd_dev.token}
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
        assert labd_dev.token not in text, "the hub's log shows labd's token"
