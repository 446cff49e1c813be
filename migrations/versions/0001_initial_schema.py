"""Initial schema: labs, lab_transitions, lab_events.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# The first migration: no older labd exists to break, so it counts as an
# expand (a contract would name "no schema" as the oldest labd that may run).
labd_kind: str = "expand"


def upgrade() -> None:
    op.create_table(
        "labs",
        sa.Column(
            "id",
            sa.String(length=36),
            nullable=False,
            comment="Lab id (UUID), also the labd.io/lab-id label",
        ),
        sa.Column(
            "username", sa.String(length=255), nullable=False, comment="JupyterHub username"
        ),
        sa.Column(
            "slug",
            sa.String(length=63),
            nullable=False,
            comment="Kubernetes-safe form of the username",
        ),
        sa.Column(
            "namespace",
            sa.String(length=63),
            nullable=False,
            comment="The lab's Kubernetes namespace",
        ),
        sa.Column("state", sa.String(length=16), nullable=False, comment="State machine state"),
        sa.Column(
            "spec",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
            comment="Options, image, size, resources, user, quota",
        ),
        sa.Column(
            "secret_env",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
            comment="Secret environment values, kept only until the lab's Secret exists",
        ),
        sa.Column(
            "internal_url",
            sa.Text(),
            nullable=True,
            comment="URL of the lab inside the cluster, once it exists",
        ),
        sa.Column(
            "pod_phase",
            sa.String(length=16),
            nullable=True,
            comment="Last pod phase seen in Kubernetes",
        ),
        sa.Column("last_error", sa.Text(), nullable=True, comment="Why the last operation failed"),
        sa.Column(
            "operation",
            sa.SmallInteger(),
            nullable=False,
            comment="Number of the current operation",
        ),
        sa.Column(
            "attempts",
            sa.Integer(),
            server_default="0",
            nullable=False,
            comment="Failed step tries",
        ),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="When the scheduler should look again",
        ),
        sa.Column(
            "deadline_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="When the current operation times out",
        ),
        sa.Column(
            "version", sa.Integer(), nullable=False, comment="Optimistic concurrency counter"
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "deleted_at",
            sa.DateTime(timezone=True),
            nullable=True,
            comment="Set when the lab reached 'deleted'",
        ),
        sa.CheckConstraint(
            "state IN ('requested', 'creating', 'starting', 'running',"
            " 'exited', 'failed', 'deleting', 'deleted')",
            name=op.f("ck_labs_state"),
        ),
        sa.CheckConstraint("version >= 1", name=op.f("ck_labs_version")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_labs")),
    )
    with op.batch_alter_table("labs", schema=None) as batch_op:
        batch_op.create_index("ix_labs_next_attempt_at", ["next_attempt_at"], unique=False)
        batch_op.create_index("ix_labs_state", ["state"], unique=False)
        batch_op.create_index(
            "ix_labs_username_created_at", ["username", "created_at"], unique=False
        )
        batch_op.create_index(
            "uq_labs_username_live",
            ["username"],
            unique=True,
            sqlite_where=sa.text(
                "state IN ('creating', 'exited', 'failed', 'requested', 'running', 'starting')"
            ),
            postgresql_where=sa.text(
                "state IN ('creating', 'exited', 'failed', 'requested', 'running', 'starting')"
            ),
        )

    op.create_table(
        "lab_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
            comment="The SSE event id",
        ),
        sa.Column("lab_id", sa.String(length=36), nullable=False),
        sa.Column(
            "operation", sa.SmallInteger(), nullable=False, comment="labs.operation it belongs to"
        ),
        sa.Column(
            "type", sa.String(length=16), nullable=False, comment="info, error, failed or complete"
        ),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("progress", sa.SmallInteger(), nullable=True),
        sa.Column("terminal", sa.Boolean(), nullable=False, comment="Last event of its operation"),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "type IN ('info', 'error', 'failed', 'complete')", name=op.f("ck_lab_events_type")
        ),
        sa.CheckConstraint(
            "progress IS NULL OR progress BETWEEN 1 AND 100", name=op.f("ck_lab_events_progress")
        ),
        sa.ForeignKeyConstraint(
            ["lab_id"], ["labs.id"], name=op.f("fk_lab_events_lab_id_labs"), ondelete="RESTRICT"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lab_events")),
    )
    with op.batch_alter_table("lab_events", schema=None) as batch_op:
        batch_op.create_index(
            "ix_lab_events_lab_id_operation_id", ["lab_id", "operation", "id"], unique=False
        )

    op.create_table(
        "lab_transitions",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("lab_id", sa.String(length=36), nullable=False),
        sa.Column(
            "username",
            sa.String(length=255),
            nullable=False,
            comment="Copied for plain SQL audits",
        ),
        sa.Column(
            "version",
            sa.Integer(),
            nullable=False,
            comment="The lab's version after the transition",
        ),
        sa.Column("from_state", sa.String(length=16), nullable=False),
        sa.Column("to_state", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=32), nullable=False),
        sa.Column(
            "actor",
            sa.String(length=16),
            nullable=False,
            comment="hub, user, scheduler, reconciler, watcher",
        ),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column(
            "details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["lab_id"],
            ["labs.id"],
            name=op.f("fk_lab_transitions_lab_id_labs"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_lab_transitions")),
    )
    with op.batch_alter_table("lab_transitions", schema=None) as batch_op:
        batch_op.create_index("ix_lab_transitions_created_at", ["created_at"], unique=False)
        batch_op.create_index("ix_lab_transitions_username_id", ["username", "id"], unique=False)
        batch_op.create_index(
            "uq_lab_transitions_lab_id_version", ["lab_id", "version"], unique=True
        )


def downgrade() -> None:
    with op.batch_alter_table("lab_transitions", schema=None) as batch_op:
        batch_op.drop_index("uq_lab_transitions_lab_id_version")
        batch_op.drop_index("ix_lab_transitions_username_id")
        batch_op.drop_index("ix_lab_transitions_created_at")

    op.drop_table("lab_transitions")
    with op.batch_alter_table("lab_events", schema=None) as batch_op:
        batch_op.drop_index("ix_lab_events_lab_id_operation_id")

    op.drop_table("lab_events")
    with op.batch_alter_table("labs", schema=None) as batch_op:
        batch_op.drop_index(
            "uq_labs_username_live",
            sqlite_where=sa.text(
                "state IN ('creating', 'exited', 'failed', 'requested', 'running', 'starting')"
            ),
            postgresql_where=sa.text(
                "state IN ('creating', 'exited', 'failed', 'requested', 'running', 'starting')"
            ),
        )
        batch_op.drop_index("ix_labs_username_created_at")
        batch_op.drop_index("ix_labs_state")
        batch_op.drop_index("ix_labs_next_attempt_at")

    op.drop_table("labs")
