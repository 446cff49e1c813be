"""Secrets copied into labs on a real API server: the tests of tests/core, run unchanged.

labd reads the source Secrets with only the rights of ``deploy/rbac.yaml``,
and the API server validates the copies as a cluster would: the
``kubernetes.io/dockerconfigjson`` pull Secret, the ``secretKeyRef``
variables and the read-only ``subPath`` mounts of the pod.
"""

from __future__ import annotations

from tests.core.test_secrets import (
    test_missing_secret_or_key_fails_the_spawn,
    test_spawn_copies_secrets,
)

__all__ = ["test_missing_secret_or_key_fails_the_spawn", "test_spawn_copies_secrets"]
