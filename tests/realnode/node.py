"""A real one-node Kubernetes cluster on this machine, and the host restored after it.

`Node` starts, in order: the bridge ``cni0`` (10.88.0.1/16), containerd with
config, socket, root and state of its own under the work directory, the
control plane of ``tests/realk8s`` (with the Node authorizer, NodeRestriction
and tokens for the kubelet and the scheduler), kube-scheduler and a kubelet
v1.20.2, and waits until the Node is Ready.  The facts behind every setting
are in docs/real-node.md.

Network rule: pod traffic never leaves this machine.  The CNI bridge has no
gateway (``isGateway: false``) and no masquerading, so pods get no default
route and ``net.ipv4.ip_forward`` stays as it is (0); the kubelet writes no
iptables chains; the pods' resolver points at their own loopback.  Tests send
traffic only to 127.0.0.1, 10.88.0.1 and the pod IPs of this run.

Everything the node changes on the host is recorded in the work directory
before it is changed (``host.json``: sysctls, which host paths and cgroups
existed, the PIDs of every process), so that `teardown` can restore the host
from the files alone: after a test session, or from ``scripts/realnode/down``
after a crash.  One node per machine: ``/run/labd-realnode.json`` names the
running one.

Run as a script (``python -m tests.realnode.node up|down [WORKDIR]``, what
``scripts/realnode/up`` and ``down`` do), a node outlives the command that
started it: each process leads its own session and is stopped by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import yaml

from tests.support.controlplane import VERSION, ControlPlane, binaries
from tests.support.processes import free_port

__all__ = [
    "BRIDGE",
    "BRIDGE_IP",
    "MARKER",
    "POD_SUBNET",
    "Node",
    "missing_requirements",
    "teardown",
]

BRIDGE: Final = "cni0"
BRIDGE_IP: Final = "10.88.0.1"
"""The host's side of the bridge; also the Node's InternalIP."""
POD_SUBNET: Final = "10.88.0.0/16"
PAUSE_IMAGE: Final = f"labd.local/pause:{VERSION}"
MARKER: Final = Path("/run/labd-realnode.json")
"""Names the work directory of the node running on this machine."""
DEFAULT_WORKDIR: Final = Path("/var/tmp/labd-realnode")

_SYSCTLS: Final = (
    "net.ipv4.ip_forward",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
)
"""What the kubelet sets at start (``protectKernelDefaults: false``), saved and restored;
``ip_forward`` must never change (the network rule): a change is reported."""
_HOST_PATHS: Final = (
    "/var/log/pods",
    "/var/log/containers",
    "/var/lib/kubelet",
    "/run/containerd",
)
"""Paths the kubelet and containerd write whatever their configuration says."""
_CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
_PACKAGES: Final = {
    "containerd": "/usr/bin/containerd",
    "ctr": "/usr/bin/ctr",
    "runc": "/usr/sbin/runc",
    "the CNI plugins": "/usr/lib/cni/bridge",
    "skopeo": "/usr/bin/skopeo",
    "umoci": "/usr/bin/umoci",
    "docker-registry": "/usr/bin/docker-registry",
    "ip": "/usr/sbin/ip",
}


def _cache() -> Path:
    default = Path("/var/cache/labd-kube") / VERSION
    return Path(os.environ.get("LABD_KUBE_CACHE", str(default)))


def _bin(name: str) -> Path:
    return _cache() / "bin" / name


def _pause_layout() -> Path:
    return _cache() / "images" / "pause"


def missing_requirements() -> str | None:
    """Why a real node cannot run on this machine, or None when it can."""
    if os.geteuid() != 0:
        return "real-node tier: needs root (containerd, the kubelet, a bridge)"
    if not (_CGROUP_ROOT / "memory").is_dir() or not (_CGROUP_ROOT / "cpu").is_dir():
        return "real-node tier: needs cgroup v1 with the memory and cpu controllers mounted"
    if "overlay" not in Path("/proc/filesystems").read_text():
        return "real-node tier: needs overlayfs (containerd's snapshotter)"
    missing = [name for name, path in binaries().items() if path is None]
    missing += [
        name for name in ("kube-scheduler", "kubelet") if not os.access(_bin(name), os.X_OK)
    ]
    if not (_pause_layout() / "index.json").is_file():
        missing.append("the pause image")
    missing += [name for name, path in _PACKAGES.items() if not os.access(path, os.X_OK)]
    if missing:
        return (
            f"real-node tier: {', '.join(missing)} missing; run scripts/realnode/build "
            "(builds from the cached Kubernetes source, installs Debian packages)"
        )
    if MARKER.exists():
        return (
            f"real-node tier: a node is already up on this machine ({MARKER}: "
            f"{MARKER.read_text().strip()}); stop it with scripts/realnode/down"
        )
    return None


def _run(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in argv],
        check=check,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )


def _exe(pid: int) -> str | None:
    """The binary a process runs, or None once it is gone (or a zombie)."""
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


class Node:
    """One real node with its control plane, started and torn down together.

    Parameters
    ----------
    workdir
        Where configuration, state, logs, containerd's images and the
        kubelet's root go; short enough for Unix socket paths.
    name
        The Node's name.
    """

    def __init__(self, workdir: Path, *, name: str = "labd-node") -> None:
        self.workdir = workdir
        self.name = name
        self.control_plane = ControlPlane(workdir / "control-plane", node=name)
        self.seconds_to_start = 0.0
        """How long `start` took, until the Node was Ready."""
        self._state: dict[str, Any] = {"pids": {}, "host": {}}
        self._popens: list[subprocess.Popen[bytes]] = []
        self._kubelet: subprocess.Popen[bytes] | None = None

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.control_plane.workdir / "admin.kubeconfig"

    # Start -------------------------------------------------------------------

    def start(self) -> None:
        """Bring the node up, wait until it is Ready and untainted; undo it all on failure."""
        began = time.monotonic()
        reason = missing_requirements()
        if reason is not None:
            raise RuntimeError(reason)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._claim_machine()
        try:
            self._save_host()
            self._create_bridge()
            self._start_containerd()
            self._import_pause()
            self.control_plane.start()
            self._record(self.control_plane.pids)
            self._state["etcd_data"] = [str(path) for path in self.control_plane.data_dirs]
            self._save_state()
            self._start_scheduler()
            self._start_kubelet()
            self._wait_until_ready()
        except BaseException:
            self.stop()
            raise
        self.seconds_to_start = time.monotonic() - began

    def _claim_machine(self) -> None:
        try:
            fd = os.open(MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            raise RuntimeError(
                f"a real node is already up ({MARKER}): {MARKER.read_text().strip()}"
            ) from None
        with os.fdopen(fd, "w") as marker:
            json.dump({"workdir": str(self.workdir), "pid": os.getpid()}, marker)

    def _save_host(self) -> None:
        host = self._state["host"]
        host["sysctls"] = {
            name: _sysctl_path(name).read_text().strip()
            for name in _SYSCTLS
            if _sysctl_path(name).exists()
        }
        host["absent_paths"] = [path for path in _HOST_PATHS if not os.path.lexists(path)]
        host["absent_cgroups"] = [
            str(controller / "kubepods")
            for controller in sorted(_CGROUP_ROOT.iterdir())
            if controller.is_dir() and not (controller / "kubepods").exists()
        ]
        if _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
            raise RuntimeError(f"the bridge {BRIDGE} exists already: another node's?")
        self._save_state()

    def _save_state(self) -> None:
        path = self.workdir / "host.json"
        path.write_text(json.dumps(self._state, indent=2) + "\n")

    def _record(self, pids: dict[str, int]) -> None:
        for name, pid in pids.items():
            self._state["pids"][name] = {"pid": pid, "exe": _exe(pid)}
        self._save_state()

    def _create_bridge(self) -> None:
        self._state["bridge"] = True
        self._save_state()
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{BRIDGE_IP}/16", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = self.workdir / f"{name}.log"
        with log.open("wb") as stream:
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=stream,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # /proc/<pid>/exe shows the binary only once exec has happened.
        deadline = time.monotonic() + 5
        while _exe(popen.pid) != os.path.realpath(argv[0]):
            if popen.poll() is not None or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        self._record({name: popen.pid})
        self._popens.append(popen)
        return popen

    def _wait(
        self,
        name: str,
        popen: subprocess.Popen[bytes],
        ready: Callable[[], bool],
        *,
        within: float,
    ) -> None:
        deadline = time.monotonic() + within
        while not ready():
            if popen.poll() is not None:
                raise RuntimeError(f"{name} exited with {popen.returncode}:\n{self.tail(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} not ready within {within:g} s:\n{self.tail(name)}")
            time.sleep(0.1)

    def tail(self, name: str, lines: int = 30) -> str:
        """The last lines of a process's log."""
        log = self.workdir / f"{name}.log"
        text = log.read_text(errors="replace").splitlines() if log.exists() else []
        return "\n".join(text[-lines:])

    def _start_containerd(self) -> None:
        base = self.workdir / "containerd"
        cni = self.workdir / "cni"
        for path in (base / "certs.d", cni / "net.d", cni / "ipam"):
            path.mkdir(parents=True, exist_ok=True)
        (cni / "net.d" / "10-labd.conflist").write_text(
            json.dumps(
                {
                    "cniVersion": "0.4.0",
                    "name": "labd-realnode",
                    "plugins": [
                        {
                            "type": "bridge",
                            "bridge": BRIDGE,
                            "isGateway": False,
                            "ipMasq": False,
                            "hairpinMode": True,
                            "ipam": {
                                "type": "host-local",
                                "dataDir": str(cni / "ipam"),
                                "ranges": [[{"subnet": POD_SUBNET, "rangeStart": "10.88.0.10"}]],
                            },
                        }
                    ],
                },
                indent=2,
            )
        )
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""\
version = 2
root = "{base / "root"}"
state = "{base / "state"}"
# Plugins that would write outside the work directory or are not wanted.
disabled_plugins = [
  "io.containerd.internal.v1.opt",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.tracing.processor.v1.otlp",
]

