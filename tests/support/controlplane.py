"""A genuine Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver, kube-controller-manager.

The binaries are v1.20.2, built once per machine from Debian bookworm's
source package by ``scripts/kube-apiserver/build`` into ``$LABD_KUBE_CACHE``
(default ``/var/cache/labd-kube/v1.20.2``); etcd is Debian's ``etcd-server``.
v1.20 is old and has known vulnerabilities: everything here binds to the
loopback interface and lives only as long as a test session.

What is switched on, and why:

- RBAC (``--authorization-mode=RBAC``) with a static token file: an
  ``admin`` token in ``system:masters`` for the fixtures, and a ``labd``
  token bound to nothing but ``deploy/rbac.yaml``, so labd runs with exactly
  the rights operators grant it;
- the default admission plugins, ServiceAccount among them, so pods are
  refused until their namespace's ``default`` ServiceAccount exists, as on
  every real cluster;
- the controllers that a bare API server lacks and labd relies on:
  ``namespace`` (a deleted namespace is emptied and removed),
  ``garbagecollector``, ``serviceaccount`` (the ``default`` account),
  ``serviceaccount-token`` and ``root-ca-cert-publisher``.  There is no
  scheduler and no kubelet: the sim's KWOK-style kubelet binds and runs pods.

With ``node=<name>`` (the real-node tier, ``tests/realnode``) the API server
also serves a real kubelet and kube-scheduler: the Node authorizer before
RBAC and the ``NodeRestriction`` admission plugin (a kubelet may touch only
its own Node and its pods), tokens made at start for ``system:node:<name>``
(group ``system:nodes``) and ``system:kube-scheduler``, and the kubelet
reached at its node's InternalIP.

Each process runs in its own process group; `ControlPlane.stop` signals
exactly those groups, by PID.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Final

import yaml

from tests.support.processes import free_port

__all__ = [
    "ADMIN_TOKEN",
    "LABD_TOKEN",
    "ControlPlane",
    "binaries",
    "missing_binaries",
]

VERSION: Final = "v1.20.2"
ADMIN_TOKEN: Final = "labd-test-admin-token"
LABD_TOKEN: Final = "labd-test-labd-token"
_SYSTEM_NAMESPACES: Final = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})


def _cache() -> Path:
    default = Path("/var/cache/labd-kube") / VERSION
    return Path(os.environ.get("LABD_KUBE_CACHE", str(default)))


def binaries() -> dict[str, Path | None]:
    """Where each binary is, or None when it is missing."""
    bin_dir = _cache() / "bin"
    found: dict[str, Path | None] = {}
    for name in ("kube-apiserver", "kube-controller-manager"):
        path = bin_dir / name
        found[name] = path if os.access(path, os.X_OK) else None
    etcd = shutil.which("etcd")
    found["etcd"] = Path(etcd) if etcd else None
    return found


def missing_binaries() -> str | None:
    """Why the control plane cannot start, or None when it can."""
    missing = [name for name, path in binaries().items() if path is None]
    if not missing:
        return None
    return (
        f"real apiserver tier: {', '.join(missing)} not found (kube binaries in "
        f"{_cache() / 'bin'}, etcd on PATH); run scripts/kube-apiserver/build"
    )


@dataclass
class _Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])


class ControlPlane:
    """etcd, kube-apiserver and kube-controller-manager, started and stopped together.

    Parameters
    ----------
    workdir
        Where certificates, tokens, kubeconfigs and logs go.
    node
        The name of a real kubelet's Node to authorize, or None (the sim's
        kubelet, which uses the admin token).
    """

    def __init__(self, workdir: Path, *, node: str | None = None) -> None:
        self.workdir = workdir
        self.node = node
        self.node_token = secrets.token_hex(16)
        """The kubelet's token (``system:node:<node>``), made anew for each control plane."""
        self.scheduler_token = secrets.token_hex(16)
        """kube-scheduler's token (``system:kube-scheduler``)."""
        self.port = 0
        """The API server's secure port (set by `start`)."""
        self.seconds_to_start = 0.0
        """How long `start` took."""
        self._processes: list[_Process] = []
        self._data_dirs: list[Path] = []
        self._ssl: ssl.SSLContext | None = None
        self._resources: list[tuple[str, str, bool]] | None = None

    @property
    def url(self) -> str:
        """The API server's URL."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        """The serving certificate, which is its own CA."""
        return self.workdir / "serving.crt"

    @property
    def pids(self) -> dict[str, int]:
        """The PID of each process started, by name; each leads its own process group."""
        return {process.name: process.popen.pid for process in self._processes}

    @property
    def data_dirs(self) -> list[Path]:
        """Directories `stop` removes (etcd's data)."""
        return list(self._data_dirs)

    # Start and stop ----------------------------------------------------------

    def start(self) -> None:
        """Start all three, wait until the API server is ready; stop all on failure."""
        began = time.monotonic()
        paths = binaries()
        etcd, apiserver, kcm = (
            paths["etcd"],
            paths["kube-apiserver"],
            paths["kube-controller-manager"],
        )
        if etcd is None or apiserver is None or kcm is None:
            raise RuntimeError(missing_binaries())
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._write_credentials()
            etcd_url = self._start_etcd(etcd)
            self._start_apiserver(apiserver, etcd_url)
            self.write_kubeconfig(self.workdir / "admin.kubeconfig", ADMIN_TOKEN)
            self._start_controller_manager(kcm)
        except BaseException:
            self.stop()
            raise
        self.seconds_to_start = time.monotonic() - began

    def stop(self) -> None:
        """Stop what `start` started, newest first (SIGTERM, then SIGKILL); drop etcd data."""
        for process in reversed(self._processes):
            _stop_group(process.popen)
        self._processes.clear()
        for path in self._data_dirs:
            shutil.rmtree(path, ignore_errors=True)
        self._data_dirs.clear()

    def _spawn(self, name: str, argv: list[str]) -> _Process:
        log = self.workdir / f"{name}.log"
        stream: IO[bytes]
        with log.open("wb") as stream:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stream,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = _Process(name, popen, log)
        self._processes.append(process)
        return process

    def _write_credentials(self) -> None:
        work = self.workdir
        subprocess.run(
            [
                "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-subj", "/CN=127.0.0.1",
                "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout", str(work / "serving.key"), "-out", str(self.ca_file),
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        subprocess.run(
            ["openssl", "genrsa", "-out", str(work / "sa.key"), "2048"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                "openssl",
                "rsa",
                "-in",
                str(work / "sa.key"),
                "-pubout",
                "-out",
                str(work / "sa.pub"),
            ],
            check=True,
            capture_output=True,
        )
        tokens = f'{ADMIN_TOKEN},admin,admin,"system:masters"\n{LABD_TOKEN},labd,labd\n'
        if self.node is not None:
            user = f"system:node:{self.node}"
            tokens += (
                f'{self.node_token},{user},{user},"system:nodes"\n'
                f"{self.scheduler_token},system:kube-scheduler,system:kube-scheduler\n"
            )
        tokens_file = work / "tokens.csv"
        tokens_file.touch(mode=0o600, exist_ok=True)
        tokens_file.write_text(tokens)

    def _start_etcd(self, etcd: Path) -> str:
        client, peer = free_port(), free_port()
        # etcd fsyncs every write; on tmpfs that costs nothing.
        shm = Path("/dev/shm")
        data = shm if shm.is_dir() and os.access(shm, os.W_OK) else self.workdir
        data_dir = data / f"labd-etcd-{os.getpid()}-{client}"
        client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
        process = self._spawn(
            "etcd",
            [
                str(etcd),
                "--name=labd-test",
                f"--data-dir={data_dir}",
                f"--listen-client-urls={client_url}",
                f"--advertise-client-urls={client_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=labd-test={peer_url}",
                "--log-level=warn",
            ],
        )
        self._data_dirs.append(data_dir)
        self._wait(process, lambda: _http_ok(f"{client_url}/health"), what="etcd health")
        return client_url

    def _start_apiserver(self, apiserver: Path, etcd_url: str) -> None:
        work = self.workdir
        self.port = free_port()
        authorization, admission, node_flags = "RBAC", "", []
        if self.node is not None:
            authorization, admission = "Node,RBAC", ",NodeRestriction"
            node_flags = ["--kubelet-preferred-address-types=InternalIP"]
        process = self._spawn(
            "kube-apiserver",
            [
                str(apiserver),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--cert-dir={work / 'certs'}",
                f"--tls-cert-file={self.ca_file}",
                f"--tls-private-key-file={work / 'serving.key'}",
                f"--token-auth-file={work / 'tokens.csv'}",
                f"--authorization-mode={authorization}",
                "--anonymous-auth=false",
                "--enable-admission-plugins=NamespaceLifecycle,LimitRanger,ServiceAccount,"
                f"DefaultTolerationSeconds,ResourceQuota,Priority{admission}",
                "--disable-admission-plugins=PodSecurityPolicy,StorageObjectInUseProtection,"
                "PersistentVolumeClaimResize,DefaultStorageClass,MutatingAdmissionWebhook,"
                "ValidatingAdmissionWebhook",
                f"--service-account-key-file={work / 'sa.pub'}",
                f"--service-account-signing-key-file={work / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--api-audiences=https://kubernetes.default.svc.cluster.local",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--allow-privileged=false",
                "--profiling=false",
                "--enable-priority-and-fairness=false",
                "--endpoint-reconciler-type=none",
                *node_flags,
                "--logtostderr=true",
                "--v=0",
            ],
        )
        self._wait(process, lambda: self._ready("/readyz"), what="kube-apiserver /readyz")

    def _start_controller_manager(self, kcm: Path) -> None:
        work = self.workdir
        kubeconfig = work / "admin.kubeconfig"
        controllers = (
            "namespace,garbagecollector,serviceaccount,serviceaccount-token,root-ca-cert-publisher"
        )
        if self.node is not None:
            # A real kubelet registers its Node tainted not-ready; the node
            # lifecycle controller lifts the taint once the Node is Ready.
            controllers += ",nodelifecycle"
        process = self._spawn(
            "kube-controller-manager",
            [
                str(kcm),
                f"--kubeconfig={kubeconfig}",
                f"--controllers={controllers}",
                f"--service-account-private-key-file={work / 'sa.key'}",
                f"--root-ca-file={self.ca_file}",
                "--use-service-account-credentials=false",
                "--leader-elect=false",
                "--port=0",
                "--secure-port=0",
                "--concurrent-namespace-syncs=5",
                "--logtostderr=true",
                "--v=0",
            ],
        )
        self._wait_for_default_account(process)

    def _wait_for_default_account(self, process: _Process) -> None:
        """Wait until the controller manager works: ``default`` has its ServiceAccount."""

        def account() -> bool:
            status, _ = self.request("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            return status == 200

        self._wait(process, account, what="the default ServiceAccount", within=60)

    def _wait(
        self, process: _Process, ready: Callable[[], bool], *, what: str, within: float = 60.0
    ) -> None:
        deadline = time.monotonic() + within
        while not ready():
            if process.popen.poll() is not None:
                raise RuntimeError(
                    f"{process.name} exited with {process.popen.returncode} before {what}:\n"
                    f"{process.tail()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {what} within {within:g} s:\n{process.tail()}")
            time.sleep(0.1)

    def _ready(self, path: str) -> bool:
        try:
            status, _ = self.request("GET", path)
        except OSError:
            return False
        return status == 200

    # Clients ---------------------------------------------------------------

    def write_kubeconfig(self, path: Path, token: str) -> Path:
        """Write a kubeconfig for this API server with ``token`` (mode 0600)."""
        ca = base64.b64encode(self.ca_file.read_bytes()).decode()
        document = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "labd-real",
                    "cluster": {"server": self.url, "certificate-authority-data": ca},
                }
            ],
            "users": [{"name": "labd-real", "user": {"token": token}}],
            "contexts": [
                {"name": "labd-real", "context": {"cluster": "labd-real", "user": "labd-real"}}
            ],
            "current-context": "labd-real",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)
        path.write_text(yaml.safe_dump(document, sort_keys=False))
        return path

    def request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        token: str = ADMIN_TOKEN,
        content_type: str = "application/json",
    ) -> tuple[int, dict[str, Any]]:
        """Make one synchronous request (admin by default); return status and JSON body."""
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca_file))
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {token}", "Content-Type": content_type},
        )
        try:
            with urllib.request.urlopen(request, context=self._ssl, timeout=10) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as error:
            status, raw = error.code, error.read()
        try:
            parsed = json.loads(raw) if raw else {}
        except ValueError:
            parsed = {"text": raw.decode(errors="replace")}
        return status, parsed if isinstance(parsed, dict) else {"value": parsed}

    def user_namespaces(self) -> list[str]:
        """Names of the namespaces tests made (all but the system ones)."""
        status, body = self.request("GET", "/api/v1/namespaces")
        assert status == 200, body
        return [
            item["metadata"]["name"]
            for item in body.get("items") or []
            if item["metadata"]["name"] not in _SYSTEM_NAMESPACES
        ]

    def remove_user_namespaces(self, *, within: float = 30.0) -> None:
        """Empty and remove every namespace tests made, without the 5 s wait.

        The namespace controller starts on a deleted namespace only 5 s
        after the deletion (``namespaceDeletionGracePeriod``, for HA API
        servers), which would add 5 s to every test.  Between tests, this
        does its work at once instead: mark the namespace terminating (no
        new objects), delete every namespaced object in it (grace 0,
        finalizers dropped), then remove the ``kubernetes`` finalizer
        through ``/finalize``, as the controller would.  The tests
        themselves still see the controller do it.
        """
        names = self.user_namespaces()
        for name in names:
            status, body = self.request("DELETE", f"/api/v1/namespaces/{name}")
            assert status in (200, 202, 404, 409), body
        for name in names:
            self._empty_namespace(name)
            status, namespace = self.request("GET", f"/api/v1/namespaces/{name}")
            if status == 404:
                continue
            namespace["spec"] = {"finalizers": []}
            status, body = self.request("PUT", f"/api/v1/namespaces/{name}/finalize", namespace)
            assert status in (200, 404, 409), body
        deadline = time.monotonic() + within
        while names:
            if time.monotonic() > deadline:
                raise AssertionError(f"namespaces still there after {within:g} s: {names}")
            time.sleep(0.05)
            names = self.user_namespaces()

    def _empty_namespace(self, name: str) -> None:
        for base, resource, collection in self._namespaced_resources():
            path = f"{base}/namespaces/{name}/{resource}"
            if collection:
                status, body = self.request("DELETE", path, {"gracePeriodSeconds": 0})
                assert status in (200, 404), body
            status, listing = self.request("GET", path)
            for item in listing.get("items") or []:
                # Services, for one, have no deletecollection: one by one.
                item_path = f"{path}/{item['metadata']['name']}"
                if item["metadata"].get("finalizers"):
                    status, body = self.request(
                        "PATCH",
                        item_path,
                        {"metadata": {"finalizers": None}},
                        content_type="application/merge-patch+json",
                    )
                    assert status in (200, 404), body
                status, body = self.request("DELETE", item_path, {"gracePeriodSeconds": 0})
                assert status in (200, 202, 404), body

    def _namespaced_resources(self) -> list[tuple[str, str, bool]]:
        """Every namespaced resource one can list and delete: (base path, name, collection)."""
        if self._resources is None:
            bases = ["/api/v1"]
            _, groups = self.request("GET", "/apis")
            for group in groups.get("groups") or []:
                bases.append(f"/apis/{group['preferredVersion']['groupVersion']}")
            self._resources = []
            for base in bases:
                _, listing = self.request("GET", base)
                for resource in listing.get("resources") or []:
                    verbs = resource.get("verbs", [])
                    if (
                        resource.get("namespaced")
                        and "/" not in resource["name"]
                        and "list" in verbs
                        and "delete" in verbs
                    ):
                        collection = "deletecollection" in verbs
                        self._resources.append((base, resource["name"], collection))
        return self._resources


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _stop_group(popen: subprocess.Popen[bytes]) -> None:
    """Stop one process and its group (it leads its own session), by PID."""
    if popen.poll() is not None:
        return
    try:
        os.killpg(popen.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        popen.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(popen.pid, signal.SIGKILL)
        popen.wait()
