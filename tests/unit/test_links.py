"""The outbound client maps gRPC status codes to domain errors once, and reads chunk replies by size and shape."""

from __future__ import annotations

import grpc
import pytest

from shoal import net
from shoal.peer import links, wire
from shoal.peer.errors import Busy, Lied, LinkError, NotHeld, Unreachable


def rpc_error(code: grpc.StatusCode, details: str = "") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details, None)


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.RESOURCE_EXHAUSTED, Busy),
        (grpc.StatusCode.NOT_FOUND, NotHeld),
        (grpc.StatusCode.INVALID_ARGUMENT, Lied),
        (grpc.StatusCode.OUT_OF_RANGE, Lied),
        (grpc.StatusCode.UNAVAILABLE, Unreachable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, Unreachable),
        (grpc.StatusCode.DATA_LOSS, Unreachable),
        (grpc.StatusCode.INTERNAL, Unreachable),
    ],
)
def test_status_codes_map_to_domain_errors(code: grpc.StatusCode, kind: type[LinkError]) -> None:
    err = links.error_for(rpc_error(code, "whatever the peer wrote"))
    assert type(err) is kind
    assert str(err) == code.name  # the code names it; the peer's text never decides anything


def test_the_mapping_ignores_message_text() -> None:
    err = links.error_for(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max"))
    assert isinstance(err, Busy)  # an oversized reply is caught by its size before gRPC could refuse it


def test_a_well_formed_reply_is_read_in_place() -> None:
    raw = wire.encode(wire.ChunkReply(data=b"abc", source_complete=True, bitfield=b"\x01"))
    reply = links.read_chunk_reply(raw)
    assert bytes(reply.data) == b"abc" and reply.source_complete and reply.bitfield == b"\x01"
    assert isinstance(reply.data, memoryview)


def test_a_reply_larger_than_any_honest_peer_sends_is_a_lie() -> None:
    raw = wire.encode(wire.ChunkReply(data=bytes(net.MAX_MESSAGE_BYTES)))
    with pytest.raises(Lied, match="larger than any chunk"):
        links.read_chunk_reply(raw)
    assert net.MAX_REPLY_BYTES > len(raw)  # gRPC lets it through for us to judge


def test_a_malformed_reply_is_a_lie() -> None:
    with pytest.raises(Lied, match="malformed"):
        links.read_chunk_reply(b"\x0b")


async def test_the_pool_reuses_and_drops_links() -> None:
    pool = links.LinkPool()
    try:
        first = pool.link("127.0.0.1:9")
        assert pool.link("127.0.0.1:9") is first
        await pool.drop("127.0.0.1:9")
        assert pool.link("127.0.0.1:9") is not first
        await pool.drop("never-seen:1")
    finally:
        await pool.close()


async def test_spread_chunk_requests_take_turns_over_separate_tcp_connections() -> None:
    """On a lossy path one TCP stream mostly waits out losses; with few sources a link spreads chunk requests."""
    callers: list[str] = []

    async def get_chunk(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        callers.append(context.peer())  # "ipv4:127.0.0.1:PORT": one client port per TCP connection
        return wire.encode(wire.ChunkReply(data=b"chunk"))

    handler = grpc.method_handlers_generic_handler(
        wire.SERVICE, {"GetChunk": grpc.unary_unary_rpc_method_handler(get_chunk)}
    )
    server = grpc.aio.server(handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    pool = links.LinkPool()
    try:
        link = pool.link(f"127.0.0.1:{port}")
        for index in range(4):
            reply = await link.fetch_chunk("f" * 64, index, "me", timeout=5.0)
            assert bytes(reply.data) == b"chunk"
        assert len(set(callers)) == 1  # not spread: one connection, no extra opened
        assert len(link.channels) == 1
        callers.clear()
        for index in range(2 * links.CHUNK_CONNECTIONS):
            reply = await link.fetch_chunk("f" * 64, index, "me", timeout=5.0, spread=True)
            assert bytes(reply.data) == b"chunk"
        assert links.CHUNK_CONNECTIONS >= 2
        assert len(set(callers)) == links.CHUNK_CONNECTIONS
        assert len(callers) == 2 * links.CHUNK_CONNECTIONS
    finally:
        await pool.close()
        await server.stop(None)
