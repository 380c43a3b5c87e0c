"""What the store holds: its entries (complete or partial), its error types, and the paths it accepts."""

from __future__ import annotations

import errno
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

from shoal import content, ingest, stamps
from shoal.v1 import common_pb2

logger = logging.getLogger(__name__)


class StoreError(Exception):
    """A store operation failed in a way the user should be told about."""


class CorruptChunk(StoreError):
    """Bytes on disk no longer match the manifest."""


class NotHeld(StoreError):
    """The file (or, for cancel, the download) is not on this peer."""


class SourceChanged(StoreError):
    """A file being published changed while it was read; nothing was published."""


class DiskFull(StoreError):
    """The data dir's (or the output's) filesystem has no space left."""


@dataclass
class Entry:
    """One file in the store, complete or partial."""

    file_id: str
    manifest: common_pb2.Manifest
    directory: Path
    have: content.Bitfield
    output: str = ""
    fd: int = -1
    have_fd: int = -1
    unsynced: int = 0  # bytes written since the data file was last flushed
    lock: threading.Lock = field(default_factory=threading.Lock)
    # One writer at a time: concurrent buffered writes to one file spin on its inode lock in the kernel.
    write_lock: threading.Lock = field(default_factory=threading.Lock)
    last_used: float = 0.0  # unix time: publish, download completion, export, chunk served
    pinned: bool = False  # never evicted
    stopped: bool = False  # a partial download the user stopped: not resumed at start
    aliases: list[str] = field(default_factory=list)  # names besides manifest.name it was published under
    readers: int = 0  # chunk reads in flight; a retired entry is deleted when the last one ends
    retired: bool = False  # removed from the store; its files go once nobody reads them
    verified: stamps.Stamp | None = None  # the data file's stamp when its bytes were last verified (complete only)
    checked: set[int] = field(default_factory=set)  # chunks re-verified since the stamp moved to `checked_at`
    checked_at: stamps.Stamp | None = None

    @property
    def names(self) -> list[str]:
        """Every name it is held under, the manifest's first."""
        return [self.manifest.name, *self.aliases]

    @property
    def held_bytes(self) -> int:
        """Bytes of verified data: the size once complete, the chunks written so far while partial."""
        if self.complete or self.have.complete:
            return self.manifest.size
        held = self.have.count * self.manifest.chunk_size
        last = self.have.size - 1
        if last in self.have:
            held -= self.manifest.chunk_size - content.chunk_span(self.manifest, last)[1]
        return held

    @property
    def complete(self) -> bool:
        """True once the file is verified and under files/."""
        return self.directory.parent.name == "files"

    @property
    def info(self) -> common_pb2.FileInfo:
        """Id, name and size."""
        return common_pb2.FileInfo(file_id=self.file_id, name=self.manifest.name, size=self.manifest.size)


@dataclass(frozen=True)
class Placed:
    """What put did: the entry, how the bytes got there, and whether the content was already held."""

    entry: Entry
    method: ingest.Method  # move, reflink, link (the source is now read-only) or copy
    held_as: str = ""  # when already held: the name it was held under (nothing new stored)
    added_name: bool = False  # when already held: the new name was added to its aliases


def explain(err: OSError, what: str) -> StoreError:
    if err.errno == errno.ENOSPC:
        return DiskFull(f"disk full while {what}")
    return StoreError(f"{what} failed: {err.strerror or err}")


def check_source(source: Path) -> None:
    """A path we may publish: an existing regular file (never a FIFO or device, which could block)."""
    if not source.exists():
        raise StoreError(f"no such file: {source}")
    if not source.is_file():
        raise StoreError(f"not a regular file: {source}")


def check_output(output: Path) -> None:
    """A path we may place a download at: its directory exists and nothing but a regular file is there."""
    if not output.parent.is_dir():
        raise StoreError(f"output directory does not exist: {output.parent}")
    if output.is_dir():
        raise StoreError(f"output is a directory: {output}")
    if output.is_symlink() or (output.exists() and not output.is_file()):
        raise StoreError(f"output exists and is not a regular file: {output}")
