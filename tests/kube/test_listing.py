"""Paged LISTs read as a stream, over real HTTP and piece by piece.

The simulated cluster always answers a LIST whole and well formed, with
its metadata first.  `CannedApi` answers ``GET /api/v1/pods`` instead
with bodies a test writes piece by piece over chunked HTTP: split
anywhere, metadata last, malformed halfway, cut short, stalled, or
made up as they are sent (so that the server never holds them whole).
The parser is also fed bodies byte by byte directly.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from kubernetes_asyncio.client import ApiClient, Configuration, CoreV1Api

from labd.kube.client import KubeApi, KubeError, RetryPolicy, UnreadableBodyError
from labd.kube.listing import _MAX_VALUE, _PageParser, list_objects
from tests.kube.conftest import FAST_RETRY
from tests.support.processes import free_port


def pod(index: int, *, padding: int = 0) -> dict[str, Any]:
    """A listed pod, named ``pod<index>``; ``padding`` fattens it."""
    return {
        "metadata": {
            "name": f"pod{index}",
            "namespace": "labd-été-😀",
            "annotations": {"padding": "x" * padding, "number": 12345.5e-3},
        },
        "status": {"phase": "Running"},
    }


def page(
    items: list[dict[str, Any]], metadata: dict[str, Any], *, metadata_last: bool = False
) -> bytes:
    """A LIST page as the API server writes it, or with its metadata last."""
    members: dict[str, Any] = {"kind": "PodList", "apiVersion": "v1"}
    if metadata_last:
        members |= {"items": items, "metadata": metadata}
    else:
        members |= {"metadata": metadata, "items": items}
    return json.dumps(members, ensure_ascii=False, indent=1).encode()


def pieces(body: bytes, size: int) -> list[bytes]:
    """Cut ``body`` into pieces of ``size`` bytes."""
    return [body[start : start + size] for start in range(0, len(body), size)]


@dataclass
class Answer:
    """One answer of `CannedApi`: a status and a body written piece by piece."""

    body: Iterable[bytes]
    status: int = 200
    end: str = "whole"
    """``whole``; ``cut``: the connection closes after the pieces, the
    chunked body unfinished; ``stall``: nothing more comes until teardown."""


@dataclass
class CannedApi:
    """Answers ``GET /api/v1/pods`` with the queued answers, in order."""

    url: str
    answers: list[Answer] = field(default_factory=list)
    queries: list[dict[str, str]] = field(default_factory=list)
    released: asyncio.Event = field(default_factory=asyncio.Event)

    async def list_pods(self, request: web.Request) -> web.StreamResponse:
        self.queries.append(dict(request.query))
        answer = self.answers.pop(0)
        response = web.StreamResponse(
            status=answer.status, headers={"Content-Type": "application/json"}
        )
        await response.prepare(request)
        try:
            for piece in answer.body:
                await response.write(piece)
                await asyncio.sleep(0)
        except ConnectionResetError:  # The client gave up on a malformed body.
            return response
        if answer.end == "cut":
            assert request.transport is not None
            request.transport.close()
        elif answer.end == "stall":
            await self.released.wait()
        else:
            await response.write_eof()
        return response


@pytest.fixture
async def canned() -> AsyncIterator[CannedApi]:
    port = free_port()
    api = CannedApi(url=f"http://127.0.0.1:{port}")
    app = web.Application()
    app.router.add_get("/api/v1/pods", api.list_pods)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield api
    api.released.set()
    await runner.cleanup()


@pytest.fixture
async def canned_client(canned: CannedApi) -> AsyncIterator[ApiClient]:
    async with ApiClient(Configuration(host=canned.url)) as client:
        yield client


def kube_api(
    client: ApiClient,
    calls: list[tuple[str, str, bool]],
    *,
    request_timeout: float = 5.0,
    retry: RetryPolicy = FAST_RETRY,
) -> KubeApi:
    return KubeApi(
        client,
        request_timeout=request_timeout,
        retry=retry,
        on_call=lambda verb, kind, error: calls.append((verb, kind, error)),
    )


async def list_names(api: KubeApi, client: ApiClient) -> tuple[list[str], str]:
    return await list_objects(
        api,
        "Pod",
        CoreV1Api(client).list_pod_for_all_namespaces,
        convert=lambda item: str(item["metadata"]["name"]),
    )


def parse_in_pieces(body: bytes, size: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    parser = _PageParser(lambda item: item)
    for piece in pieces(body, size):
        parser.feed(piece)
    result = parser.close()
    return result.metadata, result.items


# The parser, fed directly ------------------------------------------------------------


@pytest.mark.parametrize("metadata_last", [False, True])
@pytest.mark.parametrize("size", [1, 2, 3, 5, 64, 2**20])
def test_a_page_split_anywhere_parses_as_a_whole(size: int, metadata_last: bool) -> None:
    items = [pod(index, padding=index * 40) for index in range(6)]
    metadata = {"resourceVersion": "42", "continue": "next"}
    body = page(items, metadata, metadata_last=metadata_last)
    assert parse_in_pieces(body, size) == (metadata, items)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"metadata":{},"items":[]}', ({}, [])),
        (b'{"items":null,"extra":[1,{"a":[]}]}', ({}, [])),
        (b" {} \n", ({}, [])),
        # A number as the last thing of a piece may go on in the next one.
        (b'{"count":12345,"items":[{"a":1}]}', ({}, [{"a": 1}])),
    ],
)
def test_pages_with_few_members_parse(
    body: bytes, expected: tuple[dict[str, Any], list[dict[str, Any]]]
) -> None:
    for size in (1, 7, len(body)):
        assert parse_in_pieces(body, size) == expected


def test_an_object_longer_than_many_pieces_parses() -> None:
    big = pod(0, padding=4 * 2**20)
    body = page([big, pod(1)], {"resourceVersion": "1"})
    assert parse_in_pieces(body, 64 * 1024) == ({"resourceVersion": "1"}, [big, pod(1)])


def test_a_value_that_never_ends_is_malformed_before_the_body_ends() -> None:
    parser = _PageParser(lambda item: item)
    parser.feed(b'{"metadata":{},"items":[{"metadata":{"name":"')
    piece = b"x" * 2**16
    # Up to _MAX_VALUE characters, the object may still come whole...
    for _ in range(_MAX_VALUE // len(piece) - 1):
        parser.feed(piece)
    # ...and beyond, it is malformed: the rest of the body is not kept.
    with pytest.raises(UnreadableBodyError, match="Unterminated string"):
        parser.feed(piece)


# Over HTTP ---------------------------------------------------------------------------


async def test_a_list_in_small_pieces_with_metadata_last_yields_everything(
    canned: CannedApi, canned_client: ApiClient, calls: list[tuple[str, str, bool]]
) -> None:
    first = page([pod(0), pod(1)], {"resourceVersion": "7", "continue": "c1"}, metadata_last=True)
    second = page([pod(2)], {"resourceVersion": "8"}, metadata_last=True)
    canned.answers = [Answer(pieces(first, 7)), Answer(pieces(second, 3))]

    names, version = await list_names(kube_api(canned_client, calls), canned_client)

    assert (names, version) == (["pod0", "pod1", "pod2"], "7")
    assert [query.get("continue") for query in canned.queries] == [None, "c1"]
    assert calls == [("list", "Pod", False)] * 2


async def test_an_expired_continue_token_lists_again_once(
    canned: CannedApi, canned_client: ApiClient, calls: list[tuple[str, str, bool]]
) -> None:
    gone = {"kind": "Status", "status": "Failure", "reason": "Expired", "code": 410}
    canned.answers = [
        Answer([page([pod(0)], {"resourceVersion": "7", "continue": "c1"})]),
        Answer([json.dumps(gone).encode()], status=410),
        Answer([page([pod(1)], {"resourceVersion": "9", "continue": "c2"})]),
        Answer([page([pod(2)], {"resourceVersion": "9"})]),
    ]

    names, version = await list_names(kube_api(canned_client, calls), canned_client)

    assert (names, version) == (["pod1", "pod2"], "9")
    assert [query.get("continue") for query in canned.queries] == [None, "c1", None, "c2"]
    assert calls == [("list", "Pod", False)] * 4


ITEM = b'{"metadata":{"name":"a"}}'


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b"null",
        b"",
        b"{",
        b'{"metadata":{}, "items":[' + b",".join([ITEM] * 50) + b',{"a" 2},' + ITEM + b"]}",
        b'{"metadata":{}, "items":[' + ITEM + b"," + ITEM,
        b'{"metadata":{}, "items":[]} {}',
        b'{"metadata":"v1", "items":[]}',
        b'{"metadata":{}, "items":{}}',
        b'{"metadata":{}, "items":[1]}',
        b'{"metadata":{}, "items":[{"metadata":{"name":"\xff"}}]}',
    ],
)
async def test_a_list_answer_that_is_not_a_json_object_is_an_error(
    canned: CannedApi,
    canned_client: ApiClient,
    calls: list[tuple[str, str, bool]],
    body: bytes,
) -> None:
    canned.answers = [Answer(pieces(body, 5))]
    with pytest.raises(KubeError, match="not a JSON object") as caught:
        await list_names(kube_api(canned_client, calls), canned_client)
    error = caught.value
    assert (error.status, error.reason) == (200, "OK")
    assert str(error).startswith("list Pod (all namespaces): 200 OK: the LIST answer is not")
    assert isinstance(error.__cause__, UnreadableBodyError)
    # Not retried: the same answer would come again.
    assert len(canned.queries) == 1
    assert calls == [("list", "Pod", True)]


async def test_a_page_cut_short_is_read_again_from_its_start(
    canned: CannedApi, canned_client: ApiClient, calls: list[tuple[str, str, bool]]
) -> None:
    body = page([pod(index) for index in range(40)], {"resourceVersion": "3"})
    canned.answers = [
        Answer(pieces(body[: len(body) // 2], 512), end="cut"),
        Answer(pieces(body, 512)),
    ]

    names, version = await list_names(kube_api(canned_client, calls), canned_client)

    assert (names, version) == ([f"pod{index}" for index in range(40)], "3")
    assert calls == [("list", "Pod", True), ("list", "Pod", False)]


async def test_a_stalled_page_times_out_and_is_retried(
    canned: CannedApi, canned_client: ApiClient, calls: list[tuple[str, str, bool]]
) -> None:
    body = page([pod(0), pod(1)], {"resourceVersion": "3"})
    canned.answers = [Answer([body[:40]], end="stall"), Answer([body])]
    api = kube_api(canned_client, calls, request_timeout=0.3)

    names, _ = await list_names(api, canned_client)

    assert names == ["pod0", "pod1"]
    assert calls == [("list", "Pod", True), ("list", "Pod", False)]


def made_up_page(count: int, padding: int) -> Iterator[bytes]:
    """A page of ``count`` pods, made up as it is written."""
    yield b'{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"5"},"items":['
    for index in range(count):
        yield (b"," if index else b"") + json.dumps(pod(index, padding=padding)).encode()
    yield b"]}"


async def test_a_large_list_is_never_held_whole(
    canned: CannedApi, canned_client: ApiClient, calls: list[tuple[str, str, bool]]
) -> None:
    count, padding = 4000, 2000  # Some 8.5 MB of JSON.
    canned.answers = [Answer(made_up_page(count, padding))]
    api = kube_api(canned_client, calls)
    tracemalloc.start()
    try:
        names, _ = await list_names(api, canned_client)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(names) == count
    # The body and its parsed objects would be ten times this.
    assert peak < 2 * 2**20
