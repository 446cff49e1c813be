"""labd configuration: one YAML settings file plus ``LABD_*`` environment.

The whole configuration is validated once, at start, so that a typo or an
impossible value stops the daemon with a message naming the key and the
reason instead of surfacing later as a failed spawn. Every model forbids
unknown keys (a misspelt key is an error, never silently ignored) and is
frozen (configuration does not change while labd runs).

Sources, highest priority first:

1. ``LABD_*`` environment variables; nested keys are joined with ``__``
   (``LABD_TIMEOUTS__SPAWN=120``) and complex values may be JSON
   (``LABD_SIZES='{"small": {...}}'``).
2. The YAML settings file given to `load_config`.
3. The defaults below, which are enough to start labd with no file at all.

The file and the environment are merged key by key before validation, so an
environment variable overrides one nested key without replacing its
siblings from the file.
"""

from __future__ import annotations

import ipaddress
import re
import string
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from labd.lab.naming import username_problem
from labd.lab.protocol import MAX_ID
from labd.lab.quantity import format_bytes, parse_bytes, parse_cpu
from labd.lab.reference import PATH_SYNTAX, TAG_SYNTAX, ImageReference

__all__ = [
    "DEFAULT_EPHEMERAL_STORAGE_LIMIT",
    "DEFAULT_EPHEMERAL_STORAGE_REQUEST",
    "ENV_PREFIX",
    "MAX_BYTES",
    "MAX_CPU",
    "MAX_DURATION",
    "SERVICE_ACCOUNT_NAMESPACE_FILE",
    "AlertsConfig",
    "Config",
    "CopiedSecretConfig",
    "EgressConfig",
    "EgressRuleConfig",
    "GroupConfig",
    "HttpConfig",
    "ImageClass",
    "ImageConfig",
    "ImagesConfig",
    "KubernetesConfig",
    "LabConfig",
    "QuotaConfig",
    "RegistryConfig",
    "Resources",
    "RetryConfig",
    "SizeConfig",
    "TimeoutsConfig",
    "UserConfig",
    "UsersConfig",
    "VolumeConfig",
    "read_webhook_url",
]

ENV_PREFIX = "LABD_"
"""Prefix of the environment variables that override the settings file."""

_ENV_NESTED_DELIMITER = "__"

SERVICE_ACCOUNT_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
"""Where a pod reads its own namespace: the default of ``lab.secrets_namespace``
when labd runs in the cluster."""

ImageClass = Literal["release", "weekly", "daily", "experimental", "other"]
"""The class of a lab image, as offered by ``image_class`` in a spawn."""

_IMAGE_CLASSES: tuple[ImageClass, ...] = ("release", "weekly", "daily", "experimental", "other")

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_SECRET_KEY = re.compile(r"[-._a-zA-Z0-9]+")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

_ASYNC_DRIVERS = {"sqlite": "sqlite+aiosqlite", "postgresql": "postgresql+asyncpg"}


MAX_CPU = 10_000
"""Most CPU cores a setting may hold: no node comes near, so more is a typo."""

MAX_BYTES = 2**63 - 1
"""Most bytes a setting may hold: the largest Kubernetes quantity (int64)."""

MAX_DURATION = 7 * 24 * 3600
"""Longest duration a setting may hold, in seconds: one week.

No timeout, interval, backoff or window of labd is sensibly longer, so a
larger value is a mistake (``1e309`` reads as infinity; a unit mix-up). The
bound also keeps every ``now + timedelta(seconds=...)`` labd computes far
from `datetime`'s overflow past year 9999, which would fail each create or
step at run time instead of the configuration at load time.
"""

Cpu = Annotated[float, BeforeValidator(parse_cpu), Field(le=MAX_CPU)]
Bytes = Annotated[int, BeforeValidator(parse_bytes), Field(le=MAX_BYTES)]
Seconds = Annotated[float, Field(gt=0, le=MAX_DURATION)]
"""A duration setting, in seconds (fractions allowed): above 0, at most a week."""


# ---------------------------------------------------------------------------
# Models


class _Model(BaseModel):
    # allow_inf_nan: pydantic takes "inf", "nan" and "1e309" (which
    # overflows to infinity) as floats; no labd setting means any of them.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


DEFAULT_EPHEMERAL_STORAGE_LIMIT = 8 * 2**30
"""Ephemeral storage limit of a lab whose size sets none: 8 GiB."""

DEFAULT_EPHEMERAL_STORAGE_REQUEST = 512 * 2**20
"""Ephemeral storage request of a lab whose size sets none: 512 MiB (or the
limit, if smaller)."""


class Resources(_Model):
    """CPU, memory and ephemeral storage of one side (requests or limits) of a lab size."""

    cpu: Cpu = Field(
        gt=0, description="CPU cores; a number or a quantity such as `500m` (0.5 cores)."
    )
    memory: Bytes = Field(
        gt=0, description="Memory in bytes; a number or a quantity such as `4Gi` or `512Mi`."
    )
    ephemeral_storage: Bytes | None = Field(
        default=None,
        gt=0,
        description=(
            "Node-local disk in bytes (`/tmp`, logs); a quantity such as `8Gi`. Unset: "
            "8Gi for limits, 512Mi (or the limit if smaller) for requests."
        ),
    )


