"""Sample labs and configurations shared by the kube tests."""

from __future__ import annotations

import json
import uuid

from labd.kube.builder import LabBuild
from labd.lab.naming import lab_namespace

__all__ = ["lab_build"]


def lab_build(username: str, *, lab_id: str | None = None, prefix: str = "labd") -> LabBuild:
    """Return a small lab for ``username``; the id is derived from the name unless given."""
    slug, namespace = lab_namespace(prefix, username)
    lab_id = lab_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"labd:{username}"))
    return LabBuild(
        lab_id=lab_id,
        username=username,
        slug=slug,
        namespace=namespace,
        image="ghcr.io/labd/sciplat-lab:w_2026_47",
        size="small",
        limits_cpu=1.0,
        limits_memory=4 * 2**30,
        requests_cpu=0.25,
        requests_memory=2**30,
        uid=1101,
        gid=1101,
        groups=[(username, 1101), ("science", 2000), ("nogid", None)],
        env={"JUPYTERHUB_SERVICE_PREFIX": f"/user/{username}/", "JUPYTERHUB_HOST": ""},
        secret_env={"JUPYTERHUB_API_TOKEN": f"token-of-{username}"},
        enable_debug=False,
        reset_user_env=False,
        spec_annotation=json.dumps({"image": "w_2026_47", "size": "small"}, sort_keys=True),
    )
