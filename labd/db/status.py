"""The status of each user's lab, as the API reports it, kept in memory.

JupyterHub polls ``GET /spawner/v1/labs/{username}`` for every user it
knows, all the time, while labs change rarely.  `StatusCache` keeps the
rendered status of each user's current lab in memory so that those polls
cost no SQL, and drops an entry whenever the user's lab rows change:

* writes of this process drop it right after they commit (`LabStore` calls
  `StatusCache.invalidate`, see `LabStore.on_write`);
* on PostgreSQL, writes of other processes (other replicas) drop it when
  their notification arrives (`labd.db.changes.ChangeListener`).  While that
  listener is not connected the cache is *off* and every read goes to SQL,
  so a replica never serves what another replica changed for longer than a
  notification takes to arrive.

A read that misses goes to SQL and fills the entry, unless a write of that
user was committed while it read: every invalidation bumps the user's
generation, and a reader stores its row only if the generation it saw
before reading is still current.  Without that check, a read that started
before a write and finished after it would cache the old row for good.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from labd.db.store import LabStore
from labd.lab.machine import LabState
from labd.lab.metrics import Metrics
from labd.lab.protocol import (
    LabStateModel,
    ResolvedOptions,
    Resources,
    StateUser,
    UserGroup,
)
from labd.lab.records import LabRecord

__all__ = ["DEFAULT_CACHE_SIZE", "LabStatus", "StatusCache", "lab_state_model"]

DEFAULT_CACHE_SIZE: Final = 50_000
"""Users whose status is kept; beyond it, the oldest entries are dropped."""

_WARM_PAGE: Final = 1_000
"""Users' labs read per query while warming the cache."""

_WARM_BATCH: Final = 200
"""Entries rendered between two yields to the event loop while warming."""


@dataclass(frozen=True, slots=True)
class LabStatus:
    """A user's current lab, as much of it as a status read needs."""

    lab_id: str
    """The lab's id."""

    state: LabState
    """The lab's state when it was read."""

    next_attempt_at: datetime | None
    """When the scheduler was to look at it next, when it was read."""

    body: bytes
    """The status document (`LabStateModel`) as JSON."""

    @classmethod
    def from_record(cls, lab: LabRecord) -> LabStatus:
        """Render the status of a lab row."""
        return cls(
            lab_id=lab.id,
            state=lab.state,
            next_attempt_at=lab.next_attempt_at,
            body=lab_state_model(lab).model_dump_json().encode(),
        )

    def model(self) -> LabStateModel:
        """The status document, parsed."""
        return LabStateModel.model_validate_json(self.body)


class StatusCache:
    """Status of each user's current lab, coherent with the database.

    Parameters
    ----------
    store
        Where a missed read goes.
    enabled
        Whether the cache starts on.  It must start off where another
        process may write and no change listener is connected yet.
    size
        How many users' status to keep at most.
    metrics
        Where reads are counted by source.
    """

    def __init__(
        self,
        store: LabStore,
        *,
        enabled: bool,
        size: int = DEFAULT_CACHE_SIZE,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._size = size
        metrics = metrics or Metrics()
        self._from_memory = metrics.status_reads.labels("memory")
        self._from_sql = metrics.status_reads.labels("sql")
        self._enabled_gauge = metrics.status_cache_enabled
        self._set_enabled(enabled)
        self._entries: dict[str, LabStatus | None] = {}
        self._generations: dict[str, int] = {}
        self._epoch = 0
        self.hits = 0
        """Reads answered from memory."""
        self.misses = 0
        """Reads that went to SQL."""

    @property
    def enabled(self) -> bool:
        """Whether reads may be answered from memory."""
        return self._enabled

    def __len__(self) -> int:
        return len(self._entries)

    async def get(self, username: str) -> LabStatus | None:
        """Return the status of the user's current lab, `None` if there is none."""
        if self._enabled:
            try:
                entry = self._entries[username]
            except KeyError:
                pass
            else:
                self.hits += 1
                self._from_memory.inc()
                return entry
        self.misses += 1
        self._from_sql.inc()
        epoch, generation = self._epoch, self._generations.get(username, 0)
        lab = await self._store.get_current_lab(username)
        status = None if lab is None else LabStatus.from_record(lab)
        if (
            self._enabled
            and epoch == self._epoch
            and generation == self._generations.get(username, 0)
        ):
            if len(self._entries) >= self._size:
                del self._entries[next(iter(self._entries))]
            self._entries[username] = status
        return status

    async def warm(self) -> int:
        """Fill the cache with every user's current lab, a page of users per query.

        Run after a start (or after the change listener reconnected), so
        that the hub's first poll of each user costs no SQL either.  Entries
        that a write invalidated while the query ran are left out.

        Returns
        -------
        int
            How many entries were added.
        """
        if not self._enabled:
            return 0
        epoch, generations = self._epoch, dict(self._generations)
        added = 0
        after = ""
        # Page by page: all 10,000 rows at once, with their specs, cost some
        # 60 MB of peak memory for a moment.
        while page := await self._store.list_current_labs(after=after, limit=_WARM_PAGE):
            after = page[-1].username
            for index, lab in enumerate(page):
                username = lab.username
                if index % _WARM_BATCH == 0:
                    await asyncio.sleep(0)  # Let requests in while rendering.
                if not self._enabled or epoch != self._epoch or len(self._entries) >= self._size:
                    return added
                if username in self._entries or self._generations.get(
                    username, 0
                ) != generations.get(username, 0):
                    continue
                self._entries[username] = LabStatus.from_record(lab)
                added += 1
        return added

    def invalidate(self, username: str) -> None:
        """Forget the user's status: one of their lab rows changed."""
        self._entries.pop(username, None)
        self._generations[username] = self._generations.get(username, 0) + 1

    def reset(self, *, enabled: bool) -> None:
        """Forget everything, and turn the cache on or off.

        The change listener turns it off when its connection drops (other
        processes' writes would go unseen) and on again, empty, once it
        listens again.
        """
        self._entries.clear()
        self._generations.clear()
        self._epoch += 1
        self._set_enabled(enabled)

    def _set_enabled(self, enabled: bool) -> None:
        self._enabled = enabled
        self._enabled_gauge.set(1 if enabled else 0)


def lab_state_model(lab: LabRecord) -> LabStateModel:
    """Build the API's view of a lab from its row."""
    spec = lab.spec
    user = spec.user
    status = lab.status
    assert status is not None, "deleted labs are not reported"
    return LabStateModel(
        user=StateUser(
            username=lab.username,
            name=user.name,
            uid=user.uid,
            gid=user.gid,
            groups=[UserGroup.model_validate(g.model_dump()) for g in user.groups],
        ),
        options=ResolvedOptions.model_validate(spec.options.model_dump()),
        status=status.value,
        internal_url=lab.internal_url,
        resources=Resources.model_validate(spec.resources.model_dump()),
        quota=spec.user_quota(),
    )