class SizeConfig(_Model):
    """A lab size users can pick: what the lab is guaranteed and capped at."""

    limits: Resources = Field(description="Hard caps for the lab container.")
    requests: Resources = Field(
        description="Guaranteed resources (what Kubernetes schedules by); at most `limits`."
    )
    description: str | None = Field(
        default=None, description="Text shown next to the size on the spawn form."
    )

    @property
    def ephemeral_storage_limit(self) -> int:
        """The lab's ephemeral storage limit in bytes, also the size of its ``/tmp``."""
        limit = self.limits.ephemeral_storage
        return DEFAULT_EPHEMERAL_STORAGE_LIMIT if limit is None else limit

    @property
    def ephemeral_storage_request(self) -> int:
        """The lab's ephemeral storage request in bytes."""
        request = self.requests.ephemeral_storage
        if request is None:
            return min(DEFAULT_EPHEMERAL_STORAGE_REQUEST, self.ephemeral_storage_limit)
        return request

    @model_validator(mode="after")
    def _check_requests_within_limits(self) -> Self:
        problems = []
        if self.requests.cpu > self.limits.cpu:
            problems.append(
                f"requests.cpu {self.requests.cpu} exceeds limits.cpu {self.limits.cpu}"
            )
        if self.requests.memory > self.limits.memory:
            problems.append(
                f"requests.memory {format_bytes(self.requests.memory)} exceeds "
                f"limits.memory {format_bytes(self.limits.memory)}"
            )
        if self.ephemeral_storage_request > self.ephemeral_storage_limit:
            default = " (the default)" if self.limits.ephemeral_storage is None else ""
            problems.append(
                f"requests.ephemeral_storage {format_bytes(self.ephemeral_storage_request)} "
                f"exceeds limits.ephemeral_storage "
                f"{format_bytes(self.ephemeral_storage_limit)}{default}"
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self


def _default_sizes() -> dict[str, SizeConfig]:
    def size(limit_cpu: float, limit_gib: int, request_cpu: float, request_gib: int) -> SizeConfig:
        return SizeConfig(
            limits=Resources(cpu=limit_cpu, memory=limit_gib * 2**30),
            requests=Resources(cpu=request_cpu, memory=request_gib * 2**30),
        )

    return {
        "small": size(1, 4, 0.25, 1),
        "medium": size(2, 8, 0.5, 2),
        "large": size(4, 16, 1, 4),
    }


class ImageConfig(_Model):
    """One lab image offered to users."""

    reference: str = Field(
        description=(
            "Docker/OCI reference with a tag, a digest or both, "
            "e.g. `registry.example/lab:w_2026_47@sha256:<64 hex>`."
        )
    )
    name: str | None = Field(
        default=None, description="Display name on the spawn form; defaults to the tag."
    )
    image_class: ImageClass | None = Field(
        default=None,
        description=(
            "`release`, `weekly`, `daily`, `experimental` or `other`; when unset, derived "
            "from the tag by `images.class_patterns` (always set after loading)."
        ),
    )

    @field_validator("reference")
    @classmethod
    def _check_reference(cls, value: str) -> str:
        return str(ImageReference.parse(value))

    @property
    def parsed(self) -> ImageReference:
        """The reference, parsed."""
        return ImageReference.parse(self.reference)

    @property
    def tag(self) -> str | None:
        """The reference's tag, if it has one."""
        return self.parsed.tag

    @property
    def display_name(self) -> str:
        """`name`, else the tag, else the whole reference."""
        return self.name or self.tag or self.reference


class RegistryConfig(_Model):
    """An OCI/Docker registry whose tags are offered as lab images."""

    url: str = Field(
        description=(
            "Base URL of the registry (`https://registry.example` or "
            "`http://127.0.0.1:5000`); labd calls `<url>/v2/...`."
        )
    )
    repository: str = Field(description="Repository path inside the registry (`sciplat/lab`).")
    username: str | None = Field(
        default=None, description="User for basic auth or the token server; needs `password_file`."
    )
    password_file: Path | None = Field(
        default=None, description="File holding the password of `username` (read at each refresh)."
    )
    token_file: Path | None = Field(
        default=None,
        description=(
            "File holding a bearer token sent as is (read at each refresh); not with `username`."
        ),
    )
    refresh_interval: Seconds = Field(
        default=300, description="Seconds between two reads of the registry."
    )
    keep_per_class: int | None = Field(
        default=None,
        ge=1,
        description=(
            "Keep only the newest N tags of each image class (the recommended tag always); "
            "null keeps every tag."
        ),
    )
    timeout: Seconds = Field(default=10, description="Seconds one registry request may take.")
    verify_tls: bool = Field(
        default=True, description="Verify the registry's TLS certificate (https only)."
    )

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not an http:// or https:// URL with a host")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry credentials: use username and password_file")
        if parts.query or parts.fragment or parts.path.strip("/"):
            raise ValueError(f"{value!r} must be the registry's root URL, without path or query")
        host = parts.netloc
        if ImageReference.parse(f"{host}/x:y").registry != host:
            raise ValueError(
                f"host {host!r} cannot name a registry in an image reference "
                "(it needs a dot, a port, or to be localhost)"
            )
        return f"{parts.scheme}://{host}"

    @field_validator("repository")
    @classmethod
    def _check_repository(cls, value: str) -> str:
        if not PATH_SYNTAX.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a repository path (lowercase components separated by '/')"
            )
        return value

    @model_validator(mode="after")
    def _check_auth(self) -> Self:
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together")
        if self.token_file is not None and self.username is not None:
            raise ValueError("token_file excludes username and password_file")
        return self

    @property
    def image_base(self) -> str:
        """Images of this registry are ``<image_base>:<tag>@<digest>``."""
        return f"{urlsplit(self.url).netloc}/{self.repository}"


