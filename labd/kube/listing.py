"""Paged LISTs of any kind of object, read as plain JSON.

`list_objects` follows continue tokens page by page, converts each listed
object as its page is parsed, and starts over once when a continue token
has expired.  `labd.kube.storage` lists the reconciler's namespaces and
pods with it, `labd.kube.watching` the pods a watch follows on from.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypeVar

import structlog

from labd.kube.client import KubeApi, KubeError, collector_paused

__all__ = ["LIST_PAGE_SIZE", "list_objects"]

LIST_PAGE_SIZE: Final = 10_000
"""Objects per page of a LIST: a reconcile of 10,000 labs is one request per kind,
while one response stays bounded on larger clusters."""

_LOG = structlog.get_logger()

_Item = TypeVar("_Item")


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

    Each page is parsed and its objects converted with the collector
    paused, and the parsed page is dropped before it resumes (see
    `collector_paused`): a page of 10,000 pods costs the JSON and the
    conversion, not repeated passes of the collector over it.

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
        If a call failed after its retries.
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
        reply = await api.call(
            "list",
            kind,
            method,
            limit=page_size,
            accept=() if restarted or not token else (410,),
            raw=True,
            **selectors,
            **extra,
        )
        if reply.status == 410:
            _LOG.info("LIST continue token expired; listing again", kind=kind)
            items, token, restarted = [], None, True
            continue
        with collector_paused():
            metadata, page = _parse_page(kind, reply.raw)
            items.extend(map(convert, page))
            del page
        if token is None:
            version = str(metadata.get("resourceVersion") or "")
        token = metadata.get("continue")
        if not token:
            return items, version


def _parse_page(kind: str, raw: bytes) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Return the ``metadata`` and ``items`` of a LIST page."""
    try:
        page = json.loads(raw)
    except ValueError:
        page = None
    if not isinstance(page, dict):
        raise KubeError(
            verb="list",
            kind=kind,
            namespace=None,
            name=None,
            status=None,
            reason=None,
            message="the LIST answer is not a JSON object",
        )
    return page.get("metadata") or {}, page.get("items") or []
