"""File ids, names, manifests, chunk checks and bitfields (pure, no I/O)."""

from __future__ import annotations

import hashlib
import struct

import pytest
from unit.manifests import CS, build, chunks_of, pattern

from shoal import content
from shoal.content import (
    MAX_CHUNK_SIZE,
    MAX_FILE_SIZE,
    MIN_CHUNK_SIZE,
    Bitfield,
    ContentError,
    ManifestBuilder,
    check_chunk_size,
    check_name,
    chunk_ok,
    compute_file_id,
    parse_file_id,
    validate_manifest,
)
from shoal.v1 import common_pb2

# ---- parse_file_id ------------------------------------------------------------------------------


def test_parse_file_id_accepts_lowercase_hex() -> None:
    file_id = "0123456789abcdef" * 4
    assert parse_file_id(file_id) == file_id


def test_parse_file_id_normalises_uppercase_and_whitespace() -> None:
    assert parse_file_id("ABCDEF0123456789" * 4) == "abcdef0123456789" * 4
    assert parse_file_id("  " + "A" * 64 + "\n") == "a" * 64


@pytest.mark.parametrize(
    "text",
    ["", "a" * 63, "a" * 65, "g" * 64, "z" + "a" * 63, "a" * 32 + " " + "a" * 31, "0x" + "a" * 62, "é" * 64],
)
def test_parse_file_id_rejects_malformed(text: str) -> None:
    with pytest.raises(ContentError, match="malformed file id"):
        parse_file_id(text)


def test_content_error_is_a_value_error() -> None:
    assert issubclass(ContentError, ValueError)


