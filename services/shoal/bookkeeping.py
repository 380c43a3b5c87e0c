"""The store's bookkeeping: last use, pins, stopped downloads, removal and eviction (a mixin of Store).

Markers live beside each entry's data (docs/storage.md, "On disk"); every method blocks.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import uuid
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path

from shoal.entries import Entry, NotHeld, explain

logger = logging.getLogger(__name__)


class Bookkeeping:
    """Last use, pins, stop markers and removal over the store's entries."""

    _lock: threading.Lock
    _entries: dict[str, Entry]
    _dirty: set[str]
    _clock: Callable[[], float]
    _tmp: Path

    @abstractmethod
    def _count(self, delta: int) -> None: ...

    @abstractmethod
    def _write_small(self, path: Path, data: bytes) -> None: ...

    @abstractmethod
    def entries(self) -> list[Entry]: ...

    def _load_bookkeeping(self, entry: Entry) -> None:
        """Read an entry's markers; a missing or unreadable last use falls back to its manifest's mtime."""
        directory = entry.directory
        try:
            entry.last_used = float((directory / "used").read_text())
        except (OSError, ValueError):
            entry.last_used = (directory / "manifest.pb").stat().st_mtime
        entry.pinned = (directory / "pinned").exists()
        entry.stopped = not entry.complete and (directory / "stopped").exists()
        names = directory / "names"
        if names.exists():
            entry.aliases = [n for n in names.read_text().splitlines() if n and n != entry.manifest.name]

    def touch(self, entry: Entry) -> None:
        """Mark a file used now (in memory; flush_usage writes it down)."""
        entry.last_used = self._clock()
        self._dirty.add(entry.file_id)

    def flush_usage(self) -> int:
        """Persist the last-use times changed since the previous flush; how many were written."""
        written = 0
        while self._dirty:
            file_id = self._dirty.pop()
            with self._lock:
                entry = self._entries.get(file_id)
                if entry is None:
                    continue
                try:
                    self._write_small(entry.directory / "used", repr(entry.last_used).encode())
                except OSError as err:  # a full disk must not stop the peer; the time is only a hint
                    logger.warning("cannot record last use of %s: %s", file_id, err)
                    continue
            written += 1
        return written

    def _held(self, file_id: str) -> Entry:
        entry = self._entries.get(file_id)
        if entry is None:
            raise NotHeld(f"file {file_id} is not held by this peer")
        return entry

    def delete(self, file_id: str) -> Entry:
        """`shoal rm`: forget a file, complete or partial, and delete it (after reads in flight); NotHeld if absent.

        The caller stops a running download first and withdraws the file from the trackers.
        """
        with self._lock:
            entry = self._held(file_id)
            self._drop(entry)
        logger.info("removed %s (%s)", file_id, entry.manifest.name)
        return entry

    def cancel(self, file_id: str) -> Entry:
        """`shoal cancel`: drop a partial download and its resume state; NotHeld if no download of it is here.

        The caller stops the download's task first; a complete file is left alone (that is `rm`).
        """
        with self._lock:
            entry = self._held(file_id)
            if entry.complete:
                raise NotHeld(f"file {file_id} is complete, not downloading: nothing to cancel")
            self._drop(entry)
        logger.info("cancelled the download of %s; its partial data is gone", file_id)
        return entry

    def stop(self, file_id: str) -> None:
        """A download the user interrupted: keep its chunks, but do not resume it at the next start."""
        with self._lock:
            entry = self._held(file_id)
            if entry.complete or entry.stopped:
                return
            try:
                (entry.directory / "stopped").touch()
            except OSError as err:
                raise explain(err, "marking the download stopped") from err
            entry.stopped = True

    def unstop(self, file_id: str) -> None:
        """Asked for again with `get`: a stopped download resumes now and at the next start."""
        with self._lock:
            entry = self._entries.get(file_id)
            if entry is None or not entry.stopped:
                return
            (entry.directory / "stopped").unlink(missing_ok=True)
            entry.stopped = False

    def pin(self, file_id: str, pinned: bool = True) -> Entry:
        """`shoal pin` / `unpin`: a pinned file is never evicted; NotHeld if absent."""
        with self._lock:
            entry = self._held(file_id)
            marker = entry.directory / "pinned"
            try:
                if pinned:
                    marker.touch()
                else:
                    marker.unlink(missing_ok=True)
            except OSError as err:
                raise explain(err, "pinning") from err
            entry.pinned = pinned
            return entry

    def resumable(self) -> list[Entry]:
        """Partial downloads to resume at start: every one the user did not stop or cancel."""
        return [e for e in self.entries() if not e.complete and not e.stopped]

    def evict(self, file_id: str) -> Entry | None:
        """Drop a file the quota chose, unless it went or was pinned meanwhile; the entry dropped, if any."""
        with self._lock:
            entry = self._entries.get(file_id)
            if entry is None or entry.pinned:
                return None
            self._drop(entry)
            return entry

    # ---- removal: now, or after the chunk reads in flight ----------------------------------------

    def remove(self, file_id: str) -> None:
        """Forget a file and delete it from disk."""
        with self._lock:
            entry = self._entries.get(file_id)
            if entry is not None:
                self._drop(entry)

    def _drop(self, entry: Entry) -> None:
        """Forget an entry now; delete its files now, or after the chunk reads in flight when there are some."""
        with entry.lock:
            entry.retired = True
            busy = entry.readers > 0
            held = entry.held_bytes
        if self._entries.get(entry.file_id) is entry:
            del self._entries[entry.file_id]
            self._count(-held)
        self._dirty.discard(entry.file_id)
        if not busy:
            self._delete(entry)
            return
        # Out of the way at once, so the same id can be held again; tmp/ is emptied at the next start.
        grave = self._tmp / uuid.uuid4().hex / entry.directory.parent.name / entry.file_id
        try:
            grave.parent.mkdir(parents=True)
            os.rename(entry.directory, grave)
            entry.directory = grave
        except OSError as err:
            logger.warning("cannot set %s aside: %s; deleting it now", entry.directory, err)
            self._delete(entry)

    def _delete(self, entry: Entry) -> None:
        self._close(entry)
        set_aside = entry.directory.parent.parent
        shutil.rmtree(set_aside if set_aside.parent == self._tmp else entry.directory, ignore_errors=True)

    @staticmethod
    def _close(entry: Entry) -> None:
        for name in ("fd", "have_fd"):
            fd = getattr(entry, name)
            if fd >= 0:
                os.close(fd)
                setattr(entry, name, -1)
