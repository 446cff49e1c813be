"""SQL tables of labd.

The table and column names are part of labd's contract with auditors, who
query them with plain SQL (the README shows examples).  They are defined with
SQLAlchemy Core: the store builds its own statements, and Alembic compares
this metadata with the migrations (``alembic check`` runs in the tests).

Times are stored in UTC.  SQLite forgets time zones, so `UTCDateTime`
attaches UTC again on the way out.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.types import TypeDecorator

from labd.lab.machine import LIVE_STATES, MACHINE_STATES, LabState

__all__ = [
    "UTCDateTime",
    "lab_events",
    "lab_transitions",
    "labd_leader",
    "labd_schema_compat",
    "labs",
    "metadata",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware datetime stored as UTC on every database."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("labd stores only timezone-aware datetimes")
        value = value.astimezone(UTC)
        # SQLite keeps text; store it without an offset so that string order
        # is time order.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


# JSONB on PostgreSQL (indexable, compact); JSON text on SQLite.
_Json = JSON().with_variant(JSONB(), "postgresql")

# SQLite only auto-increments an INTEGER PRIMARY KEY.
_BigId = BigInteger().with_variant(Integer(), "sqlite")

_STATE_VALUES = ", ".join(f"'{state.value}'" for state in MACHINE_STATES if state != LabState.NEW)
_LIVE_VALUES = ", ".join(f"'{state.value}'" for state in sorted(LIVE_STATES))

labs = Table(
    "labs",
    metadata,
    Column(
        "id", String(36), primary_key=True, comment="Lab id (UUID), also the labd.io/lab-id label"
    ),
    Column("username", String(255), nullable=False, comment="JupyterHub username"),
    Column("slug", String(63), nullable=False, comment="Kubernetes-safe form of the username"),
    Column("namespace", String(63), nullable=False, comment="The lab's Kubernetes namespace"),
    Column("state", String(16), nullable=False, comment="State machine state"),
    Column("spec", _Json, nullable=False, comment="Options, image, size, resources, user, quota"),
    Column(
        "secret_env",
        _Json,
        comment="Secret environment values, kept only until the lab's Secret exists",
    ),
    Column("internal_url", Text, comment="URL of the lab inside the cluster, once it exists"),
    Column("pod_phase", String(16), comment="Last pod phase seen in Kubernetes"),
    Column("last_error", Text, comment="Why the last operation failed"),
    Column("operation", SmallInteger, nullable=False, comment="Number of the current operation"),
    Column("attempts", Integer, nullable=False, server_default="0", comment="Failed step tries"),
    Column("next_attempt_at", UTCDateTime, comment="When the scheduler should look again"),
    Column("deadline_at", UTCDateTime, comment="When the current operation times out"),
    Column("version", Integer, nullable=False, comment="Optimistic concurrency counter"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("updated_at", UTCDateTime, nullable=False),
    Column("deleted_at", UTCDateTime, comment="Set when the lab reached 'deleted'"),
    CheckConstraint(f"state IN ({_STATE_VALUES})", name="state"),
    CheckConstraint("version >= 1", name="version"),
    # At most one current lab per user, enforced by the database itself.
    Index(
        "uq_labs_username_live",
        "username",
        unique=True,
        sqlite_where=text(f"state IN ({_LIVE_VALUES})"),
        postgresql_where=text(f"state IN ({_LIVE_VALUES})"),
    ),
    Index("ix_labs_username_created_at", "username", "created_at"),
    Index("ix_labs_state", "state"),
    Index("ix_labs_next_attempt_at", "next_attempt_at"),
)

lab_transitions = Table(
    "lab_transitions",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True),
    Column(
        "lab_id",
        String(36),
        ForeignKey("labs.id", ondelete="RESTRICT"),
        nullable=False,
    ),
    Column("username", String(255), nullable=False, comment="Copied for plain SQL audits"),
    Column("version", Integer, nullable=False, comment="The lab's version after the transition"),
    Column("from_state", String(16), nullable=False),
    Column("to_state", String(16), nullable=False),
    Column("trigger", String(32), nullable=False),
    Column(
        "actor", String(16), nullable=False, comment="hub, user, scheduler, reconciler, watcher"
    ),
    Column("reason", Text),
    Column("details", _Json),
    Column("created_at", UTCDateTime, nullable=False),
    # One row per version of a lab: a gap or a duplicate is impossible.
    Index("uq_lab_transitions_lab_id_version", "lab_id", "version", unique=True),
    Index("ix_lab_transitions_username_id", "username", "id"),
    Index("ix_lab_transitions_created_at", "created_at"),
)

lab_events = Table(
    "lab_events",
    metadata,
    Column("id", _BigId, primary_key=True, autoincrement=True, comment="The SSE event id"),
    Column("lab_id", String(36), ForeignKey("labs.id", ondelete="RESTRICT"), nullable=False),
    Column("operation", SmallInteger, nullable=False, comment="labs.operation it belongs to"),
    Column("type", String(16), nullable=False, comment="info, error, failed or complete"),
    Column("message", Text, nullable=False),
    Column("progress", SmallInteger),
    Column("terminal", Boolean, nullable=False, comment="Last event of its operation"),
    Column("created_at", UTCDateTime, nullable=False),
    Column("step", String(32), comment="Named step it marks (labd.lab.progress.Step)"),
    CheckConstraint("type IN ('info', 'error', 'failed', 'complete')", name="type"),
    CheckConstraint("progress IS NULL OR progress BETWEEN 1 AND 100", name="progress"),
    Index("ix_lab_events_lab_id_operation_id", "lab_id", "operation", "id"),
)

labd_leader = Table(
    "labd_leader",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False, comment="Always 1: one row"),
    Column(
        "term",
        BigInteger,
        nullable=False,
        comment="Bumped by each replica that becomes leader (the fencing token)",
    ),
    Column("holder", Text, comment="Who took it: host and process"),
    Column("acquired_at", UTCDateTime),
    CheckConstraint("id = 1", name="one_row"),
)
"""Who leads the cluster-wide work (`labd.db.leadership`): one row, term by term."""

labd_schema_compat = Table(
    "labd_schema_compat",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False, comment="Always 1: one row"),
    Column(
        "oldest_revision",
        String(32),
        nullable=False,
        comment="The oldest labd revision whose code may run on this schema",
    ),
    CheckConstraint("id = 1", name="one_row"),
)
"""Which labd may run on the schema (`labd.db.revision.check_schema`): one row.

``labd migrate`` keeps it current (`labd.db.migrate.oldest_compatible`): an
expand migration leaves it, a contract moves it to the contract's parent.
"""
