"""The spec of a lab: what was asked for it, fixed when it was requested.

`LabSpec` is the only reader and writer of the ``labs.spec`` column
(`LabSpec.to_row`, `LabSpec.from_row`) and of the ``labd.io/spec``
annotation on a lab's Namespace and Pod (`LabSpec.annotation`,
`LabSpec.from_annotation`), from which the reconciler rebuilds a lost row.
Everything else works with the typed values.

The JSON layout is the one every labd version has written::

    {
      "options": {"image": ..., "size": ..., "enable_debug": ..., "reset_user_env": ...},
      "resources": {"limits": {"cpu": ..., "memory": ...},
                    "requests": {"cpu": ..., "memory": ...}},
      "user": {"username": ..., "name": ..., "uid": ..., "gid": ...,
               "groups": [{"name": ..., "id": ...}]},
      "quota": {"cpu": ..., "memory": ..., "spawn": ...},
      "image_request": {"field": ..., "value": ...},
      "env": {...},
      "previous_lab": "<lab id>"
    }

``env`` (the hub's non-secret variables) and ``previous_lab`` (the lab a
spawn replaced, present only then) are kept in the row only; the annotation
is the rest, as compact JSON with sorted keys.

Reading is lenient, so that rows and annotations written by older labd
versions keep loading: a key they did not write takes the default the
readers of the untyped spec used (an empty image and size, options off, no
resources, no uid, no quota; ``quota`` was ``null`` for a create without
the hub's identity until 2026-12-02), and a key this version does not know
is ignored.  Writing is exact: a spec writes the keys it was read or built
with and no others (pydantic's *fields set*), so a row read and written
again keeps its layout, and a row written by this version is one an older
labd reads.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from labd.lab.protocol import LabSpecification, UserQuota
from labd.lab.secrecy import is_secret_name

__all__ = [
    "ImageRequest",
    "LabSpec",
    "LabSpecError",
    "SizeResources",
    "SpecGroup",
    "SpecOptions",
    "SpecQuantities",
    "SpecQuota",
    "SpecResources",
    "SpecUser",
]

_ROW_ONLY: Final = frozenset({"env", "previous_lab"})
"""Keys of the row that the annotation leaves out."""


class LabSpecError(ValueError):
    """A spec that is not JSON, not a JSON object, or holds a value of the wrong type."""


class _Part(BaseModel):
    """A frozen part of the spec that ignores keys it does not know."""

    model_config = ConfigDict(frozen=True, extra="ignore")


class SpecOptions(_Part):
    """The spawn options the lab runs with, its image resolved."""

    image: str = ""
    """Image reference (with its digest when the registry gave one)."""

    size: str = ""
    """Name of the lab size (lower case)."""

    enable_debug: bool = False
    """Whether the lab starts with debugging on."""

    reset_user_env: bool = False
    """Whether the lab moves the user's environment aside at start."""


class SpecQuantities(_Part):
    """CPU and memory of one side (limits or requests) of a lab."""

    cpu: float = 0
    """CPU cores."""

    memory: int = 0
    """Bytes of memory."""


class SpecResources(_Part):
    """CPU and memory of a lab, copied from its size when it was requested."""

    limits: SpecQuantities = SpecQuantities()
    """Hard caps."""

    requests: SpecQuantities = SpecQuantities()
    """What Kubernetes schedules by."""


class SpecGroup(_Part):
    """A group of the user."""

    name: str
    """Group name."""

    id: int | None = None
    """Numeric GID; a group without one is named in the environment only."""


class SpecUser(_Part):
    """Who the lab runs as."""

    username: str | None = None
    """The JupyterHub username."""

    name: str | None = None
    """Display name."""

    uid: int | None = None
    """UID the lab runs as (the builder refuses a lab without one)."""

    gid: int | None = None
    """Primary GID (the builder refuses a lab without one)."""

    groups: tuple[SpecGroup, ...] = ()
    """Supplementary groups."""


class SpecQuota(_Part):
    """The quota the spawn was checked against."""

    cpu: float | None = None
    """Most CPUs a lab may have."""

    memory: int | None = None
    """Most memory a lab may have, in bytes."""

    spawn: bool = True
    """Whether the user may spawn labs at all."""


class ImageRequest(_Part):
    """The image field of the spawn form that was used, before resolution."""

    field: str
    """``image_list``, ``image_dropdown``, ``image_class`` or ``image_tag``."""

    value: str
    """What it said."""


class _Quantities(Protocol):
    @property
    def cpu(self) -> float: ...

    @property
    def memory(self) -> int: ...


class SizeResources(Protocol):
    """The CPU and memory of a lab size (`labd.config.SizeConfig` is one)."""

    @property
    def limits(self) -> _Quantities: ...

    @property
    def requests(self) -> _Quantities: ...


