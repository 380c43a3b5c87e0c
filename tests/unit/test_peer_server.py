"""PeerServicer.GetChunk: the framed reply, and what a finished call's done callbacks keep alive."""

from __future__ import annotations

import gc
from pathlib import Path
from typing import Any, cast

import grpc
from helpers.servicer_context import FakeContext
from unit.manifests import CS, pattern

from shoal.config import PeerConfig
from shoal.peer import wire
from shoal.peer.node import Node
from shoal.peer.server import PeerServicer
from shoal.peer.uploads import Uploads
from shoal.store import Store
from shoal.v1 import peer_pb2

NCHUNKS = 4


class Peers:
    def holders_heard(self, file_id: str, peers: list[Any]) -> None:
        pass

    def bitfield_heard(self, file_id: str, address: str, bitfield: bytes) -> None:
        pass


def chunk_buffers(roots: list[Any], depth: int = 8) -> list[bytes]:
    """Chunk-sized bytes reachable from `roots` within `depth` references."""
    found, seen, frontier = [], set(), list(roots)
    for _ in range(depth):
        following = []
        for obj in frontier:
            if id(obj) in seen:
                continue
            seen.add(id(obj))
            if isinstance(obj, bytes) and len(obj) >= CS:
                found.append(obj)
            following.extend(gc.get_referents(obj))
        frontier = following
    return found


async def test_a_finished_calls_callbacks_hold_no_chunk_buffer(tmp_path: Path) -> None:
    store = Store(tmp_path / "data")
    store.open()
    source = tmp_path / "f.bin"
    source.write_bytes(pattern(NCHUNKS * CS))
    entry = store.publish(source, "f.bin", CS)
    node = Node(PeerConfig(listen="127.0.0.1:0", trackers=("127.0.0.1:1",), data_dir=store.root), store, "me", "x:1")
    uploads = Uploads(store, node.stats, node.upload_bucket, 4, lambda: None)
    servicer = PeerServicer(node, uploads, cast(Any, Peers()))
    context = FakeContext()
    request = peer_pb2.GetChunkRequest(file_id=entry.file_id, index=2, peer_id="them")
    reply = await servicer.GetChunk(request, cast(grpc.aio.ServicerContext, context))
    assert bytes(wire.decode(reply).data) == pattern(NCHUNKS * CS)[2 * CS : 3 * CS]
    assert node.stats.active_uploads == 1  # the slot is held until the call is done
    del reply
    for callback in context.done:
        callback(context)
    assert node.stats.active_uploads == 0
    # gRPC keeps a finished call's callbacks for a while: they must not keep the chunk's read buffer alive.
    assert chunk_buffers(context.done) == []
