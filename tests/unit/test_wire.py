"""GetChunk replies framed by shoal.peer.wire are the same bytes protobuf reads and writes."""

from __future__ import annotations

import os

import pytest

from shoal.peer import wire
from shoal.v1 import peer_pb2


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16383, 16384, 1 << 20])
@pytest.mark.parametrize("complete", [False, True])
def test_encode_parses_as_the_generated_message(size: int, complete: bool) -> None:
    data = os.urandom(size)
    raw = wire.encode(wire.ChunkReply(data=data, source_complete=complete, bitfield=b"\xff\x01"))
    parsed = peer_pb2.GetChunkResponse.FromString(raw)
    assert parsed.data == data
    assert parsed.source_complete is complete
    assert parsed.bitfield == b"\xff\x01"


@pytest.mark.parametrize("size", [0, 5, 300, 1 << 20])
def test_decode_reads_what_protobuf_writes(size: int) -> None:
    data = os.urandom(size)
    message = peer_pb2.GetChunkResponse(data=data, source_complete=True, bitfield=b"\x80")
    reply = wire.decode(message.SerializeToString())
    assert bytes(reply.data) == data
    assert reply.source_complete is True
    assert reply.bitfield == b"\x80"


def test_decode_gives_a_view_not_a_copy() -> None:
    raw = wire.encode(wire.ChunkReply(data=b"x" * 4096))
    reply = wire.decode(raw)
    assert isinstance(reply.data, memoryview)
    assert reply.data.obj is raw


def test_decode_takes_fields_in_any_order_and_skips_unknown_ones() -> None:
    # bitfield, then an unknown varint (field 9), an unknown fixed64 (10) and fixed32 (11), then data.
    raw = b"\x1a\x01\x07" + b"\x48\x96\x01" + b"\x51" + bytes(8) + b"\x5d" + bytes(4) + b"\x0a\x03abc" + b"\x10\x01"
    reply = wire.decode(raw)
    assert bytes(reply.data) == b"abc"
    assert reply.bitfield == b"\x07"
    assert reply.source_complete is True
    assert peer_pb2.GetChunkResponse.FromString(raw).data == b"abc"  # protobuf agrees


def test_last_data_field_wins_like_protobuf() -> None:
    raw = b"\x0a\x01a\x0a\x02bc"
    assert bytes(wire.decode(raw).data) == peer_pb2.GetChunkResponse.FromString(raw).data == b"bc"


def test_empty_message_is_an_empty_reply() -> None:
    reply = wire.decode(b"")
    assert bytes(reply.data) == b""
    assert reply.source_complete is False
    assert reply.bitfield == b""


@pytest.mark.parametrize(
    "raw",
    [
        b"\x0a\x05abc",  # length runs past the end
        b"\x0a",  # length missing
        b"\x10",  # varint missing
        b"\x0a" + b"\xff" * 11,  # overlong varint
        b"\x51\x00\x00",  # fixed64 cut short
        b"\x0b",  # group start (wire type 3)
        b"\x08\x01",  # data sent as a varint
        b"\x12\x01x",  # source_complete sent length-delimited
        b"\x02\x00",  # field number 0
    ],
)
def test_malformed_replies_raise(raw: bytes) -> None:
    with pytest.raises(wire.WireError):
        wire.decode(raw)


def test_every_peer_rpc_is_registered() -> None:
    from typing import Any, cast

    import grpc

    from shoal.peer.server import PeerServicer, add_to_server

    class Capture:
        handlers: list[grpc.GenericRpcHandler] = []

        def add_generic_rpc_handlers(self, handlers: tuple[grpc.GenericRpcHandler, ...]) -> None:
            self.handlers.extend(handlers)

    class Details(grpc.HandlerCallDetails):
        def __init__(self, method: str) -> None:
            self.method = method
            self.invocation_metadata = ()

    server = Capture()
    add_to_server(PeerServicer(cast(Any, None), cast(Any, None), cast(Any, None)), cast(Any, server))
    names = [m.name for m in peer_pb2.DESCRIPTOR.services_by_name["Peer"].methods]
    assert names, "the Peer service has rpcs"
    for name in names:
        assert server.handlers[0].service(Details(f"/{wire.SERVICE}/{name}")) is not None, name
