"""`SimCluster`: the simulated cluster as one async context manager.

It composes the pieces the way a real control plane is composed: the API
server (the registry behind Starlette, served by uvicorn on 127.0.0.1, over
HTTPS with a CA generated at start, or plain HTTP), the namespace controller
(in process, like kube-controller-manager's), and the kubelet stand-in,
which reaches the API server over the network like any client. Tests,
benchmarks, ``labd sim`` and ``labd dev`` all start it through this class,
so they all exercise the same thing.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import secrets
import shutil
import ssl
import tempfile
from collections.abc import Generator
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
from kubernetes_asyncio.client import Configuration
from starlette.requests import Request
from starlette.types import ASGIApp

from labd.sim.apiserver import ApiServer
from labd.sim.control import control_routes
from labd.sim.faults import Faults, Stats
from labd.sim.images import NodeImages
from labd.sim.kinds import resource_named
from labd.sim.kubeconfig import write_kubeconfig
from labd.sim.kubelet import Kubelet
from labd.sim.namespaces import NamespaceController
from labd.sim.outcomes import Rules
from labd.sim.registry import Obj, Registry
from labd.sim.singleuser import SingleUserServers
from labd.sim.tls import ServingCertificate, generate
from labd.tasks import cancel_and_wait, spawn

__all__ = ["SimCluster"]

#: Namespaces every cluster starts with.
_INITIAL_NAMESPACES = ("default", "kube-system")


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to its host process."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class SimCluster:
    """A simulated Kubernetes cluster served on 127.0.0.1, over HTTPS or HTTP.

    Parameters
    ----------
    port
        TCP port; 0 picks a free one (see `url`).
    token
        Bearer token clients must send; None makes one up. Pass ``""`` to
        accept unauthenticated requests.
    pod_start_delay
        Seconds a pod takes from binding to Running.
    pod_stop_delay
        Seconds a pod's containers take to stop after its deletion (capped
        by its grace period).
    namespace_sa_delay
        Seconds before a new namespace gets its ``default`` ServiceAccount
        (pods are refused until then).
    kubelet
        Run the kubelet stand-in; False serves the API alone, so tests can
        drive pod status themselves.
    default_outcome
        Outcome of pods without annotation or matching rule.
    watch_window
        Changes kept for watches to resume from; older versions get 410.
    bookmark_interval
        Seconds between BOOKMARK events on watches that asked for them.
    watch_timeout
        Seconds a watch without ``timeoutSeconds`` stays open.
    seed
        Seed for fault rates, for repeatable runs.
    service_account_admission
        Refuse pods whose service account does not exist, as Kubernetes does.
    serve_labs
        Also answer HTTP for the single-user servers of Running pods, on one
        more port of 127.0.0.1 (see `labs_url` and `SingleUserServers`).
    tls
        Serve the API over HTTPS with a certificate signed by a CA made at
        start (`ca_pem`), as kubectl and client-go need to send a token;
        False serves plain HTTP (tests and benchmarks that talk raw HTTP).
        The single-user servers of ``serve_labs`` answer plain HTTP either
        way, as a lab's pod does inside a cluster.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        token: str | None = None,
        pod_start_delay: float = 1.0,
        pod_stop_delay: float = 0.0,
        namespace_sa_delay: float = 0.0,
        kubelet: bool = True,
        default_outcome: str = "run",
        watch_window: int = 10_000,
        bookmark_interval: float = 60.0,
        watch_timeout: float = 1800.0,
        seed: int | None = None,
        service_account_admission: bool = True,
        serve_labs: bool = False,
        tls: bool = False,
    ) -> None:
        self.registry = Registry(
            window=watch_window, service_account_admission=service_account_admission
        )
        """The object store (for assertions; prefer `objects`)."""
        self.faults = Faults(seed=seed)
        """Faults injected into client requests."""
        self.stats = Stats()
        """Request counts by verb and resource."""
        self.rules = Rules(default=default_outcome)
        """The kubelet's outcome rules."""
        self.images = NodeImages()
        """The images the kubelet's node holds (each image it pulled)."""
        self.token: str | None = secrets.token_urlsafe(24) if token is None else token or None
        """The bearer token, or None when none is checked."""
        self.api = ApiServer(
            self.registry,
            faults=self.faults,
            stats=self.stats,
            token=self.token,
            bookmark_interval=bookmark_interval,
            watch_timeout=watch_timeout,
            extra_routes=[
                control_routes(
                    faults=self.faults,
                    rules=self.rules,
                    stats=self.stats,
                    registry=self.registry,
                    authorize=self._authorize,
                )
            ],
        )
        self._port = port
        self._run_kubelet = kubelet
        self._pod_start_delay = pod_start_delay
        self._pod_stop_delay = pod_stop_delay
        self._namespace_sa_delay = namespace_sa_delay
        self._server: _EmbeddedServer | None = None
        self._server_task: asyncio.Task[Any] | None = None
        self._labs: SingleUserServers | None = (
            SingleUserServers(self.registry) if serve_labs else None
        )
        self._labs_server: _EmbeddedServer | None = None
        self._labs_server_task: asyncio.Task[Any] | None = None
        self._labs_url = ""
        self._tasks: list[asyncio.Task[Any]] = []
        self._url = ""
        self._tls = tls
        self._certificate: ServingCertificate | None = None
        self._ca_dir: Path | None = None

    def _authorize(self, request: Request) -> None:
        self.api.authorize(request)

    @property
    def url(self) -> str:
        """The API server URL, e.g. ``https://127.0.0.1:41234`` (once started)."""
        if not self._url:
            raise RuntimeError("the simulated cluster is not started")
        return self._url

    @property
    def labs_served(self) -> bool:
        """Whether running pods answer HTTP as single-user servers (``serve_labs=True``)."""
        return self._labs is not None

    @property
    def labs_url(self) -> str:
        """Where Running pods answer as single-user servers, e.g. ``http://127.0.0.1:41235``.

        A lab's URL is this plus its ``JUPYTERHUB_SERVICE_PREFIX``. Only with
        ``serve_labs=True``, once started.
        """
        if not self._labs_url:
            raise RuntimeError("the simulated cluster serves no labs (serve_labs=False)")
        return self._labs_url

    @property
    def ca_pem(self) -> bytes | None:
        """The certificate (PEM) of the CA clients must trust; None over plain HTTP.

        A new CA is made at each start; its private key is not kept.
        """
        return self._certificate.ca_pem if self._certificate is not None else None

    def ssl_context(self) -> ssl.SSLContext | None:
        """Return a client-side context trusting the cluster's CA; None over plain HTTP.

        For HTTP clients other than kubernetes-asyncio, e.g.
        ``httpx.AsyncClient(verify=cluster.ssl_context())``.
        """
        return self._certificate.client_context() if self._certificate is not None else None

    def configuration(self) -> Configuration:
        """Return a kubernetes-asyncio `Configuration` for this cluster.

        Over HTTPS it verifies the server against the cluster's CA (read from
        a file the cluster keeps while it runs: kubernetes-asyncio takes CA
        paths only).
        """
        configuration = Configuration(host=self.url)
        if self.token:
            configuration.api_key = {"BearerToken": f"Bearer {self.token}"}
        if self._ca_dir is not None:
            configuration.ssl_ca_cert = str(self._ca_dir / "ca.crt")
        return configuration

    def write_kubeconfig(self, path: Path | str) -> Path:
        """Write a kubeconfig for this cluster to ``path`` (mode 0600) and return the path.

        Over HTTPS it carries the CA's certificate (``certificate-authority-data``).
        """
        return write_kubeconfig(path, self.url, self.token, ca_pem=self.ca_pem)

    def objects(self, resource: str, namespace: str | None = None) -> list[Obj]:
        """Return copies of the stored objects of a resource, for assertions.

        Parameters
        ----------
        resource
            Plural resource name, e.g. ``"pods"``.
        namespace
            Only this namespace; None for all.
        """
        return [
            copy.deepcopy(obj)
            for obj in self.registry.objects(resource_named(resource))
            if namespace is None or obj["metadata"].get("namespace") == namespace
        ]

    async def start(self) -> None:
        """Start the API server, the namespace controller and (optionally) the kubelet."""
        server_context = None
        if self._tls:
            self._certificate = generate()
            server_context = self._certificate.server_context()
            self._ca_dir = Path(tempfile.mkdtemp(prefix="labd-sim-ca-"))
            (self._ca_dir / "ca.crt").write_bytes(self._certificate.ca_pem)
        self._server, self._server_task, self._url = await self._serve(
            self.api.app, self._port, name="sim-apiserver", tls=server_context
        )
        if self._labs is not None:
            self._labs_server, self._labs_server_task, self._labs_url = await self._serve(
                self._labs.app, 0, name="sim-single-user-servers"
            )
        controller = NamespaceController(
            self.registry, service_account_delay=self._namespace_sa_delay
        )
        self._tasks.append(spawn(controller.run(), name="sim-namespace-controller"))
        namespaces = resource_named("namespaces")
        for name in _INITIAL_NAMESPACES:
            if self.registry.find(namespaces, "", name) is None:
                self.registry.create(namespaces, "", {"metadata": {"name": name}})
        if self._run_kubelet:
            kubelet = Kubelet(
                self.configuration(),
                rules=self.rules,
                images=self.images,
                start_delay=self._pod_start_delay,
                stop_delay=self._pod_stop_delay,
            )
            self._tasks.append(spawn(kubelet.run(), name="sim-kubelet"))

    async def _serve(
        self, app: ASGIApp, port: int, *, name: str, tls: ssl.SSLContext | None = None
    ) -> tuple[_EmbeddedServer, asyncio.Task[Any], str]:
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
        if tls is not None:
            # uvicorn reads keys from files only; the context holds the key
            # in memory instead (see `labd.sim.tls`).
            config.load()
            config.ssl = tls
        server = _EmbeddedServer(config)
        task = spawn(server.serve(), name=name)
        while not server.started:
            if task.done():
                await task
                raise RuntimeError(f"{name} stopped while starting")
            await asyncio.sleep(0.01)
        bound = server.servers[0].sockets[0].getsockname()[1]
        scheme = "https" if tls is not None else "http"
        return server, task, f"{scheme}://127.0.0.1:{bound}"

    async def stop(self) -> None:
        """Stop everything; open watch streams end."""
        await cancel_and_wait(self._tasks)
        self._tasks = []
        self.api.close_watches()
        for server, task in (
            (self._server, self._server_task),
            (self._labs_server, self._labs_server_task),
        ):
            if server is not None and task is not None:
                server.should_exit = True
                await asyncio.gather(task, return_exceptions=True)
        self._server = self._server_task = None
        self._labs_server = self._labs_server_task = None
        if self._ca_dir is not None:
            shutil.rmtree(self._ca_dir, ignore_errors=True)
            self._ca_dir = None

    async def __aenter__(self) -> SimCluster:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
