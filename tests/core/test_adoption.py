"""Adoption reads the spec annotation of any labd version; a bad one makes an orphan.

The annotations are the text older labd versions wrote (tests/lab/test_spec.py
holds the rows they come from): the reconciler rebuilds the row from one,
with the environment from the lab's ConfigMap, and writes the layout an older
labd reads.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from sqlalchemy import text

from labd.daemon.factory import Labd
from labd.kube.builder import SPEC_ANNOTATION, LabBuild, build_lab_objects
from labd.kube.client import create_api_client
from labd.kube.storage import LabKube
from labd.lab.spec import LabSpec
from labd.sim import SimCluster
from tests.support.specs import ROWS, WEEKLY, old_spec_annotation


async def create_with_annotation(labd: Labd, username: str, annotation: str) -> str:
    """Create a lab's objects behind labd's back, its spec annotation ``annotation``."""
    lab_id = str(uuid.uuid4())
    spec = LabSpec.from_row(
        {
            "options": {"image": WEEKLY, "size": "small"},
            "resources": {
                "limits": {"cpu": 1.0, "memory": 4 * 2**30},
                "requests": {"cpu": 0.25, "memory": 2**30},
            },
            "user": {"username": username, "uid": 1000, "gid": 1000},
            "env": {"JUPYTERHUB_SERVICE_PREFIX": f"/user/{username}/"},
        }
    )
    build = LabBuild(
        lab_id=lab_id,
        username=username,
        slug=username,
        namespace=f"labd-{username}",
        spec=spec,
        secret_env={"JUPYTERHUB_API_TOKEN": "x"},
    )
    objects = build_lab_objects(build, labd.config)
    for manifest in (objects.namespace, objects.pod):
        manifest["metadata"]["annotations"][SPEC_ANNOTATION] = annotation
    api_client = await create_api_client(labd.config.kubernetes)
    try:
        await LabKube(api_client, labd.config).create_lab_objects(objects)
    finally:
        await api_client.close()
    return lab_id


async def stored_spec(labd: Labd, lab_id: str) -> Any:
    """The ``labs.spec`` column as JSON, read past the store."""
    async with labd.database.read() as conn:
        stored = await conn.scalar(
            text("SELECT CAST(spec AS TEXT) FROM labs WHERE id = :id"), {"id": lab_id}
        )
    return json.loads(stored)


@pytest.mark.parametrize("name", ["first", "bare", "unknown keys"])
async def test_an_old_annotation_is_adopted_as_it_was_written(
    labd: Labd, sim: SimCluster, name: str
) -> None:
    row = json.loads(ROWS["bare" if name == "unknown keys" else name])
    annotated = {k: v for k, v in row.items() if k not in ("env", "previous_lab")}
    annotation = old_spec_annotation(row)
    if name == "unknown keys":
        annotation = json.dumps({**annotated, "gpu": {"count": 1}}, indent=1)
    lab_id = await create_with_annotation(labd, "bob", annotation)

    report = await labd.reconciler.reconcile()

    assert (report.adopted, report.orphans) == ([lab_id], [])
    lab = await labd.store.get_lab(lab_id)
    config_map = sim.objects("configmaps", "labd-bob")[0]["data"]
    assert lab.spec.env == config_map
    assert lab.spec.options.image == WEEKLY
    assert (lab.spec.user.uid, lab.spec.previous_lab) == (1000, None)
    assert lab.spec.quota is None
    assert (lab.spec.image_request is None) == (name != "first")
    # The row is the annotation plus the environment, as labd always wrote it,
    assert await stored_spec(labd, lab_id) == {**annotated, "env": config_map}
    # and the annotation rebuilt from it is the one labd wrote then.
    assert lab.spec.annotation() == old_spec_annotation(row)
    assert (await labd.service.get_state("bob")).user.uid == 1000


@pytest.mark.parametrize(
    "annotation",
    ["{not json", "[]", '"a string"', '{"user": {"uid": "root"}}', '{"options": []}'],
)
async def test_a_bad_annotation_makes_an_orphan(labd: Labd, annotation: str) -> None:
    lab_id = await create_with_annotation(labd, "mallory", annotation)

    report = await labd.reconciler.reconcile()

    assert (report.adopted, report.orphans) == ([], ["labd-mallory"])
    assert await labd.store.find_lab(lab_id) is None
    assert await labd.store.get_current_lab("mallory") is None
