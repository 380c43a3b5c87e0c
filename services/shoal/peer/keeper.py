"""The cache quota at run time: admission before a download writes, sweeps after changes and on a timer,
and rm / cancel / pin, each withdrawing what went from every tracker at once."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from shoal.cache import Cache
from shoal.peer.downloads import Downloads
from shoal.quota import Usage
from shoal.store import Entry

logger = logging.getLogger(__name__)

SWEEP_EVERY = 30.0  # seconds between timed sweeps (and last-use flushes); changes sweep at once


class Keeper:
    """Applies one peer's cache quota to its store, never touching a file a download is running for."""

    def __init__(
        self, cache: Cache, downloads: Downloads, announce_soon: Callable[[], None], every: float = SWEEP_EVERY
    ) -> None:
        self.cache = cache
        self._downloads = downloads
        self._announce_soon = announce_soon
        self._every = every
        self._wake = asyncio.Event()

    def sweep_soon(self) -> None:
        """Something was added or finished: sweep now rather than at the next tick."""
        self._wake.set()

    def _gone(self, evicted: list[Usage]) -> None:
        if evicted:
            self._announce_soon()  # the announce carries the full list: the evicted are withdrawn at once

    async def admit(self, file_id: str, size: int) -> None:
        """Make room for a download (or, with file_id "", a put) of `size` bytes; NoRoom when it cannot fit."""
        evicted = await asyncio.to_thread(self.cache.make_room, file_id, size, self._downloads.active())
        self._gone(evicted)

    async def sweep(self) -> list[Usage]:
        """Past the high mark, evict least-recently-used files down to the low mark."""
        evicted = await asyncio.to_thread(self.cache.sweep, self._downloads.active())
        self._gone(evicted)
        return evicted

    async def run(self) -> None:
        """Sweep on every change and every `every` seconds; write last-use times down as it goes."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._every)
            self._wake.clear()
            try:
                await self.sweep()
                await asyncio.to_thread(self.cache.store.flush_usage)
            except OSError as err:  # a sweep that failed is retried at the next one
                logger.warning("cache sweep failed: %s", err)

    async def remove(self, file_id: str) -> Entry:
        """`shoal rm`: stop its download, delete it, withdraw it; NotHeld when it is not here."""
        await self._downloads.stop(file_id)
        entry = await asyncio.to_thread(self.cache.store.delete, file_id)
        self._announce_soon()
        return entry

    async def cancel(self, file_id: str) -> Entry:
        """`shoal cancel`: stop the download and drop its partial data; NotHeld when no download of it is here."""
        store = self.cache.store
        entry = store.get(file_id)
        if entry is not None and not entry.complete:
            await self._downloads.stop(file_id)
        entry = await asyncio.to_thread(store.cancel, file_id)
        self._announce_soon()
        return entry

    async def pin(self, file_id: str, pinned: bool) -> Entry:
        """`shoal pin` / `unpin`; NotHeld when it is not here."""
        entry = await asyncio.to_thread(self.cache.store.pin, file_id, pinned)
        if not pinned:
            self.sweep_soon()  # an unpinned file may be what the quota was waiting to evict
        return entry
