"""The whole-file sha256 of a download, kept moving over its verified prefix so finishing costs little."""

from __future__ import annotations

import asyncio
import hashlib
import logging

from shoal.store import Entry, Store

logger = logging.getLogger(__name__)


class PrefixDigest:
    """Feeds chunks into one digest in file order as soon as the prefix up to them is verified."""

    def __init__(self, store: Store, entry: Entry) -> None:
        self.digest = hashlib.sha256()
        self.hashed = 0  # chunks fed, from the start
        self._store = store
        self._entry = entry
        self._task: asyncio.Task[None] | None = None

    def advance(self) -> None:
        """Hash what is newly contiguous, in a worker thread (one run at a time)."""
        entry = self._entry
        if self._task is not None or self.hashed >= entry.have.size or self.hashed not in entry.have:
            return

        async def run() -> None:
            try:
                self.hashed = await asyncio.to_thread(self._store.hash_prefix, entry, self.digest, self.hashed)
            finally:
                self._task = None

        self._task = asyncio.create_task(run())

    async def settle(self) -> None:
        """Wait for the run in progress, if any."""
        if self._task is not None:
            await self._task
