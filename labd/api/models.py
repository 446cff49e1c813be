"""Models that exist only on the wire: error bodies, history, health.

The request and lab-state models shared with the service live in
`labd.lab.protocol`; these are the API's own shapes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field

from labd.lab.records import TransitionRecord

__all__ = [
    "MAX_ID",
    "ErrorBody",
    "ErrorDetail",
    "Health",
    "HistoryEntry",
    "HistoryQuery",
    "Ready",
]

MAX_ID: Final = 2**63 - 1
"""Largest id of a stored row (64-bit signed on SQLite and PostgreSQL)."""


class ErrorDetail(BaseModel):
    """One problem with a request."""

    loc: list[str | int] | None = Field(
        None, description='Where in the request, e.g. `["body", "options", "size"]`.'
    )
    msg: str = Field(description="Human-readable explanation.")
    type: str = Field(description="Stable error code (docs/api.md).")


class ErrorBody(BaseModel):
    """Body of every error response."""

    detail: list[ErrorDetail] = Field(min_length=1, description="The problems found.")


class HistoryEntry(BaseModel):
    """One state transition of a user's lab, from the audit history."""

    model_config = ConfigDict(populate_by_name=True)

    id: int = Field(description="Transition id; pass as `before` to page.")
    lab_id: str = Field(description="The lab that moved.")
    time: datetime = Field(description="When it happened (UTC).")
    from_state: str = Field(alias="from", description="State before.")
    to_state: str = Field(alias="to", description="State after.")
    trigger: str = Field(description="What happened.")
    actor: str = Field(description="Who caused it: hub, user, scheduler, reconciler, watcher.")
    reason: str | None = Field(description="Why, in words.")
    details: dict[str, Any] | None = Field(description="Extra facts recorded with it.")

    @classmethod
    def from_record(cls, record: TransitionRecord) -> HistoryEntry:
        """Build the entry of one audit row."""
        return cls(
            id=record.id,
            lab_id=record.lab_id,
            time=record.created_at,
            from_state=record.from_state,
            to_state=record.to_state,
            trigger=record.trigger,
            actor=record.actor,
            reason=record.reason,
            details=record.details,
        )


class HistoryQuery(BaseModel):
    """Query parameters of the history route."""

    model_config = ConfigDict(extra="ignore")

    limit: int = Field(100, ge=1, le=1000, description="At most this many entries.")
    before: int | None = Field(
        None, ge=1, le=MAX_ID, description="Only entries with a smaller id."
    )


class Health(BaseModel):
    """Body of the health and readiness probes when all is well."""

    status: Literal["ok"] = "ok"


class Ready(Health):
    """Body of the readiness probe: ready, and whether this replica leads."""

    leader: bool = Field(
        False,
        description="Whether this replica leads: runs the watches and the reconciler"
        " (docs/replicas.md). Every replica serves the API and steps labs.",
    )
    leader_since: float | None = Field(
        None,
        description="Unix time when this replica's watches and reconciler started"
        " running in its current term as leader; null while it does not lead.",
    )
