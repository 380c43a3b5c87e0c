"""What the download engine needs from outside: links to other peers and the trackers' holder lookup.

`links.LinkPool` and `trackers.TrackerClient` are the real ones; the unit tests pass in-memory fakes.
Failures arrive as `peer.errors` types, never as transport exceptions.
"""

from __future__ import annotations

import logging
from typing import Protocol

from shoal.peer.wire import ChunkReply
from shoal.v1 import common_pb2, peer_pb2, tracker_pb2

logger = logging.getLogger(__name__)


class Link(Protocol):
    """The calls a download makes to one other peer; failures raise `peer.errors.LinkError` subclasses."""

    async def fetch_manifest(self, file_id: str) -> common_pb2.Manifest:
        """The manifest, checked against the id (Lied if it does not match)."""
        ...

    async def fetch_chunk(
        self, file_id: str, index: int, peer_id: str, timeout: float, spread: bool = False
    ) -> ChunkReply:
        """One chunk's bytes, unverified; `spread`: over several connections (a download with few sources)."""
        ...

    async def exchange_with(
        self, file_id: str, me: common_pb2.PeerInfo, bitfield: bytes, known: list[common_pb2.PeerInfo]
    ) -> peer_pb2.ExchangeResponse:
        """Swap bitfields and known holders."""
        ...


class Links(Protocol):
    """Links to other peers by address."""

    def link(self, address: str) -> Link:
        """The (pooled) link to an address."""
        ...

    async def drop(self, address: str) -> None:
        """Forget the link to a peer found dead, so the next use starts afresh."""
        ...


class HolderLookup(Protocol):
    """Who holds a file, per the trackers (raises `peer.errors.TrackersUnavailable`)."""

    async def holders(self, file_id: str, limit: int = 0) -> list[tracker_pb2.Holder]:
        """Live holders of the file."""
        ...


class OriginLink(Protocol):
    """The calls the importer makes to another peer."""

    async def fetch_origin_manifest(self, url_key: str) -> common_pb2.Manifest:
        """The manifest the key resolved to there."""
        ...

    async def fetch_chunk(self, file_id: str, index: int, peer_id: str, timeout: float) -> ChunkReply:
        """One chunk of a part file (or of the file the key resolved to)."""
        ...

    async def replicate_to(self, file_id: str, url_key: str, url: str, timeout: float) -> common_pb2.FileInfo:
        """Have that peer download a file (preheat)."""
        ...


class UrlTrackers(HolderLookup, Protocol):
    """The trackers as the importer uses them: holders of a key, and a name search for the offline fallback."""

    async def search(self, term: str) -> list[tracker_pb2.SearchFileResult]:
        """Files whose name contains the term."""
        ...

    async def live_peers(self) -> list[common_pb2.PeerInfo]:
        """Every live peer."""
        ...


class OriginLinks(Protocol):
    """Links to peers by address."""

    def link(self, address: str) -> OriginLink:
        """The pooled link."""
        ...
