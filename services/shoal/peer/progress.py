"""What a download reports to its clients: verified bytes so far, and where its bytes came from."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from shoal import content
from shoal.store import Entry

logger = logging.getLogger(__name__)


@dataclass
class Summary:
    """Where one download's bytes came from."""

    from_complete_bytes: int = 0
    from_partial_bytes: int = 0
    peers: set[str] = field(default_factory=set)
    resumed_chunks: int = 0
    rejected_chunks: int = 0
    banned_peers: int = 0
    seconds: float = 0.0
    transfer_seconds: float = 0.0  # from the first request to the last chunk verified: the rate's denominator

    def received(self, source: str, nbytes: int, *, complete: bool) -> None:
        """A verified chunk from `source` (a complete holder or one still downloading)."""
        if complete:
            self.from_complete_bytes += nbytes
        else:
            self.from_partial_bytes += nbytes
        self.peers.add(source)


def verified_bytes(entry: Entry | None) -> int:
    """Bytes of the file verified so far (the last chunk may be short)."""
    if entry is None:
        return 0
    manifest = entry.manifest
    if entry.have.complete:
        return int(manifest.size)
    full = entry.have.count * manifest.chunk_size
    last = len(manifest.chunk_sha256) - 1
    if last in entry.have:
        full -= manifest.chunk_size - content.chunk_span(manifest, last)[1]
    return int(full)
