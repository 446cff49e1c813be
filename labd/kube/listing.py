"""Paged LISTs of any kind of object, read as a stream of JSON.

`list_objects` follows continue tokens page by page, and starts over once
when a continue token has expired.  `labd.kube.storage` lists the
reconciler's namespaces and pods with it, `labd.kube.watching` the pods a
watch follows on from.

Each page is parsed as it arrives (`KubeApi.stream`): every listed object
is decoded as soon as its text is complete and converted at once, so a
LIST holds the converted objects and about one chunk of the body, never a
page's whole body or its whole JSON tree.  A page of 10,000 pods is some
35 MB of JSON: read whole, it cost some 200 MB at its peak.

The objects are decoded by `json`'s C scanner (`json.JSONDecoder.raw_decode`),
the page's own braces, commas and member names by `_PageParser`.  ijson
(yajl2_c) was measured slower: its ``items_coro`` took about 1.3 s to
parse and convert 10,000 pods, against about 0.3 s for `json`, whole or
streamed.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, Generic, TypeVar

import structlog

from labd.kube.client import KubeApi, Reply, UnreadableBodyError, collector_paused

__all__ = ["LIST_PAGE_SIZE", "list_objects"]

LIST_PAGE_SIZE: Final = 10_000
"""Objects per page of a LIST: a reconcile of 10,000 labs is one request per kind,
while one response stays bounded on larger clusters."""

_MAX_VALUE: Final = 16 * 2**20
"""Characters of one undecodable value after which it is malformed rather than
incomplete: far more than any object etcd stores (1.5 MiB by default)."""

_NOT_WHITESPACE: Final = re.compile(r"[^ \t\n\r]")

_LOG = structlog.get_logger()

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")

_Steps = Generator[None, None, _Result]
"""A step of `_PageParser`: it yields while it waits for more of the body."""


@dataclass(frozen=True, slots=True)
class _Page(Generic[_Item]):
    """What a LIST page says: its ``metadata`` and its converted ``items``."""

    metadata: dict[str, Any]
    items: list[_Item]


async def list_objects(
    api: KubeApi,
    kind: str,
    method: Callable[..., Awaitable[Any]],
    *,
    convert: Callable[[dict[str, Any]], _Item],
    label_selector: str | None = None,
    field_selector: str | None = None,
    page_size: int = LIST_PAGE_SIZE,
) -> tuple[list[_Item], str]:
    """LIST objects page by page, following continue tokens.

    Each page is parsed and its objects converted as its body arrives,
    one chunk at a time with the collector paused (see `collector_paused`
    and `_read_page`).

    A continue token expires (410) once the API server has compacted the
    version the LIST started from; the pages read so far may then be
    stale, so the LIST starts over, once.

    Parameters
    ----------
    api
        Makes the calls.
    kind
        Kind listed, for errors and counts.
    method
        The generated list method, such as
        ``CoreV1Api(client).list_pod_for_all_namespaces``.
    convert
        Turns one listed object (a JSON dict) into what the caller keeps.
    label_selector
        Only objects with these labels.
    field_selector
        Only objects with these fields.
    page_size
        Objects per page.

    Returns
    -------
    tuple
        The converted objects, and the resourceVersion of the LIST
        (that of its first page, which the later pages are consistent
        with) from which a watch can follow.

    Raises
    ------
    KubeError
        If a call failed after its retries, or a page is not a JSON object.
    """
    selectors: dict[str, str] = {}
    if label_selector:
        selectors["label_selector"] = label_selector
    if field_selector:
        selectors["field_selector"] = field_selector
    items: list[_Item] = []
    version = ""
    token: str | None = None
    restarted = False
    while True:
        extra = {"_continue": token} if token else {}
        page = await api.stream(
            "list",
            kind,
            method,
            consume=partial(_read_page, convert=convert),
            limit=page_size,
            accept=() if restarted or not token else (410,),
            **selectors,
            **extra,
        )
        if isinstance(page, Reply):  # 410, the one status accepted
            _LOG.info("LIST continue token expired; listing again", kind=kind)
            items, token, restarted = [], None, True
            continue
        items.extend(page.items)
        if token is None:
            version = str(page.metadata.get("resourceVersion") or "")
        token = page.metadata.get("continue")
        if not token:
            return items, version


async def _read_page(
    chunks: AsyncIterator[bytes], *, convert: Callable[[dict[str, Any]], _Item]
) -> _Page[_Item]:
    """Parse a LIST page from the chunks of its body, converting its objects.

    Each chunk is parsed with the collector paused: a page's objects are
    new dicts, lists and strings by the hundred thousand, none of them in
    a cycle, and each is dropped as soon as it is converted.

    Raises
    ------
    UnreadableBodyError
        If the page is not a JSON object, or has malformed members.
    """
    parser = _PageParser(convert)
    async for chunk in chunks:
        with collector_paused():
            parser.feed(chunk)
    with collector_paused():
        return parser.close()


class _PageParser(Generic[_Item]):
    """Parses a LIST page pushed to it chunk by chunk.

    The page's object is walked member by member by generator steps that
    yield whenever the text received so far runs out.  Member names and
    values are decoded whole by `json`'s scanner, except for ``items``,
    whose elements are decoded and converted one by one; only the text
    not decoded yet is kept.  A value whose text fails to decode is tried
    again once that text has doubled (so a large object costs a few
    tries, not one per chunk), and is malformed once it is longer than
    `_MAX_VALUE` or the body has ended.

    Parameters
    ----------
    convert
        Turns one listed object into what the caller keeps.
    """

    def __init__(self, convert: Callable[[dict[str, Any]], _Item]) -> None:
        self._convert = convert
        self._metadata: dict[str, Any] = {}
        self._items: list[_Item] = []
        self._decode_utf8 = codecs.getincrementaldecoder("utf-8")().decode
        self._json = json.JSONDecoder()
        self._text = ""
        """The text being parsed, from its start or from a value not decoded yet."""
        self._pos = 0
        """Where the parse is in `_text`."""
        self._arrived: list[str] = []
        """Text received since `_text` was last gathered."""
        self._arrived_length = 0
        self._ended = False
        self._steps = self._page()

    def feed(self, chunk: bytes) -> None:
        """Parse the next chunk of the body, as far as it goes.

        Raises
        ------
        UnreadableBodyError
            If what was received is not the start of a LIST page.
        """
        self._append(chunk, final=False)

    def close(self) -> _Page[_Item]:
        """Finish the parse once the body has ended; return what the page says.

        Raises
        ------
        UnreadableBodyError
            If the body is not a whole LIST page.
        """
        self._ended = True
        self._append(b"", final=True)
        return _Page(self._metadata, self._items)

    def _append(self, chunk: bytes, *, final: bool) -> None:
        """Decode a chunk of the body and parse on."""
        try:
            text = self._decode_utf8(chunk, final)
        except UnicodeDecodeError as error:
            raise _malformed(f"not UTF-8 ({error.reason})") from None
        self._arrived.append(text)
        self._arrived_length += len(text)
        next(self._steps, None)  # Parse on; None once the page is whole.

    def _gather(self) -> None:
        """Append the text arrived to `_text`, dropping what is parsed."""
        if self._arrived:
            self._text = self._text[self._pos :] + "".join(self._arrived)
            self._pos = 0
            self._arrived.clear()
            self._arrived_length = 0

    def _unparsed(self) -> int:
        """Return how many characters have arrived and are not parsed yet."""
        return len(self._text) - self._pos + self._arrived_length

    def _page(self) -> _Steps[None]:
        """Parse the page: an object, then nothing but whitespace."""
        yield from self._take("{")
        if (yield from self._peek()) == "}":
            self._pos += 1
        else:
            while True:
                yield from self._member()
                if (yield from self._take(",}")) == "}":
                    break
        yield from self._end()

    def _member(self) -> _Steps[None]:
        """Parse one member of the page, keeping its metadata and items."""
        key = yield from self._value()
        if not isinstance(key, str):
            raise _malformed("a member name is not a string")
        yield from self._take(":")
        if key == "items":
            yield from self._list()
            return
        value = yield from self._value()
        if key == "metadata":
            if not isinstance(value, dict):
                raise _malformed("its metadata is not an object")
            self._metadata = value

    def _list(self) -> _Steps[None]:
        """Parse the page's items, converting each as soon as it is decoded."""
        if (yield from self._peek()) != "[":
            if (yield from self._value()) is not None:
                raise _malformed("its items are not an array")
            return
        self._pos += 1
        if (yield from self._peek()) == "]":
            self._pos += 1
            return
        while True:
            item = yield from self._value()
            if not isinstance(item, dict):
                raise _malformed("a listed object is not an object")
            self._items.append(self._convert(item))
            if (yield from self._take(",]")) == "]":
                return

    def _peek(self) -> _Steps[str]:
        """Return the next character after whitespace, once it has come, not taken."""
        while True:
            self._gather()
            found = _NOT_WHITESPACE.search(self._text, self._pos)
            if found:
                self._pos = found.start()
                return found.group()
            self._pos = len(self._text)
            if self._ended:
                raise _malformed("it ends early")
            yield

    def _take(self, expected: str) -> _Steps[str]:
        """Take the next character after whitespace, one of ``expected``."""
        char = yield from self._peek()
        if char not in expected:
            wanted = " or ".join(map(repr, expected))
            raise _malformed(f"{char!r} where {wanted} was expected")
        self._pos += 1
        return char

    def _value(self) -> _Steps[Any]:
        """Decode the next value once its text has come whole."""
        yield from self._peek()
        while True:
            self._gather()
            try:
                value, end = self._json.raw_decode(self._text, self._pos)
            except json.JSONDecodeError as error:
                if self._ended or self._unparsed() > _MAX_VALUE:
                    raise _malformed(error.msg) from None
            else:
                # A value that ends with the text so far may be a number going on.
                if end < len(self._text) or self._ended:
                    self._pos = end
                    return value
            wanted = min(2 * self._unparsed(), _MAX_VALUE + 1)
            while self._unparsed() < wanted and not self._ended:
                yield

    def _end(self) -> _Steps[None]:
        """Check that only whitespace follows the page, up to the body's end."""
        while True:
            self._gather()
            if _NOT_WHITESPACE.search(self._text, self._pos):
                raise _malformed("text follows it")
            self._pos = len(self._text)
            if self._ended:
                return
            yield


def _malformed(reason: str) -> UnreadableBodyError:
    """The error for a page that is not a LIST's JSON object, saying why."""
    return UnreadableBodyError(f"the LIST answer is not a JSON object: {reason}")