[grpc]
  address = "{self.containerd_socket}"

[ttrpc]
  address = "{self.containerd_socket}.ttrpc"

[debug]
  address = ""

[metrics]
  address = ""

[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  # Root here lacks CAP_SYS_RESOURCE: an oom_score_adj below 0 would fail.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false

[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[{cri}.containerd.runtimes.runc.options]
  BinaryName = "/usr/sbin/runc"
  Root = "{base / "runc"}"
  # No systemd as PID 1 here: cgroupfs, as the kubelet's cgroupDriver.
  SystemdCgroup = false

[{cri}.cni]
  bin_dir = "/usr/lib/cni"
  conf_dir = "{cni / "net.d"}"
  max_conf_num = 1

[{cri}.registry]
  config_path = "{base / "certs.d"}"
"""
        (base / "config.toml").write_text(config)
        popen = self._spawn(
            "containerd", ["/usr/bin/containerd", "--config", str(base / "config.toml")]
        )

        def serving() -> bool:
            return self._ctr("version", check=False).returncode == 0

        self._wait("containerd", popen, serving, within=30)

    def _ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return _run("/usr/bin/ctr", "--address", self.containerd_socket, "-n", "k8s.io", *args,
                    check=check)  # fmt: skip

    def _import_pause(self) -> None:
        archive = self.workdir / "pause.tar"
        _run(
            "skopeo", "copy", "--quiet", f"oci:{_pause_layout()}:latest",
            f"docker-archive:{archive}:{PAUSE_IMAGE}",
        )  # fmt: skip
        self._ctr("images", "import", str(archive))
        archive.unlink()

    def trust_registry(self, host: str) -> None:
        """Let containerd pull from a plain-HTTP registry at ``host`` (``127.0.0.1:PORT``)."""
        directory = self.workdir / "containerd" / "certs.d" / host
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "hosts.toml").write_text(
            f'server = "http://{host}"\n\n'
            f'[host."http://{host}"]\n'
            '  capabilities = ["pull", "resolve"]\n'
            "  skip_verify = true\n"
        )

    def _start_scheduler(self) -> None:
        kubeconfig = self.control_plane.write_kubeconfig(
            self.workdir / "scheduler.kubeconfig", self.control_plane.scheduler_token
        )
        port = free_port()
        popen = self._spawn(
            "kube-scheduler",
            [
                str(_bin("kube-scheduler")),
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--port=0",
                "--bind-address=127.0.0.1",
                f"--secure-port={port}",
                f"--cert-dir={self.workdir / 'scheduler-certs'}",
                "--logtostderr=true",
                "--v=0",
            ],
        )
        self._wait("kube-scheduler", popen, lambda: _listening(port), within=30)

    def _start_kubelet(self) -> None:
        base = self.workdir / "kubelet"
        base.mkdir(parents=True, exist_ok=True)
        kubeconfig = self.control_plane.write_kubeconfig(
            base / "kubeconfig", self.control_plane.node_token
        )
        # Pods resolve nothing: their resolver is their own loopback.
        (base / "resolv.conf").write_text("nameserver 127.0.0.1\noptions ndots:1\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": BRIDGE_IP,
            "port": free_port(),
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": free_port(),
            # Nobody may use the kubelet's API: no client is authenticated.
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs",
            "failSwapOn": False,
            # Root here lacks CAP_SYS_RESOURCE: the kubelet keeps its own score.
            "oomScoreAdj": 0,
            "makeIPTablesUtilChains": False,
            "protectKernelDefaults": False,
            "resolvConf": str(base / "resolv.conf"),
            "serializeImagePulls": False,
            "volumePluginDir": str(base / "volume-plugins"),
            "evictionHard": {
                "memory.available": "100Mi",
                "nodefs.available": "1%",
                "nodefs.inodesFree": "1%",
                "imagefs.available": "1%",
            },
            "clusterDomain": "cluster.local",
            "runtimeRequestTimeout": "5m",
        }
        (base / "config.yaml").write_text(yaml.safe_dump(config))
        socket_url = f"unix://{self.containerd_socket}"
        popen = self._spawn(
            "kubelet",
            [
                str(_bin("kubelet")),
                f"--config={base / 'config.yaml'}",
                f"--kubeconfig={kubeconfig}",
                "--container-runtime=remote",
                f"--container-runtime-endpoint={socket_url}",
                f"--image-service-endpoint={socket_url}",
                f"--root-dir={base / 'root'}",
                f"--cert-dir={base / 'pki'}",
                f"--hostname-override={self.name}",
                f"--node-ip={BRIDGE_IP}",
                "--logtostderr=true",
                "--v=1",
            ],
        )
        self._kubelet = popen

    def _wait_until_ready(self) -> None:
        def ready() -> bool:
            status, node = self.control_plane.request("GET", f"/api/v1/nodes/{self.name}")
            if status != 200:
                return False
            conditions = node.get("status", {}).get("conditions") or []
            taints = node.get("spec", {}).get("taints") or []
            return not taints and any(
                c["type"] == "Ready" and c["status"] == "True" for c in conditions
            )

        assert self._kubelet is not None
        self._wait("kubelet", self._kubelet, ready, within=120)

    # What runs -----------------------------------------------------------------

    def containerd_tasks(self) -> list[str]:
        """IDs of the containers (and pod sandboxes) containerd runs now."""
        return self._ctr("tasks", "ls", "-q").stdout.split()

    def forget_images(self) -> None:
        """Remove every image but the pause image from containerd.

        The next lab then pulls its image again: a cold spawn.  The CRI
        plugin names each image three times (by tag, by digest and by its
        config's ID); every name pointing at the same manifest goes, and
        containerd's garbage collector drops the blobs and snapshots.
        """
        rows = [line.split() for line in self._ctr("images", "ls").stdout.splitlines()[1:]]
        keep = {row[2] for row in rows if row and row[0] == PAUSE_IMAGE}
        names = [row[0] for row in rows if row and row[2] not in keep]
        if names:
            self._ctr("images", "rm", "--sync", *names)

    def pod_addresses(self) -> list[str]:
        """Pod IPs the CNI plugin has handed out and not yet released."""
        network = self.workdir / "cni" / "ipam" / "labd-realnode"
        if not network.is_dir():
            return []
        return [path.name for path in network.iterdir() if path.name.startswith("10.88.")]

    # Stop ----------------------------------------------------------------------

    def drain(self, *, within: float = 60.0) -> None:
        """Delete every pod through the API and wait until containerd runs no task.

        The kubelet then stops each pod as it would in production: the CNI
        plugin releases the pod's address and removes its network namespace.
        """
        status, pods = self.control_plane.request("GET", "/api/v1/pods")
        if status != 200:
            return
        for pod in pods.get("items") or []:
            meta = pod["metadata"]
            self.control_plane.request(
                "DELETE",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {"gracePeriodSeconds": 1},
            )
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            tasks = self._ctr("tasks", "ls", "-q", check=False)
            if tasks.returncode != 0 or not tasks.stdout.strip():
                return
            time.sleep(0.5)

    def stop(self) -> list[str]:
        """Drain the node if it is up, then `teardown`; return what could not be restored."""
        if self.control_plane.port:
            with contextlib.suppress(OSError):
                self.drain()
        problems = teardown(self.workdir)
        # Every process is stopped by now (and reaped): let the Popen
        # objects notice, so none is reported as still running.
        self.control_plane.stop()
        for popen in self._popens:
            popen.poll()
        self._popens.clear()
        return problems


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _stop_pid(pid: int, exe: str, *, within: float = 15.0) -> None:
    """Stop one process group by its leader's PID, if that PID still runs ``exe``."""
    if _exe(pid) != exe:
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not Path(f"/proc/{pid}").exists() or _zombie(pid):
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (FileNotFoundError, IndexError):
        return True


def _shims(socket_path: Path) -> Iterator[int]:
    """PIDs of containerd shims started for our containerd (named by its socket)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            argv
            and argv[0].endswith(b"containerd-shim-runc-v2")
            and str(socket_path).encode() in argv
        ):
            yield int(entry.name)


def _mounts_under(prefixes: list[str]) -> list[str]:
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if any(point == prefix or point.startswith(prefix + "/") for prefix in prefixes):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def teardown(workdir: Path) -> list[str]:
    """Stop every process of the node in ``workdir`` by PID and restore the host.

    Works from ``workdir/host.json`` alone, so it also cleans up after a
    crashed session.  Order: the kubelet and the scheduler; every container
    left (killed through containerd); containerd and its shims; the control
    plane; then mounts, cgroups, the bridge, sysctls and the host paths the
    node created.  Returns what could not be restored (empty when all was).
    """
    problems: list[str] = []
    state_file = workdir / "host.json"
    state: dict[str, Any] = json.loads(state_file.read_text()) if state_file.exists() else {}
    pids: dict[str, dict[str, Any]] = state.get("pids", {})
    host: dict[str, Any] = state.get("host", {})
    socket_path = workdir / "containerd" / "containerd.sock"
    ctr = ["/usr/bin/ctr", "--address", str(socket_path), "-n", "k8s.io"]

    def stop(name: str) -> None:
        if name in pids:
            _stop_pid(pids[name]["pid"], pids[name]["exe"])

    stop("kubelet")
    stop("kube-scheduler")
    if "containerd" in pids and socket_path.exists():
        tasks = _run(*ctr, "tasks", "ls", "-q", check=False).stdout.split()
        for task in tasks:
            _run(*ctr, "tasks", "kill", "-s", "SIGKILL", task, check=False)
        for task in tasks:
            for _ in range(50):
                if _run(*ctr, "tasks", "delete", task, check=False).returncode == 0:
                    break
                time.sleep(0.1)
        for container in _run(*ctr, "containers", "ls", "-q", check=False).stdout.split():
            _run(*ctr, "containers", "delete", container, check=False)
    stop("containerd")
    for pid in _shims(socket_path):
        exe = _exe(pid)
        if exe is not None:
            _stop_pid(pid, exe)
    for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
        stop(name)
    for data in state.get("etcd_data", []):
        shutil.rmtree(data, ignore_errors=True)

    prefixes = [str(workdir)]
    prefixes += [path for path in host.get("absent_paths", []) if path.startswith("/run/")]
    for point in _mounts_under(prefixes):
        if _run("umount", point, check=False).returncode != 0:
            _run("umount", "--lazy", point, check=False)
    for point in _mounts_under(prefixes):
        problems.append(f"still mounted: {point}")

    for cgroup in host.get("absent_cgroups", []):
        root = Path(cgroup)
        if not root.exists():
            continue
        for directory, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):
            try:
                os.rmdir(directory)
            except OSError as error:
                problems.append(f"cgroup {directory}: {error.strerror}")

    if state.get("bridge") and _run("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        _run("ip", "link", "delete", BRIDGE, check=False)
    for name, value in host.get("sysctls", {}).items():
        path = _sysctl_path(name)
        if path.read_text().strip() != value:
            if name == "net.ipv4.ip_forward":
                problems.append(f"{name} changed from {value} (restored)")
            path.write_text(value + "\n")
    for path in host.get("absent_paths", []):
        if os.path.lexists(path):
            shutil.rmtree(path, ignore_errors=True)
            if os.path.lexists(path):
                problems.append(f"could not remove {path}")
    # The images and containers: a few hundred MB per run.
    shutil.rmtree(workdir / "containerd" / "root", ignore_errors=True)
    if MARKER.exists():
        with contextlib.suppress(ValueError, KeyError):
            if json.loads(MARKER.read_text())["workdir"] == str(workdir):
                MARKER.unlink()
    return problems


def _main(argv: list[str]) -> int:
    if len(argv) not in (1, 2) or argv[0] not in ("up", "down"):
        print("usage: python -m tests.realnode.node up|down [WORKDIR]", file=sys.stderr)
        return 2
    if argv[0] == "down":
        workdir = Path(argv[1]) if len(argv) == 2 else None
        if workdir is None and MARKER.exists():
            workdir = Path(json.loads(MARKER.read_text())["workdir"])
        if workdir is None:
            print("no real node is up", file=sys.stderr)
            return 0
        problems = teardown(workdir)
        for problem in problems:
            print(f"down: {problem}", file=sys.stderr)
        return 1 if problems else 0
    workdir = Path(argv[1]) if len(argv) == 2 else DEFAULT_WORKDIR
    node = Node(workdir)
    node.start()
    print(f"node {node.name} Ready in {node.seconds_to_start:.1f} s")
    print(f"admin kubeconfig: {node.admin_kubeconfig}")
    print(f"containerd: {node.containerd_socket}; logs: {workdir}/*.log")
    print(f"stop it with: scripts/realnode/down {workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
