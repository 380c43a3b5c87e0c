"""The peer-facing gRPC servicer: manifests, chunks and peer exchange for other peers.

Thin: each handler validates, calls domain code (`Node`, `Uploads`, the running downloads through
`Swarms`), maps `peer.errors` types to status codes and builds the reply.
"""

from __future__ import annotations

import logging
from typing import Protocol

import grpc

from shoal import content
from shoal.peer.errors import Busy, Corrupt, DownloadError, Draining, NoHolders, NotHeld, TrackersUnavailable
from shoal.peer.node import Node
from shoal.peer.uploads import Served, Uploads
from shoal.peer.wire import SERVICE, ChunkReply, encode
from shoal.store import Entry, StoreError
from shoal.v1 import common_pb2, peer_pb2

logger = logging.getLogger(__name__)

MAX_PEER_ID = 64  # ids are 32 hex characters; room for other implementations
MAX_ADDRESS = 256
MAX_ZONE = 128
MAX_KNOWN = 100  # holders one exchange may carry (we send at most 50)


def _reply(served: Served, context: grpc.aio.ServicerContext) -> bytes:
    """Frame a served chunk; its upload slot is held until the reply has been sent (or the call failed).

    The read buffer is dropped from `served` once framed: gRPC keeps a finished call's done callbacks (and so
    `served`) alive for a while, which kept ~32 chunk buffers alive after every burst.
    """
    reply = encode(ChunkReply(data=served.data, source_complete=served.complete, bitfield=served.bitfield))
    served.data = b""
    context.add_done_callback(lambda _: served.release())  # type: ignore[arg-type]  # stubs want a class
    return reply


def _framed(reply: bytes) -> bytes:
    """GetChunk's serializer: the servicer returns the reply already framed by `wire.encode`."""
    return reply


async def _refuse(context: grpc.aio.ServicerContext, code: grpc.StatusCode, what: str, value: object) -> None:
    """One log line (the attacker's text shortened, as %r) and the status."""
    shown = value[:80] if isinstance(value, str | bytes) else value
    logger.warning("refused a peer call: %s (%r)", what, shown)
    await context.abort(code, what)


async def _check_peer(context: grpc.aio.ServicerContext, peer: common_pb2.PeerInfo) -> None:
    for what, value, cap in (
        ("peer id", peer.peer_id, MAX_PEER_ID),
        ("address", peer.address, MAX_ADDRESS),
        ("zone", peer.zone, MAX_ZONE),
    ):
        if len(value) > cap:
            await _refuse(context, grpc.StatusCode.INVALID_ARGUMENT, f"{what} longer than {cap} characters", value)


class Swarms(Protocol):
    """What a caller's exchange tells this peer's running downloads."""

    def holders_heard(self, file_id: str, peers: list[common_pb2.PeerInfo]) -> None:
        """New holders of a file."""
        ...

    def bitfield_heard(self, file_id: str, address: str, bitfield: bytes) -> None:
        """The chunk map of the peer at `address`."""
        ...


async def _entry(node: Node, file_id: str, context: grpc.aio.ServicerContext) -> Entry:
    try:
        canonical = content.parse_file_id(file_id)
    except content.ContentError as err:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
    entry = node.store.get(canonical)
    if entry is None:
        await context.abort(grpc.StatusCode.NOT_FOUND, f"file {canonical} not held here")
    return entry


class OriginService(Protocol):
    """Origin URL keys as this peer serves them (peer.imports.OriginImports)."""

    def resolve(self, key: str) -> str | None:
        """The file id a URL key resolved to here, if held complete."""
        ...

    async def read_chunk(self, key: str, index: int) -> bytes | None:
        """A chunk of the URL key's part file (or resolved file), if here."""
        ...

    async def replicate(self, file_id: str, url_key: str, url: str) -> Entry:
        """Download the file from the swarm and remember the URL version it stands for."""
        ...


