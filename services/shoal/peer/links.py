"""The outbound client to other peers: fetch_manifest, fetch_chunk, exchange_with, over pooled channels.

This is the one place that knows gRPC status codes on the fetching side: every failure leaves here as
a domain error from `peer.errors`, so the download engine never imports grpc.
"""

from __future__ import annotations

import asyncio
import logging

import grpc

from shoal import content, net, tls
from shoal.peer import wire
from shoal.peer.errors import Busy, Lied, LinkError, NotHeld, Unreachable
from shoal.v1 import common_pb2, peer_pb2, peer_pb2_grpc

logger = logging.getLogger(__name__)

# What each status means coming from a peer; anything else (UNAVAILABLE, DEADLINE_EXCEEDED, DATA_LOSS,
# INTERNAL, ...) is Unreachable: it did not deliver, and nothing says it lied.
_ERRORS: dict[grpc.StatusCode, type[LinkError]] = {
    grpc.StatusCode.RESOURCE_EXHAUSTED: Busy,
    grpc.StatusCode.NOT_FOUND: NotHeld,
    grpc.StatusCode.INVALID_ARGUMENT: Lied,  # we only send valid requests
    grpc.StatusCode.OUT_OF_RANGE: Lied,
}


def error_for(err: grpc.aio.AioRpcError) -> LinkError:
    """The domain error a gRPC status from a peer stands for (its message is the code's name)."""
    return _ERRORS.get(err.code(), Unreachable)(err.code().name)


def read_chunk_reply(raw: bytes) -> wire.ChunkReply:
    """Parse a GetChunk reply in place; a reply no honest peer could send raises Lied."""
    if len(raw) > net.MAX_MESSAGE_BYTES:
        raise Lied(f"a {len(raw)}-byte reply, larger than any chunk")
    try:
        return wire.decode(raw)
    except wire.WireError as err:
        raise Lied(f"malformed chunk reply: {err}") from err


# A download with few sources spreads each source's chunk requests over this many TCP connections. On a lossy
# path one TCP stream spends most of its time waiting out losses; streams wait independently, so a sole source
# over such a link delivers about twice as fast over two (raw TCP in bench/loss.py's lab, 10% loss, 8 MiB: one
# stream 17 s, two 7.8 s, four 5.2 s). With many sources the download already has that many streams, and an
# extra connection per source only costs memory (leecher peak RSS +20 MB at N = 16 in bench/swarm.py).
CHUNK_CONNECTIONS = 2


