"""The images users may spawn, and how a spawn request names one.

A request names its image in one of four fields (API.md): a full reference
from the radio list or the dropdown, a class (``recommended``,
``latest-weekly``, ...) or a tag.  `ImageCatalog` resolves each to one of the
configured images, or refuses with ``unknown_image``.
"""

from __future__ import annotations

from dataclasses import dataclass

from labd.config import ImageConfig, ImageReference, ImagesConfig
from labd.errors import UnknownImageError
from labd.models import ImageClassChoice

__all__ = ["ImageCatalog", "ImageChoice"]

_LATEST = {
    ImageClassChoice.LATEST_RELEASE: "release",
    ImageClassChoice.LATEST_WEEKLY: "weekly",
    ImageClassChoice.LATEST_DAILY: "daily",
}


@dataclass(frozen=True, slots=True)
class ImageChoice:
    """What the form offers: featured images and the full list."""

    recommended: ImageConfig
    """The recommended image."""

    featured: list[ImageConfig]
    """The recommended image, then the latest of each class."""

    all: list[ImageConfig]
    """Every available image, for the dropdown."""


class ImageCatalog:
    """Resolves image requests against the configured images.

    Parameters
    ----------
    images
        The ``images`` section of the configuration.
    """

    def __init__(self, images: ImagesConfig) -> None:
        self._images = images

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
            If no available image matches; ``loc`` names the field.
        """
        loc = ["body", "options", field]
        image: ImageConfig | None
        if field == "image_class":
            choice = ImageClassChoice(value)
            if choice is ImageClassChoice.RECOMMENDED:
                image = self._images.recommended_image()
            else:
                image = self._images.latest(_LATEST[choice])  # type: ignore[arg-type]
            if image is None:
                raise UnknownImageError(f"No image of class {value} is available", loc=loc)
            return image
        if field == "image_tag":
            image = self._images.by_tag(value)
            if image is None:
                raise UnknownImageError(f"No available image has tag {value}", loc=loc)
            return image
        image = self._by_reference(value)
        if image is None:
            raise UnknownImageError(f"Image {value} is not among the available images", loc=loc)
        return image

    def _by_reference(self, text: str) -> ImageConfig | None:
        wanted = ImageReference.parse(text)
        for image in self._images.available:
            have = image.parsed
            if have.base != wanted.base:
                continue
            if wanted.tag is not None and wanted.tag != have.tag:
                continue
            if wanted.digest is not None and wanted.digest != have.digest:
                continue
            return image
        return None

    def choices(self) -> ImageChoice:
        """Return what the spawn form offers."""
        recommended = self._images.recommended_image()
        featured = [recommended]
        for image_class in ("release", "weekly", "daily"):
            latest = self._images.latest(image_class)
            if latest is not None and latest not in featured:
                featured.append(latest)
        return ImageChoice(
            recommended=recommended, featured=featured, all=list(self._images.available)
        )
