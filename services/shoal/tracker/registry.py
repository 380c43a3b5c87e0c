"""Soft-state registry of live peers and their files, kept alive by announce leases."""

from __future__ import annotations

import logging
import random
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

logger = logging.getLogger(__name__)

DEFAULT_SEARCH_LIMIT = 100
MAX_SEARCH_LIMIT = 1000
DEFAULT_HOLDERS_LIMIT = 50
MAX_HOLDERS_LIMIT = 1000


@dataclass(frozen=True, slots=True)
class Peer:
    """A peer as other peers dial it."""

    peer_id: str
    address: str
    zone: str = ""


@dataclass(frozen=True, slots=True)
class Holding:
    """One file a peer announces, completely or in part."""

    file_id: str
    name: str
    size: int
    complete: bool


@dataclass(frozen=True, slots=True)
class FileMeta:
    """A file as first announced: the id covers the content, not the name."""

    file_id: str
    name: str
    size: int


class SearchHit(NamedTuple):
    """A file matching a search and how many live peers hold it."""

    file: FileMeta
    complete_holders: int
    partial_holders: int


class Holder(NamedTuple):
    """A live peer holding a file."""

    peer: Peer
    complete: bool


@dataclass(frozen=True, slots=True)
class Stats:
    """Counters for metrics."""

    peers: int
    files: int
    announces_total: int
    expiries_total: int


@dataclass(slots=True)
class _Lease:
    peer: Peer
    expires_at: float
    holdings: dict[str, Holding]


@dataclass(slots=True)
class _File:
    meta: FileMeta
    folded_name: str
    holders: dict[str, bool] = field(default_factory=dict)  # peer_id -> complete


def clamp_limit(limit: int, default: int, maximum: int) -> int:
    """Map 0 (or less) to the default and cap at the maximum."""
    return default if limit <= 0 else min(limit, maximum)


