"""The images a simulated node holds, and the pull policy pods get by default."""

from __future__ import annotations

import pytest

from labd.sim import NodeImages
from labd.sim.images import normalized_reference
from labd.sim.strategies import default_pull_policy

DIGEST = "sha256:" + "0f" * 32


@pytest.mark.parametrize(
    ("image", "reference"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("jupyter/lab:4.1", "docker.io/jupyter/lab:4.1"),
        ("docker.io/jupyter/lab:4.1", "docker.io/jupyter/lab:4.1"),
        ("docker.io/busybox", "docker.io/library/busybox:latest"),
        ("ghcr.io/labd/sciplat-lab:w_2026_46", "ghcr.io/labd/sciplat-lab:w_2026_46"),
        ("localhost:5000/lab", "localhost:5000/lab:latest"),
        ("registry:5000/a/lab:1", "registry:5000/a/lab:1"),
        (f"jupyter/lab@{DIGEST}", f"docker.io/jupyter/lab@{DIGEST}"),
        (f"jupyter/lab:4.1@{DIGEST}", f"docker.io/jupyter/lab@{DIGEST}"),
    ],
)
def test_references_are_normalized_as_a_runtime_does(image: str, reference: str) -> None:
    assert normalized_reference(image) == reference


@pytest.mark.parametrize(
    ("image", "policy"),
    [
        ("jupyter/lab", "Always"),
        ("jupyter/lab:latest", "Always"),
        ("localhost:5000/lab", "Always"),
        ("jupyter/lab:4.1", "IfNotPresent"),
        ("localhost:5000/lab:4.1", "IfNotPresent"),
        (f"jupyter/lab@{DIGEST}", "IfNotPresent"),
        (f"jupyter/lab:4.1@{DIGEST}", "IfNotPresent"),
        # Kubernetes looks at the tag alone: `latest` is Always, digest or not.
        (f"jupyter/lab:latest@{DIGEST}", "Always"),
    ],
)
def test_default_pull_policy(image: str, policy: str) -> None:
    assert default_pull_policy(image) == policy


def test_node_images_remember_pulls_until_forgotten() -> None:
    images = NodeImages()
    assert "jupyter/lab:4.1" not in images
    assert images.image_id("jupyter/lab:4.1") == ""
    image_id = images.add("jupyter/lab:4.1")
    assert image_id.startswith("docker.io/jupyter/lab@sha256:")
    assert "docker.io/jupyter/lab:4.1" in images
    assert images.add("docker.io/jupyter/lab:4.1") == image_id  # pulled again: same image
    assert images.image_id("jupyter/lab:4.1") == image_id
    assert images.add(f"busybox@{DIGEST}") == f"docker.io/library/busybox@{DIGEST}"
    assert list(images) == ["docker.io/jupyter/lab:4.1", f"docker.io/library/busybox@{DIGEST}"]
    images.forget("jupyter/lab:4.1")
    assert len(images) == 1
    images.forget()
    assert len(images) == 0
