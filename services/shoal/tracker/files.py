"""The tracker's file index: who holds each file id, and the name and size elected from what they report."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Holding:
    """One file a peer announces, completely or in part."""

    file_id: str
    name: str
    size: int
    complete: bool


@dataclass(frozen=True, slots=True)
class FileMeta:
    """A file's name and size as its current holders report them: the id covers the content, not the name."""

    file_id: str
    name: str
    size: int


@dataclass(slots=True)
class FileEntry:
    """One file id: its elected name and size, and its holders, oldest first."""

    meta: FileMeta
    folded_name: str
    holders: dict[str, Holding] = field(default_factory=dict)  # peer_id -> its holding, oldest holder first
    votes: dict[tuple[str, int], int] = field(default_factory=dict)  # (name, size) -> holders reporting it


class FileIndex:
    """File id -> holders and elected name; knows nothing of leases (the registry says who is live).

    Name rule: a file's name and size are those most of its holders report; on a tie, those of the holder that
    has held it longest. They are recomputed whenever a holder is added, changes its report or is removed.
    """

    def __init__(self) -> None:
        self.entries: dict[str, FileEntry] = {}
        self._order: list[str] | None = None  # file ids sorted by (name, id); None when stale

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, file_id: object) -> bool:
        return file_id in self.entries

    def get(self, file_id: str) -> FileEntry | None:
        """The entry of a file id, or None."""
        return self.entries.get(file_id)

    def add(self, holding: Holding, peer_id: str) -> None:
        """Record (or replace) what peer_id reports for holding.file_id."""
        entry = self.entries.get(holding.file_id)
        if entry is None:
            meta = FileMeta(holding.file_id, holding.name, holding.size)
            entry = self.entries[holding.file_id] = FileEntry(meta, holding.name.casefold())
            self._order = None
        before = entry.holders.get(peer_id)
        if before is not None:
            _unvote(entry, before)
        entry.holders[peer_id] = holding  # a holder changing its report keeps its place (its seniority)
        key = (holding.name, holding.size)
        entry.votes[key] = entry.votes.get(key, 0) + 1
        self._elect(entry)

    def remove(self, file_id: str, peer_id: str) -> None:
        """Forget peer_id as a holder of file_id; the file goes with its last holder."""
        entry = self.entries[file_id]
        _unvote(entry, entry.holders.pop(peer_id))
        if not entry.holders:
            del self.entries[file_id]
            self._order = None
        else:
            self._elect(entry)

    def sorted_ids(self) -> list[str]:
        """File ids sorted by (name, id), rebuilt only after a change of names or ids."""
        if self._order is None:
            self._order = sorted(self.entries, key=lambda fid: (self.entries[fid].meta.name, fid))
        return self._order

    def _elect(self, entry: FileEntry) -> None:
        best = max(entry.votes.values())
        tied = {key for key, count in entry.votes.items() if count == best}
        if len(tied) == 1:
            name, size = next(iter(tied))
        else:
            name, size = next((h.name, h.size) for h in entry.holders.values() if (h.name, h.size) in tied)
        if (name, size) != (entry.meta.name, entry.meta.size):
            entry.meta = FileMeta(entry.meta.file_id, name, size)
            entry.folded_name = name.casefold()
            self._order = None


def _unvote(entry: FileEntry, holding: Holding) -> None:
    key = (holding.name, holding.size)
    left = entry.votes[key] - 1
    if left:
        entry.votes[key] = left
    else:
        del entry.votes[key]
