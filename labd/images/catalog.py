"""The images users may spawn, and how a spawn request names one.

A request names its image in one of four fields (docs/api.md): a full reference
from the radio list or the dropdown, a class (``recommended``,
``latest-weekly``, ...) or a tag.  `ImageCatalog` resolves each to one of
the known images, or refuses with ``unknown_image``.

The known images are the configured ones (``images.available``) followed by
the tags of ``images.registry`` when one is configured, each pinned as
``host/repository:tag@sha256:...``.  The registry is read at start and every
``refresh_interval``; a read that fails keeps the last good list, so a
registry outage never takes away images users could spawn a minute ago.

Every kept tag is HEADed on every refresh, not only the tags new since the
last one: the tag list carries no digests, so a tag moved to another image
(``recommended`` moves every week, and nothing stops a registry from
re-pushing ``w_2026_47``) can only be noticed by asking again.  A HEAD has
no body and is cheap, at most a few run at once, and
``registry.keep_per_class`` bounds how many there are.

A registry tag of class ``other`` (``recommended``, ``latest``) that points
at the same digest as a classified tag is an *alias*: it is not listed on
its own, and ``image_tag=recommended`` or a ``recommended`` setting that
names it resolves to the image it points at.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Mapping

import structlog

from labd.config import ImageClass, ImageConfig, ImagesConfig
from labd.images.registry import RegistryClient, RegistryError
from labd.lab.errors import UnknownImageError
from labd.lab.metrics import Metrics
from labd.lab.protocol import ImageClassChoice
from labd.lab.reference import ImageReference, natural_key

__all__ = [
    "ImageCatalog",
    "ImageChoice",
    "ImageList",
    "build_image_list",
    "select_tags",
]

_logger = structlog.get_logger()

_LATEST: dict[ImageClassChoice, ImageClass] = {
    ImageClassChoice.LATEST_RELEASE: "release",
    ImageClassChoice.LATEST_WEEKLY: "weekly",
    ImageClassChoice.LATEST_DAILY: "daily",
}

_CLASS_ORDER: tuple[ImageClass, ...] = ("release", "weekly", "daily", "experimental", "other")
"""Order of the registry's images in the dropdown (newest first within a class)."""


@dataclasses.dataclass(frozen=True, slots=True)
class ImageChoice:
    """What the form offers: featured images and the full list."""

    recommended: ImageConfig | None
    """The recommended image; `None` while it is not known (registry not read yet)."""

    featured: list[ImageConfig]
    """The recommended image, then the latest of each class."""

    all: list[ImageConfig]
    """Every known image, for the dropdown."""


@dataclasses.dataclass(frozen=True, slots=True)
class ImageList:
    """One consistent view of the images users may spawn."""

    images: tuple[ImageConfig, ...]
    """Configured images, then the registry's, in dropdown order."""

    aliases: Mapping[str, ImageConfig] = dataclasses.field(default_factory=dict)
    """Registry alias tags (``recommended``) and the image each points at."""

    recommended: ImageConfig | None = None
    """The image ``images.recommended`` names, if known."""

    def by_tag(self, tag: str) -> ImageConfig | None:
        """Return the first image with this tag, or the image an alias points at."""
        image = next((image for image in self.images if image.tag == tag), None)
        return image if image is not None else self.aliases.get(tag)

    def by_reference(self, text: str) -> ImageConfig | None:
        """Return the image a reference names (its tag and digest must agree).

        Raises
        ------
        ValueError
            If ``text`` is not an image reference.
        """
        wanted = ImageReference.parse(text)
        for image in self.images:
            have = image.parsed
            if have.base != wanted.base:
                continue
            if wanted.tag is not None and wanted.tag != have.tag:
                continue
            if wanted.digest is not None and wanted.digest != have.digest:
                continue
            return image
        alias = self.aliases.get(wanted.tag or "")
        if alias is not None and wanted.digest is None and alias.parsed.base == wanted.base:
            return alias
        return None

    def latest(self, image_class: ImageClass) -> ImageConfig | None:
        """Return the image of a class with the greatest tag (``r10`` after ``r9``)."""
        candidates = [
            image
            for image in self.images
            if image.image_class == image_class and image.tag is not None
        ]
        if not candidates:
            return None
        return max(candidates, key=lambda image: natural_key(image.tag or ""))


