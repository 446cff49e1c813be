"""Label and field selectors, parsed and matched as Kubernetes does.

Controllers find their objects by selector (``app=x,tier in (a,b)``) and a
kubelet finds its pods by field (``spec.nodeName=node``), so both grammars
are parsed strictly: a selector Kubernetes would refuse is refused here with
400 BadRequest, rather than silently matching everything.

Label selector terms (comma-separated, all must hold): ``k=v``, ``k==v``,
``k!=v``, ``k in (a,b)``, ``k notin (a,b)``, ``k`` (exists), ``!k`` (does
not exist). Field selector terms: ``path=v``, ``path==v``, ``path!=v`` over
the dotted paths a resource allows.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from labd.sim.errors import bad_request

__all__ = ["FieldSelector", "LabelSelector", "field_value"]

_KEY = r"(?:[a-z0-9A-Z.\-]+/)?[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?"
_VALUE = r"(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET_TERM = re.compile(rf"^({_KEY})\s+(in|notin)\s+\(([^)]*)\)$")
_EQ_TERM = re.compile(rf"^({_KEY})\s*(==|!=|=)\s*({_VALUE})$")
_EXISTS_TERM = re.compile(rf"^(!?)\s*({_KEY})$")

Labels = Mapping[str, str]
_Test = Callable[[Labels], bool]
#: A term that only objects with one of these values of a label satisfy.
_Required = tuple[str, frozenset[str]]


def _split_terms(text: str) -> list[str]:
    """Split on commas that are not inside a ``( ... )`` value set."""
    terms: list[str] = []
    depth = 0
    current: list[str] = []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            terms.append("".join(current).strip())
            current = []
        else:
            current.append(char)
    terms.append("".join(current).strip())
    return [t for t in terms if t]


def _label_test(term: str) -> tuple[_Test, _Required | None]:
    """Parse one term into its test and, for ``=``/``==``/``in``, the values it requires."""
    match = _SET_TERM.match(term)
    if match:
        key, op, raw = match.groups()
        values = frozenset(v.strip() for v in raw.split(",") if v.strip())
        if not values or not all(re.fullmatch(_VALUE, v) for v in values):
            raise bad_request(f"unable to parse requirement: invalid value set in {term!r}")
        if op == "in":
            return (lambda labels: labels.get(key) in values), (key, values)
        return (lambda labels: labels.get(key) not in values), None
    match = _EQ_TERM.match(term)
    if match:
        key, op, value = match.groups()
        if op == "!=":
            return (lambda labels: labels.get(key) != value), None
        return (lambda labels: labels.get(key) == value), (key, frozenset((value,)))
    match = _EXISTS_TERM.match(term)
    if match:
        negate, key = match.groups()
        if negate:
            return (lambda labels: key not in labels), None
        return (lambda labels: key in labels), None
    raise bad_request(
        f"unable to parse requirement: found {term!r}, expected a label selector term"
    )


@dataclass(frozen=True, slots=True)
class LabelSelector:
    """A parsed ``labelSelector``: every term must hold.

    Parameters
    ----------
    text
        The selector as given in the query string.
    tests
        One predicate per term.
    required
        The ``=``, ``==`` and ``in`` terms as (key, allowed values): a label
        index can answer them without a scan.
    """

    text: str
    tests: tuple[_Test, ...]
    required: tuple[_Required, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        """Parse a label selector; an empty one matches everything.

        Raises
        ------
        ApiError
            400 BadRequest on a malformed selector.
        """
        text = text or ""
        parsed = [_label_test(term) for term in _split_terms(text)]
        return cls(
            text,
            tuple(test for test, _ in parsed),
            tuple(required for _, required in parsed if required is not None),
        )

    def matches(self, labels: Labels | None) -> bool:
        """Return whether an object with ``labels`` is selected."""
        present = labels or {}
        return all(test(present) for test in self.tests)

    @property
    def empty(self) -> bool:
        """Whether the selector selects everything."""
        return not self.tests


def field_value(obj: Mapping[str, Any], path: str) -> str:
    """Return the string value of a dotted field path, ``""`` when unset.

    Kubernetes compares field selectors against string renderings; a missing
    field compares as the empty string, and booleans as ``true``/``false``.
    """
    node: Any = obj
    for part in path.split("."):
        if not isinstance(node, Mapping):
            return ""
        node = node.get(part)
    if node is None:
        return ""
    if isinstance(node, bool):
        return "true" if node else "false"
    if isinstance(node, Mapping):
        # ``source`` on an Event is an object; Kubernetes selects on its component.
        return str(node.get("component", ""))
    return str(node)


@dataclass(frozen=True, slots=True)
class FieldSelector:
    """A parsed ``fieldSelector``: every ``path op value`` term must hold.

    Parameters
    ----------
    text
        The selector as given in the query string.
    terms
        ``(path, equal, value)`` per term; ``equal`` is False for ``!=``.
    """

    text: str
    terms: tuple[tuple[str, bool, str], ...]

    @classmethod
    def parse(cls, text: str | None, allowed: tuple[str, ...]) -> FieldSelector:
        """Parse a field selector over the ``allowed`` paths.

        Raises
        ------
        ApiError
            400 BadRequest on a malformed selector or an unsupported field,
            with Kubernetes' wording.
        """
        terms: list[tuple[str, bool, str]] = []
        for term in _split_terms(text or ""):
            match = re.fullmatch(r"([A-Za-z0-9_.]+)\s*(==|!=|=)\s*(.*)", term)
            if not match:
                raise bad_request(f"invalid selector: {term!r}; can't understand {term!r}")
            path, op, value = match.groups()
            if path not in allowed:
                raise bad_request(
                    f"field label not supported: {path} (allowed: {', '.join(allowed)})"
                )
            terms.append((path, op != "!=", value.strip()))
        return cls(text or "", tuple(terms))

    def matches(self, obj: Mapping[str, Any]) -> bool:
        """Return whether ``obj`` is selected."""
        return all((field_value(obj, path) == value) == equal for path, equal, value in self.terms)

    @property
    def empty(self) -> bool:
        """Whether the selector selects everything."""
        return not self.terms

    def only_name(self) -> str | None:
        """Return the name if the selector is exactly ``metadata.name=<x>``.

        Lets a list by name (how clients GET-or-watch one object) skip the scan.
        """
        if len(self.terms) == 1 and self.terms[0][0] == "metadata.name" and self.terms[0][1]:
            return self.terms[0][2]
        return None
