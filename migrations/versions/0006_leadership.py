"""Leadership of the cluster-wide work, and a wake-up when a lab falls due.

Several replicas share one PostgreSQL database, but only one of them (the
leader) runs the pod, namespace and Event watches and the reconciler
(`labd.db.leadership`).  Leadership is a session advisory lock; each time a
replica takes it, it bumps ``labd_leader.term``, the fencing token that a
leader checks before the writes and deletes only a leader may make.  The
one row exists on SQLite too, where the only labd always leads.

On PostgreSQL a trigger also sends ``NOTIFY labd_lab_due, '<epoch>'`` when a
lab's ``next_attempt_at`` is set or moved earlier (a new lab, a delete, a
wake-up): every replica's scheduler then wakes at that time instead of
polling.  A claim only pushes the time later, so it sends nothing.

Expand-only: a new table and a trigger that older labd releases ignore, so
replicas of the previous release keep running beside it while they are
upgraded one by one.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
labd_kind: str = "expand"

CHANNEL = "labd_lab_due"


def upgrade() -> None:
    leader = op.create_table(
        "labd_leader",
        sa.Column(
            "id",
            sa.SmallInteger(),
            autoincrement=False,
            nullable=False,
            comment="Always 1: one row",
        ),
        sa.Column(
            "term",
            sa.BigInteger(),
            nullable=False,
            comment="Bumped by each replica that becomes leader (the fencing token)",
        ),
        sa.Column("holder", sa.Text(), nullable=True, comment="Who took it: host and process"),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("id = 1", name=op.f("ck_labd_leader_one_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_labd_leader")),
    )
    op.bulk_insert(leader, [{"id": 1, "term": 0}])
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE FUNCTION labd_notify_lab_due() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.next_attempt_at IS NOT NULL AND (
                TG_OP = 'INSERT'
                OR OLD.next_attempt_at IS NULL
                OR NEW.next_attempt_at < OLD.next_attempt_at
            ) THEN
                PERFORM pg_notify(
                    '{CHANNEL}', extract(epoch FROM NEW.next_attempt_at)::text
                );
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER labs_notify_due
        AFTER INSERT OR UPDATE OF next_attempt_at ON labs
        FOR EACH ROW EXECUTE FUNCTION labd_notify_lab_due()
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER labs_notify_due ON labs")
        op.execute("DROP FUNCTION labd_notify_lab_due()")
    op.drop_table("labd_leader")
