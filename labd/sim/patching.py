"""The three PATCH formats a Kubernetes client sends.

- ``application/merge-patch+json`` (RFC 7386): objects merge recursively,
  ``null`` deletes a key, anything else (lists included) replaces.
- ``application/strategic-merge-patch+json``: what kubernetes-asyncio sends
  for a dict body. Real Kubernetes merges some lists by a key (containers by
  ``name``, conditions by ``type``) and honours ``$patch`` directives; the sim
  treats it as a merge patch, so a list in a patch replaces the whole list.
  A client that sends complete lists (the common case) sees no difference.
- ``application/json-patch+json`` (RFC 6902): a list of operations (add,
  remove, replace, move, copy, test) addressed by JSON pointers.

Patches never mutate their input: stored objects are shared with the watch
event log, so every function here returns a new structure.
"""

from __future__ import annotations

import copy
from typing import Any

from labd.sim.errors import ApiError, bad_request

__all__ = ["JSON_PATCH", "MERGE", "STRATEGIC", "apply_patch", "json_patch", "merge_patch"]

MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply an RFC 7386 merge patch.

    Parameters
    ----------
    target
        The current document (not modified).
    patch
        The merge patch.

    Returns
    -------
    Any
        The patched document.
    """
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise bad_request(f"json patch: invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: list[str], path: str) -> Any:
    node = doc
    for part in parts[:-1]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            raise ApiError(422, f"json patch: path {path!r} does not exist", reason="Invalid")
    return node


def _get(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        return doc
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise ApiError(422, f"json patch: path {path!r} does not exist", reason="Invalid")


def _remove(doc: Any, path: str) -> Any:
    parts = _pointer(path)
    if not parts:
        raise bad_request("json patch: cannot remove the whole document")
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise ApiError(422, f"json patch: path {path!r} does not exist", reason="Invalid")


def _add(doc: Any, path: str, value: Any, *, replace: bool) -> Any:
    parts = _pointer(path)
    if not parts:
        return value
    parent = _parent(doc, parts, path)
    last = parts[-1]
    if isinstance(parent, dict):
        if replace and last not in parent:
            raise ApiError(422, f"json patch: path {path!r} does not exist", reason="Invalid")
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-" and not replace:
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent) - (1 if replace else 0):
            if replace:
                parent[int(last)] = value
            else:
                parent.insert(int(last), value)
        else:
            raise ApiError(422, f"json patch: index in {path!r} out of range", reason="Invalid")
    else:
        raise ApiError(422, f"json patch: path {path!r} does not exist", reason="Invalid")
    return doc


def json_patch(target: Any, operations: Any) -> Any:
    """Apply an RFC 6902 JSON patch.

    Parameters
    ----------
    target
        The current document (not modified).
    operations
        The list of operations.

    Returns
    -------
    Any
        The patched document.

    Raises
    ------
    ApiError
        400 on a malformed patch, 422 when a path does not exist or a
        ``test`` fails (Kubernetes answers 422 for those as well).
    """
    if not isinstance(operations, list):
        raise bad_request("json patch: the body must be a list of operations")
    doc = copy.deepcopy(target)
    for operation in operations:
        if not isinstance(operation, dict) or "op" not in operation or "path" not in operation:
            raise bad_request(f"json patch: malformed operation {operation!r}")
        op, path = operation["op"], operation["path"]
        if op in ("add", "replace", "test") and "value" not in operation:
            raise bad_request(f"json patch: operation {op!r} needs a value")
        if op == "add":
            doc = _add(doc, path, copy.deepcopy(operation["value"]), replace=False)
        elif op == "replace":
            doc = _add(doc, path, copy.deepcopy(operation["value"]), replace=True)
        elif op == "remove":
            _remove(doc, path)
        elif op in ("move", "copy"):
            if "from" not in operation:
                raise bad_request(f"json patch: operation {op!r} needs 'from'")
            source = operation["from"]
            value = _remove(doc, source) if op == "move" else copy.deepcopy(_get(doc, source))
            doc = _add(doc, path, value, replace=False)
        elif op == "test":
            if _get(doc, path) != operation["value"]:
                raise ApiError(422, f"json patch: test failed at {path!r}", reason="Invalid")
        else:
            raise bad_request(f"json patch: unknown operation {op!r}")
    return doc


def apply_patch(target: dict[str, Any], patch: Any, content_type: str) -> dict[str, Any]:
    """Apply ``patch`` of the given content type to ``target``.

    Raises
    ------
    ApiError
        415 for a patch type the sim does not speak (e.g. server-side apply),
        or the errors of the chosen format.
    """
    media = content_type.split(";")[0].strip().lower()
    if media in (MERGE, STRATEGIC):
        if not isinstance(patch, dict):
            raise bad_request("merge patch: the body must be a JSON object")
        result = merge_patch(target, patch)
    elif media == JSON_PATCH:
        result = json_patch(target, patch)
    else:
        raise ApiError(
            415,
            f"the body of the request was in an unknown format - accepted media types "
            f"include: {JSON_PATCH}, {MERGE}, {STRATEGIC}",
        )
    if not isinstance(result, dict):
        raise bad_request("patch: the result is not an object")
    return result
