"""Record which labd may still run on the schema (expand and contract).

Replicas are upgraded one by one: the new release migrates the database
while replicas of the older release still serve.  Every migration declares
its kind (``labd_kind``): an *expand* adds only what older code ignores, a
*contract* drops or changes what older code used.  This one-row table holds
the oldest revision whose code may run on the schema; ``labd migrate`` keeps
it current (`labd.db.migrate.oldest_compatible`), and labd accepts a newer
schema than its own only while the record names its revision or an older
one (`labd.db.revision.check_schema`).

Expand, but no labd before this revision reads the record (they accept only
their own revision), so the record starts at this revision.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
labd_kind: str = "expand"


def upgrade() -> None:
    compat = op.create_table(
        "labd_schema_compat",
        sa.Column(
            "id",
            sa.SmallInteger(),
            autoincrement=False,
            nullable=False,
            comment="Always 1: one row",
        ),
        sa.Column(
            "oldest_revision",
            sa.String(length=32),
            nullable=False,
            comment="The oldest labd revision whose code may run on this schema",
        ),
        sa.CheckConstraint("id = 1", name=op.f("ck_labd_schema_compat_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_labd_schema_compat")),
    )
    op.bulk_insert(compat, [{"id": 1, "oldest_revision": revision}])


def downgrade() -> None:
    op.drop_table("labd_schema_compat")
