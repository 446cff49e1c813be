"""Kubeconfig files for the simulated cluster.

Clients find a cluster through a kubeconfig, so the sim writes one: labd,
kubernetes-asyncio and kubectl then connect to it exactly as to a real
cluster (plain HTTP on the loopback interface, bearer token).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["CONTEXT", "kubeconfig", "write_kubeconfig"]

CONTEXT = "labd-sim"
"""Name of the cluster, user and context in the kubeconfig."""


def kubeconfig(url: str, token: str | None, *, namespace: str = "default") -> dict[str, Any]:
    """Return a kubeconfig document for a server at ``url``.

    Parameters
    ----------
    url
        The API server URL, e.g. ``http://127.0.0.1:6443``.
    token
        The bearer token, or None when the server checks none.
    namespace
        The context's default namespace.
    """
    user: dict[str, Any] = {"token": token} if token else {}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "preferences": {},
        "clusters": [{"name": CONTEXT, "cluster": {"server": url}}],
        "users": [{"name": CONTEXT, "user": user}],
        "contexts": [
            {
                "name": CONTEXT,
                "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": namespace},
            }
        ],
        "current-context": CONTEXT,
    }


def write_kubeconfig(path: Path | str, url: str, token: str | None) -> Path:
    """Write a kubeconfig for the server at ``url`` to ``path`` (mode 0600).

    Returns
    -------
    pathlib.Path
        The path written.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.touch(mode=0o600, exist_ok=True)
    target.write_text(yaml.safe_dump(kubeconfig(url, token), sort_keys=False))
    return target
