"""One download's sources: each one's pace, request window, stall timeout, strikes, bans and cool-offs.

Pure bookkeeping with an injected clock: no I/O, no tasks. Sources are keyed by the address the
downloader dials, not by the peer id a peer claims, so a ban or a cool-off sticks to what we talk to.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from shoal import net
from shoal.v1 import common_pb2
from shoal.zone import prefer_zone

logger = logging.getLogger(__name__)

BAN_AFTER_BAD_CHUNKS = 3
DEAD_AFTER_FAILURES = 3
SOURCE_STALL = 5.0  # floor of the stall timeout: a source that sends nothing this long past its usual pace is dead
FAST_CHUNK = 0.5  # a chunk arriving quicker than this opens the source's request window by one
SLOW_CHUNK = 1.5  # one slower than this closes it by one (down to the source's floor)
FIRST_WINDOW = 2
# In a download with at most FEW_SOURCES usable sources, requests to each are spread over its link's connections
# (links.CHUNK_CONNECTIONS) and a slow source still keeps SPREAD_WINDOW of them, one per connection, so while one
# TCP stream waits out a loss the other still delivers (at one request the two would only take turns). Otherwise
# a slow source's window closes down to one request.
FEW_SOURCES = 2
SPREAD_WINDOW = 2
PACE_WEIGHT = 0.3  # EWMA weight of the newest rate sample
BUSY_PAUSE = (0.1, 0.4)  # seconds a busy source is left alone (uniform)
COOL_OFF_STALLED = 3.0  # seconds before a source dropped for stalling may be tried again
COOL_OFF_GONE = 5.0  # ... one that no longer holds the file
COOL_OFF_FAILING = 10.0  # ... one whose calls keep failing
ROTATE_AFTER = 5.0  # seconds into a download before the slowest source may be swapped for an untried one
ROTATE_CHANCE = 0.05  # chance per admission round of that swap
MAX_CANDIDATES = 500  # holders waiting to be tried; beyond it new ones are dropped (trackers and PEX re-offer)


@dataclass
class Source:
    """What one download knows about one other peer."""

    info: common_pb2.PeerInfo
    clock: Callable[[], float]
    max_window: int
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
    window: int = FIRST_WINDOW  # requests allowed in flight; grows on fast chunks, shrinks on slow ones (to floor)
    floor: int = 1  # SPREAD_WINDOW while its download has few sources (Sources.spread)

    @property
    def key(self) -> str:
        """What the downloader dials: the address."""
        return self.info.address

    @property
    def inflight(self) -> int:
        """Requests outstanding at this source (a received chunk being verified no longer counts)."""
        return len(self.requesting)

    @property
    def usable(self) -> bool:
        """Neither banned nor cooling off."""
        return not self.banned and self.dead_until <= self.clock()

    @property
    def busy(self) -> bool:
        """It said busy a moment ago."""
        return self.busy_until > self.clock()

    @property
    def proven(self) -> bool:
        """It has delivered a chunk that verified and none that failed: its next request may go out while its
        last chunk is still being checked. An unproven source waits for each verdict, so a liar is banned
        after at most BAN_AFTER_BAD_CHUNKS + its window bad chunks, however fast it answers."""
        return self.received > 0 and self.bad == 0

    @property
    def room(self) -> int:
        """How many more requests it may be sent now."""
        return max(0, min(self.window, self.max_window) - self.inflight)

    def stall_timeout(self, length: int) -> float:
        """How long to wait for the next chunk before calling the source hung: its own pace, with margin."""
        if self.rate <= 0:
            return 2 * SOURCE_STALL  # pace unknown: nothing has arrived from it yet
        return max(SOURCE_STALL, 3 * length / self.rate)

    def deadline(self, length: int) -> float:
        """The deadline of one chunk request: generous until its pace is known, then a few stall timeouts."""
        if self.rate <= 0:
            return net.CHUNK_DEADLINE
        return max(4.0, min(net.CHUNK_DEADLINE, 4 * self.stall_timeout(length)))

    def stalled(self, length: int) -> bool:
        """Requests in flight and nothing heard for longer than its pace allows."""
        return (
            bool(self.requesting) and not self.banned and self.clock() - self.last_activity > self.stall_timeout(length)
        )

    def asked(self, index: int) -> None:
        """A request for chunk `index` went out; the stall clock starts with the first one in flight."""
        if not self.requesting:
            self.last_activity = self.clock()
        self.requesting.add(index)

    def delivered(self, nbytes: int, elapsed: float) -> None:
        """A chunk verified: renew it, fold the sample into its pace, open or close its window."""
        self.failures = 0
        self.last_activity = self.clock()
        self.received += nbytes
        sample = nbytes / elapsed
        self.rate = sample if self.rate <= 0 else (1 - PACE_WEIGHT) * self.rate + PACE_WEIGHT * sample
        if elapsed < FAST_CHUNK:
            self.window = min(self.max_window, self.window + 1)
        elif elapsed > SLOW_CHUNK:
            self.window = max(self.floor, self.window - 1)

    def lied(self) -> bool:
        """A bad chunk: one more strike; True when this one bans it."""
        self.bad += 1
        if self.bad >= BAN_AFTER_BAD_CHUNKS and not self.banned:
            self.banned = True
            return True
        return False

    def failed(self) -> bool:
        """A call failed: one more strike; True when it is now to be treated as dead."""
        self.failures += 1
        return self.failures >= DEAD_AFTER_FAILURES

    def answered(self) -> None:
        """A call succeeded: the failure strikes start over."""
        self.failures = 0

    def said_busy(self, rng: random.Random) -> None:
        """Leave it alone for a moment."""
        self.busy_until = self.clock() + rng.uniform(*BUSY_PAUSE)

    def cool_off(self, seconds: float) -> None:
        """Not to be used, nor admitted again, for `seconds`."""
        self.dead_until = self.clock() + seconds


class Sources:
    """Candidates heard of and the sources admitted from them, at most `max_peers` usable at once."""

    def __init__(
        self,
        me: common_pb2.PeerInfo,
        max_peers: int,
        max_window: int,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._me = me
        self._max_peers = max_peers
        self._max_window = max_window
        self._clock = clock
        self._rng = rng or random.Random()
        self._started = clock()
        self.candidates: dict[str, common_pb2.PeerInfo] = {}
        self.admitted: dict[str, Source] = {}  # including banned and cooling-off ones, so they stay out

    def offer(self, peers: list[common_pb2.PeerInfo]) -> None:
        """Holders heard of (tracker, peer exchange, a peer that called us): candidates unless known."""
        for peer in peers:
            if not peer.address or peer.peer_id == self._me.peer_id or peer.address == self._me.address:
                continue
            if peer.address not in self.admitted and (
                peer.address in self.candidates or len(self.candidates) < MAX_CANDIDATES
            ):
                self.candidates[peer.address] = peer

    @property
    def none(self) -> bool:
        """Not a single source or candidate left."""
        return not self.admitted and not self.candidates

    def get(self, key: str) -> Source | None:
        """The admitted source at this address."""
        return self.admitted.get(key)

    def usable(self) -> list[Source]:
        """Admitted sources neither banned nor cooling off."""
        return [s for s in self.admitted.values() if s.usable]

    def admit(self) -> tuple[list[Source], Source | None]:
        """Bring candidates in while below max_peers, same zone first, then at random.

        Returns the new sources and, when full, now and then the slowest idle one to retire
        (so a fast untried candidate gets its turn).
        """
        now = self._clock()
        for source in list(self.admitted.values()):
            if source.dead_until and source.dead_until <= now and not source.banned:
                del self.admitted[source.key]  # cool-off over: it may be tried again
                self.candidates[source.key] = source.info
        usable = self.usable()
        room = self._max_peers - len(usable)
        if room <= 0 or not self.candidates:
            return [], self._slowest(usable) if room <= 0 and self.candidates else None
        new = []
        for peer in prefer_zone(list(self.candidates.values()), self._me.zone)[:room]:
            del self.candidates[peer.address]
            source = Source(info=peer, clock=self._clock, max_window=self._max_window)
            self.admitted[peer.address] = source
            new.append(source)
        return new, None

    def _slowest(self, usable: list[Source]) -> Source | None:
        if self._clock() - self._started < ROTATE_AFTER or self._rng.random() > ROTATE_CHANCE:
            return None
        slowest = min(usable, key=lambda s: s.rate)
        return slowest if slowest.inflight == 0 and slowest.received > 0 else None

    def stalled(self, length: int, useful: Callable[[str], bool]) -> list[Source]:
        """Sources to drop as hung or crawling: stalled, and another usable source holds a chunk still missing.

        The only holder is kept through a pause (TCP backing off under heavy loss); its requests'
        own deadlines catch a holder that is dead.
        """
        dropped: list[Source] = []
        suspects = [s for s in self.admitted.values() if s.stalled(length)]
        if not suspects:  # the common case, checked on every wake-up: no list of others built
            return dropped
        usable = self.usable()
        for source in suspects:
            others = [o for o in usable if o is not source and o not in dropped]
            if any(useful(o.key) for o in others):
                dropped.append(source)
        return dropped

    def remove(self, source: Source) -> None:
        """Forget a source entirely (retired: it may come back as a candidate)."""
        if self.admitted.get(source.key) is source:
            del self.admitted[source.key]

    def spread(self) -> bool:
        """Few usable sources: spread requests over several connections per source, and keep a wider floor."""
        usable = self.usable()
        few = len(usable) <= FEW_SOURCES
        for source in usable:
            source.floor = min(SPREAD_WINDOW, self._max_window) if few else 1
            source.window = max(source.window, source.floor)
        return few

    def by_preference(self) -> list[Source]:
        """Usable sources in the order requests go out: same zone first, then fastest first."""
        zone = self._me.zone
        return sorted(self.usable(), key=lambda s: (bool(zone) and s.info.zone != zone, -s.rate))
