"""The peer-facing gRPC servicer: manifests, chunks and peer exchange for other peers."""

from __future__ import annotations

import asyncio
import logging

import grpc

from shoal import content
from shoal.peer.node import Node
from shoal.peer.superseed import SuperSeeder
from shoal.peer.wire import SERVICE, ChunkReply, encode
from shoal.store import CorruptChunk, Entry, StoreError
from shoal.v1 import peer_pb2

logger = logging.getLogger(__name__)

PIGGYBACK_MAX_CHUNKS = 32768  # bitfields ride on chunk replies for files up to this many chunks (4 KiB)


async def _entry(node: Node, file_id: str, context: grpc.aio.ServicerContext) -> Entry:
    try:
        canonical = content.parse_file_id(file_id)
    except content.ContentError as err:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
    entry = node.store.get(canonical)
    if entry is None:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"file {canonical} not held here")
    return entry


def _seeder(node: Node, entry: Entry) -> SuperSeeder:
    seeder = node.superseeders.get(entry.file_id)
    if seeder is None:
        seeder = node.superseeders[entry.file_id] = SuperSeeder(entry.have.size)
    return seeder


def _advertised(node: Node, entry: Entry, peer_id: str, theirs: content.Bitfield | None = None) -> bytes:
    """The bitfield to show a caller: everything held, or a complete holder's super-seeding offer."""
    if not entry.complete:
        return entry.have.to_bytes()
    seeder = _seeder(node, entry)
    seeder.saw(peer_id, theirs)
    offered = seeder.offer(peer_id)
    return (offered or entry.have).to_bytes()


class PeerServicer:
    """Serves what this peer holds; every answer is checked by the caller against the file id."""

    def __init__(self, node: Node) -> None:
        self._node = node

    async def GetManifest(
        self, request: peer_pb2.GetManifestRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.GetManifestResponse:
        entry = await _entry(self._node, request.file_id, context)
        return peer_pb2.GetManifestResponse(manifest=entry.manifest)

    async def GetChunk(self, request: peer_pb2.GetChunkRequest, context: grpc.aio.ServicerContext) -> ChunkReply:
        node = self._node
        entry = await _entry(node, request.file_id, context)
        nchunks = len(entry.manifest.chunk_sha256)
        if request.index >= nchunks:
            await context.abort(
                grpc.StatusCode.OUT_OF_RANGE, f"chunk {request.index} out of range (file has {nchunks})"
            )
        if request.index not in entry.have:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"chunk {request.index} not held yet")
        if node.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "peer is shutting down")
        if node.stats.active_uploads >= node.config.upload_slots:
            node.stats.busy_rejections += 1
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "all upload slots busy")
        node.stats.active_uploads += 1
        try:
            complete = entry.complete
            _, length = content.chunk_span(entry.manifest, request.index)
            await node.upload_bucket.take(length)
            try:
                data = await asyncio.to_thread(node.store.read_chunk, entry, request.index)
            except CorruptChunk as err:
                logger.error("%s; dropping the file from this peer", err)
                await asyncio.to_thread(node.store.remove, entry.file_id)
                node.announce_now.set()
                await context.abort(grpc.StatusCode.DATA_LOSS, str(err))
            except (StoreError, OSError) as err:
                logger.warning("cannot read chunk %d of %s: %s", request.index, entry.file_id, err)
                await context.abort(grpc.StatusCode.INTERNAL, f"cannot read chunk: {err}")
            node.stats.uploaded_bytes += len(data)
            node.stats.chunks_uploaded += 1
            if complete:
                _seeder(node, entry).served(request.index, request.peer_id)
            bits = _advertised(node, entry, request.peer_id) if nchunks <= PIGGYBACK_MAX_CHUNKS else b""
            return ChunkReply(data=data, source_complete=complete, bitfield=bits)
        finally:
            node.stats.active_uploads -= 1

    async def Exchange(
        self, request: peer_pb2.ExchangeRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.ExchangeResponse:
        node = self._node
        entry = await _entry(node, request.file_id, context)
        caller = request.peer
        if caller.peer_id and caller.address and caller.peer_id != node.peer_id:
            node.learn(entry.file_id, [caller])
            download = node.downloads.get(entry.file_id)
            if download is not None and request.bitfield:
                download.update_bitfield(caller.peer_id, request.bitfield, complete=False)
        if request.known:
            node.learn(entry.file_id, list(request.known)[:100], direct=False)
        theirs = None
        if entry.complete and request.bitfield:
            try:
                theirs = content.Bitfield(entry.have.size, request.bitfield)
            except content.ContentError:
                theirs = None
        return peer_pb2.ExchangeResponse(
            bitfield=_advertised(node, entry, caller.peer_id, theirs),
            complete=entry.complete,
            known=node.sample_known(entry.file_id),
        )


def add_to_server(servicer: PeerServicer, server: grpc.aio.Server) -> None:
    """Register the Peer service; GetChunk replies are framed by `wire` (same bytes, fewer copies)."""
    handlers = {
        "GetManifest": grpc.unary_unary_rpc_method_handler(
            servicer.GetManifest,
            request_deserializer=peer_pb2.GetManifestRequest.FromString,
            response_serializer=peer_pb2.GetManifestResponse.SerializeToString,
        ),
        "GetChunk": grpc.unary_unary_rpc_method_handler(
            servicer.GetChunk,
            request_deserializer=peer_pb2.GetChunkRequest.FromString,
            response_serializer=encode,
        ),
        "Exchange": grpc.unary_unary_rpc_method_handler(
            servicer.Exchange,
            request_deserializer=peer_pb2.ExchangeRequest.FromString,
            response_serializer=peer_pb2.ExchangeResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
