"""Content addressing: file ids, manifests, chunking and verification (pure, no I/O but hashing)."""

from __future__ import annotations

import hashlib
import logging
import re
import struct
from collections.abc import Iterable

from shoal.v1 import common_pb2

logger = logging.getLogger(__name__)

MIN_CHUNK_SIZE = 16 * 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024
MAX_FILE_SIZE = 1 << 40  # 1 TiB
MAX_NAME_BYTES = 255
_ID_MAGIC = b"shoal/v1 file\x00"
FILE_ID = re.compile(r"[0-9a-f]{64}")  # the one canonical text form of a file id


class ContentError(ValueError):
    """Raised for malformed ids, names or manifests."""


def parse_file_id(text: str) -> str:
    """Return the canonical form of a file id (64 lowercase hex chars) or raise ContentError."""
    candidate = text.strip().lower()
    if not FILE_ID.fullmatch(candidate):
        raise ContentError(f"malformed file id {text[:80]!r}: expected 64 hex characters")
    return candidate


def check_chunk_size(chunk_size: int) -> int:
    """Accept chunk sizes between 16 KiB and 16 MiB."""
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ContentError(f"chunk size {chunk_size} out of range [{MIN_CHUNK_SIZE}, {MAX_CHUNK_SIZE}]")
    return chunk_size


def check_name(name: str) -> str:
    """Accept a single, plain path component: never '/', '\\', NUL, '.', '..' or over 255 bytes."""
    if not name or name in {".", ".."}:
        raise ContentError(f"invalid file name {name!r}")
    if "/" in name or "\\" in name or "\x00" in name:
        raise ContentError(f"invalid file name {name[:80]!r}: must not contain '/', '\\' or NUL")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name):
        raise ContentError(f"invalid file name {name[:80]!r}: must not contain control characters")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise ContentError(f"file name longer than {MAX_NAME_BYTES} bytes")
    return name


def chunk_count(size: int, chunk_size: int) -> int:
    """Number of chunks of a file (0 for an empty file)."""
    return -(-size // chunk_size)


def chunk_span(manifest: common_pb2.Manifest, index: int) -> tuple[int, int]:
    """Byte offset and length of chunk `index`."""
    offset = index * manifest.chunk_size
    return offset, min(manifest.chunk_size, manifest.size - offset)


def compute_file_id(size: int, chunk_size: int, file_sha256: bytes, chunk_hashes: Iterable[bytes]) -> str:
    """The id: sha256 over a magic, size, chunk size, whole-file hash and every chunk hash."""
    digest = hashlib.sha256(_ID_MAGIC)
    digest.update(struct.pack(">QI", size, chunk_size))
    digest.update(file_sha256)
    for chunk_hash in chunk_hashes:
        digest.update(chunk_hash)
    return digest.hexdigest()


def manifest_id(manifest: common_pb2.Manifest) -> str:
    """The file id a manifest describes."""
    return compute_file_id(manifest.size, manifest.chunk_size, manifest.file_sha256, manifest.chunk_sha256)


def validate_manifest(manifest: common_pb2.Manifest, file_id: str) -> None:
    """Check a manifest from anywhere: shape, bounds, and that it hashes to `file_id`."""
    check_name(manifest.name)
    check_chunk_size(manifest.chunk_size)
    if manifest.size > MAX_FILE_SIZE:
        raise ContentError(f"file size {manifest.size} exceeds {MAX_FILE_SIZE}")
    if len(manifest.chunk_sha256) != chunk_count(manifest.size, manifest.chunk_size):
        raise ContentError("manifest chunk count does not match its size")
    if len(manifest.file_sha256) != 32 or any(len(h) != 32 for h in manifest.chunk_sha256):
        raise ContentError("manifest hashes must be 32-byte sha256 digests")
    if manifest_id(manifest) != file_id:
        raise ContentError(f"manifest does not match file id {file_id}")


def chunk_ok(manifest: common_pb2.Manifest, index: int, data: bytes | memoryview) -> bool:
    """True when `data` is exactly chunk `index` of the manifest."""
    _, length = chunk_span(manifest, index)
    return len(data) == length and hashlib.sha256(data).digest() == manifest.chunk_sha256[index]


class ManifestBuilder:
    """Builds a manifest from a file's chunks fed in order (streaming; nothing kept but hashes)."""

    def __init__(self, name: str, chunk_size: int) -> None:
        self._name = check_name(name)
        self._chunk_size = check_chunk_size(chunk_size)
        self._whole = hashlib.sha256()
        self._chunks: list[bytes] = []
        self._size = 0

    @property
    def chunk_size(self) -> int:
        """The chunk size this builder splits by."""
        return self._chunk_size

    def add(self, chunk: bytes) -> None:
        """Feed the next chunk: full-size except possibly the last."""
        if self._size % self._chunk_size:
            raise ContentError("only the last chunk may be short")
        if not 0 < len(chunk) <= self._chunk_size:
            raise ContentError(f"chunk of {len(chunk)} bytes with chunk size {self._chunk_size}")
        self._whole.update(chunk)
        self._chunks.append(hashlib.sha256(chunk).digest())
        self._size += len(chunk)

    def finish(self) -> tuple[str, common_pb2.Manifest]:
        """Return (file id, manifest)."""
        manifest = common_pb2.Manifest(
            name=self._name,
            size=self._size,
            chunk_size=self._chunk_size,
            chunk_sha256=self._chunks,
            file_sha256=self._whole.digest(),
        )
        return manifest_id(manifest), manifest


class Bitfield:
    """Which chunks are held: bit i set (LSB-first in byte i // 8) when chunk i is verified."""

    def __init__(self, size: int, data: bytes | None = None) -> None:
        self.size = size
        nbytes = (size + 7) // 8
        if data is not None and len(data) != nbytes:
            raise ContentError(f"bitfield of {len(data)} bytes, expected {nbytes}")
        self._bits = bytearray(data) if data is not None else bytearray(nbytes)
        if size % 8 and self._bits:
            self._bits[-1] &= (1 << (size % 8)) - 1
        self._count = sum(bin(b).count("1") for b in self._bits)

    @classmethod
    def full(cls, size: int) -> Bitfield:
        """A bitfield with every chunk set."""
        bits = cls(size)
        for i in range(size):
            bits.set(i)
        return bits

    def __contains__(self, index: int) -> bool:
        return 0 <= index < self.size and bool(self._bits[index >> 3] & (1 << (index & 7)))

    def set(self, index: int) -> bool:
        """Set bit `index`; return True if it was not set before."""
        if not 0 <= index < self.size:
            raise IndexError(f"chunk {index} out of range [0, {self.size})")
        if index in self:
            return False
        self._bits[index >> 3] |= 1 << (index & 7)
        self._count += 1
        return True

    def clear(self, index: int) -> bool:
        """Clear bit `index`; return True if it was set before."""
        if index not in self:
            return False
        self._bits[index >> 3] &= ~(1 << (index & 7)) & 0xFF
        self._count -= 1
        return True

    def byte(self, index: int) -> tuple[int, int]:
        """The byte holding bit `index`: its position and value."""
        return index >> 3, self._bits[index >> 3]

    @property
    def count(self) -> int:
        """Number of set bits."""
        return self._count

    @property
    def complete(self) -> bool:
        """True when every bit is set."""
        return self._count == self.size

    def to_bytes(self) -> bytes:
        """Wire form."""
        return bytes(self._bits)
