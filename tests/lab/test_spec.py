"""The typed lab spec reads and writes exactly what labd has always stored.

The rows and annotations it is held to (`tests.support.specs`) are literal
text captured from labd before the spec was typed; rows written by this
version must equal them, so that an older labd reads them as it always did.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from labd.config import Resources, SizeConfig
from labd.lab.protocol import LabSpecification, UserQuota
from labd.lab.spec import (
    ImageRequest,
    LabSpec,
    LabSpecError,
    SpecGroup,
    SpecOptions,
    SpecQuantities,
    SpecQuota,
    SpecResources,
    SpecUser,
)
from tests.support.specs import (
    BARE_ROW,
    FIRST_ROW,
    ROWS,
    TODAY_ANNOTATION,
    TODAY_HUB_ANNOTATION,
    TODAY_HUB_ROW,
    TODAY_ROW,
    WEEKLY,
    old_spec_annotation,
)

GiB = 2**30


def medium() -> SizeConfig:
    return SizeConfig(
        limits=Resources(cpu=2, memory=8 * GiB), requests=Resources(cpu=0.5, memory=2 * GiB)
    )


def request(**options: Any) -> LabSpecification:
    """A create body as JupyterHub's form sends it (as tests/api's ``spawn_body``)."""
    return LabSpecification.model_validate(
        {
            "options": {
                "image_list": [WEEKLY],
                "size": ["Medium"],
                "enable_debug": ["false"],
                "reset_user_env": ["true"],
                **options,
            },
            "env": {"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/"},
        }
    )


@pytest.mark.parametrize("name", sorted(ROWS))
def test_a_row_reads_and_writes_back_unchanged(name: str) -> None:
    row = json.loads(ROWS[name])
    spec = LabSpec.from_row(row)
    assert spec.to_row() == row
    # Key for key, in the same order.
    assert json.dumps(spec.to_row()) == ROWS[name]


@pytest.mark.parametrize("name", sorted(ROWS))
def test_the_annotation_is_the_one_labd_always_wrote(name: str) -> None:
    row = json.loads(ROWS[name])
    assert LabSpec.from_row(row).annotation() == old_spec_annotation(row)


def test_annotations_byte_for_byte() -> None:
    assert LabSpec.from_row(json.loads(TODAY_ROW)).annotation() == TODAY_ANNOTATION
    assert LabSpec.from_row(json.loads(TODAY_HUB_ROW)).annotation() == TODAY_HUB_ANNOTATION


@pytest.mark.parametrize("name", sorted(ROWS))
def test_an_annotation_with_the_environment_gives_the_row_back(name: str) -> None:
    row = json.loads(ROWS[name])
    spec = LabSpec.from_annotation(old_spec_annotation(row)).with_env(row["env"])
    # All but previous_lab, which only the row holds (an adopted lab replaced none).
    assert spec.to_row() == {k: v for k, v in row.items() if k != "previous_lab"}
    assert spec.previous_lab is None
    assert spec.annotation() == old_spec_annotation(row)


def test_a_new_spec_is_the_row_labd_always_wrote() -> None:
    user = SpecUser(
        username="alice",
        name="Alice",
        uid=1101,
        gid=1101,
        groups=(SpecGroup(name="alice", id=1101),),
    )
    quota = UserQuota(cpu=2, memory=8 * GiB)
    env = {"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/", "LANG": "C", "DB_PASS": "hunter2"}
    spec = LabSpec.new(request(), image=WEEKLY, size=medium(), user=user, quota=quota, env=env)
    assert json.dumps(spec.to_row()) == TODAY_ROW  # The secret variable is left out.
    assert spec.annotation() == TODAY_ANNOTATION


def test_a_new_spec_by_the_hub_replacing_a_lab() -> None:
    user = SpecUser(
        username="alice",
        name="Alice Ä",
        uid=2000,
        gid=2001,
        groups=(SpecGroup(name="g", id=3000), SpecGroup(name="nogid", id=None)),
    )
    spec = LabSpec.new(
        request(image_list=None, image_class="recommended", enable_debug="true"),
        image=WEEKLY,
        size=medium(),
        user=user,
        quota=UserQuota(cpu=4, memory=16 * GiB),
        env={"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/"},
        previous_lab="0b9e8a3c-6d1f-4f53-9c8e-2a7d5b4c3e21",
    )
    assert json.dumps(spec.to_row()) == TODAY_HUB_ROW
    assert spec.annotation() == TODAY_HUB_ANNOTATION


def test_the_typed_values() -> None:
    spec = LabSpec.from_row(json.loads(TODAY_HUB_ROW))
    assert spec.options == SpecOptions(
        image=WEEKLY, size="medium", enable_debug=True, reset_user_env=True
    )
    assert spec.resources == SpecResources(
        limits=SpecQuantities(cpu=2.0, memory=8 * GiB),
        requests=SpecQuantities(cpu=0.5, memory=2 * GiB),
    )
    assert spec.user.groups == (SpecGroup(name="g", id=3000), SpecGroup(name="nogid"))
    assert spec.quota == SpecQuota(cpu=4.0, memory=16 * GiB, spawn=True)
    assert spec.user_quota() == UserQuota(cpu=4.0, memory=16 * GiB, spawn=True)
    assert spec.image_request == ImageRequest(field="image_class", value="recommended")
    assert spec.env == {"JUPYTERHUB_SERVICE_PREFIX": "/user/alice/"}
    assert spec.previous_lab == "0b9e8a3c-6d1f-4f53-9c8e-2a7d5b4c3e21"


def test_what_older_rows_lack_takes_the_defaults_readers_always_used() -> None:
    for text in (FIRST_ROW, BARE_ROW):
        spec = LabSpec.from_row(json.loads(text))
        assert (spec.quota, spec.user_quota(), spec.previous_lab) == (None, None, None)
    assert LabSpec.from_row(json.loads(BARE_ROW)).image_request is None
    empty = LabSpec.from_row({})
    assert empty.options == SpecOptions(
        image="", size="", enable_debug=False, reset_user_env=False
    )
    assert empty.resources.limits == empty.resources.requests == SpecQuantities(cpu=0, memory=0)
    assert empty.user == SpecUser(username=None, name=None, uid=None, gid=None, groups=())
    assert (empty.quota, empty.image_request, empty.env, empty.previous_lab) == (
        None,
        None,
        {},
        None,
    )
    # What was not there is not written back.
    assert empty.to_row() == {}
    assert LabSpec.from_row({"options": {"image": WEEKLY}}).to_row() == {
        "options": {"image": WEEKLY}
    }


def test_unknown_keys_are_ignored() -> None:
    row = json.loads(BARE_ROW)
    extended = {
        **row,
        "future": {"x": 1},
        "options": {**row["options"], "gpu": True},
        "user": {**row["user"], "shell": "/bin/zsh"},
    }
    assert LabSpec.from_row(extended) == LabSpec.from_row(row)
    assert LabSpec.from_row(extended).to_row() == row
    annotation = json.dumps({**extended, "env": {"A": "b"}, "previous_lab": "x"})
    spec = LabSpec.from_annotation(annotation)
    assert (spec.env, spec.previous_lab) == ({}, None)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{not json",
        "[]",
        '"a string"',
        "null",
        '{"user": {"uid": "root"}}',
        '{"options": []}',
        '{"image_request": {"field": "image_tag"}}',
    ],
)
def test_a_bad_annotation_is_refused(text: str) -> None:
    with pytest.raises(LabSpecError):
        LabSpec.from_annotation(text)


@pytest.mark.parametrize("data", [None, [], "{}", {"quota": 3}])
def test_a_bad_row_is_refused(data: Any) -> None:
    with pytest.raises(LabSpecError):
        LabSpec.from_row(data)


@pytest.mark.parametrize("text", ["", "not json", "null", "[]", '"{}"', '{"quota": 3}'])
def test_a_bad_row_text_is_refused(text: str) -> None:
    with pytest.raises(LabSpecError):
        LabSpec.from_row_text(text)


@pytest.mark.parametrize("text", [TODAY_ROW, TODAY_HUB_ROW])
def test_the_row_text_reads_as_its_json_value(text: str) -> None:
    # The store reads the column as text; PostgreSQL's jsonb text differs in spacing.
    spec = LabSpec.from_row(json.loads(text))
    assert LabSpec.from_row_text(text) == spec
    assert LabSpec.from_row_text(json.dumps(spec.to_row(), indent=1)) == spec


def test_the_spec_is_frozen() -> None:
    spec = LabSpec.from_row(json.loads(TODAY_ROW))
    with pytest.raises(ValidationError):
        spec.previous_lab = "x"  # type: ignore[misc]
    with pytest.raises(ValidationError):
        spec.options.image = "other"  # type: ignore[misc]
