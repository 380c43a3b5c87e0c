"""Random sample files and their digests for the demo, the benchmarks and the tests, in blocks (never all in memory)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

BLOCK = 4 * 1024 * 1024


def make_file(path: Path, size: int) -> str:
    """Write `size` random bytes to `path`; return their sha256 hex digest."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        left = size
        while left > 0:
            block = os.urandom(min(BLOCK, left))
            digest.update(block)
            out.write(block)
            left -= len(block)
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    """The sha256 hex digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as data:
        while block := data.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()