class LabSpec(_Part):
    """What was asked for a lab: the value of ``labs.spec``."""

    options: SpecOptions = SpecOptions()
    """The spawn options, image resolved."""

    resources: SpecResources = SpecResources()
    """CPU and memory, from the size."""

    user: SpecUser = SpecUser()
    """Who the lab runs as."""

    quota: SpecQuota | None = None
    """The quota the spawn was checked against (``null`` in older rows)."""

    image_request: ImageRequest | None = None
    """The image the form asked for, before resolution."""

    env: Mapping[str, str] = Field(default_factory=dict)
    """The hub's variables whose names are not secret (row only)."""

    previous_lab: str | None = None
    """The lab this spawn replaced, which the scheduler waits to see gone (row only)."""

    @classmethod
    def new(
        cls,
        request: LabSpecification,
        *,
        image: str,
        size: SizeResources,
        user: SpecUser,
        quota: UserQuota,
        env: Mapping[str, str],
        previous_lab: str | None = None,
    ) -> Self:
        """Return the spec of a new lab.

        Parameters
        ----------
        request
            What the hub asked; its options are copied.
        image
            The image reference the request resolved to.
        size
            The requested size's configuration: its CPU and memory are copied.
        user
            Who the lab runs as (the hub's word, the configuration's for the rest).
        quota
            The quota the spawn was checked against.
        env
            The lab's variables from the hub; those whose names are secret
            are left out (they go to the lab's Secret, never to SQL).
        previous_lab
            The id of the lab this spawn replaces, if any.
        """
        options = request.options
        field, value = options.image_choice()
        spec = cls(
            options=SpecOptions(
                image=image,
                size=options.size,
                enable_debug=options.enable_debug,
                reset_user_env=options.reset_user_env,
            ),
            resources=SpecResources(
                limits=SpecQuantities(cpu=size.limits.cpu, memory=size.limits.memory),
                requests=SpecQuantities(cpu=size.requests.cpu, memory=size.requests.memory),
            ),
            user=user,
            quota=SpecQuota.model_validate(quota.model_dump()),
            image_request=ImageRequest(field=field, value=value),
            env={name: text for name, text in env.items() if not is_secret_name(name)},
        )
        if previous_lab is not None:
            # Written only when there is one, as always.
            spec = spec.model_copy(update={"previous_lab": previous_lab})
        return spec

    @classmethod
    def from_row(cls, data: Any) -> Self:
        """Read the spec from the JSON value of ``labs.spec``.

        Raises
        ------
        LabSpecError
            If ``data`` is not a JSON object, or one of its values has the
            wrong type.
        """
        if not isinstance(data, dict):
            raise LabSpecError(f"a lab spec is a JSON object, not {type(data).__name__}")
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise LabSpecError(f"invalid lab spec: {exc}") from exc

    @classmethod
    def from_row_text(cls, text: str | bytes) -> Self:
        """Read the spec from the text of ``labs.spec``, as the database holds it.

        Raises
        ------
        LabSpecError
            If the text is not JSON, not a JSON object, or one of its values
            has the wrong type.
        """
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise LabSpecError(f"invalid lab spec: {exc}") from exc

    @classmethod
    def from_annotation(cls, text: str) -> Self:
        """Read the spec from the text of the ``labd.io/spec`` annotation.

        The annotation holds no ``env`` and no ``previous_lab``; give the
        environment with `with_env`.

        Raises
        ------
        LabSpecError
            If the text is not JSON, or not a valid spec.
        """
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise LabSpecError(f"the spec annotation is not JSON: {exc}") from exc
        if isinstance(data, dict):
            data = {k: v for k, v in data.items() if k not in _ROW_ONLY}
        return cls.from_row(data)

    def to_row(self) -> dict[str, Any]:
        """Return the JSON value of ``labs.spec``: the keys read or set, and no others."""
        return self.model_dump(mode="json", exclude_unset=True)

    def annotation(self) -> str:
        """Return the text of the ``labd.io/spec`` annotation.

        The row without ``env`` and ``previous_lab``, as compact JSON with
        sorted keys: the same spec always gives the same text.
        """
        data = {k: v for k, v in self.to_row().items() if k not in _ROW_ONLY}
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    def with_env(self, env: Mapping[str, str]) -> Self:
        """Return this spec with the lab's environment ``env``."""
        return self.model_copy(update={"env": dict(env)})

    def user_quota(self) -> UserQuota | None:
        """Return the quota as the API reports it, or `None` if none was recorded."""
        return None if self.quota is None else UserQuota.model_validate(self.quota.model_dump())
