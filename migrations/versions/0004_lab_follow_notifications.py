"""Notify followers of a lab when its events or its state change (PostgreSQL only).

Event streams (and deletes that wait for a lab to be gone) sleep until
their lab changes.  Inside one process the store wakes them
(`labd.db.store.LabStore.on_change`); a change written by another replica
reaches them through ``NOTIFY labd_lab_follow, '<lab id>'``, sent by these
triggers when the writing transaction commits, so no follower has to poll.
PostgreSQL folds identical notifications of one transaction into one, so
a transaction that writes ten events of a lab sends one.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
labd_kind: str = "expand"

CHANNEL = "labd_lab_follow"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE FUNCTION labd_notify_lab_follow() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_TABLE_NAME = 'labs' THEN
                PERFORM pg_notify('{CHANNEL}', NEW.id);
            ELSE
                PERFORM pg_notify('{CHANNEL}', NEW.lab_id);
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER labs_notify_follow
        AFTER UPDATE OF state, operation ON labs
        FOR EACH ROW EXECUTE FUNCTION labd_notify_lab_follow()
        """
    )
    op.execute(
        """
        CREATE TRIGGER lab_events_notify_follow
        AFTER INSERT ON lab_events
        FOR EACH ROW EXECUTE FUNCTION labd_notify_lab_follow()
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER lab_events_notify_follow ON lab_events")
    op.execute("DROP TRIGGER labs_notify_follow ON labs")
    op.execute("DROP FUNCTION labd_notify_lab_follow()")
