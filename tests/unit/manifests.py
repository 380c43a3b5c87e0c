"""Test data for the pure-content and store tests: deterministic bytes and their manifests."""

from __future__ import annotations

import hashlib

from shoal.content import MIN_CHUNK_SIZE, ManifestBuilder
from shoal.v1 import common_pb2

CS = MIN_CHUNK_SIZE  # 16 KiB: the smallest legal chunk keeps the tests fast


def pattern(size: int, seed: int = 0) -> bytes:
    """Deterministic bytes that differ from chunk to chunk."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def build(data: bytes, name: str = "f.bin", chunk_size: int = CS) -> tuple[str, common_pb2.Manifest]:
    """Run data through a ManifestBuilder the way Store.publish does."""
    builder = ManifestBuilder(name, chunk_size)
    for offset in range(0, len(data), chunk_size):
        builder.add(data[offset : offset + chunk_size])
    return builder.finish()


def chunks_of(data: bytes, chunk_size: int = CS) -> list[bytes]:
    """The chunks of `data`, in order."""
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)]
