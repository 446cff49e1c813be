"""`labd.spawner.LabdSpawner` built as the hub builds it, without a hub.

The hub's `User` is reduced to the one attribute the spawner reads: its
name. The environment for the lab comes from the hub's server, token and
OAuth client, so here ``get_env`` (which JupyterHub documents for
subclasses to extend) gives just the service prefix. Import this module
only once JupyterHub is known to be installed (``pytest.importorskip``).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from labd.spawner import LabdSpawner

__all__ = ["HublessSpawner", "hubless_spawner"]


class HublessSpawner(LabdSpawner):
    """A spawner whose lab environment is just the service prefix."""

    def get_env(self) -> dict[str, str]:
        return {"JUPYTERHUB_SERVICE_PREFIX": f"/user/{self.user.name}/"}


def hubless_spawner(url: str, token: str, name: str, **traits: Any) -> HublessSpawner:
    """A spawner for user ``name`` against labd at ``url`` with the hub token ``token``."""
    return HublessSpawner(
        user=SimpleNamespace(name=name), **{"labd_url": url, "labd_token": token, **traits}
    )
