"""Preheat: after an origin URL is imported here, have more peers hold it, spread over zones (as dfget's preheat
seeds several peers), so that later gets never reach the origin and survive its outage."""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Iterable
from typing import Protocol

from shoal.peer.errors import LinkError
from shoal.v1 import common_pb2, tracker_pb2

logger = logging.getLogger(__name__)

REPLICATE_TIMEOUT = 3600.0


class PreheatTrackers(Protocol):
    """The trackers as preheat uses them."""

    async def holders(self, file_id: str, limit: int = 0) -> list[tracker_pb2.Holder]:
        """Live holders of a file."""
        ...

    async def live_peers(self) -> list[common_pb2.PeerInfo]:
        """Every live peer."""
        ...


class ReplicaLink(Protocol):
    """The call preheat makes to another peer."""

    async def replicate_to(self, file_id: str, url_key: str, url: str, timeout: float) -> common_pb2.FileInfo:
        """Have that peer download the file; returns once it holds it."""
        ...


class ReplicaLinks(Protocol):
    """Links by address."""

    def link(self, address: str) -> ReplicaLink:
        """The pooled link."""
        ...


def pick_spread(
    candidates: Iterable[common_pb2.PeerInfo], holding_zones: Iterable[str], wanted: int, rng: random.Random
) -> list[common_pb2.PeerInfo]:
    """`wanted` candidates, each from the zone that holds the fewest copies so far (ties broken at random)."""
    counts = Counter(holding_zones)
    pool = list(candidates)
    rng.shuffle(pool)
    chosen: list[common_pb2.PeerInfo] = []
    while pool and len(chosen) < wanted:
        best = min(pool, key=lambda p: counts[p.zone])
        pool.remove(best)
        counts[best.zone] += 1
        chosen.append(best)
    return chosen


async def spread(
    me: common_pb2.PeerInfo,
    trackers: PreheatTrackers,
    links: ReplicaLinks,
    file_id: str,
    url_key: str,
    url: str,
    replicas: int,
    rng: random.Random | None = None,
) -> list[common_pb2.PeerInfo]:
    """Make `replicas` peers (this one included) hold the file; returns those that hold it, this one first."""
    holding = {h.peer.peer_id: h.peer for h in await trackers.holders(file_id) if h.complete}
    holding.pop(me.peer_id, None)
    held = [me, *holding.values()]
    wanted = replicas - len(held)
    if wanted <= 0:
        return held[: max(replicas, 1)]
    live = [p for p in await trackers.live_peers() if p.peer_id != me.peer_id and p.peer_id not in holding]
    chosen = pick_spread(live, (p.zone for p in held), wanted, rng or random.Random())
    if len(chosen) < wanted:
        logger.warning("preheat of %s: %d more replicas wanted, %d peers to ask", url, wanted, len(chosen))

    async def one(peer: common_pb2.PeerInfo) -> common_pb2.PeerInfo | None:
        try:
            await links.link(peer.address).replicate_to(file_id, url_key, url, REPLICATE_TIMEOUT)
        except LinkError as err:
            logger.warning("preheat of %s on %s failed: %s", url, peer.address, err)
            return None
        return peer

    done = await asyncio.gather(*(one(p) for p in chosen))
    return held + [p for p in done if p is not None]
