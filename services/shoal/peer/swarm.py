"""One download: many sources at once, rarest-first, endgame, bans, resume, peer exchange.

The dispatcher keeps up to `requests_per_peer` chunk requests in flight at each of up to
`max_peers` sources, fastest sources served first; an exchange loop per source keeps its
bitfield fresh and swaps known holders (peer exchange).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import random
import time
from dataclasses import dataclass, field

import grpc

from shoal import content, net
from shoal.peer.exchange import LinkPool, PeerLink
from shoal.peer.node import Node
from shoal.peer.picker import Picker
from shoal.peer.trackers import TrackerClient, TrackersUnavailable
from shoal.store import Entry, StoreError
from shoal.v1 import common_pb2
from shoal.zone import prefer_zone

logger = logging.getLogger(__name__)

BAN_AFTER_BAD_CHUNKS = 3
DEAD_AFTER_FAILURES = 3
EXCHANGE_PERIOD = 2.0  # bitfields also ride on every chunk reply, so this only needs to catch idle sources
TRACKER_REFRESH = 3.0
FIRST_REFRESH = 0.5  # a new swarm fills up fast: ask again after 0.5 s, then 1 s, 2 s, up to TRACKER_REFRESH
STALL_TIMEOUT = 60.0  # no source and no progress this long: give up
SOURCE_STALL = 5.0  # floor of the stall timeout: a source that sends nothing this long past its usual pace is dead
MAX_VERIFYING = 8  # received chunks waiting for hash and write, beyond which request slots are held
FAST_CHUNK = 0.5  # a chunk arriving quicker than this opens the source's request window by one
SLOW_CHUNK = 1.5  # one slower than this closes it by one (down to a single request)


class DownloadError(Exception):
    """A download cannot finish; the message is for the user."""


class NoHolders(DownloadError):
    """No live peer holds (the rest of) the file."""


@dataclass
class Source:
    """What one download knows about one other peer."""

    info: common_pb2.PeerInfo
    link: PeerLink
    complete: bool = False
    requesting: set[int] = field(default_factory=set)  # chunks asked of it and not yet received
    rate: float = 0.0  # EWMA of bytes/s per request
    received: int = 0
    bad: int = 0
    failures: int = 0
    banned: bool = False
    dead_until: float = 0.0
    busy_until: float = 0.0
    last_activity: float = 0.0
    window: int = 2  # requests allowed in flight; grows on fast chunks, shrinks on slow ones

    def stall_timeout(self, length: int) -> float:
        """How long to wait for the next chunk before calling the source hung: its own pace, with margin."""
        if self.rate <= 0:
            return 2 * SOURCE_STALL  # pace unknown: nothing has arrived from it yet
        return max(SOURCE_STALL, 3 * length / self.rate)

    exchange_task: asyncio.Task[None] | None = None
    fetches: dict[int, asyncio.Task[None]] = field(default_factory=dict)

    @property
    def inflight(self) -> int:
        """Requests outstanding at this source (a received chunk being verified no longer counts)."""
        return len(self.requesting)

    @property
    def peer_id(self) -> str:
        """The source's peer id."""
        return self.info.peer_id


@dataclass
class Summary:
    """Where one download's bytes came from."""

    from_complete_bytes: int = 0
    from_partial_bytes: int = 0
    peers: set[str] = field(default_factory=set)
    resumed_chunks: int = 0
    rejected_chunks: int = 0
    banned_peers: int = 0
    seconds: float = 0.0


