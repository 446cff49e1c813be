"""Bearer tokens and what each one may do.

labd never stores a plain token: the token file holds the SHA-256 of each
token with its role, one per line::

    # JupyterHub
    3b1f...e9 hub
    # a user's own token (optional)
    7c2a...04 user:alice

A presented token is hashed and compared with every entry using
`hmac.compare_digest`, and the loop never stops at the first match, so the
time an answer takes says nothing about which entry (or how much of one)
matched.  Tokens and their hashes are never logged.

The file is re-read while labd runs, so adding or revoking a token needs no
restart: on SIGHUP (`Authenticator.reload`, ``systemctl reload labd``), and
when it changes, which `Authenticator.authenticate` notices by a ``stat`` at
most once every `RECHECK_INTERVAL` seconds (no read per request).  A file
that cannot be used (a malformed line, a missing file) is logged with the
line's number and the tokens already loaded stay in force: a typo while
adding a user must not lock the hub out.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import math
import os
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import structlog

from labd.lab.errors import InvalidTokenError, PermissionDeniedError
from labd.lab.naming import username_problem
from labd.lab.records import Actor

__all__ = ["RECHECK_INTERVAL", "Access", "Authenticator", "Caller", "TokenFileError", "hash_token"]

RECHECK_INTERVAL: Final = 1.0
"""Seconds between two checks whether the token file changed."""

_HASH = re.compile(r"[0-9a-f]{64}")
_BEARER: Final = "bearer"
_logger = structlog.get_logger()

_FileIdentity = tuple[int, int, int, int, int]
"""Device, inode, size, mtime and ctime (ns) of the token file: any change
means new content, whether edited in place or replaced by a rename."""


def hash_token(token: str) -> str:
    """Return the SHA-256 hex digest of ``token``, as the token file holds it."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenFileError(Exception):
    """The token file cannot be used; the message names the line."""


class Access(enum.Enum):
    """Who may call a route."""

    PUBLIC = "public"
    """Anyone, without a token (health checks, the schema)."""

    HUB = "hub"
    """Only the hub."""

    HUB_OR_USER = "hub_or_user"
    """The hub, or the user the path names."""

    USER = "user"
    """Only a user token (the route acts for the token's user)."""


@dataclass(frozen=True, slots=True)
class Caller:
    """Who made a request, from their token."""

    username: str | None
    """The user a ``user:<name>`` token acts for; `None` for the hub."""

    @property
    def is_hub(self) -> bool:
        """Whether this is the hub's token."""
        return self.username is None

    @property
    def actor(self) -> Actor:
        """How the audit history records this caller."""
        return Actor.HUB if self.is_hub else Actor.USER

    def authorize(self, access: Access, username: str | None) -> None:
        """Refuse the call unless ``access`` lets this caller act for ``username``.

        Parameters
        ----------
        access
            Who may call the route.
        username
            The user named by the path, if the route has one.

        Raises
        ------
        PermissionDeniedError
            If the caller may not make this call.
        """
        if access is Access.PUBLIC:
            return
        if access is Access.USER:
            if self.is_hub:
                raise PermissionDeniedError("This route needs a user token")
            return
        if self.is_hub:
            return
        if access is Access.HUB:
            raise PermissionDeniedError("This route needs the hub's token")
        if username != self.username:
            raise PermissionDeniedError(f"Token may not act for user {username}")


_HUB: Final = Caller(username=None)


