"""Serving chunks to other peers: upload slots, the upload cap, super-seeding offers, corrupt-file eviction.

Plain domain code: `serve` raises `peer.errors` types (NotHeld, Draining, Busy, Corrupt) and the gRPC
handler maps them to status codes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from shoal import content
from shoal.peer.errors import Busy, Corrupt, Draining, NotHeld
from shoal.peer.node import Stats
from shoal.peer.superseed import SuperSeeder
from shoal.ratelimit import TokenBucket
from shoal.store import CorruptChunk, Entry, Store
from shoal.store import NotHeld as Removed

logger = logging.getLogger(__name__)

PIGGYBACK_MAX_CHUNKS = 32768  # bitfields ride on chunk replies for files up to this many chunks (4 KiB)


@dataclass
class Served:
    """One chunk on its way out, with what the caller should be shown we hold; it holds an upload slot.

    The caller calls `release` once the reply's bytes have left (the RPC is done), so the slots bound the
    chunk bytes this peer holds in memory for uploads, not only the reads.
    """

    data: bytes
    complete: bool
    bitfield: bytes
    _release: Callable[[], None] = field(default=lambda: None, repr=False)

    def release(self) -> None:
        """Give the upload slot back (once; later calls do nothing)."""
        release, self._release = self._release, lambda: None
        release()


class Uploads:
    """Hands out chunks within `slots` concurrent uploads and the upload cap."""

    def __init__(
        self,
        store: Store,
        stats: Stats,
        bucket: TokenBucket,
        slots: int,
        announce_soon: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._stats = stats
        self._bucket = bucket
        self._slots = slots
        self._announce_soon = announce_soon
        self._clock = clock
        self._seeders: dict[str, SuperSeeder] = {}
        self.draining = False

    def drain(self) -> None:
        """Shutting down: every further chunk request is refused."""
        self.draining = True

    async def serve(self, entry: Entry, index: int, peer_id: str) -> Served:
        """Read one held chunk for `peer_id` (a valid index); its upload slot is held until `Served.release`."""
        if index not in entry.have:
            raise NotHeld(f"chunk {index} not held yet")
        if entry.retired:
            raise NotHeld(f"file {entry.file_id} was removed from this peer")
        self._take_slot()
        stats = self._stats
        handed_over = False
        try:
            complete = entry.complete
            _, length = content.chunk_span(entry.manifest, index)
            await self._bucket.take(length)
            try:
                data = await asyncio.to_thread(self._store.read_chunk, entry, index)
            except Removed as err:  # removed or evicted meanwhile: no longer served
                raise NotHeld(str(err)) from err
            except CorruptChunk as err:
                logger.error("%s; dropping the file from this peer", err)
                await asyncio.to_thread(self._store.remove, entry.file_id)
                self._announce_soon()
                raise Corrupt(str(err)) from err
            stats.uploaded_bytes += len(data)
            stats.chunks_uploaded += 1
            if complete:
                self._seeder(entry).served(index, peer_id)
            small = entry.have.size <= PIGGYBACK_MAX_CHUNKS
            served = Served(data, complete, self.bitfield_for(entry, peer_id) if small else b"", self._free_slot)
            handed_over = True
            return served
        finally:
            if not handed_over:
                self._free_slot()

    async def serve_read(self, read: Callable[[], Awaitable[bytes | None]]) -> Served | None:
        """Serve what `read` returns (a chunk of an origin import's part file) within the same slots, cap and
        counters as held chunks; None (slot given back) when it has no such chunk."""
        self._take_slot()
        stats = self._stats
        handed_over = False
        try:
            data = await read()
            if data is None:
                return None
            await self._bucket.take(len(data))
            stats.uploaded_bytes += len(data)
            stats.chunks_uploaded += 1
            served = Served(data, False, b"", self._free_slot)
            handed_over = True
            return served
        finally:
            if not handed_over:
                self._free_slot()

    def _take_slot(self) -> None:
        """One upload slot, or Draining / Busy."""
        if self.draining:
            raise Draining("peer is shutting down")
        stats = self._stats
        if stats.active_uploads >= self._slots:
            stats.busy_rejections += 1
            raise Busy("all upload slots busy")
        stats.active_uploads += 1

    def _free_slot(self) -> None:
        self._stats.active_uploads -= 1

    def bitfield_for(self, entry: Entry, peer_id: str, theirs: content.Bitfield | None = None) -> bytes:
        """The bitfield to show a caller: everything held, or a complete holder's super-seeding offer."""
        if not entry.complete:
            return entry.have.to_bytes()
        seeder = self._seeder(entry)
        seeder.saw(peer_id, theirs)
        offered = seeder.offer(peer_id)
        return (offered or entry.have).to_bytes()

    def _seeder(self, entry: Entry) -> SuperSeeder:
        seeder = self._seeders.get(entry.file_id)
        if seeder is None:
            seeder = self._seeders[entry.file_id] = SuperSeeder(entry.have.size, self._clock)
        return seeder
