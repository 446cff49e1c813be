"""Name the step each progress event marks, so no checkpoint is a percentage.

labd used to find how far a delete went by looking for the progress values
25 and 62 among its events.  From this revision each event of a named step
stores the step in ``lab_events.step`` (`labd.lab.progress.Step`), and
labd checks the step.

This is an expand-only change: the column is nullable and nothing older
reads it, so a labd of the previous release keeps running beside it while
replicas are upgraded one by one.  Events already written get their step
from their progress, which was unique to each step (Kubernetes Events of a
spawn take 35 to 74 but never 62, which is a delete's), so deletes and
spawns in flight during the upgrade carry on where they were.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
labd_kind: str = "expand"

_BY_PROGRESS = {
    1: "requested",
    2: "previous_deleting",
    5: "previous_pod_stopping",
    12: "previous_namespace_deleting",
    20: "previous_deleted",
    25: "pod_stopping",
    30: "objects_created",
    62: "namespace_deleting",
    100: "deleted",
}


def upgrade() -> None:
    with op.batch_alter_table("lab_events") as batch:
        batch.add_column(
            sa.Column(
                "step",
                sa.String(32),
                nullable=True,
                comment="Named step it marks (labd.lab.progress.Step)",
            )
        )
    events = sa.table(
        "lab_events",
        sa.column("type", sa.String),
        sa.column("progress", sa.SmallInteger),
        sa.column("step", sa.String),
    )
    info = events.c.type == "info"
    for progress, step in _BY_PROGRESS.items():
        op.execute(events.update().where(info, events.c.progress == progress).values(step=step))
    op.execute(
        events.update()
        .where(info, events.c.step.is_(None), events.c.progress.between(35, 74))
        .values(step="pod_event")
    )
    op.execute(events.update().where(events.c.type == "complete").values(step="started"))


def downgrade() -> None:
    with op.batch_alter_table("lab_events") as batch:
        batch.drop_column("step")
