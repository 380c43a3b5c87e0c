"""Known-good copies: re-verifying a complete file's chunks when its stamp moved (a mixin of Store).

A copy is known-good while its data keeps the stamp (stamps.py) recorded when its bytes were last verified.
"""

from __future__ import annotations

import logging
import os

from shoal import content, stamps
from shoal.entries import Entry, StoreError, explain

logger = logging.getLogger(__name__)


class Verification:
    """Whether a complete copy is still the one verified, and re-hashing it when asked."""

    @staticmethod
    def _still_good(entry: Entry, fd: int, index: int, data: bytes) -> bool:
        """One fstat when the copy is known-good; a chunk hash (once per chunk per change) when its stamp moved."""
        stamp = stamps.of_fd(fd)  # after the read: a write racing it moves ctime too
        if stamp == entry.verified:
            return True
        with entry.lock:
            if entry.checked_at != stamp:
                entry.checked_at, entry.checked = stamp, set()
            if index in entry.checked:
                return True
        if not content.chunk_ok(entry.manifest, index, data):
            return False
        with entry.lock:
            if entry.checked_at == stamp:
                entry.checked.add(index)
                if len(entry.checked) == entry.have.size:
                    entry.verified = stamp  # every chunk re-verified at this stamp: known-good again
        return True

    def known_good(self, entry: Entry) -> bool:
        """The complete file's data still has the stamp it had when last verified."""
        try:
            return (
                entry.complete
                and entry.verified is not None
                and stamps.of_path(entry.directory / "data") == entry.verified
            )
        except OSError:
            return False

    def verify(self, entry: Entry) -> list[int]:
        """Re-hash a complete file chunk by chunk; the bad chunks' indices (none: known-good from now)."""
        if not entry.complete:
            raise StoreError("file is not complete")
        try:
            before = stamps.of_path(entry.directory / "data")
            bad = []
            with open(entry.directory / "data", "rb") as data:
                for index in range(entry.have.size):
                    offset, length = content.chunk_span(entry.manifest, index)
                    if not content.chunk_ok(entry.manifest, index, os.pread(data.fileno(), length, offset)):
                        bad.append(index)
                if not entry.have.size and os.fstat(data.fileno()).st_size != entry.manifest.size:
                    bad.append(0)
            if not bad and stamps.of_path(entry.directory / "data") == before:
                entry.verified = stamps.record(entry.directory)
        except OSError as err:
            raise explain(err, f"verifying {entry.file_id}") from err
        return bad
