"""Stand-ins for the single-user servers of running lab pods, on one local port.

A real lab pod runs a Jupyter server that JupyterHub reaches over the pod
network; a simulated pod runs nothing. So that a real JupyterHub can be
driven against the sim end to end, `SingleUserServers` answers HTTP on one
port of 127.0.0.1 on behalf of every Running pod, the way a single-user
server answers enough for the hub to consider it up (JupyterHub 5's
``Server.wait_up`` takes any non-5xx answer at ``{server url}api``).

One port for all labs rather than one per pod: labd builds a lab's URL
from a template (``lab.internal_url_template``), and
``http://127.0.0.1:<port>{service_prefix}`` then works for every lab without
labd knowing anything about the sim. A request is routed by its path: the
pod whose ``JUPYTERHUB_SERVICE_PREFIX`` (from its containers' ``env`` or
the ConfigMaps of their ``envFrom``) is the longest prefix of the path
answers, and only while it is Running and not being deleted. Otherwise the
answer is 503, which JupyterHub treats as "not up yet" (the 599 of a
refused connection is what a real pod gives; a shared port cannot refuse
per path).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from labd.sim.kinds import resource_named
from labd.sim.registry import Obj, Registry

__all__ = ["SERVICE_PREFIX_VAR", "SingleUserServers"]

SERVICE_PREFIX_VAR: Final = "JUPYTERHUB_SERVICE_PREFIX"
"""The environment variable that gives a single-user server its URL path."""

_METHODS: Final = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


class SingleUserServers:
    """Answer HTTP for the single-user servers of the registry's running pods.

    Parameters
    ----------
    registry
        The cluster's object store, read on every request.
    """

    def __init__(self, registry: Registry) -> None:
        self._registry = registry
        self.app = Starlette(
            routes=[Route("/{path:path}", self._answer, methods=_METHODS)],
        )
        """The ASGI application to serve."""

    def running_prefixes(self) -> dict[str, Obj]:
        """Return the service prefixes of the pods that are Running, with their pods."""
        found: dict[str, Obj] = {}
        for pod in self._registry.objects(resource_named("pods")):
            if pod.get("status", {}).get("phase") != "Running":
                continue
            if pod["metadata"].get("deletionTimestamp"):
                continue
            prefix = self._environment(pod).get(SERVICE_PREFIX_VAR)
            if prefix:
                found[prefix] = pod
        return found

    def _environment(self, pod: Obj) -> dict[str, str]:
        namespace = pod["metadata"].get("namespace", "")
        config_maps = resource_named("configmaps")
        env: dict[str, str] = {}
        for container in pod.get("spec", {}).get("containers", []):
            for source in container.get("envFrom") or []:
                name = (source.get("configMapRef") or {}).get("name")
                config_map = self._registry.find(config_maps, namespace, name) if name else None
                if config_map is not None:
                    env.update(config_map.get("data") or {})
            env.update(_values(container.get("env") or []))
        return env

    async def _answer(self, request: Request) -> Response:
        path = request.url.path
        matches = [prefix for prefix in self.running_prefixes() if path.startswith(prefix)]
        if not matches:
            return JSONResponse(
                {"message": f"no running lab serves {path}"},
                status_code=503,
            )
        prefix = max(matches, key=len)
        body: dict[str, Any] = {"message": "simulated single-user server", "prefix": prefix}
        return JSONResponse(body)


def _values(env: list[dict[str, Any]]) -> Iterator[tuple[str, str]]:
    for variable in env:
        if "value" in variable and isinstance(variable.get("name"), str):
            yield variable["name"], str(variable["value"])
