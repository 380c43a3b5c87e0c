"""Fuzz the peer wire decoder and the manifest checks: typed errors only, and agreement with protobuf."""

from __future__ import annotations

import hashlib

from google.protobuf.message import DecodeError
from hypothesis import assume, given
from hypothesis import strategies as st

from shoal import content
from shoal.peer import wire
from shoal.v1 import common_pb2, peer_pb2


@given(raw=st.binary(max_size=4096))
def test_decode_gives_a_reply_or_wire_error(raw: bytes) -> None:
    try:
        reply = wire.decode(raw)
    except wire.WireError:
        return
    assert len(reply.data) <= len(raw) and len(reply.bitfield) <= len(raw)
    try:
        parsed = peer_pb2.GetChunkResponse.FromString(raw)
    except DecodeError:
        return
    assert bytes(reply.data) == parsed.data
    assert reply.bitfield == parsed.bitfield


@given(
    data=st.binary(max_size=2048), complete=st.booleans(), bitfield=st.binary(max_size=64), tail=st.binary(max_size=8)
)
def test_decode_reads_what_encode_writes_even_with_a_prefix(
    data: bytes, complete: bool, bitfield: bytes, tail: bytes
) -> None:
    reply = wire.decode(wire.encode(wire.ChunkReply(data=data, source_complete=complete, bitfield=bitfield)))
    assert (bytes(reply.data), reply.source_complete, reply.bitfield) == (data, complete, bitfield)
    try:
        wire.decode(tail + wire.encode(wire.ChunkReply(data=data)))
    except wire.WireError:
        pass


@given(text=st.one_of(st.text(max_size=80), st.text(alphabet="0123456789abcdefABCDEF \t\n", max_size=70)))
def test_parse_file_id_is_canonical_or_content_error(text: str) -> None:
    try:
        file_id = content.parse_file_id(text)
    except content.ContentError:
        return
    assert content.FILE_ID.fullmatch(file_id) and file_id == text.strip().lower()


manifests = st.builds(
    common_pb2.Manifest,
    name=st.one_of(st.text(max_size=300), st.sampled_from(["", ".", "..", "a/b", "ok.bin"])),
    size=st.one_of(st.integers(min_value=0, max_value=2**64 - 1), st.integers(min_value=0, max_value=100_000)),
    chunk_size=st.one_of(st.integers(min_value=0, max_value=2**32 - 1), st.just(content.MIN_CHUNK_SIZE)),
    chunk_sha256=st.lists(st.binary(min_size=0, max_size=40), max_size=8),
    file_sha256=st.binary(max_size=40),
)


HEX_IDS = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


@given(manifest=manifests, file_id=st.one_of(st.just(""), HEX_IDS))
def test_validate_manifest_accepts_or_raises_content_error(manifest: common_pb2.Manifest, file_id: str) -> None:
    try:
        content.validate_manifest(manifest, file_id)
    except content.ContentError:
        return
    assert content.manifest_id(manifest) == file_id


@given(data=st.binary(min_size=0, max_size=3 * content.MIN_CHUNK_SIZE), flip=st.integers(min_value=0, max_value=4))
def test_a_real_manifest_passes_and_any_change_to_its_hashes_fails(data: bytes, flip: int) -> None:
    builder = content.ManifestBuilder("f.bin", content.MIN_CHUNK_SIZE)
    for start in range(0, len(data), content.MIN_CHUNK_SIZE):
        builder.add(data[start : start + content.MIN_CHUNK_SIZE])
    file_id, manifest = builder.finish()
    content.validate_manifest(manifest, file_id)
    assume(flip < len(manifest.chunk_sha256) or flip == 4)
    if flip == 4:
        manifest.file_sha256 = hashlib.sha256(manifest.file_sha256).digest()
    else:
        manifest.chunk_sha256[flip] = hashlib.sha256(manifest.chunk_sha256[flip]).digest()
    try:
        content.validate_manifest(manifest, file_id)
    except content.ContentError:
        return
    raise AssertionError("a changed manifest still matched its id")
