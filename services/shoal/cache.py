"""The cache keeper: applies the quota policy (quota.py) to the store (store.py) and keeps its metrics' numbers.

Blocking, like the store: the daemon calls it through asyncio.to_thread. Every eviction it returns must be
withdrawn from the trackers by the caller at once (phase 2 wiring).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Collection
from pathlib import Path

from shoal.quota import Quota, QuotaExceeded, QuotaSpec, Usage
from shoal.store import Entry, Store, StoreError

logger = logging.getLogger(__name__)


class NoRoom(StoreError, QuotaExceeded):
    """A new download or put cannot fit in the cache quota; nothing was written."""


def usage(entries: Collection[Entry], active: Collection[str] = ()) -> list[Usage]:
    """Entries as the quota policy sees them; `active` names the files with a download running now."""
    return [
        Usage(
            file_id=e.file_id,
            name=e.manifest.name,
            size=e.held_bytes,
            last_used=e.last_used,
            complete=e.complete,
            pinned=e.pinned,
            active=e.file_id in active or e.readers > 0,  # a chunk being read now: evicted at a later sweep
            pending=e.manifest.size - e.held_bytes if e.file_id in active else 0,
        )
        for e in entries
    ]


class Cache:
    """One store under one quota: admission for new downloads and sweeps past the high mark."""

    def __init__(self, store: Store, quota: Quota) -> None:
        self.store = store
        self.quota = quota
        self._lock = threading.Lock()  # one admission or sweep at a time, so two downloads cannot both take the room

    @classmethod
    def open(cls, store: Store, spec: QuotaSpec, data_dir: Path) -> Cache:
        """A cache whose quota is resolved now (a fraction is of the data dir's filesystem size at start)."""
        return cls(store, Quota(spec.resolve(data_dir)))

    @property
    def bytes_used(self) -> int:
        """shoal_peer_store_bytes."""
        return self.store.bytes_used

    @property
    def quota_bytes(self) -> int:
        """shoal_peer_cache_quota_bytes (0 = no limit)."""
        return self.quota.limit

    @property
    def evictions_total(self) -> int:
        """shoal_peer_evictions_total."""
        return self.quota.evictions_total

    @property
    def evicted_bytes_total(self) -> int:
        """shoal_peer_evicted_bytes_total."""
        return self.quota.evicted_bytes_total

    def make_room(self, file_id: str, size: int, active: Collection[str] = ()) -> list[Usage]:
        """Admit a download of `file_id` (`size` bytes): evict what the policy says, or raise QuotaExceeded.

        Call it before the download writes anything; nothing is evicted when it cannot fit. A partial
        download being resumed is never among the victims. For a put, whose id is known only once it
        is hashed, pass file_id="" and the source's size. Returns the files evicted.
        """
        with self._lock:
            entry = self.store.get(file_id)
            if entry is not None:
                if entry.complete:
                    return []
                size = entry.manifest.size  # its verified part is counted here, not among the others
            others = [e for e in self.store.entries() if e.file_id != file_id]
            try:
                victims = self.quota.admit(size, usage(others, {*active, file_id}))
            except QuotaExceeded as err:
                raise NoRoom(str(err)) from err
            return self._evict(victims)

    def sweep(self, active: Collection[str] = ()) -> list[Usage]:
        """Past the high mark, evict down to the low mark (run it periodically and after each put or download)."""
        with self._lock:
            return self._evict(self.quota.plan(usage(self.store.entries(), active)))

    def _evict(self, victims: list[Usage]) -> list[Usage]:
        evicted = []
        for victim in victims:
            if self.store.evict(victim.file_id) is not None:
                self.quota.record(victim)
                evicted.append(victim)
        return evicted
