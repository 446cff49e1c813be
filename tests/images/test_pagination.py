"""``Link`` pagination of the tag list, over real HTTP.

Debian's registry (distribution 2.8) ignores ``n`` on tag lists and never
paginates them, while newer registries (distribution 3, Harbor, GHCR) do.
This server answers the two calls labd makes the way those registries do:
pages of ``n`` tags with a relative ``Link: <...>; rel="next"``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from labd.config import RegistryConfig
from labd.images.registry import RegistryClient, RegistryError
from tests.support.processes import free_port

TAGS = [f"w_2026_{week:02d}" for week in range(1, 8)]
PAGE = 3


def digest_of(tag: str) -> str:
    return "sha256:" + f"{TAGS.index(tag) + 1:064x}"


async def tags_list(request: web.Request) -> web.Response:
    wanted = min(int(request.query.get("n", PAGE)), PAGE)
    last = request.query.get("last")
    start = TAGS.index(last) + 1 if last else 0
    page = TAGS[start : start + wanted]
    headers = {}
    if start + wanted < len(TAGS):
        headers["Link"] = f'</v2/lab/tags/list?n={wanted}&last={page[-1]}>; rel="next"'
    return web.json_response({"name": "lab", "tags": page}, headers=headers)


async def manifest(request: web.Request) -> web.Response:
    tag = request.match_info["tag"]
    if tag not in TAGS:
        return web.Response(status=404)
    return web.Response(headers={"Docker-Content-Digest": digest_of(tag)})


@pytest.fixture
async def paginating() -> AsyncIterator[RegistryClient]:
    app = web.Application()
    app.router.add_get("/v2/lab/tags/list", tags_list)
    app.router.add_route("HEAD", "/v2/lab/manifests/{tag}", manifest)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    client = RegistryClient(RegistryConfig(url=f"http://127.0.0.1:{port}", repository="lab"))
    yield client
    await client.aclose()
    await runner.cleanup()


async def test_every_page_is_read(paginating: RegistryClient) -> None:
    tags = await paginating.list_tags()
    assert tags == TAGS
    digests = await paginating.digests([*tags, "gone"])
    assert digests == {tag: digest_of(tag) for tag in TAGS}


async def test_unreachable_registry_is_an_error() -> None:
    config = RegistryConfig(url=f"http://127.0.0.1:{free_port()}", repository="lab", timeout=1)
    client = RegistryClient(config)
    try:
        with pytest.raises(RegistryError) as info:
            await client.list_tags()
    finally:
        await client.aclose()
    assert info.value.reason == "unreachable"
    assert info.value.message.startswith(f"cannot reach registry {config.url}: ")
