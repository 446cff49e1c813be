"""JupyterHub usernames and the Kubernetes names derived from them.

JupyterHub allows usernames that Kubernetes does not (upper case, ``@``,
``.``, ``_``, ``+``, up to 255 characters), so each lab's object names use a
*slug*: lowercase, other characters replaced by ``-``, and a hash of the
original name appended whenever the slug differs from it or could be
mistaken for another user's slug.  The slug is deterministic (the same user
always gets the same namespace, which reconciliation after a restart relies
on) and two usernames never share one: a slug without a hash is the username
itself, and a slug with one carries 60 bits of the username's SHA-256.
"""

from __future__ import annotations

import base64
import hashlib
import re
import unicodedata
from typing import Final

__all__ = [
    "MAX_USERNAME_LENGTH",
    "lab_namespace",
    "slugify",
    "username_problem",
]

MAX_USERNAME_LENGTH: Final = 255
_DNS_LABEL_MAX: Final = 63
_HASH_CHARS: Final = 12
_PLAIN_SLUG = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")
_LOOKS_HASHED = re.compile(rf".*-[a-z2-7]{{{_HASH_CHARS}}}")
_SPECIALS: Final = frozenset("-._@+")


def username_problem(username: str) -> str | None:
    """Say why ``username`` is not a legal JupyterHub username, or `None`.

    Legal: 1 to 255 characters, each a letter, a digit, a combining mark or
    one of ``-._@+``.  Letters and digits of any script are accepted, as
    JupyterHub accepts them (``renée``, fullwidth or Cyrillic look-alikes of ``alice``);
    they are not folded together: each is its own user, with a slug of its
    own (`slugify` hashes every name that is not plain lowercase ASCII).
    Spaces, controls, and invisible formatting characters (zero-width
    joiners, direction marks) are refused: they make names that look alike
    but differ.
    """
    if not username:
        return "Username is empty"
    if len(username) > MAX_USERNAME_LENGTH:
        return f"Username is longer than {MAX_USERNAME_LENGTH} characters"
    for char in username:
        if not (char.isalnum() or char in _SPECIALS or unicodedata.category(char).startswith("M")):
            return f"Username contains the forbidden character {char!r}"
    return None


def _hash(username: str) -> str:
    digest = hashlib.sha256(username.encode()).digest()
    return base64.b32encode(digest).decode().lower()[:_HASH_CHARS]


def slugify(username: str, *, max_length: int = _DNS_LABEL_MAX) -> str:
    """Derive the Kubernetes-safe name of a user.

    Parameters
    ----------
    username
        A legal JupyterHub username.
    max_length
        Longest allowed slug (the namespace prefix takes part of the 63
        characters of a DNS label).

    Returns
    -------
    str
        A DNS-1123 label of at most ``max_length`` characters.
    """
    if max_length < _HASH_CHARS + 2:
        raise ValueError(f"max_length {max_length} leaves no room for a slug")
    if (
        len(username) <= max_length
        and _PLAIN_SLUG.fullmatch(username)
        and not _LOOKS_HASHED.fullmatch(username)
    ):
        return username
    cleaned = re.sub(r"[^a-z0-9]+", "-", username.lower()).strip("-")
    stem = cleaned[: max_length - _HASH_CHARS - 1].rstrip("-") or "u"
    return f"{stem}-{_hash(username)}"


def lab_namespace(prefix: str, username: str) -> tuple[str, str]:
    """Return the slug and the namespace of a user's lab.

    Parameters
    ----------
    prefix
        The configured namespace prefix.
    username
        A legal JupyterHub username.

    Returns
    -------
    tuple of str
        ``(slug, namespace)`` where the namespace is ``<prefix>-<slug>``.
    """
    slug = slugify(username, max_length=_DNS_LABEL_MAX - len(prefix) - 1)
    return slug, f"{prefix}-{slug}"
