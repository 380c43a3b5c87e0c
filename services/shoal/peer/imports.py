"""Getting an origin URL through the swarm: one peer reads it from the origin, the others mirror it from peers.

A URL version's key K (`origins.version_key`: URL, validator, size, chunk size) is announced to the trackers as
a held file named by the URL: partial by every peer holding a prefix of it (a part file, peer.parts), complete
by peers holding the imported file R. The right to read from the origin is a second id, the claim key
C = claim_key(K), announced (partial) only by the claimant; it lives as long as the claimant's announce lease.

A peer that wants K: with a complete holder and nothing of its own, it gets R's manifest (GetManifest(K)) and
downloads R like any file. With a live claimant, it mirrors K in order from the holders of K (GetChunk(K, i)
on a part file, or on R at a complete holder). With neither, it claims C and, after a settle time in which
rival claims reach the trackers, the claimant with the lowest peer id reads from the origin, resuming after
its own prefix. An importer that dies drops out of C within one TTL; the next claimant goes on from what it
has mirrored, so the origin serves each byte about once. Everyone publishes the bytes the same way and so
arrives at the same R; a digest (oci:// or --digest) is checked before that.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter

from shoal import content
from shoal.origins import (
    Origin,
    OriginChanged,
    OriginFile,
    OriginOptions,
    OriginUnavailable,
    parse_origin,
    version_key,
)
from shoal.peer.errors import DownloadError, LinkError, TrackersUnavailable
from shoal.peer.node import Node
from shoal.peer.origin_index import OriginIndex
from shoal.peer.parts import PartFile
from shoal.peer.ports import OriginLinks, UrlTrackers
from shoal.peer.preheat import spread
from shoal.peer.url_keys import claim_key, file_name, held_file, tracker_name
from shoal.store import Entry
from shoal.v1 import common_pb2, tracker_pb2

logger = logging.getLogger(__name__)

SETTLE = 1.0  # seconds a new claim waits for rival claims to reach the trackers before the lowest peer id wins
POLL = 0.3  # how often a waiting peer asks the trackers again when no holder had its next chunk
MIRROR_TIMEOUT = 30.0


class DigestMismatch(DownloadError):
    """The file does not match the digest the user or the oci:// URL gave; nothing is published."""


FetchFile = Callable[[str, list[common_pb2.PeerInfo]], Awaitable[Entry]]  # (file id, holders) -> the file


@dataclass
class Progress:
    """What the control API shows while a URL is fetched."""

    url: str
    total_bytes: int = 0
    done_bytes: int = 0
    file_id: str = ""  # R once a download of it runs: its progress is read from the store then


