"""The real-apiserver cluster, shaped like `SimCluster` for the tests both share.

Tests written for the simulated cluster take a ``sim`` fixture and use three
things of it: ``write_kubeconfig(path)`` (how labd finds the cluster),
``rules`` (the kubelet's pod outcomes) and ``objects(resource, namespace)``
(what is stored, for assertions).  `RealCluster` offers the same three on a
genuine kube-apiserver, so the same test functions run on both.

The kubelet is the sim's KWOK-style `Kubelet`, an ordinary API client with
admin credentials.  It lives for the whole session in a thread with its own
event loop, because each test runs in an event loop of its own; its node's
images (``images``, like `SimCluster.images`) are forgotten after each test.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any, Final

import yaml
from kubernetes_asyncio.client import Configuration
from kubernetes_asyncio.config import load_kube_config

from labd.sim import Kubelet, NodeImages, Rules
from tests.support.controlplane import ADMIN_TOKEN, LABD_TOKEN, ControlPlane

__all__ = ["RBAC_FILE", "RealCluster"]

RBAC_FILE: Final = Path(__file__).resolve().parents[2] / "deploy" / "rbac.yaml"

_CORE: Final = "/api/v1"
_GROUPS: Final = {
    "networkpolicies": "/apis/networking.k8s.io/v1",
    "clusterroles": "/apis/rbac.authorization.k8s.io/v1",
    "clusterrolebindings": "/apis/rbac.authorization.k8s.io/v1",
}
_CLUSTER_SCOPED: Final = frozenset({"namespaces", "nodes", "clusterroles", "clusterrolebindings"})


def resource_path(resource: str, namespace: str | None = None, name: str | None = None) -> str:
    """The REST path of a resource (``pods``), in a namespace or across all."""
    path = _GROUPS.get(resource, _CORE)
    if namespace is not None and resource not in _CLUSTER_SCOPED:
        path += f"/namespaces/{namespace}"
    path += f"/{resource}"
    if name is not None:
        path += f"/{name}"
    return path


class _KubeletThread:
    """The sim's kubelet, run in a thread with its own event loop."""

    def __init__(self, kubeconfig: Path, rules: Rules, images: NodeImages) -> None:
        self._kubeconfig = kubeconfig
        self._rules = rules
        self._images = images
        self._started = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread = threading.Thread(target=self._main, name="sim-kubelet", daemon=True)
        self._error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()
        if not self._started.wait(30):
            raise RuntimeError("the kubelet thread did not start")
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self._loop is not None and self._task is not None:
            self._loop.call_soon_threadsafe(self._task.cancel)
        self._thread.join(15)

    def _main(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(self._run())

    async def _run(self) -> None:
        try:
            configuration = Configuration()
            await load_kube_config(
                config_file=str(self._kubeconfig), client_configuration=configuration
            )
            kubelet = Kubelet(
                configuration,
                rules=self._rules,
                images=self._images,
                start_delay=0.05,
                stop_delay=0.0,
            )
            self._loop = asyncio.get_running_loop()
            self._task = asyncio.ensure_future(kubelet.run())
        except BaseException as error:
            self._error = error
            raise
        finally:
            self._started.set()
        try:
            await self._task
        finally:
            # Let the closed TLS connections finish closing before the loop ends.
            await asyncio.sleep(0.25)


class RealCluster:
    """A genuine control plane plus the sim's kubelet, for one test session."""

    def __init__(self, control_plane: ControlPlane) -> None:
        self.control_plane = control_plane
        self.rules = Rules()
        """The kubelet's pod outcome rules (cleared after each test)."""
        self.images = NodeImages()
        """The images the kubelet's node holds (forgotten after each test)."""
        self.admin_kubeconfig = control_plane.write_kubeconfig(
            control_plane.workdir / "admin.kubeconfig", ADMIN_TOKEN
        )
        self._kubelet = _KubeletThread(self.admin_kubeconfig, self.rules, self.images)

    def start(self) -> None:
        """Grant labd its rights (``deploy/rbac.yaml``) and start the kubelet."""
        for document in yaml.safe_load_all(RBAC_FILE.read_text()):
            self.apply(document)
        self._kubelet.start()

    def stop(self) -> None:
        self._kubelet.stop()

    @property
    def url(self) -> str:
        return self.control_plane.url

    def write_kubeconfig(self, path: Path) -> Path:
        """Write labd's kubeconfig: the ``labd`` user, bound to ``deploy/rbac.yaml`` only."""
        return self.control_plane.write_kubeconfig(path, LABD_TOKEN)

    def objects(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """LIST a resource as the admin (synchronously), in one namespace or all."""
        status, body = self.control_plane.request("GET", resource_path(resource, namespace))
        assert status == 200, body
        items: list[dict[str, Any]] = body.get("items") or []
        return items

    def apply(self, document: dict[str, Any]) -> None:
        """Create a cluster-scoped object as the admin, or replace it."""
        resource = {"ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings"}[
            document["kind"]
        ]
        name = document["metadata"]["name"]
        request = self.control_plane.request
        status, body = request("POST", resource_path(resource), document)
        if status == 409:
            status, current = request("GET", resource_path(resource, name=name))
            assert status == 200, current
            replacement = {**document, "metadata": {**document["metadata"]}}
            replacement["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            status, body = request("PUT", resource_path(resource, name=name), replacement)
        assert status in (200, 201), body

    def reset(self) -> None:
        """Forget the test's rules and images, delete the namespaces it made.

        The next test starts on an empty node, as each test of tests/sim
        starts on a `SimCluster` of its own: a pull it expects is a pull.
        """
        self.rules.clear()
        self.images.forget()
        self.control_plane.remove_user_namespaces()
