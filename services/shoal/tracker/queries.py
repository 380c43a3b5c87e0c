"""What the tracker answers from its registry: search, holders, a file's name and size, the peer list.

Every read ignores lapsed peers at once (clock() >= expires_at), whether or not expire() has reclaimed them.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from shoal.tracker.files import FileIndex, FileMeta
from shoal.tracker.model import Holder, Lease, Peer, SearchHit

logger = logging.getLogger(__name__)

DEFAULT_SEARCH_LIMIT = 100
MAX_SEARCH_LIMIT = 1000
DEFAULT_HOLDERS_LIMIT = 50
MAX_HOLDERS_LIMIT = 1000
MAX_LIST_PEERS = 20_000  # ListPeers reply: 20,000 peers of at most ~520 bytes stay under the 17 MiB message cap


def clamp_limit(limit: int, default: int, maximum: int) -> int:
    """Map 0 (or less) to the default and cap at the maximum."""
    return default if limit <= 0 else min(limit, maximum)


class Queries:
    """The registry's read side (a mixin of Registry): answers built from live leases only."""

    _clock: Callable[[], float]
    _leases: dict[str, Lease]
    _files: FileIndex

    def search(self, term: str, limit: int = DEFAULT_SEARCH_LIMIT) -> list[SearchHit]:
        """Files whose name contains term (case-insensitive) with live holders, sorted by (name, file_id)."""
        limit = clamp_limit(limit, DEFAULT_SEARCH_LIMIT, MAX_SEARCH_LIMIT)
        folded = term.casefold()
        now = self._clock()
        leases = self._leases
        hits: list[SearchHit] = []
        for file_id in self._files.sorted_ids():
            entry = self._files.entries[file_id]
            if folded not in entry.folded_name:
                continue
            complete = partial = 0
            for peer_id, holding in entry.holders.items():
                if leases[peer_id].expires_at > now:
                    if holding.complete:
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
        leases = self._leases
        complete: list[Peer] = []
        partial: list[Peer] = []
        for peer_id, holding in entry.holders.items():
            lease = leases[peer_id]
            if lease.expires_at > now and peer_id != exclude_peer_id:
                (complete if holding.complete else partial).append(lease.peer)
        picked = [Holder(p, True) for p in random.sample(complete, min(limit, len(complete)))]
        rest = limit - len(picked)
        if rest > 0 and partial:
            picked += [Holder(p, False) for p in random.sample(partial, min(rest, len(partial)))]
        return picked

    def file_meta(self, file_id: str) -> FileMeta | None:
        """The file as its current holders report it, or None when no live peer holds it."""
        entry = self._files.get(file_id)
        if entry is None:
            return None
        now = self._clock()
        if any(self._leases[peer_id].expires_at > now for peer_id in entry.holders):
            return entry.meta
        return None

    def live_peers(self, limit: int = MAX_LIST_PEERS) -> list[Peer]:
        """Live peers sorted by peer id, at most `limit` of them."""
        now = self._clock()
        peers = [lease.peer for lease in self._leases.values() if lease.expires_at > now]
        peers.sort(key=lambda p: p.peer_id)
        return peers[:limit]
