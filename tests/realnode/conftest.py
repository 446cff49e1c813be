"""Fixtures of the real-node tier: a real kubelet, the lab image, labd in front.

The tier runs only with ``LABD_REALNODE=1`` in the environment, which
``make test`` sets unless told ``LABD_REALNODE=0``: it needs root and
changes the host while it runs (a bridge, cgroups, sysctls, all restored
at the end), and one node per machine.  Without the
switch, or where the machine cannot run a node (no root, cgroups, overlayfs,
binaries or packages), every test is skipped with the reason.

One node serves the session (`real_node`): ``scripts/realnode/build`` is run
first (it exits at once when everything is built), then `Node` brings the
control plane, containerd, kube-scheduler and the kubelet up in pytest's
temporary directory (``realnode0/*.log`` to read after a failure).  Two
registries serve the session too, each holding the lab image of
``images/lab`` under its four tags: an open one (`lab_registry`) and one
behind htpasswd auth with a password made at start (`auth_registry`).
labd itself is started per test (`labd_url`, or `labd_factory` for
per-test settings), on each database, exactly as ``labd serve`` wires it,
and served by uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
import yaml

from labd.api import Authenticator, create_app, hash_token
from labd.config import Config
from labd.daemon.factory import Labd
from tests.realnode.node import Node, missing_requirements
from tests.support.api import HUB_TOKEN, serve
from tests.support.controlplane import LABD_TOKEN
from tests.support.core import make_config
from tests.support.processes import Daemon, free_port
from tests.support.realcluster import RBAC_FILE, resource_path
from tests.support.registry import REGISTRY_BINARY, REPOSITORY, LocalRegistry

__all__ = [
    "INTERNAL_URL",
    "POD_DELETE_GRACE",
    "AuthRegistry",
    "LabRegistry",
    "LabdFactory",
    "LabdProcess",
    "LabdProcessFactory",
    "auth_registry",
    "lab_registry",
    "labd_factory",
    "labd_process_factory",
    "labd_url",
    "real_node",
    "realnode_config",
]

ROOT: Final = Path(__file__).resolve().parents[2]
INTERNAL_URL: Final = "http://{pod_ip}:{port}{service_prefix}"
"""labd's ``lab.internal_url_template`` here: there is no cluster DNS."""
SWITCH: Final = "LABD_REALNODE"
POD_DELETE_GRACE: Final = 5
"""labd's ``lab.pod_delete_grace`` here: seconds between the kubelet's SIGTERM and SIGKILL."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "labd(**overrides): configuration overrides for the real-node tier's labd"
    )


def _run_script(script: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run one of the project's scripts; skip the tier, saying why, if it fails."""
    result = subprocess.run(
        [str(script), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-5:])
        pytest.skip(f"real-node tier: {script.relative_to(ROOT)} failed:\n{tail}")
    return result.stdout


@pytest.fixture(scope="session")
def real_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """The control plane, containerd, kube-scheduler and a kubelet, Ready."""
    if os.environ.get(SWITCH) != "1":
        pytest.skip(
            f"set {SWITCH}=1 (as `make test` does) to run the real-node tier (needs root; "
            "brings a real kubelet up on this machine and restores the host after it)"
        )
    if os.geteuid() != 0:
        pytest.skip("real-node tier: needs root (containerd, the kubelet, a bridge)")
    _run_script(ROOT / "scripts" / "realnode" / "build")
    reason = missing_requirements()
    if reason is not None:
        pytest.skip(reason)
    node = Node(tmp_path_factory.mktemp("realnode"))
    node.start()
    print(f"\nreal node: Ready in {node.seconds_to_start:.1f} s")
    try:
        for document in yaml.safe_load_all(RBAC_FILE.read_text()):
            kind = {"ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings"}
            status, body = node.control_plane.request(
                "POST", resource_path(kind[document["kind"]]), document
            )
            assert status == 201, body
        yield node
    finally:
        problems = node.stop()
        assert not problems, f"the host was not fully restored: {problems}"


@dataclass(frozen=True)
class LabRegistry:
    """The session's registry and the lab image's digest under each tag."""

    registry: LocalRegistry
    digests: dict[str, str]
    """Tag to manifest digest, as pushed."""


@pytest.fixture(scope="session")
def lab_registry(
    real_node: Node, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LabRegistry]:
    """An anonymous registry on 127.0.0.1 with the lab image of ``images/lab``."""
    if not REGISTRY_BINARY.exists():
        pytest.skip(f"real-node tier: {REGISTRY_BINARY} is missing; run scripts/realnode/build")
    registry = LocalRegistry(tmp_path_factory.mktemp("lab-registry"))
    registry.start()
    try:
        pushed = _run_script(ROOT / "images" / "lab" / "build", "push", registry.image_base)
        digests = dict(line.split() for line in pushed.splitlines() if line.strip())
        real_node.trust_registry(f"127.0.0.1:{registry.port}")
        yield LabRegistry(registry, digests)
    finally:
        registry.stop()
        # The image's blobs: about 500 MB per session.
        shutil.rmtree(registry.root / "data", ignore_errors=True)


