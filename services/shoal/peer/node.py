"""What one peer knows of others (holders heard of, and when), its identity, caps and counters."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shoal.config import PeerConfig
from shoal.ratelimit import TokenBucket
from shoal.store import Store
from shoal.v1 import common_pb2

logger = logging.getLogger(__name__)

MAX_KNOWN_PER_FILE = 200
PEX_FRESH_SECONDS = 15.0  # only holders heard from this recently are passed on to other peers


@dataclass
class Stats:
    """Byte and chunk counters since the process started (read by status and metrics)."""

    uploaded_bytes: int = 0
    downloaded_bytes: int = 0
    from_partial_bytes: int = 0
    from_complete_bytes: int = 0
    chunks_uploaded: int = 0
    chunks_verified: int = 0
    chunks_rejected: int = 0
    peers_banned: int = 0
    busy_rejections: int = 0
    downloads_started: int = 0
    downloads_completed: int = 0
    downloads_failed: int = 0
    active_uploads: int = 0
    inflight_bytes: int = 0  # chunk bytes requested or received, not yet written (all downloads)
    started_at: float = field(default_factory=time.monotonic)


class Observer:
    """Hooks for measurements that are not plain counters (the metrics module overrides them)."""

    def chunk_fetched(self, seconds: float, nbytes: int) -> None:
        """A chunk arrived and verified after `seconds` on the wire."""

    def download_finished(self, seconds: float, outcome: str) -> None:
        """A download ended: outcome is 'completed', 'failed' or 'cancelled'."""


class Node:
    """One peer's identity, store, caps and counters, and what it knows of each swarm (no downloads)."""

    def __init__(
        self,
        config: PeerConfig,
        store: Store,
        peer_id: str,
        advertise: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.info = common_pb2.PeerInfo(peer_id=peer_id, address=advertise, zone=config.zone)
        self.stats = Stats()
        self.observer = Observer()
        self.upload_bucket = TokenBucket(config.upload_limit)
        self.download_bucket = TokenBucket(config.download_limit)
        self.known: dict[str, dict[str, common_pb2.PeerInfo]] = {}
        self.heard: dict[str, dict[str, float]] = {}  # file id -> peer id -> when last heard of directly
        self._clock = clock

    @property
    def peer_id(self) -> str:
        """This peer's id."""
        return self.info.peer_id

    def learn(
        self, file_id: str, peers: list[common_pb2.PeerInfo], *, direct: bool = True
    ) -> list[common_pb2.PeerInfo]:
        """Remember holders of a file (bounded); return the ones that were new.

        `direct` means we heard from the peer itself or from a tracker, which renews it; a peer only
        mentioned by another peer (exchange) is added but not renewed, so dead peers age out of PEX.
        """
        known = self.known.setdefault(file_id, {})
        heard = self.heard.setdefault(file_id, {})
        now = self._clock()
        fresh = []
        for peer in peers:
            if not peer.peer_id or not peer.address or peer.peer_id == self.peer_id:
                continue
            if peer.peer_id not in known:
                fresh.append(peer)
                heard[peer.peer_id] = now
            elif direct:
                heard[peer.peer_id] = now
            known[peer.peer_id] = peer
        while len(known) > MAX_KNOWN_PER_FILE:
            oldest = min(known, key=lambda peer_id: heard.get(peer_id, 0.0))
            known.pop(oldest)
            heard.pop(oldest, None)
        return fresh

    def forget(self, file_id: str, peer_id: str) -> None:
        """Drop a holder we found dead or lying."""
        self.known.get(file_id, {}).pop(peer_id, None)
        self.heard.get(file_id, {}).pop(peer_id, None)

    def touch(self, file_id: str, peer_id: str) -> None:
        """We just heard from this holder."""
        if peer_id in self.known.get(file_id, {}):
            self.heard.setdefault(file_id, {})[peer_id] = self._clock()

    def sample_known(self, file_id: str, limit: int = 50) -> list[common_pb2.PeerInfo]:
        """A random sample of known holders to pass on (peer exchange)."""
        heard = self.heard.get(file_id, {})
        cutoff = self._clock() - PEX_FRESH_SECONDS
        peers = [p for p in self.known.get(file_id, {}).values() if heard.get(p.peer_id, 0.0) >= cutoff]
        return random.sample(peers, min(limit, len(peers)))
