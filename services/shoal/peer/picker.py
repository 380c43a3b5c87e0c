"""Chunk selection: rarest-first with random tie-break (BEP 3), plus endgame duplicates.

Ties are broken at random among the first few equally rare chunks in file order, not the whole
file: sources still get different chunks from different downloaders, while the verified prefix
keeps growing (the file fills front to back, which a reader of a partial file and the page cache like).

Pure bookkeeping, no I/O: which chunks each source has, which are missing, which are in flight.
"""

from __future__ import annotations

import logging
import random

from shoal.content import Bitfield

logger = logging.getLogger(__name__)

ENDGAME_MAX_REQUESTERS = 2
ENDGAME_CHUNKS = 4  # duplicate requests only once this few chunks are missing and all are in flight
_SCAN_LIMIT = 4096  # candidates examined per pick; bounds cost on huge files
TIE_WINDOW = 8  # ties are broken at random among this many equally rare chunks, lowest index first


class Picker:
    """Tracks availability of every missing chunk and hands out the next chunk for a source."""

    def __init__(self, have: Bitfield, rng: random.Random | None = None) -> None:
        self.size = have.size
        self.missing: set[int] = {i for i in range(have.size) if i not in have}
        self.availability = [0] * have.size
        self.inflight: dict[int, set[str]] = {}
        self._bits: dict[str, Bitfield] = {}
        self._rng = rng or random.Random()

    def set_bitfield(self, source: str, bits: Bitfield) -> None:
        """Replace what a source is known to hold, updating availability by the difference."""
        old = self._bits.get(source)
        old_bytes = old.to_bytes() if old is not None else bytes(len(bits.to_bytes()))
        new_bytes = bits.to_bytes()
        if old_bytes != new_bytes:
            for position, (was, now) in enumerate(zip(old_bytes, new_bytes, strict=True)):
                if was == now:
                    continue
                for bit in range(8):
                    delta = ((now >> bit) & 1) - ((was >> bit) & 1)
                    if delta:
                        self.availability[position * 8 + bit] += delta
        self._bits[source] = bits

    def drop_chunk(self, source: str, index: int) -> None:
        """Record that a source does not hold a chunk after all (it said NOT_FOUND)."""
        bits = self._bits.get(source)
        if bits is not None and bits.clear(index):
            self.availability[index] -= 1

    def remove_source(self, source: str) -> None:
        """Forget a source: its chunks no longer count towards availability."""
        bits = self._bits.pop(source, None)
        if bits is not None:
            for i in range(self.size):
                if i in bits:
                    self.availability[i] -= 1
        for index in list(self.inflight):
            self.inflight[index].discard(source)
            if not self.inflight[index]:
                del self.inflight[index]

    def useful(self, source: str) -> bool:
        """True if the source holds any chunk we still miss."""
        bits = self._bits.get(source)
        return bits is not None and any(i in bits for i in self.missing)

    def pick(self, source: str) -> int | None:
        """Next chunk to ask `source` for: rarest missing one not in flight; else an endgame duplicate."""
        bits = self._bits.get(source)
        if bits is None or not self.missing:
            return None
        best: list[int] = []
        best_rarity = 1 << 30
        scanned = 0
        # CPython walks a set of small ints in ascending order; were it not so, only the locality
        # of tie-breaks would suffer, never correctness.
        for i in self.missing:
            if i in self.inflight or i not in bits:
                continue
            rarity = self.availability[i]
            if rarity < best_rarity:
                best_rarity, best = rarity, [i]
            elif rarity == best_rarity and len(best) < TIE_WINDOW:
                best.append(i)
            scanned += 1
            if scanned >= _SCAN_LIMIT or (best_rarity <= 1 and len(best) >= TIE_WINDOW):
                break  # nothing the source holds is rarer than 1 (the source itself)
        if best:
            return self._rng.choice(best)
        if len(self.inflight) < len(self.missing) or len(self.missing) > ENDGAME_CHUNKS:
            return None  # other chunks are still free (or too many left to duplicate)
        # Endgame: every missing chunk is in flight; duplicate the least-requested one this source has.
        candidates = [
            i
            for i, requesters in self.inflight.items()
            if i in bits and source not in requesters and len(requesters) < ENDGAME_MAX_REQUESTERS
        ]
        if not candidates:
            return None
        fewest = min(len(self.inflight[i]) for i in candidates)
        return self._rng.choice([i for i in candidates if len(self.inflight[i]) == fewest])

    def started(self, index: int, source: str) -> None:
        """A request for `index` went to `source`."""
        self.inflight.setdefault(index, set()).add(source)

    def finished(self, index: int, source: str) -> None:
        """The request for `index` to `source` ended (any outcome)."""
        requesters = self.inflight.get(index)
        if requesters is not None:
            requesters.discard(source)
            if not requesters:
                del self.inflight[index]

    def completed(self, index: int) -> set[str]:
        """Chunk verified and written; return the sources still fetching it (to cancel)."""
        self.missing.discard(index)
        return set(self.inflight.pop(index, set()))
