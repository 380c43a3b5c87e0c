"""Super-seeding (after BEP 16): a complete holder offers each downloader only chunks it has sent least.

While several downloaders are fetching, each one is told this peer holds just a few of the chunks
it lacks, the least-sent ones (different ones for different downloaders), so the seeder's uplink
carries each chunk about once and downloaders spread the rest among themselves. With a single
downloader the full bitfield is offered. Pure bookkeeping: no I/O.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from shoal.content import Bitfield

logger = logging.getLogger(__name__)

OFFER_CHUNKS = 4  # chunks offered to one downloader at a time
RESERVE_SECONDS = 3.0  # a chunk offered to one downloader is not offered to another for this long
ACTIVE_SECONDS = 3.0  # a downloader counts as active this long after its last request


class SuperSeeder:
    """Decides which chunks a complete holder advertises to each downloader of one file."""

    def __init__(self, nchunks: int, clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None):
        self.size = nchunks
        self.sent = [0] * nchunks
        self._reserved_until = [0.0] * nchunks
        self._reserved_for: list[str] = [""] * nchunks
        self._seen: dict[str, float] = {}
        self._bits: dict[str, Bitfield] = {}
        self._clock = clock
        self._rng = rng or random.Random()

    @property
    def active(self) -> bool:
        """True while super-seeding pays: more than one downloader active."""
        now = self._clock()
        live = [peer for peer, seen in self._seen.items() if now - seen < ACTIVE_SECONDS]
        for peer in set(self._seen) - set(live):
            del self._seen[peer]
            self._bits.pop(peer, None)
        return len(live) > 1

    def saw(self, peer_id: str, bits: Bitfield | None = None) -> None:
        """A downloader called us (with its bitfield, when it sent one)."""
        if not peer_id:
            return
        if bits is not None and bits.size == self.size:
            if bits.complete:  # done: it no longer competes for this uplink
                self._seen.pop(peer_id, None)
                self._bits.pop(peer_id, None)
                return
            self._bits[peer_id] = bits
        self._seen[peer_id] = self._clock()

    def served(self, index: int, peer_id: str = "") -> None:
        """A chunk left this peer (for `peer_id`, which now holds it)."""
        self.sent[index] += 1
        bits = self._bits.get(peer_id)
        if bits is not None:
            bits.set(index)

    def offer(self, peer_id: str) -> Bitfield | None:
        """The chunks to advertise to `peer_id`, or None to advertise everything."""
        if not peer_id or not self.active:
            return None
        now = self._clock()
        has = self._bits.get(peer_id)
        mine = [i for i in range(self.size) if self._reserved_for[i] == peer_id and self._reserved_until[i] > now]
        mine = [i for i in mine if has is None or i not in has]
        candidates = [
            i
            for i in range(self.size)
            if (has is None or i not in has) and (self._reserved_until[i] <= now or self._reserved_for[i] == peer_id)
        ]
        if not candidates:  # everything it lacks is reserved for others: share the least-sent anyway
            candidates = [i for i in range(self.size) if has is None or i not in has]
        self._rng.shuffle(candidates)
        candidates.sort(key=lambda i: self.sent[i])
        chosen = list(dict.fromkeys([*mine, *candidates]))[:OFFER_CHUNKS]
        offered = Bitfield(self.size)
        for i in chosen:
            offered.set(i)
            self._reserved_for[i] = peer_id
            self._reserved_until[i] = now + RESERVE_SECONDS
        return offered