# ---- check_name ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    ["file.txt", "a", "...", ".hidden", "with space", "日本語.bin", "emoji-🐟.tar.gz", "x" * 255, "é" * 127],
)
def test_check_name_accepts_plain_components(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize(
    "name",
    ["", ".", "..", "a/b", "/abs", "dir/", "a\\b", "\\abs", "nul\x00byte", "x" * 256, "é" * 128, "🐟" * 64],
)
def test_check_name_rejects(name: str) -> None:
    with pytest.raises(ContentError):
        check_name(name)


def test_check_name_limit_is_in_utf8_bytes_not_characters() -> None:
    assert check_name("🐟" * 63 + "abc") == "🐟" * 63 + "abc"  # 252 + 3 = 255 bytes
    with pytest.raises(ContentError, match="255 bytes"):
        check_name("🐟" * 63 + "abcd")  # 256 bytes


# ---- check_chunk_size ---------------------------------------------------------------------------


@pytest.mark.parametrize("size", [MIN_CHUNK_SIZE, MIN_CHUNK_SIZE + 1, 1024 * 1024, MAX_CHUNK_SIZE])
def test_check_chunk_size_accepts_bounds(size: int) -> None:
    assert check_chunk_size(size) == size


@pytest.mark.parametrize("size", [0, -1, 1, MIN_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1, 1 << 32])
def test_check_chunk_size_rejects_out_of_range(size: int) -> None:
    with pytest.raises(ContentError, match="out of range"):
        check_chunk_size(size)


# ---- ids and ManifestBuilder --------------------------------------------------------------------


def test_known_vector_matches_independent_formula() -> None:
    """sha256(b"shoal/v1 file\\0" || u64be size || u32be chunk_size || file sha256 || chunk sha256s)."""
    data = b"shoal" * 10_000  # 50_000 bytes: 3 full 16 KiB chunks and a 848-byte tail
    chunks = chunks_of(data)
    assert [len(c) for c in chunks] == [CS, CS, CS, 50_000 - 3 * CS]
    expected = hashlib.sha256()
    expected.update(b"shoal/v1 file\x00")
    expected.update(struct.pack(">Q", 50_000))
    expected.update(struct.pack(">I", CS))
    expected.update(hashlib.sha256(data).digest())
    for chunk in chunks:
        expected.update(hashlib.sha256(chunk).digest())

    file_id, manifest = build(data, "vector.bin")
    assert file_id == expected.hexdigest()
    assert manifest.size == 50_000
    assert manifest.chunk_size == CS
    assert manifest.file_sha256 == hashlib.sha256(data).digest()
    assert list(manifest.chunk_sha256) == [hashlib.sha256(c).digest() for c in chunks]
    assert content.manifest_id(manifest) == file_id


def test_empty_file_known_vector() -> None:
    expected = hashlib.sha256(b"shoal/v1 file\x00" + struct.pack(">QI", 0, CS) + hashlib.sha256(b"").digest())
    file_id, manifest = build(b"")
    assert file_id == expected.hexdigest()
    assert manifest.size == 0
    assert len(manifest.chunk_sha256) == 0
    assert content.chunk_count(0, CS) == 0
    validate_manifest(manifest, file_id)


def test_same_content_same_id_regardless_of_name() -> None:
    data = pattern(3 * CS + 5)
    id_a, manifest_a = build(data, "a.bin")
    id_b, manifest_b = build(data, "completely different name")
    assert id_a == id_b
    assert manifest_a.name == "a.bin" and manifest_b.name == "completely different name"


def test_id_is_stable_across_builds() -> None:
    data = pattern(2 * CS + 7, seed=3)
    assert build(data)[0] == build(data)[0]


def test_different_chunk_size_gives_different_id() -> None:
    data = pattern(4 * CS, seed=1)
    assert build(data, chunk_size=CS)[0] != build(data, chunk_size=2 * CS)[0]


def test_single_byte_change_gives_different_id() -> None:
    data = bytearray(pattern(2 * CS, seed=2))
    original = build(bytes(data))[0]
    data[CS + 10] ^= 1
    assert build(bytes(data))[0] != original


def test_size_exact_multiple_of_chunk_size() -> None:
    data = pattern(3 * CS)
    file_id, manifest = build(data)
    assert len(manifest.chunk_sha256) == 3
    assert [content.chunk_span(manifest, i) for i in range(3)] == [(0, CS), (CS, CS), (2 * CS, CS)]
    validate_manifest(manifest, file_id)


def test_last_chunk_short() -> None:
    data = pattern(2 * CS + 1)
    file_id, manifest = build(data)
    assert len(manifest.chunk_sha256) == 3
    assert content.chunk_span(manifest, 2) == (2 * CS, 1)
    assert manifest.chunk_sha256[2] == hashlib.sha256(data[-1:]).digest()
    validate_manifest(manifest, file_id)


def test_file_smaller_than_one_chunk() -> None:
    file_id, manifest = build(b"tiny")
    assert len(manifest.chunk_sha256) == 1
    assert content.chunk_span(manifest, 0) == (0, 4)
    validate_manifest(manifest, file_id)


def test_builder_rejects_chunk_after_short_chunk() -> None:
    builder = ManifestBuilder("f", CS)
    builder.add(b"short")
    with pytest.raises(ContentError, match="only the last chunk"):
        builder.add(b"more")


def test_builder_validates_name_and_chunk_size() -> None:
    with pytest.raises(ContentError):
        ManifestBuilder("a/b", CS)
    with pytest.raises(ContentError):
        ManifestBuilder("ok", MIN_CHUNK_SIZE - 1)
    assert ManifestBuilder("ok", CS).chunk_size == CS


def test_compute_file_id_accepts_any_iterable_of_hashes() -> None:
    hashes = [hashlib.sha256(b"x").digest(), hashlib.sha256(b"y").digest()]
    whole = hashlib.sha256(b"xy").digest()
    assert compute_file_id(2, CS, whole, iter(hashes)) == compute_file_id(2, CS, whole, hashes)


# ---- validate_manifest --------------------------------------------------------------------------


@pytest.fixture
def good() -> tuple[str, common_pb2.Manifest]:
    return build(pattern(2 * CS + 100, seed=9), "good.bin")


def copy(manifest: common_pb2.Manifest) -> common_pb2.Manifest:
    clone = common_pb2.Manifest()
    clone.CopyFrom(manifest)
    return clone


def test_validate_manifest_accepts_good(good: tuple[str, common_pb2.Manifest]) -> None:
    file_id, manifest = good
    validate_manifest(manifest, file_id)


def test_validate_manifest_ignores_name_for_id(good: tuple[str, common_pb2.Manifest]) -> None:
    file_id, manifest = good
    renamed = copy(manifest)
    renamed.name = "other.bin"
    validate_manifest(renamed, file_id)
    assert content.manifest_id(renamed) == content.manifest_id(manifest) == file_id


def test_validate_manifest_rejects_wrong_id(good: tuple[str, common_pb2.Manifest]) -> None:
    _, manifest = good
    with pytest.raises(ContentError, match="does not match file id"):
        validate_manifest(manifest, "0" * 64)


def test_validate_manifest_rejects_tampered_chunk_hash(good: tuple[str, common_pb2.Manifest]) -> None:
    file_id, manifest = good
    bad = copy(manifest)
    flipped = bytearray(bad.chunk_sha256[1])
    flipped[0] ^= 0xFF
    bad.chunk_sha256[1] = bytes(flipped)
    with pytest.raises(ContentError, match="does not match file id"):
        validate_manifest(bad, file_id)


def test_validate_manifest_rejects_tampered_file_hash(good: tuple[str, common_pb2.Manifest]) -> None:
    file_id, manifest = good
    bad = copy(manifest)
    bad.file_sha256 = hashlib.sha256(b"something else").digest()
    with pytest.raises(ContentError, match="does not match file id"):
        validate_manifest(bad, file_id)


def test_validate_manifest_rejects_wrong_chunk_count(good: tuple[str, common_pb2.Manifest]) -> None:
    file_id, manifest = good
    fewer = copy(manifest)
    del fewer.chunk_sha256[-1]
    with pytest.raises(ContentError, match="chunk count"):
        validate_manifest(fewer, file_id)
    more = copy(manifest)
    more.chunk_sha256.append(hashlib.sha256(b"extra").digest())
    with pytest.raises(ContentError, match="chunk count"):
        validate_manifest(more, file_id)


def test_validate_manifest_rejects_absurd_size() -> None:
    size = MAX_FILE_SIZE + 1
    nchunks = content.chunk_count(size, MAX_CHUNK_SIZE)
    hashes = [bytes(32)] * nchunks
    manifest = common_pb2.Manifest(
        name="huge", size=size, chunk_size=MAX_CHUNK_SIZE, chunk_sha256=hashes, file_sha256=bytes(32)
    )
    file_id = content.manifest_id(manifest)  # self-consistent: only the size bound can reject it
    with pytest.raises(ContentError, match="exceeds"):
        validate_manifest(manifest, file_id)


def test_validate_manifest_rejects_absurd_size_before_counting_chunks() -> None:
    manifest = common_pb2.Manifest(name="huge", size=2**64 - 1, chunk_size=CS, file_sha256=bytes(32))
    with pytest.raises(ContentError, match="exceeds"):
        validate_manifest(manifest, "0" * 64)


@pytest.mark.parametrize("name", ["", "..", "../etc/passwd", "a/b", "a\\b", "nul\x00"])
def test_validate_manifest_rejects_bad_name(good: tuple[str, common_pb2.Manifest], name: str) -> None:
    file_id, manifest = good
    bad = copy(manifest)
    bad.name = name
    with pytest.raises(ContentError, match="name"):
        validate_manifest(bad, file_id)


@pytest.mark.parametrize("chunk_size", [0, MIN_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1])
def test_validate_manifest_rejects_bad_chunk_size(chunk_size: int) -> None:
    manifest = common_pb2.Manifest(name="f", size=0, chunk_size=chunk_size, file_sha256=hashlib.sha256(b"").digest())
    file_id = content.manifest_id(manifest)
    with pytest.raises(ContentError, match="chunk size"):
        validate_manifest(manifest, file_id)


def test_validate_manifest_rejects_31_byte_chunk_hash() -> None:
    manifest = common_pb2.Manifest(
        name="f", size=10, chunk_size=CS, chunk_sha256=[bytes(31)], file_sha256=hashlib.sha256(b"x").digest()
    )
    file_id = content.manifest_id(manifest)  # consistent id, so only the length check can reject it
    with pytest.raises(ContentError, match="32-byte"):
        validate_manifest(manifest, file_id)


def test_validate_manifest_rejects_31_byte_file_hash() -> None:
    manifest = common_pb2.Manifest(name="f", size=10, chunk_size=CS, chunk_sha256=[bytes(32)], file_sha256=bytes(31))
    file_id = content.manifest_id(manifest)
    with pytest.raises(ContentError, match="32-byte"):
        validate_manifest(manifest, file_id)


# ---- chunk_ok -----------------------------------------------------------------------------------


def test_chunk_ok() -> None:
    data = pattern(2 * CS + 10, seed=5)
    _, manifest = build(data)
    assert chunk_ok(manifest, 0, data[:CS])
    assert chunk_ok(manifest, 1, data[CS : 2 * CS])
    assert chunk_ok(manifest, 2, data[2 * CS :])
    assert not chunk_ok(manifest, 0, data[CS : 2 * CS])  # right length, wrong chunk
    assert not chunk_ok(manifest, 2, data[2 * CS :] + b"\x00")  # too long
    assert not chunk_ok(manifest, 0, data[: CS - 1])  # too short
    corrupted = bytearray(data[:CS])
    corrupted[-1] ^= 1
    assert not chunk_ok(manifest, 0, bytes(corrupted))


# ---- Bitfield -----------------------------------------------------------------------------------


def test_bitfield_set_clear_count() -> None:
    bits = Bitfield(10)
    assert bits.count == 0 and not bits.complete
    assert bits.set(3) is True
    assert bits.set(3) is False
    assert 3 in bits and 4 not in bits
    assert bits.count == 1
    assert bits.clear(3) is True
    assert bits.clear(3) is False
    assert bits.count == 0


def test_bitfield_complete() -> None:
    bits = Bitfield(10)
    assert not bits.complete and bits.count == 0
    for i in range(10):
        bits.set(i)
    assert bits.complete
    bits.clear(9)
    assert not bits.complete
    assert 9 not in bits and bits.count == 9


def test_bitfield_wire_form_is_lsb_first() -> None:
    bits = Bitfield(16)
    bits.set(0)
    bits.set(9)
    bits.set(15)
    assert bits.to_bytes() == bytes([0b0000_0001, 0b1000_0010])
    assert bits.byte(9) == (1, 0b1000_0010)


def test_bitfield_round_trip() -> None:
    bits = Bitfield(21)
    for i in (0, 1, 7, 8, 13, 20):
        bits.set(i)
    again = Bitfield(21, bits.to_bytes())
    assert again.to_bytes() == bits.to_bytes()
    assert again.count == 6
    assert [i for i in range(21) if i in again] == [0, 1, 7, 8, 13, 20]


def test_bitfield_masks_padding_bits() -> None:
    bits = Bitfield(5, b"\xff")
    assert bits.count == 5
    assert bits.complete
    assert bits.to_bytes() == b"\x1f"
    assert 5 not in bits and 7 not in bits


def test_bitfield_multiple_of_eight_keeps_last_byte() -> None:
    bits = Bitfield(16, b"\xff\xff")
    assert bits.count == 16 and bits.complete


@pytest.mark.parametrize(("size", "data"), [(5, b""), (5, b"\x00\x00"), (8, b"\x00\x00"), (9, b"\x00"), (0, b"\x00")])
def test_bitfield_rejects_wrong_length(size: int, data: bytes) -> None:
    with pytest.raises(ContentError, match="bitfield"):
        Bitfield(size, data)


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 100])
def test_bitfield_full(size: int) -> None:
    bits = Bitfield.full(size)
    assert bits.complete
    assert bits.count == size
    assert all(i in bits for i in range(size))
    assert len(bits.to_bytes()) == (size + 7) // 8
    assert Bitfield(size, bits.to_bytes()).complete


def test_bitfield_empty() -> None:
    bits = Bitfield(0)
    assert bits.complete and bits.count == 0 and bits.to_bytes() == b""
    assert 0 not in bits


def test_bitfield_contains_out_of_range_is_false() -> None:
    bits = Bitfield.full(5)
    assert -1 not in bits and 5 not in bits and 100 not in bits


@pytest.mark.parametrize("index", [5, 7, -1])
def test_bitfield_set_out_of_range_is_rejected(index: int) -> None:
    bits = Bitfield(5)
    with pytest.raises((ContentError, IndexError)):
        bits.set(index)
    assert bits.count == 0
    assert bits.to_bytes() == b"\x00"


@pytest.mark.parametrize("chunk", [b"x" * (CS + 1), b""])
def test_builder_rejects_oversize_or_empty_chunk(chunk: bytes) -> None:
    builder = ManifestBuilder("f", CS)
    with pytest.raises(ContentError):
        builder.add(chunk)
