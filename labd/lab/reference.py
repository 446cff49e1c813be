"""Image references: the grammar of ``[registry[:port]/]path[:tag][@digest]``."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Self

__all__ = ["PATH_SYNTAX", "TAG_SYNTAX", "ImageReference", "natural_key"]


# ---------------------------------------------------------------------------
# Image references


_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[_.]|__|-+)[a-z0-9]+)*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = (
    rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])"  # host
    r"(?::[0-9]+)?"  # port
)
_NAME = re.compile(
    rf"(?:(?P<registry>{_DOMAIN})/)?(?P<path>{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*)"
)
PATH_SYNTAX = re.compile(rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
TAG_SYNTAX = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_NAME_MAX_LENGTH = 255


@dataclass(frozen=True, slots=True)
class ImageReference:
    """A parsed Docker/OCI image reference with a tag, a digest, or both.

    The grammar is that of the distribution project's ``reference``
    package: ``[registry[:port]/]path[:tag][@digest]``. Parsing keeps the
    reference as written (no ``docker.io`` is added), so ``str`` gives back
    the original text.
    """

    registry: str | None
    """Registry host with optional port, or `None` when not written."""

    repository: str
    """Repository path inside the registry (``labd/sciplat-lab``)."""

    tag: str | None
    """Tag (``w_2026_47``), or `None` for a digest-only reference."""

    digest: str | None
    """Digest (``sha256:`` and 64 hex digits), or `None`."""

    @property
    def base(self) -> str:
        """The image without tag and digest: ``registry/repository``."""
        if self.registry is None:
            return self.repository
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        text = self.base
        if self.tag is not None:
            text += f":{self.tag}"
        if self.digest is not None:
            text += f"@{self.digest}"
        return text

    @classmethod
    def parse(cls, text: str) -> Self:
        """Parse a reference that must carry a tag, a digest, or both.

        Parameters
        ----------
        text
            A reference such as ``registry.example/lab:w_2026_47`` or
            ``registry.example/lab@sha256:<64 hex>``.

        Returns
        -------
        ImageReference
            The parsed reference.

        Raises
        ------
        ValueError
            If the reference is malformed or has neither tag nor digest.
        """
        if not text:
            raise ValueError("image reference is empty")
        if any(c.isspace() for c in text):
            raise ValueError(f"{text!r} contains whitespace")
        rest, at, digest = text.partition("@")
        if at and not _DIGEST.fullmatch(digest):
            raise ValueError(
                f"{text!r} has a malformed digest {digest!r} "
                "(expected 'sha256:' and 64 lowercase hex digits)"
            )
        name, tag = rest, None
        last_slash = rest.rfind("/")
        colon = rest.rfind(":")
        if colon > last_slash:
            name, tag = rest[:colon], rest[colon + 1 :]
            if not TAG_SYNTAX.fullmatch(tag):
                raise ValueError(
                    f"{text!r} has a malformed tag {tag!r} (letters, digits, '_', '.' and '-', "
                    "at most 128, not starting with '.' or '-')"
                )
        match = _NAME.fullmatch(name)
        if not match:
            hint = " (the repository must be lowercase)" if _NAME.fullmatch(name.lower()) else ""
            raise ValueError(f"{text!r} has a malformed repository name {name!r}{hint}")
        if len(name) > _NAME_MAX_LENGTH:
            raise ValueError(f"{text!r} has a name longer than {_NAME_MAX_LENGTH} characters")
        if tag is None and not at:
            raise ValueError(f"{text!r} has neither tag nor digest")
        registry, path = match["registry"], match["path"]
        # As Docker does: a first component is a registry only if it looks
        # like a host (a dot, a port or "localhost"); otherwise it is part
        # of the repository path ("library/ubuntu") and must be lowercase.
        if registry is not None and not (
            "." in registry or ":" in registry or registry == "localhost"
        ):
            registry, path = None, f"{registry}/{path}"
            if not PATH_SYNTAX.fullmatch(path):
                raise ValueError(
                    f"{text!r} has a malformed repository name {name!r} "
                    "(the repository must be lowercase)"
                )
        return cls(registry=registry, repository=path, tag=tag, digest=digest if at else None)


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders digit runs numerically (``r9`` before ``r10``)."""
    return tuple(
        (0, int(part)) if part.isdigit() else (1, part) for part in re.findall(r"\d+|\D+", text)
    )