class ImagesConfig(_Model):
    """The lab images users may choose from."""

    class_patterns: dict[str, str] = Field(
        default_factory=lambda: {
            "release": r"^r\d+(_\d+)*$",
            "weekly": r"^w_\d{4}_\d{2}$",
            "daily": r"^d_\d{4}_\d{2}_\d{2}$",
        },
        description=(
            "Image class to regular expression (Python `re`, searched in the tag) used to "
            "classify images without `image_class`; first match wins, no match is `other`."
        ),
    )
    registry: RegistryConfig | None = Field(
        default=None,
        description="A registry whose tags are offered too, refreshed in the background.",
    )
    available: list[ImageConfig] = Field(
        default_factory=list,
        validate_default=True,
        description=(
            "Images users may spawn, in spawn-form order; at least one unless `registry` is set."
        ),
    )
    recommended: str = Field(
        description=(
            "Tag or full reference of the recommended image: in `available`, or a tag of "
            "`registry`."
        )
    )

    @field_validator("class_patterns")
    @classmethod
    def _check_patterns(cls, value: dict[str, str]) -> dict[str, str]:
        for name, pattern in value.items():
            if name not in _IMAGE_CLASSES:
                raise ValueError(
                    f"unknown image class {name!r} (use one of: {', '.join(_IMAGE_CLASSES)})"
                )
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"{name}: invalid regular expression {pattern!r}: {exc}") from exc
            except (OverflowError, RecursionError) as exc:
                # What re raises, instead of re.error, for a repeat count
                # above 2**32 or parentheses nested a thousand deep.
                reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
                raise ValueError(f"{name}: regular expression too complex: {reason}") from None
        return value

    @field_validator("available")
    @classmethod
    def _classify(cls, value: list[ImageConfig], info: ValidationInfo) -> list[ImageConfig]:
        if not value and info.data.get("registry") is None and "registry" in info.data:
            raise ValueError("at least one image is required unless images.registry is set")
        seen: dict[str, int] = {}
        for index, image in enumerate(value):
            if image.reference in seen:
                raise ValueError(
                    f"[{index}] {image.reference!r} duplicates available[{seen[image.reference]}]"
                )
            seen[image.reference] = index
        patterns = info.data.get("class_patterns")
        if patterns is None:
            return value
        return [
            image
            if image.image_class is not None
            else image.model_copy(update={"image_class": _classify_tag(image.tag, patterns)})
            for image in value
        ]

    @field_validator("recommended")
    @classmethod
    def _check_recommended(cls, value: str, info: ValidationInfo) -> str:
        available: list[ImageConfig] | None = info.data.get("available")
        if available is None or "registry" not in info.data:
            return value
        registry: RegistryConfig | None = info.data["registry"]
        if registry is None:
            _find_image(available, value)
        elif not (TAG_SYNTAX.fullmatch(value) or _in_registry(value, registry)):
            try:
                _find_image(available, value)
            except ValueError:
                raise ValueError(
                    f"{value!r} is neither a tag nor an image of {registry.image_base} "
                    "nor among the available images"
                ) from None
        return value

    def find_static(self, wanted: str) -> ImageConfig | None:
        """Return the one available image a tag or reference names, if any.

        Parameters
        ----------
        wanted
            A tag (``w_2026_47``) or a reference, with or without digest.

        Returns
        -------
        ImageConfig or None
            The image, or `None` if no image or several match.
        """
        try:
            return _find_image(self.available, wanted)
        except ValueError:
            return None

    def classify(self, tag: str | None) -> ImageClass:
        """Return the class `class_patterns` gives a tag (``other`` if none)."""
        return _classify_tag(tag, self.class_patterns)


def _classify_tag(tag: str | None, patterns: Mapping[str, str]) -> ImageClass:
    if tag is not None:
        for name in _IMAGE_CLASSES:
            pattern = patterns.get(name)
            if pattern is not None and re.search(pattern, tag):
                return name
    return "other"


def _in_registry(wanted: str, registry: RegistryConfig) -> bool:
    """Whether a reference names a tag of the registry's repository."""
    try:
        ref = ImageReference.parse(wanted)
    except ValueError:
        return False
    return ref.base == registry.image_base and ref.tag is not None


def _find_image(available: list[ImageConfig], wanted: str) -> ImageConfig:
    """Find the image a tag or reference names, or raise a `ValueError`."""
    matches = [image for image in available if image.reference == wanted or image.tag == wanted]
    if not matches:
        try:
            ref = ImageReference.parse(wanted)
        except ValueError:
            ref = None
        if ref is not None:
            matches = [
                image
                for image in available
                if image.parsed.base == ref.base
                and ref.tag in (None, image.tag)
                and ref.digest in (None, image.parsed.digest)
            ]
    if not matches:
        names = ", ".join(image.reference for image in available)
        raise ValueError(f"{wanted!r} is not among the available images ({names})")
    if len(matches) > 1:
        names = ", ".join(image.reference for image in matches)
        raise ValueError(f"{wanted!r} is ambiguous: it matches {names}")
    return matches[0]


def _default_images() -> ImagesConfig:
    reference = "ghcr.io/labd/sciplat-lab:w_2026_47"
    return ImagesConfig(available=[ImageConfig(reference=reference)], recommended=reference)


class KubernetesConfig(_Model):
    """How labd reaches the Kubernetes API."""

    kubeconfig: Path | None = Field(
        default=None,
        description=(
            "Kubeconfig file; unset means the client's default (`$KUBECONFIG` or "
            "`~/.kube/config`) unless `in_cluster`."
        ),
    )
    context: str | None = Field(
        default=None, description="Kubeconfig context; unset means the current context."
    )
    in_cluster: bool = Field(
        default=False,
        description="Use the pod's service account (labd runs in the cluster); excludes "
        "`kubeconfig` and `context`.",
    )
    request_timeout: Seconds = Field(
        default=30.0, description="Timeout of one Kubernetes API call, in seconds."
    )
    max_concurrent_operations: int = Field(
        default=32, gt=0, description="Kubernetes operations the scheduler runs at once."
    )
    watch_timeout: Seconds = Field(
        default=90.0,
        description="Seconds of silence after which the pod watch is restarted.",
    )

    @field_validator("in_cluster")
    @classmethod
    def _check_in_cluster(cls, value: bool, info: ValidationInfo) -> bool:
        if value:
            clashes = [key for key in ("kubeconfig", "context") if info.data.get(key) is not None]
            if clashes:
                raise ValueError(f"in_cluster cannot be combined with {' or '.join(clashes)}")
        return value


class VolumeConfig(_Model):
    """A persistent volume claimed for each lab and mounted in its container."""

    name: str = Field(description="Volume and PVC name suffix; a DNS label.")
    mount_path: str = Field(description="Absolute path of the mount inside the lab.")
    storage: Bytes = Field(
        gt=0, description="Requested size in bytes; a number or a quantity such as `10Gi`."
    )
    storage_class: str | None = Field(
        default=None, description="StorageClass of the PVC; unset means the cluster default."
    )
    access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadOnlyMany"] = Field(
        default="ReadWriteOnce", description="PVC access mode."
    )
    read_only: bool = Field(default=False, description="Mount the volume read-only.")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        _check_dns_label(value, max_length=63)
        return value

    @field_validator("mount_path")
    @classmethod
    def _check_mount_path(cls, value: str) -> str:
        if not PurePosixPath(value).is_absolute():
            raise ValueError(f"{value!r} is not an absolute path")
        return value


