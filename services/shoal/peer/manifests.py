"""Finding a download's manifest: ask the trackers and the holders we know, keep the first that matches the id."""

from __future__ import annotations

import logging

from shoal.peer.errors import Lied, LinkError, NoHolders, TrackersUnavailable
from shoal.peer.node import Node
from shoal.peer.ports import HolderLookup, Links
from shoal.v1 import common_pb2

logger = logging.getLogger(__name__)


async def holders_from_trackers(node: Node, trackers: HolderLookup, file_id: str) -> list[common_pb2.PeerInfo]:
    """Live holders per the trackers (remembered on the node); none when no tracker answers."""
    try:
        holders = await trackers.holders(file_id)
    except TrackersUnavailable as err:
        logger.warning("%s: %s", file_id[:12], err)
        return []
    peers = [h.peer for h in holders]
    node.learn(file_id, peers)
    return peers


async def find_manifest(
    node: Node, trackers: HolderLookup, links: Links, file_id: str
) -> tuple[common_pb2.Manifest, list[common_pb2.PeerInfo]]:
    """The manifest from the first holder whose copy matches the id, and every holder heard of."""
    peers = await holders_from_trackers(node, trackers, file_id)
    known = list(node.known.get(file_id, {}).values())
    by_id = {p.peer_id: p for p in [*peers, *known] if p.peer_id != node.peer_id}
    if not by_id:
        raise NoHolders(f"no live peer holds file {file_id}")
    errors = []
    for peer in by_id.values():
        try:
            manifest = await links.link(peer.address).fetch_manifest(file_id)
        except Lied as err:
            logger.warning("peer %s sent a bad manifest: %s", peer.address, err)
            errors.append(f"{peer.address}: bad manifest")
            node.forget(file_id, peer.peer_id)
            continue
        except LinkError as err:
            errors.append(f"{peer.address}: {err}")
            continue
        return manifest, list(by_id.values())
    raise NoHolders(f"no live peer could serve file {file_id} ({'; '.join(errors[:3])})")
