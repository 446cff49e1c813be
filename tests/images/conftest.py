"""Fixtures for the image service: real registries on 127.0.0.1.

Every registry test skips, saying why, when Debian's ``docker-registry`` is
not installed (``scripts/ensure-registry`` installs it).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from labd.config import ImagesConfig
from labd.images.catalog import ImageCatalog
from labd.images.registry import RegistryClient
from labd.lab.metrics import Metrics
from tests.support.registry import REGISTRY_BINARY, REPOSITORY, LocalRegistry, TokenServer

USERS = {"alice": "correct horse battery staple"}


def _require_registry() -> None:
    if not REGISTRY_BINARY.exists():
        pytest.skip(
            f"{REGISTRY_BINARY} is missing: run scripts/ensure-registry "
            "(installs Debian's docker-registry package)"
        )


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[LocalRegistry]:
    """An anonymous registry, started."""
    _require_registry()
    local = LocalRegistry(tmp_path / "registry")
    yield from _running(local)


@pytest.fixture
def htpasswd_registry(tmp_path: Path) -> Iterator[LocalRegistry]:
    """A registry behind htpasswd (bcrypt) basic auth; pushes as alice."""
    _require_registry()
    local = LocalRegistry(tmp_path / "registry", users=USERS)
    local.push_headers = {"Authorization": _basic("alice", USERS["alice"])}
    yield from _running(local)


@pytest.fixture
async def token_server(tmp_path: Path) -> AsyncIterator[TokenServer]:
    """A token server that knows alice."""
    _require_registry()
    server = TokenServer(tmp_path, USERS)
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def token_registry(tmp_path: Path, token_server: TokenServer) -> Iterator[LocalRegistry]:
    """A registry behind the token-auth flow; pushes with a push token of alice."""
    local = LocalRegistry(tmp_path / "registry", token=token_server.registry_settings())
    token = token_server.token("alice", f"repository:{REPOSITORY}:pull,push,delete")
    local.push_headers = {"Authorization": f"Bearer {token}"}
    yield from _running(local)


def _running(local: LocalRegistry) -> Iterator[LocalRegistry]:
    local.start()
    try:
        yield local
    finally:
        local.stop()


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def images_config(local: LocalRegistry, **registry: Any) -> ImagesConfig:
    """An ``images`` section reading ``local``, recommending its ``recommended`` tag."""
    data: dict[str, Any] = {
        "registry": {
            "url": local.url,
            "repository": REPOSITORY,
            "refresh_interval": 0.2,
            "timeout": 2,
            **registry,
        },
        "recommended": "recommended",
    }
    return ImagesConfig.model_validate(data)


CatalogFactory = Callable[..., ImageCatalog]


@pytest.fixture
async def catalogs() -> AsyncIterator[CatalogFactory]:
    """Build catalogs over a registry (their clients are closed at the end)."""
    built: list[ImageCatalog] = []

    def build(config: ImagesConfig, metrics: Metrics | None = None) -> ImageCatalog:
        assert config.registry is not None
        catalog = ImageCatalog(
            config, registry=RegistryClient(config.registry), metrics=metrics or Metrics()
        )
        built.append(catalog)
        return catalog

    yield build
    for catalog in built:
        await catalog.aclose()


TAGS = ["r27_0_0", "r28_0_1", "w_2026_46", "w_2026_47", "d_2026_11_23", "d_2026_11_24"]


async def push_all(registry: LocalRegistry) -> dict[str, str]:
    """Push the usual tags and ``recommended`` as an alias of ``w_2026_47``."""
    digests = {tag: await registry.push(tag) for tag in TAGS}
    digests["recommended"] = await registry.push("recommended", content="w_2026_47")
    assert digests["recommended"] == digests["w_2026_47"]
    return digests


def pinned(registry: LocalRegistry, tag: str, digest: str) -> str:
    """How labd names ``tag`` of the test repository, pinned."""
    return f"{registry.image_base}:{tag}@{digest}"


def sample(metrics: Metrics, name: str, **labels: str) -> float | None:
    """The current value of one metric sample."""
    return metrics.registry.get_sample_value(name, labels)
