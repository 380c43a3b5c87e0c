"""Part files of origin imports: the verified-by-position prefix of one origin version, kept across restarts.

Whoever imports a URL version (from the origin) or mirrors it (from peers that hold a longer prefix) writes
it strictly in order, so the part file's length says what is done and a restart resumes there; every byte
of it is read from the origin at most once per peer.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)


class PartFile:
    """One URL version's bytes so far, written in order, hashed as they come (for the digest check)."""

    def __init__(self, path: Path, size: int, chunk_size: int) -> None:
        self.path = path
        self.size = size
        self.chunk_size = chunk_size
        self.digest = hashlib.sha256()
        self.length = 0
        self._fd = -1

    def open(self) -> int:
        """Open (or create) it, keep its whole chunks and hash them; blocking. Returns the length kept."""
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        kept = os.fstat(self._fd).st_size
        if kept < self.size:
            kept = kept // self.chunk_size * self.chunk_size
        kept = min(kept, self.size)
        os.ftruncate(self._fd, kept)
        offset = 0
        while offset < kept:
            block = os.pread(self._fd, min(1 << 20, kept - offset), offset)
            self.digest.update(block)
            offset += len(block)
        self.length = kept
        return kept

    @property
    def next_index(self) -> int:
        """The chunk to write next."""
        return self.length // self.chunk_size

    @property
    def done(self) -> bool:
        """Every byte is here."""
        return self.length >= self.size

    def span(self, index: int) -> tuple[int, int]:
        """Offset and length of chunk `index`."""
        offset = index * self.chunk_size
        return offset, min(self.chunk_size, self.size - offset)

    def append(self, data: bytes) -> None:
        """Write the next chunk; blocking."""
        offset, length = self.span(self.next_index)
        if len(data) != length:
            raise ValueError(f"chunk {self.next_index} is {len(data)} bytes, expected {length}")
        os.pwrite(self._fd, data, offset)
        self.digest.update(data)
        self.length = offset + length

    def read(self, index: int) -> bytes | None:
        """Chunk `index` if it is written; blocking."""
        offset, length = self.span(index)
        if length <= 0 or offset + length > self.length or self._fd < 0:
            return None
        return os.pread(self._fd, length, offset)

    def close(self) -> None:
        """Close the descriptor (the file stays for resume)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def discard(self) -> None:
        """Close and delete it (a changed origin, a digest mismatch)."""
        self.close()
        self.path.unlink(missing_ok=True)
