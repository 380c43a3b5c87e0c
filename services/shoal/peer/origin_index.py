"""Which origin URL version each held file came from: URL key K -> (display URL, file id R, size), on disk.

Kept in DATA_DIR/origins/origins.json so a restarted peer still answers GetManifest(K) and announces K.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

INDEX = "origins.json"


class OriginIndex:
    """K -> (display URL, R, size); written whole on each change (a few entries per peer)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._entries: dict[str, tuple[str, str, int]] = {}

    def load(self) -> None:
        """Read it (blocking); a missing or damaged file is an empty index."""
        self.root.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError, ValueError, TypeError, IndexError):
            raw = json.loads((self.root / INDEX).read_text())
            self._entries = {str(k): (str(v[0]), str(v[1]), int(v[2])) for k, v in raw.items()}

    def add(self, key: str, url: str, file_id: str, size: int) -> None:
        """Remember that K resolved to R (blocking write, small)."""
        self._entries[key] = (url, file_id, size)
        tmp = self.root / (INDEX + ".tmp")
        tmp.write_text(json.dumps({k: list(v) for k, v in self._entries.items()}))
        os.replace(tmp, self.root / INDEX)

    def get(self, key: str) -> tuple[str, str, int] | None:
        """(display URL, R, size) for K."""
        return self._entries.get(key)

    def items(self) -> Iterator[tuple[str, tuple[str, str, int]]]:
        """Every K and its entry."""
        return iter(list(self._entries.items()))

    def url_of(self, file_id: str) -> str:
        """The origin URL a file came from, or ''."""
        return next((url for url, fid, _ in self._entries.values() if fid == file_id), "")

    def key_of(self, file_id: str) -> str:
        """The URL key a file resolved from, or ''."""
        return next((key for key, (_, fid, _) in self._entries.items() if fid == file_id), "")