class CopiedSecretConfig(_Model):
    """One key of an existing Secret, copied into every lab."""

    secret_name: str = Field(description="Name of the source Secret, in `lab.secrets_namespace`.")
    secret_key: str = Field(
        description="Key of the source Secret to copy; unique across `lab.secrets`."
    )
    env: str | None = Field(
        default=None, description="Environment variable of the lab that holds the value."
    )
    path: str | None = Field(
        default=None, description="Absolute path of a read-only file in the lab that holds it."
    )

    @field_validator("secret_name")
    @classmethod
    def _check_secret_name(cls, value: str) -> str:
        _check_dns_subdomain(value)
        return value

    @field_validator("secret_key")
    @classmethod
    def _check_secret_key(cls, value: str) -> str:
        if not _SECRET_KEY.fullmatch(value) or value == "." or value.startswith(".."):
            raise ValueError(
                f"{value!r} is not a Secret key (letters, digits, '-', '_' and '.'; "
                "not '.' and not starting with '..')"
            )
        if len(value) > 200:
            raise ValueError(f"{value!r} is longer than 200 characters")
        return value

    @field_validator("env")
    @classmethod
    def _check_env(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError(f"{value!r} is not a valid environment variable name")
        return value

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str | None) -> str | None:
        if value is None:
            return value
        path = PurePosixPath(value)
        if not path.is_absolute() or path == PurePosixPath("/"):
            raise ValueError(f"{value!r} is not an absolute file path")
        if ".." in path.parts:
            raise ValueError(f"{value!r} must not contain '..'")
        return str(path)


Port = Annotated[int, Field(strict=True, ge=1, le=65535)]
"""A TCP, UDP or SCTP port number, 1 to 65535 (a whole number, not text or a boolean)."""

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class EgressRuleConfig(_Model):
    """One more destination labs may connect to: a network or a namespace's pods."""

    cidr: str | None = Field(
        default=None,
        description=(
            "IPv4 or IPv6 network (`10.20.0.0/16`, `2001:db8::/32`; an address alone is "
            "that address); not with `namespace`."
        ),
    )
    except_: list[str] = Field(
        default_factory=list,
        alias="except",
        description=(
            "Networks inside `cidr` left out, e.g. the cluster's own ranges when `cidr` "
            "is `0.0.0.0/0`."
        ),
    )
    namespace: str | None = Field(
        default=None, description="Namespace whose pods labs may reach; not with `cidr`."
    )
    pod_labels: dict[str, str] = Field(
        default_factory=dict,
        description="With `namespace`: only the pods carrying all of these labels.",
    )
    ports: list[Port] = Field(
        default_factory=list,
        description="Destination ports allowed (1-65535); empty allows every port and protocol.",
    )
    protocol: Literal["TCP", "UDP", "SCTP"] = Field(
        default="TCP", description="Protocol of `ports`."
    )

    @field_validator("cidr")
    @classmethod
    def _check_cidr(cls, value: str | None) -> str | None:
        return None if value is None else str(_parse_network(value))

    @field_validator("except_")
    @classmethod
    def _check_except(cls, value: list[str]) -> list[str]:
        return [str(_parse_network(network)) for network in value]

    @field_validator("namespace")
    @classmethod
    def _check_namespace(cls, value: str | None) -> str | None:
        if value is not None:
            _check_dns_label(value, max_length=63)
        return value

    @field_validator("pod_labels")
    @classmethod
    def _check_pod_labels(cls, value: dict[str, str]) -> dict[str, str]:
        _check_labels(value)
        return value

    @model_validator(mode="after")
    def _check_destination(self) -> Self:
        if (self.cidr is None) == (self.namespace is None):
            raise ValueError("set exactly one of cidr and namespace")
        if self.except_ and self.cidr is None:
            raise ValueError("except needs cidr")
        if self.pod_labels and self.namespace is None:
            raise ValueError("pod_labels needs namespace")
        if "protocol" in self.model_fields_set and not self.ports:
            raise ValueError(
                "protocol applies to ports: without ports the rule allows every port and "
                "protocol; list the ports"
            )
        if self.cidr is not None:
            network = _parse_network(self.cidr)
            for text in self.except_:
                excluded = _parse_network(text)
                # As Kubernetes requires: a strict subnet of the same family.
                if (
                    excluded.version != network.version
                    or not excluded.subnet_of(network)  # type: ignore[arg-type]
                    or excluded == network
                ):
                    raise ValueError(
                        f"except {text!r} is not a strict subnet of cidr {self.cidr!r}"
                    )
        return self


class EgressConfig(_Model):
    """Where labs may open connections: the egress rules of each lab's NetworkPolicy.

    Everything not allowed here is refused, cloud metadata endpoints and the
    Kubernetes API included; replies to connections made to the lab (the
    hub's, through ingress) are always allowed.
    """

    allow_all: bool = Field(
        default=False,
        description="Let labs connect anywhere (one rule allowing all egress); the other "
        "keys are then ignored.",
    )
    dns: bool = Field(
        default=True,
        description="Allow DNS: UDP and TCP port 53, to any address unless `dns_namespace` "
        "is set.",
    )
    dns_namespace: str | None = Field(
        default=None,
        description="Allow DNS only to the pods of this namespace (e.g. `kube-system`); "
        "unset: to any address (needed for node-local DNS caches).",
    )
    dns_pod_labels: dict[str, str] = Field(
        default_factory=dict,
        description="With `dns_namespace`: only to the pods carrying all of these labels "
        "(e.g. `{k8s-app: kube-dns}`).",
    )
    hub: bool = Field(
        default=True,
        description="Allow every port of the pods in `lab.hub_namespace`: the hub API "
        "(`JUPYTERHUB_API_URL`) and the proxy.",
    )
    allow: list[EgressRuleConfig] = Field(
        default_factory=list,
        description="Further destinations: networks (`cidr`) or namespaces, with optional ports.",
    )

    @field_validator("dns_namespace")
    @classmethod
    def _check_dns_namespace(cls, value: str | None) -> str | None:
        if value is not None:
            _check_dns_label(value, max_length=63)
        return value

    @field_validator("dns_pod_labels")
    @classmethod
    def _check_dns_pod_labels(cls, value: dict[str, str]) -> dict[str, str]:
        _check_labels(value)
        return value

    @model_validator(mode="after")
    def _check_dns_selector(self) -> Self:
        if self.dns_pod_labels and self.dns_namespace is None:
            raise ValueError("dns_pod_labels needs dns_namespace")
        return self


