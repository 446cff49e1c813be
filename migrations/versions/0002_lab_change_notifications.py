"""Notify listeners when a lab row changes (PostgreSQL only).

Every insert of a lab, and every update that can change what a status read
reports, sends ``NOTIFY labd_lab_changes, '<username>'`` when its
transaction commits.  Each labd process listens and forgets the cached
status of that user (`labd.db.changes`), so replicas never serve a status
another replica has changed.  SQLite has no notifications: there, labd
assumes that it is the only process writing the database.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
labd_kind: str = "expand"

CHANNEL = "labd_lab_changes"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE FUNCTION labd_notify_lab_change() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('{CHANNEL}', NEW.username);
            RETURN NULL;
        END
        $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER labs_notify_change
        AFTER INSERT OR UPDATE OF state, version, spec, internal_url
        ON labs FOR EACH ROW EXECUTE FUNCTION labd_notify_lab_change()
        """
    )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER labs_notify_change ON labs")
    op.execute("DROP FUNCTION labd_notify_lab_change()")