class Registry:
    """Live peers with leases, and an index from file id to holders.

    Lease rule: a peer is live while clock() < expires_at, where expires_at = last announce + ttl.
    Every read ignores lapsed peers at once; expire() only reclaims their memory. Because ttl is fixed and the
    clock never goes back, leases expire in the order they were last renewed, so they are kept in an
    OrderedDict in that order: renewing is move_to_end, expiring pops from the front.
    """

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be positive, got {ttl}")
        self._ttl = ttl
        self._clock = clock
        self._leases: OrderedDict[str, _Lease] = OrderedDict()  # oldest lease first
        self._by_address: dict[str, str] = {}
        self._files: dict[str, _File] = {}
        self._order: list[str] | None = None  # file ids sorted by (name, id); None when stale
        self._announces = 0
        self._expiries = 0

    @property
    def ttl(self) -> float:
        """Lease length in seconds."""
        return self._ttl

    def announce(self, peer: Peer, holdings: Iterable[Holding]) -> bool:
        """Renew the peer's lease and replace its holdings; True if the peer was unknown or had lapsed."""
        now = self._clock()
        self._announces += 1
        new = {h.file_id: h for h in holdings}
        lease = self._leases.get(peer.peer_id)
        joined = lease is None or lease.expires_at <= now

        other = self._by_address.get(peer.address)
        if other is not None and other != peer.peer_id:
            logger.info("peer %s at %s replaced by %s", other, peer.address, peer.peer_id)
            self._drop(other)

        if lease is None:
            lease = _Lease(peer, now + self._ttl, {})
            self._leases[peer.peer_id] = lease
        else:
            if lease.peer.address != peer.address:
                self._forget_address(lease.peer)
            lease.peer = peer
            lease.expires_at = now + self._ttl
            self._leases.move_to_end(peer.peer_id)
        self._by_address[peer.address] = peer.peer_id

        old = lease.holdings
        if new != old:
            for file_id in old.keys() - new.keys():
                self._unindex(file_id, peer.peer_id)
            for file_id, holding in new.items():
                if old.get(file_id) != holding:
                    self._index(holding, peer.peer_id)
            lease.holdings = new
        return joined

    def leave(self, peer_id: str) -> bool:
        """Forget a peer at once; True if it was live."""
        lease = self._leases.get(peer_id)
        if lease is None:
            return False
        live = lease.expires_at > self._clock()
        self._drop(peer_id)
        return live

    def expire(self) -> list[str]:
        """Drop every peer whose lease has passed and return their ids (O(expired), not O(peers))."""
        now = self._clock()
        gone: list[str] = []
        while self._leases:
            peer_id, lease = next(iter(self._leases.items()))
            if lease.expires_at > now:
                break
            self._drop(peer_id)
            gone.append(peer_id)
        self._expiries += len(gone)
        return gone

    def search(self, term: str, limit: int = DEFAULT_SEARCH_LIMIT) -> list[SearchHit]:
        """Files whose name contains term (case-insensitive) with live holders, sorted by (name, file_id)."""
        limit = clamp_limit(limit, DEFAULT_SEARCH_LIMIT, MAX_SEARCH_LIMIT)
        folded = term.casefold()
        now = self._clock()
        hits: list[SearchHit] = []
        for file_id in self._sorted_ids():
            entry = self._files[file_id]
            if folded not in entry.folded_name:
                continue
            complete = partial = 0
            for peer_id, is_complete in entry.holders.items():
                if self._leases[peer_id].expires_at > now:
                    if is_complete:
                        complete += 1
                    else:
                        partial += 1
            if complete or partial:
                hits.append(SearchHit(entry.meta, complete, partial))
                if len(hits) >= limit:
                    break
        return hits

    def holders(self, file_id: str, limit: int = DEFAULT_HOLDERS_LIMIT, exclude_peer_id: str = "") -> list[Holder]:
        """Live holders of a file, complete ones first, each group in random order to spread load."""
        limit = clamp_limit(limit, DEFAULT_HOLDERS_LIMIT, MAX_HOLDERS_LIMIT)
        entry = self._files.get(file_id)
        if entry is None:
            return []
        now = self._clock()
        complete: list[Peer] = []
        partial: list[Peer] = []
        for peer_id, is_complete in entry.holders.items():
            lease = self._leases[peer_id]
            if peer_id != exclude_peer_id and lease.expires_at > now:
                (complete if is_complete else partial).append(lease.peer)
        picked = [Holder(p, True) for p in random.sample(complete, min(limit, len(complete)))]
        rest = limit - len(picked)
        picked += [Holder(p, False) for p in random.sample(partial, min(rest, len(partial)))]
        return picked

    def file_meta(self, file_id: str) -> FileMeta | None:
        """The file as first announced, or None when no live peer holds it."""
        entry = self._files.get(file_id)
        if entry is None:
            return None
        now = self._clock()
        if any(self._leases[peer_id].expires_at > now for peer_id in entry.holders):
            return entry.meta
        return None

    def live_peers(self) -> list[Peer]:
        """Every live peer, sorted by peer id."""
        now = self._clock()
        peers = [lease.peer for lease in self._leases.values() if lease.expires_at > now]
        peers.sort(key=lambda p: p.peer_id)
        return peers

    def stats(self) -> Stats:
        """Live peer and file counts, and lifetime announce and expiry totals."""
        now = self._clock()
        lapsed = 0
        for lease in self._leases.values():  # oldest first: stops at the first live lease
            if lease.expires_at > now:
                break
            lapsed += 1
        if lapsed:
            files = sum(
                1
                for entry in self._files.values()
                if any(self._leases[peer_id].expires_at > now for peer_id in entry.holders)
            )
        else:
            files = len(self._files)
        return Stats(len(self._leases) - lapsed, files, self._announces, self._expiries)

    def _drop(self, peer_id: str) -> None:
        lease = self._leases.pop(peer_id)
        self._forget_address(lease.peer)
        for file_id in lease.holdings:
            self._unindex(file_id, peer_id)

    def _forget_address(self, peer: Peer) -> None:
        if self._by_address.get(peer.address) == peer.peer_id:
            del self._by_address[peer.address]

    def _index(self, holding: Holding, peer_id: str) -> None:
        entry = self._files.get(holding.file_id)
        if entry is None:
            meta = FileMeta(holding.file_id, holding.name, holding.size)
            entry = self._files[holding.file_id] = _File(meta, holding.name.casefold())
            self._order = None
        entry.holders[peer_id] = holding.complete

    def _unindex(self, file_id: str, peer_id: str) -> None:
        entry = self._files[file_id]
        del entry.holders[peer_id]
        if not entry.holders:
            del self._files[file_id]
            self._order = None

    def _sorted_ids(self) -> list[str]:
        if self._order is None:
            self._order = sorted(self._files, key=lambda fid: (self._files[fid].meta.name, fid))
        return self._order
