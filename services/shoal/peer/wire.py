"""GetChunk replies on the wire without copying the chunk: byte-for-byte a peer_pb2.GetChunkResponse.

Protobuf writes a bytes field as tag, length, payload, and a parser takes fields in any order. So
the serving side sends its small fields serialized by protobuf followed by one data field it frames
itself (one copy of the chunk instead of three), and the fetching side reads the fields in place and
hands out the chunk as a memoryview into the received buffer (no copy at all). Any standard
protobuf client or server interoperates: the tests check both directions against the generated code.
"""

from __future__ import annotations

from dataclasses import dataclass

from shoal.v1 import peer_pb2

SERVICE = peer_pb2.DESCRIPTOR.services_by_name["Peer"].full_name
GET_CHUNK = f"/{SERVICE}/GetChunk"

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_DATA, _SOURCE_COMPLETE, _BITFIELD = 1, 2, 3
_KIND_OF = {_DATA: _LEN, _SOURCE_COMPLETE: _VARINT, _BITFIELD: _LEN}  # wire type of each known field
_DATA_TAG = bytes([_DATA << 3 | _LEN])


class WireError(ValueError):
    """The bytes are not a well-formed GetChunkResponse."""


@dataclass(frozen=True)
class ChunkReply:
    """The fields of a GetChunkResponse, with `data` possibly a view into the received message."""

    data: bytes | memoryview
    source_complete: bool = False
    bitfield: bytes = b""


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode(reply: ChunkReply) -> bytes:
    """Serialize a reply exactly as protobuf would parse it (the data field goes last)."""
    head = peer_pb2.GetChunkResponse(source_complete=reply.source_complete, bitfield=reply.bitfield)
    return b"".join((head.SerializeToString(), _DATA_TAG, _varint(len(reply.data)), reply.data))


def _read_varint(raw: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(raw) or shift > 63:
            raise WireError("truncated or overlong varint")
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def decode(raw: bytes) -> ChunkReply:
    """Parse a GetChunkResponse from any conforming encoder; unknown fields are skipped."""
    data: bytes | memoryview = b""
    complete = False
    bitfield = b""
    view = memoryview(raw)
    pos = 0
    while pos < len(raw):
        key, pos = _read_varint(raw, pos)
        number, kind = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if _KIND_OF.get(number, kind) != kind:
            raise WireError(f"field {number} has wire type {kind}")
        if kind == _VARINT:
            value, pos = _read_varint(raw, pos)
            if number == _SOURCE_COMPLETE:
                complete = value != 0
        elif kind == _LEN:
            length, pos = _read_varint(raw, pos)
            end = pos + length
            if end > len(raw):
                raise WireError("length-delimited field runs past the end")
            if number == _DATA:
                data = view[pos:end]
            elif number == _BITFIELD:
                bitfield = bytes(view[pos:end])
            pos = end
        elif kind in (_I64, _I32):
            pos += 8 if kind == _I64 else 4
            if pos > len(raw):
                raise WireError("fixed-width field runs past the end")
        else:
            raise WireError(f"unsupported wire type {kind}")
    return ChunkReply(data=data, source_complete=complete, bitfield=bitfield)
