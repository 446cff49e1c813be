"""Kubeconfig files for the simulated cluster.

Clients find a cluster through a kubeconfig, so the sim writes one: labd,
kubernetes-asyncio, client-go and kubectl then connect to it exactly as to
a real cluster: HTTPS on the loopback interface with the sim's generated CA
in ``certificate-authority-data`` and a bearer token (or, for tests and
benchmarks that ask for it, plain HTTP).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

__all__ = ["CONTEXT", "kubeconfig", "write_kubeconfig"]

CONTEXT = "labd-sim"
"""Name of the cluster, user and context in the kubeconfig."""


def kubeconfig(
    url: str,
    token: str | None,
    *,
    namespace: str = "default",
    ca_pem: bytes | None = None,
) -> dict[str, Any]:
    """Return a kubeconfig document for a server at ``url``.

    Parameters
    ----------
    url
        The API server URL, e.g. ``https://127.0.0.1:6443``.
    token
        The bearer token, or None when the server checks none.
    namespace
        The context's default namespace.
    ca_pem
        The certificate (PEM) of the CA that signed the server's
        certificate, for an ``https://`` URL.
    """
    user: dict[str, Any] = {"token": token} if token else {}
    cluster: dict[str, Any] = {"server": url}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode("ascii")
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": CONTEXT, "cluster": cluster}],
        "users": [{"name": CONTEXT, "user": user}],
        "contexts": [
            {
                "name": CONTEXT,
                "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": namespace},
            }
        ],
        "current-context": CONTEXT,
    }


def write_kubeconfig(
    path: Path | str, url: str, token: str | None, *, ca_pem: bytes | None = None
) -> Path:
    """Write a kubeconfig for the server at ``url`` to ``path`` (mode 0600).

    It holds the bearer token, so it is created private; an existing file
    is made private before the token is written into it.

    Returns
    -------
    pathlib.Path
        The path written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.touch(mode=0o600, exist_ok=True)
    target.chmod(0o600)
    target.write_text(yaml.safe_dump(kubeconfig(url, token, ca_pem=ca_pem), sort_keys=False))
    return target
