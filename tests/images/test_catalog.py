"""Class sorting, aliases and tag selection, without a registry."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from labd.config import Config, ImagesConfig
from labd.images.catalog import ImageCatalog, build_image_list, select_tags
from labd.lab.errors import UnknownImageError

BASE = "registry.example:5000/sciplat/lab"


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


def images(**data: Any) -> ImagesConfig:
    registry = {"url": "https://registry.example:5000", "repository": "sciplat/lab"}
    registry.update(data.pop("registry", {}))
    return ImagesConfig.model_validate(
        {"registry": registry, "recommended": "recommended", **data}
    )


def test_tags_sorted_into_classes_newest_first() -> None:
    config = images()
    tags = ["w_2026_9", "r9", "d_2026_11_24", "w_2026_10", "r10", "exp_x", "d_2026_01_02"]
    listed = build_image_list(config, {tag: digest(i) for i, tag in enumerate(tags)})
    assert [(image.tag, image.image_class) for image in listed.images] == [
        ("r10", "release"),
        ("r9", "release"),
        ("w_2026_10", "weekly"),
        ("d_2026_11_24", "daily"),
        ("d_2026_01_02", "daily"),
        ("w_2026_9", "other"),  # the default weekly pattern wants two digits
        ("exp_x", "other"),
    ]
    assert listed.latest("release") is listed.images[0]
    assert listed.latest("weekly") is listed.images[2]
    assert listed.latest("experimental") is None


def test_custom_class_patterns() -> None:
    config = images(class_patterns={"weekly": r"^w_\d{4}_\d+$", "experimental": r"^exp_"})
    listed = build_image_list(config, {"w_2026_9": digest(1), "exp_x": digest(2)})
    assert {image.tag: image.image_class for image in listed.images} == {
        "w_2026_9": "weekly",
        "exp_x": "experimental",
    }


def test_alias_shown_as_its_target() -> None:
    config = images()
    listed = build_image_list(
        config,
        {
            "w_2026_46": digest(1),
            "w_2026_47": digest(2),
            "recommended": digest(2),
            "latest": digest(2),
            "lonely": digest(3),
        },
    )
    target = listed.by_tag("w_2026_47")
    assert target is not None
    assert target.reference == f"{BASE}:w_2026_47@{digest(2)}"
    assert listed.recommended is target
    assert listed.by_tag("latest") is target
    assert listed.by_reference(f"{BASE}:recommended") is target
    assert listed.by_reference(f"{BASE}:recommended@{digest(3)}") is None
    # An unclassified tag sharing no digest is an image of its own.
    assert [image.tag for image in listed.images] == ["w_2026_47", "w_2026_46", "lonely"]


def test_alias_of_several_tags_points_at_the_greatest() -> None:
    listed = build_image_list(
        images(), {"r28_0_0": digest(1), "r28_0_1": digest(1), "recommended": digest(1)}
    )
    assert listed.recommended is not None
    assert listed.recommended.tag == "r28_0_1"


def test_recommended_tag_of_its_own() -> None:
    listed = build_image_list(images(), {"recommended": digest(9), "r1": digest(1)})
    assert listed.recommended is not None
    assert listed.recommended.tag == "recommended"
    assert listed.recommended.image_class == "other"


def test_recommended_unknown_until_read() -> None:
    catalog = ImageCatalog(images(available=[{"reference": "example.org/lab:r1"}]))
    assert catalog.choices().recommended is None
    assert [image.reference for image in catalog.choices().featured] == ["example.org/lab:r1"]
    with pytest.raises(UnknownImageError) as info:
        catalog.resolve("image_class", "recommended")
    assert info.value.loc == ["body", "options", "image_class"]


def test_static_images_come_first_and_win() -> None:
    static = f"{BASE}:r1@{digest(1)}"
    config = images(available=[{"reference": static, "name": "Release 1"}], recommended="r1")
    listed = build_image_list(config, {"r1": digest(1), "r2": digest(2)})
    assert [image.reference for image in listed.images] == [static, f"{BASE}:r2@{digest(2)}"]
    assert listed.recommended is listed.images[0]
    assert listed.images[0].display_name == "Release 1"


def test_select_tags_keeps_newest_per_class_and_the_recommended() -> None:
    config = images(registry={"keep_per_class": 2})
    tags = ["r1", "r2", "r3", "w_2026_01", "w_2026_02", "w_2026_03", "recommended", "a", "b"]
    assert select_tags(tags, config) == [
        "r3",
        "r2",
        "w_2026_03",
        "w_2026_02",
        "recommended",
        "b",
    ]
    config = images(registry={"keep_per_class": 1}, recommended="r1")
    assert select_tags(["r1", "r2"], config) == ["r2", "r1"]
    assert select_tags(["r1", "r2"], images()) == ["r2", "r1"]


def test_without_registry_behaviour_is_unchanged() -> None:
    config = ImagesConfig.model_validate(
        {
            "available": [{"reference": "example.org/lab:w_2026_47"}],
            "recommended": "w_2026_47",
        }
    )
    catalog = ImageCatalog(config)
    assert catalog.resolve("image_class", "recommended").reference == "example.org/lab:w_2026_47"
    assert catalog.resolve("image_class", "latest-weekly").tag == "w_2026_47"
    with pytest.raises(UnknownImageError):
        catalog.resolve("image_class", "latest-daily")


@pytest.mark.parametrize(
    ("images_data", "message"),
    [
        ({"recommended": "r1"}, "at least one image is required unless images.registry is set"),
        (
            {"registry": {"url": "ftp://x.org", "repository": "lab"}, "recommended": "r1"},
            "'ftp://x.org' is not an http:// or https:// URL with a host",
        ),
        (
            {"registry": {"url": "https://u:p@x.org", "repository": "lab"}, "recommended": "r1"},
            "must not carry credentials: use username and password_file",
        ),
        (
            {"registry": {"url": "https://x.org/v2/", "repository": "lab"}, "recommended": "r1"},
            "'https://x.org/v2/' must be the registry's root URL, without path or query",
        ),
        (
            {"registry": {"url": "http://registry", "repository": "lab"}, "recommended": "r1"},
            "host 'registry' cannot name a registry in an image reference "
            "(it needs a dot, a port, or to be localhost)",
        ),
        (
            {"registry": {"url": "https://x.org", "repository": "Lab"}, "recommended": "r1"},
            "'Lab' is not a repository path (lowercase components separated by '/')",
        ),
        (
            {
                "registry": {"url": "https://x.org", "repository": "lab", "username": "alice"},
                "recommended": "r1",
            },
            "username and password_file go together",
        ),
        (
            {
                "registry": {
                    "url": "https://x.org",
                    "repository": "lab",
                    "token_file": "/t",
                    "username": "a",
                    "password_file": "/p",
                },
                "recommended": "r1",
            },
            "token_file excludes username and password_file",
        ),
        (
            {
                "registry": {"url": "https://x.org", "repository": "lab"},
                "recommended": "y.org/a:1",
            },
            "'y.org/a:1' is neither a tag nor an image of x.org/lab "
            "nor among the available images",
        ),
    ],
)
def test_bad_registry_config(images_data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        Config.model_validate({"images": images_data})
    messages = [error["msg"].removeprefix("Value error, ") for error in info.value.errors()]
    assert messages == [message]


def test_registry_config_normalised() -> None:
    config = images(registry={"url": "https://registry.example:5000/"})
    assert config.registry is not None
    assert config.registry.url == "https://registry.example:5000"
    assert config.registry.image_base == BASE
    assert config.available == []
