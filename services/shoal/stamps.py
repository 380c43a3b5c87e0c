"""Known-good copies: the size, mtime and ctime a store file had when its bytes were last verified.

Any write or chmod through any hard link moves ctime (which no user can set back), so a file whose
stamp still matches holds the verified bytes and is served without hashing; one whose stamp moved is
re-hashed chunk by chunk before a byte leaves. Timestamps are as fine as the filesystem keeps them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

Stamp = tuple[int, int, int]
STAMP_FILE = "verified"


def of_fd(fd: int) -> Stamp:
    """The stamp of an open file."""
    st = os.fstat(fd)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def of_path(path: Path) -> Stamp:
    """The stamp of a file by name."""
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def record(directory: Path) -> Stamp:
    """Write down the stamp of `directory/data`, just verified; return it."""
    stamp = of_path(directory / "data")
    tmp = directory / f".{STAMP_FILE}.tmp"
    tmp.write_text(" ".join(str(v) for v in stamp))
    os.replace(tmp, directory / STAMP_FILE)
    return stamp


def recorded(directory: Path) -> Stamp | None:
    """The stamp written at the last verification, if it still matches the data file (else None: suspect)."""
    try:
        size, mtime, ctime = (int(v) for v in (directory / STAMP_FILE).read_text().split())
        current = of_path(directory / "data")
    except (OSError, ValueError):
        return None
    return current if current == (size, mtime, ctime) else None