def _parse_network(text: str) -> IPNetwork:
    """Parse an IPv4 or IPv6 network; refuse host bits set beside the prefix."""
    try:
        return ipaddress.ip_network(text, strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an IP network such as 10.20.0.0/16 ({exc})") from None


class LabConfig(_Model):
    """What every lab gets, whatever the user asked for."""

    uid: int = Field(
        default=1000,
        le=MAX_ID,
        description="UID of the lab process when the hub sends no user identity; never 0.",
    )
    gid: int = Field(
        default=1000,
        ge=0,
        le=MAX_ID,
        description="GID of the lab process when the hub sends none.",
    )
    port: int = Field(default=8888, ge=1, le=65535, description="Port JupyterLab listens on.")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment variables for every lab (names must be valid).",
    )
    hub_namespace: str = Field(
        default="jupyterhub",
        description="Namespace of JupyterHub, allowed in by each lab's NetworkPolicy.",
    )
    egress: EgressConfig = Field(
        default_factory=EgressConfig,
        description="Where labs may connect (by default DNS and the hub only).",
    )
    internal_url_template: str = Field(
        default="http://lab.{namespace}:{port}{service_prefix}",
        description=(
            "URL the hub uses to reach a lab; placeholders `{namespace}`, `{port}`, "
            "`{service_prefix}` and `{pod_ip}` only."
        ),
    )
    readiness_path: str | None = Field(
        default="{service_prefix}api",
        description="Path of the lab container's HTTP readiness probe (placeholder "
        "`{service_prefix}`); a lab is `running` once it answers. Null: no probe.",
    )
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = Field(
        default="IfNotPresent", description="Image pull policy of the lab container."
    )
    pod_delete_grace: int = Field(
        default=5,
        ge=0,
        le=MAX_DURATION,
        description="Grace period in seconds when deleting a lab pod; the lab's namespace "
        "is deleted once the pod is gone (or 60 s past this period).",
    )
    resource_quota: bool = Field(
        default=False,
        description="Add a ResourceQuota to each lab namespace equal to the size's limits.",
    )
    volumes: list[VolumeConfig] = Field(
        default_factory=list, description="Persistent volumes claimed for each lab."
    )
    secrets: list[CopiedSecretConfig] = Field(
        default_factory=list,
        description="Keys of existing Secrets copied into each lab's Secret at spawn.",
    )
    pull_secret: str | None = Field(
        default=None,
        description="Image pull Secret copied into each lab namespace and used by the pod.",
    )
    secrets_namespace: str | None = Field(
        default=None,
        description="Namespace of the Secrets of `secrets` and `pull_secret`; unset means "
        "labd's own namespace when `kubernetes.in_cluster`.",
    )

    @field_validator("uid")
    @classmethod
    def _check_uid(cls, value: int) -> int:
        if value == 0:
            raise ValueError("0 is root; labs run as a non-root user")
        if value < 0:
            raise ValueError(f"{value} is negative")
        return value

    @field_validator("env")
    @classmethod
    def _check_env(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name in value if not _ENV_NAME.fullmatch(name)]
        if bad:
            raise ValueError(f"invalid environment variable name(s): {', '.join(map(repr, bad))}")
        return value

    @field_validator("hub_namespace")
    @classmethod
    def _check_hub_namespace(cls, value: str) -> str:
        _check_dns_label(value, max_length=63)
        return value

    @field_validator("internal_url_template")
    @classmethod
    def _check_template(cls, value: str) -> str:
        allowed = {"namespace", "port", "service_prefix", "pod_ip"}
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(value)]
        except ValueError as exc:
            raise ValueError(f"malformed template: {exc}") from exc
        unknown = [f for f in fields if f is not None and f not in allowed]
        if unknown:
            raise ValueError(
                f"unknown placeholder(s) {', '.join('{' + f + '}' for f in unknown)} "
                "(allowed: {namespace}, {port}, {service_prefix}, {pod_ip})"
            )
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @field_validator("readiness_path")
    @classmethod
    def _check_readiness_path(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            fields = [field for _, field, _, _ in string.Formatter().parse(value)]
        except ValueError as exc:
            raise ValueError(f"malformed template: {exc}") from exc
        unknown = [f for f in fields if f is not None and f != "service_prefix"]
        if unknown:
            raise ValueError("the only placeholder is {service_prefix}")
        if not value.startswith(("/", "{service_prefix}")):
            raise ValueError("must start with / or {service_prefix}")
        return value

    @field_validator("volumes")
    @classmethod
    def _check_volumes(cls, value: list[VolumeConfig]) -> list[VolumeConfig]:
        for attribute in ("name", "mount_path"):
            seen: set[str] = set()
            for volume in value:
                key: str = getattr(volume, attribute)
                if key in seen:
                    raise ValueError(f"two volumes have {attribute} {key!r}")
                seen.add(key)
        return value

    @field_validator("pull_secret")
    @classmethod
    def _check_pull_secret(cls, value: str | None) -> str | None:
        if value is not None:
            _check_dns_subdomain(value)
        return value

    @field_validator("secrets_namespace")
    @classmethod
    def _check_secrets_namespace(cls, value: str | None) -> str | None:
        if value is not None:
            _check_dns_label(value, max_length=63)
        return value

    @model_validator(mode="after")
    def _check_secrets(self) -> Self:
        problems = [
            *_duplicates("secret_key", [s.secret_key for s in self.secrets]),
            *_duplicates("env", [s.env for s in self.secrets if s.env is not None]),
            *_duplicates(
                "path",
                [s.path for s in self.secrets if s.path is not None]
                + ["/tmp"]
                + [volume.mount_path for volume in self.volumes],
            ),
        ]
        if problems:
            raise ValueError("secrets: " + "; ".join(problems))
        return self

    @property
    def copies_secrets(self) -> bool:
        """Whether spawns read Secrets from `secrets_namespace`."""
        return bool(self.secrets) or self.pull_secret is not None


def _duplicates(what: str, values: list[str]) -> list[str]:
    """Describe each value that appears more than once."""
    seen: set[str] = set()
    repeated: list[str] = []
    for value in values:
        if value in seen and value not in repeated:
            repeated.append(value)
        seen.add(value)
    hint = " (by two secrets, or by a secret and /tmp or a volume)" if what == "path" else ""
    return [f"{what} {value!r} is used twice{hint}" for value in repeated]


def _read_own_namespace() -> str:
    """Return the namespace of labd's pod, from its service-account mount."""
    path = SERVICE_ACCOUNT_NAMESPACE_FILE
    try:
        namespace = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(
            f"lab.secrets_namespace is unset and labd's own namespace cannot be read "
            f"from {path} ({exc.strerror or type(exc).__name__}); set lab.secrets_namespace"
        ) from None
    _check_dns_label(namespace, max_length=63)
    return namespace


class QuotaConfig(_Model):
    """What a user may spawn: the sizes whose limits fit, or nothing."""

    cpu: Cpu | None = Field(
        default=None, gt=0, description="Most CPU cores a lab may have; unset: no cap on CPU."
    )
    memory: Bytes | None = Field(
        default=None, gt=0, description="Most memory a lab may have; unset: no cap on memory."
    )
    spawn: bool = Field(default=True, description="Whether the user may spawn labs at all.")


class GroupConfig(_Model):
    """A supplementary group of a configured user."""

    name: str = Field(min_length=1, max_length=255, description="Group name.")
    id: int | None = Field(default=None, ge=0, le=MAX_ID, description="Numeric GID.")


class UserConfig(_Model):
    """Identity and quota of a user, as the operator configures them.

    Used when the hub sends no ``user`` with a create, and always for a
    create made with a user's own token: a user never chooses their own
    uid, gid, groups or quota.  An unset field falls back to `users.default
    <UsersConfig.default>`, then to `lab.uid`/`lab.gid`.
    """

    name: str | None = Field(default=None, max_length=255, description="Display name.")
    uid: int | None = Field(
        default=None, ge=1, le=MAX_ID, description="UID the lab runs as; never 0."
    )
    gid: int | None = Field(default=None, ge=1, le=MAX_ID, description="Primary GID of the lab.")
    groups: list[GroupConfig] | None = Field(
        default=None, description="Supplementary groups of the lab process."
    )
    quota: QuotaConfig | None = Field(default=None, description="What the user may spawn.")


class UsersConfig(_Model):
    """Identities and quotas that labd trusts: the operator's, never a user's."""

    default: UserConfig = Field(
        default_factory=lambda: UserConfig(quota=QuotaConfig()),
        description="Fallback for every field a user's own entry leaves unset. Its quota, "
        "unless set, allows every configured size (the sizes are the cap).",
    )
    entries: dict[str, UserConfig] = Field(
        default_factory=dict, description="Per-user identity and quota, by JupyterHub username."
    )

    @field_validator("default")
    @classmethod
    def _default_has_quota(cls, value: UserConfig) -> UserConfig:
        # The fallback of last resort always has a quota, so a create
        # without one is checked against the operator's word, never "no limit".
        return (
            value if value.quota is not None else value.model_copy(update={"quota": QuotaConfig()})
        )

    @field_validator("entries")
    @classmethod
    def _check_usernames(cls, value: dict[str, UserConfig]) -> dict[str, UserConfig]:
        for username in value:
            problem = username_problem(username)
            if problem is not None:
                raise ValueError(f"{username!r}: {problem}")
        return value

    def identity(self, username: str) -> UserConfig:
        """Return the configured identity and quota of ``username``, defaults filled in."""
        entry = self.entries.get(username)
        if entry is None:
            return self.default
        fallback = self.default
        return UserConfig(
            name=entry.name if entry.name is not None else fallback.name,
            uid=entry.uid if entry.uid is not None else fallback.uid,
            gid=entry.gid if entry.gid is not None else fallback.gid,
            groups=entry.groups if entry.groups is not None else fallback.groups,
            quota=entry.quota if entry.quota is not None else fallback.quota,
        )


class TimeoutsConfig(_Model):
    """How long lab operations may take before they fail."""

    spawn: Seconds = Field(
        default=600, description="Seconds from create until the lab must be running."
    )
    delete: Seconds = Field(default=300, description="Seconds a delete may take before it fails.")


class RetryConfig(_Model):
    """Exponential backoff of failed Kubernetes steps."""

    initial: Seconds = Field(default=1.0, description="First retry delay, in seconds.")
    maximum: Seconds = Field(
        default=60.0, description="Longest retry delay, in seconds; at least `initial`."
    )
    spawn_attempts: int = Field(
        default=3,
        ge=1,
        description=(
            "Tries of a failing spawn step before the lab is marked failed"
            " (deletes retry until their timeout)."
        ),
    )

    @field_validator("maximum")
    @classmethod
    def _check_maximum(cls, value: float, info: ValidationInfo) -> float:
        initial = info.data.get("initial")
        if initial is not None and value < initial:
            raise ValueError(f"{value:g} is less than retry.initial {initial:g}")
        return value


def _check_dns_subdomain(value: str) -> None:
    if not _DNS_SUBDOMAIN.fullmatch(value) or len(value) > 253:
        raise ValueError(
            f"{value!r} is not a Kubernetes object name (lowercase letters, digits, '-' "
            "and '.', starting and ending with a letter or digit, at most 253 characters)"
        )


def read_webhook_url(path: Path) -> str:
    """Read the webhook URL kept in a file (one line; surrounding space ignored).

    Parameters
    ----------
    path
        The file.

    Returns
    -------
    str
        The URL.

    Raises
    ------
    ValueError
        If the file cannot be read or does not hold one http(s) URL. The
        message names the problem, never the file's content (a secret).
    """
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"{path}: is a directory, not a file") from None
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read: {exc.strerror}") from None
    if not text:
        raise ValueError(f"{path}: is empty; it must hold the webhook URL")
    if any(c.isspace() for c in text):
        raise ValueError(f"{path}: must hold exactly one URL, on one line")
    try:
        parts = urlsplit(text)
        valid = parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        valid = False
    if not valid:
        raise ValueError(f"{path}: does not hold an http:// or https:// URL with a host")
    return text


