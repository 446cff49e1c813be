"""Models of what the hub asks for and what labd reports (docs/api.md).

The request models accept raw JupyterHub form data, as Nublado does: every
option may come as a one-element list, booleans may be the strings
``"true"``/``"false"``, sizes may be title-cased, and the dropdown sentinel
``use_image_from_dropdown`` means "no image in this field".  Validation here
is structural; whether a size or an image is *available* is the service's
decision, made against the configuration.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    conlist,
    model_validator,
)
from pydantic_core import PydanticCustomError

from labd.lab.reference import ImageReference

__all__ = [
    "DROPDOWN_SENTINEL",
    "SERVICE_PREFIX",
    "ImageClassChoice",
    "LabOptions",
    "LabSpecification",
    "LabStateModel",
    "ResolvedOptions",
    "ResourceValues",
    "Resources",
    "UserGroup",
    "UserInfo",
    "UserQuota",
    "service_prefix_problem",
]

MAX_ID: Final = 2**31 - 1
"""Largest user or group id: Kubernetes refuses a pod with a larger one."""

DROPDOWN_SENTINEL = "use_image_from_dropdown"
"""Value of ``image_list`` that tells labd to use ``image_dropdown``."""


class ImageClassChoice(enum.StrEnum):
    """Image classes a spawn may ask for (``image_class``)."""

    RECOMMENDED = "recommended"
    LATEST_RELEASE = "latest-release"
    LATEST_WEEKLY = "latest-weekly"
    LATEST_DAILY = "latest-daily"


def _single(value: Any) -> Any:
    """Unwrap JupyterHub's one-element lists; refuse longer ones."""
    if isinstance(value, list):
        if len(value) != 1:
            raise PydanticCustomError(
                "value_error",
                "Expected a single value, got a list of {count}",
                {"count": len(value)},
            )
        return value[0]
    return value


def _boolean(value: Any) -> bool:
    """A boolean, or the form's strings ``true`` and ``false``, and nothing else.

    The reference protocol accepts exactly these; pydantic alone would also
    take ``yes``, ``on``, ``1`` and ``0``.
    """
    value = _single(value)
    if isinstance(value, bool):
        return value
    if value == "true":
        return True
    if value == "false":
        return False
    raise PydanticCustomError(
        "bool_parsing", "Input should be true or false (a boolean, or the string)"
    )