class OriginImports:
    """URL keys this peer claimed or resolved, the announces that say so, and the import itself."""

    def __init__(
        self,
        node: Node,
        trackers: UrlTrackers,
        links: OriginLinks,
        fetch: FetchFile,
        announce_soon: Callable[[], None],
        count_bytes: Callable[[str, str, int], None] = lambda scheme, outcome, n: None,
    ) -> None:
        self._node = node
        self._trackers = trackers
        self._links = links
        self._fetch = fetch
        self._announce_soon = announce_soon
        self._count = count_bytes
        self._root = node.config.data_dir / "origins"
        self._index = OriginIndex(self._root)  # K -> (display URL, R, size)
        self._claims: dict[str, tuple[str, int]] = {}  # K -> (display URL, size) while claiming or importing
        self._parts: dict[str, tuple[str, PartFile]] = {}  # K -> (display URL, its part file) while getting it
        self._running: dict[str, asyncio.Task[Entry]] = {}

    # ---- state -------------------------------------------------------------------------------
    def load(self) -> None:
        """Read the K -> R index (blocking; call in a thread at start)."""
        self._index.load()

    def resolve(self, key: str) -> str | None:
        """The file id K resolved to here, if this peer holds it complete (GetManifest(K) answers with it)."""
        found = self._index.get(key)
        if found is None:
            return None
        entry = self._node.store.get(found[1])
        return found[1] if entry is not None and entry.complete else None

    def url_of(self, file_id: str) -> str:
        """The origin URL a held file came from, or ''."""
        return self._index.url_of(file_id)

    def held(self) -> list[tracker_pb2.HeldFile]:
        """What to announce: claims, part files with a chunk to serve, and keys resolved to a complete file here."""
        files = [
            held_file(claim_key(key), f"shoal-import-claim-{key[:16]}", size, complete=False)
            for key, (_, size) in self._claims.items()
        ]
        files += [
            held_file(key, url, part.size, complete=False) for key, (url, part) in self._parts.items() if part.length
        ]
        files += [
            held_file(key, url, size, complete=True) for key, (url, _, size) in self._index.items() if self.resolve(key)
        ]
        return files

    async def read_chunk(self, key: str, index: int) -> bytes | None:
        """Chunk `index` of a URL key, for GetChunk(K, i): from the resolved file, else from the part file."""
        store = self._node.store
        file_id = self.resolve(key)
        entry = store.get(file_id) if file_id is not None else None
        if entry is not None:
            if index >= entry.have.size:
                return None
            return await asyncio.to_thread(store.read_chunk, entry, index)
        held = self._parts.get(key)
        if held is None:
            return None
        return await asyncio.to_thread(held[1].read, index)

    # ---- getting a URL -----------------------------------------------------------------------
    async def stat(self, url: str, options: OriginOptions) -> tuple[OriginFile, str]:
        """The origin's current version of the URL and its key."""
        async with parse_origin(url, options) as origin:
            file = await origin.stat()
        return file, version_key(file, self._node.config.chunk_size)

    def get(self, url: str, options: OriginOptions, progress: Progress) -> asyncio.Task[Entry]:
        """Start getting a URL, or join the get of it already running here."""
        running = self._running.get(url)
        if running is not None and not running.done():
            return running
        task = asyncio.create_task(self._get(url, options, progress), name="origin-get")
        self._running[url] = task
        task.add_done_callback(lambda _: self._running.pop(url, None))
        return task

    async def stop(self) -> None:
        """Stop every get of a URL (part files stay for resume)."""
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _get(self, url: str, options: OriginOptions, progress: Progress) -> Entry:
        async with parse_origin(url, options) as origin:
            try:
                file = await origin.stat()
            except OriginUnavailable as err:
                return await self._offline(origin.display_url, err, options.expected_digest, progress)
            key = version_key(file, self._node.config.chunk_size)
            progress.url, progress.total_bytes = file.url, file.size
            logger.info("%s is version %s (%d bytes)", file.url, key[:12], file.size)
            while key in self._parts:  # noqa: ASYNC110 - one version under two URL spellings (re-signed): rare
                await asyncio.sleep(POLL)
            here = self.resolve(key)
            entry = self._node.store.get(here) if here is not None else None
            if entry is not None:
                return entry
            part = PartFile(self._root / f"{key}.part", file.size, self._node.config.chunk_size)
            progress.done_bytes = await asyncio.to_thread(part.open)
            self._parts[key] = (file.url, part)
            try:
                return await self._coordinate(origin, file, key, part, progress)
            finally:
                self._parts.pop(key, None)
                part.close()
                if self._claims.pop(key, None) is not None:
                    self._announce_soon()

    async def _coordinate(
        self, origin: Origin, file: OriginFile, key: str, part: PartFile, progress: Progress
    ) -> Entry:
        me = self._node.peer_id
        while True:
            if part.done:
                return await self._publish(file, key, part)
            try:
                holders = [h for h in await self._trackers.holders(key) if h.peer.peer_id != me]
                claimants = [h.peer.peer_id for h in await self._trackers.holders(claim_key(key))]
            except TrackersUnavailable as err:
                logger.warning("%s: %s; importing alone", file.url, err)
                holders, claimants = [], []
            rivals = sorted(c for c in claimants if c != me)
            complete = [h.peer for h in holders if h.complete]
            if key in self._claims:
                if rivals and rivals[0] < me:
                    logger.info("%s: %s claimed the import too and goes first", file.url, rivals[0][:12])
                    del self._claims[key]
                    self._announce_soon()
                    continue
                if holders:  # catch up first on what the swarm already has (a dead importer's lead, say)
                    await self._mirror(key, part, [h.peer for h in holders], progress)
                await self._import(origin, file, part, progress)
                continue
            if complete and not part.length:
                entry = await self._from_swarm(file, key, complete, progress)
                if entry is not None:
                    return entry
            if rivals or complete:
                if not await self._mirror(key, part, [h.peer for h in holders], progress):
                    await asyncio.sleep(POLL)
                continue
            self._claims[key] = (file.url, file.size)
            self._announce_soon()
            await asyncio.sleep(SETTLE)

    async def _mirror(self, key: str, part: PartFile, holders: list[common_pb2.PeerInfo], progress: Progress) -> bool:
        """Copy the next chunks of K, in order, from whichever holder has them; False if none had the next one."""
        me = self._node.peer_id
        order = random.sample(holders, len(holders))
        progressed = False
        while not part.done:
            index = part.next_index
            _, length = part.span(index)
            data = None
            for peer in order:
                try:
                    reply = await self._links.link(peer.address).fetch_chunk(key, index, me, MIRROR_TIMEOUT)
                except LinkError:
                    continue
                if len(reply.data) == length:
                    data = bytes(reply.data)
                    order.remove(peer)
                    order.insert(0, peer)  # ask the one that had it first next time
                    break
            if data is None:
                return progressed
            await asyncio.to_thread(part.append, data)
            self._node.stats.downloaded_bytes += length
            self._node.stats.from_partial_bytes += length  # a part file is a partial holding
            progress.done_bytes = part.length
            if index == 0:
                self._announce_soon()  # we now hold a chunk others may mirror
            progressed = True
        return progressed

    async def _import(self, origin: Origin, file: OriginFile, part: PartFile, progress: Progress) -> None:
        """Read the rest of the file from the origin into the part file, in order."""
        logger.info("importing %s from the origin (from byte %d of %d)", file.url, part.length, file.size)
        while not part.done:
            offset, length = part.span(part.next_index)
            try:
                data = await origin.read_range(offset, length, file.validator)
            except OriginChanged:
                part.discard()
                raise
            self._count(origin.scheme, "imported", len(data))
            await asyncio.to_thread(part.append, data)
            progress.done_bytes = part.length
            if offset == 0:
                self._announce_soon()

    async def _publish(self, file: OriginFile, key: str, part: PartFile) -> Entry:
        """Check the digest, then take the part file into the store as an ordinary file."""
        self._parts.pop(key, None)
        part.close()
        if file.digest is not None and "sha256:" + part.digest.hexdigest() != file.digest:
            part.discard()
            raise DigestMismatch(f"{file.url}: the file does not match {file.digest}")
        chunk_size = self._node.config.chunk_size
        entry = await asyncio.to_thread(
            self._node.store.publish, part.path, file_name(file.url, key), chunk_size, move=True
        )
        self._remember(key, file, entry.file_id)
        logger.info("%s is held as %s", file.url, entry.file_id)
        return entry

    async def _from_swarm(
        self, file: OriginFile, key: str, holders: list[common_pb2.PeerInfo], progress: Progress
    ) -> Entry | None:
        """The file K resolved to, downloaded from the swarm; None if no holder could say what it is."""
        for peer in holders:
            try:
                manifest = await self._links.link(peer.address).fetch_origin_manifest(key)
            except LinkError as err:
                logger.info("%s could not resolve %s: %s", peer.address, key[:12], err)
                continue
            if manifest.size != file.size or manifest.chunk_size != self._node.config.chunk_size:
                logger.warning("%s resolved %s to a file of another size; ignored", peer.address, key[:12])
                continue
            if file.digest is not None and "sha256:" + manifest.file_sha256.hex() != file.digest:
                raise DigestMismatch(f"{file.url}: the swarm's copy does not match {file.digest}")
            file_id = content.manifest_id(manifest)
            self._node.learn(file_id, holders)
            progress.file_id = file_id
            entry = await self._fetch(file_id, holders)
            self._remember(key, file, entry.file_id)
            return entry
        return None

    async def _offline(self, url: str, err: OriginUnavailable, digest: str | None, progress: Progress) -> Entry:
        """The origin is down: take the version of the URL the most peers hold complete, if any (as after preheat)."""
        name = tracker_name(url)
        try:
            results = await self._trackers.search(name)
        except TrackersUnavailable:
            raise err from None
        versions = [r for r in results if r.file.name == name and r.complete_holders]
        if not versions:
            raise err
        best = max(versions, key=lambda r: r.complete_holders)
        logger.warning("%s (%s); getting the swarm's copy %s", url, err.detail, best.file.file_id[:12])
        me = self._node.peer_id
        holders = [h.peer for h in await self._trackers.holders(best.file.file_id) if h.complete]
        file = OriginFile(url, best.file.size, "", digest)
        progress.url, progress.total_bytes = url, best.file.size
        entry = await self._from_swarm(file, best.file.file_id, [h for h in holders if h.peer_id != me], progress)
        if entry is None:
            raise err
        return entry

    async def preheat(self, url: str, options: OriginOptions, replicas: int) -> tuple[Entry, list[common_pb2.PeerInfo]]:
        """Get the URL here (one origin fetch swarm-wide), then have `replicas` peers hold it, spread over zones."""
        entry = await self.get(url, options, Progress(url))
        key = self.key_of(entry.file_id)
        peers = await spread(
            self._node.info, self._trackers, self._links, entry.file_id, key, self.url_of(entry.file_id), replicas
        )
        return entry, peers

    async def replicate(self, file_id: str, url_key: str, url: str) -> Entry:
        """Download a file from the swarm (another peer's preheat) and remember the URL version it stands for."""
        entry = self._node.store.get(file_id)
        if entry is None or not entry.complete:
            me = self._node.peer_id
            holders = [h.peer for h in await self._trackers.holders(file_id) if h.peer.peer_id != me]
            self._node.learn(file_id, holders)
            entry = await self._fetch(file_id, holders)
        if url_key:
            self._index.add(url_key, url, file_id, entry.manifest.size)
            self._announce_soon()
        return entry

    def key_of(self, file_id: str) -> str:
        """The URL key a held file resolved from, or ''."""
        return self._index.key_of(file_id)

    def _remember(self, key: str, file: OriginFile, file_id: str) -> None:
        self._index.add(key, file.url, file_id, file.size)
        self._announce_soon()


ORIGIN_SCHEMES = ("http", "https", "s3", "oci")


def origin_bytes_counter(registry: CollectorRegistry | None) -> Callable[[str, str, int], None]:
    """shoal_peer_origin_bytes_total{scheme,outcome}: the offload ratio's denominator (bytes read from origins)."""
    if registry is None:
        return lambda scheme, outcome, n: None
    family = Counter(
        "shoal_peer_origin_bytes",
        "Bytes read from origins, by scheme and outcome (imported: kept; rejected: failed the digest).",
        ("scheme", "outcome"),
        registry=registry,
    )
    for scheme in ORIGIN_SCHEMES:  # every known series from 0, so rates and the offload ratio have a denominator
        for outcome in ("imported", "rejected"):
            family.labels(scheme, outcome)
    return lambda scheme, outcome, n: family.labels(scheme, outcome).inc(n)
