"""The images a simulated node holds, as a container runtime's image store.

A real kubelet asks its container runtime whether a container's image is on
the node before it decides to pull: with ``imagePullPolicy: IfNotPresent``
an image that is there is used as it is (``Container image "..." already
present on machine``), with ``Always`` it is pulled again, with ``Never``
an image that is not there cannot run (``ErrImageNeverPull``). `NodeImages`
is that store for the sim's kubelet: an image is in it once a pull of it
succeeded, until it is forgotten (what ``crictl rmi`` does on a real node).

References are compared as the runtime compares them, after Docker's
normalization: ``jupyter/lab:4.1`` and ``docker.io/jupyter/lab:4.1`` are one
image, ``busybox`` is ``docker.io/library/busybox:latest``, and a reference
with a digest is the image of that digest, whatever its tag.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

__all__ = ["NodeImages", "normalized_reference"]

_DOCKER_HUB = "docker.io"


def normalized_reference(image: str) -> str:
    """Return ``image`` as a container runtime stores it (Docker's normalization).

    ``jupyter/lab:4.1`` is ``docker.io/jupyter/lab:4.1``, ``busybox`` is
    ``docker.io/library/busybox:latest``, ``host:5000/a/b@sha256:...`` stays
    as it is, and a tag next to a digest is dropped (the digest decides).
    """
    name, at, digest = image.partition("@")
    domain, slash, path = name.partition("/")
    if not slash or not ("." in domain or ":" in domain or domain == "localhost"):
        domain, path = _DOCKER_HUB, name
    if domain == _DOCKER_HUB and "/" not in path:
        path = f"library/{path}"
    repository, colon, tag = path.rpartition(":")
    if not colon:
        repository, tag = path, "latest"
    if at:
        return f"{domain}/{repository}@{digest}"
    return f"{domain}/{repository}:{tag}"


class NodeImages:
    """The images one simulated node holds, with the image ID of each.

    The kubelet adds an image after a successful pull and asks whether an
    image is present before it pulls; tests and operators forget images, as
    ``crictl rmi`` does, to see a node pull again. Shared with the kubelet
    like `labd.sim.outcomes.Rules`, so whoever made the kubelet can read and
    change what its node holds.
    """

    def __init__(self) -> None:
        self._ids: dict[str, str] = {}

    def __contains__(self, image: object) -> bool:
        return isinstance(image, str) and normalized_reference(image) in self._ids

    def __iter__(self) -> Iterator[str]:
        """The normalized references of the images held, sorted."""
        return iter(sorted(self._ids))

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, image: str) -> str:
        """Record ``image`` as pulled; return its image ID.

        An image pulled again keeps its ID: the sim's registries never move
        a tag.
        """
        reference = normalized_reference(image)
        image_id = self._ids.get(reference)
        if image_id is None:
            image_id = self._ids[reference] = _image_id(reference)
        return image_id

    def image_id(self, image: str) -> str:
        """The image ID (``<repository>@sha256:<digest>``) of an image held, else ``""``."""
        return self._ids.get(normalized_reference(image), "")

    def forget(self, image: str | None = None) -> None:
        """Remove one image from the node, or all of them (``None``)."""
        if image is None:
            self._ids.clear()
        else:
            self._ids.pop(normalized_reference(image), None)


def _image_id(reference: str) -> str:
    """An image ID for a normalized reference: its own digest, else a made-up one."""
    if "@" in reference:
        return reference
    repository = reference.rpartition(":")[0]
    return f"{repository}@sha256:{secrets.token_hex(32)}"
