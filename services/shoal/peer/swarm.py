"""One download: many sources at once, rarest-first, endgame, bans, resume, peer exchange.

The dispatcher keeps up to `requests_per_peer` chunk requests in flight at each of up to
`max_peers` sources, fastest sources served first; an exchange loop per source keeps its
bitfield fresh and swaps known holders (peer exchange). It talks to other peers through a `Links`
and to the trackers through a `HolderLookup` (peer.ports), and knows failures only as `peer.errors` types.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Awaitable, Callable, Coroutine

from shoal import content
from shoal.peer.errors import Busy, DownloadError, Lied, LinkError, NoHolders, NotHeld
from shoal.peer.manifests import find_manifest, holders_from_trackers
from shoal.peer.node import Node
from shoal.peer.picker import Picker
from shoal.peer.ports import HolderLookup, Link, Links
from shoal.peer.progress import Summary, verified_bytes
from shoal.peer.source_sessions import Session, SourceSessions
from shoal.peer.sources import COOL_OFF_GONE, Source, Sources
from shoal.store import Entry, StoreError
from shoal.v1 import common_pb2

logger = logging.getLogger(__name__)

EXCHANGE_PERIOD = 2.0  # bitfields also ride on every chunk reply, so this only needs to catch idle sources
TRACKER_REFRESH = 3.0
FIRST_REFRESH = 0.5  # a new swarm fills up fast: ask again after 0.5 s, then 1 s, 2 s, up to TRACKER_REFRESH
STALL_TIMEOUT = 60.0  # no source and no progress this long: give up
MAX_VERIFYING = 8  # received chunks waiting for hash and write, beyond which request slots are held
TICK = 1.0  # with nothing heard, the dispatcher still looks this often (stalls, cool-offs ending)


class Download(SourceSessions):
    """Fetches one file into the store from the swarm, verifying every chunk."""

    def __init__(
        self,
        node: Node,
        trackers: HolderLookup,
        links: Links,
        file_id: str,
        output: str = "",
        *,
        announce_soon: Callable[[], None] = lambda: None,
        admit: Callable[[str, int], Awaitable[None]] = lambda file_id, size: asyncio.sleep(0),
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        tick: float = TICK,
    ) -> None:
        self.node = node
        self.file_id = file_id
        self.output = output
        self.entry: Entry | None = None
        self.summary = Summary()
        self._trackers = trackers
        self._links = links
        self._announce_soon = announce_soon
        self._admit_size = admit  # the cache quota's admission (file id, size): raises before anything is written
        self._clock = clock
        self._rng = rng or random.Random()
        self._tick = tick
        self._sources = Sources(
            node.info, node.config.max_peers, node.config.requests_per_peer, clock=clock, rng=self._rng
        )
        self._sessions: dict[str, Session] = {}
        self._picker: Picker | None = None
        self._wake = asyncio.Event()
        self._started = self._last_progress = self._transfer_started = clock()
        self._chunk_size = 1
        self._failure: BaseException | None = None
        self._verifying = 0  # chunks received and being verified and written
        self._spread = False  # few sources: chunk requests spread over several connections per source (links.py)
        self._writing: set[int] = set()  # indices whose bytes a fetch is verifying and writing right now
        self._serving = False  # a chunk of ours verified: the trackers have been asked to list us
        self._side_tasks: set[asyncio.Task[None]] = set()

    # ---- progress for the control API -------------------------------------------------------
    @property
    def elapsed(self) -> float:
        """Seconds since the download started."""
        return self._clock() - self._started

    @property
    def done_bytes(self) -> int:
        """Verified bytes so far."""
        return verified_bytes(self.entry)

    # ---- learning about sources --------------------------------------------------------------
    def add_sources(self, peers: list[common_pb2.PeerInfo]) -> None:
        """New holders heard of (tracker, peer exchange, or a peer that called us)."""
        self._sources.offer(peers)
        self._notify()

    def update_bitfield(self, address: str, bitfield: bytes, *, complete: bool) -> None:
        """Fresh chunk map for the peer at `address` (from an exchange or piggybacked on a chunk)."""
        if self._picker is None or not bitfield:
            return
        try:
            bits = content.Bitfield(self._picker.size, bitfield)
        except content.ContentError:
            return
        self._picker.set_bitfield(address, bits)
        source = self._sources.get(address)
        if source is not None:
            source.complete = complete or bits.complete
        self._notify()

    def _notify(self) -> None:
        self._wake.set()

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(coro)
        self._side_tasks.add(task)
        task.add_done_callback(self._side_tasks.discard)

    # ---- main flow ------------------------------------------------------------------------------
    async def run(self) -> Entry:
        """Download to completion, every chunk verified; raises DownloadError or StoreError saying why."""
        store = self.node.store
        try:
            entry = store.get(self.file_id)
            if entry is None:
                manifest, holders = await find_manifest(self.node, self._trackers, self._links, self.file_id)
                self.add_sources(holders)
                await self._admit_size(self.file_id, manifest.size)
                entry = await asyncio.to_thread(store.begin, self.file_id, manifest, self.output)
            elif not entry.complete:
                await self._admit_size(self.file_id, entry.manifest.size)
            self.entry = entry
            self.summary.resumed_chunks = entry.have.count
            if not entry.complete:
                await self._swarm(entry)
            self.summary.seconds = self._clock() - self._started
            return entry
        finally:
            await self._stop_all()

    async def _swarm(self, entry: Entry) -> None:
        self._transfer_started = self._clock()
        self._picker = Picker(entry.have, self._rng)
        self._chunk_size = int(entry.manifest.chunk_size)
        self.add_sources(list(self.node.known.get(self.file_id, {}).values()))
        last_tracker = self._clock()
        refresh = FIRST_REFRESH
        picker = self._picker
        # End on the picker's count, not the bitfield: a chunk written by a worker thread is only
        # accounted (bytes, sources, latency) once its fetch task records it.
        while picker.missing and not (entry.have.complete and not picker.inflight):
            if self._failure is not None:
                raise self._failure
            now = self._clock()
            if now - last_tracker >= refresh or (not self._sources.usable() and now - last_tracker >= 1.0):
                last_tracker = now
                refresh = min(TRACKER_REFRESH, refresh * 2)
                self._spawn(self._refresh_from_trackers())
            self._drop_stalled()
            self._admit()
            self._dispatch()
            if (
                not self._sources.admitted
                and not self._sources.candidates
                and now - self._last_progress > STALL_TIMEOUT
            ):
                raise NoHolders(f"no live peer holds the rest of file {self.file_id}")
            if now - self._last_progress > STALL_TIMEOUT * 2:
                raise DownloadError(f"download of {self.file_id} stalled: no chunk arrived for a while")
            self._wake.clear()
            # Sleep until something happens (a reply, a source, a failure) or the next timer is due:
            # no fixed polling, so an idle download costs nothing between its timers.
            wait = max(0.001, min(self._tick, last_tracker + refresh - self._clock()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
        await self._stop_all()
        await self._farewell(entry)
        await asyncio.to_thread(self.node.store.finish, entry)

    async def _farewell(self, entry: Entry) -> None:
        """Tell the sources we are complete (one last exchange), so they stop saving chunks for us."""
        bitfield = entry.have.to_bytes()

        async def one(source: Source) -> None:
            link = self._links.link(source.key)
            with contextlib.suppress(LinkError, TimeoutError):
                await asyncio.wait_for(link.exchange_with(self.file_id, self.node.info, bitfield, []), 1.0)

        await asyncio.gather(*(one(s) for s in self._sources.usable()))

    async def _refresh_from_trackers(self) -> None:
        self.add_sources(await holders_from_trackers(self.node, self._trackers, self.file_id))

    # ---- requests ---------------------------------------------------------------------------------
    def _room_in_budget(self, length: int) -> bool:
        """Bytes in flight (requested, or received and not yet written) stay within the peer's budget."""
        stats = self.node.stats
        return stats.inflight_bytes == 0 or stats.inflight_bytes + length <= self.node.config.inflight_budget

    def _dispatch(self) -> None:
        picker = self._picker
        entry = self.entry
        assert picker is not None and entry is not None
        stats = self.node.stats
        self._spread = self._sources.spread()
        for source in self._sources.by_preference():
            session = self._sessions.get(source.key)
            if source.busy or session is None:
                continue
            while source.room and self._room_in_budget(self._chunk_size):
                index = picker.pick(source.key)
                if index is None:
                    break
                picker.started(index, source.key)
                source.asked(index)
                stats.inflight_bytes += content.chunk_span(entry.manifest, index)[1]
                task = asyncio.create_task(self._fetch(source, session.link, index))
                task.add_done_callback(functools.partial(self._fetch_done, source, session, index))
                session.fetches[index] = task

    async def _exchange_loop(self, source: Source, link: Link) -> None:
        entry = self.entry
        assert entry is not None
        while True:
            try:
                reply = await link.exchange_with(
                    self.file_id, self.node.info, entry.have.to_bytes(), self.node.sample_known(self.file_id, 20)
                )
                source.answered()
                self.update_bitfield(source.key, reply.bitfield, complete=reply.complete)
                self.node.touch(self.file_id, source.info.peer_id)
                if reply.known:
                    self.add_sources(self.node.learn(self.file_id, list(reply.known)[:50], direct=False))
            except NotHeld:
                logger.info("%s no longer holds %s", source.key, self.file_id[:12])
                self._drop_dead(source, COOL_OFF_GONE)
                return
            except LinkError as err:
                self._failed(source, err)
                if source.dead_until > self._clock():
                    return
            await asyncio.sleep(EXCHANGE_PERIOD * self._rng.uniform(0.8, 1.2))

    async def _fetch(self, source: Source, link: Link, index: int) -> None:
        picker = self._picker
        entry = self.entry
        assert picker is not None and entry is not None
        node = self.node
        _, length = content.chunk_span(entry.manifest, index)
        try:
            await node.download_bucket.take(length)
            started = self._clock()
            reply = await link.fetch_chunk(
                self.file_id, index, node.peer_id, source.deadline(length), spread=self._spread
            )
            elapsed = max(self._clock() - started, 1e-6)
            if source.proven and self._verifying < MAX_VERIFYING:
                # Free the request slot now: the next request goes out while this chunk is checked.
                source.requesting.discard(index)
                self._notify()
            if reply.bitfield:
                self.update_bitfield(source.key, reply.bitfield, complete=reply.source_complete)
            if index in entry.have:
                # An endgame loser that arrived anyway. While the winner is still writing, it completes the chunk
                # (and counts its bytes): completing it here could end the download and cancel the winner first.
                if index not in self._writing:
                    picker.completed(index)
                return
            data = reply.data
            self._verifying += 1
            self._writing.add(index)
            try:
                verdict = await asyncio.to_thread(self._verify_and_write, entry, index, data)
            finally:
                self._verifying -= 1
                self._writing.discard(index)
            if verdict is None:
                self._rejected(source, index)
                return
            if not verdict:  # another fetch wrote it first; it completes the chunk unless it already has
                if index not in self._writing:
                    picker.completed(index)
                return
            self._accepted(source, index, len(data), elapsed, reply.source_complete)
            node.observer.chunk_fetched(elapsed, len(data))
        except Busy:
            source.said_busy(self._rng)
        except NotHeld:
            picker.drop_chunk(source.key, index)
        except Lied:
            self._rejected(source, index)  # refused a valid request, or an oversized or malformed reply
        except LinkError as err:
            self._failed(source, err)
        except StoreError as err:
            self._failure = err

    def _fetch_done(self, source: Source, session: Session, index: int, task: asyncio.Task[None]) -> None:
        """Bookkeeping for every fetch, including one cancelled before it ever ran."""
        if session.fetches.get(index) is task:
            del session.fetches[index]
        if self.entry is not None:
            self.node.stats.inflight_bytes -= content.chunk_span(self.entry.manifest, index)[1]
        source.requesting.discard(index)
        if self._picker is not None:
            self._picker.finished(index, source.key)
        self._notify()

    def _verify_and_write(self, entry: Entry, index: int, data: bytes | memoryview) -> bool | None:
        """In a worker thread: None if the chunk fails its hash, else whether it was newly written."""
        if not content.chunk_ok(entry.manifest, index, data):
            return None
        return self.node.store.write_chunk(entry, index, data)

    def _accepted(self, source: Source, index: int, nbytes: int, elapsed: float, complete: bool) -> None:
        stats = self.node.stats
        self._last_progress = self._clock()
        source.delivered(nbytes, elapsed)
        stats.downloaded_bytes += nbytes
        stats.chunks_verified += 1
        if complete:
            stats.from_complete_bytes += nbytes
        else:
            stats.from_partial_bytes += nbytes
        self.summary.received(source.key, nbytes, complete=complete)
        self.summary.transfer_seconds = self._last_progress - self._transfer_started
        assert self._picker is not None
        for loser in self._picker.completed(index):
            if loser != source.key:
                session = self._sessions.get(loser)
                task = session.fetches.get(index) if session is not None else None
                if task is not None:
                    task.cancel()
        if not self._serving:
            self._serving = True
            self._announce_soon()  # we now serve a chunk: let the trackers list us as a partial holder

    def _rejected(self, source: Source, index: int) -> None:
        stats = self.node.stats
        stats.chunks_rejected += 1
        self.summary.rejected_chunks += 1
        newly_banned = source.lied()
        logger.warning("chunk %d from %s failed verification (%d bad)", index, source.key, source.bad)
        if newly_banned:
            logger.warning("banning %s for this download", source.key)
            stats.peers_banned += 1
            self.summary.banned_peers += 1
            if self._picker is not None:
                self._picker.remove_source(source.key)
            session = self._sessions.get(source.key)
            if session is not None and session.exchange is not None:
                session.exchange.cancel()
            self.node.forget(self.file_id, source.info.peer_id)

    async def _stop_all(self) -> None:
        tasks = [t for s in self._sessions.values() for t in (s.exchange, *s.fetches.values()) if t is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