def realnode_config(
    database_url: str, kubeconfig: Path, registry: LocalRegistry, **overrides: Any
) -> Config:
    """labd's configuration for the real node: the registry's images, real timeouts.

    ``overrides`` replace top-level keys, or update them one level deep when
    both are mappings (``lab={"pull_secret": ...}`` keeps the other ``lab`` keys).
    """
    settings: dict[str, Any] = {
        "images": {
            "available": [],
            "registry": {"url": registry.url, "repository": REPOSITORY},
            "recommended": "recommended",
        },
        "timeouts": {"spawn": 180, "delete": 120},
        # No cluster DNS here: the hub (the tests) reaches a lab at its pod IP.
        "lab": {"pod_delete_grace": POD_DELETE_GRACE, "internal_url_template": INTERNAL_URL},
    }
    for key, value in overrides.items():
        current = settings.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            settings[key] = {**current, **value}
        else:
            settings[key] = value
    return make_config(database_url, kubeconfig, **settings)


LabdFactory = Callable[..., Awaitable[str]]


@pytest.fixture
async def labd_factory(
    database_url: str, real_node: Node, lab_registry: LabRegistry, tmp_path: Path
) -> AsyncIterator[LabdFactory]:
    """Start labd on the real node, served by uvicorn; return its URL.

    labd holds only the ``labd`` user's rights (``deploy/rbac.yaml``).  The
    factory takes `realnode_config` overrides and, as ``registry``, another
    `LocalRegistry` than the session's.  Everything started is stopped at
    the end of the test, and the namespaces the test made are removed, so
    whatever a failed test left behind does not meet the next one.
    """
    kubeconfig = real_node.control_plane.write_kubeconfig(tmp_path / "kubeconfig", LABD_TOKEN)
    async with contextlib.AsyncExitStack() as stack:

        async def start(*, registry: LocalRegistry | None = None, **overrides: Any) -> str:
            config = realnode_config(
                database_url, kubeconfig, registry or lab_registry.registry, **overrides
            )
            labd = await Labd.create(config)
            await labd.start()
            stack.push_async_callback(labd.stop)
            app = create_app(
                config=config,
                service=labd.service,
                authenticator=Authenticator.from_tokens({HUB_TOKEN: "hub"}),
                readiness=labd.readiness,
            )
            url: str = await stack.enter_async_context(serve(app))
            return url

        try:
            yield start
        finally:
            await stack.aclose()
            await asyncio.to_thread(real_node.control_plane.remove_user_namespaces, within=120)


@pytest.fixture
async def labd_url(request: pytest.FixtureRequest, labd_factory: LabdFactory) -> str:
    """labd on the real node; a test's ``@pytest.mark.labd(...)`` overrides its configuration."""
    marker = request.node.get_closest_marker("labd")
    return await labd_factory(**(marker.kwargs if marker is not None else {}))


@dataclass(frozen=True)
class LabdProcess:
    """``labd serve`` as a daemon of its own, with a hub token of its own."""

    url: str
    token: str
    """The hub token (its SHA-256 is in labd's token file)."""
    daemon: Daemon
    """The process: `Daemon.kill` and `Daemon.start` restart it on the same database."""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


LabdProcessFactory = Callable[..., Awaitable[LabdProcess]]


@pytest.fixture
async def labd_process_factory(
    database_url: str, real_node: Node, lab_registry: LabRegistry, tmp_path: Path
) -> AsyncIterator[LabdProcessFactory]:
    """Start ``labd serve`` on the real node as a process, for a hub or to be killed.

    As `labd_factory`, with `realnode_config` overrides, but labd runs as the
    operator runs it: its settings in a YAML file, its hub token in a token
    file, its log (JSON) in ``labd.log`` of the test's directory.
    """
    kubeconfig = real_node.control_plane.write_kubeconfig(tmp_path / "kubeconfig", LABD_TOKEN)
    daemons: list[Daemon] = []

    async def start(**overrides: Any) -> LabdProcess:
        token = secrets.token_hex(32)
        tokens = tmp_path / "tokens"
        tokens.write_text(f"{hash_token(token)} hub\n")
        url = f"http://127.0.0.1:{free_port()}"
        config = realnode_config(
            database_url,
            kubeconfig,
            lab_registry.registry,
            bind_address=url.removeprefix("http://"),
            token_file=str(tokens),
            log_format="json",
            **overrides,
        )
        settings = tmp_path / "labd.yaml"
        settings.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_unset=True)))
        daemon = Daemon(settings, f"{url}/readyz", tmp_path / "labd.log", ready_timeout=60)
        daemons.append(daemon)
        await daemon.start()
        return LabdProcess(url=url, token=token, daemon=daemon)

    try:
        yield start
    finally:
        for daemon in daemons:
            if daemon.process is not None and daemon.process.returncode is None:
                assert await daemon.terminate() == 0, daemon.log_tail()
        await asyncio.to_thread(real_node.control_plane.remove_user_namespaces, within=120)


@dataclass(frozen=True)
class AuthRegistry:
    """A registry behind htpasswd auth holding the lab image, and its user."""

    registry: LocalRegistry
    username: str
    password: str
    digests: dict[str, str]
    """Tag to manifest digest, as pushed."""


@pytest.fixture(scope="session")
def auth_registry(
    real_node: Node, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AuthRegistry]:
    """A registry that wants a password (made now) for everything, with the lab image."""
    password = secrets.token_urlsafe(16)
    registry = LocalRegistry(tmp_path_factory.mktemp("auth-registry"), users={"labd": password})
    registry.start()
    try:
        pushed = _run_script(
            ROOT / "images" / "lab" / "build",
            "push",
            registry.image_base,
            env={"LABD_REGISTRY_CREDS": f"labd:{password}"},
        )
        digests = dict(line.split() for line in pushed.splitlines() if line.strip())
        real_node.trust_registry(f"127.0.0.1:{registry.port}")
        yield AuthRegistry(registry, "labd", password, digests)
    finally:
        registry.stop()
        shutil.rmtree(registry.root / "data", ignore_errors=True)
