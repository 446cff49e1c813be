"""Spawns and the form through the real API app, with registry-backed images."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from labd.api import Authenticator, create_app
from labd.api.service import LabService
from labd.config import Config
from labd.db.database import Database
from labd.db.store import LabStore
from labd.lab.signals import LabSignals
from tests.images.conftest import CatalogFactory, images_config, pinned, push_all
from tests.support.api import HUB, HUB_TOKEN
from tests.support.registry import LocalRegistry


def spawn_body(**image: str) -> dict[str, Any]:
    """A create naming its image in one field."""
    return {
        "options": {"size": "small", **image},
        "env": {"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/"},
    }


@dataclass
class Api:
    client: httpx.AsyncClient
    store: LabStore
    digests: dict[str, str]


@pytest.fixture
async def api(
    database: Database, registry: LocalRegistry, catalogs: CatalogFactory
) -> AsyncIterator[Api]:
    """The app, its images read from ``registry`` once."""
    digests = await push_all(registry)
    images = images_config(registry)
    config = Config.model_validate({"images": images.model_dump()})
    catalog = catalogs(config.images)
    assert await catalog.refresh()
    store = LabStore(database)
    service = LabService(config=config, store=store, signals=LabSignals(), images=catalog)

    async def ready() -> str | None:
        return None

    app = create_app(
        config=config,
        service=service,
        authenticator=Authenticator.from_tokens({HUB_TOKEN: "hub"}),
        readiness=ready,
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://labd") as client:
        yield Api(client=client, store=store, digests=digests)


async def test_unknown_image_is_400(api: Api, registry: LocalRegistry) -> None:
    body = spawn_body(image_tag="w_2099_01")
    response = await api.client.post("/spawner/v1/labs/alice/create", json=body, headers=HUB)
    assert response.status_code == 400
    assert response.json() == {
        "detail": [
            {
                "loc": ["body", "options", "image_tag"],
                "msg": "No available image has tag w_2099_01",
                "type": "unknown_image",
            }
        ]
    }
    stale = f"{registry.image_base}:w_2026_47@sha256:{'0' * 64}"
    body = spawn_body(image_list=stale)
    response = await api.client.post("/spawner/v1/labs/alice/create", json=body, headers=HUB)
    assert response.status_code == 400
    assert response.json()["detail"][0]["type"] == "unknown_image"
    assert await api.store.get_current_lab("alice") is None


async def test_spawn_uses_the_pinned_reference(api: Api, registry: LocalRegistry) -> None:
    body = spawn_body(image_tag="recommended")
    response = await api.client.post("/spawner/v1/labs/alice/create", json=body, headers=HUB)
    assert response.status_code == 201, response.text
    lab = await api.store.get_current_lab("alice")
    assert lab is not None
    expected = pinned(registry, "w_2026_47", api.digests["w_2026_47"])
    assert lab.spec.options.image == expected


async def test_form_offers_registry_images(api: Api, registry: LocalRegistry) -> None:
    response = await api.client.get("/spawner/v1/lab-form/alice", headers=HUB)
    assert response.status_code == 200
    for tag in ("r27_0_0", "w_2026_46", "d_2026_11_23"):
        assert pinned(registry, tag, api.digests[tag]) in response.text
    recommended = pinned(registry, "w_2026_47", api.digests["w_2026_47"])
    assert f'value="{recommended}" checked' in response.text
