"""A client of one repository of an OCI/Docker registry (the distribution API).

labd needs two things from a registry: the repository's tags
(``GET /v2/<name>/tags/list``, following ``Link`` pagination) and the digest
each tag points at (``HEAD /v2/<name>/manifests/<tag>``, read from
``Docker-Content-Digest``; the ``Accept`` header lists OCI indexes and
manifests and Docker manifest lists and v2 manifests, so a multi-arch tag
gives the digest of its index, as ``docker pull`` would).

Authentication follows the registry's challenge, as the Docker client does:

- no credentials configured: requests go out bare; a ``Bearer`` challenge
  is answered with an anonymous token from the challenge's realm;
- ``username`` and ``password_file``: a ``Basic`` challenge is answered
  with them, a ``Bearer`` challenge by asking the realm for a token with
  them (the distribution token-auth flow);
- ``token_file``: every request carries ``Authorization: Bearer <token>``.

Credentials are read from their files at the start of each refresh (so a
rotated password is picked up) and never appear in an exception, a log
line or a metric.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import structlog

from labd.config import RegistryConfig

__all__ = ["RegistryClient", "RegistryError"]

_logger = structlog.get_logger()

_MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    ]
)
_PAGE_SIZE = 1000
"""Tags asked for per page (``n=``); registries may return fewer."""

_MAX_PAGES = 1000
"""A registry whose ``Link`` headers never end is broken, not large."""

_CONCURRENT_HEADS = 8
"""Manifest HEADs in flight at once during a refresh."""

_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_NEXT_LINK = re.compile(r'<([^>]+)>\s*;\s*rel="?next"?')
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


class RegistryError(Exception):
    """The registry could not be read; the message is safe to log.

    Parameters
    ----------
    reason
        ``unreachable``, ``auth``, ``not_found``, ``protocol`` or
        ``credentials`` (a credential file cannot be read): the label of
        ``labd_image_refresh_failures_total``.
    message
        What went wrong, naming the registry and never a secret.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class RegistryClient:
    """Reads tags and digests of the configured repository.

    Parameters
    ----------
    config
        The ``images.registry`` section.
    """

    def __init__(self, config: RegistryConfig) -> None:
        self._config = config
        self._http = httpx.AsyncClient(
            base_url=config.url,
            timeout=config.timeout,
            verify=config.verify_tls,
            headers={"User-Agent": "labd"},
        )
        self._login: tuple[str, str] | None = None
        self._authorization: str | None = None
        self._auth_lock = asyncio.Lock()

    @property
    def name(self) -> str:
        """The repository, as logs show it: ``host:port/repository``."""
        return self._config.image_base

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def list_tags(self) -> list[str]:
        """Return every tag of the repository, re-reading the credentials first.

        Raises
        ------
        RegistryError
            If the registry cannot be reached, refuses the credentials, does
            not know the repository or answers something unexpected.
        """
        self._load_credentials()
        url = f"/v2/{self._config.repository}/tags/list"
        params: dict[str, Any] | None = {"n": _PAGE_SIZE}
        tags: list[str] = []
        for _ in range(_MAX_PAGES):
            response = await self._send("GET", url, params=params)
            if response.status_code == 404:
                raise RegistryError(
                    "not_found", f"registry has no repository {self._config.repository!r}"
                )
            self._check(response, "GET tags/list")
            tags.extend(_tags_of(response))
            link = _next_link(response)
            if link is None:
                return tags
            url, params = str(response.url.join(link)), None
        raise RegistryError("protocol", f"tag list of {self.name} has over {_MAX_PAGES} pages")

    async def digests(self, tags: Iterable[str]) -> dict[str, str]:
        """Return the digest of each tag that still exists.

        Parameters
        ----------
        tags
            Tags from `list_tags`; one deleted since is left out.

        Raises
        ------
        RegistryError
            As `list_tags`; the first failure stops the others.
        """
        limit = asyncio.Semaphore(_CONCURRENT_HEADS)
        found: dict[str, str] = {}

        async def resolve(tag: str) -> None:
            async with limit:
                digest = await self._digest(tag)
            if digest is not None:
                found[tag] = digest

        try:
            async with asyncio.TaskGroup() as group:
                for tag in tags:
                    group.create_task(resolve(tag))
        except ExceptionGroup as failures:
            raise failures.exceptions[0] from None
        return found

    async def _digest(self, tag: str) -> str | None:
        url = f"/v2/{self._config.repository}/manifests/{tag}"
        response = await self._send("HEAD", url, headers={"Accept": _MANIFEST_TYPES})
        if response.status_code == 404:
            return None
        self._check(response, f"HEAD manifests/{tag}")
        digest: str = response.headers.get("Docker-Content-Digest", "")
        if not _DIGEST.fullmatch(digest):
            # labd pins images by sha256; skip the tag rather than fail the
            # whole list over one image it could not pin.
            _logger.warning(
                "image tag skipped: no sha256 digest", registry=self.name, tag=tag, digest=digest
            )
            return None
        return digest

    def _load_credentials(self) -> None:
        config = self._config
        self._login = None
        self._authorization = None
        if config.username is not None and config.password_file is not None:
            password = _read_secret(config.password_file, "password_file")
            self._login = (config.username, password)
        elif config.token_file is not None:
            self._authorization = f"Bearer {_read_secret(config.token_file, 'token_file')}"

    async def _send(
        self,
        method: str,
        url: str,
        *,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send a request, answering one authentication challenge if needed."""
        for attempt in (1, 2):
            sent = self._authorization
            request_headers = dict(headers or {})
            if sent is not None:
                request_headers["Authorization"] = sent
            response = await self._request(method, url, params=params, headers=request_headers)
            if response.status_code != 401 or attempt == 2:
                return response
            # Concurrent HEADs may all meet the same challenge: the first
            # answers it, the others retry with its answer.
            async with self._auth_lock:
                if self._authorization == sent:
                    await self._answer(response)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _request(
        self, method: str, url: str, *, params: dict[str, Any] | None, headers: dict[str, str]
    ) -> httpx.Response:
        try:
            with _reaching(f"registry {self._config.url}"):
                return await self._http.request(method, url, params=params, headers=headers)
        except httpx.InvalidURL:
            # Only a registry's own Link header can lead here.
            raise RegistryError(
                "protocol", f"registry {self._config.url} sent an invalid URL"
            ) from None

    async def _answer(self, response: httpx.Response) -> None:
        """Set `_authorization` from a 401's challenge, or raise why not."""
        scheme, params = _challenge(response.headers.get("WWW-Authenticate", ""))
        if self._config.token_file is not None:
            raise RegistryError(
                "auth",
                f"registry {self._config.url} refused the token of images.registry.token_file",
            )
        if scheme == "basic" and self._login is not None:
            self._authorization = _basic_header(*self._login)
        elif scheme == "bearer" and "realm" in params:
            self._authorization = f"Bearer {await self._fetch_token(params)}"
        elif scheme == "basic":
            raise RegistryError(
                "auth",
                f"registry {self._config.url} requires a login: "
                "set images.registry.username and images.registry.password_file",
            )
        else:
            raise RegistryError(
                "auth", f"registry {self._config.url} refused access with an unknown challenge"
            )

    async def _fetch_token(self, challenge: dict[str, str]) -> str:
        """Ask the challenge's realm for a token (the distribution token flow)."""
        realm = challenge["realm"]
        if not realm.startswith(("https://", "http://")):
            raise RegistryError("protocol", f"token realm {realm!r} is not an http(s) URL")
        params: dict[str, str] = {
            key: challenge[key] for key in ("service", "scope") if key in challenge
        }
        params.setdefault("scope", f"repository:{self._config.repository}:pull")
        with _reaching(f"token server {realm}"):
            response = await self._http.get(realm, params=params, auth=self._login)
        if response.status_code in (401, 403):
            who = "anonymous access" if self._login is None else f"user {self._config.username!r}"
            raise RegistryError(
                "auth", f"token server {realm} refused {who} (HTTP {response.status_code})"
            )
        if response.status_code != 200:
            raise RegistryError(
                "protocol", f"token server {realm} answered HTTP {response.status_code}"
            )
        token = _token_of(response)
        if token is None:
            raise RegistryError("protocol", f"token server {realm} sent no token")
        return token

    def _check(self, response: httpx.Response, what: str) -> None:
        """Raise a `RegistryError` unless the response is a success."""
        status = response.status_code
        if 200 <= status < 300:
            return
        if status == 401:
            raise RegistryError("auth", self._refusal())
        if status == 403:
            raise RegistryError(
                "auth", f"registry {self._config.url} denies access to {self._config.repository}"
            )
        raise RegistryError(
            "protocol", f"registry {self._config.url} answered HTTP {status} to {what}"
        )

    def _refusal(self) -> str:
        url = self._config.url
        if self._config.token_file is not None:
            return f"registry {url} refused the token of images.registry.token_file"
        if self._login is not None:
            return (
                f"registry {url} refused user {self._config.username!r} "
                "(wrong username or password?)"
            )
        return f"registry {url} refused anonymous access"


def _read_secret(path: Path, key: str) -> str:
    try:
        text: str = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise RegistryError(
            "credentials", f"cannot read images.registry.{key} {path}: {reason}"
        ) from None
    if not text:
        raise RegistryError("credentials", f"images.registry.{key} {path} is empty")
    return text


def _basic_header(username: str, password: str) -> str:
    credentials = base64.b64encode(f"{username}:{password}".encode()).decode("ascii")
    return f"Basic {credentials}"


def _challenge(header: str) -> tuple[str, dict[str, str]]:
    """Split ``Bearer realm="...",service="..."`` into scheme and parameters."""
    scheme, _, rest = header.strip().partition(" ")
    return scheme.lower(), dict(_CHALLENGE_PARAM.findall(rest))


def _tags_of(response: httpx.Response) -> list[str]:
    try:
        body = response.json()
    except ValueError:
        raise RegistryError("protocol", "tag list is not JSON") from None
    tags = body.get("tags") if isinstance(body, dict) else None
    if tags is None:
        return []  # an empty repository says "tags": null
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise RegistryError("protocol", "tag list has no list of strings under 'tags'")
    return tags


def _token_of(response: httpx.Response) -> str | None:
    """The token of a token server's answer (``token``, or OAuth2's ``access_token``)."""
    try:
        body = response.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    token = body.get("token") or body.get("access_token")
    return token if isinstance(token, str) and token else None


def _next_link(response: httpx.Response) -> str | None:
    match = _NEXT_LINK.search(response.headers.get("Link", ""))
    return match[1] if match else None


@contextmanager
def _reaching(peer: str) -> Iterator[None]:
    """Turn a timeout or a transport failure talking to ``peer`` into `RegistryError`."""
    try:
        yield
    except httpx.TimeoutException:
        raise RegistryError("unreachable", f"{peer} did not answer in time") from None
    except httpx.TransportError as exc:
        raise RegistryError("unreachable", f"cannot reach {peer}: {_describe(exc)}") from None


def _describe(exc: Exception) -> str:
    return str(exc) or type(exc).__name__