class Authenticator:
    """Recognises bearer tokens.

    Parameters
    ----------
    entries
        ``(sha256-hex, caller)`` pairs.
    """

    def __init__(self, entries: Iterable[tuple[str, Caller]]) -> None:
        self._entries = _encoded(entries)
        self._path: Path | None = None
        self._identity: _FileIdentity | None = None
        self._recheck_interval = math.inf
        self._checked_at = time.monotonic()

    @classmethod
    def from_file(
        cls, path: Path | None, *, recheck_interval: float = RECHECK_INTERVAL
    ) -> Authenticator:
        """Load the token file, and follow its changes; `None` means no token is valid.

        Parameters
        ----------
        path
            The token file.
        recheck_interval
            Seconds between two checks whether the file changed.

        Raises
        ------
        TokenFileError
            If the file cannot be read or a line is malformed (the message
            names the line, never its hash).
        """
        authenticator = cls([])
        if path is not None:
            authenticator._path = path
            authenticator._recheck_interval = recheck_interval
            authenticator._load()
        return authenticator

    def reload(self) -> bool:
        """Re-read the token file now, keeping the current tokens if it is unusable.

        Returns
        -------
        bool
            Whether the file was read; if not, the error is logged.
        """
        if self._path is None:
            return False
        try:
            self._load()
        except TokenFileError as exc:
            _logger.error(
                "token file not reloaded, the previous tokens stay valid", error=str(exc)
            )
            return False
        _logger.info("token file reloaded", path=str(self._path), tokens=len(self._entries))
        return True

    def _load(self) -> None:
        assert self._path is not None
        # The identity is taken before the read: a write after the stat is
        # seen as a change on the next check, even if this read caught it.
        # It is kept even when the read fails, so a broken file is reported
        # once, not at every check, and read again once it changes.
        self._identity = _identity(self._path)
        self._entries = _encoded(_read_token_file(self._path))

    def _reload_if_changed(self) -> None:
        now = time.monotonic()
        if now - self._checked_at < self._recheck_interval:
            return
        self._checked_at = now
        assert self._path is not None
        if _identity(self._path) != self._identity:
            self.reload()

    @classmethod
    def from_tokens(cls, tokens: Mapping[str, str]) -> Authenticator:
        """Build from plain tokens and their roles (``hub`` or ``user:<name>``), for tests."""
        return cls((hash_token(token), _parse_role(role)) for token, role in tokens.items())

    def authenticate(self, authorization: str | None) -> Caller:
        """Return the caller an ``Authorization`` header identifies.

        Raises
        ------
        InvalidTokenError
            If there is no bearer token or it is not known.
        """
        self._reload_if_changed()
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != _BEARER or not token:
            raise InvalidTokenError("Missing bearer token")
        digest = hash_token(token).encode()
        found: Caller | None = None
        for expected, caller in self._entries:
            # Compare with every entry, no early exit: constant time overall.
            if hmac.compare_digest(digest, expected) and found is None:
                found = caller
        if found is None:
            raise InvalidTokenError("Invalid bearer token")
        return found


def _encoded(entries: Iterable[tuple[str, Caller]]) -> list[tuple[bytes, Caller]]:
    return [(digest.encode(), caller) for digest, caller in entries]


def _identity(path: Path) -> _FileIdentity | None:
    """The token file's identity, or `None` if it cannot be stat'ed."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)


def _read_token_file(path: Path) -> list[tuple[str, Caller]]:
    """Parse the token file; `TokenFileError` names the line, never its hash."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"{path}: cannot read the token file: {exc}") from None
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            entries.append(_parse_line(stripped))
        except ValueError as exc:
            raise TokenFileError(f"{path}, line {number}: {exc}") from None
    return entries


def _parse_line(line: str) -> tuple[str, Caller]:
    parts = line.split()
    if len(parts) != 2:
        raise ValueError("expected '<sha256-hex> <role>'")
    digest, role = parts
    if not _HASH.fullmatch(digest.lower()):
        raise ValueError("the first field is not a SHA-256 hex digest (64 hex digits)")
    return digest.lower(), _parse_role(role)


def _parse_role(role: str) -> Caller:
    if role == "hub":
        return _HUB
    kind, _, username = role.partition(":")
    if kind != "user":
        # Not echoed: a token pasted in the wrong column would end up in the log.
        raise ValueError("unknown role (use 'hub' or 'user:<username>')")
    problem = username_problem(username)
    if problem is not None:
        raise ValueError(f"invalid username in role: {problem}")
    return Caller(username=username)
