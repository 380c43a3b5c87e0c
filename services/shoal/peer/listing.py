"""How the control API shows local files (ls, pin) and names a download's output inside a directory."""

from __future__ import annotations

import logging
from collections.abc import Collection
from pathlib import Path

from shoal.store import Entry, StoreError
from shoal.v1 import control_pb2

logger = logging.getLogger(__name__)


class OutputExists(StoreError):
    """The output file exists and the user did not ask to overwrite it (dfget refuses the same way)."""


def state_of(entry: Entry, active: Collection[str]) -> control_pb2.LocalFileState.ValueType:
    """Complete, downloading (a download runs now), stopped (the user stopped it) or partial."""
    if entry.complete:
        return control_pb2.LOCAL_FILE_STATE_COMPLETE
    if entry.file_id in active:
        return control_pb2.LOCAL_FILE_STATE_DOWNLOADING
    if entry.stopped:
        return control_pb2.LOCAL_FILE_STATE_STOPPED
    return control_pb2.LOCAL_FILE_STATE_PARTIAL


def local_file(entry: Entry, active: Collection[str]) -> control_pb2.LocalFile:
    """One `ls` row: size, pin, last use, state and names."""
    return control_pb2.LocalFile(
        file=entry.info,
        complete=entry.complete,
        chunks_done=entry.have.count,
        chunks_total=entry.have.size,
        pinned=entry.pinned,
        last_used_unix=entry.last_used,
        state=state_of(entry, active),
        held_bytes=entry.held_bytes,
        aliases=entry.aliases,
    )


def named_output(directory: Path, name: str, *, overwrite: bool) -> Path:
    """DIR/<name> for a download into a directory; OutputExists unless overwrite, StoreError for a bad name."""
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise StoreError(f"the file's name {name!r} cannot be a file name here; ask for an output path instead")
    path = directory / name
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise OutputExists(f"output exists: {path} (pass --overwrite to replace it)")
    return path