class PeerServicer:
    """Serves what this peer holds; every answer is checked by the caller against the file id."""

    def __init__(
        self,
        node: Node,
        uploads: Uploads,
        swarms: Swarms,
        *,
        origins: OriginService | None = None,
    ) -> None:
        self._node = node
        self._uploads = uploads
        self._swarms = swarms
        self._origins = origins

    async def GetManifest(
        self, request: peer_pb2.GetManifestRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.GetManifestResponse:
        file_id = request.file_id
        if self._origins is not None:
            file_id = self._origins.resolve(file_id) or file_id
        entry = await _entry(self._node, file_id, context)
        return peer_pb2.GetManifestResponse(manifest=entry.manifest)

    async def GetChunk(self, request: peer_pb2.GetChunkRequest, context: grpc.aio.ServicerContext) -> bytes:
        if len(request.peer_id) > MAX_PEER_ID:
            await _refuse(context, grpc.StatusCode.INVALID_ARGUMENT, "peer id too long", request.peer_id)
        origins = self._origins
        if origins is not None and self._node.store.get(request.file_id) is None:
            part: Served | None = None
            try:
                part = await self._uploads.serve_read(lambda: origins.read_chunk(request.file_id, request.index))
            except Draining as err:
                await context.abort(grpc.StatusCode.UNAVAILABLE, str(err))
            except Busy as err:
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
            except (StoreError, OSError) as err:
                logger.warning("cannot read chunk %d of URL key %s: %s", request.index, request.file_id[:12], err)
            if part is not None:
                return _reply(part, context)
        entry = await _entry(self._node, request.file_id, context)
        nchunks = len(entry.manifest.chunk_sha256)
        if request.index >= nchunks:
            await context.abort(
                grpc.StatusCode.OUT_OF_RANGE, f"chunk {request.index} out of range (file has {nchunks})"
            )
        try:
            served = await self._uploads.serve(entry, request.index, request.peer_id)
        except NotHeld as err:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(err))
        except Draining as err:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(err))
        except Busy as err:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(err))
        except Corrupt as err:
            await context.abort(grpc.StatusCode.DATA_LOSS, str(err))
        except (StoreError, OSError) as err:
            logger.warning("cannot read chunk %d of %s: %s", request.index, entry.file_id, err)
            await context.abort(grpc.StatusCode.INTERNAL, f"cannot read chunk: {err}")
        return _reply(served, context)

    async def Exchange(
        self, request: peer_pb2.ExchangeRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.ExchangeResponse:
        node = self._node
        entry = await _entry(node, request.file_id, context)
        caller = request.peer
        await _check_peer(context, caller)
        if len(request.known) > MAX_KNOWN:
            await _refuse(
                context, grpc.StatusCode.RESOURCE_EXHAUSTED, f"more than {MAX_KNOWN} known holders", len(request.known)
            )
        expected = (entry.have.size + 7) // 8
        if request.bitfield and len(request.bitfield) != expected:
            await _refuse(
                context,
                grpc.StatusCode.INVALID_ARGUMENT,
                f"bitfield of {len(request.bitfield)} bytes for a file of {entry.have.size} chunks",
                len(request.bitfield),
            )
        if caller.peer_id and caller.address and caller.peer_id != node.peer_id:
            self._swarms.holders_heard(entry.file_id, node.learn(entry.file_id, [caller]))
            if request.bitfield:
                self._swarms.bitfield_heard(entry.file_id, caller.address, request.bitfield)
        # request.known is not taken from an inbound caller: peer exchange entries count only from sources
        # a download dialled itself (swarm), so a stranger cannot make this peer dial addresses it names.
        theirs = None
        if entry.complete and request.bitfield:
            try:
                theirs = content.Bitfield(entry.have.size, request.bitfield)
            except content.ContentError:
                theirs = None
        return peer_pb2.ExchangeResponse(
            bitfield=self._uploads.bitfield_for(entry, caller.peer_id, theirs),
            complete=entry.complete,
            known=node.sample_known(entry.file_id),
        )

    async def Replicate(
        self, request: peer_pb2.ReplicateRequest, context: grpc.aio.ServicerContext
    ) -> peer_pb2.ReplicateResponse:
        if self._origins is None:
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this peer does not replicate")
        try:
            file_id = content.parse_file_id(request.file_id)
            key = content.parse_file_id(request.url_key) if request.url_key else ""
        except content.ContentError as err:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(err))
        try:
            entry = await self._origins.replicate(file_id, key, request.url[:2048])
        except NoHolders as err:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(err))
        except (DownloadError, StoreError, TrackersUnavailable) as err:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(err))
        return peer_pb2.ReplicateResponse(file=entry.info)


def add_to_server(servicer: PeerServicer, server: grpc.aio.Server) -> None:
    """Register the Peer service; GetChunk replies are framed by `wire` (same bytes, fewer copies)."""
    handlers = {
        "GetManifest": grpc.unary_unary_rpc_method_handler(
            servicer.GetManifest,
            request_deserializer=peer_pb2.GetManifestRequest.FromString,
            response_serializer=peer_pb2.GetManifestResponse.SerializeToString,
        ),
        "Replicate": grpc.unary_unary_rpc_method_handler(
            servicer.Replicate,
            request_deserializer=peer_pb2.ReplicateRequest.FromString,
            response_serializer=peer_pb2.ReplicateResponse.SerializeToString,
        ),
        "GetChunk": grpc.unary_unary_rpc_method_handler(
            servicer.GetChunk,
            request_deserializer=peer_pb2.GetChunkRequest.FromString,
            response_serializer=_framed,
        ),
        "Exchange": grpc.unary_unary_rpc_method_handler(
            servicer.Exchange,
            request_deserializer=peer_pb2.ExchangeRequest.FromString,
            response_serializer=peer_pb2.ExchangeResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
