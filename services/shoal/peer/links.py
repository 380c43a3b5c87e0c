"""Outbound calls to other peers: fetch_manifest, fetch_chunk, exchange_with, over pooled channels."""

from __future__ import annotations

import logging

import grpc

from shoal import content, net
from shoal.peer import wire
from shoal.v1 import common_pb2, peer_pb2, peer_pb2_grpc

logger = logging.getLogger(__name__)


class PeerLink:
    """One pooled channel to another peer."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.channel = net.open_channel(address)
        self.stub = peer_pb2_grpc.PeerStub(self.channel)
        self._get_chunk = self.channel.unary_unary(
            wire.GET_CHUNK,
            request_serializer=peer_pb2.GetChunkRequest.SerializeToString,
            response_deserializer=wire.decode,
        )

    async def fetch_manifest(self, file_id: str) -> common_pb2.Manifest:
        """Fetch a manifest and check it against the id (raises ContentError if it lies)."""
        reply = await self.stub.GetManifest(peer_pb2.GetManifestRequest(file_id=file_id), timeout=net.MANIFEST_DEADLINE)
        content.validate_manifest(reply.manifest, file_id)
        return reply.manifest

    async def fetch_chunk(self, file_id: str, index: int, peer_id: str, timeout: float) -> wire.ChunkReply:
        """Fetch one chunk's bytes (unverified: the caller checks them), as a view into the reply."""
        request = peer_pb2.GetChunkRequest(file_id=file_id, index=index, peer_id=peer_id)
        reply: wire.ChunkReply = await self._get_chunk(request, timeout=timeout)
        return reply

    async def exchange_with(
        self, file_id: str, me: common_pb2.PeerInfo, bitfield: bytes, known: list[common_pb2.PeerInfo]
    ) -> peer_pb2.ExchangeResponse:
        """Swap bitfields and known holders."""
        request = peer_pb2.ExchangeRequest(file_id=file_id, peer=me, bitfield=bitfield, known=known)
        return await self.stub.Exchange(request, timeout=net.EXCHANGE_DEADLINE)


class LinkPool:
    """Channels to other peers, one per address, reused across downloads."""

    def __init__(self) -> None:
        self._links: dict[str, PeerLink] = {}

    def link(self, address: str) -> PeerLink:
        """The pooled link to an address."""
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = PeerLink(address)
        return link

    async def drop(self, address: str) -> None:
        """Close the channel to a peer found dead, so the next use reconnects afresh."""
        link = self._links.pop(address, None)
        if link is not None:
            await link.channel.close(None)

    async def close(self) -> None:
        """Close every channel."""
        for link in self._links.values():
            await link.channel.close(None)
        self._links.clear()


def is_status(err: BaseException, *codes: grpc.StatusCode) -> bool:
    """True when err is a gRPC error with one of the codes."""
    return isinstance(err, grpc.aio.AioRpcError) and err.code() in codes