class AlertsConfig(_Model):
    """Operator alerts: where they go and how storms are grouped."""

    slack_webhook_file: Path | None = Field(
        default=None,
        description="File holding a Slack incoming-webhook URL; unset means no Slack alerts.",
    )
    webhook_url_file: Path | None = Field(
        default=None,
        description="File holding the URL of a generic JSON webhook; unset means none.",
    )
    window: Seconds = Field(
        default=60,
        description="Seconds during which further alerts of a kind are grouped into a summary.",
    )
    max_window: Seconds = Field(
        default=900,
        description="Longest grouping window while a storm lasts, in seconds; at least `window`.",
    )
    timeout: Seconds = Field(default=5, description="Timeout of one post, in seconds.")
    retries: int = Field(
        default=2,
        ge=0,
        le=10,
        description="Retries of a post answered 5xx or 429, or not answered.",
    )
    queue_size: int = Field(
        default=100, gt=0, description="Posts waiting per target; further ones are dropped."
    )
    instance: str | None = Field(
        default=None, description="Name of this labd in alerts; unset means the host name."
    )

    @field_validator("slack_webhook_file", "webhook_url_file")
    @classmethod
    def _check_url_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            read_webhook_url(value)
        return value

    @field_validator("max_window")
    @classmethod
    def _check_max_window(cls, value: float, info: ValidationInfo) -> float:
        window = info.data.get("window")
        if window is not None and value < window:
            raise ValueError(f"{value:g} is less than alerts.window {window:g}")
        return value


