"""``labd dev`` as a process, as a newcomer starts it, for the tests that need one.

The state directory is prepared by the caller (a configuration, and, if it
wants tokens of its own, the token files: ``labd dev`` keeps files that
exist), then `running_labd_dev` starts ``python -m labd dev`` on a free
port, waits until ``/readyz`` answers and stops the process at the end.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.support.simaccess import SimAccess, sim_access

__all__ = ["START_TIMEOUT", "LabdDev", "running_labd_dev", "tail", "write_dev_config"]

START_TIMEOUT = 90.0
"""Seconds a daemon may take to start on a loaded 2-core machine."""


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
    sim_ca: bytes = b""
    """The CA's certificate the simulated cluster's HTTPS is signed with."""

    @classmethod
    def of(cls, url: str, state_dir: Path, *, log: Path) -> LabdDev:
        """``labd dev`` at ``url`` on ``state_dir``: tokens, URL and CA from its files."""
        sim = sim_access(state_dir / "kubeconfig")
        return cls(
            url=url,
            token=(state_dir / "hub-token").read_text().strip(),
            sim_url=sim.url,
            sim_token=sim.token,
            log=log,
            sim_ca=sim.ca_pem,
        )

    @property
    def sim(self) -> SimAccess:
        """How to reach the simulated cluster."""
        return SimAccess(url=self.sim_url, token=self.sim_token, ca_pem=self.sim_ca)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def lab(self, username: str) -> httpx.Response:
        """labd's ``GET /spawner/v1/labs/{username}``."""
        return httpx.get(f"{self.url}/spawner/v1/labs/{username}", headers=self.headers)

    def namespace_exists(self, namespace: str) -> bool:
        """Whether the simulated cluster still has a namespace (terminating counts)."""
        with self.sim.client() as client:
            response = client.get(f"/api/v1/namespaces/{namespace}")
        if response.status_code == 404:
            return False
        response.raise_for_status()
        return True

    def add_rule(self, namespace: str, outcome: str) -> None:
        """Give the pods of a namespace an outcome, through the sim's control API."""
        with self.sim.client() as client:
            response = client.post(
                "/sim/v1/rules", json={"namespace": namespace, "name": "*", "outcome": outcome}
            )
        response.raise_for_status()


def tail(log: Path, lines: int = 60) -> str:
    """The end of a log, for an assertion's message."""
    if not log.exists():
        return f"({log} is empty)"
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def write_dev_config(state_dir: Path, config: dict[str, Any]) -> None:
    """Write ``labd dev``'s settings file into its state directory."""
    (state_dir / "labd.yaml").write_text(yaml.safe_dump(config))


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@contextlib.contextmanager
def running_labd_dev(
    state_dir: Path, *, port: int, pod_start_delay: float, log: Path | None = None
) -> Iterator[str]:
    """Run ``labd dev`` on ``state_dir`` and ``port``; yield its base URL.

    Raises
    ------
    AssertionError
        If it exits or is not ready within `START_TIMEOUT`, or does not stop
        within 30 s of SIGTERM (the log's end says why).
    """
    log = log or state_dir / "labd.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "labd", "dev", "--port", str(port)),
                *("--state-dir", str(state_dir), "--pod-start-delay", str(pod_start_delay)),
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not _ready(url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"labd dev did not get ready\n{tail(log)}")
            time.sleep(0.1)
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise AssertionError(f"labd dev did not stop within 30 s\n{tail(log)}") from None