class Download:
    """Fetches one file into the store from the swarm, verifying every chunk."""

    def __init__(self, node: Node, trackers: TrackerClient, links: LinkPool, file_id: str, output: str = "") -> None:
        self.node = node
        self.file_id = file_id
        self.output = output
        self.entry: Entry | None = None
        self.summary = Summary()
        self._trackers = trackers
        self._links = links
        self._sources: dict[str, Source] = {}
        self._candidates: dict[str, common_pb2.PeerInfo] = {}
        self._picker: Picker | None = None
        self._wake = asyncio.Event()
        self._last_progress = time.monotonic()
        self._started = time.monotonic()
        self._max_peers = node.config.max_peers
        self._per_peer = node.config.requests_per_peer
        self._chunk_size = 1
        self._failure: BaseException | None = None
        self._digest = hashlib.sha256()
        self._hashed = 0  # chunks fed to _digest, in order
        self._hashing: asyncio.Task[None] | None = None
        self._verifying = 0  # chunks received and being verified and written

    # ---- progress for the control API -------------------------------------------------------
    @property
    def elapsed(self) -> float:
        """Seconds since the download started."""
        return time.monotonic() - self._started

    @property
    def done_bytes(self) -> int:
        """Verified bytes so far."""
        if self.entry is None:
            return 0
        manifest = self.entry.manifest
        if self.entry.have.complete:
            return int(manifest.size)
        full = self.entry.have.count * manifest.chunk_size
        last = len(manifest.chunk_sha256) - 1
        if last in self.entry.have:
            full -= manifest.chunk_size - content.chunk_span(manifest, last)[1]
        return full

    # ---- learning about sources --------------------------------------------------------------
    def add_sources(self, peers: list[common_pb2.PeerInfo]) -> None:
        """New holders heard of (tracker, peer exchange, or a peer that called us)."""
        for peer in peers:
            if peer.peer_id != self.node.peer_id and peer.peer_id not in self._sources:
                self._candidates[peer.peer_id] = peer
        self._notify()

    def update_bitfield(self, peer_id: str, bitfield: bytes, *, complete: bool) -> None:
        """Fresh chunk map for a peer (from an exchange or piggybacked on a chunk)."""
        if self._picker is None or not bitfield:
            return
        try:
            bits = content.Bitfield(self._picker.size, bitfield)
        except content.ContentError:
            return
        self._picker.set_bitfield(peer_id, bits)
        source = self._sources.get(peer_id)
        if source is not None:
            source.complete = complete or bits.complete
        self._notify()

    def _notify(self) -> None:
        self._wake.set()

    # ---- main flow ------------------------------------------------------------------------------
    async def run(self) -> Entry:
        """Download to completion and verify; raises DownloadError with a user-facing reason."""
        try:
            entry = self.node.store.get(self.file_id)
            if entry is None:
                manifest = await self._find_manifest()
                entry = await asyncio.to_thread(self.node.store.begin, self.file_id, manifest, self.output)
            self.entry = entry
            self.summary.resumed_chunks = entry.have.count
            if not entry.complete:
                await self._swarm(entry)
            self.summary.seconds = time.monotonic() - self._started
            return entry
        except StoreError as err:
            raise DownloadError(str(err)) from err
        finally:
            await self._stop_all()

    async def _holders_from_trackers(self) -> list[common_pb2.PeerInfo]:
        try:
            holders = await self._trackers.holders(self.file_id)
        except TrackersUnavailable as err:
            logger.warning("%s: %s", self.file_id[:12], err)
            return []
        peers = [h.peer for h in holders]
        self.node.learn(self.file_id, peers)
        return peers

    async def _find_manifest(self) -> common_pb2.Manifest:
        peers = await self._holders_from_trackers()
        known = list(self.node.known.get(self.file_id, {}).values())
        by_id = {p.peer_id: p for p in [*peers, *known] if p.peer_id != self.node.peer_id}
        if not by_id:
            raise NoHolders(f"no live peer holds file {self.file_id}")
        errors = []
        for peer in by_id.values():
            try:
                manifest = await self._links.link(peer.address).fetch_manifest(self.file_id)
            except content.ContentError as err:
                logger.warning("peer %s sent a bad manifest: %s", peer.address, err)
                errors.append(f"{peer.address}: bad manifest")
                self.node.forget(self.file_id, peer.peer_id)
                continue
            except grpc.aio.AioRpcError as err:
                errors.append(f"{peer.address}: {err.code().name}")
                continue
            self.add_sources(list(by_id.values()))
            return manifest
        raise NoHolders(f"no live peer could serve file {self.file_id} ({'; '.join(errors[:3])})")

    async def _swarm(self, entry: Entry) -> None:
        self._picker = Picker(entry.have)
        self._chunk_size = int(entry.manifest.chunk_size)
        self.add_sources(list(self.node.known.get(self.file_id, {}).values()))
        last_tracker = time.monotonic()
        refresh = FIRST_REFRESH
        picker = self._picker
        # End on the picker's count, not the bitfield: a chunk written by a worker thread is only
        # accounted (bytes, sources, latency) once its fetch task records it.
        while picker.missing and not (entry.have.complete and not picker.inflight):
            if self._failure is not None:
                raise self._failure
            now = time.monotonic()
            if now - last_tracker >= refresh or (not self._usable() and now - last_tracker >= 1.0):
                last_tracker = now
                refresh = min(TRACKER_REFRESH, refresh * 2)
                asyncio.create_task(self._refresh_from_trackers())
            self._drop_stalled(now)
            self._admit()
            self._dispatch()
            if not self._sources and not self._candidates and now - self._last_progress > STALL_TIMEOUT:
                raise NoHolders(f"no live peer holds the rest of file {self.file_id}")
            if now - self._last_progress > STALL_TIMEOUT * 2:
                raise DownloadError(f"download of {self.file_id} stalled: no chunk arrived for a while")
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), 0.25)
        await self._stop_all()
        await self._farewell(entry)
        if self._hashing is not None:
            await self._hashing
        await asyncio.to_thread(self.node.store.finish, entry, self._digest, self._hashed)

    async def _farewell(self, entry: Entry) -> None:
        """Tell the sources we are complete (one last exchange), so they stop saving chunks for us."""
        bitfield = entry.have.to_bytes()
        sources = self._usable()

        async def one(source: Source) -> None:
            with contextlib.suppress(grpc.aio.AioRpcError, TimeoutError):
                await asyncio.wait_for(source.link.exchange_with(self.file_id, self.node.info, bitfield, []), 1.0)

        await asyncio.gather(*(one(s) for s in sources))

    async def _refresh_from_trackers(self) -> None:
        self.add_sources(await self._holders_from_trackers())

    def _usable(self) -> list[Source]:
        now = time.monotonic()
        return [s for s in self._sources.values() if not s.banned and s.dead_until <= now]

    def _admit(self) -> None:
        """Bring candidates in as sources while below max_peers; same zone first, then at random."""
        now = time.monotonic()
        for source in list(self._sources.values()):
            if source.dead_until and source.dead_until <= now and not source.banned:
                del self._sources[source.peer_id]  # cool-off over: it may be tried again
                self._candidates[source.peer_id] = source.info
        usable = self._usable()
        if len(usable) >= self._max_peers or not self._candidates:
            if len(usable) >= self._max_peers and self._candidates:
                self._rotate(usable)
            return
        pool = prefer_zone(list(self._candidates.values()), self.node.info.zone)
        for peer in pool[: self._max_peers - len(usable)]:
            del self._candidates[peer.peer_id]
            old = self._sources.get(peer.peer_id)
            if old is not None and (old.banned or old.dead_until > time.monotonic()):
                continue
            source = Source(info=peer, link=self._links.link(peer.address))
            self._sources[peer.peer_id] = source
            source.exchange_task = asyncio.create_task(self._exchange_loop(source))

    def _rotate(self, usable: list[Source]) -> None:
        """Prefer fast peers: now and then swap the slowest idle-ish source for an untried one."""
        if time.monotonic() - self._started < 5.0 or random.random() > 0.05:
            return
        slowest = min(usable, key=lambda s: s.rate)
        if slowest.inflight == 0 and slowest.received > 0:
            self._retire(slowest)

    def _retire(self, source: Source) -> None:
        if source.exchange_task is not None:
            source.exchange_task.cancel()
        for task in source.fetches.values():
            task.cancel()
        if self._picker is not None:
            self._picker.remove_source(source.peer_id)
        self._sources.pop(source.peer_id, None)

    def _drop_stalled(self, now: float) -> None:
        """A source that hangs (no RST, e.g. SIGSTOP) or crawls: hand its in-flight chunks to others.

        Only when another source can take them over: the only holder is kept through a pause (TCP
        backing off under heavy loss), and its requests' own deadlines catch a holder that is dead.
        """
        for source in list(self._sources.values()):
            if (
                source.inflight
                and not source.banned
                and now - source.last_activity > source.stall_timeout(self._chunk_size)
                and self._others_can_take_over(source)
            ):
                logger.warning(
                    "source %s sent nothing for %.0fs with %d requests in flight; switching",
                    source.info.address,
                    now - source.last_activity,
                    source.inflight,
                )
                self._drop_dead(source, cool_off=3.0)

    def _others_can_take_over(self, source: Source) -> bool:
        """True if another usable source holds a chunk we still miss."""
        picker = self._picker
        return picker is not None and any(
            other is not source and picker.useful(other.peer_id) for other in self._usable()
        )

    def _dispatch(self) -> None:
        picker = self._picker
        assert picker is not None
        now = time.monotonic()
        zone = self.node.info.zone
        for source in sorted(self._usable(), key=lambda s: (bool(zone) and s.info.zone != zone, -s.rate)):
            if source.busy_until > now:
                continue
            while source.inflight < min(source.window, self._per_peer):
                index = picker.pick(source.peer_id)
                if index is None:
                    break
                picker.started(index, source.peer_id)
                if source.inflight == 0:
                    source.last_activity = now
                source.requesting.add(index)
                task = asyncio.create_task(self._fetch(source, index))
                task.add_done_callback(functools.partial(self._fetch_done, source, index))
                source.fetches[index] = task

    async def _exchange_loop(self, source: Source) -> None:
        entry = self.entry
        assert entry is not None
        while True:
            try:
                reply = await source.link.exchange_with(
                    self.file_id,
                    self.node.info,
                    entry.have.to_bytes(),
                    self.node.sample_known(self.file_id, 20),
                )
                source.failures = 0
                self.update_bitfield(source.peer_id, reply.bitfield, complete=reply.complete)
                self.node.touch(self.file_id, source.peer_id)
                if reply.known:
                    self.node.learn(self.file_id, list(reply.known)[:50], direct=False)
            except grpc.aio.AioRpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    logger.info("%s no longer holds %s", source.info.address, self.file_id[:12])
                    self._drop_dead(source, cool_off=5.0)
                    return
                self._failed(source, err)
                if source.dead_until > time.monotonic():
                    return
            await asyncio.sleep(EXCHANGE_PERIOD * random.uniform(0.8, 1.2))

    def _drop_dead(self, source: Source, cool_off: float) -> None:
        source.dead_until = time.monotonic() + cool_off
        self._retire(source)
        self._sources[source.peer_id] = source  # remember it so it is not re-admitted during cool-off
        self.node.forget(self.file_id, source.peer_id)
        self._notify()

    def _failed(self, source: Source, err: grpc.aio.AioRpcError) -> None:
        source.failures += 1
        if source.failures >= DEAD_AFTER_FAILURES:
            logger.warning("source %s failing (%s); switching to other holders", source.info.address, err.code().name)
            self._drop_dead(source, cool_off=10.0)
            asyncio.create_task(self._links.drop(source.info.address))

    def _deadline(self, source: Source, length: int) -> float:
        if source.rate <= 0:
            return net.CHUNK_DEADLINE
        return max(4.0, min(net.CHUNK_DEADLINE, 4 * source.stall_timeout(length)))

    async def _fetch(self, source: Source, index: int) -> None:
        picker = self._picker
        entry = self.entry
        assert picker is not None and entry is not None
        node = self.node
        _, length = content.chunk_span(entry.manifest, index)
        try:
            await node.download_bucket.take(length)
            started = time.monotonic()
            reply = await source.link.fetch_chunk(self.file_id, index, node.peer_id, self._deadline(source, length))
            elapsed = max(time.monotonic() - started, 1e-6)
            if self._verifying < MAX_VERIFYING:
                # Free the request slot now: the next request goes out while this chunk is checked.
                source.requesting.discard(index)
                self._notify()
            if reply.bitfield:
                self.update_bitfield(source.peer_id, reply.bitfield, complete=reply.source_complete)
            if index in entry.have:
                picker.completed(index)  # endgame loser that arrived anyway
                return
            data = reply.data
            self._verifying += 1
            try:
                verdict = await asyncio.to_thread(self._verify_and_write, entry, index, data)
            finally:
                self._verifying -= 1
            if verdict is None:
                self._rejected(source, index)
                return
            if not verdict:
                picker.completed(index)
                return
            self._accepted(source, index, len(data), elapsed, reply.source_complete)
            node.observer.chunk_fetched(elapsed, len(data))
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as err:
            code = err.code()
            if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (err.details() or ""):
                self._rejected(source, index)  # an oversized reply is a lie, not a busy peer
            elif code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                source.busy_until = time.monotonic() + random.uniform(0.1, 0.4)
            elif code == grpc.StatusCode.NOT_FOUND:
                picker.drop_chunk(source.peer_id, index)
            elif code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE):
                self._rejected(source, index)
            else:
                self._failed(source, err)
        except StoreError as err:
            self._failure = DownloadError(str(err))

    def _fetch_done(self, source: Source, index: int, task: asyncio.Task[None]) -> None:
        """Bookkeeping for every fetch, including one cancelled before it ever ran."""
        if source.fetches.get(index) is task:
            del source.fetches[index]
        source.requesting.discard(index)
        if self._picker is not None:
            self._picker.finished(index, source.peer_id)
        self._notify()

    def _verify_and_write(self, entry: Entry, index: int, data: bytes | memoryview) -> bool | None:
        """In a worker thread: None if the chunk fails its hash, else whether it was newly written."""
        if not content.chunk_ok(entry.manifest, index, data):
            return None
        return self.node.store.write_chunk(entry, index, data)

    def _advance_hash(self) -> None:
        """Keep the whole-file digest moving over the verified prefix, so finishing costs little."""
        entry = self.entry
        if entry is None or self._hashing is not None:
            return
        if self._hashed >= entry.have.size or self._hashed not in entry.have:
            return

        async def run() -> None:
            try:
                self._hashed = await asyncio.to_thread(self.node.store.hash_prefix, entry, self._digest, self._hashed)
            finally:
                self._hashing = None

        self._hashing = asyncio.create_task(run())

    def _accepted(self, source: Source, index: int, nbytes: int, elapsed: float, complete: bool) -> None:
        node = self.node
        self._last_progress = time.monotonic()
        source.failures = 0
        source.last_activity = self._last_progress
        source.received += nbytes
        sample = nbytes / elapsed
        source.rate = sample if source.rate <= 0 else 0.7 * source.rate + 0.3 * sample
        if elapsed < FAST_CHUNK:
            source.window = min(self._per_peer, source.window + 1)
        elif elapsed > SLOW_CHUNK:
            source.window = max(1, source.window - 1)
        node.stats.downloaded_bytes += nbytes
        node.stats.chunks_verified += 1
        if complete:
            node.stats.from_complete_bytes += nbytes
            self.summary.from_complete_bytes += nbytes
        else:
            node.stats.from_partial_bytes += nbytes
            self.summary.from_partial_bytes += nbytes
        self.summary.peers.add(source.peer_id)
        assert self._picker is not None
        for loser in self._picker.completed(index):
            if loser != source.peer_id:
                other = self._sources.get(loser)
                task = other.fetches.get(index) if other is not None else None
                if task is not None:
                    task.cancel()
        self._advance_hash()
        if self.entry is not None and self.entry.have.count == 1:
            node.announce_now.set()  # we now serve a chunk: let the trackers list us as a partial holder

    def _rejected(self, source: Source, index: int) -> None:
        self.node.stats.chunks_rejected += 1
        self.summary.rejected_chunks += 1
        source.bad += 1
        logger.warning("chunk %d from %s failed verification (%d bad)", index, source.info.address, source.bad)
        if source.bad >= BAN_AFTER_BAD_CHUNKS and not source.banned:
            logger.warning("banning %s for this download", source.info.address)
            source.banned = True
            self.node.stats.peers_banned += 1
            self.summary.banned_peers += 1
            if self._picker is not None:
                self._picker.remove_source(source.peer_id)
            if source.exchange_task is not None:
                source.exchange_task.cancel()
            self.node.forget(self.file_id, source.peer_id)

    async def _stop_all(self) -> None:
        tasks: list[asyncio.Task[None]] = []
        for source in self._sources.values():
            if source.exchange_task is not None:
                tasks.append(source.exchange_task)
            tasks.extend(source.fetches.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