_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")


def _check_labels(labels: Mapping[str, str]) -> None:
    """Refuse label keys and values Kubernetes would refuse in a selector."""
    for key, value in labels.items():
        prefix, slash, name = key.rpartition("/")
        good_prefix = not slash or (_DNS_SUBDOMAIN.fullmatch(prefix) and len(prefix) <= 253)
        if not (good_prefix and _LABEL_NAME.fullmatch(name) and len(name) <= 63):
            raise ValueError(
                f"{key!r} is not a label key (an optional DNS subdomain and '/', then at most "
                "63 letters, digits, '-', '_' and '.', starting and ending with a letter or digit)"
            )
        if value and not (_LABEL_NAME.fullmatch(value) and len(value) <= 63):
            raise ValueError(
                f"label {key!r}: {value!r} is not a label value (at most 63 letters, digits, "
                "'-', '_' and '.', starting and ending with a letter or digit)"
            )


def _check_dns_label(value: str, *, max_length: int) -> None:
    if not _DNS_LABEL.fullmatch(value):
        raise ValueError(
            f"{value!r} is not a DNS label (lowercase letters, digits and '-', "
            "starting and ending with a letter or digit)"
        )
    if len(value) > max_length:
        raise ValueError(f"{value!r} is longer than {max_length} characters")


def _split_host_port(address: str) -> tuple[str, int]:
    """Split ``host:port`` or ``[v6]:port``; raise `ValueError` if malformed."""
    host, colon, port_text = address.rpartition(":")
    if not colon or not host:
        raise ValueError(f"{address!r} is not host:port")
    if host.startswith("["):
        if not host.endswith("]"):
            raise ValueError(f"{address!r}: unclosed '[' around the IPv6 address")
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as exc:
            raise ValueError(f"{address!r}: invalid IPv6 address {host!r}") from exc
    elif ":" in host:
        raise ValueError(f"{address!r}: put an IPv6 address in brackets, as in [::1]:8080")
    else:
        labels = host.split(".")
        if all(label.isdigit() for label in labels):
            try:
                ipaddress.IPv4Address(host)
            except ValueError as exc:
                raise ValueError(f"{address!r}: invalid IPv4 address {host!r}") from exc
        elif len(host) > 253 or not all(_HOSTNAME_LABEL.fullmatch(label) for label in labels):
            raise ValueError(f"{address!r}: invalid host name {host!r}")
    if not port_text.isdigit():
        raise ValueError(f"{address!r}: port {port_text!r} is not a number")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"{address!r}: port {port} is out of range (0-65535)")
    return host, port


class HttpConfig(_Model):
    """Bounds on the API server's client connections and event streams.

    Every open connection holds a file descriptor until the client or labd
    closes it.  Without these bounds a client that opens connections and
    never finishes a request holds them all until labd runs out of
    descriptors, and then nothing gets through, the hub's status reads
    included.  No token is needed for that, so the bounds apply before
    authentication.
    """

    header_timeout: float = Field(
        default=10,
        gt=0,
        le=3600,
        description="Seconds a client has to send a request line and headers, counted from "
        "its connection or from the previous answer; then the connection is closed.",
    )
    keepalive_timeout: float = Field(
        default=5,
        gt=0,
        le=3600,
        description="Seconds an idle connection is kept open after a response (in effect at "
        "most `header_timeout`).",
    )
    max_connections: int = Field(
        default=4096,
        gt=0,
        le=1_000_000,
        description="Client connections open at once; further ones get 503 and are closed. "
        "Lowered at start to fit the process's open-file limit.",
    )
    max_streams_per_user: int = Field(
        default=10,
        gt=0,
        description="Event streams open at once for one user; the next one gets 429.",
    )
    max_streams: int = Field(
        default=2000,
        gt=0,
        description="Event streams open at once in all; the next one gets 429.",
    )