def _reference(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        ImageReference.parse(value)
    except ValueError as exc:
        raise PydanticCustomError("invalid_docker_reference", str(exc)) from exc
    return value


# Each option may come as a bare value or a one-element list (raw form data);
# null and an empty list leave an optional option out.  The input types tell
# the OpenAPI document so.
_Text = BeforeValidator(_single, json_schema_input_type=str | conlist(str, max_length=1) | None)
_OptionalText = Annotated[str | None, _Text]
_Reference = Annotated[str | None, _Text, AfterValidator(_reference)]
_Bool = Annotated[
    bool,
    BeforeValidator(
        _boolean,
        json_schema_input_type=bool
        | Literal["true", "false"]
        | conlist(bool | Literal["true", "false"], max_length=1)
        | None,
    ),
]


class LabOptions(BaseModel):
    """The spawn form's options, as JupyterHub sends them."""

    model_config = ConfigDict(extra="ignore")

    image_list: _Reference = Field(
        None, description="Image reference chosen from the radio list, or the dropdown sentinel."
    )
    image_dropdown: _Reference = Field(None, description="Image reference chosen in the dropdown.")
    image_class: Annotated[
        ImageClassChoice | None,
        BeforeValidator(
            _single,
            json_schema_input_type=ImageClassChoice
            | conlist(ImageClassChoice, max_length=1)
            | None,
        ),
    ] = Field(None, description="Class of image: the recommended one or the latest of a kind.")
    image_tag: _OptionalText = Field(None, description="Tag of an available image.")
    size: Annotated[
        str,
        BeforeValidator(
            _single, json_schema_input_type=str | conlist(str, min_length=1, max_length=1)
        ),
        AfterValidator(str.lower),
    ] = Field(description="Lab size name (case-insensitive).")
    enable_debug: _Bool = Field(False, description="Run the lab with debug logging.")
    reset_user_env: _Bool = Field(False, description="Move the user's environment aside first.")

    @model_validator(mode="before")
    @classmethod
    def _drop_absent(cls, data: Any) -> Any:
        """Take ``null`` and an empty list as the option left out, as the reference does."""
        if not isinstance(data, dict):
            return data
        data = {key: value for key, value in data.items() if value is not None and value != []}
        if _single_or_none(data.get("image_list")) == DROPDOWN_SENTINEL:
            del data["image_list"]
        return data

    @model_validator(mode="after")
    def _one_image(self) -> LabOptions:
        if self.image_list is not None:
            # A real choice in the list overrides the dropdown (as Nublado).
            self.image_dropdown = None
        chosen = [name for name, value in self.image_fields() if value is not None]
        if len(chosen) != 1:
            found = ", ".join(chosen) if chosen else "none"
            raise PydanticCustomError(
                "value_error",
                "Exactly one of image_list, image_dropdown, image_class and image_tag"
                " must be given (found: {found})",
                {"found": found},
            )
        return self

    def image_fields(self) -> list[tuple[str, str | None]]:
        """Return the image fields with their values, in precedence order."""
        return [
            ("image_list", self.image_list),
            ("image_dropdown", self.image_dropdown),
            ("image_class", None if self.image_class is None else self.image_class.value),
            ("image_tag", self.image_tag),
        ]

    def image_choice(self) -> tuple[str, str]:
        """Return the one image field that was given and its value."""
        return next((name, value) for name, value in self.image_fields() if value is not None)


def _single_or_none(value: Any) -> Any:
    if isinstance(value, list) and len(value) == 1:
        return value[0]
    return value


class UserGroup(BaseModel):
    """A group the user belongs to."""

    name: str = Field(min_length=1, max_length=255, description="Group name.")
    id: int | None = Field(None, ge=0, le=MAX_ID, description="Numeric GID.")


class UserQuota(BaseModel):
    """Limits on what the user may spawn."""

    cpu: float | None = Field(None, ge=0, description="Most CPUs a lab may have.")
    memory: int | None = Field(None, ge=0, description="Most memory a lab may have, in bytes.")
    spawn: bool = Field(True, description="Whether the user may spawn labs at all.")


class UserInfo(BaseModel):
    """The user's identity, as the hub knows it (labd extension)."""

    name: str | None = Field(None, max_length=255, description="Display name.")
    uid: int | None = Field(None, ge=1, le=MAX_ID, description="Numeric UID the lab runs as.")
    gid: int | None = Field(None, ge=1, le=MAX_ID, description="Primary GID.")
    groups: list[UserGroup] = Field(default_factory=list, description="Supplementary groups.")
    quota: UserQuota | None = Field(None, description="What the user may spawn.")


SERVICE_PREFIX: Final = "JUPYTERHUB_SERVICE_PREFIX"
"""The variable whose value is the lab's URL path (docs/api.md: required)."""

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_URL_PATH = re.compile(r"/(?:[A-Za-z0-9._~!$&'()*+,;=:@-]|%[0-9A-Fa-f]{2}|/)*")
"""An absolute URL path: ``/``, then RFC 3986 path characters only."""


def _check_env(env: dict[str, str]) -> dict[str, str]:
    """Refuse names that are not variable names, and a service prefix that is no path."""
    for name in env:
        if not _ENV_NAME.fullmatch(name):
            raise PydanticCustomError(
                "value_error",
                "{name!r} is not a valid environment variable name"
                " (letters, digits and _, not starting with a digit)",
                {"name": name},
            )
    prefix = env.get(SERVICE_PREFIX)
    problem = None if prefix is None else service_prefix_problem(prefix)
    if problem is not None:
        raise PydanticCustomError("value_error", problem)
    return env


def service_prefix_problem(prefix: str) -> str | None:
    """Say why ``prefix`` is not a URL path a lab can serve under, or `None`.

    The prefix ends up after ``http://host:port`` in the lab's internal URL,
    so anything but a plain absolute path (``//host``, ``@host``, ``..``, a
    query) could point the hub somewhere else.
    """
    if not _URL_PATH.fullmatch(prefix) or prefix.startswith("//"):
        return (
            f"{SERVICE_PREFIX} must be an absolute URL path (starting with / and holding"
            " only URL path characters)"
        )
    if any(segment in (".", "..") for segment in prefix.split("/")):
        return f"{SERVICE_PREFIX} must not contain . or .. segments"
    return None


class LabSpecification(BaseModel):
    """Body of ``POST /spawner/v1/labs/{username}/create``."""

    options: LabOptions = Field(description="The spawn form's choices.")
    env: Annotated[dict[str, str], AfterValidator(_check_env)] = Field(
        description="Environment of the lab: valid variable names; needs the service prefix."
    )
    user: UserInfo | None = Field(
        None, description="Identity and quota of the user; only the hub may send it."
    )

    @model_validator(mode="after")
    def _service_prefix(self) -> LabSpecification:
        if SERVICE_PREFIX not in self.env:
            raise PydanticCustomError("value_error", "env must contain JUPYTERHUB_SERVICE_PREFIX")
        return self


class ResourceValues(BaseModel):
    """CPU and memory."""

    cpu: float = Field(description="CPUs.")
    memory: int = Field(description="Bytes of memory.")


class Resources(BaseModel):
    """Limits and requests of a lab."""

    limits: ResourceValues
    requests: ResourceValues


class ResolvedOptions(BaseModel):
    """The options a lab runs with, after resolution."""

    image: str = Field(description="Image reference, with digest when known.")
    size: str = Field(description="Size name.")
    enable_debug: bool = False
    reset_user_env: bool = False


class StateUser(BaseModel):
    """The user part of `LabStateModel`."""

    username: str
    name: str | None = None
    uid: int | None = None
    gid: int | None = None
    groups: list[UserGroup] = Field(default_factory=list)


class LabStateModel(BaseModel):
    """A lab as ``GET /spawner/v1/labs/{username}`` reports it."""

    user: StateUser
    options: ResolvedOptions
    status: Literal["pending", "running", "terminating", "terminated", "failed"]
    internal_url: str | None
    resources: Resources
    quota: UserQuota | None = None