def select_tags(tags: list[str], config: ImagesConfig) -> list[str]:
    """Return the registry tags worth resolving to digests.

    Parameters
    ----------
    tags
        Every tag of the repository.
    config
        The ``images`` section: its ``class_patterns`` classify the tags,
        ``registry.keep_per_class`` keeps the newest N of each class, and
        the tag ``recommended`` names is always kept.

    Returns
    -------
    list of str
        The kept tags, each class newest first, in the order of `_CLASS_ORDER`.
    """
    keep = config.registry.keep_per_class if config.registry else None
    by_class: dict[ImageClass, list[str]] = {name: [] for name in _CLASS_ORDER}
    for tag in set(tags):
        by_class[config.classify(tag)].append(tag)
    selected: list[str] = []
    for name in _CLASS_ORDER:
        newest_first = sorted(by_class[name], key=natural_key, reverse=True)
        selected.extend(newest_first[:keep])
    recommended = _recommended_tag(config)
    if recommended in tags and recommended not in selected:
        selected.append(recommended)
    return selected


def build_image_list(config: ImagesConfig, digests: Mapping[str, str]) -> ImageList:
    """Combine the configured images with the registry's tags.

    Parameters
    ----------
    config
        The ``images`` section.
    digests
        Registry tag to digest; empty without a registry or before its
        first successful read.

    Returns
    -------
    ImageList
        The images, the aliases and the recommended image.
    """
    images = list(config.available)
    aliases: dict[str, ImageConfig] = {}
    if config.registry is not None:
        base = config.registry.image_base
        pinned = {
            tag: ImageConfig(reference=f"{base}:{tag}@{digest}", image_class=config.classify(tag))
            for tag, digest in digests.items()
        }
        aliases = _aliases(pinned)
        known = {image.reference for image in images}
        images.extend(
            image
            for tag, image in _dropdown_order(pinned)
            if tag not in aliases and image.reference not in known
        )
    image_list = ImageList(images=tuple(images), aliases=aliases)
    return dataclasses.replace(image_list, recommended=_find_recommended(config, image_list))


def _dropdown_order(pinned: Mapping[str, ImageConfig]) -> list[tuple[str, ImageConfig]]:
    """Classes in the order of `_CLASS_ORDER`, the newest tag first within each."""
    newest_first = sorted(pinned.items(), key=lambda item: natural_key(item[0]), reverse=True)
    return sorted(
        newest_first, key=lambda item: _CLASS_ORDER.index(item[1].image_class or "other")
    )


def _aliases(pinned: Mapping[str, ImageConfig]) -> dict[str, ImageConfig]:
    """Map each unclassified tag that shares a classified tag's digest to it."""
    classified: dict[str, ImageConfig] = {}
    for image in sorted(pinned.values(), key=lambda image: natural_key(image.tag or "")):
        if image.image_class != "other":
            classified[image.parsed.digest or ""] = image  # sorted: the greatest tag wins
    return {
        tag: classified[image.parsed.digest or ""]
        for tag, image in pinned.items()
        if image.image_class == "other" and (image.parsed.digest or "") in classified
    }


def _find_recommended(config: ImagesConfig, image_list: ImageList) -> ImageConfig | None:
    static = config.find_static(config.recommended)
    if static is not None:
        return static
    tag = _recommended_tag(config)
    return image_list.by_tag(tag) if tag is not None else None


def _recommended_tag(config: ImagesConfig) -> str | None:
    """The registry tag ``recommended`` names (a tag, or a reference's tag)."""
    if ":" not in config.recommended and "/" not in config.recommended:
        return config.recommended
    try:
        return ImageReference.parse(config.recommended).tag
    except ValueError:
        return None