class Config(BaseSettings):
    """The validated labd configuration.

    Build it with `load_config`, which reads the settings file and the
    environment and turns every validation failure into a `ConfigError`.
    ``Config()`` alone gives the defaults plus ``LABD_*`` variables from
    the process environment.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=_ENV_NESTED_DELIMITER,
        case_sensitive=False,
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
    )

    database_url: str = Field(
        default="sqlite+aiosqlite:///labd.db",
        description=(
            "SQLAlchemy URL of the database, with an async driver: `sqlite+aiosqlite` "
            "or `postgresql+asyncpg`."
        ),
    )
    database_lock_timeout: Seconds = Field(
        default=5,
        description=(
            "PostgreSQL: seconds a write waits for a row lock held outside this labd "
            "process before it fails as an unreachable database does (503 `not_ready`, "
            "a step retried)."
        ),
    )
    bind_address: str = Field(
        default="127.0.0.1:8080",
        description="`host:port` the HTTP API listens on (`[::1]:8080` for IPv6; port 0 "
        "picks a free port).",
    )
    path_prefix: str = Field(
        default="",
        description="URL prefix of every route: empty, or starting with `/` and not ending "
        "with `/`.",
    )
    token_file: Path | None = Field(
        default=None,
        description="File of SHA-256 token hashes with their roles; unset means no tokens.",
    )
    max_body_size: int = Field(
        default=65536, gt=0, description="Largest accepted request body, in bytes."
    )
    http: HttpConfig = Field(
        default_factory=HttpConfig,
        description="Time and number bounds on client connections and event streams.",
    )
    kubernetes: KubernetesConfig = Field(
        default_factory=KubernetesConfig, description="Access to the Kubernetes API."
    )
    namespace_prefix: str = Field(
        default="labd",
        description="Lab namespaces are `<prefix>-<user slug>`; a DNS label of at most 40 "
        "characters.",
    )
    lab: LabConfig = Field(default_factory=LabConfig, description="Settings of every lab.")
    users: UsersConfig = Field(
        default_factory=UsersConfig,
        description="Identity and quota of users for creates that carry none from the hub.",
    )
    sizes: dict[str, SizeConfig] = Field(
        default_factory=_default_sizes,
        min_length=1,
        description="Lab sizes by name (lowercase DNS labels; case-insensitive).",
    )
    default_size: str = Field(
        default="medium", description="Size preselected on the spawn form; must be in `sizes`."
    )
    images: ImagesConfig = Field(
        default_factory=_default_images, description="Lab images users may choose from."
    )
    timeouts: TimeoutsConfig = Field(
        default_factory=TimeoutsConfig, description="Deadlines of lab operations."
    )
    reconcile_interval: Seconds = Field(
        default=300,
        description="Seconds between full reconciles of labs against Kubernetes.",
    )
    retry: RetryConfig = Field(
        default_factory=RetryConfig, description="Backoff of failed Kubernetes steps."
    )
    alerts: AlertsConfig = Field(
        default_factory=AlertsConfig,
        description="Operator alerts (Slack, generic webhook); none configured by default.",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="Lowest level logged."
    )
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="`json` lines, `console` for people, or `auto`: console on a terminal, "
        "JSON otherwise.",
    )

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Read keyword arguments and ``LABD_*`` variables, no dotenv or secrets."""
        return (init_settings, env_settings)

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        try:
            url = make_url(value)
        except (ArgumentError, ValueError):
            # SQLAlchemy's message repeats the URL, password and all.
            raise ValueError("not a valid SQLAlchemy URL (driver://user:pass@host/db)") from None
        driver = url.drivername
        if driver in _ASYNC_DRIVERS.values():
            return value
        backend = driver.partition("+")[0]
        if backend in _ASYNC_DRIVERS:
            raise ValueError(
                f"driver {driver!r} is not async; use {_ASYNC_DRIVERS[backend]!r} "
                f"({_ASYNC_DRIVERS[backend]}://...)"
            )
        raise ValueError(
            f"unsupported database driver {driver!r}; use sqlite+aiosqlite or postgresql+asyncpg"
        )

    @field_validator("bind_address")
    @classmethod
    def _check_bind_address(cls, value: str) -> str:
        _split_host_port(value)
        return value

    @field_validator("path_prefix")
    @classmethod
    def _check_path_prefix(cls, value: str) -> str:
        if value == "":
            return value
        if not value.startswith("/"):
            raise ValueError(f"{value!r} must start with '/'")
        if value.endswith("/"):
            raise ValueError(f"{value!r} must not end with '/' (use '' for no prefix)")
        if "//" in value or any(c.isspace() or c in "?#%" for c in value):
            raise ValueError(f"{value!r} is not a plain URL path")
        return value

    @field_validator("token_file")
    @classmethod
    def _check_token_file(cls, value: Path | None) -> Path | None:
        if value is not None and str(value) in ("", "."):
            raise ValueError("must name a file")
        return value

    @field_validator("namespace_prefix")
    @classmethod
    def _check_namespace_prefix(cls, value: str) -> str:
        _check_dns_label(value, max_length=40)
        return value

    @field_validator("lab")
    @classmethod
    def _resolve_secrets_namespace(cls, value: LabConfig, info: ValidationInfo) -> LabConfig:
        """Default ``lab.secrets_namespace`` to labd's own namespace, in the cluster."""
        if not value.copies_secrets or value.secrets_namespace is not None:
            return value
        kubernetes: KubernetesConfig | None = info.data.get("kubernetes")
        if kubernetes is None:
            return value  # already reported under `kubernetes`
        if not kubernetes.in_cluster:
            raise ValueError(
                "lab.secrets or lab.pull_secret is set but lab.secrets_namespace is not, "
                "and labd does not run in the cluster (kubernetes.in_cluster) to use its "
                "own namespace; set lab.secrets_namespace"
            )
        return value.model_copy(update={"secrets_namespace": _read_own_namespace()})

    @field_validator("sizes", mode="before")
    @classmethod
    def _normalise_size_names(cls, value: Any) -> Any:
        if not isinstance(value, Mapping):
            return value
        normalised: dict[str, Any] = {}
        for name, size in value.items():
            if not isinstance(name, str):
                raise ValueError(f"size name {name!r} is not a string")
            key = name.lower()
            if key in normalised:
                raise ValueError(f"size {name!r} is defined twice (names are case-insensitive)")
            _check_dns_label(key, max_length=63)
            normalised[key] = size
        return normalised

    @field_validator("default_size")
    @classmethod
    def _check_default_size(cls, value: str, info: ValidationInfo) -> str:
        value = value.lower()
        sizes: dict[str, SizeConfig] | None = info.data.get("sizes")
        if sizes is not None and value not in sizes:
            raise ValueError(f"unknown size {value!r} (configured: {', '.join(sorted(sizes))})")
        return value

    @property
    def bind_host(self) -> str:
        """Host part of `bind_address`, without IPv6 brackets."""
        return _split_host_port(self.bind_address)[0]

    @property
    def bind_port(self) -> int:
        """Port part of `bind_address`."""
        return _split_host_port(self.bind_address)[1]

    @property
    def database_url_display(self) -> str:
        """`database_url` with any password replaced by ``***``, safe to log."""
        return make_url(self.database_url).render_as_string(hide_password=True)
