"""Reaching a simulated cluster in another process, from the kubeconfig it wrote.

``labd dev`` and ``labd sim`` serve HTTPS with a CA they make at start, and
write it into the kubeconfig with the URL and the bearer token; a test that
talks to their API or their control API (``/sim/v1``) with httpx takes all
three from there, and trusts that CA alone.
"""

from __future__ import annotations

import base64
import ssl
from dataclasses import dataclass
from pathlib import Path

import httpx
import yaml

__all__ = ["SimAccess", "sim_access"]


@dataclass(frozen=True)
class SimAccess:
    """Where a simulated cluster is, and how to be let in."""

    url: str
    """The API server's URL (``https://`` or ``http://``)."""
    token: str
    """Its bearer token (empty when it checks none)."""
    ca_pem: bytes
    """Its CA's certificate (empty over plain HTTP)."""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def verify(self) -> ssl.SSLContext | bool:
        """What httpx should verify the server with: the cluster's CA only."""
        if not self.ca_pem:
            return True
        return ssl.create_default_context(cadata=self.ca_pem.decode("ascii"))

    def client(self) -> httpx.Client:
        """A client for the API server, with the token and the CA."""
        return httpx.Client(base_url=self.url, headers=self.headers, verify=self.verify())

    def async_client(self) -> httpx.AsyncClient:
        """The same, async."""
        return httpx.AsyncClient(base_url=self.url, headers=self.headers, verify=self.verify())


def sim_access(kubeconfig: Path) -> SimAccess:
    """Read a simulated cluster's URL, token and CA from its kubeconfig."""
    document = yaml.safe_load(kubeconfig.read_text())
    cluster = document["clusters"][0]["cluster"]
    ca = cluster.get("certificate-authority-data")
    return SimAccess(
        url=cluster["server"],
        token=document["users"][0]["user"].get("token", ""),
        ca_pem=base64.b64decode(ca) if ca else b"",
    )
