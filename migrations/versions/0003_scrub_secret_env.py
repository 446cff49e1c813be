"""Remove the hub's secrets that older labd versions left in the labs table.

Before this revision labd cleared ``labs.secret_env`` only when a lab's
objects were created, so a spawn that failed, timed out or was deleted
before that kept the hub's token for the lab in SQL for good; and the
service's narrower rule of what is secret put variables such as ``api_key``
or ``DB_PASS`` into ``labs.spec`` (plain JSON) instead of ``secret_env``.

This revision applies today's rules to the rows already written:

* ``secret_env`` becomes SQL NULL in every state but ``requested`` and
  ``creating`` (the only ones whose Secret may still have to be written);
* variables of ``spec.env`` whose names are secret (`labd.lab.secrecy`) move to
  ``secret_env`` in those two states, and are dropped in every other (their
  lab's objects exist or never will).

The audit tables are not touched: transitions and events never held env
values.  There is no downgrade of removed values.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from labd.lab.secrecy import is_secret_name

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None
# Expand: it changes data, not the schema, and labd of the previous release
# works on the scrubbed rows (it reads secret_env only in requested and
# creating, where it is kept).  Until it is upgraded, though, such a labd
# can still leave secrets that this migration would have scrubbed.
labd_kind: str = "expand"

_HOLDING = ("requested", "creating")
_Json = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
_labs = sa.table(
    "labs",
    sa.column("id", sa.String),
    sa.column("state", sa.String),
    sa.column("spec", _Json),
    sa.column("secret_env", _Json),
)


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(sa.select(_labs.c.id, _labs.c.state, _labs.c.spec, _labs.c.secret_env))
    for lab_id, state, spec, secret_env in rows.all():
        env: dict[str, Any] = dict((spec or {}).get("env") or {})
        secret = {name: value for name, value in env.items() if is_secret_name(name)}
        values: dict[str, Any] = {}
        if secret:
            values["spec"] = {**spec, "env": {k: v for k, v in env.items() if k not in secret}}
        if state in _HOLDING:
            if secret:
                values["secret_env"] = {**(secret_env or {}), **secret}
        elif secret_env is not None:
            values["secret_env"] = sa.null()
        if values:
            bind.execute(sa.update(_labs).where(_labs.c.id == lab_id).values(values))
    # Rows whose secret_env holds JSON null: make it SQL NULL too.
    bind.execute(
        sa.update(_labs)
        .where(_labs.c.state.notin_(_HOLDING), _labs.c.secret_env.isnot(None))
        .values(secret_env=sa.null())
    )


def downgrade() -> None:
    # Removed secrets cannot come back, and nothing needs them to.
    pass