class PeerLink:
    """Pooled channels to another peer: one for every call, and (opened on first need) more that chunk requests
    take turns on when the download asks to spread them."""

    def __init__(self, address: str, transport: tls.Transport | None = None) -> None:
        self.address = address
        self._transport = transport = transport if transport is not None else tls.plaintext()
        self.generation = transport.generation
        self.channel = transport.open_channel(address, tls.PEER_NAME, max_receive=net.MAX_REPLY_BYTES)
        self.channels = [self.channel]
        self.stub = peer_pb2_grpc.PeerStub(self.channel)
        self._get_chunk = [self._chunk_call(self.channel)]
        self._turn = 0

    @staticmethod
    def _chunk_call(channel: grpc.aio.Channel) -> grpc.aio.UnaryUnaryMultiCallable:
        # No deserializer: the raw bytes come back, parsed in place by read_chunk_reply.
        return channel.unary_unary(
            wire.GET_CHUNK, request_serializer=peer_pb2.GetChunkRequest.SerializeToString, response_deserializer=None
        )

    def _spread_calls(self) -> list[grpc.aio.UnaryUnaryMultiCallable]:
        """Every connection's GetChunk, opening the extra ones (own TCP connections) the first time."""
        while len(self.channels) < CHUNK_CONNECTIONS:
            channel = self._transport.open_channel(
                self.address, tls.PEER_NAME, max_receive=net.MAX_REPLY_BYTES, own_connection=True
            )
            self.channels.append(channel)
            self._get_chunk.append(self._chunk_call(channel))
        return self._get_chunk

    async def close(self, grace: float | None) -> None:
        """Close every channel (calls in flight get `grace` seconds)."""
        await asyncio.gather(*(channel.close(grace) for channel in self.channels))

    async def fetch_manifest(self, file_id: str) -> common_pb2.Manifest:
        """Fetch a manifest and check it against the id (raises Lied if it does not match)."""
        try:
            reply = await self.stub.GetManifest(
                peer_pb2.GetManifestRequest(file_id=file_id), timeout=net.MANIFEST_DEADLINE
            )
        except grpc.aio.AioRpcError as err:
            raise error_for(err) from err
        try:
            content.validate_manifest(reply.manifest, file_id)
        except content.ContentError as err:
            raise Lied(str(err)) from err
        return reply.manifest

    async def fetch_origin_manifest(self, url_key: str) -> common_pb2.Manifest:
        """The manifest an origin URL key resolved to at that peer (docs/origins.md): checked for shape, not id."""
        try:
            reply = await self.stub.GetManifest(
                peer_pb2.GetManifestRequest(file_id=url_key), timeout=net.MANIFEST_DEADLINE
            )
        except grpc.aio.AioRpcError as err:
            raise error_for(err) from err
        try:
            content.validate_manifest(reply.manifest, content.manifest_id(reply.manifest))
        except content.ContentError as err:
            raise Lied(str(err)) from err
        return reply.manifest

    async def replicate_to(self, file_id: str, url_key: str, url: str, timeout: float) -> common_pb2.FileInfo:
        """Ask that peer to download a file from the swarm (preheat); returns once it holds it."""
        request = peer_pb2.ReplicateRequest(file_id=file_id, url_key=url_key, url=url)
        try:
            reply = await self.stub.Replicate(request, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise error_for(err) from err
        return reply.file

    async def fetch_chunk(
        self, file_id: str, index: int, peer_id: str, timeout: float, spread: bool = False
    ) -> wire.ChunkReply:
        """Fetch one chunk's bytes (unverified: the caller checks them), as a view into the reply; with `spread`,
        requests take turns over CHUNK_CONNECTIONS connections."""
        request = peer_pb2.GetChunkRequest(file_id=file_id, index=index, peer_id=peer_id)
        calls = self._spread_calls() if spread else self._get_chunk[:1]
        self._turn = (self._turn + 1) % len(calls)
        try:
            raw: bytes = await calls[self._turn](request, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            raise error_for(err) from err
        return read_chunk_reply(raw)

    async def exchange_with(
        self, file_id: str, me: common_pb2.PeerInfo, bitfield: bytes, known: list[common_pb2.PeerInfo]
    ) -> peer_pb2.ExchangeResponse:
        """Swap bitfields and known holders."""
        request = peer_pb2.ExchangeRequest(file_id=file_id, peer=me, bitfield=bitfield, known=known)
        try:
            return await self.stub.Exchange(request, timeout=net.EXCHANGE_DEADLINE)
        except grpc.aio.AioRpcError as err:
            raise error_for(err) from err


class LinkPool:
    """Channels to other peers, one per address, reused across downloads.

    When the TLS files change, the next request for a link gets a new channel with the new certificate; the old
    one finishes its calls in flight (up to a chunk deadline) and closes."""

    def __init__(self, transport: tls.Transport | None = None) -> None:
        self._links: dict[str, PeerLink] = {}
        self._transport = transport if transport is not None else tls.plaintext()
        self._closing: set[asyncio.Task[None]] = set()

    def link(self, address: str) -> PeerLink:
        """The pooled link to an address."""
        link = self._links.get(address)
        if link is not None and link.generation != self._transport.current():
            self._retire(link)
            link = None
        if link is None:
            link = self._links[address] = PeerLink(address, self._transport)
        return link

    def _retire(self, link: PeerLink) -> None:
        task = asyncio.get_running_loop().create_task(link.close(net.CHUNK_DEADLINE))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def drop(self, address: str) -> None:
        """Close the channel to a peer found dead, so the next use reconnects afresh."""
        link = self._links.pop(address, None)
        if link is not None:
            await link.close(None)

    async def close(self) -> None:
        """Close every channel."""
        for link in self._links.values():
            await link.close(None)
        self._links.clear()
        for task in list(self._closing):
            task.cancel()