class ImageCatalog:
    """Resolves image requests against the known images; refreshes them.

    Parameters
    ----------
    images
        The ``images`` section of the configuration.
    registry
        A client of ``images.registry``, or `None` for the configured images
        only.
    metrics
        Where refresh failures and the image count are recorded.
    """

    def __init__(
        self,
        images: ImagesConfig,
        *,
        registry: RegistryClient | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._config = images
        self._registry = registry
        self._metrics = metrics or Metrics()
        self._current = build_image_list(images, {})
        self._failing = False
        self._metrics.images_known.set(len(self._current.images))

    @property
    def current(self) -> ImageList:
        """The images users may spawn now."""
        return self._current

    def resolve(self, field: str, value: str) -> ImageConfig:
        """Return the image a request names.

        Parameters
        ----------
        field
            ``image_list``, ``image_dropdown``, ``image_class`` or
            ``image_tag``.
        value
            What the request gave in that field.

        Raises
        ------
        UnknownImageError
            If no known image matches; ``loc`` names the field.
        """
        current = self._current
        loc = ["body", "options", field]
        image: ImageConfig | None
        if field == "image_class":
            choice = ImageClassChoice(value)
            if choice is ImageClassChoice.RECOMMENDED:
                image = current.recommended
            else:
                image = current.latest(_LATEST[choice])
            if image is None:
                raise UnknownImageError(f"No image of class {value} is available", loc=loc)
            return image
        if field == "image_tag":
            image = current.by_tag(value)
            if image is None:
                raise UnknownImageError(f"No available image has tag {value}", loc=loc)
            return image
        image = current.by_reference(value)
        if image is None:
            raise UnknownImageError(f"Image {value} is not among the available images", loc=loc)
        return image

    def choices(self) -> ImageChoice:
        """Return what the spawn form offers."""
        current = self._current
        featured = [] if current.recommended is None else [current.recommended]
        for image_class in ("release", "weekly", "daily"):
            latest = current.latest(image_class)
            if latest is not None and latest not in featured:
                featured.append(latest)
        return ImageChoice(
            recommended=current.recommended, featured=featured, all=list(current.images)
        )

    async def refresh(self) -> bool:
        """Read the registry once and replace the image list; keep it on failure.

        Returns
        -------
        bool
            Whether the registry was read (`True` without a registry).
        """
        if self._registry is None:
            return True
        started = time.monotonic()
        try:
            tags = await self._registry.list_tags()
            digests = await self._registry.digests(select_tags(tags, self._config))
        except RegistryError as exc:
            self._record_failure(exc)
            return False
        self._replace(build_image_list(self._config, digests), time.monotonic() - started)
        return True

    async def refresh_periodically(self, stopping: asyncio.Event) -> None:
        """Refresh every ``registry.refresh_interval`` until ``stopping`` is set."""
        if self._config.registry is None:
            return
        interval = self._config.registry.refresh_interval
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), interval)
            if stopping.is_set():
                return
            try:
                await self.refresh()
            except Exception:
                _logger.exception("image refresh failed; will try again")

    async def aclose(self) -> None:
        """Close the registry client's connections."""
        if self._registry is not None:
            await self._registry.aclose()

    def _record_failure(self, exc: RegistryError) -> None:
        assert self._registry is not None
        self._metrics.image_refresh_failures.labels(exc.reason).inc()
        self._failing = True
        _logger.warning(
            "image registry read failed; keeping the last good image list",
            registry=self._registry.name,
            reason=exc.reason,
            error=exc.message,
            images=len(self._current.images),
        )

    def _replace(self, new: ImageList, seconds: float) -> None:
        assert self._registry is not None
        old = {image.reference for image in self._current.images}
        now = {image.reference for image in new.images}
        self._current = new
        self._metrics.image_last_success.set(time.time())
        self._metrics.images_known.set(len(new.images))
        if old != now or self._failing:
            _logger.info(
                "image list refreshed",
                registry=self._registry.name,
                images=len(now),
                added=len(now - old),
                removed=len(old - now),
                recommended=new.recommended.reference if new.recommended else None,
                seconds=round(seconds, 3),
            )
        self._failing = False
