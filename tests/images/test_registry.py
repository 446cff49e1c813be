"""The image service against a real registry (Debian's ``docker-registry``).

Images are pushed through the registry's HTTP API; labd reads them through
`RegistryClient` exactly as ``labd serve`` does.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from labd import tasks
from labd.api.form import render_form
from labd.api.service import FormChoices
from labd.config import ImageConfig, Resources, SizeConfig
from labd.lab.errors import UnknownImageError
from labd.lab.metrics import Metrics
from tests.images.conftest import (
    TAGS,
    USERS,
    CatalogFactory,
    images_config,
    pinned,
    push_all,
    sample,
)
from tests.support.registry import LocalRegistry, TokenServer
from tests.support.waiting import eventually

SMALL = SizeConfig(limits=Resources(cpu=1, memory=2**30), requests=Resources(cpu=1, memory=2**30))


async def test_classes_and_recommended_resolved(
    registry: LocalRegistry, catalogs: CatalogFactory
) -> None:
    digests = await push_all(registry)
    metrics = Metrics()
    catalog = catalogs(images_config(registry), metrics)

    assert await catalog.refresh()

    def ref(tag: str) -> str:
        return pinned(registry, tag, digests[tag])

    current = catalog.current
    assert [image.reference for image in current.images] == [
        ref("r28_0_1"),
        ref("r27_0_0"),
        ref("w_2026_47"),
        ref("w_2026_46"),
        ref("d_2026_11_24"),
        ref("d_2026_11_23"),
    ]
    assert [image.image_class for image in current.images] == [
        "release",
        "release",
        "weekly",
        "weekly",
        "daily",
        "daily",
    ]
    # The alias is shown as the image it points at, and resolves to it.
    assert current.recommended is not None
    assert current.recommended.reference == ref("w_2026_47")
    assert catalog.resolve("image_tag", "recommended").reference == ref("w_2026_47")
    assert catalog.resolve("image_class", "recommended").reference == ref("w_2026_47")
    assert catalog.resolve("image_class", "latest-release").reference == ref("r28_0_1")
    assert catalog.resolve("image_class", "latest-daily").reference == ref("d_2026_11_24")
    assert catalog.resolve("image_tag", "r27_0_0").reference == ref("r27_0_0")
    unpinned = f"{registry.image_base}:w_2026_46"
    assert catalog.resolve("image_dropdown", unpinned).reference == ref("w_2026_46")

    choices = catalog.choices()
    assert [image.reference for image in choices.featured] == [
        ref("w_2026_47"),
        ref("r28_0_1"),
        ref("d_2026_11_24"),
    ]
    assert sample(metrics, "labd_images_known") == 6
    assert (sample(metrics, "labd_image_last_success_timestamp_seconds") or 0) > 0


async def test_form_lists_latest_of_each_class_and_every_tag(
    registry: LocalRegistry, catalogs: CatalogFactory
) -> None:
    digests = await push_all(registry)
    catalog = catalogs(images_config(registry))
    assert await catalog.refresh()

    form = render_form(
        FormChoices(
            username="alice",
            images=catalog.choices(),
            sizes={"small": SMALL},
            default_size="small",
            spawn_allowed=True,
        )
    )
    radios = [line for line in form.splitlines() if 'type="radio"' in line]
    assert len(radios) == 4  # recommended, latest release, latest daily, the dropdown
    assert f'value="{pinned(registry, "w_2026_47", digests["w_2026_47"])}" checked' in radios[0]
    assert "r28_0_1" in radios[1]
    assert "d_2026_11_24" in radios[2]
    options = [line for line in form.splitlines() if "<option" in line and "sciplat" in line]
    assert len(options) == len(TAGS)
    for tag in TAGS:
        assert f'value="{pinned(registry, tag, digests[tag])}"' in form


async def test_new_tag_appears_and_deleted_tag_disappears(
    registry: LocalRegistry, catalogs: CatalogFactory
) -> None:
    digests = await push_all(registry)
    catalog = catalogs(images_config(registry))
    assert await catalog.refresh()
    stopping = asyncio.Event()
    loop = tasks.spawn(catalog.refresh_periodically(stopping), name="image-refresh")
    try:
        new_digest = await registry.push("w_2026_48")
        await eventually(lambda: catalog.current.by_tag("w_2026_48") is not None)
        latest = catalog.resolve("image_class", "latest-weekly")
        assert latest.reference == pinned(registry, "w_2026_48", new_digest)

        await registry.delete(digests["d_2026_11_24"])
        await eventually(lambda: catalog.current.by_tag("d_2026_11_24") is None)
        with pytest.raises(UnknownImageError) as info:
            catalog.resolve("image_tag", "d_2026_11_24")
        assert info.value.loc == ["body", "options", "image_tag"]
        old = pinned(registry, "d_2026_11_24", digests["d_2026_11_24"])
        with pytest.raises(UnknownImageError):
            catalog.resolve("image_list", old)
        latest = catalog.resolve("image_class", "latest-daily")
        assert latest.tag == "d_2026_11_23"
    finally:
        stopping.set()
        await asyncio.wait_for(loop, 5)


async def test_moved_alias_is_noticed(registry: LocalRegistry, catalogs: CatalogFactory) -> None:
    await push_all(registry)
    catalog = catalogs(images_config(registry))
    assert await catalog.refresh()
    assert catalog.resolve("image_tag", "recommended").tag == "w_2026_47"

    # Retag: ``recommended`` now points at the release; no new tag appeared.
    moved = await registry.push("recommended", content="r28_0_1")
    assert await catalog.refresh()
    recommended = catalog.resolve("image_class", "recommended")
    assert recommended.tag == "r28_0_1"
    assert recommended.parsed.digest == moved


async def test_registry_down_keeps_last_list(
    registry: LocalRegistry, catalogs: CatalogFactory
) -> None:
    await push_all(registry)
    metrics = Metrics()
    catalog = catalogs(images_config(registry), metrics)
    assert await catalog.refresh()
    before = catalog.current
    success = sample(metrics, "labd_image_last_success_timestamp_seconds")

    registry.stop()
    with capture_logs() as logs:
        assert not await catalog.refresh()
    assert catalog.current is before
    assert catalog.resolve("image_tag", "w_2026_47") in before.images
    assert sample(metrics, "labd_image_refresh_failures_total", reason="unreachable") == 1
    assert sample(metrics, "labd_image_last_success_timestamp_seconds") == success
    assert sample(metrics, "labd_images_known") == 6
    [warning] = [log for log in logs if log["log_level"] == "warning"]
    assert warning["event"] == "image registry read failed; keeping the last good image list"
    assert warning["reason"] == "unreachable"
    assert registry.url in warning["error"]

    registry.start()
    await registry.push("w_2026_48")
    with capture_logs() as logs:
        assert await catalog.refresh()
    assert catalog.current.by_tag("w_2026_48") is not None
    assert [log["event"] for log in logs] == ["image list refreshed"]


async def test_static_images_served_when_registry_down_at_start(
    registry: LocalRegistry, catalogs: CatalogFactory
) -> None:
    static = "registry.example/sciplat/lab:r1"
    config = images_config(registry).model_copy(
        update={"available": [ImageConfig(reference=static, image_class="release")]}
    )
    registry.stop()
    metrics = Metrics()
    catalog = catalogs(config, metrics)
    assert not await catalog.refresh()
    assert catalog.resolve("image_class", "latest-release").reference == static
    # The recommended tag lives in the registry, which was never read.
    with pytest.raises(UnknownImageError):
        catalog.resolve("image_class", "recommended")
    assert catalog.choices().recommended is None
    assert sample(metrics, "labd_image_last_success_timestamp_seconds") == 0


async def test_keep_per_class(registry: LocalRegistry, catalogs: CatalogFactory) -> None:
    await push_all(registry)
    catalog = catalogs(images_config(registry, keep_per_class=1))
    assert await catalog.refresh()
    assert [image.tag for image in catalog.current.images] == [
        "r28_0_1",
        "w_2026_47",
        "d_2026_11_24",
    ]
    assert catalog.resolve("image_tag", "recommended").tag == "w_2026_47"
    with pytest.raises(UnknownImageError):
        catalog.resolve("image_tag", "w_2026_46")


async def test_basic_auth(
    htpasswd_registry: LocalRegistry, catalogs: CatalogFactory, tmp_path: Path
) -> None:
    await push_all(htpasswd_registry)
    password = tmp_path / "password"
    password.write_text(USERS["alice"] + "\n")
    config = images_config(htpasswd_registry, username="alice", password_file=str(password))
    catalog = catalogs(config)
    assert await catalog.refresh()
    assert len(catalog.current.images) == 6


async def test_wrong_password_is_reported(
    htpasswd_registry: LocalRegistry, catalogs: CatalogFactory, tmp_path: Path
) -> None:
    await push_all(htpasswd_registry)
    password = tmp_path / "password"
    password.write_text("not-the-password")
    metrics = Metrics()
    config = images_config(htpasswd_registry, username="alice", password_file=str(password))
    catalog = catalogs(config, metrics)
    with capture_logs() as logs:
        assert not await catalog.refresh()
    [warning] = logs
    assert warning["reason"] == "auth"
    assert warning["error"] == (
        f"registry {htpasswd_registry.url} refused user 'alice' (wrong username or password?)"
    )
    assert "not-the-password" not in str(logs)
    assert sample(metrics, "labd_image_refresh_failures_total", reason="auth") == 1

    # Fixing the file is enough: it is read again at the next refresh.
    password.write_text(USERS["alice"])
    assert await catalog.refresh()


async def test_missing_credentials_are_reported(
    htpasswd_registry: LocalRegistry, catalogs: CatalogFactory, tmp_path: Path
) -> None:
    metrics = Metrics()
    catalog = catalogs(images_config(htpasswd_registry), metrics)
    with capture_logs() as logs:
        assert not await catalog.refresh()
    assert logs[0]["error"] == (
        f"registry {htpasswd_registry.url} requires a login: "
        "set images.registry.username and images.registry.password_file"
    )
    missing = tmp_path / "nope"
    config = images_config(htpasswd_registry, username="alice", password_file=str(missing))
    catalog = catalogs(config, metrics)
    with capture_logs() as logs:
        assert not await catalog.refresh()
    assert logs[0]["error"] == (
        f"cannot read images.registry.password_file {missing}: No such file or directory"
    )
    assert sample(metrics, "labd_image_refresh_failures_total", reason="credentials") == 1


async def test_token_auth_flow(
    token_registry: LocalRegistry,
    token_server: TokenServer,
    catalogs: CatalogFactory,
    tmp_path: Path,
) -> None:
    digests = await push_all(token_registry)
    password = tmp_path / "password"
    password.write_text(USERS["alice"])
    config = images_config(token_registry, username="alice", password_file=str(password))
    catalog = catalogs(config)
    assert await catalog.refresh()
    recommended = catalog.resolve("image_class", "recommended")
    assert recommended.reference == pinned(token_registry, "w_2026_47", digests["w_2026_47"])
    assert token_server.requests[0] == {
        "service": TokenServer.service,
        "scope": "repository:sciplat/lab:pull",
    }
    # One token per refresh, shared by the concurrent manifest HEADs.
    assert len(token_server.requests) == 1


async def test_token_server_refusal_is_reported(
    token_registry: LocalRegistry,
    token_server: TokenServer,
    catalogs: CatalogFactory,
    tmp_path: Path,
) -> None:
    password = tmp_path / "password"
    password.write_text("wrong")
    metrics = Metrics()
    config = images_config(token_registry, username="alice", password_file=str(password))
    catalog = catalogs(config, metrics)
    with capture_logs() as logs:
        assert not await catalog.refresh()
    assert logs[0]["error"] == f"token server {token_server.realm} refused user 'alice' (HTTP 401)"
    assert "wrong" not in logs[0]["error"]
    assert sample(metrics, "labd_image_refresh_failures_total", reason="auth") == 1

    anonymous = catalogs(images_config(token_registry), metrics)
    with capture_logs() as logs:
        assert not await anonymous.refresh()
    assert logs[0]["error"] == (
        f"token server {token_server.realm} refused anonymous access (HTTP 401)"
    )


async def test_bearer_token_file(
    token_registry: LocalRegistry,
    token_server: TokenServer,
    catalogs: CatalogFactory,
    tmp_path: Path,
) -> None:
    await push_all(token_registry)
    token_file = tmp_path / "token"
    token_file.write_text(token_server.token("ci", "repository:sciplat/lab:pull"))
    catalog = catalogs(images_config(token_registry, token_file=str(token_file)))
    assert await catalog.refresh()
    assert len(catalog.current.images) == 6
    assert token_server.requests == []

    token_file.write_text(token_server.token("ci", "repository:other/repo:pull"))
    with capture_logs() as logs:
        assert not await catalog.refresh()
    assert logs[0]["error"] == (
        f"registry {token_registry.url} refused the token of images.registry.token_file"
    )


async def test_unknown_repository(registry: LocalRegistry, catalogs: CatalogFactory) -> None:
    catalog = catalogs(images_config(registry))
    with capture_logs() as logs:
        assert not await catalog.refresh()
    assert logs[0]["reason"] == "not_found"
    assert logs[0]["error"] == "registry has no repository 'sciplat/lab'"
