"""Read the Secrets that every lab gets a copy of.

Configuration names keys of existing Secrets (``lab.secrets``) and an image
pull Secret (``lab.pull_secret``) in one source namespace.  A spawn reads
them here, one GET per distinct Secret, and hands the values to the object
builder, which puts them in the lab's own Secrets.  The values are kept as
the base64 text Kubernetes returns (never decoded), live only as long as the
spawn step, and are never written to the database or a log: errors name the
Secret and the key, never what is in them.

A Secret or key that is missing is a configuration problem that no retry
will fix, so it raises `SecretSourceError` and the spawn fails at once with
a message naming it; any other failure is a `KubeError`, retried like every
other Kubernetes call of a spawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from labd.config import LabConfig
from labd.kube.builder import DOCKER_CONFIG_KEY
from labd.kube.storage import LabKube

__all__ = ["CopiedValues", "SecretSourceError", "read_copied_secrets"]


class SecretSourceError(Exception):
    """A Secret or a key that configuration copies into labs does not exist.

    The message names the Secret (``namespace/name``) and the key, and is
    shown to the user as the spawn's error event.
    """


@dataclass(frozen=True, slots=True)
class CopiedValues:
    """What a spawn copies into the lab, base64-encoded as read."""

    secrets: dict[str, str] = field(repr=False)
    """Values of ``lab.secrets`` by ``secret_key``."""

    docker_config: str | None = field(repr=False)
    """The ``.dockerconfigjson`` of ``lab.pull_secret``, if configured."""


async def read_copied_secrets(kube: LabKube, lab: LabConfig) -> CopiedValues:
    """Read every value that ``lab.secrets`` and ``lab.pull_secret`` name.

    Parameters
    ----------
    kube
        Reads the source Secrets.
    lab
        The ``lab`` configuration, with ``secrets_namespace`` resolved.

    Returns
    -------
    CopiedValues
        The values; empty when nothing is configured (and nothing is read).

    Raises
    ------
    SecretSourceError
        If a source Secret or one of its keys does not exist.
    KubeError
        If reading a Secret failed after its retries.
    """
    names = [copied.secret_name for copied in lab.secrets]
    if lab.pull_secret is not None:
        names.append(lab.pull_secret)
    if not names:
        return CopiedValues(secrets={}, docker_config=None)
    namespace = lab.secrets_namespace
    if namespace is None:
        raise SecretSourceError("lab.secrets_namespace is not set")
    sources = {name: await _read(kube, namespace, name) for name in dict.fromkeys(names)}
    secrets = {
        copied.secret_key: _value(sources, namespace, copied.secret_name, copied.secret_key)
        for copied in lab.secrets
    }
    docker_config = None
    if lab.pull_secret is not None:
        docker_config = _value(sources, namespace, lab.pull_secret, DOCKER_CONFIG_KEY)
    return CopiedValues(secrets=secrets, docker_config=docker_config)


async def _read(kube: LabKube, namespace: str, name: str) -> dict[str, Any]:
    secret = await kube.read_secret(namespace, name)
    if secret is None:
        raise SecretSourceError(f"Secret {namespace}/{name} does not exist")
    return secret


def _value(sources: dict[str, dict[str, Any]], namespace: str, name: str, key: str) -> str:
    value = (sources[name].get("data") or {}).get(key)
    if not isinstance(value, str):
        raise SecretSourceError(f"Secret {namespace}/{name} has no key {key}")
    return value
